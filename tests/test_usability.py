"""What a newcomer meets: env-name typos caught first, `mac train --help`, clean output, CUDA status."""

import os
import re
import subprocess
import sys
import warnings

import pytest

from mac.cli import main as cli

TYPO = "cube-singel-play-singletask-task2-v0"
RIGHT = "cube-single-play-singletask-task2-v0"
TINY = ["--agent.hidden_dims=16,16", "--agent.batch_size=16", "--agent.rollout_batch=8",   # as test_train.py
        "--agent.chunk_len=5", "--agent.rollout_steps=2", "--agent.num_samples_train=2",
        "--agent.num_samples_test=2", "--agent.flow_steps=2", "--agent.action_execute=5",
        "--agent.rollout_backend=torch"]


# ------------------------------------------------------------------------------ env names

@pytest.fixture
def no_data_work(monkeypatch):
    def forbidden(*args, **kwargs):
        raise AssertionError("no dataset work may start for an invalid env name")

    monkeypatch.setattr("mac.data.generate.generate_dataset", forbidden)
    monkeypatch.setattr("mac.data.download.download_dataset", forbidden)


def test_misspelt_env_name_fails_before_any_work(tmp_path, monkeypatch, capsys, no_data_work):
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.chdir(tmp_path)
    assert cli(["train", "--env_name", TYPO]) == 2
    out = capsys.readouterr()
    assert RIGHT in out.err and "generating" not in out.out + out.err
    assert list(tmp_path.iterdir()) == []          # no ~/.ogbench, no runs/


def test_misspelt_env_name_in_data_commands_and_eval(tmp_path, capsys, no_data_work):
    assert cli(["data", "generate", "--env_name", "cube-singel-play-v0", "--save_dir", str(tmp_path / "g")]) == 2
    assert "cube-single-play-v0" in capsys.readouterr().err
    assert cli(["data", "download", "--env_name", "cube-single-plya-v0", "--dataset_dir", str(tmp_path / "d")]) == 2
    assert "did you mean cube-single-play-v0" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []
    import torch

    from mac.checkpoint import save_checkpoint
    save_checkpoint(tmp_path / "run", 1, {"env_name": TYPO, "x": torch.zeros(1)})
    assert cli(["eval", "--restore_path", str(tmp_path / "run")]) == 2
    assert RIGHT in capsys.readouterr().err


def test_validate_env_name():
    from mac.data.names import UnknownEnvError, parse_env_name, valid_env_names, validate_env_name
    names = valid_env_names()
    for name in ("cube-single-play-v0", RIGHT, "cube-single-play-singletask-v0", "puzzle-3x3-play-oraclerep-v0",
                 "scene-noisy-singletask-task5-v0", "pointmaze-medium-navigate-v0", "pointmaze-giant-stitch-v0"):
        assert name in names
    for name in names:                             # every suggested name is itself valid
        assert validate_env_name(name) == parse_env_name(name)
    assert validate_env_name("antmaze-large-navigate-v0").env_id == "antmaze-large-v0"   # registered
    for bad, hint in (("cube-single-plya-v0", "play or noisy"),               # dataset type
                      ("cube-single-play-singletask-task9-v0", "registers no environment"),
                      ("pointmaze-medium-play-v0", "navigate or stitch"),
                      (TYPO, "registers no environment"),
                      ("cube-single", "not an OGBench dataset name")):
        with pytest.raises(UnknownEnvError, match=hint):
            validate_env_name(bad)
    with pytest.raises(ValueError, match=f"did you mean {RIGHT}"):
        validate_env_name(TYPO)


# ------------------------------------------------------------------------------ mac train --help

def _help(*argv):
    from mac.train import main
    with pytest.raises(SystemExit) as stop:
        main([*argv, "--help"])
    assert stop.value.code == 0


@pytest.mark.parametrize("preset_name", ["cpu", "paper"])
def test_train_help_documents_every_flag_and_agent_setting(preset_name, capsys):
    from dataclasses import fields

    from mac.config import AgentConfig, preset
    from mac.train import build_parser
    _help("--preset", preset_name)
    text = capsys.readouterr().out
    for action in build_parser()._actions:
        flag = action.option_strings[-1]
        assert action.help and action.help.strip(), f"{flag} has no help"
        assert re.search(rf"^\s+(-\w, )?{re.escape(flag)}\b", text, re.M), f"{flag} missing from --help"
    from mac.train import DEFAULT_OFFLINE_STEPS
    assert re.search(rf"--offline_steps OFFLINE_STEPS\s+.*\(default: {DEFAULT_OFFLINE_STEPS}\)", text, re.S)
    cfg = preset(preset_name)
    for f in fields(AgentConfig):
        value = getattr(cfg, f.name)
        value = ",".join(map(str, value)) if isinstance(value, tuple) else str(value)
        m = re.search(rf"^\s+--agent\.{f.name}=(\S+)\s+(\S.*)$", text, re.M)
        assert m, f"--agent.{f.name} missing from --help"
        assert m.group(1) == value, f.name
        assert m.group(2).strip() == f.metadata["help"].strip() != ""
    assert f"defaults of --preset {preset_name}" in text


# ------------------------------------------------------------------------------ output

def test_known_env_warnings_are_silenced_and_others_kept():
    from mac.console import silence_harmless_warnings
    from mac.data import parse_env_name
    from mac.evaluate import make_env
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        silence_harmless_warnings()
        env = make_env(parse_env_name(RIGHT), render=True, size=32)   # render_modes warning
        env.reset(seed=0)
        env.step(env.action_space.sample())                            # Box precision warnings
        env.unwrapped.action_space
        warnings.warn("\x1b[33mWARN: Box low's precision lowered by casting to float32\x1b[0m", UserWarning)
        warnings.warn("something else entirely", UserWarning)
        warnings.warn("precision lowered by casting to float32", DeprecationWarning)  # other category
    messages = [str(w.message) for w in seen]
    assert not [m for m in messages if "precision lowered" in m and "WARN" in m], messages
    assert not [m for m in messages if "render_modes" in m], messages
    assert "something else entirely" in messages
    assert "precision lowered by casting to float32" in messages


def test_progress_bars_only_on_a_terminal(monkeypatch):
    import io

    from mac.console import show_progress

    class Tty(io.StringIO):
        def isatty(self):
            return True

    monkeypatch.setattr(sys, "stderr", io.StringIO())
    assert not show_progress(True)
    monkeypatch.setattr(sys, "stderr", Tty())
    assert show_progress(True) and not show_progress(False)


def test_train_log_without_a_terminal(tiny_cube_dir, tmp_path, monkeypatch, capsys):
    """Progress asked for (no --no_progress) but no terminal: no bars, plain lines, the run
    directory first."""
    import mac.train
    monkeypatch.setattr(mac.train, "PLAIN_PROGRESS_S", 0.0)
    run = mac.train.train(["--env_name", RIGHT, "--dataset_dir", str(tiny_cube_dir), "--save_dir", str(tmp_path),
                           "--run_name", "r", "--offline_steps", "2", "--log_interval", "1",
                           "--eval_episodes", "1", *TINY])
    out = capsys.readouterr()
    assert "\r" not in out.out + out.err and "\x1b" not in out.out + out.err
    lines = out.out.splitlines()
    assert lines[0] == f"[mac] run directory: {run}"
    assert "[mac] step 1/2: loss" in out.out and "[mac] step 2: success" in out.out


def _mac(*argv, cwd):
    env = dict(os.environ, MUJOCO_GL="egl")
    env.pop("PYTHONWARNINGS", None)   # Python's defaults, as a user has them
    return subprocess.run([sys.executable, "-c", "import sys; from mac.cli import main; sys.exit(main())", *argv],
                          capture_output=True, text=True, cwd=cwd, env=env, timeout=600)


def test_commands_print_no_warnings_or_escape_codes(tiny_cube_dir, tmp_path):
    """`mac data generate`, `mac train` and `mac eval` with output redirected (as in a log file),
    progress not disabled and Python's warnings shown: no warning, no \\r, no ANSI escape."""
    runs = [
        _mac("data", "generate", "--env_name", "cube-single-play-v0", "--num_episodes", "1",
             "--max_episode_steps", "30", "--save_dir", str(tmp_path / "data"), cwd=tmp_path),
        _mac("train", "--dataset_dir", str(tiny_cube_dir), "--save_dir", str(tmp_path), "--run_name", "r",
             "--offline_steps", "2", "--log_interval", "1", "--eval_episodes", "1", *TINY, cwd=tmp_path),
        _mac("eval", "--restore_path", str(tmp_path / "r"), "--eval_episodes", "1", cwd=tmp_path),
    ]
    for proc in runs:
        text = proc.stdout + proc.stderr
        assert proc.returncode == 0, text
        assert not re.search(r"\w+(Warning|Error): |WARN", text), text     # "UserWarning: ...", gym's "WARN:"
        assert "\r" not in text and "\x1b" not in text, repr(text)
    assert runs[1].stdout.startswith(f"[mac] run directory: {tmp_path / 'r'}\n")


# ------------------------------------------------------------------------------ CUDA status

class _FakeCudaExt:
    def __init__(self, status):
        self.status = status

    def device_status(self):
        return dict(self.status)

    def build_info(self):
        return {"cuda_archs": "80", "cuda_runtime_version": 13000}


DRIVER = "CUDA runtime reports: CUDA driver version is insufficient for CUDA runtime version"


@pytest.mark.parametrize("reason", [DRIVER, "CUDA runtime reports: no CUDA-capable device is detected",
                                    "no CUDA device found"])
def test_cuda_status_without_a_gpu_says_no_device(monkeypatch, reason):
    from mac import _native
    monkeypatch.setattr(_native, "cuda_ext", _FakeCudaExt({"usable": False, "device_count": 0, "reason": reason}))
    monkeypatch.setattr(_native, "nvidia_device_visible", lambda: False)
    st = _native.cuda_status()
    assert st["reason"] == _native.NO_CUDA_DEVICE and not st["usable"] and st["built"]
    assert st["reason"].startswith("no CUDA device (the CUDA kernels are built")
    import mac
    assert mac.info()["cuda_status"]["reason"] == _native.NO_CUDA_DEVICE


def test_cuda_status_keeps_the_driver_message_when_a_gpu_is_there(monkeypatch):
    """A GPU whose driver is older than the toolkit the kernels were built with: the runtime's
    message, then the versions involved and the two ways out (newer driver, or a rebuild with the
    toolkit of the driver's major version)."""
    from mac import _native
    monkeypatch.setattr(_native, "cuda_ext", _FakeCudaExt({"usable": False, "device_count": 0, "reason": DRIVER}))
    monkeypatch.setattr(_native, "nvidia_device_visible", lambda: True)
    monkeypatch.setattr(_native, "driver_cuda_version", lambda: 12040)
    st = _native.cuda_status()
    assert st["reason"].startswith(DRIVER) and st["driver_cuda_version"] == 12040
    for part in ("built with CUDA 13.0", "supports CUDA 12.4", "580", "CUDACXX=/usr/local/cuda-12/bin/nvcc",
                 "auto keeps using torch"):
        assert part in st["reason"], part
    monkeypatch.setattr(_native, "driver_cuda_version", lambda: None)   # versions unknown: the message alone
    assert _native.cuda_status()["reason"] == DRIVER
    old_gpu = "no device with compute capability >= 8.0 (TF32/bf16 tensor cores); found: T4 (sm_75)"
    monkeypatch.setattr(_native, "cuda_ext", _FakeCudaExt({"usable": False, "device_count": 1, "reason": old_gpu}))
    monkeypatch.setattr(_native, "nvidia_device_visible", lambda: False)
    assert _native.cuda_status()["reason"] == old_gpu


def test_nvidia_device_visible(monkeypatch):
    import glob
    import shutil

    import torch

    from mac import _native
    monkeypatch.setattr(glob, "glob", lambda pattern: [])
    monkeypatch.setattr(os.path, "exists", lambda path: False)
    monkeypatch.setattr(shutil, "which", lambda name: None)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 0)
    assert not _native.nvidia_device_visible()
    monkeypatch.setattr(glob, "glob", lambda pattern: ["/dev/nvidia0"] if pattern.startswith("/dev/nvidia") else [])
    assert _native.nvidia_device_visible()
    monkeypatch.setattr(glob, "glob", lambda pattern: [])
    monkeypatch.setattr(shutil, "which", lambda name: "/usr/bin/nvidia-smi" if name == "nvidia-smi" else None)
    assert _native.nvidia_device_visible()
    monkeypatch.setattr(shutil, "which", lambda name: None)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    assert _native.nvidia_device_visible()
