"""CUDA benchmark (``mac bench --device cuda``): the native CUDA core against the torch baselines a
GPU engineer would try first, at the paper's shapes, in TF32 and bf16, judged against the goals of
issue 20 (:data:`GOALS`), plus the time of one paper-preset training step.

Backends (:data:`BACKENDS`), all given the same explicit noise tensor:
    native        the native core (``backend="cuda"``), operand precision set by
                  ``mac._cuda_core.set_precision``; checked against the float32 reference first
                  (``check_rollout`` / ``check_best_of_n``: the "check ok" note)
    eager         the PyTorch reference (``imagine_reference`` / ``best_of_n_reference``)
    eager+graph   the same call captured once in a CUDA graph (:class:`GraphedCall`: static input
                  and output buffers, warm-up on a side stream) and replayed
    max-autotune  ``torch.compile(mode="max-autotune")`` of the reference (inductor's GEMM autotuning
                  and its own CUDA graphs); compiling the paper shapes takes minutes, so
                  ``--compile-cases`` / ``--no-compile`` can leave cases out (said in the table)
Precisions (``--cuda-precision``, default both): tf32 = native TF32 operands, torch with TF32
matmuls allowed (``mac.cuda_matmul``, as ``mac train``); bf16 = native bf16 operands, torch under
bf16 autocast. Accumulation is float32 everywhere.

Cases (:data:`CASES`): ``rollout-s28`` / ``rollout-s55``: imagined rollout B=1024, H=10, N=8, 4x1024
MLPs, S=28 / 55, C=50, reward task (reward + success nets, no goals); ``eval-b1`` / ``eval-b64``:
evaluation best-of-32 for B=1 / 64 (S=28, C=50). The train step: ``MACAgent.update`` at a preset
(default paper) on a random batch, one agent per rollout backend, interleaved.

Statistics (mac.bench_timing): at least 20 timed calls after warm-up (fewer are refused), each
bracketed by CUDA events and synchronised; median and [p10, p90] in ms. TFLOP/s count the matmul
FLOPs (2 per multiply-add, ``MLP.flops_per_row``) against the dense tensor-core peak of the
precision (:data:`PEAK_TFLOPS`, by device name).

Everything but the CUDA-only backends also runs on the CPU (``BenchOptions(device="cpu")``: the
native CPU core in float32, eager, bf16 autocast), so the tests exercise the tables on a machine
without a GPU; the CUDA graph and max-autotune cells then say why they were skipped.

Entry points for mac.bench (which owns the CLI):
    add_cuda_arguments(parser)    adds the CUDA options
    run_cuda_bench(args) -> str   markdown; raises RuntimeError without a usable GPU (unless
                                  --cuda-device cpu), ValueError for bad options (repeats < 20, ...)
"""

from __future__ import annotations

import contextlib
import dataclasses
import subprocess
import sys
import time
from typing import Callable, Mapping

import torch

from mac.bench_timing import Timing, hours_for_steps, require_repeats, time_calls
from mac.cuda_matmul import DEFAULT_CUDA_MATMUL, cuda_matmul_mode

CASES = ("rollout-s28", "rollout-s55", "eval-b1", "eval-b64")
BACKENDS = ("native", "eager", "eager+graph", "max-autotune")
PRECISIONS = ("tf32", "bf16")
BACKEND_LABELS = {"native": "native core", "eager": "torch eager", "eager+graph": "eager + CUDA graph",
                  "max-autotune": "torch.compile max-autotune"}
NET_ORDER = ("actor", "critic", "dynamics", "reward", "success")  # imagine_reference's argument order
SIZES = {  # rollout B, H and the hidden layers of every network; "paper" is what the goals are about
    "paper": dict(B=1024, H=10, hidden=(1024,) * 4),
    "quick": dict(B=128, H=3, hidden=(256, 256)),   # a smoke run on a GPU
    "tiny": dict(B=16, H=2, hidden=(32, 32)),       # the CPU tests
}
# Defaults of the options shared with mac.bench (whose CPU defaults differ); --quick: the cpu preset.
CUDA_DEFAULTS = {"repeats": 20, "train_step": "paper", "train_repeats": 20}
COMPILE_WARMUP_CALLS = 3  # max-autotune compiles on the first call and records its CUDA graphs on the next

# Dense (no sparsity) tensor-core peaks, TFLOP/s, from NVIDIA's data sheets. Matched on the
# torch.cuda.get_device_name() string, most specific first.
PEAK_TFLOPS = [
    ("H200 NVL", {"tf32": 417.5, "bf16": 835.5}),
    ("H200", {"tf32": 494.7, "bf16": 989.4}),
    ("H100 NVL", {"tf32": 417.5, "bf16": 835.5}),
    ("H100 PCIe", {"tf32": 378.0, "bf16": 756.0}),
    ("H100", {"tf32": 494.7, "bf16": 989.4}),  # SXM5 ("H100 80GB HBM3", "H100 SXM5 ...")
    ("A100", {"tf32": 156.0, "bf16": 312.0}),
]


def peak_tflops(name: str, precision: str):
    for key, peaks in PEAK_TFLOPS:
        if key.lower() in name.lower():
            return peaks[precision]
    return None


# ------------------------------------------------------------------------------------ goals

@dataclasses.dataclass(frozen=True)
class Goal:
    """Issue 20's target for ``subject`` (a backend) on ``case`` at ``precision``: a median of at most
    ``max_ms``, and a median at least ``ratio`` times below each ``(backend, ratio)`` of ``faster_than``."""
    case: str
    precision: str
    max_ms: float | None = None
    faster_than: tuple[tuple[str, float], ...] = ()
    subject: str = "native"


GOALS = (
    Goal("rollout-s28", "tf32", max_ms=5.0,
         faster_than=(("eager", 2.5), ("eager+graph", 1.3), ("max-autotune", 1.3))),
    Goal("rollout-s28", "bf16", max_ms=3.0),
    # Best-of-32 goals name no precision: every precision measured is held to them.
    *(Goal("eval-b1", p, max_ms=0.050) for p in PRECISIONS),
    *(Goal("eval-b64", p, max_ms=0.150) for p in PRECISIONS),
)
TRAIN_STEP_CASE = "train-step"
TRAIN_STEP_GOAL_MS = 3.6  # `mac train --preset paper`: 1M steps in an hour


@dataclasses.dataclass(frozen=True)
class Verdict:
    """One criterion of a goal: ``met`` is None when a timing it needs was not measured."""
    case: str
    precision: str
    goal: str
    measured: str
    met: bool | None


def fmt_ms(ms: float) -> str:
    """A duration for a reader: µs below 1 ms, 4 significant digits."""
    return f"{ms * 1e3:.4g} µs" if ms < 1 else f"{ms:.4g} ms"


def verdicts(medians: Mapping[tuple[str, str, str], float | None], goals=GOALS) -> list[Verdict]:
    """Judge ``goals`` on median milliseconds keyed ``(case, precision, backend)``, None for a cell
    that was skipped; a goal with no key of its (case, precision) is left out (not run)."""
    out = []
    for goal in goals:
        if not any(k[:2] == (goal.case, goal.precision) for k in medians):
            continue
        subject = medians.get((goal.case, goal.precision, goal.subject))
        label = BACKEND_LABELS.get(goal.subject, goal.subject)

        def verdict(text, measured, met):
            out.append(Verdict(goal.case, goal.precision, text, measured, met))

        if goal.max_ms is not None:
            verdict(f"{label} ≤ {fmt_ms(goal.max_ms)}", "not measured" if subject is None else fmt_ms(subject),
                    None if subject is None else subject <= goal.max_ms)
        for other, ratio in goal.faster_than:
            base = medians.get((goal.case, goal.precision, other))
            text = f"{label} ≥ {ratio:g}x faster than {BACKEND_LABELS.get(other, other)}"
            if subject is None or base is None:
                verdict(text, "not measured", None)
            else:
                verdict(text, f"{base / subject:.2f}x ({fmt_ms(base)} / {fmt_ms(subject)})",
                        base / subject >= ratio)
    return out


def goals_table(rows: list[Verdict]) -> list[str]:
    met = {True: "yes", False: "**no**", None: "not measured"}
    return ["| case | precision | goal | measured | met |", "|---|---|---|---|---|",
            *(f"| {v.case} | {v.precision} | {v.goal} | {v.measured} | {met[v.met]} |" for v in rows)]


# ------------------------------------------------------------------------------------ cases

def case_spec(name: str, size: str = "paper") -> dict:
    """The shape of case ``name`` at ``size`` (:data:`SIZES`): kind ("imagine" | "best_of_n"), B, H, N,
    S, C, hidden."""
    if name not in CASES:
        raise ValueError(f"unknown CUDA bench case {name!r}; choose from {', '.join(CASES)}")
    sz = SIZES[size]
    if name.startswith("rollout"):
        return dict(kind="imagine", B=sz["B"], H=sz["H"], N=8, S=28 if name.endswith("s28") else 55, C=50,
                    hidden=sz["hidden"])
    return dict(kind="best_of_n", B=1 if name == "eval-b1" else 64, H=1, N=32, S=28, C=50, hidden=sz["hidden"])


def describe(spec: dict) -> str:
    nets = f"{len(spec['hidden'])}x{spec['hidden'][0]} MLPs"
    if spec["kind"] == "imagine":
        return f"rollout B={spec['B']}, H={spec['H']}, N={spec['N']}, S={spec['S']}, C={spec['C']}, {nets}"
    return f"best-of-{spec['N']}, B={spec['B']}, S={spec['S']}, C={spec['C']}, {nets}"


def build_case(spec: dict, device):
    """(nets, states (B, S), noise (H, N, B, C) or (N, B, C), matmul FLOPs of one call)."""
    from mac.nets import MLP
    torch.manual_seed(0)
    S, C, h = spec["S"], spec["C"], spec["hidden"]
    nets = dict(actor=MLP(S + C, C, h), critic=MLP(S + C, 1, h))
    if spec["kind"] == "imagine":
        nets.update(dynamics=MLP(S + C, S, h), reward=MLP(S + C, 1, h), success=MLP(S + C, 1, h))
    nets = {k: v.to(device).eval() for k, v in nets.items()}
    states = torch.randn(spec["B"], S, device=device) * 0.5
    shape = (spec["H"], spec["N"], spec["B"], C) if spec["kind"] == "imagine" else (spec["N"], spec["B"], C)
    noise = torch.randn(shape, device=device)
    flops = spec["N"] * spec["B"] * (nets["actor"].flops_per_row() + nets["critic"].flops_per_row())
    if spec["kind"] == "imagine":
        flops += spec["B"] * sum(nets[k].flops_per_row() for k in ("dynamics", "reward", "success"))
        flops *= spec["H"]
    return nets, states, noise, flops


def reference_fn(spec: dict, nets: dict) -> Callable:
    """``f(states, noise)``: the PyTorch reference of the case (what eager, the graph and max-autotune run)."""
    from mac.rollout import best_of_n_reference, imagine_reference
    if spec["kind"] == "imagine":
        net_list = [nets[k] for k in NET_ORDER]
        return lambda states, noise: imagine_reference(states, None, *net_list, noise)
    return lambda states, noise: best_of_n_reference(states, None, nets["actor"], nets["critic"], noise)


def native_fn(spec: dict, nets: dict, backend: str) -> Callable:
    """``f(states, noise)``: the native core ``backend`` ("cuda" | "cpu") on the case."""
    from mac.rollout import best_of_n, imagine
    if spec["kind"] == "imagine":
        return lambda states, noise: imagine(states, None, **nets, steps=spec["H"], num_samples=spec["N"],
                                             noise=noise, backend=backend)
    return lambda states, noise: best_of_n(states, None, actor=nets["actor"], critic=nets["critic"],
                                           num_samples=spec["N"], noise=noise, backend=backend)


def check_native(result, spec: dict, nets: dict, states, noise, precision: str) -> str:
    """"check ok", or "MISMATCH: ..." when the native result is not the float32 reference's within
    the precision's tolerance (mac._cuda_core.TOLERANCES; the checks are plain torch, any device)."""
    from mac import _cuda_core
    tol = _cuda_core.TOLERANCES[precision]
    try:
        if spec["kind"] == "imagine":
            _cuda_core.check_rollout(result, states, None, *(nets[k] for k in NET_ORDER), noise, tol)
        else:
            _cuda_core.check_best_of_n(result, states, None, nets["actor"], nets["critic"], noise, tol)
    except AssertionError as exc:
        return f"MISMATCH: {exc}"
    return "check ok"


# ------------------------------------------------------------------------------------ CUDA graphs

class CudaGraphCapture:
    """Capture and replay on a CUDA graph, as the torch docs prescribe: warm-up calls on a side
    stream (lazy initialisation, cuBLAS workspaces and autotuning happen outside the capture), then
    one capture on ``torch.cuda.graph``'s own stream and memory pool."""

    def capture(self, run: Callable[[], object], warmup: int):
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            for _ in range(warmup):
                run()
        torch.cuda.current_stream().wait_stream(side)
        self.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.graph):
            return run()

    def replay(self) -> None:
        self.graph.replay()


class GraphedCall:
    """``fn(*inputs)`` captured once and replayed: each call copies ``inputs`` into static buffers
    (clones of ``example_inputs``, the addresses the graph reads) and replays; the result is the
    same static output tensors every call, overwritten by each replay. ``capture`` is a
    :class:`CudaGraphCapture` unless given (the tests give a CPU stand-in with the same contract)."""

    def __init__(self, fn: Callable, example_inputs: tuple[torch.Tensor, ...], warmup: int = 3, capture=None):
        self.static_inputs = tuple(x.clone() for x in example_inputs)
        self._capture = capture if capture is not None else CudaGraphCapture()
        self.static_output = self._capture.capture(lambda: fn(*self.static_inputs), warmup)

    def __call__(self, *inputs: torch.Tensor):
        for buffer, x in zip(self.static_inputs, inputs, strict=True):
            buffer.copy_(x)
        self._capture.replay()
        return self.static_output


# ------------------------------------------------------------------------------------ options

@dataclasses.dataclass
class BenchOptions:
    device: str = "cuda"
    precisions: tuple[str, ...] = PRECISIONS
    cases: tuple[str, ...] = CASES
    backends: tuple[str, ...] = BACKENDS
    compile_cases: tuple[str, ...] = CASES  # the cases max-autotune compiles (minutes each at the paper shapes)
    repeats: int = 20
    warmup: int = 3
    size: str = "paper"
    train_step: str = "paper"               # an AgentConfig preset, or "none"
    train_repeats: int = 20
    train_overrides: dict = dataclasses.field(default_factory=dict)  # AgentConfig fields (tests: tiny nets)
    agent_flags: tuple[str, ...] = ()       # --agent.<key>=<value> of the train step, as mac train takes them
    seed: int = 0

    def validate(self) -> BenchOptions:
        for name, values, allowed in (("precision", self.precisions, PRECISIONS), ("case", self.cases, CASES),
                                      ("backend", self.backends, BACKENDS),
                                      ("compile case", self.compile_cases, CASES)):
            bad = [v for v in values if v not in allowed]
            if bad:
                raise ValueError(f"unknown CUDA bench {name} {bad[0]!r}; choose from {', '.join(allowed)}")
        if not self.precisions or (not self.cases and self.train_step == "none"):
            raise ValueError("nothing to time: give at least one precision and a case or a train step")
        require_repeats(self.repeats, "--repeats")
        if self.train_step != "none":
            require_repeats(self.train_repeats, "--train-repeats")
        if self.warmup < 1:
            raise ValueError(f"--warmup={self.warmup}: at least one untimed call comes first")
        if self.size not in SIZES:
            raise ValueError(f"unknown size {self.size!r}; choose from {', '.join(SIZES)}")
        return self


def _comma_list(text: str, every: tuple[str, ...]) -> tuple[str, ...]:
    if text.strip() in ("all", ""):
        return every
    if text.strip() == "none":
        return ()
    return tuple(dict.fromkeys(x.strip() for x in text.split(",") if x.strip()))


def add_cuda_arguments(parser) -> None:
    g = parser.add_argument_group("CUDA (--device cuda)")
    g.add_argument("--cuda-precision", dest="cuda_precision", default="tf32,bf16",
                   help="comma list of tf32, bf16 (default both)")
    g.add_argument("--cuda-cases", dest="cuda_cases", default="all", help=f"comma list of {', '.join(CASES)}")
    g.add_argument("--cuda-backends", dest="cuda_backends", default="all",
                   help=f"comma list of {', '.join(BACKENDS)} (default all)")
    g.add_argument("--compile-cases", dest="compile_cases", default="all",
                   help="comma list of the cases torch.compile(max-autotune) compiles, or none (compiling "
                        "the paper shapes takes minutes each; the others are marked as left out)")
    g.add_argument("--no-compile", dest="no_compile", action="store_true", help="= --compile-cases none")
    g.add_argument("--warmup", type=int, default=3, help="untimed calls before the timed ones (default 3)")
    g.add_argument("--quick", action="store_true",
                   help="small shapes (2x256 MLPs, B=128, H=3; train step: the cpu preset): a smoke run, "
                        "goals not judged")
    g.add_argument("--cuda-device", dest="cuda_device", default="cuda",
                   help="torch device (cpu: a plumbing run of the same tables without a GPU)")


def options_from_args(args) -> BenchOptions:
    """BenchOptions from the parsed CLI (attributes missing from ``args`` keep their defaults)."""
    from mac.bench import default_train_step, fill_defaults
    opt = lambda name, default: default if getattr(args, name, None) is None else getattr(args, name)  # noqa: E731
    quick = bool(opt("quick", False))
    fill_defaults(args, dict(CUDA_DEFAULTS, train_step=default_train_step("cuda", quick)))
    return BenchOptions(
        device=opt("cuda_device", "cuda"),
        precisions=_comma_list(opt("cuda_precision", "tf32,bf16"), PRECISIONS),
        cases=_comma_list(opt("cuda_cases", "all"), CASES),
        backends=_comma_list(opt("cuda_backends", "all"), BACKENDS),
        compile_cases=() if opt("no_compile", False) else _comma_list(opt("compile_cases", "all"), CASES),
        repeats=int(args.repeats), warmup=int(opt("warmup", 3)), size="quick" if quick else "paper",
        train_step=args.train_step, train_repeats=int(args.train_repeats), seed=int(opt("seed", 0)),
        agent_flags=tuple(opt("agent_flags", ()))).validate()


# ------------------------------------------------------------------------------------ measuring

@dataclasses.dataclass
class Cell:
    """One backend at one precision on one case: its timing, or None with the reason in ``note``."""
    timing: Timing | None
    note: str = ""


@contextlib.contextmanager
def torch_precision(precision: str, device_type: str):
    """The torch baselines' precision: TF32 matmuls allowed, and for bf16 also autocast to bf16.
    Autocast's weight-cast cache is off: a CUDA graph must not capture casts cached outside it (the
    torch docs), and eager then casts the weights every call, as a training step would."""
    with cuda_matmul_mode("tf32"), (torch.autocast(device_type, dtype=torch.bfloat16, cache_enabled=False)
                                    if precision == "bf16" else contextlib.nullcontext()):
        yield


@contextlib.contextmanager
def native_precision(precision: str, device_type: str):
    if device_type != "cuda":
        yield
        return
    from mac import _cuda_core
    _cuda_core.set_precision(precision)
    try:
        yield
    finally:
        _cuda_core.set_precision(None)


def skip_reason(backend: str, case: str, precision: str, device: torch.device, opts: BenchOptions,
                native_status: dict) -> str | None:
    """Why ``backend`` is not timed on ``case`` here, or None."""
    if backend == "native":
        if device.type == "cuda" and not native_status["usable"]:
            return f"native CUDA core unusable: {native_status['reason']}"
        if device.type == "cpu" and precision != "tf32":
            return "the native CPU core here runs float32 (its bf16 mode: `mac bench --backends native-bf16`)"
    if device.type != "cuda" and backend in ("eager+graph", "max-autotune"):
        return f"{BACKEND_LABELS[backend]} is timed on CUDA only"
    if backend == "max-autotune" and case not in opts.compile_cases:
        return "left out: not in --compile-cases (or --no-compile)"
    return None


def _failure(exc: Exception) -> str:
    first = str(exc).splitlines()[0][:120] if str(exc) else ""
    return f"failed: {type(exc).__name__}: {first}"


def _time_graphed(reference, states, noise, device, opts: BenchOptions) -> Cell:
    graphed = GraphedCall(reference, (states, noise), opts.warmup)
    return Cell(time_calls(lambda: graphed(states, noise), opts.repeats, opts.warmup, device))


def _time_max_autotune(reference, states, noise, device, opts: BenchOptions) -> Cell:
    # A fresh dynamo cache per compile: every case and precision recompiles the same lambda, and
    # past torch's recompile limit dynamo would silently run it eagerly.
    torch._dynamo.reset()
    t0 = time.perf_counter()
    compiled = torch.compile(reference, mode="max-autotune")
    for _ in range(COMPILE_WARMUP_CALLS):
        compiled(states, noise)
    torch.cuda.synchronize(device)
    note = f"compile {time.perf_counter() - t0:.0f} s"
    return Cell(time_calls(lambda: compiled(states, noise), opts.repeats, opts.warmup, device), note)


def measure(backend: str, spec: dict, nets: dict, states, noise, precision: str, device: torch.device,
            opts: BenchOptions) -> Cell:
    """Time ``backend`` on the case (the skip reasons are :func:`skip_reason`'s, checked before). A
    CUDA graph or a compile that fails (no Triton, an uncapturable op, ...) is a cell saying so."""
    with torch.no_grad():
        if backend == "native":
            call = native_fn(spec, nets, "cuda" if device.type == "cuda" else "cpu")
            with native_precision(precision, device.type):
                note = check_native(call(states, noise), spec, nets, states, noise, precision)
                if device.type == "cpu":
                    note += " (CPU core, float32)"
                return Cell(time_calls(lambda: call(states, noise), opts.repeats, opts.warmup, device), note)
        reference = reference_fn(spec, nets)
        with torch_precision(precision, device.type):
            if backend == "eager":
                return Cell(time_calls(lambda: reference(states, noise), opts.repeats, opts.warmup, device))
            timer = _time_graphed if backend == "eager+graph" else _time_max_autotune
            try:
                return timer(reference, states, noise, device, opts)
            except Exception as exc:  # noqa: BLE001 (a result for the table, not a crash)
                return Cell(None, _failure(exc))


# ------------------------------------------------------------------------------------ report

def _cell_text(cell: Cell | None, flops: float, peak, eager: Cell | None) -> tuple[str, str, str]:
    """(median [p10, p90], TFLOP/s (% of peak), speed-up over eager) of one cell."""
    if cell is None or cell.timing is None:
        return "—", "—", "—"
    ms = cell.timing.median
    tflops = flops / (ms * 1e-3) / 1e12
    rate = f"{tflops:.3g} ({100 * tflops / peak:.3g}%)" if peak else f"{tflops:.3g} (peak unknown)"
    speedup = f"{eager.timing.median / ms:.2f}x" if eager is not None and eager.timing is not None else "—"
    return cell.timing.summary(), rate, speedup


def _notes(cells_by_precision: dict[str, Cell | None]) -> str:
    """Notes of one row, precisions with the same note merged ("tf32, bf16: check ok")."""
    grouped: dict[str, list[str]] = {}
    for precision, cell in cells_by_precision.items():
        if cell is not None and cell.note:
            grouped.setdefault(cell.note, []).append(precision)
    return "; ".join(f"{', '.join(ps)}: {note}" for note, ps in grouped.items())


def results_table(cells: Mapping[tuple[str, str, str], Cell], cases, backends, precisions,
                  flops: Mapping[str, float], peaks: Mapping[str, float | None]) -> list[str]:
    """Markdown rows: one per case and backend, three columns (median [p10, p90] ms, TFLOP/s with %
    of the dense peak, speed-up over torch eager) per precision, and the notes."""
    head = ["case", "backend"]
    for p in precisions:
        head += [f"{p} median [p10, p90] ms", f"{p} TFLOP/s (% of peak)", f"{p} vs eager"]
    lines = ["| " + " | ".join(head + ["notes"]) + " |", "|" + "---|" * (len(head) + 1)]
    for case in cases:
        for backend in backends:
            row = [case, BACKEND_LABELS[backend]]
            for p in precisions:
                row += _cell_text(cells.get((case, backend, p)), flops[case], peaks.get(p),
                                  cells.get((case, "eager", p)))
            row.append(_notes({p: cells.get((case, backend, p)) for p in precisions}))
            lines.append("| " + " | ".join(row) + " |")
    return lines


def train_step_table(timings: Mapping[str, Timing], default_backend: str) -> list[str]:
    """Markdown rows: per rollout backend, median ms per step [p10, p90] and the hours of 1M steps
    at that median (judged in the goals table)."""
    lines = ["| rollout backend | median [p10, p90] ms per step | 1M steps at the median |", "|---|---|---|"]
    for backend, t in timings.items():
        name = f"{backend} (`mac train`'s default here)" if backend == default_backend else backend
        lines.append(f"| {name} | {t.summary()} | {hours_for_steps(t.median):.2f} h |")
    return lines


def _nvidia_smi_driver(index: int) -> str | None:
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader", "-i",
                              str(index)], capture_output=True, text=True, timeout=15, check=True)
        return out.stdout.strip().splitlines()[0] or None
    except (OSError, subprocess.SubprocessError, IndexError):
        return None


def environment_lines(device: torch.device, native_status: dict) -> list[str]:
    """GPU (or CPU) name, driver, CUDA runtime, torch, native core: the header of the report."""
    from mac import _native
    if device.type == "cuda":
        index = device.index if device.index is not None else torch.cuda.current_device()
        props = torch.cuda.get_device_properties(index)
        driver_cuda = _native.driver_cuda_version()
        what = (f"GPU {props.name} (sm_{props.major}{props.minor}, {props.multi_processor_count} SMs, "
                f"{props.total_memory / 2 ** 30:.0f} GiB), driver "
                f"{_nvidia_smi_driver(index) or 'version unknown (no nvidia-smi)'} (CUDA "
                f"{_native._cuda_version_text(driver_cuda) if driver_cuda else 'unknown'}), CUDA runtime "
                f"{torch.version.cuda}")
        native = "usable" if native_status["usable"] else f"unusable: {native_status['reason']}"
    else:
        from mac.bench import cpu_model_name
        what = (f"CPU {cpu_model_name()}: a plumbing run (no GPU, no tensor-core "
                "peak; the CUDA graph and max-autotune cells are skipped; the tf32 columns are float32 here)")
        native = "the native CPU core"
    return [f"{what}; torch {torch.__version__}; native core: {native}."]


def run_bench(opts: BenchOptions, log: Callable[[str], None] = lambda s: print(s, file=sys.stderr)) -> str:
    """Time every case x backend x precision of ``opts`` (then the train step) -> the markdown report.
    Progress goes to ``log`` as each measurement ends, so a run cut short still shows its results."""
    from mac import _native
    opts.validate()
    device = torch.device(opts.device)
    native_status = _native.cuda_status() if device.type == "cuda" else {"usable": True}
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    peaks = {p: peak_tflops(name, p) for p in opts.precisions}
    cells: dict[tuple[str, str, str], Cell] = {}              # (case, backend, precision)
    medians: dict[tuple[str, str, str], float | None] = {}  # (case, precision, backend): verdicts' input
    flops, shapes = {}, {}
    for case in opts.cases:
        spec = case_spec(case, opts.size)
        shapes[case] = describe(spec)
        nets, states, noise, flops[case] = build_case(spec, device)
        for precision in opts.precisions:
            for backend in opts.backends:
                why = skip_reason(backend, case, precision, device, opts, native_status)
                cell = Cell(None, f"skipped: {why}") if why else measure(backend, spec, nets, states, noise,
                                                                          precision, device, opts)
                cells[case, backend, precision] = cell
                medians[case, precision, backend] = cell.timing.median if cell.timing else None
                log(f"{case} {precision} {backend}: "
                    f"{cell.timing.summary() + ' ms' if cell.timing else '—'} {cell.note}".rstrip())
        del nets, states, noise

    peak_text = ", ".join(f"{p} {v:g} TFLOP/s" if v else f"{p} unknown for this device" for p, v in peaks.items())
    timer = "CUDA events" if device.type == "cuda" else "time.perf_counter"
    lines = [f"## MAC rollout / best-of-N benchmark ({name})", "", *environment_lines(device, native_status), "",
             f"Each cell: median [p10, p90] ms of {opts.repeats} calls after {opts.warmup} warm-up "
             f"({timer}, one call at a time). tf32: native TF32 operands, torch with TF32 matmuls allowed; "
             "bf16: native bf16 operands, torch under bf16 autocast; float32 accumulation in both. Dense "
             f"tensor-core peak: {peak_text}. vs eager: torch eager's median / this median.", ""]
    if opts.cases:
        lines += results_table(cells, opts.cases, opts.backends, opts.precisions, flops, peaks)
        lines += ["", "Shapes: " + "; ".join(f"{c}: {s}" for c, s in shapes.items()) + ".", ""]

    judged = list(GOALS) if opts.size == "paper" else []
    if opts.train_step != "none":
        train_lines, train_medians, train_goals = train_step_section(opts, device, native_status, log)
        lines += train_lines
        medians.update(train_medians)
        judged += train_goals
    lines += ["### Goals (issue 20)", ""]
    if opts.size != "paper" and opts.cases:
        lines += [f"Rollout and best-of-N goals not judged: they are for the paper shapes, this run used the "
                  f"{opts.size} ones.", ""]
    if judged:
        lines += goals_table(verdicts(medians, judged)) + [""]
    return "\n".join(lines) + "\n"


def train_step_section(opts: BenchOptions, device: torch.device, native_status: dict, log):
    """Time ``MACAgent.update`` at ``opts.train_step`` with the torch and the native rollout (via
    mac.bench.time_train_steps) -> (markdown lines, medians keyed like the cases', goals: the
    3.6 ms per step of the paper preset, none for another preset)."""
    from mac import bench
    from mac.rollout import _resolve_backend
    cfg = bench.train_step_config(opts.train_step, opts.agent_flags, opts.train_overrides)
    native = "cuda" if device.type == "cuda" else "cpu"
    backends = ("torch", native) if native_status["usable"] else ("torch",)
    default = _resolve_backend("auto", torch.zeros(1, bench.TRAIN_OBS_DIM, device=device))  # what `mac train` runs
    with cuda_matmul_mode(DEFAULT_CUDA_MATMUL):    # as mac train sets it on a GPU
        timings = bench.time_train_steps(cfg, backends, opts.train_repeats, opts.warmup, opts.seed, device)
    medians = {}
    for backend, t in timings.items():
        log(f"train step {backend}: {t.summary()} ms")
        medians[TRAIN_STEP_CASE, "as mac train", backend] = t.median
    goals = ([Goal(TRAIN_STEP_CASE, "as mac train", max_ms=TRAIN_STEP_GOAL_MS, subject=b) for b in backends]
             if opts.train_step == "paper" else [])
    lines = [f"### One training step (`MACAgent.update`, {bench.train_step_shape(opts.train_step, cfg)})", "",
             f"Random batch, one agent per rollout backend, median [p10, p90] of {opts.train_repeats} steps after "
             f"{opts.warmup} warm-up, interleaved; float32 matmuls as `mac train` runs them on a GPU "
             f"(--cuda_matmul {DEFAULT_CUDA_MATMUL}). The update "
             "alone: `mac train` adds sampling and host-to-device copies (gpu_check.sh's train stage times "
             f"those too). Goal at the paper preset: ≤ {TRAIN_STEP_GOAL_MS:g} ms per step, 1M steps ≤ "
             f"{hours_for_steps(TRAIN_STEP_GOAL_MS):g} h.",
             *([] if native_status["usable"] else
               [f"The native rollout is not timed: {native_status['reason']}."]),
             "", *train_step_table(timings, default), ""]
    return lines, medians, goals


def _require_gpu(device: str) -> torch.device:
    if not torch.cuda.is_available():
        built = torch.version.cuda
        raise RuntimeError("mac bench --device cuda needs a CUDA GPU: torch.cuda.is_available() is False ("
                           + (f"torch built with CUDA {built}, but no device/driver is usable)" if built
                              else "this torch build has no CUDA support)"))
    return torch.device(device)


def run_cuda_bench(args) -> str:
    """The markdown report for the parsed ``mac bench --device cuda`` options (a Namespace; None or
    missing attributes take their defaults)."""
    import argparse
    opts = options_from_args(args if args is not None else argparse.Namespace())
    if torch.device(opts.device).type == "cuda":
        _require_gpu(opts.device)
    return run_bench(opts)
