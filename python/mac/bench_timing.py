"""Timing and statistics shared by the benchmarks (``mac bench``): per-call times on any device,
their median and spread, and the projection of a training step to a whole run.

On a CUDA device each call is bracketed by CUDA events on the current stream and synchronised
(the time the GPU needs from the first launch to the last kernel's end, launch gaps included); on
the CPU it is ``time.perf_counter`` around the call. Either way the calls are serialised: these are
latencies of one call, not throughputs of a pipelined queue.
"""

from __future__ import annotations

import dataclasses
import statistics
import time
from typing import Callable, Mapping

import torch

MIN_REPEATS = 20  # fewer timed calls than this make p10/p90 (and a median of a noisy GPU) meaningless
MS_PER_HOUR = 3.6e6


def require_repeats(repeats: int, what: str = "--repeats") -> int:
    """``repeats`` if it is at least :data:`MIN_REPEATS`, else ValueError saying why."""
    if repeats < MIN_REPEATS:
        raise ValueError(f"{what}={repeats}: at least {MIN_REPEATS} timed calls after warm-up are needed "
                         f"for a median and a p10-p90 spread worth reporting")
    return repeats


@dataclasses.dataclass(frozen=True)
class Timing:
    """Milliseconds of each timed call (in call order)."""
    samples_ms: tuple[float, ...]

    @property
    def median(self) -> float:
        return statistics.median(self.samples_ms)

    @property
    def p10(self) -> float:
        return self._deciles()[0]

    @property
    def p90(self) -> float:
        return self._deciles()[-1]

    def _deciles(self) -> list[float]:
        if len(self.samples_ms) == 1:
            return [self.samples_ms[0]] * 9
        return statistics.quantiles(self.samples_ms, n=10, method="inclusive")

    def summary(self) -> str:
        """``median [p10, p90]`` in ms, 4 significant digits."""
        return f"{self.median:.4g} [{self.p10:.4g}, {self.p90:.4g}]"


def _call_ms(fn: Callable[[], object], device: torch.device) -> float:
    if device.type == "cuda":
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        return start.elapsed_time(end)
    t0 = time.perf_counter()
    fn()
    return (time.perf_counter() - t0) * 1e3


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_interleaved(calls: Mapping[str, Callable[[], object]], repeats: int, warmup: int,
                     device: torch.device | str) -> dict[str, Timing]:
    """Time each of ``calls`` ``repeats`` times after ``warmup`` untimed calls each, round-robin
    (call 1 of every entry, then call 2, ...) so that a drifting clock or a neighbour's load
    affects all entries alike."""
    device = torch.device(device)
    for fn in calls.values():
        for _ in range(warmup):
            fn()
    _synchronize(device)
    samples: dict[str, list[float]] = {name: [] for name in calls}
    for _ in range(repeats):
        for name, fn in calls.items():
            samples[name].append(_call_ms(fn, device))
    return {name: Timing(tuple(v)) for name, v in samples.items()}


def time_calls(fn: Callable[[], object], repeats: int, warmup: int, device: torch.device | str) -> Timing:
    """:func:`time_interleaved` of one call."""
    return time_interleaved({"fn": fn}, repeats, warmup, device)["fn"]


def hours_for_steps(ms_per_step: float, steps: int = 1_000_000) -> float:
    """Wall-clock hours of ``steps`` steps at ``ms_per_step`` each (training time only)."""
    return ms_per_step * steps / MS_PER_HOUR
