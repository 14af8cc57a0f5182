"""Data-parallel training (mac.distributed): two CPU processes over gloo."""

import contextlib
import dataclasses
import itertools
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from mac.agent import MACAgent
from mac.checkpoint import load_checkpoint
from mac.config import AgentConfig
from mac.distributed import DistContext, rank_seed
from test_train import TINY, _rows

# ---------------------------------------------------------------- one step == the concatenated batch
WORLD, B, S, A, H_CHUNK = 2, 6, 5, 2, 2      # every other size differs from B and WORLD * B:
                                             # batch_noise finds the batch dim by its size
CONFIG = AgentConfig(hidden_dims=(16, 16), batch_size=B, rollout_batch=B, chunk_len=H_CHUNK,
                     rollout_steps=2, num_samples_train=3, flow_steps=2, action_execute=1,
                     rollout_backend="torch")


def _batch(rows: slice) -> dict[str, torch.Tensor]:
    """Rows ``rows`` of one fixed batch of WORLD * B samples (a reward task)."""
    g = torch.Generator().manual_seed(123)
    n = WORLD * B
    full = {"observations": torch.randn(n, S, generator=g),
            "actions": torch.rand(n, H_CHUNK * A, generator=g) * 2 - 1,
            "next_observations": torch.randn(n, S, generator=g),
            "rewards": torch.randn(n, generator=g), "masks": torch.ones(n)}
    return {k: v[rows] for k, v in full.items()}


@contextlib.contextmanager
def batch_noise(rank: int, local_batch: int, world: int):
    """torch.randn / torch.rand replaced: the k-th draw is this rank's slice (along the batch dim)
    of the k-th tensor drawn for the whole world * local_batch batch. A sample then gets the same
    flow and rollout noise on its rank as in one process on the concatenated batch."""
    real = torch.randn, torch.rand
    calls = itertools.count(1)

    def batch_sliced(draw):
        def fixed(*shape, dtype=None, device=None, **_):
            shape = tuple(shape[0]) if len(shape) == 1 and not isinstance(shape[0], int) else shape
            dim = shape.index(local_batch)
            whole = list(shape)
            whole[dim] *= world
            out = draw(whole, generator=torch.Generator().manual_seed(next(calls)))
            return out.narrow(dim, rank * local_batch, local_batch).to(dtype=dtype, device=device)
        return fixed

    torch.randn, torch.rand = (batch_sliced(draw) for draw in real)
    try:
        yield
    finally:
        torch.randn, torch.rand = real


def _one_step(agent, rows, rank, local_batch, world) -> dict:
    batch = _batch(rows)
    with batch_noise(rank, local_batch, world):
        agent.update(batch)
    return {"params": {k: v.clone() for k, v in agent.state_dict().items()},
            "grads": {n: p.grad.clone() for n, p in agent.named_parameters() if p.grad is not None}}


def _step_worker(rank: int, store: str, out: str):
    ctx = DistContext(rank, WORLD, rank, WORLD)
    ctx.start(torch.device("cpu"), timeout_s=120, init_method=f"file://{store}")
    try:
        torch.manual_seed(rank)                      # different networks: the broadcast must fix it
        agent = MACAgent(S, A, 0, CONFIG)
        ctx.broadcast_tensors(agent.state_dict().values())
        agent.gradient_hook = ctx.average_gradients
        torch.save(_one_step(agent, slice(rank * B, (rank + 1) * B), rank, B, WORLD), f"{out}{rank}.pt")
    finally:
        ctx.stop()


def test_one_step_equals_one_process_on_the_concatenated_batch(tmp_path):
    torch.multiprocessing.spawn(_step_worker, args=(str(tmp_path / "store"), str(tmp_path / "rank")),
                                nprocs=WORLD, join=True)
    ranks = [torch.load(tmp_path / f"rank{r}.pt") for r in range(WORLD)]
    torch.manual_seed(0)                             # rank 0's networks
    whole = dataclasses.replace(CONFIG, batch_size=WORLD * B, rollout_batch=WORLD * B)
    single = _one_step(MACAgent(S, A, 0, whole), slice(None), 0, WORLD * B, 1)
    for k in single["params"]:                       # the ranks hold the very same numbers
        torch.testing.assert_close(ranks[1]["params"][k], ranks[0]["params"][k], rtol=0, atol=0)
    assert ranks[0]["grads"].keys() == single["grads"].keys()
    # Float32 sums in another order (the mean of two half-batch means vs one mean; each weight
    # gradient's reduction over the batch split in two): a few ulps (~1e-7 relative) of the largest
    # terms. Measured: 5e-7 on gradients up to 6; without the all-reduce they differ by ~3.
    for k, g in single["grads"].items():
        torch.testing.assert_close(ranks[0]["grads"][k], g, rtol=1e-5, atol=1e-6, msg=k)
    # Adam's first step is p -= lr g / (|g| + eps), which moves by lr eps dg / g^2 for a gradient
    # error dg: with |g| > 1e-5 (checked) and dg <= 1e-6, at most 3e-8, below atol. Measured: 1e-9;
    # one rank's own gradient instead gives 6e-4.
    assert min(float(g.abs().min()) for g in single["grads"].values()) > 1e-5
    for k, p in single["params"].items():
        torch.testing.assert_close(ranks[0]["params"][k], p, rtol=1e-6, atol=1e-7, msg=k)


def test_rank_streams_and_threads():
    assert rank_seed(7, 0) == 7                               # one process: today's seed
    assert len({rank_seed(7, r) for r in range(4)}) == 4
    single = DistContext.from_env({})
    assert not single.distributed and single.default_threads() == 0
    two = DistContext.from_env({"RANK": "1", "WORLD_SIZE": "2", "LOCAL_RANK": "1", "LOCAL_WORLD_SIZE": "2"})
    assert two.distributed and not two.is_main and two.default_threads() >= 1
    with pytest.raises(ValueError, match="inconsistent"):
        DistContext.from_env({"RANK": "2", "WORLD_SIZE": "2"})


# ---------------------------------------------------------------- `mac train` under torchrun
def _torchrun(*args, script=None, timeout=240):
    target = [str(script)] if script else ["-m", "mac"]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    return subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone",
                           "--nproc_per_node", "2", *target, *args],
                          capture_output=True, text=True, timeout=timeout, env=env)


def _train_args(data_dir, save_dir, name, steps):
    return ["train", "--env_name", "cube-single-play-singletask-task2-v0", "--dataset_dir", str(data_dir),
            "--save_dir", str(save_dir), "--run_name", name, "--offline_steps", str(steps),
            "--log_interval", "1", "--eval_interval", "0", "--eval_episodes", "1", "--save_interval", "3",
            "--no_progress", "--seed", "3", *TINY]


def _tree(root: Path) -> dict:
    return {str(p.relative_to(root)): (p.stat().st_size, p.stat().st_mtime_ns)
            for p in sorted(root.rglob("*"))}


@pytest.fixture(scope="module")
def two_process_run(tiny_cube_dir, tmp_path_factory):
    """A 3-step run of 2 processes (saved at step 3)."""
    save_dir = tmp_path_factory.mktemp("ddp")
    proc = _torchrun(*_train_args(tiny_cube_dir, save_dir, "ddp", 3))
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return save_dir / "ddp"


@pytest.fixture(scope="module")
def resumed_two_process_run(two_process_run):
    """``two_process_run`` resumed by 2 processes to step 5: (run dir, the resume's process, the
    step-3 checkpoint as it was before the resume). A fixture, so that every test that needs the
    resumed run gets it whatever order the tests run in."""
    before = load_checkpoint(two_process_run)
    proc = _torchrun("train", "--restore_path", str(two_process_run), "--offline_steps", "5", "--no_progress")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return two_process_run, proc, before


def test_world_size_1_cannot_resume_a_2_process_run(two_process_run, capsys):
    from mac.cli import main
    before = _tree(two_process_run)
    assert main(["train", "--restore_path", str(two_process_run), "--offline_steps", "9",
                 "--no_progress"]) == 2
    err = capsys.readouterr().err
    assert "trained with 2 processes and this run has 1" in err
    assert "torchrun --nproc_per_node 2 -m mac train --restore_path" in err
    assert _tree(two_process_run) == before                      # nothing written


def test_two_processes_train_and_resume_one_run(resumed_two_process_run):
    two_process_run, proc, ck = resumed_two_process_run
    save_dir = two_process_run.parent
    flags = json.loads((two_process_run / "flags.json").read_text())
    assert flags["world_size"] == 2
    assert ck["step"] == 3 and ck["world_size"] == 2 and len(ck["rank_states"]) == 2
    samplers = [s["sampler"]["bit_generator"]["state"] for s in ck["rank_states"]]
    assert samplers[0] != samplers[1]                            # each rank its own batches
    assert ck["sampler"] == ck["rank_states"][0]["sampler"]

    assert proc.stdout.count("resumed") == 1                     # rank 0 alone prints
    assert [p.name for p in save_dir.iterdir()] == ["ddp"]       # one run directory
    assert [p.name for p in save_dir.rglob("flags.json")] == ["flags.json"]
    rows = _rows(two_process_run / "train.csv")
    assert [r[0] for r in rows[1:]] == ["1", "2", "3", "4", "5"]  # one header, no step twice
    header, *evals = _rows(two_process_run / "eval.csv")
    assert [e[0] for e in evals] == ["3", "5"]
    assert load_checkpoint(two_process_run)["step"] == 5
    assert not [p for p in two_process_run.rglob("*") if p.name.startswith(".")]   # no temp files


@pytest.mark.slow
def test_a_resumed_2_process_run_continues_the_same_curve(resumed_two_process_run, tiny_cube_dir, tmp_path):
    """3 steps + resume to 5 == 5 straight steps, bit for bit: each rank restores its own sampler and
    random streams."""
    two_process_run = resumed_two_process_run[0]
    assert load_checkpoint(two_process_run)["step"] == 5
    proc = _torchrun(*_train_args(tiny_cube_dir, tmp_path, "straight", 5))
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    a, b = load_checkpoint(tmp_path / "straight"), load_checkpoint(two_process_run)
    for k in a["agent"]:
        torch.testing.assert_close(a["agent"][k], b["agent"][k], rtol=0, atol=0, msg=k)
    loss = _rows(tmp_path / "straight" / "train.csv")[0].index("loss/total")
    assert [r[loss] for r in _rows(tmp_path / "straight" / "train.csv")] == \
        [r[loss] for r in _rows(two_process_run / "train.csv")]


RANK_1_READS_OTHER_DATA = r"""
# `mac train` whose rank 1 reads --dataset_dir from $OTHER_DATA: another node's different files.
import os, sys
from mac.cli import main
argv = sys.argv[1:]
if os.environ["RANK"] == "1":
    argv[argv.index("--dataset_dir") + 1] = os.environ["OTHER_DATA"]
sys.exit(main(argv))
"""


def test_a_dataset_that_differs_between_ranks_is_an_error(tiny_cube_dir, tmp_path, monkeypatch):
    other = tmp_path / "other"
    shutil.copytree(tiny_cube_dir, other)
    train_file = other / "cube-single-play-v0.npz"
    arrays = dict(np.load(train_file))
    last_start = int(np.flatnonzero(arrays["terminals"])[-2]) + 1  # drop the last episode
    np.savez(train_file, **{k: v[:last_start] for k, v in arrays.items()})
    script = tmp_path / "other_data.py"
    script.write_text(RANK_1_READS_OTHER_DATA)
    monkeypatch.setenv("OTHER_DATA", str(other))
    proc = _torchrun(*_train_args(tiny_cube_dir, tmp_path / "runs", "r", 3), script=script)
    assert proc.returncode != 0
    out = proc.stdout + proc.stderr
    assert "the processes of this run disagree: rank 1 has training data=" in out, out[-3000:]
    assert not (tmp_path / "runs").exists()                     # nothing written


RANK_1_DIES_AT_STEP_4 = r"""
# `mac train` whose rank 1 is SIGKILLed (no cleanup) in the middle of its 4th step.
import os, signal, sys
from mac.agent import MACAgent
from mac.cli import main
update, steps = MACAgent.update, []

def update_then_die(self, batch):
    steps.append(1)
    if os.environ["RANK"] == "1" and len(steps) == 4:
        os.kill(os.getpid(), signal.SIGKILL)
    return update(self, batch)

MACAgent.update = update_then_die
sys.exit(main(sys.argv[1:]))
"""


@pytest.mark.slow
def test_a_rank_that_dies_leaves_a_run_that_resumes(tiny_cube_dir, tmp_path):
    script = tmp_path / "dies.py"
    script.write_text(RANK_1_DIES_AT_STEP_4)
    proc = _torchrun(*_train_args(tiny_cube_dir, tmp_path / "runs", "r", 5), script=script)
    assert proc.returncode != 0
    run = tmp_path / "runs" / "r"
    assert not [p for p in run.rglob("*") if p.name.startswith(".")]   # no half-written file
    assert [r[0] for r in _rows(run / "train.csv")[1:]] == ["1", "2", "3"]
    assert load_checkpoint(run)["step"] == 3
    proc = _torchrun("train", "--restore_path", str(run), "--no_progress")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert [r[0] for r in _rows(run / "train.csv")[1:]] == ["1", "2", "3", "4", "5"]
