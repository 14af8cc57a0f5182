"""Where one training step's time goes: ``MACAgent.update`` split into phases (exclusive times).

    python benchmarks/profile_step.py --config small --threads 2 --steps 20 [--ops 15]

Phases (each the time inside it minus the phases nested in it):
  model fwd      dynamics / reward / success losses on the dataset batch
  actor fwd      flow-matching and distillation losses (without the teacher)
  teacher        the K-step Euler flow teacher (no gradient)
  rollout        the imagined rollout (best-of-N and model calls; native core or torch)
  value targets  target / bootstrap value passes over imagined states (no gradient)
  value fwd      value and critic forward passes with gradient, and the returns
  backward       autograd over every loss
  optimizer      Adam step, zero_grad and the Polyak update
  other          the rest of ``update`` (summing losses, logging values, Python)
``--ops N`` adds torch.profiler's N most expensive operators (self CPU time) over the timed steps.
Shapes as in bench_vs_authors.py: S = 28, A = 5, h = 10, H = 10, N = 8, K = 10, synthetic batch.
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import sys
import time
from collections import defaultdict

import torch

import mac.agent as agent_module
from mac.agent import MACAgent
from mac.config import preset

CONFIGS = {
    "small": dict(width=256, depth=4, batch=256, rollout_batch=256),
    "cpu": None,  # the cpu preset as it is
    "paper": dict(width=1024, depth=4, batch=1024, rollout_batch=1024),
}
S, A = 28, 5


class PhaseClock:
    """Exclusive wall time per phase: a phase entered inside another is not counted twice."""

    def __init__(self):
        self.totals = defaultdict(float)
        self._stack: list[list] = []   # [name, start, time of nested phases]

    def wrap(self, name, fn):
        def timed(*args, **kwargs):
            self._stack.append([name, time.perf_counter(), 0.0])
            try:
                return fn(*args, **kwargs)
            finally:
                _, t0, nested = self._stack.pop()
                dt = time.perf_counter() - t0
                self.totals[name] += dt - nested
                if self._stack:
                    self._stack[-1][2] += dt
        return timed


def make_agent(config_name: str, seed: int) -> tuple[MACAgent, dict]:
    cfg = preset("cpu" if config_name == "cpu" else "paper")
    shape = CONFIGS[config_name]
    if shape:
        cfg = dataclasses.replace(cfg, hidden_dims=(shape["width"],) * shape["depth"],
                                  batch_size=shape["batch"], rollout_batch=shape["rollout_batch"])
    torch.manual_seed(seed)
    agent = MACAgent(S, A, 0, cfg)
    g = torch.Generator().manual_seed(seed)
    B = cfg.batch_size
    batch = {"observations": torch.randn(B, S, generator=g),
             "actions": torch.rand(B, cfg.chunk_len * A, generator=g) * 2 - 1,
             "next_observations": torch.randn(B, S, generator=g),
             "rewards": -torch.rand(B, generator=g), "masks": torch.ones(B)}
    return agent, batch


def step_flops(agent: MACAgent) -> dict[str, float]:
    """Matmul FLOPs of one ``update`` (2 per multiply-add; a backward pass counted as 2 forwards):
    {"rollout": ..., "training": ...}. The floor any implementation pays at a given FLOP/s."""
    cfg = agent.config
    B, Br, H, N, K = cfg.batch_size, cfg.rollout_batch, cfg.rollout_steps, cfg.num_samples_train, cfg.flow_steps

    def f(net):
        return 0.0 if net is None else sum(2.0 * m.in_features * m.out_features for m in net.modules()
                                           if isinstance(m, torch.nn.Linear))
    model = f(agent.dynamics) + f(agent.reward) + f(agent.success)
    rollout = H * Br * (N * (f(agent.actor) + f(agent.critic)) + model)
    with_grad = B * (model + f(agent.flow_actor) + f(agent.actor)) + Br * (H * f(agent.value) + f(agent.critic))
    no_grad = K * B * f(agent.flow_actor) + 2 * Br * f(agent.value)   # teacher; bootstrap + critic target
    return {"rollout": rollout, "training": 3 * with_grad + no_grad}


def instrument(agent: MACAgent, clock: PhaseClock) -> None:
    """Wrap the agent's pieces (instance attributes shadow the methods; the module's euler_flow and
    Tensor.backward are patched for the process: this script only profiles)."""
    for name, method in (("model fwd", "model_losses"), ("actor fwd", "actor_losses"),
                         ("rollout", "imagine"), ("value targets", "_v"),
                         ("value fwd", "_value_losses"), ("optimizer", "polyak_update")):
        setattr(agent, method, clock.wrap(name, getattr(agent, method)))
    agent.optimizer.step = clock.wrap("optimizer", agent.optimizer.step)
    agent.optimizer.zero_grad = clock.wrap("optimizer", agent.optimizer.zero_grad)
    agent_module.euler_flow = clock.wrap("teacher", agent_module.euler_flow)
    torch.Tensor.backward = clock.wrap("backward", torch.Tensor.backward)
    agent.update = clock.wrap("other", agent.update)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", choices=sorted(CONFIGS), default="small")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--backend", default="auto", help="rollout backend: auto | cpu | torch")
    p.add_argument("--ops", type=int, default=0, help="also list the N most expensive torch operators")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    agent, batch = make_agent(args.config, args.seed)
    agent.config = dataclasses.replace(agent.config, rollout_backend=args.backend)
    for _ in range(2):
        agent.update(batch)  # warm-up: allocator, OpenMP pool, packed weights
    clock = PhaseClock()
    instrument(agent, clock)
    step_times = []
    prof = torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) if args.ops else None
    if prof:
        prof.__enter__()
    for _ in range(args.steps):
        t0 = time.perf_counter()
        agent.update(batch)
        step_times.append(time.perf_counter() - t0)
    if prof:
        prof.__exit__(None, None, None)
    total = sum(clock.totals.values())
    import mac
    cfg = agent.config
    print(f"config {args.config}: {len(cfg.hidden_dims)}x{cfg.hidden_dims[0]}, batch {cfg.batch_size}, "
          f"rollout batch {cfg.rollout_batch}, H={cfg.rollout_steps}, N={cfg.num_samples_train}, "
          f"K={cfg.flow_steps}; rollout backend {args.backend}; {args.threads} threads; native ISA "
          f"{mac.info()['cpu_core']['cpu_isa']}; torch {torch.__version__}; {args.steps} steps")
    med = statistics.median(step_times)
    flops = step_flops(agent)
    print(f"median step {med * 1e3:.1f} ms (min {min(step_times) * 1e3:.1f})"
          + (" [under torch.profiler: slower]" if prof else ""))
    print(f"matmul work per step: rollout {flops['rollout'] / 1e9:.1f} GFLOP, the rest "
          f"{flops['training'] / 1e9:.1f} GFLOP; whole step at {sum(flops.values()) / med / 1e9:.0f} GFLOP/s, "
          f"rollout at {flops['rollout'] / (clock.totals['rollout'] / args.steps) / 1e9:.0f} GFLOP/s")
    print("\n| phase | ms per step | share |\n|---|---|---|")
    for name, t in sorted(clock.totals.items(), key=lambda kv: -kv[1]):
        print(f"| {name} | {t / args.steps * 1e3:.1f} | {t / total:.0%} |")
    if prof:
        print()
        print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=args.ops))
    return 0


if __name__ == "__main__":
    sys.exit(main())
