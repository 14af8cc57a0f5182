"""Loading of the native extensions and the `mac info` report.

``mac._C`` (CPU) is always built; ``mac._C_cuda`` only when nvcc was found at build time. Importing
``mac`` never fails because of either: what is missing is reported by :func:`info`.
"""

from __future__ import annotations

import importlib
import platform
from typing import Any


def _try_import(name: str):
    try:
        return importlib.import_module(name), None
    except ImportError as exc:  # reported by info(), never raised at `import mac`
        return None, f"{type(exc).__name__}: {exc}"


cpu_ext, cpu_import_error = _try_import("mac._C")
cuda_ext, cuda_import_error = _try_import("mac._C_cuda")


def require_cpu_ext():
    """The CPU extension, or a clear error saying how to get it."""
    if cpu_ext is None:
        raise RuntimeError(
            "the native CPU core mac._C is not available "
            f"({cpu_import_error}); reinstall with `pip install .` from the source tree, "
            "or use backend='torch'"
        )
    return cpu_ext


def cuda_status() -> dict[str, Any]:
    """Whether the CUDA kernels can run now; ``reason`` says why not."""
    if cuda_ext is None:
        return {"built": False, "usable": False,
                "reason": "CUDA kernels not built (nvcc was not found at build time, or MAC_CUDA=OFF)"
                if cuda_import_error and "No module named" in cuda_import_error
                else f"CUDA extension failed to import: {cuda_import_error}"}
    status = dict(cuda_ext.device_status())
    status["built"] = True
    if status["usable"]:
        try:
            import torch
            if not torch.cuda.is_available():
                status["usable"] = False
                status["reason"] = "torch was installed without CUDA support (torch.cuda.is_available() is False)"
        except ImportError:
            pass
    return status


def info() -> dict[str, Any]:
    """What was compiled and what is usable now, as a dict (``mac info`` prints it)."""
    import numpy
    import torch

    from mac import __version__

    out: dict[str, Any] = {
        "mac": __version__,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "numpy": numpy.__version__,
        "platform": platform.platform(),
    }
    if cpu_ext is not None:
        out["cpu_core"] = dict(cpu_ext.build_info())
    else:
        out["cpu_core"] = {"error": cpu_import_error}
    if cuda_ext is not None:
        out["cuda_core"] = dict(cuda_ext.build_info())
    else:
        out["cuda_core"] = "not built"
    out["cuda_status"] = cuda_status()
    out["torch_cuda_available"] = torch.cuda.is_available()
    out["torch_threads"] = torch.get_num_threads()
    return out


def format_info(d: dict[str, Any], indent: int = 0) -> str:
    lines = []
    for k, v in d.items():
        if isinstance(v, dict):
            lines.append(" " * indent + f"{k}:")
            lines.append(format_info(v, indent + 2))
        else:
            lines.append(" " * indent + f"{k}: {v}")
    return "\n".join(lines)
