"""Evaluation on OGBench environments: best-of-N_test chunks, first k actions executed open loop.

Reward tasks (``*-singletask-*``): ``num_episodes`` episodes of the env's task. Goal tasks
(``*-oraclerep-*`` and plain goal envs): ``num_episodes`` episodes for each of the 5 evaluation
tasks. Success is OGBench's ``info['success']`` at the last step. Episodes may be spread over
parallel worker processes (each with its own copy of the actor/critic and one torch thread).
"""

from __future__ import annotations

import os

os.environ.setdefault("MUJOCO_GL", "egl")  # headless rendering; must precede the first mujoco import

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from mac.console import show_progress, silence_harmless_warnings
from mac.data.dataset import Normalizer
from mac.data.names import EnvSpec

GOAL_TASKS = (1, 2, 3, 4, 5)
silence_harmless_warnings()  # here too for the spawned evaluation workers, which import this module


def make_env(spec: EnvSpec, render: bool = False, size: int = 200):
    import ogbench

    silence_harmless_warnings()  # again: in case the filters were reset since the import

    kwargs = dict(render_mode="rgb_array", width=size, height=size) if render else {}
    return ogbench.make_env_and_datasets(spec.name, env_only=True, **kwargs)


@dataclass
class Policy:
    """What acting needs: the agent (actor, critic, chunk shape) and the normalisers."""

    agent: torch.nn.Module
    obs_norm: Normalizer
    goal_norm: Normalizer | None
    action_execute: int
    num_samples: int

    def __call__(self, ob: np.ndarray, goal: np.ndarray | None) -> np.ndarray:
        s = torch.from_numpy(self.obs_norm(np.asarray(ob, np.float32)[None]).astype(np.float32))
        g = None
        if self.agent.goal_conditioned:
            g = torch.from_numpy(self.goal_norm(np.asarray(goal, np.float32)[None]).astype(np.float32))
        chunk = self.agent.act(s, g, num_samples=self.num_samples)[0]
        return chunk[: self.action_execute].numpy()


def run_episode(env, policy: Policy, task_id: int | None, seed: int, frames: list | None = None) -> dict:
    options = {"task_id": task_id, "render_goal": False} if task_id is not None else None
    ob, info = env.reset(seed=seed, options=options)
    goal = info.get("goal")
    done, length, ret, queue = False, 0, 0.0, []
    while not done:
        if not queue:
            queue = list(policy(ob, goal))
        ob, reward, terminated, truncated, info = env.step(np.clip(queue.pop(0), -1, 1))
        ret += float(reward)
        length += 1
        done = terminated or truncated
        if frames is not None:
            frames.append(render_frame(env))
    return {"success": float(info.get("success", 0.0)), "return": ret, "length": length}


def _episode_list(spec: EnvSpec, num_episodes: int, seed: int) -> list[tuple[int | None, int]]:
    tasks = GOAL_TASKS if spec.goal_conditioned else (None,)
    return [(task, seed * 100003 + i * len(tasks) + j)
            for j, task in enumerate(tasks) for i in range(num_episodes)]


def _run_block(spec_name, policy_state, episodes, precision="fp32"):
    """Worker: rebuild the policy from plain state and run some episodes (at the parent's precision:
    a spawned process starts from the default)."""
    torch.set_num_threads(1)
    from mac.precision import set_precision
    set_precision(precision)
    from mac.data.names import parse_env_name
    policy = policy_from_state(policy_state)
    env = make_env(parse_env_name(spec_name))
    return [(task, run_episode(env, policy, task, seed)) for task, seed in episodes]


def policy_state(policy: Policy) -> dict:
    a = policy.agent
    return {"dims": (a.obs_dim, a.action_dim, a.goal_dim), "config": a.config.to_dict(),
            "actor": a.actor.state_dict(), "critic": a.critic.state_dict(),
            "obs_norm": policy.obs_norm.state_dict(),
            "goal_norm": policy.goal_norm.state_dict() if policy.goal_norm else None,
            "action_execute": policy.action_execute, "num_samples": policy.num_samples}


def checkpoint_policy_state(ck: dict) -> dict:
    """The :func:`policy_state` of a checkpoint's agent (acting reads only its actor and critic),
    with the acting defaults of its config."""
    from mac.config import AgentConfig
    cfg = AgentConfig.from_dict(ck["agent_config"])

    def net(name):
        return {k[len(name) + 1:]: v for k, v in ck["agent"].items() if k.startswith(name + ".")}

    return {"dims": tuple(ck["dims"]), "config": cfg.to_dict(), "actor": net("actor"),
            "critic": net("critic"), "obs_norm": ck["obs_norm"], "goal_norm": ck["goal_norm"],
            "action_execute": cfg.action_execute, "num_samples": cfg.num_samples_test}


def policy_from_state(st: dict) -> Policy:
    from mac.agent import MACAgent
    from mac.config import AgentConfig
    agent = MACAgent(*st["dims"], AgentConfig.from_dict(st["config"]))
    agent.actor.load_state_dict(st["actor"])
    agent.critic.load_state_dict(st["critic"])
    return Policy(agent.eval(), Normalizer.from_state_dict(st["obs_norm"]),
                  Normalizer.from_state_dict(st["goal_norm"]) if st["goal_norm"] else None,
                  st["action_execute"], st["num_samples"])


def evaluate(spec: EnvSpec, policy: Policy, num_episodes: int, *, seed: int = 0, workers: int = 1,
             video_episodes: int = 0, video_path: Path | None = None, progress: bool = False) -> dict:
    """Success rates: ``{'success': overall, 'task<k>_success': ..., 'return': ..., 'length': ...}``."""
    if num_episodes < 1:
        raise ValueError(f"num_episodes must be >= 1, got {num_episodes}")
    # One decision is a few small GEMMs: extra threads only add synchronisation (and fight the
    # env for the cores), so acting runs single-threaded; training's setting is restored after.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return _evaluate(spec, policy, num_episodes, seed, workers, video_episodes, video_path, progress)
    finally:
        torch.set_num_threads(threads)


def _evaluate(spec, policy, num_episodes, seed, workers, video_episodes, video_path, progress) -> dict:
    episodes = _episode_list(spec, num_episodes, seed)
    results: list[tuple[int | None, dict]] = []
    if video_episodes > 0:
        frames: list = []
        env = make_env(spec, render=True)
        for task, ep_seed in episodes[:video_episodes]:
            results.append((task, run_episode(env, policy, task, ep_seed, frames)))
        episodes = episodes[video_episodes:]
        if video_path is not None and frames:
            save_video(frames, video_path)
    if workers > 1 and len(episodes) > 1:
        import multiprocessing as mp
        blocks = [episodes[i::workers] for i in range(workers)]
        state = policy_state(policy)
        # Workers ignore Ctrl-C: the terminal sends it to the whole process group, and training
        # decides in the main process whether to finish the evaluation and save (mac.train).
        import signal
        with mp.get_context("spawn").Pool(workers, initializer=signal.signal,
                                          initargs=(signal.SIGINT, signal.SIG_IGN)) as pool:
            from mac.precision import get_precision
            jobs = [(spec.name, state, b, get_precision()) for b in blocks if b]
            for part in pool.starmap(_run_block, jobs):
                results.extend(part)
    elif episodes:
        env = make_env(spec)
        from tqdm import tqdm
        for task, ep_seed in tqdm(episodes, desc="eval", disable=not show_progress(progress), leave=False):
            results.append((task, run_episode(env, policy, task, ep_seed)))
    out = {"success": float(np.mean([r["success"] for _, r in results])),
           "return": float(np.mean([r["return"] for _, r in results])),
           "length": float(np.mean([r["length"] for _, r in results])),
           "episodes": len(results)}
    if spec.goal_conditioned:
        for task in GOAL_TASKS:
            out[f"task{task}_success"] = float(np.mean([r["success"] for t, r in results if t == task]))
    return out


def _no_shadows(scene) -> None:
    import mujoco
    scene.flags[mujoco.mjtRndFlag.mjRND_SHADOW] = 0


def render_frame(env):
    """One RGB frame; manipulation envs render ~4x faster headless without shadows (OGBENCH.md)."""
    import inspect
    render = env.unwrapped.render
    if "scene_callback" in inspect.signature(render).parameters:
        return render(scene_callback=_no_shadows)
    return env.render()


def save_video(frames: list, path: Path, fps: int = 30) -> Path:
    import imageio.v2 as imageio
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix == ".mp4":
        imageio.mimsave(path, frames, fps=fps)
    else:
        imageio.mimsave(path, frames, duration=1000 / fps, loop=0)
    return path

