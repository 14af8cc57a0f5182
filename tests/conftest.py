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
