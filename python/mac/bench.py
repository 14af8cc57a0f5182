"""``mac bench``: time the native CPU core against PyTorch on MAC's hot paths, as a markdown table.

Every figure is measured in the same run: the native core (``backend="cpu"``), the PyTorch
reference in eager mode (``backend="torch"``, i.e. :func:`mac.rollout.imagine_reference` /
:func:`~mac.rollout.best_of_n_reference`), the same reference under ``torch.compile`` (for rollouts
one compiled graph per step, looped H times), and the
machine's FMA peak measured by the native micro-kernel on an in-cache problem (plus torch.mm on
1024x1024 for reference). GFLOP/s count 2 * in * out per row per layer for every network evaluated
(N candidates through actor and critic, then dynamics / reward / success on the chosen chunk).

Noise: the native core draws its Philox noise itself inside the timed region (``seed``); the
PyTorch backends get the same noise, ``mac.noise.philox_normal(seed, shape)``, precomputed outside it
(generating it with numpy is not what is being measured), so the comparison is conservative for the
native core. Before a case is timed, :func:`check_agreement` checks that the native core and the
PyTorch reference compute the same thing from that noise; a disagreement stops the benchmark.

Peaks: "% of micro-kernel peak" is relative to the native micro-kernel's measured in-cache
throughput (what this code can reach here); "% of theoretical peak" to cores x clock x FLOP/cycle
(:func:`theoretical_peak`, which states where its clock comes from and what it assumes).
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import os
import platform
import statistics
import sys
import time
from typing import Callable

import torch

CASES = {
    # name: (kind, B, H, N, S, C, hidden)
    "paper-s28": ("imagine", 1024, 10, 8, 28, 50, (1024,) * 4),
    "paper-s55": ("imagine", 1024, 10, 8, 55, 50, (1024,) * 4),
    "cpu-preset": ("imagine", 256, 10, 8, 28, 50, (256,) * 3),
    "eval-b1": ("best_of_n", 1, 1, 32, 28, 50, (1024,) * 4),
    "eval-b64": ("best_of_n", 64, 1, 32, 28, 50, (1024,) * 4),
    "tiny": ("imagine", 64, 2, 8, 10, 20, (64,) * 2),
}
DEFAULT_CASES = ("paper-s28", "paper-s55", "cpu-preset", "eval-b1", "eval-b64")
BACKENDS = ("native", "native-bf16", "eager", "eager-bf16", "compile")
BF16_TWIN = {"native": "native-bf16", "eager": "eager-bf16"}   # --precision bf16: each backend's bf16 row
DEFAULT_BACKENDS = ("native", "eager", "compile")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--cases", nargs="+", default=list(DEFAULT_CASES),
                        choices=sorted(CASES) + ["all"],
                        help="shapes to time (default: the paper rollouts, the CPU preset, evaluation "
                             "best-of-32 with B=1 and B=64)")
    parser.add_argument("--backends", nargs="+", default=list(DEFAULT_BACKENDS), choices=BACKENDS,
                        help="native-bf16: the opt-in bfloat16 mode (AVX512-BF16 CPUs); its note gives the "
                             "argmax agreement with float32 (best-of-N: chosen indices; rollouts: the "
                             "chunks chosen at step 0, from the same start states)")
    parser.add_argument("--precision", nargs="+", default=["fp32"], choices=("fp32", "bf16"),
                        help="fp32 and/or bf16: bf16 adds each backend's bf16 row (native-bf16: the native "
                             "core's AVX512-BF16 mode; eager-bf16: the reference under torch.autocast(bfloat16)), "
                             "with its speed-up over the same backend in float32 and the bf16 peak")
    parser.add_argument("--batch", type=int, default=None, help="override B of every rollout case")
    parser.add_argument("--steps", type=int, default=None, help="override H of every rollout case")
    parser.add_argument("--repeats", type=int, default=None,
                        help="timed runs per case and backend (median; default 3, and 20 with --device "
                             "cuda, where fewer are refused)")
    parser.add_argument("--budget", type=float, default=60.0,
                        help="seconds of timed runs per case and backend; fewer repeats if exceeded")
    parser.add_argument("--threads", type=int, default=None,
                        help="threads for every backend (default: torch.get_num_threads())")
    parser.add_argument("--compile-mode", default="default",
                        help='torch.compile mode of --device cpu ("default", "max-autotune-no-cudagraphs", ...); '
                             '--device cuda always times mode="max-autotune"')
    parser.add_argument("--output", "-o", default=None, help="also write the markdown to this file")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--train-step", dest="train_step", default=None, choices=("cpu", "paper", "none"),
                        help="also time one full MAC training step (agent.update) with the native vs "
                             "the torch rollout at this preset (S=28, A=5, reward task; default cpu, and "
                             "paper with --device cuda)")
    parser.add_argument("--train-repeats", dest="train_repeats", type=int, default=None,
                        help="timed training steps (default 7, and 20 with --device cuda)")


CPU_DEFAULTS = {"repeats": 3, "train_step": "cpu", "train_repeats": 7}


def default_train_step(device: str, quick: bool = False) -> str:
    """The preset whose training step ``mac bench`` times when --train-step is not given."""
    return "paper" if device == "cuda" and not quick else "cpu"


def fill_defaults(args: argparse.Namespace, defaults: dict) -> argparse.Namespace:
    """Set the options left unset (None or absent) to ``defaults``: their defaults depend on --device."""
    for name, value in defaults.items():
        if getattr(args, name, None) is None:
            setattr(args, name, value)
    return args


@dataclasses.dataclass
class Row:
    case: str
    backend: str
    seconds: float | None
    gflops: float | None
    note: str = ""


def _flops(kind, B, H, N, nets) -> float:
    if kind == "best_of_n":
        return float(B * N * (nets["actor"].flops_per_row() + nets["critic"].flops_per_row()))
    per_state = (N * (nets["actor"].flops_per_row() + nets["critic"].flops_per_row())
                 + nets["dynamics"].flops_per_row() + nets["reward"].flops_per_row()
                 + nets["success"].flops_per_row())
    return float(H * B * per_state)


def _make(kind, B, H, N, S, C, hidden, seed):
    from mac.nets import MLP
    from mac.noise import philox_normal

    torch.manual_seed(seed)
    nets = {"actor": MLP(S + C, C, hidden), "critic": MLP(S + C, 1, hidden)}
    if kind == "imagine":
        nets.update(dynamics=MLP(S + C, S, hidden), reward=MLP(S + C, 1, hidden),
                    success=MLP(S + C, 1, hidden))
    for n in nets.values():
        n.requires_grad_(False)
    states = torch.randn(B, S)
    shape = (N, B, C) if kind == "best_of_n" else (H, N, B, C)
    noise = philox_normal(seed, shape)  # exactly what the native core draws from `seed`
    return nets, states, noise


def _time(fn: Callable[[], object], repeats: int, budget: float) -> tuple[float, int]:
    """Median seconds of up to `repeats` runs after one warm-up run (fewer if over budget)."""
    t0 = time.perf_counter()
    fn()
    first = time.perf_counter() - t0
    n = max(1, min(repeats, int(budget // max(first, 1e-9))))
    times = []
    for _ in range(n):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times), n


def _runner(backend, kind, nets, states, noise, H, N, seed, compile_mode):
    from mac import rollout as R

    if backend == "native":
        if kind == "best_of_n":
            return lambda: R.best_of_n(states, None, actor=nets["actor"], critic=nets["critic"],
                                       num_samples=N, seed=seed, backend="cpu")
        return lambda: R.imagine(states, None, actor=nets["actor"], critic=nets["critic"],
                                 dynamics=nets["dynamics"], reward=nets["reward"],
                                 success=nets["success"], steps=H, num_samples=N, seed=seed,
                                 backend="cpu")
    if backend == "native-bf16":
        from mac import _cpu_core

        if kind == "best_of_n":
            return lambda: _cpu_core.best_of_n(states, None, nets["actor"], nets["critic"], N, None,
                                               seed, bf16=True)
        return lambda: _cpu_core.imagine(states, None, nets["actor"], nets["critic"], nets["dynamics"],
                                         nets["reward"], nets["success"], H, N, None, seed, bf16=True)
    if backend == "eager-bf16":
        fp32 = _runner("eager", kind, nets, states, noise, H, N, seed, compile_mode)

        def bf16():
            with torch.autocast("cpu", dtype=torch.bfloat16, cache_enabled=False):
                return fp32()
        return bf16
    mode = None if compile_mode == "default" else compile_mode
    if kind == "best_of_n":
        ref = R.best_of_n_reference
        if backend == "compile":
            ref = torch.compile(ref, mode=mode)
        args = (states, None, nets["actor"], nets["critic"], noise)
    elif backend == "eager":
        ref = R.imagine_reference
        args = (states, None, nets["actor"], nets["critic"], nets["dynamics"], nets["reward"],
                nets["success"], noise)
    else:
        # torch.compile of the reference, one rollout step per compiled graph (the same graph serves
        # all H steps: a short compile, and the per-step work is what inductor can fuse anyway).
        step = torch.compile(_reference_step, mode=mode)

        def ref(states, goals, actor, critic, dynamics, reward, success, noise):
            s = states
            out = [[s], [], [], [], []]
            for k in range(noise.shape[0]):
                s, chunk, r, m, q = step(s, goals, actor, critic, dynamics, reward, success, noise[k])
                for lst, v in zip(out, (s, chunk, r, m, q)):
                    lst.append(v)
            return R.Rollout(*(torch.stack(v) for v in out))
        args = (states, None, nets["actor"], nets["critic"], nets["dynamics"], nets["reward"],
                nets["success"], noise)

    def call():
        with torch.no_grad():
            return ref(*args)
    return call


def _reference_step(s, goals, actor, critic, dynamics, reward, success, noise_k):
    """One step of mac.reference.imagine_reference."""
    from mac import reference as R

    choice = R.best_of_n_reference(s, goals, actor, critic, noise_k)
    r, m = R.reward_and_mask(s, goals, choice.chunks, reward, success)
    s_next = s + dynamics(R.concat_inputs(s, choice.chunks))
    return s_next, choice.chunks, r, m, choice.scores


def _agreement(kind, nets, states, H, N, seed) -> float:
    """Fraction of argmax choices the bf16 mode shares with float32 (same seed, same states). For a
    rollout this is its step 0: the noise of step 0 is the (N, B, C) head of the seed's stream, so
    one best-of-N call from the start states makes exactly the rollout's first choice."""
    from mac import _cpu_core

    a = _cpu_core.best_of_n(states, None, nets["actor"], nets["critic"], N, None, seed)
    b = _cpu_core.best_of_n(states, None, nets["actor"], nets["critic"], N, None, seed, bf16=True)
    return float((a.indices == b.indices).float().mean())


# ------------------------------------------------------------------------------------ agreement

AGREE_ROWS = 8        # rows of the batch compared (rows are independent: a prefix is a fair sample)
ERR_FACTOR = 8.0      # native error vs float64 <= ERR_FACTOR x the float32-level error + ERR_FLOOR x |value|
ERR_FLOOR = 1e-5
GAP_FACTOR = 16.0     # a decision (argmax, success threshold) may differ only within this x that error
PERTURB = 2.0 ** -23  # relative weight perturbation of the float32-level sensitivity run


class Disagreement(RuntimeError):
    """The native core and the PyTorch reference computed different results for a case."""


def _perturbed(net64, seed):
    """A float64 copy with every parameter scaled by 1 + U(-PERTURB, PERTURB): how much the result
    moves under float32-sized changes measures float32's error where sums cancel (a 1024-term dot
    product of O(1) terms with an O(0.01) result: ~1e-5 absolute, far above 1e-5 x |result|)."""
    import copy
    g = torch.Generator().manual_seed(seed)
    p = copy.deepcopy(net64)
    for prm in p.parameters():
        prm.mul_(1 + PERTURB * (2 * torch.rand(prm.shape, generator=g, dtype=torch.float64) - 1))
    return p


def _decided(q64, *others):
    """(B,) columns of (N, B) float64 critic values whose argmax is clear of the float32-level
    errors of ``others`` (the same values in float32, and with perturbed weights)."""
    finite = torch.isfinite(q64).all(0)
    if q64.shape[0] == 1:
        return finite
    top = q64.topk(2, dim=0).values
    err = torch.stack([(q.double() - q64).abs().nan_to_num(float("inf")).amax(0) for q in others]).amax(0)
    return finite & (top[0] - top[1] > torch.clamp(GAP_FACTOR * err, min=1e-6))


def _all_q(states, actor, critic, noise):
    from mac.reference import candidate_scores
    return candidate_scores(states, None, actor, critic, noise)[1]


def _compare(case, name, nat, ref64, rows, ref32, refp):
    """Over the comparable ``rows``: max |native - float64| <= ERR_FACTOR x the larger of
    max |torch32 - float64| and max |perturbed - float64|, + ERR_FLOOR max(1, max |float64|)."""
    if not bool(rows.any()):
        return
    def err(x):
        return float((x.double() - ref64.double()).abs()[rows].max())
    e_nat, e_ref = err(nat), max(err(ref32), err(refp))
    scale = max(1.0, float(ref64.double().abs()[rows].max()))
    if not e_nat <= ERR_FACTOR * e_ref + ERR_FLOOR * scale:
        raise Disagreement(
            f"{case}: the native core and the PyTorch reference disagree on {name}: native error "
            f"{e_nat:.3g} against a float64 evaluation, where float32's is {e_ref:.3g} (allowed: "
            f"{ERR_FACTOR:g}x that + {ERR_FLOOR:g} x {scale:.3g})")


@torch.no_grad()
def check_agreement(case, kind, nets, states, noise, H, N, seed, rows=AGREE_ROWS) -> str:
    """Before timing ``case``: run the native core exactly as timed (seeded, whole batch) and compare
    it with the PyTorch reference given the noise the torch backends are timed with
    (:func:`compare_with_reference`). Raises :class:`Disagreement`; returns a note for the table."""
    from mac import rollout as R

    if kind == "best_of_n":
        nat = R.best_of_n(states, None, actor=nets["actor"], critic=nets["critic"], num_samples=N,
                          seed=seed, backend="cpu")
    else:
        nat = R.imagine(states, None, **{k: nets[k] for k in _ORDER}, steps=H, num_samples=N, seed=seed,
                        backend="cpu")
    return compare_with_reference(case, kind, nat, nets, states, noise, H, N, rows)


_ORDER = ("actor", "critic", "dynamics", "reward", "success")


@torch.no_grad()
def compare_with_reference(case, kind, result, nets, states, noise, H, N, rows=AGREE_ROWS) -> str:
    """Compare the first ``rows`` rows of ``result`` (a BestOfN / Rollout of the whole batch) with
    the PyTorch reference run on ``noise``, judged by a float64 evaluation. Tolerance, as in
    tests/test_native_cpu.py: native and torch are float32 evaluations of the same networks in
    different summation orders, so the error must be of the order of float32's own: <= 8x the
    larger of torch float32's error and the change of the float64 result under float32-sized weight
    perturbations, + 1e-5 relative. Argmax / success decisions may differ only where the float64
    margin is within 16x that error, and a rollout row is compared only up to such a near-tie
    (after it, trajectories legitimately part). Raises :class:`Disagreement`."""
    import copy
    from mac import reference as R

    b = min(rows, states.shape[0])
    s = states[:b]
    n64 = {k: copy.deepcopy(v).double() for k, v in nets.items()}
    npt = {k: _perturbed(v, i) for i, (k, v) in enumerate(n64.items())}
    if kind == "best_of_n":
        nat = result
        z = noise[:, :b].contiguous()
        z64 = z.double()
        ref32 = R.best_of_n_reference(s, None, nets["actor"], nets["critic"], z)
        ref64 = R.best_of_n_reference(s.double(), None, n64["actor"], n64["critic"], z64)
        refp = R.best_of_n_reference(s.double(), None, npt["actor"], npt["critic"], z64)
        ok = _decided(_all_q(s.double(), n64["actor"], n64["critic"], z64),
                      _all_q(s, nets["actor"], nets["critic"], z),
                      _all_q(s.double(), npt["actor"], npt["critic"], z64))
        if not torch.equal(nat.indices[:b][ok], ref64.indices[ok]):
            raise Disagreement(f"{case}: the native core chose other candidates than the float64 "
                               f"reference where the choice is clear: {nat.indices[:b][ok].tolist()} "
                               f"vs {ref64.indices[ok].tolist()}")
        ok &= (ref32.indices == ref64.indices) & (refp.indices == ref64.indices)
        _compare(case, "chunks", nat.chunks[:b], ref64.chunks, ok, ref32.chunks, refp.chunks)
        _compare(case, "scores", nat.scores[:b], ref64.scores, ok, ref32.scores, refp.scores)
        return f"agrees with torch on {int(ok.sum())}/{b} rows"
    order = _ORDER
    nat = result
    z = noise[:, :, :b].contiguous()
    z64 = z.double()
    ref32 = R.imagine_reference(s, None, *(nets[k] for k in order), z)
    ref64 = R.imagine_reference(s.double(), None, *(n64[k] for k in order), z64)
    refp = R.imagine_reference(s.double(), None, *(npt[k] for k in order), z64)
    valid = torch.ones(H + 1, b, dtype=torch.bool)
    for k in range(H):
        sk = ref64.states[k]
        ok = _decided(_all_q(sk, n64["actor"], n64["critic"], z64[k]),
                      _all_q(sk.float(), nets["actor"], nets["critic"], z[k]),
                      _all_q(sk, npt["actor"], npt["critic"], z64[k]))
        x = R.concat_inputs(sk, ref64.chunks[k])
        l64 = n64["success"](x).squeeze(-1)
        err = torch.maximum((nets["success"](x.float()).squeeze(-1).double() - l64).abs(),
                            (npt["success"](x).squeeze(-1) - l64).abs())
        ok &= l64.abs() > torch.clamp(GAP_FACTOR * err, min=1e-6)
        valid[k + 1] = valid[k] & ok
    for name in ("chunks", "rewards", "masks", "q"):
        _compare(case, name, getattr(nat, name)[:, :b], getattr(ref64, name), valid[1:],
                 getattr(ref32, name), getattr(refp, name))
    _compare(case, "states", nat.states[:, :b], ref64.states, valid, ref32.states, refp.states)
    return f"agrees with torch on {int(valid[-1].sum())}/{b} rows x {H} steps"


# ------------------------------------------------------------------------------------ peaks

FMA_PIPES = 2  # assumed FMA units per core (Intel Xeon Gold/Platinum, AMD Zen 5; Zen 4 splits 512-bit FMAs)
ISA_LANES = {"avx512": 16, "avx2": 8, "generic": 4}  # float32 lanes of each ISA copy (generic: SSE)


def _cpu_topology() -> tuple[int, int]:
    """(logical CPUs this process may run on, physical cores among them), from sched_getaffinity and
    /proc/cpuinfo (physical id, core id); physical = logical where that is not available."""
    try:
        allowed = sorted(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        allowed = list(range(os.cpu_count() or 1))
    cores, proc, phys = set(), None, "0"
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                key, _, val = (x.strip() for x in line.partition(":"))
                if key == "processor":
                    proc = int(val)
                elif key == "physical id":
                    phys = val
                elif key == "core id" and proc in allowed:
                    cores.add((phys, val))
    except (OSError, ValueError):
        pass
    return len(allowed), (len(cores) or len(allowed))


def _cpu_clock() -> tuple[float | None, str]:
    """(GHz, where it came from): cpufreq's maximum (the boost clock) if the kernel exposes it,
    else /proc/cpuinfo's "cpu MHz" (the current clock; on a VM usually the nominal one)."""
    try:
        with open("/sys/devices/system/cpu/cpu0/cpufreq/cpuinfo_max_freq") as f:
            return int(f.read().strip()) / 1e6, "cpufreq cpuinfo_max_freq (maximum boost clock)"
    except (OSError, ValueError):
        pass
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("cpu MHz"):
                    return float(line.split(":", 1)[1]) / 1e3, ("/proc/cpuinfo 'cpu MHz' (current clock as "
                                                                "reported; no cpufreq here, may be below boost)")
    except (OSError, ValueError):
        pass
    return None, "unknown (no cpufreq, no 'cpu MHz' in /proc/cpuinfo)"


def precision_backends(backends, precisions) -> list[str]:
    """The backends to time for ``precisions``: the fp32 ones as given (if fp32 is asked for), each
    followed by its bf16 twin (if bf16 is); a backend without a twin (compile) runs in fp32 only."""
    out = []
    for b in backends:
        if "fp32" in precisions or b not in BF16_TWIN:
            out.append(b)
        if "bf16" in precisions and b in BF16_TWIN:
            out.append(BF16_TWIN[b])
    return list(dict.fromkeys(out))


def bf16_peak(theory: dict) -> tuple[float | None, str]:
    """The bf16 matrix unit's peak beside the float32 one: AVX512-BF16's vdpbf16ps does two
    multiply-adds per 32-bit lane where an FMA does one, at the FMA's rate (assumed) -> 2x the fp32
    peak; AMX tiles are not used by the native core (its bf16 mode runs vdpbf16ps there too)."""
    from mac.precision import cpu_bf16_unit

    unit = cpu_bf16_unit()
    if unit is None or theory["gflops"] is None:
        return None, "no bf16 unit" if unit is None else "clock unknown"
    return 2 * theory["gflops"], f"{unit}: 2 MACs per 32-bit lane per vdpbf16ps, 2x the FMA peak (assumed)"


def theoretical_peak(threads: int, isa: str) -> dict:
    """Float32 peak of ``threads`` threads: cores x clock x FLOP/cycle, FLOP/cycle = lanes of the ISA
    copy x 2 (an FMA is 2 FLOPs) x FMA_PIPES. An upper bound: cores are physical cores (SMT
    siblings share FMA units), the clock is what the system reports (see ``clock_source``; wide
    vector code may run slower), and two full-width FMA pipes are assumed."""
    logical, physical = _cpu_topology()
    cores = max(1, min(threads, physical))
    ghz, source = _cpu_clock()
    per_cycle = ISA_LANES.get(isa, 4) * 2 * FMA_PIPES
    return {"gflops": None if ghz is None else cores * ghz * per_cycle, "cores": cores,
            "physical_cores": physical, "logical_cpus": logical, "ghz": ghz, "clock_source": source,
            "flop_per_cycle": per_cycle, "isa": isa}


def gemm_peak(threads: int) -> dict[str, float]:
    from mac._native import require_cpu_ext

    ext = require_cpu_ext()
    peak = max(ext.gemm_peak(3000, threads) for _ in range(3))
    a, b = torch.randn(1024, 1024), torch.randn(1024, 1024)
    torch.mm(a, b)
    t0 = time.perf_counter()
    reps = 10
    for _ in range(reps):
        torch.mm(a, b)
    mm = 2 * 1024 ** 3 * reps / (time.perf_counter() - t0) / 1e9
    return {"micro_kernel": peak, "torch_mm": mm,
            "theoretical": theoretical_peak(threads, ext.resolve_isa(""))}


def _fmt(x, spec):
    return "—" if x is None else format(x, spec)


def run(args: argparse.Namespace) -> int:
    from mac import _cpu_core
    from mac._native import require_cpu_ext

    ext = require_cpu_ext()
    fill_defaults(args, CPU_DEFAULTS)
    threads = args.threads or torch.get_num_threads()
    torch.set_num_threads(threads)
    _cpu_core.set_num_threads(threads)
    cases = sorted(CASES) if "all" in args.cases else list(dict.fromkeys(args.cases))
    args.backends = precision_backends(args.backends, getattr(args, "precision", ["fp32"]))
    peak = gemm_peak(threads)
    print(f"FMA peak (native micro-kernel, in cache, {threads} threads): {peak['micro_kernel']:.1f} "
          f"GFLOP/s; torch.mm 1024x1024: {peak['torch_mm']:.1f} GFLOP/s; {_theory_line(peak)}",
          file=sys.stderr)
    rows: list[Row] = []
    shapes = {}
    for name in cases:
        kind, B, H, N, S, C, hidden = CASES[name]
        if kind == "imagine":
            B = args.batch or B
            H = args.steps or H
        shapes[name] = (kind, B, H, N, S, C, hidden)
        nets, states, noise = _make(kind, B, H, N, S, C, hidden, args.seed)
        flops = _flops(kind, B, H, N, nets)
        try:
            agreed = check_agreement(name, kind, nets, states, noise, H, N, args.seed)
        except Disagreement as exc:
            print(f"mac bench: error: {exc}. Not timing results that differ.", file=sys.stderr)
            return 1
        print(f"{name:11s} check: native (seed {args.seed}) {agreed} (same noise)", file=sys.stderr)
        for backend in args.backends:
            note = ""
            try:
                fn = _runner(backend, kind, nets, states, noise, H, N, args.seed, args.compile_mode)
                if backend == "compile":
                    t0 = time.perf_counter()
                    fn()  # compilation
                    note = f"compile {time.perf_counter() - t0:.0f} s"
                secs, n = _time(fn, args.repeats, args.budget)
                if backend == "native-bf16":
                    note = f"argmax agreement with float32 {100 * _agreement(kind, nets, states, H, N, args.seed):.1f}%"
                fp32_row = next((r for r in rows if r.case == name and BF16_TWIN.get(r.backend) == backend), None)
                if fp32_row is not None and fp32_row.seconds:
                    note = ", ".join(x for x in (f"{fp32_row.seconds / secs:.2f}x its float32 speed", note) if x)
                if backend == "native":
                    note = agreed
                note = ", ".join(x for x in (note, f"n={n}") if x)
                rows.append(Row(name, backend, secs, flops / secs / 1e9, note))
            except Exception as exc:  # torch.compile may be unavailable (no C++ compiler, ...)
                rows.append(Row(name, backend, None, None, f"skipped: {type(exc).__name__}: "
                                f"{str(exc).splitlines()[0][:80] if str(exc) else ''}"))
            r = rows[-1]
            print(f"{name:11s} {backend:8s} {_fmt(r.seconds, '.4f')} s  {_fmt(r.gflops, '.1f')} GFLOP/s"
                  f"  {r.note}", file=sys.stderr)
    md = _markdown(rows, shapes, peak, threads, ext)
    if getattr(args, "train_step", "none") != "none":
        md += "\n" + train_step_table(args.train_step, args.train_repeats, args.seed,
                                      getattr(args, "precision", ["fp32"]), getattr(args, "agent_flags", ()))
    print(md)
    if args.output:
        with open(args.output, "w") as f:
            f.write(md)
    return 0


TRAIN_OBS_DIM, TRAIN_ACTION_DIM = 28, 5  # cube-single's state and action sizes (a reward task)


def random_train_batch(batch_size: int, chunk_dim: int, seed: int, device="cpu") -> dict[str, torch.Tensor]:
    """A reward-task training batch of random values: observations / next_observations (B, 28),
    actions (B, chunk_dim) in [-1, 1], rewards (B,) in [-1, 0], masks (B,) ones."""
    g = torch.Generator().manual_seed(seed)  # drawn on the CPU: the same batch on every device
    B, S = batch_size, TRAIN_OBS_DIM
    batch = {"observations": torch.randn(B, S, generator=g),
             "actions": torch.rand(B, chunk_dim, generator=g) * 2 - 1,
             "next_observations": torch.randn(B, S, generator=g),
             "rewards": -torch.rand(B, generator=g), "masks": torch.ones(B)}
    return {k: v.to(device) for k, v in batch.items()}


def time_train_steps(cfg, backends, repeats: int, warmup: int, seed: int, device="cpu"):
    """Median-ready times of one ``MACAgent.update`` per rollout backend (one agent each, same
    initial weights, same random batch), interleaved step by step (mac.bench_timing). Returns
    {backend: Timing}."""
    from mac.agent import MACAgent
    from mac.bench_timing import time_interleaved

    from mac.precision import precision_mode

    batch = random_train_batch(cfg.batch_size, cfg.chunk_len * TRAIN_ACTION_DIM, seed, device)
    steps = {}
    for key in backends:          # "cpu", "torch", or with "-bf16": that backend at --precision bf16
        backend, _, precision = key.partition("-")
        torch.manual_seed(seed)
        agent = MACAgent(TRAIN_OBS_DIM, TRAIN_ACTION_DIM, 0,
                         dataclasses.replace(cfg, rollout_backend=backend)).to(device)

        def step(agent=agent, precision=precision or "fp32"):
            with precision_mode(precision):
                return agent.update(batch)
        steps[key] = step
    return time_interleaved(steps, repeats, warmup, device)


def train_step_config(preset_name: str, agent_flags=(), overrides=None):
    """The timed training step's AgentConfig: the preset, then ``--agent.<key>=<value>`` flags (as
    ``mac train`` takes them), then ``overrides`` (AgentConfig fields; tests)."""
    from mac.config import apply_agent_flags, preset

    cfg, _ = apply_agent_flags(preset(preset_name), list(agent_flags))
    return dataclasses.replace(cfg, **(overrides or {}))


def train_step_shape(preset_name: str, cfg) -> str:
    return (f"preset `{preset_name}`: batch {cfg.batch_size}, rollout batch {cfg.rollout_batch}, "
            f"H={cfg.rollout_steps}, N={cfg.num_samples_train}, chunk {cfg.chunk_len} x A={TRAIN_ACTION_DIM}, "
            f"S={TRAIN_OBS_DIM}, {len(cfg.hidden_dims)}x{cfg.hidden_dims[0]} networks")


def train_step_table(preset_name: str, repeats: int, seed: int, precisions=("fp32",), agent_flags=()) -> str:
    """Median time of one ``MACAgent.update`` with each rollout backend (and, with bf16 in
    ``precisions``, each at --precision bf16), interleaved in one run; ``agent_flags``
    (``--agent.<key>=<value>``) change the preset's settings."""
    cfg = train_step_config(preset_name, agent_flags)
    keys = ["cpu", "torch"] + (["cpu-bf16", "torch-bf16"] if "bf16" in precisions else [])
    med = {k: t.median for k, t in time_train_steps(cfg, keys, repeats, 1, seed).items()}
    names = {"cpu": "native (cpu), fp32", "torch": "torch eager, fp32",
             "cpu-bf16": "native (cpu), bf16", "torch-bf16": "torch eager, bf16"}
    ratio = {k: "" if k == "cpu" else f"{med[k] / med['cpu']:.2f}x" for k in keys}
    rows = [f"| {names[k]} | {med[k]:.1f} ms | {ratio[k]} |" for k in keys]
    changed = f" with {' '.join(agent_flags)}" if agent_flags else ""
    return "\n".join([
        f"One training step (`agent.update`, {train_step_shape(preset_name, cfg)}{changed}), median of {repeats}, "
        f"interleaved; bf16 = `--precision bf16` (autocast + the native core's bf16 mode):",
        "",
        "| rollout backend, precision | median step time | time / native fp32 |",
        "|---|---|---|", *rows, ""])


def cpu_model_name() -> str:
    """/proc/cpuinfo's "model name", else what the platform module knows."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _markdown(rows, shapes, peak, threads, ext) -> str:
    info = ext.build_info()
    cpu = cpu_model_name()
    out = [f"Measured {datetime.datetime.now():%Y-%m-%d %H:%M}, {cpu}, {os.cpu_count()} logical CPUs, "
           f"{threads} threads, torch {torch.__version__}, native ISA {info['cpu_isa']}.",
           "",
           f"Micro-kernel peak measured in this run: **{peak['micro_kernel']:.1f} GFLOP/s** (the "
           f"native micro-kernel on an in-cache 96x256x64 problem per thread: what this code reaches "
           f"here); torch.mm 1024x1024x1024: {peak['torch_mm']:.1f} GFLOP/s.",
           "",
           f"{_theory_line(peak)}.",
           "",
           "| case | shape | backend | median time | GFLOP/s | % of micro-kernel peak "
           "| % of theoretical peak | native speed-up | note |",
           "|---|---|---|---|---|---|---|---|---|"]
    by_case: dict[str, dict[str, Row]] = {}
    for r in rows:
        by_case.setdefault(r.case, {})[r.backend] = r
    for case, d in by_case.items():
        kind, B, H, N, S, C, hidden = shapes[case]
        w = f"{len(hidden)}x{hidden[0]}" if hidden else "linear"
        shape = (f"best-of-{N}, B={B}, S={S}, C={C}, {w}" if kind == "best_of_n"
                 else f"rollout B={B}, H={H}, N={N}, S={S}, C={C}, {w}")
        nat = d.get("native")
        for backend, r in d.items():
            if r.seconds is None:
                out.append(f"| {case} | {shape} | {backend} | — | — | — | — | — | {r.note} |")
                continue
            t = f"{r.seconds * 1e3:.1f} ms" if r.seconds < 10 else f"{r.seconds:.2f} s"
            pct = 100.0 * r.gflops / peak["micro_kernel"]
            theory = peak["theoretical"]["gflops"]
            if backend.endswith("-bf16"):
                theory = bf16_peak(peak["theoretical"])[0]
            pct_t = f"{100.0 * r.gflops / theory:.0f}%" if theory else "—"
            speed = ""
            if backend != "native" and nat is not None and nat.seconds:
                speed = f"{r.seconds / nat.seconds:.2f}x"
            out.append(f"| {case} | {shape} | {backend} | {t} | {r.gflops:.1f} | {pct:.0f}% | {pct_t} "
                       f"| {speed} | {r.note} |")
    out.append("")
    out.append("native speed-up = backend time / native (float32) time, same case, same run; "
               "native-bf16 rows: < 1 means bf16 is faster. GFLOP/s count the float32-equivalent "
               "multiply-adds (2 per MAC).")
    if any(r.backend.endswith("-bf16") for r in rows):
        value, how = bf16_peak(peak["theoretical"])
        out.append("")
        out.append(f"bf16 rows: % of theoretical peak against the bf16 peak, "
                   f"{_fmt(value, '.1f')} GFLOP/s ({how}).")
    return "\n".join(out) + "\n"


def _theory_line(peak) -> str:
    t = peak["theoretical"]
    if t["gflops"] is None:
        return f"theoretical fp32 peak: unknown (CPU clock not found: {t['clock_source']})"
    return (f"Theoretical fp32 peak: **{t['gflops']:.1f} GFLOP/s** = {t['cores']} physical core(s) x "
            f"{t['ghz']:.3f} GHz x {t['flop_per_cycle']} FLOP/cycle ({t['isa']}: "
            f"{ISA_LANES.get(t['isa'], 4)} lanes x 2 per FMA x {FMA_PIPES} FMA pipes, assumed); clock "
            f"from {t['clock_source']}; an upper bound ({t['logical_cpus']} logical CPUs, "
            f"{t['physical_cores']} physical cores available)")


def main(argv=None) -> int:  # `python -m mac.bench` until the CLI wires `mac bench`
    parser = argparse.ArgumentParser(prog="mac bench", description=__doc__.splitlines()[0])
    add_arguments(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
