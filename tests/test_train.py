"""End to end: `mac train` on a tiny generated dataset, logs, checkpoints, resume, eval, plot."""

import collections
import csv

import pytest
import torch

from mac.checkpoint import list_checkpoints, load_checkpoint, save_checkpoint
from mac.cli import main as cli

TINY = ["--agent.hidden_dims=16,16", "--agent.batch_size=16", "--agent.rollout_batch=8",
        "--agent.chunk_len=5", "--agent.rollout_steps=2", "--agent.num_samples_train=2",
        "--agent.num_samples_test=2", "--agent.flow_steps=2", "--agent.action_execute=5",
        "--agent.rollout_backend=torch"]


def train_argv(data_dir, save_dir, name, steps, *extra):
    """The `mac train` flags of a short run; threads pinned (bitwise resume equivalence needs a fixed
    count, mac.threads)."""
    return ["--env_name", "cube-single-play-singletask-task2-v0", "--dataset_dir", str(data_dir),
            "--save_dir", str(save_dir), "--run_name", name, "--offline_steps", str(steps),
            "--log_interval", "1", "--eval_interval", "0", "--eval_episodes", "1",
            "--save_interval", "3", "--no_progress", "--seed", "3", "--threads", "2", *extra]


def run_train(data_dir, save_dir, name, steps, *extra):
    """A short run (train_argv) in this process."""
    from mac.train import train
    return train(train_argv(data_dir, save_dir, name, steps, *extra))


class Evil:  # any non-allow-listed class: loading it would run arbitrary unpickling
    pass


def _rows(path):
    with open(path, newline="") as f:
        return list(csv.reader(f))


def test_resume_continues_the_same_curve(tiny_cube_dir, tmp_path):
    straight = run_train(tiny_cube_dir, tmp_path, "straight", 6, *TINY)
    half = run_train(tiny_cube_dir, tmp_path, "half", 3, *TINY)
    resumed = run_train(tiny_cube_dir, tmp_path, "ignored", 6, "--restore_path", str(half))
    assert resumed == half
    a = load_checkpoint(straight)["agent"]
    b = load_checkpoint(half)["agent"]
    assert load_checkpoint(half)["step"] == 6
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=0, msg=k)
    rows_a, rows_b = _rows(straight / "train.csv"), _rows(half / "train.csv")
    assert rows_a[0] == rows_b[0] and len(rows_b) == 1 + 6          # one header, appended rows
    loss_col = rows_a[0].index("loss/total")
    assert [r[loss_col] for r in rows_a[1:]] == [r[loss_col] for r in rows_b[1:]]
    assert len(_rows(half / "eval.csv")) == 1 + 2                   # eval at 3 (end of 1st part) and 6
    assert (half / "flags.json").is_file()


def test_ctrl_c_finishes_the_step_saves_and_resumes_the_same_curve(tiny_cube_dir, tmp_path, monkeypatch):
    import signal

    from mac.agent import MACAgent
    from mac.train import TrainingInterrupted, main

    straight = run_train(tiny_cube_dir, tmp_path, "straight", 6, *TINY)
    update, calls = MACAgent.update, []

    def update_then_ctrl_c(self, batch):
        calls.append(1)
        if len(calls) == 4:                     # SIGINT arrives in the middle of step 4
            signal.raise_signal(signal.SIGINT)
        return update(self, batch)

    monkeypatch.setattr(MACAgent, "update", update_then_ctrl_c)
    handler = signal.getsignal(signal.SIGINT)
    with pytest.raises(TrainingInterrupted) as stop:
        run_train(tiny_cube_dir, tmp_path, "cut", 6, *TINY)
    assert signal.getsignal(signal.SIGINT) is handler          # the handler is restored
    assert stop.value.step == 4 and len(calls) == 4
    assert [p.name for p in list_checkpoints(stop.value.run_dir / "checkpoints")][-1] == "ckpt_000000004.pt"
    assert len(_rows(stop.value.run_dir / "train.csv")) == 1 + 4
    monkeypatch.setattr(MACAgent, "update", update)
    assert main(["--restore_path", str(stop.value.run_dir), "--offline_steps", "6", "--no_progress",
                 "--eval_interval", "0", "--eval_episodes", "1", "--log_interval", "1"]) == 0
    a, b = load_checkpoint(straight)["agent"], load_checkpoint(stop.value.run_dir)["agent"]
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=0, msg=k)


def test_checkpoints_keep_last_k_and_reject_pickles(tmp_path):
    for step in range(1, 6):
        save_checkpoint(tmp_path, step, {"x": torch.ones(1) * step}, keep=2)
    assert [p.name for p in list_checkpoints(tmp_path / "checkpoints")] == ["ckpt_000000004.pt", "ckpt_000000005.pt"]
    assert load_checkpoint(tmp_path)["step"] == 5
    assert not any(p.name.startswith(".") for p in (tmp_path / "checkpoints").iterdir())
    evil = tmp_path / "checkpoints" / "ckpt_000000009.pt"
    torch.save({"format_version": 1, "obj": collections.OrderedDict(a=Evil())}, evil)
    with pytest.raises(ValueError, match="cannot load checkpoint"):
        load_checkpoint(evil)
    with pytest.raises(FileNotFoundError, match="no checkpoint found"):
        load_checkpoint(tmp_path / "nowhere")


def test_eval_and_plot_cli(tiny_cube_dir, tmp_path, capsys):
    run = run_train(tiny_cube_dir, tmp_path, "r", 3, *TINY)
    assert cli(["eval", "--restore_path", str(run), "--eval_episodes", "1", "--json"]) == 0
    out = capsys.readouterr().out
    assert '"success"' in out and '"step": 3' in out
    assert cli(["plot", str(run)]) == 0
    assert (run / "learning_curve.png").stat().st_size > 1000
    both = tmp_path / "both.png"
    assert cli(["plot", str(run), str(run), "--labels", "a", "b", "--out", str(both)]) == 0
    assert both.stat().st_size > 1000
    assert cli(["plot", str(run), str(run), "--labels", "a", "--out", str(both)]) == 2   # one label each
    with pytest.raises(SystemExit):
        cli(["plot", str(run), str(run)])                                               # needs --out
    assert cli(["eval", "--restore_path", str(run), "--action_execute", "9"]) == 2


def test_train_flag_errors(tiny_cube_dir, tmp_path, capsys):
    assert cli(["train", "--dataset_dir", str(tiny_cube_dir), "--agent.chunk_size=3"]) == 2
    assert "valid keys" in capsys.readouterr().err
    assert cli(["train", "--dataset_dir", str(tmp_path / "empty"), "--no_progress"]) == 2
    assert "mac data generate" in capsys.readouterr().err
    run_train(tiny_cube_dir, tmp_path, "dup", 1, *TINY)
    with pytest.raises(SystemExit, match="already holds a run"):
        run_train(tiny_cube_dir, tmp_path, "dup", 1, *TINY)


def test_goal_conditioned_training_and_per_task_eval(tiny_cube_dir, tmp_path):
    from mac.train import train
    run = train(["--env_name", "cube-single-play-oraclerep-v0", "--dataset_dir", str(tiny_cube_dir),
                 "--save_dir", str(tmp_path), "--run_name", "goal", "--offline_steps", "2",
                 "--log_interval", "1", "--eval_episodes", "1", "--no_progress", *TINY])
    header, row = _rows(run / "eval.csv")
    assert [f"task{k}_success" for k in range(1, 6)] == [h for h in header if h.startswith("task")]
    assert row[header.index("episodes")] == "5"
    ck = load_checkpoint(run)
    assert ck["dims"][2] == 3 and ck["goal_norm"] is not None        # oracle rep: cube xyz


def test_resume_keeps_the_runs_flags(tiny_cube_dir, tmp_path, capsys):
    from mac.train import train
    # A 3-step run (log every step; evaluated at its end with 2 episodes), then resumed without flags.
    run = run_train(tiny_cube_dir, tmp_path, "short", 3, *TINY, "--eval_episodes", "2")
    assert len(_rows(run / "eval.csv")) == 1 + 1
    capsys.readouterr()
    assert train(["--restore_path", str(run), "--no_progress"]) == run
    out = capsys.readouterr().out
    assert load_checkpoint(run)["step"] == 3                       # not towards the default
    assert len(_rows(run / "train.csv")) == 1 + 3 and len(_rows(run / "eval.csv")) == 1 + 1
    taken = next(line for line in out.splitlines() if "from the run's flags.json" in line)
    assert "offline_steps=3" in taken and "eval_episodes=2" in taken and "seed=3" in taken
    assert "nothing to train" in out
    # An explicit flag overrides the run's; the others (log_interval 1, eval_episodes 2, seed 3) stay.
    assert train(["--restore_path", str(run), "--offline_steps", "5", "--no_progress"]) == run
    ck = load_checkpoint(run)
    assert ck["step"] == 5 and ck["seed"] == 3
    rows = _rows(run / "train.csv")
    assert [r[0] for r in rows[1:]] == ["1", "2", "3", "4", "5"]    # log_interval 1 reused
    header, *evals = _rows(run / "eval.csv")
    assert [e[header.index("step")] for e in evals] == ["3", "5"]
    assert evals[-1][header.index("episodes")] == "2"              # the recorded --eval_episodes


def test_given_flags_are_the_ones_on_the_command_line():
    from mac.train import NOT_FROM_RUN, _given_flags
    assert _given_flags([]) == set()
    assert _given_flags(["--offline_steps", "3", "--tensorboard", "--dataset_dir=/x"]) == \
        {"offline_steps", "tensorboard", "dataset_dir"}
    assert _given_flags(["--seed", "0"]) == {"seed"}               # given, even if equal to the default
    assert {"restore_path", "run_name", "save_dir"} <= NOT_FROM_RUN


def test_rng_state_covers_cuda_and_forked_rng_protects_the_training_stream(monkeypatch):
    """A checkpoint's RNG state holds the CUDA generators where CUDA is initialised (exact resume on
    a GPU); side computations inside forked_rng leave every training stream where it was."""
    from mac import checkpoint
    st = checkpoint.rng_state()
    assert "cuda" in st and (st["cuda"] == [] or len(st["cuda"]) == torch.cuda.device_count())
    before = torch.get_rng_state()
    with checkpoint.forked_rng(torch.device("cpu")):
        torch.rand(100)
    assert torch.equal(before, torch.get_rng_state())
    # A checkpoint from a 2-GPU process resumed where fewer devices are visible: a clear error.
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 0)
    with pytest.raises(RuntimeError, match="CUDA device"):
        checkpoint.set_rng_state(dict(st, cuda=[torch.zeros(8, dtype=torch.uint8)] * 2))


KILL_MID_SAVE = r"""
# `mac train` that SIGKILLs itself halfway through writing its 2nd checkpoint: half of the
# serialized bytes reach the (temporary) file, are fsynced, and the process dies.
import io, os, signal, sys
import torch

real_save, saves = torch.save, []

def save(obj, f, *args, **kwargs):
    if "ckpt_" in str(getattr(f, "name", "")):
        saves.append(f.name)
        if len(saves) == 2:
            buf = io.BytesIO()
            real_save(obj, buf, *args, **kwargs)
            f.write(buf.getvalue()[: buf.tell() // 2])
            f.flush()
            os.fsync(f.fileno())
            os.kill(os.getpid(), signal.SIGKILL)
    return real_save(obj, f, *args, **kwargs)

torch.save = save
from mac.cli import main
sys.exit(main(["train", *sys.argv[1:]]))
"""


@pytest.mark.slow
def test_sigkill_during_a_checkpoint_save_then_resume(tiny_cube_dir, tmp_path, capsys):
    """Killed (SIGKILL, no cleanup) halfway through writing checkpoint 6: no partial file is visible
    as a checkpoint, checkpoint 3 is the newest, and a resume from it completes the run."""
    import signal
    import subprocess
    import sys

    from mac.checkpoint import CKPT_PATTERN
    from mac.train import main

    script = tmp_path / "kill_mid_save.py"
    script.write_text(KILL_MID_SAVE)
    run_dir = tmp_path / "runs" / "killed"
    proc = subprocess.run(
        [sys.executable, str(script), "--env_name", "cube-single-play-singletask-task2-v0",
         "--dataset_dir", str(tiny_cube_dir), "--save_dir", str(tmp_path / "runs"), "--run_name", "killed",
         "--offline_steps", "6", "--save_interval", "3", "--log_interval", "1", "--eval_interval", "0",
         "--eval_episodes", "1", "--no_progress", "--seed", "3", "--threads", "2", *TINY],
        capture_output=True, text=True, timeout=600)
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-3000:]

    ckpts = run_dir / "checkpoints"
    names = sorted(p.name for p in ckpts.iterdir())
    visible = [n for n in names if CKPT_PATTERN.match(n)]
    assert visible == ["ckpt_000000003.pt"] == [p.name for p in list_checkpoints(ckpts)], (
        f"after a kill during the save of step 6 the checkpoints are {names}")
    assert load_checkpoint(run_dir)["step"] == 3                                      # the last complete one
    partial = [n for n in names if n.startswith(".ckpt_000000006.pt.tmp")]
    assert partial, f"the kill did not happen while writing checkpoint 6: {names}"   # the test's premise
    with pytest.raises(Exception):
        torch.load(ckpts / partial[0], weights_only=True)                              # it is truncated
    killed_rows = _rows(run_dir / "train.csv")
    assert [r[0] for r in killed_rows[1:]] == ["1", "2", "3", "4", "5", "6"]          # it died at the save

    capsys.readouterr()
    assert main(["--restore_path", str(run_dir), "--no_progress", "--eval_episodes", "1"]) == 0
    out = capsys.readouterr().out
    assert f"resumed {run_dir} at step 3" in out and "3 from train.csv" in out
    final = load_checkpoint(run_dir)
    assert final["step"] == 6 and [p.name for p in list_checkpoints(ckpts)] == [
        "ckpt_000000003.pt", "ckpt_000000006.pt"]
    assert not list(ckpts.glob(".ckpt_*")), "the killed run's half-written temp file was not reclaimed"
    # The resume dropped the killed run's rows 4..6 and logged them again, the same losses: the
    # state came whole from checkpoint 3.
    header, *rows = _rows(run_dir / "train.csv")
    loss = header.index("loss/total")
    assert header == killed_rows[0] and [r[0] for r in rows] == ["1", "2", "3", "4", "5", "6"]
    assert [r[loss] for r in rows] == [r[loss] for r in killed_rows[1:]]


def test_threads_auto_times_steps_and_logs_the_count(tiny_cube_dir, tmp_path, capsys):
    """The default --threads auto: every step's count is a candidate, logged in train.csv; with more
    than one candidate the first probe ends after 3 steps per candidate and says what it chose."""
    from mac.threads import candidate_counts
    from mac.train import train
    torch.set_num_threads(2)
    run = train(["--env_name", "cube-single-play-singletask-task2-v0", "--dataset_dir", str(tiny_cube_dir),
                 "--save_dir", str(tmp_path), "--run_name", "auto", "--offline_steps", "8",
                 "--log_interval", "1", "--eval_interval", "0", "--eval_episodes", "1", "--no_progress",
                 "--threads", "auto", *TINY])
    rows = list(csv.DictReader(open(run / "train.csv")))
    used = [int(float(r["threads"])) for r in rows]
    cands = candidate_counts(2)
    assert set(used) <= set(cands) and len(used) == 8
    assert used[:6] == [2, 2, 2, 1, 1, 1]
    assert "thread(s) from now on" in capsys.readouterr().out
