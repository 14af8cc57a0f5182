"""``mac train``: offline MAC training on an OGBench dataset, with evaluation, logs and resume.

Flag names follow the authors' command lines (``--env_name``, ``--offline_steps``,
``--agent.chunk_len=10`` ...). A run directory holds ``flags.json``, ``train.csv``, ``eval.csv``
(appended to), ``checkpoints/ckpt_<step>.pt`` (atomic, last K kept) and optional TensorBoard and
Weights & Biases (``--wandb``) files.

Resume with ``mac train --restore_path RUN_DIR``: the agent settings come from the checkpoint, and
every flag not given on the command line from the run's flags.json (its --offline_steps, intervals,
seed, dataset ...); a flag given overrides, e.g. ``--offline_steps 20000`` to train further. The
rows a crashed run logged after the checkpoint are dropped from train.csv and eval.csv (and hidden
in TensorBoard): the resumed run logs those steps again, so every step appears once.

Data-parallel: ``torchrun --nproc_per_node K -m mac train ...`` trains with K processes, each on its
own batches of --agent.batch_size (effective batch K x batch_size, learning rate unchanged), gradients
averaged every step. Rank 0 alone writes the run directory and evaluates; train.csv holds the mean of
the K processes' losses. Resume with the same K (docs/DISTRIBUTED.md).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import sys
import threading
import time
from pathlib import Path

import numpy as np
import torch

from mac import precision as precision_api
from mac.agent import MACAgent, fetch_floats
from mac.batches import to_device
from mac.checkpoint import (atomic_write_text, forked_rng, load_checkpoint, rng_state,
                            save_checkpoint, set_rng_state)
from mac.config import (AgentConfig, agent_help, apply_agent_flags, fit_normalizers, preset,
                        sampler_options)
from mac.console import show_progress
from mac.cuda_matmul import CUDA_MATMUL_MODES, DEFAULT_CUDA_MATMUL, set_cuda_matmul
from mac.diagnostics import Diagnostics
from mac.data import ChunkSampler, DatasetError, load_offline_data, validate_env_name
from mac.data.files import MAPPED_BUDGET_MB, find_dataset_files
from mac.distributed import DEFAULT_TIMEOUT_S, DistContext, dataset_fingerprint, rank_label, rank_seed
from mac.evaluate import Policy, evaluate, make_env
from mac.logging_utils import CsvLog, Loggers, TensorBoard, WandbLog, truncate_after_step
from mac.threads import ThreadTuner

DEFAULT_ENV = "cube-single-play-singletask-task2-v0"
DEFAULT_DATASET_DIR = "~/.ogbench/data"
# The main job (`mac train` with no arguments) is sized so that a newcomer sees it learn on 2 cores in
# about 10 minutes: in the study in docs/RESULTS.md ("The main job") the CPU preset on cube-single
# task 2 ended at 36-58% (whole chunk, 50 episodes) at 8000 steps in all six runs, from 0-8% at 2000,
# so 5000 steps (the earlier default) ended mid-rise. Evaluations every 1000 steps on 50 episodes make
# the learning curve a curve, at about 10 s each. --precision auto trains in bf16 where a learning
# check showed no loss (mac.precision.AUTO_BF16_UNITS: 0.78x the step time on a Zen 5) and in fp32
# everywhere else, so the default is the fastest precision known to be safe on the user's machine.
DEFAULT_OFFLINE_STEPS = 8000
DEFAULT_EVAL_INTERVAL = 1000
DEFAULT_EVAL_EPISODES = 50
DEFAULT_PRECISION = precision_api.CLI_DEFAULT
EVAL_SEED_OFFSET = 10_000
# On --restore_path these never come from the run's flags.json: they choose the run (restore_path)
# or only name a new one (run_name, save_dir), or are about this terminal (no_progress).
NOT_FROM_RUN = frozenset({"restore_path", "run_name", "save_dir", "no_progress"})
PLAIN_PROGRESS_S = 30.0  # without a terminal: a plain "[mac] step ..." line at most this often


class TrainingInterrupted(Exception):
    """Ctrl-C stopped training after ``step``; a checkpoint of that step was saved in ``run_dir``."""

    def __init__(self, run_dir: Path, step: int, ctx: DistContext | None = None):
        super().__init__(f"interrupted at step {step}; checkpoint saved in {run_dir / 'checkpoints'}")
        self.run_dir, self.step = run_dir, step
        self.ctx = ctx or DistContext()


def resume_command(run_dir: Path, world_size: int) -> str:
    if world_size == 1:
        return f"mac train --restore_path {run_dir}"
    return f"torchrun --nproc_per_node {world_size} -m mac train --restore_path {run_dir}"


class _DeferredInterrupt:
    """The first SIGINT only sets ``requested`` so the loop can finish the step it is in (an
    interrupted optimiser step would leave half-updated parameters) and save; a second one aborts."""

    def __init__(self):
        self.requested = False
        self._previous = None

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():   # signals only reach the main thread
            self._previous = signal.signal(signal.SIGINT, self._handle)
        return self

    def _handle(self, signum, frame):
        self.requested = True
        signal.signal(signal.SIGINT, self._previous)
        print("\n[mac] Ctrl-C: finishing this step and saving a checkpoint (press again to abort "
              "without saving)", file=sys.stderr, flush=True)

    def __exit__(self, *exc):
        if self._previous is not None:
            signal.signal(signal.SIGINT, self._previous)


def _threads_flag(text: str) -> int:
    """--threads: "auto" is 0."""
    if text == "auto":
        return 0
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected auto or a number of threads, got {text!r}") from None


def add_arguments(p: argparse.ArgumentParser, *, for_eval: bool = False) -> None:
    p.add_argument("--env_name", default=DEFAULT_ENV,
                   help="OGBench name, e.g. cube-single-play-singletask-task2-v0 or puzzle-3x3-play-oraclerep-v0")
    p.add_argument("--dataset_dir", default=DEFAULT_DATASET_DIR,
                   help="folder with <dataset>.npz and <dataset>-val.npz, or with shard files; if they "
                        "are missing from the default folder they are downloaded (or generated)")
    p.add_argument("--preset", default="cpu", choices=["cpu", "paper"],
                   help="agent defaults: 'paper' (MAC.md) or 'cpu' (sized for a 2-core machine)")
    p.add_argument("--offline_steps", type=int, default=DEFAULT_OFFLINE_STEPS,
                   help="training steps of the whole run (a resumed run stops there too)")
    p.add_argument("--log_interval", type=int, default=100, help="steps between train.csv rows")
    p.add_argument("--eval_interval", type=int, default=DEFAULT_EVAL_INTERVAL,
                   help="steps between evaluations; the last step is always evaluated "
                        "(0 disables periodic evaluation)")
    p.add_argument("--eval_episodes", type=int, default=DEFAULT_EVAL_EPISODES,
                   help="episodes (per task for goal envs)")
    p.add_argument("--eval_workers", type=int, default=1, help="parallel environment processes")
    p.add_argument("--video_episodes", type=int, default=0,
                   help="episodes of each evaluation recorded to <run>/videos/step_<N>.gif")
    p.add_argument("--save_interval", type=int, default=2500,
                   help="steps between checkpoints (the last step and Ctrl-C also save one)")
    p.add_argument("--keep_checkpoints", type=int, default=3,
                   help="newest checkpoints kept in <run>/checkpoints (0: all)")
    p.add_argument("--save_dir", default="runs", help="folder of the run directories")
    p.add_argument("--run_name", default=None, help="default: <env_name>_s<seed>_<timestamp>")
    p.add_argument("--seed", type=int, default=0,
                   help="seed of the networks, batch sampling and evaluation episodes")
    p.add_argument("--restore_path", default=None,
                   help="run directory or checkpoint to resume from; flags not given are the run's")
    p.add_argument("--tensorboard", action="store_true",
                   help="also log to TensorBoard (pip install tensorboard); files in <run>/tb")
    p.add_argument("--wandb", action="store_true",
                   help="also log to Weights & Biases (pip install 'mac[wandb]'); files in <run>/wandb")
    p.add_argument("--wandb_project", default="mac", help="W&B project")
    p.add_argument("--wandb_group", default=None, help="W&B group (default: none)")
    p.add_argument("--wandb_name", default=None, help="default: the run directory's name")
    p.add_argument("--wandb_mode", default=None, choices=["online", "offline", "disabled"],
                   help="default: wandb's own (WANDB_MODE, else online)")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda[:k]")
    p.add_argument("--cuda_matmul", default=DEFAULT_CUDA_MATMUL, choices=sorted(CUDA_MATMUL_MODES),
                   help="float32 matmuls on a GPU: tf32 (tensor cores, float32 accumulation: what the "
                        "authors' JAX code gets by default) or fp32 (full precision, ~8x slower); "
                        "CPU matmuls are unaffected")
    p.add_argument("--precision", default=DEFAULT_PRECISION, choices=precision_api.PRECISIONS,
                   help="fp32, or bf16: bf16 operands with float32 accumulation in the training step "
                        "(autocast) and the native rollouts (AVX512-BF16 / bf16 tensor cores), float32 "
                        "weights, optimiser, LayerNorm statistics and losses; auto: bf16 only where it is "
                        "measured not to hurt learning (AVX512-BF16 CPUs; elsewhere fp32); a resumed run keeps its own. "
                        "docs/USAGE.md, 'Precision'")
    p.add_argument("--threads", type=_threads_flag, default=0, metavar="auto|N",
                   help="torch/OpenMP threads per process. auto (or 0): up to torch's default (under "
                        "torchrun: the available cores / the processes on this node), the count chosen "
                        "by timing steps and re-chosen when the load changes (mac.threads); N: exactly N "
                        "(bitwise-reproducible runs)")
    p.add_argument("--dist_timeout", type=float, default=DEFAULT_TIMEOUT_S,
                   help="under torchrun: seconds a process waits for the others (rank 0's evaluations, "
                        "checkpoints and dataset download or generation included) before the run fails")
    p.add_argument("--generate_episodes", type=int, default=100,
                   help="if the dataset is missing from the default --dataset_dir and cannot be "
                        "downloaded, generate this many episodes locally (0: never generate, error instead)")
    p.add_argument("--mapped_budget_mb", type=float, default=MAPPED_BUDGET_MB,
                   help="shard datasets: the most MB of the memory-mapped cache kept mapped (counted in "
                        "RSS); pages beyond are unmapped, not lost: a smaller budget only costs sampling "
                        "speed (0: no bound)")
    p.add_argument("--no_progress", action="store_true",
                   help="no progress bars (they are drawn only on a terminal anyway)")
    p.add_argument("--no_download", action="store_true",
                   help="never try to download the official files")


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    """Defaults shown after each flag's help (except None and where the help already says it),
    description and epilog kept as written."""

    def _get_help_string(self, action):
        text = action.help or ""
        if action.default is None or "default" in text:
            return text
        return super()._get_help_string(action)


def _preset_name(argv: list[str]) -> str:
    probe = argparse.ArgumentParser(add_help=False)
    probe.add_argument("--preset", default="cpu")
    args, _ = probe.parse_known_args([a for a in argv if a not in ("-h", "--help")])
    return args.preset


def build_parser(preset_name: str = "cpu") -> argparse.ArgumentParser:
    """The ``mac train`` parser; its --help lists every --agent.<key> with the preset's default."""
    try:
        agent_defaults = agent_help(preset(preset_name))
        heading = f"agent settings, --agent.<key>=<value> (defaults of --preset {preset_name}):"
    except ValueError:   # an unknown --preset: the parser reports it
        agent_defaults = agent_help(preset("cpu"))
        heading = "agent settings, --agent.<key>=<value> (defaults of --preset cpu):"
    p = argparse.ArgumentParser(prog="mac train", description=__doc__, formatter_class=HelpFormatter,
                                epilog=f"{heading}\n{agent_defaults}")
    add_arguments(p)
    return p


def _given_flags(argv: list[str]) -> set[str]:
    """The destinations of the flags given on the command line (parsed with every default
    suppressed, so only what was given appears)."""
    p = argparse.ArgumentParser(add_help=False)
    add_arguments(p)
    for action in p._actions:
        action.default = argparse.SUPPRESS
    args, _ = p.parse_known_args(argv)
    return set(vars(args))


def _parse(argv: list[str]) -> tuple[argparse.Namespace, AgentConfig, list[str], set[str]]:
    p = build_parser(_preset_name(argv))
    agent_flags = [a for a in argv if a.startswith("--agent.")]
    rest_probe = [a for a in argv if not a.startswith("--agent.")]
    args, _ = p.parse_known_args(rest_probe)
    cfg, rest = apply_agent_flags(preset(args.preset), argv)
    args = p.parse_args(rest)
    for k in ("offline_steps", "log_interval", "eval_episodes", "save_interval", "eval_workers",
              "dist_timeout"):
        if getattr(args, k) < 1:
            p.error(f"--{k} must be >= 1, got {getattr(args, k)}")
    for k in ("eval_interval", "video_episodes", "generate_episodes", "keep_checkpoints", "threads"):
        if getattr(args, k) < 0:
            p.error(f"--{k} must be >= 0, got {getattr(args, k)}")
    return args, cfg, agent_flags, _given_flags(rest)


def parse_train_args(argv: list[str]) -> tuple[argparse.Namespace, AgentConfig, list[str]]:
    """Returns (args, agent config, the --agent.* flags given)."""
    args, cfg, agent_flags, _ = _parse(argv)
    return args, cfg, agent_flags


def adopt_run_flags(args: argparse.Namespace, given: set[str], run_dir: Path) -> dict:
    """On resume: set every flag of ``args`` that was not ``given`` (and is not in NOT_FROM_RUN)
    to its value in ``run_dir/flags.json``; returns the values that changed."""
    flags = run_dir / "flags.json"
    if not flags.is_file():
        print(f"[mac] {flags} is missing: resuming with this command line's flags", file=sys.stderr)
        return {}
    recorded = json.loads(flags.read_text()).get("args", {})
    taken = {}
    for k, v in recorded.items():
        if k in NOT_FROM_RUN or k in given or not hasattr(args, k):
            continue
        if getattr(args, k) != v:
            setattr(args, k, v)
            taken[k] = v
    return taken


def set_run_precision(precision: str, device: torch.device, say=print) -> str:
    """The process's precision for this run (``--precision``), resolved on ``device``; a bf16 request
    the device cannot serve stops the run with the reason."""
    try:
        resolved = precision_api.resolve(precision, device)
    except ValueError as e:
        raise SystemExit(f"--precision {precision}: {e}") from None
    precision_api.set_precision(resolved)
    if resolved == "bf16":   # float32, the default's result on most machines, goes unsaid
        unit = precision_api.bf16_unit(device)
        why = (f"auto: {unit}, where bf16 was checked not to hurt learning; --precision fp32 for float32"
               if precision == "auto" else f"bf16 on {unit}")
        say(f"[mac] precision: bf16 (--precision {why})", flush=True)
    return resolved


def resolve_device(name: str, ctx: DistContext | None = None) -> torch.device:
    """``name``'s device; under torchrun "auto" and "cuda" mean cuda:LOCAL_RANK (one GPU a process)."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    dev = torch.device(name)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda requested but torch.cuda.is_available() is False")
    if dev.type == "cuda" and dev.index is None and ctx is not None and ctx.distributed:
        if ctx.local_rank >= torch.cuda.device_count():
            raise SystemExit(f"LOCAL_RANK {ctx.local_rank} has no GPU: {torch.cuda.device_count()} are "
                             "visible; start at most that many processes a node (--nproc_per_node)")
        dev = torch.device("cuda", ctx.local_rank)
    return dev


def ensure_dataset(args, spec) -> None:
    """When the dataset is missing from the default location: download the official files, or,
    if that fails (offline) or --no_download is given, generate a small local dataset."""
    try:
        find_dataset_files(spec.dataset_name, args.dataset_dir)
        return
    except DatasetError as exc:
        explicit = os.path.expanduser(args.dataset_dir) != os.path.expanduser(DEFAULT_DATASET_DIR)
        if explicit:
            raise
        missing = exc
    failure = None
    if not getattr(args, "no_download", False):
        from mac.data.download import download_dataset
        try:
            download_dataset(spec.dataset_name, args.dataset_dir, progress=not args.no_progress)
            return
        except DatasetError as exc:  # DownloadError: offline, HTTP error, bad file
            failure = exc
    if args.generate_episodes == 0:
        if failure is not None:
            raise DatasetError(f"dataset {spec.dataset_name} not found in {args.dataset_dir} and the "
                               f"official download failed: {failure}") from failure
        raise missing
    from mac.data.generate import generate_dataset
    if failure is not None:
        print(f"[mac] the official download of {spec.dataset_name} failed ({failure}); generating "
              f"{args.generate_episodes} episodes locally instead with OGBench's scripted oracle into "
              f"{args.dataset_dir} (the official dataset has 1000). Numbers from generated data are "
              "NOT comparable with published OGBench results; delete the generated files to retry "
              "the download, or use --no_download to skip it", file=sys.stderr, flush=True)
    else:
        print(f"[mac] dataset {spec.dataset_name} not found in {args.dataset_dir}: generating "
              f"{args.generate_episodes} episodes locally with OGBench's scripted oracle (the official "
              "dataset has 1000; pass --dataset_dir to use your own files)", flush=True)
    workers = max(1, min(os.cpu_count() or 1, 4))
    generate_dataset(spec.dataset_name, args.generate_episodes, os.path.expanduser(args.dataset_dir),
                     workers=workers, seed=args.seed, progress=not args.no_progress)


def make_sampler(cfg: AgentConfig, train_data, val_data, goal_conditioned: bool, *, seed,
                 mapped_budget_mb: float | None = None) -> tuple[ChunkSampler, dict]:
    """The training sampler and its keywords (normalisers included; the diagnostics' samplers take
    the same): every data setting of ``cfg`` (chunk_len, discount, the goal mixture, chunk_reward,
    reward_task_termination, normalize_obs) reaches the batches here."""
    obs_norm, goal_norm = fit_normalizers(cfg, val_data, goal_conditioned)
    sampler_kwargs = dict(obs_normalizer=obs_norm, goal_normalizer=goal_norm,
                          goal_conditioned=goal_conditioned, **sampler_options(cfg),
                          mapped_budget_mb=mapped_budget_mb)
    sampler = ChunkSampler(train_data, cfg.chunk_len, cfg.discount, seed=seed, **sampler_kwargs)
    return sampler, sampler_kwargs


def training_batch(sampler: ChunkSampler, cfg: AgentConfig, device) -> dict[str, torch.Tensor]:
    """The batch of one gradient step: ``cfg.batch_size`` chunks, as tensors on ``device``."""
    return to_device(sampler.sample(cfg.batch_size), device)


def _policy(agent, obs_norm, goal_norm) -> Policy:
    cfg = agent.config
    return Policy(agent, obs_norm, goal_norm, cfg.action_execute, cfg.num_samples_test)


def _run_eval(spec, agent, obs_norm, goal_norm, args, step, run_dir, elapsed) -> dict:
    # Evaluation must not consume the training RNG streams (resume equivalence).
    with forked_rng(next(agent.parameters()).device):
        torch.manual_seed(args.seed + EVAL_SEED_OFFSET + step)
        video = run_dir / "videos" / f"step_{step:09d}.gif" if args.video_episodes else None
        # Written under a temporary name and renamed: a kill mid-write (torchrun tearing the group
        # down) never leaves a truncated video under the real name.
        partial = video.with_name(f".{video.stem}.tmp{os.getpid()}{video.suffix}") if video else None
        try:
            res = evaluate(spec, _policy(agent, obs_norm, goal_norm), args.eval_episodes,
                           seed=args.seed + EVAL_SEED_OFFSET, workers=args.eval_workers,
                           video_episodes=args.video_episodes, video_path=partial,
                           progress=not args.no_progress)
            if partial is not None and partial.exists():
                os.replace(partial, video)
        finally:
            if partial is not None:
                partial.unlink(missing_ok=True)
    return {"step": step, "time_s": round(elapsed, 3), **res}


def _wandb_log(args, run_dir: Path) -> WandbLog:
    # The W&B config is the run's own flags.json: the same on every resume of the run.
    flags = run_dir / "flags.json"
    config = json.loads(flags.read_text()) if flags.is_file() else {"args": vars(args)}
    return WandbLog(run_dir, project=args.wandb_project, group=args.wandb_group,
                    name=args.wandb_name, mode=args.wandb_mode, config=config)


def _drop_rows_past(run_dir: Path, step: int, say) -> None:
    """On resume from the checkpoint of ``step``: the run that stopped may have logged steps after it;
    the resumed run logs them again, so they go (one line says what went)."""
    dropped = []
    for name in ("train.csv", "eval.csv"):
        rows, torn = truncate_after_step(run_dir / name, step)
        if rows:
            dropped.append(f"{rows} from {name}" + (" (the last one torn by the kill)" if torn else ""))
    if dropped:
        say(f"[mac] dropped the log rows past step {step}, written after that checkpoint by the run "
            f"that stopped: {', '.join(dropped)}", flush=True)


def _check_world_size(resume: dict, ctx: DistContext) -> None:
    """Each process resumes its own sampler and random streams: only the same process count
    continues the run's curve."""
    trained = int(resume.get("world_size", 1))
    if trained == ctx.world_size:
        return
    how = resume_command(Path(resume["path"]).parent.parent, trained)
    if trained > 1:
        how += f" (or {trained} processes in all over several nodes)"
    raise ValueError(f"{resume['path']} was trained with {trained} process{'es' * (trained > 1)} and "
                     f"this run has {ctx.world_size}; each process resumes its own data stream, so "
                     f"resume with the same number: {how}")


def train(argv: list[str]) -> Path:
    args, cfg, agent_flags, given = _parse(argv)
    ctx = DistContext.from_env()
    say = print if ctx.is_main else (lambda *a, **k: None)
    resume = None
    if args.restore_path:
        resume = load_checkpoint(args.restore_path)
        _check_world_size(resume, ctx)
        if agent_flags:
            raise SystemExit("on --restore_path the agent settings come from the checkpoint; "
                             f"drop {agent_flags}")
        if "env_name" in given and validate_env_name(args.env_name).name != resume["env_name"]:
            raise SystemExit(f"checkpoint is for {resume['env_name']!r}, not {args.env_name!r}")
        cfg = AgentConfig.from_dict(resume["agent_config"])
        # The run goes on as it was started (its length, intervals, seed, data ...): every flag not
        # given now is the run's.
        taken = adopt_run_flags(args, given, Path(resume["path"]).parent.parent)
        if taken:
            say("[mac] from the run's flags.json: " + " ".join(f"{k}={v}" for k, v in taken.items())
                + " (flags given on the command line override these)", flush=True)
        spec = validate_env_name(resume["env_name"])
    else:
        spec = validate_env_name(args.env_name)  # before any download, generation or run directory
    if args.tensorboard:
        TensorBoard.writer_class()  # fail before any work or any run directory is made
    if args.wandb:
        WandbLog.module()           # likewise
    max_threads = args.threads or ctx.default_threads() or torch.get_num_threads()
    torch.set_num_threads(max_threads)
    device = resolve_device(args.device, ctx)
    if device.type == "cuda":
        set_cuda_matmul(args.cuda_matmul)
    previous_precision = precision_api.get_precision()
    notes = []   # printed after the run directory, which stays the first line of a run's output
    set_run_precision(args.precision, device, say=lambda msg, **_: notes.append(msg))
    ctx.start(device, args.dist_timeout)
    try:
        return _train(args, cfg, spec, resume, argv, device, ctx, say, notes)
    finally:
        ctx.stop()
        precision_api.set_precision(previous_precision)   # a run's setting ends with it (in-process callers)


def _train(args, cfg, spec, resume, argv, device, ctx: DistContext, say, notes=()) -> Path:
    torch.manual_seed(args.seed)
    np.random.seed(args.seed)
    random.seed(args.seed)

    # Rank 0 downloads or generates a missing dataset first, then the first process of every other
    # node (its disk may be its own); never two processes into one folder at once.
    ctx.on_main(lambda: ensure_dataset(args, spec))
    if ctx.local_rank == 0 and not ctx.is_main:
        ensure_dataset(args, spec)
    ctx.barrier()
    progress = not args.no_progress and ctx.is_main
    env = make_env(spec)
    train_data, val_data = load_offline_data(spec, args.dataset_dir, env, progress=progress)
    ctx.require_same({"training data": dataset_fingerprint(train_data),
                      "validation data": dataset_fingerprint(val_data),
                      "checkpoint": None if resume is None else Path(resume["path"]).name},
                     hint=". Every process must read the same files: check --dataset_dir (and the "
                          "run directory, on resume) on every node")
    sampler, sampler_kwargs = make_sampler(cfg, train_data, val_data, spec.goal_conditioned,
                                           seed=rank_seed(args.seed, ctx.rank),
                                           mapped_budget_mb=args.mapped_budget_mb or None)
    obs_norm, goal_norm = sampler_kwargs["obs_normalizer"], sampler_kwargs["goal_normalizer"]
    # val/ losses, BC error and model error at every log step (rank 0 logs), off the training streams
    diagnostics = Diagnostics(cfg, train_data, val_data, seed=args.seed, device=device,
                              sampler_kwargs=sampler_kwargs) if ctx.is_main else None
    agent = MACAgent(train_data.obs_dim, train_data.action_dim, train_data.goal_dim, cfg).to(device)
    if ctx.distributed:
        agent.gradient_hook = ctx.average_gradients
        torch.manual_seed(rank_seed(args.seed, ctx.rank))   # every rank its own rollout and flow noise

    start_step, elapsed = 0, 0.0
    if resume is not None:
        run_dir = Path(resume["path"]).parent.parent
        agent.load_state_dict(resume["agent"])
        agent.optimizer.load_state_dict(resume["optimizer"])
        own = resume["rank_states"][ctx.rank] if "rank_states" in resume else resume
        sampler.load_state_dict(own["sampler"])
        set_rng_state(own["rng"])
        start_step, elapsed = int(resume["step"]), float(resume["elapsed_s"])
        say(f"[mac] resumed {run_dir} at step {start_step}", flush=True)
    else:
        run_dir = ctx.on_main(lambda: _new_run_dir(args, argv, cfg, spec, train_data, val_data,
                                                   device, ctx.world_size))
    ctx.broadcast_tensors(agent.state_dict().values())   # the same start everywhere, whatever happened

    if ctx.is_main:
        if resume is not None:
            _drop_rows_past(run_dir, start_step, say)   # before any row of the resumed run is written
        train_log, eval_log = CsvLog(run_dir / "train.csv"), CsvLog(run_dir / "eval.csv")
        tensorboard = TensorBoard(run_dir / "tb" if args.tensorboard else None,
                                  purge_step=start_step + 1 if resume is not None else None)
        loggers = Loggers(tensorboard, _wandb_log(args, run_dir) if args.wandb else None)
    else:
        loggers = Loggers()

    def checkpoint(step):
        states = ctx.gather({"sampler": sampler.state_dict(), "rng": rng_state()})
        if not ctx.is_main:
            return
        # Rank 0's states at the top level, as a single process stores them; every rank's by rank.
        per_rank = {"rank_states": states} if ctx.distributed else {}
        save_checkpoint(run_dir, step, {
            "agent": agent.state_dict(), "optimizer": agent.optimizer.state_dict(),
            "agent_config": cfg.to_dict(), "env_name": spec.name,
            "dims": [train_data.obs_dim, train_data.action_dim, train_data.goal_dim],
            "obs_norm": obs_norm.state_dict(), "goal_norm": goal_norm.state_dict() if goal_norm else None,
            **states[0], "world_size": ctx.world_size, **per_rank, "elapsed_s": elapsed,
            "seed": args.seed}, keep=args.keep_checkpoints)

    say(f"[mac] run directory: {run_dir}", flush=True)
    for note in notes:
        say(note, flush=True)
    if start_step >= args.offline_steps:
        say(f"[mac] the run is at step {start_step}, --offline_steps is {args.offline_steps}: nothing "
            "to train (pass a larger --offline_steps to continue)", flush=True)
    from tqdm import tqdm
    bars = show_progress(progress)
    plain = progress and not bars  # no terminal (a log file): plain lines instead
    bar = tqdm(range(start_step + 1, args.offline_steps + 1), initial=start_step,
               total=args.offline_steps, desc="train", disable=not bars, dynamic_ncols=True)
    # --threads auto: the count is re-chosen by timing steps as the machine's load changes.
    tuner = None if args.threads else ThreadTuner(torch.get_num_threads(), torch.set_num_threads)
    last_eval, step, stop = None, start_step, False
    t0 = last_line = time.perf_counter()
    with _DeferredInterrupt() as interrupt:
        for step in bar:
            batch = training_batch(sampler, cfg, device)
            threads = tuner.before_step() if tuner else args.threads
            info = agent.update(batch)              # 0-d tensors on the device, read at log steps only
            info["threads"] = threads
            if tuner and (probe := tuner.after_step(step)):
                say(f"[mac] step {step}: {tuner.current} thread(s) from now on (median step time "
                    + ", ".join(f"{t * 1e3:.0f} ms with {n}" for n, t in probe.items()) + ")", flush=True)
            log_step = step % args.log_interval == 0
            if log_step:  # one transfer to the host; its wait for the queued GPU work is training time
                info = fetch_floats(info)
            now = time.perf_counter()
            elapsed += now - t0
            t0 = now
            if log_step:
                info = ctx.mean_over_ranks(info)
                if ctx.is_main:
                    info.update(diagnostics.compute(agent, batch, step))
                    t0 = time.perf_counter()  # diagnostics are not training time
                    row = {"step": step, "time_s": round(elapsed, 3), **info}
                    train_log.write(row)
                    loggers.write("train", row, step)
                    bar.set_postfix(loss=f"{info['loss/total']:.3g}", refresh=False)
                    if plain and now - last_line >= PLAIN_PROGRESS_S:
                        print(f"[mac] step {step}/{args.offline_steps}: loss {info['loss/total']:.3g} "
                              f"({elapsed:.0f} s)", flush=True)
                        last_line = now
            if ctx.is_main and ((args.eval_interval and step % args.eval_interval == 0)
                                or step == args.offline_steps):
                last_eval = _run_eval(spec, agent, obs_norm, goal_norm, args, step, run_dir, elapsed)
                eval_log.write(last_eval)
                loggers.write("eval", last_eval, step)
                bar.write(f"[mac] step {step}: success {last_eval['success']:.3f} "
                          f"({last_eval['episodes']} episodes)")
                t0 = time.perf_counter()  # evaluation time is not training time
            # Every rank stops at the same step: a Ctrl-C reaches them at different moments.
            stop = ctx.any_rank(interrupt.requested)
            if step % args.save_interval == 0 or step == args.offline_steps or stop:
                checkpoint(step)
            if stop:
                break
    bar.close()
    loggers.close()
    if stop or interrupt.requested:
        raise TrainingInterrupted(run_dir, step, ctx)
    say(f"[mac] run directory: {run_dir}")
    say(f"[mac]   logs: {run_dir / 'train.csv'}, {run_dir / 'eval.csv'}; checkpoints: {run_dir / 'checkpoints'}")
    if last_eval is not None:
        say(f"[mac]   final success rate: {last_eval['success']:.3f}")
    say(f"[mac]   plot: mac plot {run_dir}")
    return run_dir


def _new_run_dir(args, argv, cfg, spec, train_data, val_data, device, world_size) -> Path:
    name = args.run_name or f"{spec.name}_s{args.seed}_{time.strftime('%Y%m%d-%H%M%S')}"
    run_dir = Path(args.save_dir).expanduser() / name
    if (run_dir / "flags.json").exists():
        raise SystemExit(f"{run_dir} already holds a run; resume it with --restore_path {run_dir} "
                         "or choose another --run_name")
    run_dir.mkdir(parents=True, exist_ok=True)
    import mac
    atomic_write_text(run_dir / "flags.json", json.dumps({
        "argv": argv, "args": vars(args), "agent": cfg.to_dict(), "env_name": spec.name,
        "dataset": {"train_rows": len(train_data), "val_rows": len(val_data),
                    "obs_dim": train_data.obs_dim, "action_dim": train_data.action_dim,
                    "goal_dim": train_data.goal_dim},
        "device": str(device), "world_size": world_size, "mac_info": mac.info()}, indent=2, default=str))
    return run_dir


def main(argv=None) -> int:
    try:
        train(list(sys.argv[1:] if argv is None else argv))
    except TrainingInterrupted as stop:
        if stop.ctx.is_main:
            how = resume_command(stop.run_dir, stop.ctx.world_size)
            print(f"[mac] {stop}\n[mac] continue with: {how} [--offline_steps N]", file=sys.stderr)
        return 130
    except (DatasetError, ValueError, RuntimeError, FileNotFoundError) as exc:
        print(f"mac train: error{rank_label()}: {exc}", file=sys.stderr)
        return 2
    return 0
