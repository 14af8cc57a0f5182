"""`mac export` and `mac eval --policy`: a small policy file that acts, and evaluates, exactly as its
checkpoint; every bad input is a one-line error with exit code 2."""

import hashlib
import json

import numpy as np
import pytest
import torch
from test_agent import tiny_config
from test_train import TINY, Evil, run_train

from mac.agent import MACAgent
from mac.checkpoint import list_checkpoints, save_checkpoint
from mac.cli import main as cli
from mac.data import Normalizer
from mac.export import POLICY_FORMAT_VERSION, from_checkpoint, load_policy_file

GOAL_ENV = "cube-single-play-oraclerep-v0"


@pytest.fixture(scope="module")
def run(tiny_cube_dir, tmp_path_factory):
    """A 3-step run of the tiny reward-task agent (as in test_train.py)."""
    return run_train(tiny_cube_dir, tmp_path_factory.mktemp("runs"), "r", 3, *TINY)


@pytest.fixture(scope="module")
def policy_file(run, tmp_path_factory):
    out = tmp_path_factory.mktemp("published") / "policy.pt"
    assert cli(["export", "--restore_path", str(run), "--out", str(out)]) == 0
    return out


@pytest.fixture
def goal_checkpoint(tmp_path):
    """A goal-task checkpoint (goal normaliser, native backend where built) without training."""
    torch.manual_seed(1)
    cfg = tiny_config(rollout_backend="auto")
    agent = MACAgent(28, 5, 3, cfg)
    rng = np.random.default_rng(1)
    obs_norm = Normalizer.fit(rng.normal(size=(50, 28)).astype(np.float32))
    goal_norm = Normalizer.fit(rng.normal(size=(50, 3)).astype(np.float32))
    return save_checkpoint(tmp_path / "goal_run", 4, {
        "agent": agent.state_dict(), "optimizer": agent.optimizer.state_dict(),
        "agent_config": cfg.to_dict(), "env_name": GOAL_ENV, "dims": [28, 5, 3],
        "obs_norm": obs_norm.state_dict(), "goal_norm": goal_norm.state_dict()})


def _keys(obj) -> set:
    """Every dict key at any depth (state-dict keys name the networks)."""
    if isinstance(obj, dict):
        return set(map(str, obj)).union(*(_keys(v) for v in obj.values()))
    if isinstance(obj, (list, tuple)):
        return set().union(*(_keys(v) for v in obj))
    return set()


def test_export_writes_a_small_file_of_what_acting_reads(run, policy_file, capsys, tmp_path):
    payload = torch.load(policy_file, weights_only=True)
    assert payload["format"] == "mac-policy" and payload["format_version"] == POLICY_FORMAT_VERSION
    assert payload["env_name"] == "cube-single-play-singletask-task2-v0"
    assert set(payload["policy"]) == {"dims", "config", "actor", "critic", "obs_norm", "goal_norm",
                                      "action_execute", "num_samples"}
    assert (payload["policy"]["action_execute"], payload["policy"]["num_samples"]) == (5, 2)
    assert not {"optimizer", "sampler", "rng", "state", "exp_avg"} & _keys(payload)
    prov = payload["provenance"]
    ckpt = list_checkpoints(run / "checkpoints")[-1]
    assert prov["checkpoint"] == str(ckpt.resolve()) and prov["step"] == 3
    assert prov["argv"] == json.loads((run / "flags.json").read_text())["argv"]
    assert prov["mac_version"] and prov["torch_version"]
    assert policy_file.stat().st_size * 4 < ckpt.stat().st_size

    # The same checkpoint always gives the same bytes; the printed sha256 is the file's.
    again = tmp_path / "again.pt"
    assert cli(["export", "--restore_path", str(ckpt), "--out", str(again)]) == 0
    out = capsys.readouterr().out
    sha = hashlib.sha256(again.read_bytes()).hexdigest()
    assert again.read_bytes() == policy_file.read_bytes()
    assert f"sha256 {sha}" in out and " MB" in out and f"mac eval --policy {again}" in out


@pytest.mark.parametrize("source", ["run", "goal_checkpoint"])
def test_exported_policy_acts_bitwise_as_the_checkpoint(source, request, tmp_path):
    restore = request.getfixturevalue(source)
    out = tmp_path / "p.pt"
    assert cli(["export", "--restore_path", str(restore), "--out", str(out)]) == 0
    from_ckpt, from_file = from_checkpoint(restore).policy, load_policy_file(out).policy
    agent = from_file.agent
    rng = np.random.default_rng(0)
    obs = rng.normal(size=(6, agent.obs_dim)).astype(np.float32)
    goals = rng.normal(size=(6, agent.goal_dim)).astype(np.float32) if agent.goal_dim else [None] * 6
    actions = []
    for policy in (from_ckpt, from_file):
        torch.manual_seed(7)
        actions.append(np.stack([policy(o, g) for o, g in zip(obs, goals)]))
    assert actions[0].shape == (6, from_ckpt.action_execute, agent.action_dim)
    assert np.array_equal(actions[0], actions[1])
    chunks = []
    for policy in (from_ckpt, from_file):     # a batch, with the normalisers applied the same way
        torch.manual_seed(8)
        chunks.append(policy.agent.act(torch.from_numpy(obs), torch.from_numpy(np.stack(goals))
                                       if agent.goal_dim else None, num_samples=5))
    assert torch.equal(chunks[0], chunks[1])
    assert from_ckpt.obs_norm.state_dict() == from_file.obs_norm.state_dict()


def test_eval_policy_equals_eval_restore_path(run, policy_file, capsys):
    results = []
    for source in (["--restore_path", str(run)], ["--policy", str(policy_file)]):
        assert cli(["eval", *source, "--eval_episodes", "2", "--seed", "1", "--json"]) == 0
        results.append(json.loads(capsys.readouterr().out))
    by_ckpt, by_file = results
    for key in ("success", "return", "length", "episodes", "step", "checkpoint", "action_execute",
                "num_samples"):
        assert by_ckpt[key] == by_file[key], key
    assert by_file["episodes"] == 2
    assert by_file["policy_sha256"] == hashlib.sha256(policy_file.read_bytes()).hexdigest()
    assert "policy_sha256" not in by_ckpt


def test_eval_in_process_leaves_the_callers_precision_alone(policy_file, capsys):
    """mac eval's --precision (default auto: bf16 on AVX512-BF16 CPUs) holds for its own episodes only."""
    from mac import precision as P
    precision = P.resolve("auto", "cpu")
    assert cli(["eval", "--policy", str(policy_file), "--eval_episodes", "1", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["precision"] == precision
    assert P.get_precision() == "fp32"


def _fails(capsys, *argv, hint):
    assert cli(list(argv)) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"mac {argv[0]}: error: ") and "\n" not in err, err
    assert hint in err, err


def test_bad_policy_files_are_one_line_errors(policy_file, goal_checkpoint, tmp_path, capsys):
    _fails(capsys, "eval", "--policy", str(tmp_path / "missing.pt"), hint="mac export --restore_path")
    _fails(capsys, "eval", "--policy", str(goal_checkpoint), hint=f"--restore_path {goal_checkpoint}")
    _fails(capsys, "eval", "--policy", str(goal_checkpoint.parent.parent), hint="--restore_path")
    junk = tmp_path / "junk.pt"
    junk.write_bytes(np.random.default_rng(0).bytes(1000))
    _fails(capsys, "eval", "--policy", str(junk), hint="not a mac policy file")
    torch.save({"format": "mac-policy", "format_version": 1, "x": Evil()}, junk)
    _fails(capsys, "eval", "--policy", str(junk), hint="weights_only=True")
    torch.save({"some": torch.zeros(2)}, junk)
    _fails(capsys, "eval", "--policy", str(junk), hint="not a mac policy file")

    payload = torch.load(policy_file, weights_only=True)
    torch.save({**payload, "format_version": POLICY_FORMAT_VERSION + 1}, junk)
    _fails(capsys, "eval", "--policy", str(junk), hint="upgrade mac")
    torch.save({**payload, "env_name": "cube-single-plya-singletask-task2-v0"}, junk)
    _fails(capsys, "eval", "--policy", str(junk), hint="did you mean cube-single-play-singletask-task2-v0")
    torch.save({**payload, "policy": {**payload["policy"], "actor": {}}}, junk)
    _fails(capsys, "eval", "--policy", str(junk), hint="damaged policy file")

    _fails(capsys, "eval", "--restore_path", str(policy_file), hint=f"--policy {policy_file}")
    _fails(capsys, "eval", "--policy", str(policy_file), "--action_execute", "6", hint="[1, 5]")
    for both_or_neither in (["--policy", str(policy_file), "--restore_path", str(goal_checkpoint)], []):
        with pytest.raises(SystemExit) as exit_:
            cli(["eval", *both_or_neither])
        assert exit_.value.code == 2
        assert "--restore_path" in capsys.readouterr().err


def test_bad_export_inputs_are_one_line_errors(goal_checkpoint, tmp_path, capsys):
    out = tmp_path / "new" / "dir" / "p.pt"                    # a missing directory is made
    _fails(capsys, "export", "--restore_path", str(tmp_path / "nowhere"), "--out", str(out),
           hint="no checkpoint found")
    (tmp_path / "empty_run").mkdir()
    _fails(capsys, "export", "--restore_path", str(tmp_path / "empty_run"), "--out", str(out),
           hint="checkpoints/ckpt_*.pt")
    assert not out.parent.exists()
    assert cli(["export", "--restore_path", str(goal_checkpoint), "--out", str(out)]) == 0
    first = out.read_bytes()
    _fails(capsys, "export", "--restore_path", str(goal_checkpoint), "--out", str(out), hint="--force")
    assert cli(["export", "--restore_path", str(goal_checkpoint), "--out", str(out), "--force",
                "--action_execute", "2"]) == 0
    assert out.read_bytes() != first and load_policy_file(out).policy.action_execute == 2
    assert [p.name for p in out.parent.iterdir()] == ["p.pt"]   # no temporary file left
    _fails(capsys, "export", "--restore_path", str(goal_checkpoint), "--out", str(out.parent),
           hint="give a file name")
    _fails(capsys, "export", "--restore_path", str(goal_checkpoint), "--out", str(out / "x.pt"),
           hint="cannot make the directory")
    _fails(capsys, "export", "--restore_path", str(out), "--out", str(tmp_path / "q.pt"),
           hint=f"mac eval --policy {out}")
    _fails(capsys, "export", "--restore_path", str(goal_checkpoint), "--out", str(tmp_path / "q.pt"),
           "--action_execute", "4", hint="[1, 3]")


def test_policy_files_are_loaded_with_weights_only(policy_file, monkeypatch):
    calls = []
    load = torch.load

    def spy(*args, **kwargs):
        calls.append(kwargs.get("weights_only"))
        return load(*args, **kwargs)

    monkeypatch.setattr(torch, "load", spy)
    source = load_policy_file(policy_file)
    assert calls == [True]
    assert source.about["policy_sha256"] == hashlib.sha256(policy_file.read_bytes()).hexdigest()
