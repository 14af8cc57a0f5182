"""What the compiled CUDA kernels look like, read from their SASS with ``cuobjdump``.

Per kernel and architecture: registers, stack frame, static shared memory (``cuobjdump
--dump-resource-usage``, milliseconds) and, from the disassembly (``cuobjdump -sass``, seconds), the
instruction mix of the whole kernel and of its hot loop, by class: tensor-core MMAs, shared-memory
matrix loads (LDSM, i.e. ``ldmatrix``), other shared/global/generic loads, cp.async/TMA copies and
local-memory traffic (LDL/STL: spills or stack arrays).

The **hot loop** is found from the control flow: every backward branch closes a loop
[target, branch]; the hot loop is the union of the innermost loops that contain a tensor-core MMA
(the GEMM main loops). :data:`EXPECTATIONS` are the properties a fast GEMM loop has; tests/test_sass.py
asserts them on the built module and ``mac info --kernels`` / ``python -m mac.sass`` report them.

No torch needed. cuobjdump comes with the CUDA toolkit, or ``pip install nvidia-cuda-cuobjdump``.
"""

from __future__ import annotations

import argparse
import collections
import dataclasses
import functools
import glob
import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
from typing import Callable

CUOBJDUMP_PIP_PACKAGE = "nvidia-cuda-cuobjdump"
NVDISASM_PIP_PACKAGE = "nvidia-cuda-nvdisasm"   # `cuobjdump -sass` runs it

# Instruction classes by base opcode (the mnemonic before the first '.').
TENSOR_CORE_MMA = frozenset({
    "HMMA", "IMMA", "DMMA", "BMMA",                    # warp-level mma.sync / WMMA (sm_70+)
    "HGMMA", "IGMMA", "QGMMA", "BGMMA",                # warpgroup wgmma (sm_90)
    "UTCHMMA", "UTCIMMA", "UTCQMMA", "UTCOMMA",        # tcgen05 (sm_100)
})
# Warpgroup and tcgen05 MMAs read operands from shared memory themselves (descriptors), so a loop
# built on them needs no LDSM.
SHARED_OPERAND_MMA = TENSOR_CORE_MMA - {"HMMA", "IMMA", "DMMA", "BMMA"}
INSTRUCTION_CLASSES: dict[str, frozenset[str]] = {
    "mma": TENSOR_CORE_MMA,
    "shared_operand_mma": SHARED_OPERAND_MMA,           # (also counted in "mma")
    "ldsm": frozenset({"LDSM"}),                        # ldmatrix: shared memory -> MMA fragments
    "lds": frozenset({"LDS"}),
    "sts": frozenset({"STS"}),
    "ldg": frozenset({"LDG"}),
    "stg": frozenset({"STG"}),
    "async_copy": frozenset({"LDGSTS", "UTMALDG", "UBLKCP"}),  # cp.async, TMA
    "ld_generic": frozenset({"LD"}),                   # generic address space: the compiler could not
    "st_generic": frozenset({"ST"}),                   # tell shared from global
    "ldl": frozenset({"LDL"}),                          # local memory: spills, stack arrays
    "stl": frozenset({"STL"}),
}


@dataclasses.dataclass(frozen=True)
class Instruction:
    address: int
    opcode: str     # full mnemonic, e.g. "HMMA.1688.F32.TF32"
    operands: str

    @property
    def base(self) -> str:
        return self.opcode.split(".", 1)[0]

    @property
    def branch_target(self) -> int | None:
        if self.base != "BRA":
            return None
        m = re.search(r"0x([0-9a-f]+)", self.operands)
        return int(m.group(1), 16) if m else None


@dataclasses.dataclass
class KernelReport:
    arch: str                       # "sm_90"
    name: str                       # mangled
    registers: int | None = None
    stack_bytes: int | None = None
    static_shared_bytes: int | None = None
    local_bytes: int | None = None
    instructions: int | None = None  # None: resources only (no disassembly)
    counts: dict[str, int] | None = None
    hot_loop_instructions: int | None = None
    hot_loop: dict[str, int] | None = None
    hot_loop_opcodes: dict[str, int] | None = None

    @property
    def short_name(self) -> str:
        return short_kernel_name(self.name)

    def summary(self) -> str:
        """One line: the resource budget, and with the disassembly the hot loop's mix."""
        text = (f"{self.registers} registers, {self.stack_bytes} B stack, "
                f"{self.static_shared_bytes} B static shared")
        if self.counts is None:
            return text
        text += f"; {self.counts['ldl']} LDL / {self.counts['stl']} STL in {self.instructions} instructions"
        if not self.hot_loop_instructions:
            return text + "; no loop with tensor-core MMAs"
        h = self.hot_loop
        mma_share = 100.0 * h["mma"] / self.hot_loop_instructions
        return (text + f"; hot loop: {self.hot_loop_instructions} instructions, {h['mma']} MMA "
                f"({mma_share:.1f}%), {h['ldsm']} LDSM, {h['lds']} LDS, {h['ld_generic']} generic LD, "
                f"{h['async_copy']} cp.async/TMA, {h['ldl']} LDL / {h['stl']} STL")


# ------------------------------------------------------------------------------------- expectations
# What a GEMM main loop that keeps the tensor cores fed looks like (issue 20). Each takes a report
# made with the disassembly and says whether the kernel meets it; a kernel without a hot loop meets
# none of the hot-loop ones.
def _hot_loop_has(report: KernelReport, predicate: Callable[[dict[str, int]], bool]) -> bool:
    return bool(report.hot_loop_instructions) and predicate(report.hot_loop)


EXPECTATIONS: dict[str, Callable[[KernelReport], bool]] = {
    "tensor_core_mma_in_hot_loop": lambda k: _hot_loop_has(k, lambda h: h["mma"] > 0),
    "shared_matrix_loads_in_hot_loop": lambda k: _hot_loop_has(k, lambda h: h["ldsm"] + h["shared_operand_mma"] > 0),
    "no_local_memory_in_hot_loop": lambda k: _hot_loop_has(k, lambda h: h["ldl"] + h["stl"] == 0),
    "no_stack_frame": lambda k: k.stack_bytes == 0,
    "registers_at_most_255": lambda k: k.registers is not None and k.registers <= 255,
}


# ------------------------------------------------------------------------------------------ parsing
_INSTRUCTION = re.compile(r"/\*([0-9a-f]{4,})\*/\s+(?:@!?U?P[T0-9]+\s+)?([A-Z][A-Z0-9_.]*)\s*([^;]*);")
_SASS_ARCH = re.compile(r"^\s*code for (sm_\w+)", re.M)
_SASS_FUNCTION = re.compile(r"^\s*Function : (\S+)", re.M)


def parse_sass(text: str) -> dict[tuple[str, str], list[Instruction]]:
    """``cuobjdump -sass`` output -> {(arch, kernel name): instructions in address order}."""
    markers = sorted([(m.start(), "arch", m.group(1)) for m in _SASS_ARCH.finditer(text)]
                     + [(m.start(), "function", m.group(1)) for m in _SASS_FUNCTION.finditer(text)])
    out: dict[tuple[str, str], list[Instruction]] = {}
    arch = "unknown"
    for i, (pos, kind, value) in enumerate(markers):
        if kind == "arch":
            arch = value
            continue
        end = markers[i + 1][0] if i + 1 < len(markers) else len(text)
        out[(arch, value)] = [Instruction(int(m.group(1), 16), m.group(2), m.group(3).strip())
                              for m in _INSTRUCTION.finditer(text, pos, end)]
    return out


_RESOURCE_FIELDS = {"REG": "registers", "STACK": "stack_bytes", "SHARED": "static_shared_bytes",
                    "LOCAL": "local_bytes"}


def parse_resource_usage(text: str) -> dict[tuple[str | None, str], dict[str, int]]:
    """``cuobjdump --dump-resource-usage`` output -> {(arch, kernel name): resources}. The arch is
    that of the enclosing fatbin ELF entry (None for a bare cubin, whose output names none)."""
    out: dict[tuple[str | None, str], dict[str, int]] = {}
    arch, function = None, None
    for line in text.splitlines():
        line = line.strip()
        if m := re.match(r"arch = (sm_\w+)", line):
            arch = m.group(1)
        elif m := re.match(r"Function (\S+):$", line):
            function = m.group(1)
        elif function and line.startswith("REG:"):
            fields = dict(re.findall(r"(\w+(?:\[\d+\])?):(\d+)", line))
            out[(arch, function)] = {key: int(fields[f]) for f, key in _RESOURCE_FIELDS.items() if f in fields}
            function = None
    return out


def loops(instructions: list[Instruction]) -> list[tuple[int, int]]:
    """(first, last) address of every loop: a branch back to an address at or before its own."""
    return [(t, ins.address) for ins in instructions
            if (t := ins.branch_target) is not None and t <= ins.address]


def hot_loop(instructions: list[Instruction]) -> list[Instruction]:
    """The instructions of the innermost loops that contain a tensor-core MMA (empty if none)."""
    mma_addresses = [ins.address for ins in instructions if ins.base in TENSOR_CORE_MMA]
    with_mma = {span for span in loops(instructions)
                if any(span[0] <= a <= span[1] for a in mma_addresses)}
    innermost = [s for s in with_mma
                 if not any(o != s and s[0] <= o[0] and o[1] <= s[1] for o in with_mma)]
    return [ins for ins in instructions if any(lo <= ins.address <= hi for lo, hi in innermost)]


def count_classes(instructions: list[Instruction]) -> dict[str, int]:
    bases = collections.Counter(ins.base for ins in instructions)
    return {cls: sum(bases[op] for op in ops) for cls, ops in INSTRUCTION_CLASSES.items()}


def short_kernel_name(mangled: str) -> str:
    """``rollout_kernel<Tf32Traits>`` for a C++ template kernel (via c++filt; else the mangled name)."""
    demangled = _demangle(mangled)
    if demangled == mangled:
        return mangled
    name = demangled.replace("(anonymous namespace)::", "")
    name = re.sub(r"\b\w+::", "", name)                 # namespaces
    name = re.sub(r"^void ", "", name)
    return re.sub(r"\([^()]*\)$", "", name)             # the parameter list


@functools.lru_cache(maxsize=None)
def _demangle(mangled: str) -> str:
    cxxfilt = shutil.which("c++filt")
    if not cxxfilt or not mangled.startswith("_Z"):
        return mangled
    try:
        return subprocess.run([cxxfilt, mangled], capture_output=True, text=True, timeout=10,
                              check=True).stdout.strip() or mangled
    except (OSError, subprocess.SubprocessError):
        return mangled


# --------------------------------------------------------------------------------- tool and module
class CuobjdumpMissing(RuntimeError):
    pass


def find_cuda_tool(name: str) -> str | None:
    """A CUDA binary (cuobjdump, nvcc, ...) from PATH, the CUDA toolkit (CUDA_HOME, CUDA_PATH,
    /usr/local/cuda) or an NVIDIA wheel (site-packages/nvidia/<cu13, cuda_cuobjdump, ...>/bin)."""
    found = shutil.which(name)
    if found:
        return found
    roots = [os.environ.get("CUDA_HOME"), os.environ.get("CUDA_PATH"), "/usr/local/cuda"]
    candidates = [os.path.join(r, "bin", name) for r in roots if r]
    for entry in sys.path:
        candidates += sorted(glob.glob(os.path.join(entry or ".", "nvidia", "*", "bin", name)))
    return next((c for c in candidates if os.path.isfile(c) and os.access(c, os.X_OK)), None)


def find_cuobjdump() -> str | None:
    return find_cuda_tool("cuobjdump")


def require_cuobjdump() -> str:
    tool = find_cuobjdump()
    if tool is None:
        raise CuobjdumpMissing(
            "cuobjdump not found (not on PATH, in the CUDA toolkit or in site-packages); install it "
            f"with `pip install {CUOBJDUMP_PIP_PACKAGE}` (0.6 MB) or put the CUDA toolkit's bin on PATH")
    return tool


def cuda_module_path() -> str | None:
    """The built CUDA module (mac._C_cuda), found without importing it; None if it was not built."""
    spec = importlib.util.find_spec("mac._C_cuda")
    return spec.origin if spec is not None else None


def _cuobjdump(args: list[str], path: str) -> str:
    # `-sass` runs nvdisasm, which cuobjdump looks for beside itself, on PATH or at NVDISASM_PATH:
    # point it at ours wherever it is (a pip wheel's bin/ is on none of those).
    env = dict(os.environ)
    nvdisasm = find_cuda_tool("nvdisasm")
    if nvdisasm is not None:
        env["NVDISASM_PATH"] = os.path.dirname(nvdisasm)
    elif "-sass" in args:
        raise CuobjdumpMissing(f"`cuobjdump -sass` needs nvdisasm, which is not installed; install it with "
                               f"`pip install {NVDISASM_PIP_PACKAGE}` (5 MB) or put the CUDA toolkit's bin on PATH")
    result = subprocess.run([require_cuobjdump(), *args, path], capture_output=True, text=True, timeout=300,
                            env=env)
    if result.returncode != 0:
        raise RuntimeError(f"cuobjdump {' '.join(args)} {path} failed: {result.stderr.strip()}")
    return result.stdout


def reports_from_text(resource_usage: str, sass: str | None) -> list[KernelReport]:
    """Reports from ``cuobjdump --dump-resource-usage`` and (optionally) ``-sass`` output."""
    resources = parse_resource_usage(resource_usage)
    if sass is None:
        return [KernelReport(arch or "unknown", name, **res) for (arch, name), res in resources.items()]
    reports = []
    for (arch, name), instructions in parse_sass(sass).items():
        loop = hot_loop(instructions)
        reports.append(KernelReport(
            arch, name, **(resources.get((arch, name)) or resources.get((None, name)) or {}),
            instructions=len(instructions), counts=count_classes(instructions),
            hot_loop_instructions=len(loop), hot_loop=count_classes(loop),
            hot_loop_opcodes=dict(collections.Counter(ins.base for ins in loop))))
    return reports


def inspect_binary(path: str, disassemble: bool = True) -> list[KernelReport]:
    """A report per (architecture, kernel) of a module, fatbin or cubin. ``disassemble=False`` reads
    only the resource usage (milliseconds instead of seconds)."""
    return reports_from_text(_cuobjdump(["--dump-resource-usage"], path),
                             _cuobjdump(["-sass"], path) if disassemble else None)


def inspect_cuda_module(disassemble: bool = True) -> list[KernelReport]:
    path = cuda_module_path()
    if path is None:
        raise FileNotFoundError("mac._C_cuda is not built (nvcc was not found at build time, or MAC_CUDA=OFF)")
    return inspect_binary(path, disassemble)


def info_section(disassemble: bool = False) -> dict[str, str] | str:
    """The per-kernel lines of ``mac info`` (``{"sm_90 rollout_kernel<Tf32Traits>": "..."}``), or a
    one-line reason why there are none."""
    if cuda_module_path() is None:
        return "CUDA module not built"
    if find_cuobjdump() is None:
        return f"registers/stack/shared memory per kernel: `pip install {CUOBJDUMP_PIP_PACKAGE}`"
    try:
        reports = inspect_cuda_module(disassemble)
    except (RuntimeError, OSError, subprocess.SubprocessError) as exc:
        return f"cuobjdump failed: {exc}"
    return {f"{r.arch} {r.short_name}": r.summary() for r in sorted(reports, key=lambda r: (r.arch, r.name))}


def format_report(reports: list[KernelReport]) -> str:
    lines = []
    for r in sorted(reports, key=lambda r: (r.arch, r.name)):
        lines.append(f"{r.arch} {r.short_name}: {r.summary()}")
        if r.counts is not None:
            verdicts = ", ".join(f"{name} {'yes' if check(r) else 'NO'}" for name, check in EXPECTATIONS.items())
            lines.append(f"  {verdicts}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m mac.sass", description=__doc__.split("\n\n")[0])
    p.add_argument("binary", nargs="?", help="a module, fatbin or cubin (default: the built mac._C_cuda)")
    p.add_argument("--json", action="store_true", help="every field of every report as JSON")
    p.add_argument("--resources-only", action="store_true", help="registers/stack/shared memory only (fast)")
    args = p.parse_args(argv)
    try:
        path = args.binary or cuda_module_path()
        if path is None:
            raise FileNotFoundError("mac._C_cuda is not built; pass a binary to inspect")
        reports = inspect_binary(path, disassemble=not args.resources_only)
    except (CuobjdumpMissing, FileNotFoundError, RuntimeError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps([dataclasses.asdict(r) | {"short_name": r.short_name} for r in reports], indent=2))
    else:
        print(f"{path}\n{format_report(reports)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
