"""``mac eval --restore_path RUN_DIR_OR_CKPT | --policy FILE``: evaluate a trained agent, or a policy
file written by ``mac export``, on its OGBench env."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

from mac import precision as precision_api


def main(argv) -> int:
    p = argparse.ArgumentParser(prog="mac eval", description=__doc__)
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument("--restore_path", help="run directory or checkpoint file")
    source.add_argument("--policy", help="policy file written by mac export (its sha256 is printed)")
    p.add_argument("--eval_episodes", type=int, default=50, help="episodes (per task for goal envs)")
    p.add_argument("--eval_workers", type=int, default=1)
    p.add_argument("--video_episodes", type=int, default=0)
    p.add_argument("--video_path", default=None, help="GIF or MP4 path (default: next to the checkpoint "
                                                      "or policy file)")
    p.add_argument("--action_execute", type=int, default=None, help="actions executed per chunk (1..h)")
    p.add_argument("--num_samples", type=int, default=None,
                   help="best-of-N at evaluation (default: the config's, or the policy file's)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--precision", default=precision_api.CLI_DEFAULT, choices=precision_api.PRECISIONS,
                   help="best-of-N arithmetic: fp32, or bf16 operands with float32 accumulation "
                        "(AVX512-BF16 CPUs); auto (default): bf16 only where it is measured not to hurt (mac.precision)")
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    args = p.parse_args(argv)
    try:
        precision = precision_api.resolve(args.precision, "cpu")
    except ValueError as exc:
        print(f"mac eval: error: --precision {args.precision}: {exc}", file=sys.stderr)
        return 2
    with precision_api.precision_mode(precision):   # in-process callers keep their own setting
        return _evaluate(args)


def _evaluate(args) -> int:
    from mac.evaluate import evaluate
    from mac.export import from_checkpoint, load_policy_file, with_acting
    try:
        src = load_policy_file(args.policy) if args.policy else from_checkpoint(args.restore_path)
        policy = with_acting(src.policy, args.action_execute, args.num_samples)
    except (FileNotFoundError, ValueError) as exc:
        print(f"mac eval: error: {exc}", file=sys.stderr)
        return 2
    video = Path(args.video_path) if args.video_path else src.path.with_suffix(".gif")
    torch.manual_seed(args.seed)
    res = evaluate(src.spec, policy, args.eval_episodes, seed=args.seed, workers=args.eval_workers,
                   video_episodes=args.video_episodes, video_path=video, progress=True)
    res.update(src.about, action_execute=policy.action_execute, num_samples=policy.num_samples,
               precision=precision_api.get_precision())
    if args.video_episodes:
        res["video"] = str(video)
    print(json.dumps(res, indent=2) if args.json else
          "\n".join(f"{key}: {val}" for key, val in res.items()))
    return 0
