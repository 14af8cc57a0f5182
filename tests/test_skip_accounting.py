"""The conftest's skip accounting: every skip is counted by group, and a skipped group that had to
run here (required by MAC_REQUIRE_TESTS, or its prerequisites present) fails the run."""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

HERE = Path(__file__).parent
SKIPS = "import pytest\n\ndef test_skipped():\n    pytest.skip('{reason}')\n\ndef test_runs():\n    pass\n"


def run_pytest(tmp_path, files: dict[str, str], require: str | None):
    shutil.copy(HERE / "conftest.py", tmp_path / "conftest.py")
    for name, text in files.items():
        (tmp_path / name).write_text(text)
    env = {k: v for k, v in os.environ.items() if k != "MAC_REQUIRE_TESTS"}
    if require is not None:
        env["MAC_REQUIRE_TESTS"] = require
    return subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(tmp_path)],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)


def test_a_required_group_that_skipped_fails_the_run(tmp_path):
    r = run_pytest(tmp_path, {"test_wandb.py": SKIPS.format(reason="no wandb")}, require="wandb")
    assert r.returncode == 1, r.stdout[-2000:]
    assert "1 passed, 1 skipped" in r.stdout
    assert "FAILED: 1 wandb test(s) skipped but required by MAC_REQUIRE_TESTS" in r.stdout


def test_skips_of_groups_not_expected_here_are_counted_not_failed(tmp_path):
    files = {"test_misc.py": SKIPS.format(reason="needs scipy"),
             "test_gl_triton.py": SKIPS.format(reason="triton is not installed")}
    r = run_pytest(tmp_path, files, require="")
    from conftest import SKIP_GROUPS
    expected_here = SKIP_GROUPS["triton/EGL"][1]()   # triton and Mesa's EGL with LLVM are installed
    assert "other: 1 skipped: needs scipy" in r.stdout
    assert "triton/EGL: 1 skipped: triton is not installed" in r.stdout
    assert r.returncode == (1 if expected_here else 0), r.stdout[-2000:]


def test_unknown_required_group_is_a_usage_error(tmp_path):
    r = run_pytest(tmp_path, {"test_misc.py": SKIPS.format(reason="x")}, require="wandb,nope")
    assert r.returncode == 4 and "unknown group(s) ['nope']" in r.stdout + r.stderr


def test_gpu_skips_are_one_line_without_a_gpu(tmp_path):
    gpu = "import pytest\n\n@pytest.mark.gpu\n@pytest.mark.parametrize('i', range(3))\n" \
          "def test_kernel(i):\n    pytest.skip('no CUDA device')\n"
    r = run_pytest(tmp_path, {"test_kernels.py": gpu}, require="")
    import torch
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU: its GPU tests must run")
    assert r.returncode == 0, r.stdout[-2000:]
    assert [line for line in r.stdout.splitlines() if line.startswith("gpu:")] == \
        ["gpu: 3 skipped: no CUDA device"]
