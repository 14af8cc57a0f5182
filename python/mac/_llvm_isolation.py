"""Keep triton's LLVM and Mesa's LLVM apart in one process (why ``import mac`` loads triton's library).

The clash: a torch build with triton (the default CUDA wheels) imports triton the first time a
process creates an optimiser or touches the compile stack. ``libtriton.so`` carries its own LLVM,
whose symbols it exports. With ``MUJOCO_GL=egl`` (headless rendering), merely ``import mujoco``
opens an EGL display, and Mesa loads its software rasteriser with ``RTLD_GLOBAL``, which puts the
system's ``libLLVM-<n>.so`` into the process's global symbol scope. The dynamic linker resolves a
library's symbols from the global scope first, so when ``libtriton.so`` is loaded after that, its
static initialisers call Mesa's LLVM (another version, another ABI) instead of their own and the
process dies with SIGSEGV (seen: ``llvm::DebugCounter`` in ``PassBuilder.cpp``'s initialiser).
The reverse order is safe: Python loads extension modules ``RTLD_LOCAL``, so a triton loaded first
stays out of the global scope and Mesa later binds to its own LLVM.

The remedy therefore holds whatever the order of imports:
- ``import mac`` loads triton's native library first, privately (``RTLD_LOCAL``), before any
  environment or renderer exists; Python's later ``import triton`` gets the same, already
  initialised handle. Every ``mac`` entry point (CLI, spawned workers, the Python API) imports the
  package ``__init__`` first, so none of them can reach mujoco before this has run.
- If a GL/LLVM stack is already in the process when ``mac`` is imported (a user imported mujoco
  under ``MUJOCO_GL=egl`` first), triton's library is loaded with ``RTLD_DEEPBIND``: it then
  resolves its LLVM symbols inside itself before looking at the global scope.
Rendering in subprocesses alone would not be enough: users set ``MUJOCO_GL=egl`` in their shells
(OGBench's README suggests it), and then every process that merely imports mujoco carries Mesa.
"""

from __future__ import annotations

import ctypes
import importlib.util
import os
import sys
from pathlib import Path

# Libraries whose presence means a foreign LLVM may already sit in the global symbol scope.
_FOREIGN_LLVM_MARKERS = ("libLLVM", "libgallium", "_dri.so", "libOSMesa")

status = "not checked"


def _mapped_libraries() -> list[str]:
    try:
        with open("/proc/self/maps") as f:
            return [line.rsplit(None, 1)[-1] for line in f if ".so" in line]
    except OSError:
        return []


def foreign_llvm_loaded(libraries: list[str] | None = None) -> bool:
    """Whether a GL driver or a system LLVM (not triton's) is mapped into this process."""
    libs = _mapped_libraries() if libraries is None else libraries
    return any(m in Path(lib).name for lib in libs for m in _FOREIGN_LLVM_MARKERS
               if "triton" not in lib)


def triton_library() -> Path | None:
    """Path of triton's native library, found without importing triton (None if not installed)."""
    try:
        spec = importlib.util.find_spec("triton")
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    for root in spec.submodule_search_locations:
        found = sorted(Path(root, "_C").glob("libtriton*.so"))
        if found:
            return found[0]
    return None


def isolate_triton_llvm() -> str:
    """Load triton's library before (or isolated from) any GL stack; returns what was done."""
    global status
    if not sys.platform.startswith("linux"):
        status = "not needed on this platform"
        return status
    if os.environ.get("MAC_TRITON_PRELOAD", "1") == "0":
        status = "skipped (MAC_TRITON_PRELOAD=0)"
        return status
    lib = triton_library()
    if lib is None:
        status = "triton not installed"
        return status
    mapped = _mapped_libraries()
    if any(Path(m).name == lib.name for m in mapped):
        status = "triton already loaded before mac"
        return status
    mode = os.RTLD_NOW | os.RTLD_LOCAL
    deep = foreign_llvm_loaded(mapped)
    if deep:
        mode |= os.RTLD_DEEPBIND
    try:
        ctypes.CDLL(str(lib), mode=mode)
    except OSError as exc:  # a broken triton install: torch will report it when it needs triton
        status = f"could not preload {lib.name}: {exc}"
        return status
    status = ("loaded with RTLD_DEEPBIND (a GL/LLVM library was already loaded)" if deep
              else "loaded privately before any GL library")
    return status
