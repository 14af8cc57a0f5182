import os

os.environ.setdefault("OMP_NUM_THREADS", "2")
os.environ.setdefault("MUJOCO_GL", "egl")

import numpy as np
import pytest
import torch


@pytest.fixture(autouse=True)
def _seed_everything():
    torch.manual_seed(0)
    np.random.seed(0)


def make_episodes(lengths, obs_dim=3, action_dim=2, seed=0, goal_dim=None):
    """Synthetic official-layout arrays: episode e has lengths[e] rows, the last one terminal.
    observations[i, 0] = i (row id) so tests can see which rows were taken."""
    rng = np.random.default_rng(seed)
    n = int(sum(lengths))
    obs = rng.normal(size=(n, obs_dim)).astype(np.float32)
    obs[:, 0] = np.arange(n)
    actions = rng.uniform(-1, 1, size=(n, action_dim)).astype(np.float32)
    terminals = np.zeros(n, bool)
    terminals[np.cumsum(lengths) - 1] = True
    return {"observations": obs, "actions": actions, "terminals": terminals}


@pytest.fixture(scope="session")
def tiny_cube_dir(tmp_path_factory):
    """A tiny locally generated cube-single-play dataset (official file format)."""
    from mac.data.generate import generate_dataset

    d = tmp_path_factory.mktemp("cube")
    generate_dataset("cube-single-play-v0", 4, str(d), workers=1, seed=0, max_episode_steps=60,
                     progress=False)
    return d


# ------------------------------------------------------------------------------------ ISA copies
# The native CPU core has one copy of its kernels per instruction set (generic, avx2, avx512, and the
# bf16 mode of avx512); a call asking for a copy above what the CPU has silently runs a lower one.
# Tests named for a copy are parametrized with isa_params(), which skips the ones this CPU cannot
# run, and every native call is recorded, so the summary says which copies were really exercised.

ISAS = ("generic", "avx2", "avx512")
_isa_calls: dict[str, int] = {}


def _cpu_ext():
    try:
        import mac._C as ext
        return ext
    except ImportError:
        return None


def cpu_has_isa(isa: str) -> bool:
    """Whether this CPU runs the ``isa`` copy (an explicit request is capped by the hardware)."""
    ext = _cpu_ext()
    return ext is not None and ext.resolve_isa(isa) == isa


def cpu_has_bf16() -> bool:
    ext = _cpu_ext()
    return ext is not None and bool(ext.build_info().get("bf16_mode"))


def isa_params(isas=ISAS):
    """pytest.param per ISA copy, skipped with the reason where this CPU would run a lower copy."""
    ext = _cpu_ext()
    out = []
    for isa in isas:
        runs = ext.resolve_isa(isa) if ext is not None else None
        out.append(pytest.param(isa, id=isa, marks=pytest.mark.skipif(
            runs != isa, reason=f"this CPU has no {isa}: the {runs} copy would run instead, "
                                f"so a test named for {isa} would not test it")))
    return out


def _record(name, fn, isa_pos, isa_default):
    def wrapper(*args, **kwargs):
        result = fn(*args, **kwargs)
        if name in ("best_of_n", "imagine"):
            isa = result  # these return the copy they ran
        else:
            isa = kwargs.get("isa", args[isa_pos] if len(args) > isa_pos else isa_default)
            isa = isa if isa == "host" else _cpu_ext().resolve_isa(isa)
        if kwargs.get("bf16"):
            isa += "+bf16"
        _isa_calls[isa] = _isa_calls.get(isa, 0) + 1
        return result
    wrapper.__wrapped__ = fn
    wrapper.__doc__ = fn.__doc__
    return wrapper


def pytest_sessionstart(session):
    ext = _cpu_ext()
    if ext is None:
        return
    # name -> (position of the isa argument, its default)
    for name, pos, default in (("best_of_n", 11, ""), ("imagine", 17, ""), ("mlp_forward", 4, ""),
                               ("gelu", 1, ""), ("gemm_peak", 2, ""), ("philox4x32_10", 2, "host")):
        fn = getattr(ext, name, None)
        if fn is not None and not hasattr(fn, "__wrapped__"):
            setattr(ext, name, _record(name, fn, pos, default))


def pytest_terminal_summary(terminalreporter):
    _skip_summary(terminalreporter)
    ext = _cpu_ext()
    if ext is None:
        terminalreporter.write_line("native CPU core: not built (mac._C missing): no ISA copy tested")
        return
    copies = [i for i in ISAS if cpu_has_isa(i)] + (["avx512+bf16"] if cpu_has_bf16() else [])
    missing = [i for i in ISAS if not cpu_has_isa(i)] + ([] if cpu_has_bf16() else ["avx512+bf16"])
    used = sorted(_isa_calls, key=lambda k: (k == "host", k))
    terminalreporter.section("native CPU ISA copies")
    terminalreporter.write_line(
        "exercised in this process: " + (", ".join(f"{k} ({_isa_calls[k]} calls)" for k in used) or "none"))
    not_run = [c for c in copies if c not in _isa_calls]
    if not_run:
        terminalreporter.write_line("available on this CPU but not exercised by the tests run: "
                                    + ", ".join(not_run))
    if missing:
        why = (f"MAC_CPU_ISA={os.environ['MAC_CPU_ISA']} or the CPU" if os.environ.get("MAC_CPU_ISA")
               else "the CPU")
        terminalreporter.write_line(f"NOT TESTED here ({why} rules them out; their tests were "
                                    "skipped): " + ", ".join(missing))


# ------------------------------------------------------------------------------------ skips
# A skipped test is coverage this run did not get. Every skip is counted by group in the summary,
# and a group whose prerequisites are present here, or that the run requires
# (MAC_REQUIRE_TESTS=wandb,..., as CI does), fails the run when its tests skipped anyway.

def _importable(name: str) -> bool:
    import importlib.util
    try:
        return importlib.util.find_spec(name) is not None
    except (ImportError, ValueError):
        return False


def _mesa_egl_with_llvm() -> bool:
    """Mesa's EGL and a system libLLVM are installed: the setting test_gl_triton.py's clash needs."""
    import glob
    libs = [d for d in ("/usr/lib/x86_64-linux-gnu", "/usr/lib64", "/usr/lib") if os.path.isdir(d)]
    return any(glob.glob(f"{d}/libEGL_mesa.so*") for d in libs) and any(glob.glob(f"{d}/libLLVM*.so*") for d in libs)


def _sass_tools_present() -> bool:
    """The CUDA module, cuobjdump, nvdisasm and nvcc are all here: tests/test_sass.py has what it needs."""
    try:
        from mac import sass
    except ImportError:
        return False
    return (sass.cuda_module_path() is not None and sass.find_cuobjdump() is not None
            and sass.find_cuda_tool("nvdisasm") is not None
            and (os.environ.get("CUDACXX") or sass.find_cuda_tool("nvcc")) is not None)


# group -> (does a skipped test belong to it (nodeid, reason, keywords), is it expected to run here)
SKIP_GROUPS = {
    "gpu": (lambda nodeid, reason, kw: "gpu" in kw or "test_cuda.py" in nodeid,
            lambda: torch.cuda.is_available()),
    "native CPU core": (lambda nodeid, reason, kw: "mac._C" in reason and "cuda" not in reason.lower(),
                        lambda: True),   # the package always builds it: a skip means a broken build
    "wandb": (lambda nodeid, reason, kw: "test_wandb.py" in nodeid, lambda: _importable("wandb")),
    "triton/EGL": (lambda nodeid, reason, kw: "test_gl_triton.py" in nodeid,
                   lambda: _importable("triton") and _mesa_egl_with_llvm()),
    "sass": (lambda nodeid, reason, kw: "test_sass.py" in nodeid, lambda: _sass_tools_present()),
    "CPU ISA copies": (lambda nodeid, reason, kw: reason.startswith(("this CPU has no", "no AVX512-BF16")),
                       lambda: False),   # parametrised by what the CPU has (isa_params)
}
_skips: dict[str, list[tuple[str, str]]] = {}


def required_groups() -> set[str]:
    required = {g.strip() for g in os.environ.get("MAC_REQUIRE_TESTS", "").split(",") if g.strip()}
    unknown = required - set(SKIP_GROUPS)
    if unknown:
        raise pytest.UsageError(f"MAC_REQUIRE_TESTS names unknown group(s) {sorted(unknown)}; "
                                f"groups: {', '.join(SKIP_GROUPS)}")
    return required


def skip_group(nodeid: str, reason: str, keywords) -> str:
    return next((g for g, (member, _) in SKIP_GROUPS.items() if member(nodeid, reason, keywords)), "other")


def pytest_runtest_logreport(report):
    if report.skipped and not hasattr(report, "wasxfail"):
        reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
        reason = reason.removeprefix("Skipped: ")
        _skips.setdefault(skip_group(report.nodeid, reason, report.keywords), []).append((report.nodeid, reason))


def unexpected_skips() -> dict[str, list[tuple[str, str]]]:
    """The skipped tests of groups that had to run here: {group: [(nodeid, reason)]}."""
    required = required_groups()
    return {g: s for g, s in _skips.items()
            if g != "other" and (g in required or SKIP_GROUPS[g][1]())}


def pytest_sessionfinish(session, exitstatus):
    if unexpected_skips() and exitstatus == 0:
        session.exitstatus = 1


def _skip_summary(terminalreporter):
    if not _skips:
        return
    terminalreporter.section("skipped tests by group")
    for group, items in sorted(_skips.items()):
        counts: dict[str, int] = {}
        for _, reason in items:
            counts[reason] = counts.get(reason, 0) + 1
        common = sorted(counts, key=counts.get, reverse=True)
        shown = "; ".join(r[:150] + (f" ({counts[r]})" if len(counts) > 1 else "") for r in common[:3])
        more = f" (+{len(common) - 3} other reasons)" if len(common) > 3 else ""
        terminalreporter.write_line(f"{group}: {len(items)} skipped: {shown}{more}")
    for group, items in unexpected_skips().items():
        why = "required by MAC_REQUIRE_TESTS" if group in required_groups() else "its prerequisites are present here"
        terminalreporter.write_line(f"FAILED: {len(items)} {group} test(s) skipped but {why}: "
                                    + "; ".join(f"{n} ({r[:100]})" for n, r in items[:3]), red=True)
