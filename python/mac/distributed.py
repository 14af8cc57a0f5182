"""Data-parallel training over torch.distributed (``torchrun --nproc_per_node K -m mac train ...``).

One process per device; torchrun's RANK, WORLD_SIZE, LOCAL_RANK and LOCAL_WORLD_SIZE say which.
Without them (or with WORLD_SIZE=1) :class:`DistContext` is the single process and every collective
is a no-op, so single-process training is exactly what it was. NCCL on CUDA devices, gloo on CPU.

Gradients are averaged with one all_reduce of a flat buffer (:meth:`DistContext.average_gradients`)
rather than DistributedDataParallel: DDP hooks a module's ``forward()``, and MACAgent has none that
covers a step (``update`` calls eight networks directly, some under no_grad or through
``functional_call`` for the imagined rollout, one optimiser over all of them, a target net outside
it). A single bucket is what DDP would send; DDP's overlap of communication with backward buys
little for these small MLPs.
"""

from __future__ import annotations

import hashlib
import os
import pickle
from datetime import timedelta

import numpy as np
import torch
import torch.distributed as dist

DEFAULT_TIMEOUT_S = 3600   # rank 0 evaluates and checkpoints while the others wait in a collective


def available_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:   # not on Linux
        return os.cpu_count() or 1


def rank_seed(seed: int, rank: int) -> int:
    """The seed of ``rank``'s sampling and noise streams: ``seed`` itself on rank 0 (so a single
    process, and rank 0 of K, draw what they always drew), an independent 64-bit seed of
    (seed, rank) elsewhere."""
    if rank == 0:
        return int(seed)
    return int(np.random.SeedSequence([int(seed), int(rank)]).generate_state(1, np.uint64)[0])


def dataset_fingerprint(data) -> dict:
    """Rows, episodes, dims and a hash of 16 evenly spaced rows of every array of an OfflineData:
    cheap on a memory-mapped 100M-row dataset, and different for another file or another version."""
    rows = np.unique(np.linspace(0, len(data) - 1, 16).astype(np.int64))
    digest = hashlib.sha256()
    for a in (data.observations, data.actions, data.terminals, data.rewards, data.masks, data.goal_reps):
        if a is not None:
            digest.update(np.ascontiguousarray(a[rows]).tobytes())
    return {"rows": len(data), "episodes": len(data.episode_ends),
            "dims": [data.obs_dim, data.action_dim, data.goal_dim], "rows_sha256": digest.hexdigest()[:16]}


class DistContext:
    """This process's place in the run, and the collectives training needs."""

    def __init__(self, rank: int = 0, world_size: int = 1, local_rank: int = 0, local_world_size: int = 1):
        if not 0 <= rank < world_size or not 0 <= local_rank < local_world_size:
            raise ValueError(f"inconsistent torch.distributed environment: RANK={rank} WORLD_SIZE="
                             f"{world_size} LOCAL_RANK={local_rank} LOCAL_WORLD_SIZE={local_world_size}")
        self.rank, self.world_size = rank, world_size
        self.local_rank, self.local_world_size = local_rank, local_world_size
        self.device = torch.device("cpu")   # where collectives run: the CUDA device under NCCL
        self._started = False

    @classmethod
    def from_env(cls, environ=os.environ) -> "DistContext":
        """From the variables torchrun sets; the single process where they are absent."""
        def var(name, default):
            text = environ.get(name, str(default))
            try:
                return int(text)
            except ValueError:
                raise ValueError(f"environment variable {name}={text!r} is not an integer") from None

        world = var("WORLD_SIZE", 1)
        local_world = var("LOCAL_WORLD_SIZE", world)
        return cls(var("RANK", 0), world, var("LOCAL_RANK", 0), local_world)

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def default_threads(self) -> int:
        """Threads per process when --threads is 0: torch's default for a single process; else the
        cores this process may use shared by the processes of its node (torchrun itself sets
        OMP_NUM_THREADS=1, which would leave cores idle)."""
        return max(1, available_cores() // self.local_world_size) if self.distributed else 0

    # ------------------------------------------------------------------ process group
    def start(self, device: torch.device, timeout_s: float = DEFAULT_TIMEOUT_S,
              init_method: str = "env://") -> None:
        if not self.distributed:
            return
        gpu = device.type == "cuda"
        if gpu:
            torch.cuda.set_device(device)   # the object collectives use the current device
            self.device = device
        dist.init_process_group("nccl" if gpu else "gloo", init_method=init_method, rank=self.rank,
                                world_size=self.world_size, timeout=timedelta(seconds=timeout_s),
                                device_id=device if gpu else None)
        self._started = True

    def stop(self) -> None:
        """End the process group :meth:`start` made (never one made by someone else)."""
        if self._started:
            dist.destroy_process_group()
            self._started = False

    # ------------------------------------------------------------------ collectives
    def barrier(self) -> None:
        if self.distributed:
            dist.barrier()

    def on_main(self, fn):
        """``fn()`` run by rank 0 alone; every rank returns its result or raises its exception (so
        an error there, e.g. an existing run directory, stops every rank with the same message)."""
        if not self.distributed:
            return fn()
        box = [None]
        if self.is_main:
            try:
                box = [(True, fn())]
            except (Exception, SystemExit) as exc:
                try:   # the other ranks must be able to rebuild it
                    pickle.loads(pickle.dumps(exc))
                    box = [(False, exc)]
                except Exception:
                    box = [(False, RuntimeError(f"{type(exc).__name__}: {exc}"))]
        dist.broadcast_object_list(box, src=0)
        ok, value = box[0]
        if not ok:
            raise value
        return value

    def gather(self, obj) -> list | None:
        """Every rank's ``obj`` on rank 0 as a list indexed by rank; None on the other ranks."""
        if not self.distributed:
            return [obj]
        out = [None] * self.world_size if self.is_main else None
        dist.gather_object(obj, out, dst=0)
        return out

    def require_same(self, values: dict, hint: str = "") -> None:
        """Raise on every rank, naming the ranks and entries (then ``hint``), if any rank's
        ``values`` differ from rank 0's."""
        if not self.distributed:
            return
        every = [None] * self.world_size
        dist.all_gather_object(every, values)
        diffs = [f"rank {r} has {k}={v[k]!r}, rank 0 has {every[0].get(k)!r}"
                 for r, v in enumerate(every) for k in v if v[k] != every[0].get(k)]
        if diffs:
            raise ValueError("the processes of this run disagree: " + "; ".join(diffs) + hint)

    def any_rank(self, flag: bool) -> bool:
        """True on every rank if it is True on any."""
        if not self.distributed:
            return bool(flag)
        t = torch.tensor([int(flag)], device=self.device)
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
        return bool(t.item())

    def mean_over_ranks(self, values: dict[str, float]) -> dict[str, float]:
        """The mean over ranks of each value (every rank passes the same keys in the same order)."""
        if not self.distributed:
            return values
        t = torch.tensor(list(values.values()), dtype=torch.float64, device=self.device)
        dist.all_reduce(t)
        return dict(zip(values, (t / self.world_size).tolist()))

    def broadcast_tensors(self, tensors) -> None:
        """Overwrite ``tensors`` (e.g. a state dict's values) with rank 0's."""
        if self.distributed:
            _coalesced(list(tensors), lambda flat: dist.broadcast(flat, src=0))

    def average_gradients(self, params) -> None:
        """Replace each gradient by its mean over ranks. Which parameters have a gradient is fixed
        by the agent's settings, so it is the same set on every rank."""
        if not self.distributed:
            return
        grads = [p.grad for p in params if p.grad is not None]

        def average(flat):
            dist.all_reduce(flat)   # gloo has no ReduceOp.AVG
            flat.div_(self.world_size)

        _coalesced(grads, average)


def _coalesced(tensors: list[torch.Tensor], collective) -> None:
    """Run ``collective`` in place on one flat buffer per (device, dtype) and copy the result back:
    one message instead of one per tensor."""
    groups: dict = {}
    for t in tensors:
        groups.setdefault((t.device, t.dtype), []).append(t)
    for group in groups.values():
        flat = torch.cat([t.detach().reshape(-1) for t in group])
        collective(flat)
        for t, part in zip(group, flat.split([t.numel() for t in group])):
            t.detach().copy_(part.view_as(t))


def rank_label(environ=os.environ) -> str:
    """" (rank r/K)" in a data-parallel process, "" otherwise: for error messages."""
    try:
        ctx = DistContext.from_env(environ)
    except ValueError:
        return ""
    return f" (rank {ctx.rank}/{ctx.world_size})" if ctx.distributed else ""
