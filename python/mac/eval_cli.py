"""``mac eval --restore_path RUN_DIR_OR_CKPT``: evaluate a trained agent on its OGBench env."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

from mac.checkpoint import load_checkpoint


def main(argv) -> int:
    p = argparse.ArgumentParser(prog="mac eval", description=__doc__)
    p.add_argument("--restore_path", required=True, help="run directory or checkpoint file")
    p.add_argument("--eval_episodes", type=int, default=50, help="episodes (per task for goal envs)")
    p.add_argument("--eval_workers", type=int, default=1)
    p.add_argument("--video_episodes", type=int, default=0)
    p.add_argument("--video_path", default=None, help="GIF or MP4 path (default: next to the checkpoint)")
    p.add_argument("--action_execute", type=int, default=None, help="actions executed per chunk (1..h)")
    p.add_argument("--num_samples", type=int, default=None, help="best-of-N at evaluation (default: config)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    args = p.parse_args(argv)
    from mac.agent import MACAgent
    from mac.config import AgentConfig
    from mac.data import Normalizer, validate_env_name
    from mac.evaluate import Policy, evaluate
    try:
        ck = load_checkpoint(args.restore_path)
        spec = validate_env_name(ck["env_name"])
    except (FileNotFoundError, ValueError) as exc:
        print(f"mac eval: error: {exc}", file=sys.stderr)
        return 2
    cfg = AgentConfig.from_dict(ck["agent_config"])
    k = args.action_execute or cfg.action_execute
    if not 1 <= k <= cfg.chunk_len:
        print(f"mac eval: error: --action_execute must be in [1, {cfg.chunk_len}], got {k}", file=sys.stderr)
        return 2
    agent = MACAgent(*ck["dims"], cfg)
    agent.load_state_dict(ck["agent"])
    agent.eval()
    policy = Policy(agent, Normalizer.from_state_dict(ck["obs_norm"]),
                    Normalizer.from_state_dict(ck["goal_norm"]) if ck["goal_norm"] else None,
                    k, args.num_samples or cfg.num_samples_test)
    video = Path(args.video_path) if args.video_path else Path(ck["path"]).with_suffix(".gif")
    torch.manual_seed(args.seed)
    res = evaluate(spec, policy, args.eval_episodes, seed=args.seed, workers=args.eval_workers,
                   video_episodes=args.video_episodes, video_path=video, progress=True)
    res.update(checkpoint=ck["path"], step=ck["step"], action_execute=k)
    if args.video_episodes:
        res["video"] = str(video)
    print(json.dumps(res, indent=2) if args.json else
          "\n".join(f"{key}: {val}" for key, val in res.items()))
    return 0
