"""A crash leaves no step logged twice: a resume drops the rows past its checkpoint from train.csv and
eval.csv (atomically), and TensorBoard is told to forget them (purge_step)."""

import csv
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

import mac
from mac.checkpoint import list_checkpoints, load_checkpoint
from mac.logging_utils import CsvLog, TensorBoard, truncate_after_step
from test_train import TINY, run_train, train_argv

EVAL_COLUMNS = {"success": 0.25, "episodes": 1}


def write_log(path, steps, **row):
    """A CSV log as mac train writes it: one row per step of ``steps``."""
    log = CsvLog(path)
    for step in steps:
        log.write({"step": step, "time_s": 0.1 * step, "loss/total": 1.0 / step, **row})
    return path.read_bytes()


def lines_of(data: bytes) -> list[bytes]:
    return data.splitlines(keepends=True)


def no_temp_files(folder: Path) -> bool:
    return not [p.name for p in folder.iterdir() if p.name.startswith(".")]


# ------------------------------------------------------------------------- truncate_after_step

def test_rows_past_the_step_are_dropped_the_rest_kept_byte_for_byte(tmp_path):
    log = tmp_path / "train.csv"
    before = write_log(log, range(1, 7))
    assert truncate_after_step(log, 4) == (2, False)
    assert log.read_bytes() == b"".join(lines_of(before)[:1 + 4])       # header and steps 1..4
    assert no_temp_files(tmp_path)
    CsvLog(log).write({"step": 5, "time_s": 0.5, "loss/total": 0.2})    # the resumed run appends
    assert [r["step"] for r in csv.DictReader(log.open(newline=""))] == ["1", "2", "3", "4", "5"]


@pytest.mark.parametrize("torn", [b"7,0.7", b"7,0.7,0.14\r", b"7\r\n", b"3,0.3,0.33,extra\r\n"],
                         ids=["no-line-end", "half-a-line-end", "too-few-columns", "too-many-columns"])
def test_a_torn_last_line_is_dropped(tmp_path, torn):
    log = tmp_path / "train.csv"
    complete = write_log(log, range(1, 7))
    log.write_bytes(complete + torn)
    assert truncate_after_step(log, 6) == (1, True)
    assert log.read_bytes() == complete
    log.write_bytes(complete + torn)
    assert truncate_after_step(log, 4) == (3, True)
    assert log.read_bytes() == b"".join(lines_of(complete)[:1 + 4])


def test_a_torn_header_leaves_an_empty_log_that_gets_a_new_header(tmp_path):
    log = tmp_path / "train.csv"
    log.write_bytes(b"step,time_s,lo")
    assert truncate_after_step(log, 3) == (1, True)
    assert log.read_bytes() == b""
    CsvLog(log).write({"step": 4, "time_s": 0.4})
    assert log.read_bytes() == b"step,time_s\r\n4,0.4\r\n"


def test_a_log_with_nothing_past_the_step_is_not_rewritten(tmp_path):
    log = tmp_path / "train.csv"
    before = write_log(log, range(1, 5))
    stat = log.stat()
    assert truncate_after_step(log, 4) == (0, False)
    assert truncate_after_step(log, 100) == (0, False)
    after = log.stat()
    assert log.read_bytes() == before
    assert (after.st_ino, after.st_mtime_ns) == (stat.st_ino, stat.st_mtime_ns)   # not even rewritten
    assert truncate_after_step(tmp_path / "eval.csv", 4) == (0, False)           # no evaluation yet
    assert not (tmp_path / "eval.csv").exists()


def test_rows_are_kept_verbatim_quoted_fields_included(tmp_path):
    log = tmp_path / "eval.csv"
    before = write_log(log, [2, 4, 6], note='a "quoted",\r\nmulti-line value', mark="é")
    assert truncate_after_step(log, 5) == (1, False)
    kept = log.read_bytes()
    assert before.startswith(kept) and kept.count(b"\r\n") == 1 + 2 * 2        # header, 2 two-line rows
    assert [r["step"] for r in csv.DictReader(log.open(newline="", encoding="utf-8"))] == ["2", "4"]


def test_a_failed_replace_leaves_the_log_intact_and_no_temp_file(tmp_path, monkeypatch):
    log = tmp_path / "train.csv"
    before = write_log(log, range(1, 7))

    def replace_fails(src, dst):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "replace", replace_fails)
    with pytest.raises(OSError, match="No space left"):
        truncate_after_step(log, 3)
    assert log.read_bytes() == before
    assert no_temp_files(tmp_path)


def test_a_row_that_is_not_a_log_row_is_an_error_that_says_which(tmp_path):
    log = tmp_path / "train.csv"
    lines = lines_of(write_log(log, range(1, 5)))
    log.write_bytes(b"".join(lines[:2] + [b"oops\r\n"] + lines[2:]))
    with pytest.raises(ValueError, match=r"row 2 \('oops'\) does not match the header .* repair or delete"):
        truncate_after_step(log, 2)
    (tmp_path / "other.csv").write_bytes(b"epoch,loss\r\n1,0.5\r\n")
    with pytest.raises(ValueError, match="no 'step' column"):
        truncate_after_step(tmp_path / "other.csv", 0)


def test_resume_drops_from_both_logs_and_says_so_in_one_line(tmp_path, capsys):
    from mac.train import _drop_rows_past

    train_before = write_log(tmp_path / "train.csv", range(1, 9))
    eval_before = write_log(tmp_path / "eval.csv", [3, 6], **EVAL_COLUMNS)
    (tmp_path / "train.csv").write_bytes(train_before + b"9,0.")
    _drop_rows_past(tmp_path, 4, print)
    out = capsys.readouterr().out
    assert out == ("[mac] dropped the log rows past step 4, written after that checkpoint by the run that "
                   "stopped: 5 from train.csv (the last one torn by the kill), 1 from eval.csv\n")
    assert (tmp_path / "train.csv").read_bytes() == b"".join(lines_of(train_before)[:1 + 4])
    assert (tmp_path / "eval.csv").read_bytes() == b"".join(lines_of(eval_before)[:1 + 1])
    _drop_rows_past(tmp_path, 4, print)                                          # nothing left to drop
    assert capsys.readouterr().out == ""


# ------------------------------------------------------------------------- a real SIGKILL

# Checkpoints at 3 and 6, evaluations (the slow part) at 4 and 6: the kill comes after evaluation 4.
# One thread: two on a busy 2-core machine make these tiny steps many times slower.
STEPS, SAVE_EVERY, EVAL_EVERY = 6, 3, 4
FLAGS = [*TINY, "--save_interval", str(SAVE_EVERY), "--eval_interval", str(EVAL_EVERY), "--threads", "1"]


def logged_steps(path: Path) -> list[int]:
    """The steps of the complete rows of a CSV log (the file may be being written)."""
    if not path.is_file():
        return []
    complete = path.read_bytes().rpartition(b"\n")[0].decode()
    return [int(r[0]) for r in list(csv.reader(complete.splitlines()))[1:]]


def rows_past_the_checkpoint(run_dir: Path):
    """(checkpoint step, train.csv steps past it, eval.csv steps past it), once there is a checkpoint
    and both logs hold rows past it; else None."""
    checkpoints = list_checkpoints(run_dir / "checkpoints")
    if not checkpoints:
        return None
    step = int(checkpoints[-1].stem.split("_")[1])
    train = [s for s in logged_steps(run_dir / "train.csv") if s > step]
    evals = [s for s in logged_steps(run_dir / "eval.csv") if s > step]
    return (step, train, evals) if train and evals else None


def kill_when_rows_past_a_checkpoint(proc, run_dir: Path, log: Path, timeout_s=300.0):
    """SIGKILL ``proc`` once the logs hold rows past its newest checkpoint. It is stopped (SIGSTOP)
    while the files are checked, so what the check sees is what the kill leaves."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            break
        if rows_past_the_checkpoint(run_dir):
            os.kill(proc.pid, signal.SIGSTOP)
            _, status = os.waitpid(proc.pid, os.WUNTRACED)
            if not os.WIFSTOPPED(status):        # it ended just now (waitpid reaped it)
                proc.returncode = os.waitstatus_to_exitcode(status)
                break
            seen = rows_past_the_checkpoint(run_dir)
            if seen:
                os.kill(proc.pid, signal.SIGKILL)
                assert proc.wait(timeout=60) == -signal.SIGKILL
                return seen
            os.kill(proc.pid, signal.SIGCONT)
        time.sleep(0.01)
    proc.kill()
    proc.wait()
    pytest.fail(f"the run never had log rows past a checkpoint to kill it at (exit {proc.returncode}): "
                + log.read_text()[-3000:])


@pytest.mark.slow
def test_sigkill_between_checkpoints_then_resume_logs_every_step_once(tiny_cube_dir, tmp_path,
                                                                       monkeypatch, capsys):
    """`mac train` SIGKILLed after logging steps past its newest checkpoint, then resumed: every step
    is logged once, TensorBoard purges the orphaned steps, and the run is the uninterrupted one."""
    straight = run_train(tiny_cube_dir, tmp_path, "straight", STEPS, *FLAGS)

    # The same run as `mac train` in a child process (this tree's mac), SIGKILLed between checkpoints.
    run_dir, log = tmp_path / "killed", tmp_path / "killed.log"
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(
        [str(Path(mac.__file__).parent.parent), os.environ.get("PYTHONPATH", "")]))
    with open(log, "w") as out:
        proc = subprocess.Popen([sys.executable, "-m", "mac", "train",
                                 *train_argv(tiny_cube_dir, tmp_path, "killed", STEPS, *FLAGS)],
                                stdout=out, stderr=subprocess.STDOUT, env=env)
        checkpoint_step, train_past, evals_past = kill_when_rows_past_a_checkpoint(proc, run_dir, log)
    assert logged_steps(run_dir / "train.csv") == list(range(1, train_past[-1] + 1))

    # Resumed, with TensorBoard (a stand-in writer: the tensorboard package is optional).
    opened, logged = [], []

    class Writer:
        def __init__(self, log_dir, purge_step=None):
            opened.append(purge_step)

        def add_scalar(self, tag, value, step):
            logged.append(step)

        def flush(self):
            pass

        def close(self):
            pass

    monkeypatch.setattr(TensorBoard, "writer_class", staticmethod(lambda: Writer))
    from mac.train import main
    capsys.readouterr()
    assert main(["--restore_path", str(run_dir), "--tensorboard", "--no_progress"]) == 0
    out = capsys.readouterr().out
    assert (f"dropped the log rows past step {checkpoint_step}, written after that checkpoint by the run "
            f"that stopped: {len(train_past)} from train.csv, {len(evals_past)} from eval.csv") in out

    train_rows = list(csv.DictReader((run_dir / "train.csv").open(newline="")))
    eval_rows = list(csv.DictReader((run_dir / "eval.csv").open(newline="")))
    assert [int(r["step"]) for r in train_rows] == list(range(1, STEPS + 1))    # each step once, in order
    assert [int(r["step"]) for r in eval_rows] == [4, 6]
    assert opened == [checkpoint_step + 1]                                      # TensorBoard forgets them too
    assert sorted(set(logged)) == list(range(checkpoint_step + 1, STEPS + 1))

    # ... and it is the uninterrupted run: the same final state, bitwise, and the same logs.
    final, expected = load_checkpoint(run_dir), load_checkpoint(straight)
    assert final["step"] == expected["step"] == STEPS
    for name, tensor in expected["agent"].items():
        torch.testing.assert_close(final["agent"][name], tensor, rtol=0, atol=0, msg=name)
    for rows, straight_log in ((train_rows, "train.csv"), (eval_rows, "eval.csv")):
        straight_rows = list(csv.DictReader((straight / straight_log).open(newline="")))
        for row, want in zip(rows, straight_rows, strict=True):
            assert {**row, "time_s": None} == {**want, "time_s": None}, (straight_log, row["step"])
    assert no_temp_files(run_dir) and no_temp_files(run_dir / "checkpoints")
