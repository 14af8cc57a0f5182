"""The thread tuner of ``--threads auto``: it must pick the count whose steps are fastest, re-probe
when the load changes, and never leave the candidates."""

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mac.threads import ThreadTuner, candidate_counts


class FakeMachine:
    """Step durations as a function of the thread count, changeable mid-run."""

    def __init__(self, seconds_per_count: dict[int, float]):
        self.seconds = dict(seconds_per_count)
        self.now = 0.0
        self.threads = None
        self.applied: list[int] = []

    def set_threads(self, n):
        self.threads = n
        self.applied.append(n)

    def clock(self):
        return self.now

    def run(self, tuner: ThreadTuner, steps: int, first_step: int = 1) -> list[int]:
        used = []
        for step in range(first_step, first_step + steps):
            tuner.before_step()
            used.append(self.threads)
            self.now += self.seconds[self.threads]
            tuner.after_step(step)
        return used


def test_candidates():
    assert candidate_counts(1) == [1]
    assert candidate_counts(2) == [2, 1]
    assert candidate_counts(16) == [16, 8, 1]
    with pytest.raises(ValueError):
        candidate_counts(0)


def test_idle_machine_keeps_all_cores():
    m = FakeMachine({2: 0.5, 1: 0.9})
    t = ThreadTuner(2, m.set_threads, clock=m.clock, period_steps=100, probe_steps=3)
    used = m.run(t, 50)
    assert used[:6] == [2, 2, 2, 1, 1, 1]       # the probe: each candidate, probe_steps steps
    assert set(used[6:]) == {2}
    assert t.history == [(6, 2, {2: pytest.approx(0.5), 1: pytest.approx(0.9)})]


def test_busy_core_switches_to_one_thread_and_back_when_the_load_goes():
    m = FakeMachine({2: 2.0, 1: 0.9})             # contention: two threads wait on each other
    t = ThreadTuner(2, m.set_threads, clock=m.clock, period_steps=20, probe_steps=3)
    used = m.run(t, 26)
    assert set(used[6:26]) == {1}
    m.seconds = {2: 0.5, 1: 0.9}                  # the other process ends
    used = m.run(t, 26, first_step=27)
    assert used[:6] == [2, 2, 2, 1, 1, 1] and set(used[6:]) == {2}   # the periodic probe found it
    assert [h[1] for h in t.history] == [1, 2]


def test_a_slowdown_triggers_an_early_probe():
    m = FakeMachine({2: 0.5, 1: 0.9})
    t = ThreadTuner(2, m.set_threads, clock=m.clock, period_steps=10_000, probe_steps=3, slowdown=1.5)
    m.run(t, 10)
    m.seconds = {2: 2.0, 1: 0.95}                 # load arrives long before the next periodic probe
    used = m.run(t, 12, first_step=11)
    assert used[-1] == 1
    assert len(t.history) == 2


def test_one_core_never_probes_and_sets_the_count_once():
    m = FakeMachine({1: 0.3})
    t = ThreadTuner(1, m.set_threads, clock=m.clock)
    m.run(t, 20)
    assert m.applied == [1] and t.history == [] and not t.probing


@settings(max_examples=60, deadline=None)
@given(st.integers(1, 64), st.lists(st.floats(0.01, 5.0), min_size=3, max_size=3), st.integers(1, 5))
def test_the_chosen_count_is_the_fastest_candidate(max_threads, times, probe_steps):
    cands = candidate_counts(max_threads)
    m = FakeMachine(dict(zip(cands, times)))
    t = ThreadTuner(max_threads, m.set_threads, clock=m.clock, period_steps=1000, probe_steps=probe_steps)
    used = m.run(t, probe_steps * len(cands) + 5)
    assert set(used) <= set(cands)
    fastest = min(m.seconds[c] for c in cands)
    assert m.seconds[used[-1]] == fastest
