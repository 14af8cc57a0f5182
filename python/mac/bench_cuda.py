"""CUDA throughput benchmark (``mac bench --device cuda``): the native CUDA core against torch eager
(the reference backend on CUDA tensors) and ``torch.compile(mode="reduce-overhead")`` (CUDA graphs),
at the paper's shapes, as a markdown table.

Cases (``cuda_cases``): ``rollout-s28`` / ``rollout-s55``: imagined rollout B=1024, H=10, N=8,
4x1024 MLPs, S=28 / 55, C=50, reward task (reward + success nets, no goals); ``eval-b1`` /
``eval-b64``: evaluation best-of-32 for B=1 / 64 (S=28, C=50). Every backend gets the same explicit
noise tensor. Before timing, the native result is checked against the float32 reference with
:func:`mac._cuda_core.check_rollout` / ``check_best_of_n`` (the "check" column).

Reported per case and backend: median wall time of one call (CUDA events, after warm-up),
TFLOP/s (matmul FLOPs: 2 per multiply-add, from ``MLP.flops_per_row``), % of the device's dense
peak for the precision (A100 / H100 / H200 by device name, else "unknown"), speed-up over eager.

Entry points for mac.bench (which owns the CLI):
    add_cuda_arguments(parser)    adds the options below (all optional)
    run_cuda_bench(args) -> str   markdown; reads these attributes of ``args`` (missing -> default):
        repeats         int, 20     timed calls per measurement (median)
        warmup          int, 3      untimed calls first (torch.compile: at least 3, graphs recorded)
        cuda_precision  str, "tf32" native operand precision "tf32" | "bf16"; the torch baselines
                                    run with TF32 matmuls allowed, or under bf16 autocast
        cuda_cases      str, "all"  comma list of rollout-s28, rollout-s55, eval-b1, eval-b64
        no_compile      bool, False skip torch.compile (compiling the paper shape takes minutes)
        quick           bool, False small shapes (2x256 MLPs, B=128, H=3): a smoke run
        cuda_device     str, "cuda" the torch device to run on
Raises RuntimeError with the reason when no usable CUDA GPU is present.
"""

from __future__ import annotations

import statistics
import time

import torch

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

CASES = ("rollout-s28", "rollout-s55", "eval-b1", "eval-b64")


def add_cuda_arguments(parser) -> None:
    g = parser.add_argument_group("CUDA (--device cuda)")
    g.add_argument("--cuda-precision", dest="cuda_precision", choices=("tf32", "bf16"), default="tf32")
    g.add_argument("--cuda-cases", dest="cuda_cases", default="all", help=f"comma list of {', '.join(CASES)}")
    g.add_argument("--no-compile", dest="no_compile", action="store_true", help="skip torch.compile")
    g.add_argument("--quick", action="store_true", help="small shapes (2x256 MLPs, B=128, H=3): a smoke run")
    g.add_argument("--cuda-device", dest="cuda_device", default="cuda")


def peak_tflops(name: str, precision: str):
    for key, peaks in PEAK_TFLOPS:
        if key.lower() in name.lower():
            return peaks[precision]
    return None


def _opt(args, name, default):
    v = getattr(args, name, None)
    return default if v is None else v


def _require_gpu(device: str) -> torch.device:
    if not torch.cuda.is_available():
        built = torch.version.cuda
        raise RuntimeError("mac bench --device cuda needs a CUDA GPU: torch.cuda.is_available() is False ("
                           + (f"torch built with CUDA {built}, but no device/driver is usable)" if built
                              else "this torch build has no CUDA support)"))
    return torch.device(device)


def _time(fn, repeats: int, warmup: int) -> float:
    """Median milliseconds of fn() over `repeats` calls, each timed with CUDA events."""
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(repeats):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end))
    return statistics.median(times)


def _case(name: str, quick: bool):
    hidden = (256, 256) if quick else (1024,) * 4
    if name.startswith("rollout"):
        S = 28 if name.endswith("s28") else 55
        return dict(kind="imagine", B=128 if quick else 1024, H=3 if quick else 10, N=8, S=S, C=50, hidden=hidden)
    B = 1 if name == "eval-b1" else 64
    return dict(kind="best_of_n", B=B, H=1, N=32, S=28, C=50, hidden=hidden)


def _build(c, device):
    from mac.nets import MLP
    torch.manual_seed(0)
    S, C, h = c["S"], c["C"], c["hidden"]
    nets = dict(actor=MLP(S + C, C, h), critic=MLP(S + C, 1, h))
    if c["kind"] == "imagine":
        nets.update(dynamics=MLP(S + C, S, h), reward=MLP(S + C, 1, h), success=MLP(S + C, 1, h))
    nets = {k: v.to(device).eval() for k, v in nets.items()}
    states = torch.randn(c["B"], S, device=device) * 0.5
    shape = (c["H"], c["N"], c["B"], C) if c["kind"] == "imagine" else (c["N"], c["B"], C)
    noise = torch.randn(shape, device=device)
    flops = c["N"] * c["B"] * (nets["actor"].flops_per_row() + nets["critic"].flops_per_row())
    if c["kind"] == "imagine":
        flops += c["B"] * sum(nets[k].flops_per_row() for k in ("dynamics", "reward", "success"))
        flops *= c["H"]
    return nets, states, noise, flops


class _TorchPrecision:
    """TF32 matmuls allowed (tf32) or bf16 autocast (bf16) around the torch baselines."""

    def __init__(self, precision: str):
        self.precision = precision

    def __enter__(self):
        self.saved = torch.backends.cuda.matmul.allow_tf32
        torch.backends.cuda.matmul.allow_tf32 = True
        self.autocast = torch.autocast("cuda", dtype=torch.bfloat16) if self.precision == "bf16" else None
        if self.autocast is not None:
            self.autocast.__enter__()
        return self

    def __exit__(self, *exc):
        if self.autocast is not None:
            self.autocast.__exit__(*exc)
        torch.backends.cuda.matmul.allow_tf32 = self.saved


def run_cuda_bench(args) -> str:
    from mac import _cuda_core, _native
    from mac.rollout import best_of_n, best_of_n_reference, imagine, imagine_reference

    device = _require_gpu(_opt(args, "cuda_device", "cuda"))
    repeats = int(_opt(args, "repeats", 20))
    warmup = max(1, int(_opt(args, "warmup", 3)))
    precision = _opt(args, "cuda_precision", "tf32")
    quick = bool(_opt(args, "quick", False))
    use_compile = not bool(_opt(args, "no_compile", False))
    cases = _opt(args, "cuda_cases", "all")
    cases = CASES if cases == "all" else tuple(x.strip() for x in cases.split(",") if x.strip())
    for c in cases:
        if c not in CASES:
            raise ValueError(f"unknown CUDA bench case {c!r}; choose from {', '.join(CASES)}")
    status = _native.cuda_status()
    name = torch.cuda.get_device_name(device)
    peak = peak_tflops(name, precision)
    lines = [f"## CUDA rollout / best-of-N throughput ({name})", "",
             f"torch {torch.__version__}, CUDA runtime {torch.version.cuda}, native precision {precision}; "
             f"torch baselines with {'TF32 matmuls allowed' if precision == 'tf32' else 'bf16 autocast'}; "
             f"median of {repeats} calls after {warmup} warm-up; dense peak "
             f"{'%.1f TFLOP/s' % peak if peak else 'unknown for this device'}.",
             *([] if status["usable"] else ["", f"Native CUDA core unusable: {status['reason']}"]), "",
             "| case | backend | median ms | TFLOP/s | % of peak | vs eager | check |",
             "|---|---|---|---|---|---|---|"]
    for case_name in cases:
        c = _case(case_name, quick)
        nets, states, noise, flops = _build(c, device)
        rollout = c["kind"] == "imagine"
        net_list = [nets[k] for k in ("actor", "critic", "dynamics", "reward", "success")] if rollout else None

        def native():
            if rollout:
                return imagine(states, None, **nets, steps=c["H"], num_samples=c["N"], noise=noise, backend="cuda")
            return best_of_n(states, None, **nets, num_samples=c["N"], noise=noise, backend="cuda")

        def eager():
            if rollout:
                return imagine_reference(states, None, *net_list, noise)
            return best_of_n_reference(states, None, nets["actor"], nets["critic"], noise)

        results = []
        if status["usable"]:
            _cuda_core.set_precision(precision)
            try:
                out = native()
                torch.cuda.synchronize()
                tol = _cuda_core.TOLERANCES[precision]
                with torch.no_grad():
                    if rollout:
                        _cuda_core.check_rollout(out, states, None, *net_list, noise, tol)
                    else:
                        _cuda_core.check_best_of_n(out, states, None, nets["actor"], nets["critic"], noise, tol)
                check = "ok"
            except AssertionError as exc:
                check = f"MISMATCH: {exc}"
            with torch.no_grad():
                results.append(("native CUDA", _time(native, repeats, warmup), check))
            _cuda_core.set_precision(None)
        else:
            results.append(("native CUDA", None, "unavailable"))
        with torch.no_grad(), _TorchPrecision(precision):
            results.append(("torch eager", _time(eager, repeats, warmup), ""))
            if use_compile:
                t0 = time.perf_counter()
                compiled = torch.compile(eager, mode="reduce-overhead")
                for _ in range(3):
                    compiled()
                torch.cuda.synchronize()
                ctime = time.perf_counter() - t0
                results.append(("torch.compile (CUDA graphs)", _time(compiled, repeats, warmup),
                                f"compile {ctime:.0f} s"))
        eager_ms = next(ms for b, ms, _ in results if b == "torch eager")
        for backend, ms, note in results:
            if ms is None:
                lines.append(f"| {case_name} | {backend} | - | - | - | - | {note} |")
                continue
            tflops = flops / (ms * 1e-3) / 1e12
            pct = f"{100 * tflops / peak:.3g}%" if peak else "unknown"
            lines.append(f"| {case_name} | {backend} | {ms:.3f} | {tflops:.3g} | {pct} | {eager_ms / ms:.2f}x | {note} |")
    lines += ["", "Command: `mac bench --device cuda` (" + ("quick shapes" if quick else "paper shapes") + ")."]
    return "\n".join(lines) + "\n"
