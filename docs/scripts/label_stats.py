"""How rare success is in a single-task dataset: the reward levels and success rows of its labels.

    python docs/scripts/label_stats.py --dataset_dir /work/data1m cube-double-play-singletask-task2-v0 ...

The labels are the ones training uses (OGBench's relabelling through ``mac``'s loader), so the
numbers in docs/RESULTS.md ("How rare success is in the data") come from exactly this code.
"""
import argparse

import numpy as np

from mac.data import load_offline_data, validate_env_name
from mac.evaluate import make_env


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("env_names", nargs="+", help="single-task env names, e.g. scene-play-singletask-task2-v0")
    parser.add_argument("--dataset_dir", required=True)
    args = parser.parse_args()
    for name in args.env_names:
        spec = validate_env_name(name)
        if spec.kind != "singletask":
            parser.error(f"{name} is not a single-task env (its rewards come from a goal, not from labels)")
        train, _ = load_offline_data(spec, args.dataset_dir, make_env(spec), progress=False)
        rewards, masks = np.asarray(train.rewards), np.asarray(train.masks)
        levels, counts = np.unique(rewards, return_counts=True)
        reached = int((np.minimum.reduceat(masks, train.episode_starts) == 0).sum())   # episodes are contiguous
        print(f"{name}: {len(rewards)} rows, {len(train.episode_starts)} episodes")
        print("  rows by reward:", ", ".join(f"{lv:g}: {c / len(rewards):.2%}" for lv, c in zip(levels, counts)))
        print(f"  rows at success (mask 0): {np.mean(masks == 0):.2%} ({int(np.sum(masks == 0))} rows); episodes that reach success: {reached}")


if __name__ == "__main__":
    main()
