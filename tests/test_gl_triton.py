"""Regression: a torch with triton must not crash after an OGBench env exists under MUJOCO_GL=egl.

Mesa's EGL driver puts the system libLLVM into the global symbol scope; a libtriton.so loaded after
that binds its own LLVM calls to Mesa's and segfaults in a static initialiser (mac._llvm_isolation).
Each case runs in a fresh interpreter: the clash is a property of one process's load order.
"""

import os
import signal
import subprocess
import sys

import pytest

from mac._llvm_isolation import foreign_llvm_loaded, triton_library

ENV = "cube-single-play-singletask-task2-v0"
MAKE_ENV = f"import ogbench; ogbench.make_env_and_datasets({ENV!r}, env_only=True)"


def _run(code: str, *, preload: bool = True, timeout: int = 300) -> subprocess.CompletedProcess:
    env = dict(os.environ, MUJOCO_GL="egl", PYTHONFAULTHANDLER="1")
    env.pop("MAC_TRITON_PRELOAD", None)
    if not preload:
        env["MAC_TRITON_PRELOAD"] = "0"
    return subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                          timeout=timeout)


@pytest.fixture(scope="module")
def egl_loads_llvm():
    """Skip unless triton is installed and creating an env under MUJOCO_GL=egl really maps a GL
    driver / LLVM here."""
    if triton_library() is None:
        pytest.skip("triton is not installed (CI installs it for these tests)")
    probe = _run(f"{MAKE_ENV}\nfrom mac._llvm_isolation import foreign_llvm_loaded\n"
                 "print(foreign_llvm_loaded())")
    if probe.returncode != 0:
        pytest.skip(f"an OGBench env cannot be created under MUJOCO_GL=egl here: {probe.stderr[-500:]}")
    if probe.stdout.strip().splitlines()[-1] != "True":
        pytest.skip("EGL here loads no LLVM-based driver: the clash cannot occur")


def test_the_clash_is_real_without_the_isolation(egl_loads_llvm):
    """The control: with mac's preload switched off, the issue's reproduction crashes. If a future
    triton or Mesa stops clashing this fails loudly, and the preload can be reconsidered."""
    r = _run(f"{MAKE_ENV}\nimport mac, triton", preload=False)
    assert r.returncode == -signal.SIGSEGV, (r.returncode, r.stderr[-2000:])


def test_env_created_before_mac_then_triton_and_adam(egl_loads_llvm):
    r = _run(f"{MAKE_ENV}\nimport mac, torch, triton\n"
             "m = torch.nn.Linear(4, 4); opt = torch.optim.Adam(m.parameters())\n"
             "m(torch.randn(3, 4)).sum().backward(); opt.step()\n"
             "print(mac._llvm_isolation.status)")
    assert r.returncode == 0, r.stderr[-2000:]
    assert "RTLD_DEEPBIND" in r.stdout


def test_mac_imported_first_then_env_render_and_triton(egl_loads_llvm):
    r = _run("import mac\nfrom mac.data.names import parse_env_name\n"
             "from mac.evaluate import make_env, render_frame\n"
             f"env = make_env(parse_env_name({ENV!r}), render=True, size=32); env.reset(seed=0)\n"
             "frame = render_frame(env); assert frame.shape == (32, 32, 3) and frame.any(), frame.shape\n"
             "import triton, torch; torch.optim.Adam(torch.nn.Linear(2, 2).parameters())\n"
             "print(mac._llvm_isolation.status)")
    assert r.returncode == 0, r.stderr[-2000:]
    assert "privately" in r.stdout


def test_short_mac_train_with_video_under_egl(egl_loads_llvm, tiny_cube_dir, tmp_path):
    """The README's main job in miniature, as a process of its own: train, evaluate, render."""
    from test_train import TINY
    args = ["train", "--env_name", ENV, "--dataset_dir", str(tiny_cube_dir), "--save_dir", str(tmp_path),
            "--run_name", "egl", "--offline_steps", "4", "--eval_interval", "4", "--eval_episodes", "1",
            "--video_episodes", "1", "--no_progress", *TINY]
    r = _run(f"import sys\nfrom mac.cli import main\nrc = main({args!r})\nimport triton\nsys.exit(rc)")
    assert r.returncode == 0, r.stderr[-3000:]
    assert list((tmp_path / "egl" / "videos").glob("*.gif"))


def test_foreign_llvm_detection():
    assert foreign_llvm_loaded(["/usr/lib/x86_64-linux-gnu/libLLVM-15.so.1"])
    assert foreign_llvm_loaded(["/usr/lib/x86_64-linux-gnu/dri/swrast_dri.so"])
    assert not foreign_llvm_loaded(["/venv/site-packages/triton/_C/libtriton.so",
                                    "/usr/lib/x86_64-linux-gnu/libxcb-dri3.so.0"])
