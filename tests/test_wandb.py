"""`mac train --wandb`: an offline Weights & Biases run mirroring the CSV logs, resumable, optional."""

import csv
import json
import struct
import sys

import pytest

from mac.checkpoint import load_checkpoint
from test_train import TINY, run_train


@pytest.fixture
def wandb(tmp_path, monkeypatch):
    """wandb in offline mode, with every file it writes kept under tmp_path."""
    wandb = pytest.importorskip("wandb", reason="optional dependency: pip install 'mac[wandb]'")
    home = tmp_path / "home"
    env = {"WANDB_MODE": "offline", "WANDB_SILENT": "true", "WANDB_CONSOLE": "off",
           "WANDB__DISABLE_STATS": "true", "WANDB__DISABLE_META": "true",
           "WANDB_DIR": tmp_path / "wandb_dir", "WANDB_CONFIG_DIR": home / "wandb_config",
           "WANDB_CACHE_DIR": home / "wandb_cache", "WANDB_DATA_DIR": home / "wandb_data",
           "WANDB_ARTIFACT_DIR": home / "wandb_artifacts", "HOME": home,
           "XDG_CONFIG_HOME": home / ".config", "XDG_CACHE_HOME": home / ".cache"}
    for k, v in env.items():
        monkeypatch.setenv(k, str(v))
    for k in ("WANDB_RUN_ID", "WANDB_RESUME", "WANDB_PROJECT", "WANDB_ENTITY", "WANDB_RUN_GROUP",
              "WANDB_NAME", "WANDB_API_KEY"):
        monkeypatch.delenv(k, raising=False)
    return wandb


@pytest.fixture
def log_calls(wandb, monkeypatch):
    """Records every ``Run.log(metrics, step=...)`` call (then really logs)."""
    calls = []
    log = wandb.sdk.wandb_run.Run.log

    def spy(self, data, *args, **kwargs):
        calls.append((dict(data), kwargs.get("step")))
        return log(self, data, *args, **kwargs)

    monkeypatch.setattr(wandb.sdk.wandb_run.Run, "log", spy)
    return calls


def wandb_records(path):
    """The records of an offline ``run-<id>.wandb`` file (a LevelDB-style log of protobuf records:
    7-byte file header, 32 KiB blocks, records split in FULL/FIRST/MIDDLE/LAST chunks)."""
    from wandb.proto import wandb_internal_pb2 as pb

    data, block = path.read_bytes(), 32768
    assert data[:4] == b":W&B", data[:7]
    pos, buf = 7, b""
    while pos + 7 <= len(data):
        if block - pos % block < 7:                 # block trailer: padding
            pos += block - pos % block
            continue
        _crc, n, kind = struct.unpack("<IHB", data[pos:pos + 7])
        if kind == 0:
            break
        buf = data[pos + 7:pos + 7 + n] if kind in (1, 2) else buf + data[pos + 7:pos + 7 + n]
        pos += 7 + n
        if kind in (1, 4):
            record = pb.Record()
            record.ParseFromString(buf)
            yield record


def offline_runs(run_dir):
    """[(run record, {step: {key: value}})] of each offline wandb run under ``run_dir``, oldest first."""
    import wandb

    # run.finish() returns before wandb's service has flushed the run file (CI once read a resumed
    # run's file with no records yet); shutting the service down closes its files.
    wandb.teardown()
    out = []
    for d in sorted((run_dir / "wandb").glob("offline-run-*")):
        files = list(d.glob("run-*.wandb"))
        assert len(files) == 1, files
        run, history = None, {}
        for r in wandb_records(files[0]):
            kind = r.WhichOneof("record_type")
            if kind == "run":
                run = r.run
            elif kind == "history":
                row = {i.key or "/".join(i.nested_key): json.loads(i.value_json) for i in r.history.item}
                history.setdefault(row["_step"], {}).update(row)
        out.append((run, history))
    return out


def csv_rows(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def assert_mirrors_csv(history, rows, prefix):
    assert rows
    for r in rows:
        step = int(r["step"])
        for k, v in r.items():
            if k != "step":
                assert history[step][f"{prefix}/{k}"] == float(v), (step, k)


def test_wandb_mirrors_the_csv_logs(tiny_cube_dir, tmp_path, wandb, log_calls):
    run = run_train(tiny_cube_dir, tmp_path, "w", 4, *TINY, "--eval_interval", "2", "--wandb",
                    "--wandb_group", "grp")
    run_id = (run / "wandb_id").read_text().strip()
    assert (run / "wandb" / "latest-run").exists()
    [(record, history)] = offline_runs(run)
    assert (record.run_id, record.project, record.run_group, record.display_name) == (run_id, "mac", "grp", "w")
    config = {u.key: json.loads(u.value_json) for u in record.config.update}
    assert config["args"]["run_name"] == "w" and config["agent"]["hidden_dims"] == [16, 16]
    train, evals = csv_rows(run / "train.csv"), csv_rows(run / "eval.csv")
    assert [int(r["step"]) for r in train] == [1, 2, 3, 4] and [int(r["step"]) for r in evals] == [2, 4]
    assert_mirrors_csv(history, train, "train")                   # what landed in the run file
    assert_mirrors_csv(history, evals, "eval")
    assert sorted(history) == [1, 2, 3, 4]
    # ... and what was handed to wandb: one call per CSV row, at the training step.
    assert [step for _, step in log_calls] == [1, 2, 2, 3, 4, 4]
    assert all(all(k.startswith(("train/", "eval/")) for k in m) for m, _ in log_calls)
    assert {k[len("eval/"):] for k in log_calls[2][0]} == set(evals[0]) - {"step"}


def test_resume_continues_the_same_wandb_run(tiny_cube_dir, tmp_path, wandb):
    run = run_train(tiny_cube_dir, tmp_path, "r", 2, *TINY, "--wandb")
    run_id = (run / "wandb_id").read_text().strip()
    again = run_train(tiny_cube_dir, tmp_path, "ignored", 3, "--restore_path", str(run), "--wandb")
    assert again == run and (run / "wandb_id").read_text().strip() == run_id
    (first, h1), (second, h2) = offline_runs(run)
    assert first.run_id == second.run_id == run_id
    assert second.display_name == "r" and second.project == "mac"
    assert sorted(h1) == [1, 2] and sorted(h2) == [3]           # the curve continues, not restarts
    assert_mirrors_csv({**h1, **h2}, csv_rows(run / "train.csv"), "train")


def test_missing_wandb_is_a_clear_error_before_any_run_directory(tmp_path, monkeypatch, capsys):
    from mac.cli import main as cli
    from mac.train import train

    monkeypatch.setitem(sys.modules, "wandb", None)           # `import wandb` raises ImportError
    save_dir = tmp_path / "runs"
    argv = ["--dataset_dir", str(tmp_path / "no_data"), "--save_dir", str(save_dir), "--run_name", "x",
            "--no_progress", "--wandb"]
    with pytest.raises(RuntimeError, match=r"--wandb needs the wandb package: pip install 'mac\[wandb\]'"):
        train(argv)
    assert cli(["train", *argv]) == 2
    assert "pip install 'mac[wandb]'" in capsys.readouterr().err
    assert not save_dir.exists() and not (tmp_path / "no_data").exists()


def test_wandb_errors_never_stop_training(tiny_cube_dir, tmp_path, wandb, monkeypatch, capsys):
    Run = wandb.sdk.wandb_run.Run
    finish, calls = Run.finish, []

    def failing_log(self, *args, **kwargs):
        calls.append(1)
        raise ConnectionError("wandb is down")

    def failing_finish(self, *args, **kwargs):
        finish(self, *args, **kwargs)
        raise ConnectionError("still down")

    monkeypatch.setattr(Run, "log", failing_log)
    monkeypatch.setattr(Run, "finish", failing_finish)
    run = run_train(tiny_cube_dir, tmp_path, "f", 3, *TINY, "--wandb")
    assert len(calls) == 3 + 1                                 # every train and eval row was tried
    assert [r["step"] for r in csv_rows(run / "train.csv")] == ["1", "2", "3"]
    assert [r["step"] for r in csv_rows(run / "eval.csv")] == ["3"]
    assert load_checkpoint(run)["step"] == 3
    err = capsys.readouterr().err
    assert err.count("warning: wandb") == 1 and "ConnectionError: wandb is down" in err


def test_optional_loggers_share_the_numeric_scalars_of_a_row(monkeypatch):
    from mac.logging_utils import Loggers, ScalarLog, TensorBoard

    added = []

    class FakeWriter:
        def __init__(self, log_dir, purge_step=None):
            pass

        def add_scalar(self, tag, value, step):
            added.append((tag, value, step))

        def flush(self):
            pass

        def close(self):
            added.append("closed")

    class Recorder(ScalarLog):
        def __init__(self):
            self.rows = []

        def write(self, prefix, row, step):
            self.rows.append((self.scalars(prefix, row), step))

    monkeypatch.setattr(TensorBoard, "writer_class", staticmethod(lambda: FakeWriter))
    rec = Recorder()
    logs = Loggers(TensorBoard("unused"), None, rec)
    logs.write("eval", {"step": 7, "success": 0.5, "episodes": 3, "video": "a.gif"}, 7)
    logs.close()
    assert added == [("eval/success", 0.5, 7), ("eval/episodes", 3, 7), "closed"]
    assert rec.rows == [({"eval/success": 0.5, "eval/episodes": 3}, 7)]
