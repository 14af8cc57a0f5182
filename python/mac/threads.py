"""Thread count of training steps chosen by timing them (``mac train --threads auto``, the default).

Why: a training step is hundreds of short parallel regions (torch operators, the native core's
phases). When another process holds some of the cores, each region waits for the thread that was
preempted, so two threads on a machine whose second core is busy can run a step 2-5x slower than one
thread (benchmarks/RESULTS.md, "Under load"). The right count depends on a load that changes during
a run, so it is measured, not guessed: every ``period_steps`` steps, ``probe_steps`` real training
steps run with each candidate count (all cores, half, one) and the fastest median wins until the next
probe, or until steps get ``slowdown``-times slower than the winner's probe (the load changed).

Probe steps are ordinary training steps, so nothing is wasted. What it costs: torch's multi-threaded
reductions and GEMMs may sum in a different order at another thread count, so a run under ``auto``
is reproducible to float rounding, not bitwise; ``--threads N`` pins the count for bitwise-
reproducible runs (the resume tests do). The native core's results do not depend on its thread count.
"""

from __future__ import annotations

import statistics
import time
from typing import Callable


def candidate_counts(max_threads: int) -> list[int]:
    """All cores, half of them, one: ``[max, max // 2, 1]`` without repeats, largest first."""
    if max_threads < 1:
        raise ValueError(f"max_threads must be >= 1, got {max_threads}")
    return sorted({max_threads, max(1, max_threads // 2), 1}, reverse=True)


class ThreadTuner:
    """Call :meth:`before_step` before and :meth:`after_step` after every training step.

    ``set_threads`` applies a count (``torch.set_num_threads``); ``clock`` gives seconds. ``current``
    is the count the coming step runs with; ``history`` lists (step, chosen count, {count: median s})
    for every finished probe.
    """

    def __init__(self, max_threads: int, set_threads: Callable[[int], None], *, period_steps: int = 500,
                 probe_steps: int = 3, slowdown: float = 1.5, clock: Callable[[], float] = time.perf_counter):
        if period_steps < 1 or probe_steps < 1 or slowdown <= 1:
            raise ValueError("period_steps and probe_steps must be >= 1 and slowdown > 1")
        self.candidates = candidate_counts(max_threads)
        self.set_threads, self.clock = set_threads, clock
        self.period_steps, self.probe_steps, self.slowdown = period_steps, probe_steps, slowdown
        self.current = self.candidates[0]
        self.history: list[tuple[int, int, dict[int, float]]] = []
        self._probe: dict[int, list[float]] | None = None
        self._steps_since_probe = 0
        self._winner_s = None
        self._recent: list[float] = []
        self._t0 = None
        self._applied = None
        self._start_probe()

    @property
    def probing(self) -> bool:
        return self._probe is not None

    def _start_probe(self) -> None:
        self._probe = {c: [] for c in self.candidates} if len(self.candidates) > 1 else None
        self._steps_since_probe = 0
        self._recent = []
        if self._probe is not None:
            self.current = self.candidates[0]

    def before_step(self) -> int:
        """Applies the count for the coming step and returns it."""
        if self._applied != self.current:
            self.set_threads(self.current)
            self._applied = self.current
        self._t0 = self.clock()
        return self.current

    def after_step(self, step: int) -> dict[int, float] | None:
        """Records the step's time. Returns the probe's medians {count: seconds} when a probe ended
        with a different choice than the last one (or the first choice), else None."""
        dt = self.clock() - self._t0
        if len(self.candidates) == 1:
            return None
        if self._probe is not None:
            times = self._probe[self.current]
            times.append(dt)
            if len(times) < self.probe_steps:
                return
            untried = [c for c in self.candidates if not self._probe[c]]
            if untried:
                self.current = untried[0]
                return None
            medians = {c: statistics.median(ts) for c, ts in self._probe.items()}
            self.current = min(medians, key=lambda c: (medians[c], -c))
            self._winner_s = medians[self.current]
            changed = not self.history or self.history[-1][1] != self.current
            self.history.append((step, self.current, medians))
            self._probe = None
            return medians if changed else None
        self._steps_since_probe += 1
        self._recent = (self._recent + [dt])[-self.probe_steps:]
        load_changed = (len(self._recent) == self.probe_steps and
                        statistics.median(self._recent) > self.slowdown * self._winner_s)
        if self._steps_since_probe >= self.period_steps or load_changed:
            self._start_probe()
        return None
