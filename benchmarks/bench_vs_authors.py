"""mac against the authors' JAX MAC (github.com/kwanyoungpark/MAC, agents/mac.py) on identical shapes.

Times one training step (``update``) and best-of-32 acting (``sample_actions`` / ``MACAgent.act``)
for 1 and 64 states, each side in its own fresh process, the two sides interleaved round by round
(so drifts of a shared machine hit both), and prints a markdown table of medians and same-run ratios.

Set-up (both optional; nothing in the test suite needs them)::

    git clone https://github.com/kwanyoungpark/MAC /path/to/authors-mac
    python3.11 -m venv /path/to/venv-jax
    /path/to/venv-jax/bin/pip install "jax[cpu]" flax distrax ml_collections optax

    python benchmarks/bench_vs_authors.py --authors_repo /path/to/authors-mac \\
        --jax_python /path/to/venv-jax/bin/python --configs small paper --threads 2 -o table.md

``--busy_cores K`` keeps K cores busy with spinning processes during every measurement (a machine
that also runs evaluation workers, data generation or a second run). Both sides are pinned to the
same CPUs (``--cpus``, default: the first ``--threads`` of this process's affinity) and use
``--threads`` threads: torch.set_num_threads for mac; for XLA, the affinity mask (it sizes its pool
from the CPUs it may use) plus ``--xla_cpu_multi_thread_eigen``.

Shapes: reward task (no goals), S = 28 (cube-single), A = 5, h = 10 (chunk 50), H = 10 model calls,
N = 8 candidates in training rollouts, 32 at acting, K = 10 flow steps, LayerNorm MLPs, synthetic
batches (timing does not depend on the data). ``small``: 4x256 networks, batch 256, rollout batch
256; ``paper``: 4x1024, batch 1024, rollout batch 1024 (MAC.md).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time

CONFIGS = {
    "small": dict(width=256, depth=4, batch=256, rollout_batch=256),
    "paper": dict(width=1024, depth=4, batch=1024, rollout_batch=1024),
}
S, A, H_CHUNK, H_ROLLOUT, N_TRAIN, N_TEST, FLOW_STEPS = 28, 5, 10, 10, 8, 32, 10
ACT_STATES = (1, 64)


# ----------------------------------------------------------------------------- worker: ours
def _mac_worker(cfg: dict, steps: int, act_repeats: int, seed: int, auto_threads: bool) -> dict:
    import dataclasses

    import torch

    from mac.agent import MACAgent
    from mac.config import preset
    dims = (cfg["width"],) * cfg["depth"]
    config = dataclasses.replace(
        preset("paper"), hidden_dims=dims, batch_size=cfg["batch"], rollout_batch=cfg["rollout_batch"],
        rollout_steps=H_ROLLOUT, chunk_len=H_CHUNK, num_samples_train=N_TRAIN,
        num_samples_test=N_TEST, flow_steps=FLOW_STEPS)
    torch.manual_seed(seed)
    agent = MACAgent(S, A, 0, config)
    g = torch.Generator().manual_seed(seed)
    B = cfg["batch"]
    batch = {"observations": torch.randn(B, S, generator=g),
             "actions": torch.rand(B, H_CHUNK * A, generator=g) * 2 - 1,
             "next_observations": torch.randn(B, S, generator=g),
             "rewards": -torch.rand(B, generator=g), "masks": torch.ones(B)}

    tuner = None
    if auto_threads:  # mac train's default --threads auto (mac.threads), here from the first step
        from mac.threads import ThreadTuner
        tuner = ThreadTuner(torch.get_num_threads(), torch.set_num_threads)

    def update():
        if tuner:
            tuner.before_step()
        agent.update(batch)
        if tuner:
            tuner.after_step(0)

    def act(n):
        obs = torch.randn(n, S, generator=g)
        return lambda: agent.act(obs, num_samples=N_TEST)

    return _measure(update, act, steps, act_repeats)


# ----------------------------------------------------------------------------- worker: authors'
def _jax_worker(cfg: dict, steps: int, act_repeats: int, seed: int, authors_repo: str) -> dict:
    sys.path.insert(0, authors_repo)
    import jax
    import numpy as np

    from agents.mac import MACAgent, get_config
    config = get_config()
    dims = (cfg["width"],) * cfg["depth"]
    config.update(dict(actor_hidden_dims=dims, value_hidden_dims=dims, dynamics_hidden_dims=dims,
                       batch_size=cfg["batch"], rollout_batch_size=cfg["rollout_batch"],
                       rollout_steps=H_ROLLOUT, action_chunking=H_CHUNK, num_samples_train=N_TRAIN,
                       num_samples_test=N_TEST, flow_steps=FLOW_STEPS, dataset_class="ACDataset"))
    rng = np.random.default_rng(seed)
    B = cfg["batch"]

    def make_batch(n):  # the keys and dtypes of the authors' ACDataset.sample
        return {"observations": rng.standard_normal((n, S), np.float32),
                "actions": rng.uniform(-1, 1, (n, H_CHUNK * A)).astype(np.float32),
                "next_observations": rng.standard_normal((n, S), np.float32),
                "rewards": -rng.uniform(0, 1, n).astype(np.float32),
                "masks": np.ones(n, np.float32), "value_goals": None, "actor_goals": None}

    agent = MACAgent.create(seed, make_batch(1), config)
    batch = make_batch(B)
    state = {"agent": agent, "key": jax.random.PRNGKey(seed)}

    def update():
        state["agent"], info = state["agent"].update(batch)
        jax.block_until_ready(info)

    def act(n):
        obs = rng.standard_normal((n, S), np.float32)

        def run():
            state["key"], k = jax.random.split(state["key"])
            jax.block_until_ready(state["agent"].sample_actions(obs, None, seed=k, mode="test"))
        return run

    return _measure(update, act, steps, act_repeats)


# ----------------------------------------------------------------------------- shared timing
def _times(fn, repeats: int) -> list[float]:
    """Seconds of ``repeats`` calls of ``fn`` after one warm-up call (JIT compilation, allocator)."""
    fn()
    out = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t0)
    return out


def _measure(update, act, steps: int, act_repeats: int) -> dict:
    """Median seconds of ``steps`` updates and ``act_repeats`` best-of-32 calls per state count,
    and the peak RSS."""
    t_update = _times(update, steps)
    out = {"update_s": statistics.median(t_update), "update_min_s": min(t_update)}
    for n in ACT_STATES:
        out[f"act{n}_s"] = statistics.median(_times(act(n), act_repeats))
    out["peak_rss_gb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    return out


def _worker_main(argv) -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--worker", choices=("mac", "jax"), required=True)
    p.add_argument("--config", required=True)
    p.add_argument("--steps", type=int, required=True)
    p.add_argument("--act_repeats", type=int, required=True)
    p.add_argument("--threads", type=int, required=True)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--authors_repo", default=None)
    p.add_argument("--mac_threads", default="fixed")
    a = p.parse_args(argv)
    cfg = CONFIGS[a.config]
    if a.worker == "mac":
        import torch
        torch.set_num_threads(a.threads)
        res = _mac_worker(cfg, a.steps, a.act_repeats, a.seed, a.mac_threads == "auto")
    else:
        res = _jax_worker(cfg, a.steps, a.act_repeats, a.seed, a.authors_repo)
    print("RESULT " + json.dumps(res), flush=True)
    return 0


# ----------------------------------------------------------------------------- orchestration
def _spin(stop_after_s: float) -> None:
    end = time.monotonic() + stop_after_s
    x = 0
    while time.monotonic() < end:
        x += 1


def _run_worker(side: str, python: str, args, config: str, cpus: list[int]) -> dict:
    env = dict(os.environ)
    env.update(OMP_NUM_THREADS=str(args.threads), MKL_NUM_THREADS=str(args.threads),
               OPENBLAS_NUM_THREADS=str(args.threads), JAX_PLATFORMS="cpu",
               XLA_FLAGS=env.get("XLA_FLAGS", "") + " --xla_cpu_multi_thread_eigen=true",
               PYTHONPATH=os.pathsep.join(p for p in (args.authors_repo, env.get("PYTHONPATH")) if p))
    cmd = ["taskset", "-c", ",".join(map(str, cpus)), python, os.path.abspath(__file__),
           "--worker", side, "--config", config, "--steps", str(args.steps),
           "--act_repeats", str(args.act_repeats), "--threads", str(args.threads),
           "--seed", str(args.seed), "--authors_repo", args.authors_repo, "--mac_threads", args.mac_threads]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    for line in proc.stdout.splitlines():
        if line.startswith("RESULT "):
            return json.loads(line[len("RESULT "):])
    raise RuntimeError(f"{side} worker failed (exit {proc.returncode}):\n{proc.stderr[-3000:]}")


def _isa() -> str:
    try:
        import mac
        return mac.info()["cpu_core"]["cpu_isa"]
    except Exception as exc:  # the table still says what ran
        return f"unknown ({exc})"


def _cpu_model() -> str:
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "?"


def _versions(python: str) -> str:
    code = "import jax, jaxlib; print(jax.__version__)"
    jax_v = subprocess.run([python, "-c", code], capture_output=True, text=True).stdout.strip() or "?"
    import torch
    return f"torch {torch.__version__}, jax {jax_v}"


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if "--worker" in argv:
        return _worker_main(argv)
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--authors_repo", required=True, help="checkout of github.com/kwanyoungpark/MAC")
    p.add_argument("--jax_python", required=True, help="python of a venv with jax, flax, distrax, ml_collections, optax")
    p.add_argument("--configs", nargs="+", default=["small", "paper"], choices=sorted(CONFIGS))
    p.add_argument("--rounds", type=int, default=3, help="processes per side and config, interleaved")
    p.add_argument("--steps", type=int, default=30, help="timed updates per process (after one warm-up)")
    p.add_argument("--act_repeats", type=int, default=20, help="timed best-of-32 calls per process and state count")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--cpus", default=None, help="CPU list for both sides, e.g. 0,1 (default: first --threads allowed)")
    p.add_argument("--mac_threads", choices=("fixed", "auto"), default="fixed",
                   help="fixed: mac uses --threads threads; auto: mac train's default, the count chosen by "
                        "timing steps (mac.threads; its probe steps are among the timed ones)")
    p.add_argument("--busy_cores", type=int, default=0, help="cores kept busy by spinning processes while measuring")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("-o", "--output", default=None, help="also write the markdown table here")
    args = p.parse_args(argv)
    if not os.path.isfile(os.path.join(args.authors_repo, "agents", "mac.py")):
        p.error(f"--authors_repo {args.authors_repo}: no agents/mac.py there; pass a checkout of "
                "github.com/kwanyoungpark/MAC")
    allowed = sorted(os.sched_getaffinity(0))
    cpus = [int(c) for c in args.cpus.split(",")] if args.cpus else allowed[:args.threads]

    import multiprocessing as mp
    spinners = []
    if args.busy_cores:
        for i in range(args.busy_cores):
            proc = mp.get_context("spawn").Process(target=_spin, args=(24 * 3600,), daemon=True)
            proc.start()
            os.sched_setaffinity(proc.pid, {cpus[i % len(cpus)]})
            spinners.append(proc)
    results: dict[tuple[str, str], list[dict]] = {}
    try:
        for config in args.configs:
            for r in range(args.rounds):
                order = (("jax", args.jax_python), ("mac", sys.executable))
                for side, python in (order if r % 2 == 0 else order[::-1]):
                    res = _run_worker(side, python, args, config, cpus)
                    results.setdefault((config, side), []).append(res)
                    print(f"[bench] {config} round {r} {side}: update {res['update_s']:.3f} s, "
                          f"act1 {res['act1_s'] * 1e3:.2f} ms, act64 {res['act64_s'] * 1e3:.1f} ms",
                          file=sys.stderr, flush=True)
    finally:
        for proc in spinners:
            proc.kill()

    lines = [f"Measured {time.strftime('%Y-%m-%d %H:%M')} on {_cpu_model()} (mac native ISA {_isa()}), "
             f"{_versions(args.jax_python)}; CPUs {cpus}, {args.threads} threads per side, "
             f"{args.busy_cores} core(s) held busy; mac threads {args.mac_threads}; {args.rounds} processes per side x {args.steps} "
             "updates (median per process, then median and range over processes); acting: "
             f"{args.act_repeats} calls per process.", "",
             "Command: `python benchmarks/bench_vs_authors.py " + " ".join(argv) + "`", "",
             "| config | measure | authors' JAX | mac | mac speed-up (median, range) |",
             "|---|---|---|---|---|"]
    for config in args.configs:
        c = CONFIGS[config]
        shape = (f"{c['depth']}x{c['width']}, batch {c['batch']}, rollout batch {c['rollout_batch']}, "
                 f"H={H_ROLLOUT}, N={N_TRAIN}")
        for key, what, unit in (("update_s", f"one `update` ({shape})", 1.0),
                                ("act1_s", "best-of-32 act, 1 state", 1e3),
                                ("act64_s", "best-of-32 act, 64 states", 1e3)):
            jx = [r[key] for r in results[(config, "jax")]]
            mc = [r[key] for r in results[(config, "mac")]]
            fmt = (lambda v: f"{v:.3f} s") if unit == 1.0 else (lambda v: f"{v * unit:.1f} ms")
            ratios = [j / m for j in jx for m in mc]
            lines.append(f"| {config} | {what} | {fmt(statistics.median(jx))} | {fmt(statistics.median(mc))} "
                         f"| **{statistics.median(jx) / statistics.median(mc):.2f}x** "
                         f"({min(ratios):.2f}–{max(ratios):.2f}) |")
        rss = {side: max(r["peak_rss_gb"] for r in results[(config, side)]) for side in ("jax", "mac")}
        lines.append(f"| {config} | peak RSS | {rss['jax']:.2f} GB | {rss['mac']:.2f} GB | |")
    table = "\n".join(lines) + "\n"
    print(table)
    if args.output:
        with open(args.output, "w") as f:
            f.write(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
