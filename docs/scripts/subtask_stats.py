"""Which subtask fails: per-subtask success of a policy's episodes (at the start, ever, at the end).

    python docs/scripts/subtask_stats.py --policy docs/policies/puzzle-3x3-task4-10k.pt --episodes 20 --seed 1
    python docs/scripts/subtask_stats.py --restore_path /work/runs/RUN --action_execute 1

A subtask is one entry of OGBench's own ``_compute_successes()`` (cube/scene/puzzle envs, single-task
or goal-conditioned): a cube at its target, a button in its target state, the drawer or the window
in place. Goal envs run ``--episodes`` per evaluation goal and print each goal's rows. The
episodes are ``mac eval``'s (same seeds, same acting loop: ``mac.evaluate.run_episode``); a
wrapper only reads the subtask flags after every step. The numbers in docs/RESULTS.md ("which subtask
fails") come from this script.
"""
import argparse

import gymnasium
import numpy as np
import torch

from mac.evaluate import _episode_list, make_env, run_episode
from mac.export import from_checkpoint, load_policy_file, with_acting


# scene's _compute_successes() returns these groups, in this order (ogbench/manipspace/envs/scene_env.py)
SCENE_GROUPS = ("cube", "button", "drawer", "window")


def subtask_flags(successes) -> tuple[list[str], np.ndarray]:
    """(names, flags (K,)) of ``_compute_successes()``: a flat list (cube, puzzle) or scene's groups."""
    if isinstance(successes, tuple):
        names, flags = [], []
        for group, values in zip(SCENE_GROUPS, successes):
            values = np.atleast_1d(values)
            names += [group if len(values) == 1 else f"{group}{i}" for i in range(len(values))]
            flags += list(values)
        return names, np.asarray(flags, bool)
    return [str(k) for k in range(len(successes))], np.asarray(successes, bool)


class SubtaskRecorder(gymnasium.Wrapper):
    """Keeps the subtask flags (K,) after reset and after every step of the current episode."""

    def __init__(self, env):
        super().__init__(env)
        self.flags: list[np.ndarray] = []

    def _record(self):
        self.flags.append(subtask_flags(self.env.unwrapped._compute_successes())[1])

    def reset(self, **kwargs):
        out = super().reset(**kwargs)
        self.flags = []
        self._record()
        return out

    def step(self, action):
        out = super().step(action)
        self._record()
        return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    source_arg = parser.add_mutually_exclusive_group(required=True)   # as in mac eval
    source_arg.add_argument("--policy", help="policy file written by mac export")
    source_arg.add_argument("--restore_path", help="run directory or checkpoint file")
    parser.add_argument("--episodes", type=int, default=20)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--action_execute", type=int, default=None)
    args = parser.parse_args()
    source = load_policy_file(args.policy) if args.policy else from_checkpoint(args.restore_path)
    policy = with_acting(source.policy, args.action_execute, None)
    env = SubtaskRecorder(make_env(source.spec))
    torch.manual_seed(args.seed)  # best-of-N draws its candidates from torch's RNG, seeded as mac eval does
    episodes = {}                                                # task -> [(flags (T + 1, K), success)]
    for task, seed in _episode_list(source.spec, args.episodes, args.seed):
        result = run_episode(env, policy, task, seed)
        episodes.setdefault(task, []).append((np.stack(env.flags), result["success"]))
    names, _ = subtask_flags(env.unwrapped._compute_successes())
    print(f"{source.spec.name}: {args.episodes} episodes per task, seed {args.seed}, "
          f"action_execute {policy.action_execute}")
    for task, runs in episodes.items():
        success = np.mean([ok for _, ok in runs])
        print(("" if task is None else f"evaluation goal {task}: ") + f"success {success:.0%}")
        print("  subtask:   " + " ".join(f"{k:>7s}" for k in names))
        for label, pick in (("at start", lambda f: f[0]), ("ever", lambda f: f.any(0)), ("at end", lambda f: f[-1])):
            values = np.mean([pick(flags) for flags, _ in runs], 0)
            print(f"  {label:9s}  " + " ".join(f"{v:7.0%}" for v in values))


if __name__ == "__main__":
    main()
