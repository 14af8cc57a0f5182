"""Loading of the native extensions and the `mac info` report.

``mac._C`` (CPU) is always built; ``mac._C_cuda`` only when nvcc was found at build time. Importing
``mac`` never fails because of either: what is missing is reported by :func:`info`.
"""

from __future__ import annotations

import ctypes
import glob
import importlib
import os
import platform
import shutil
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


NO_CUDA_DEVICE = ("no CUDA device (the CUDA kernels are built; they run where an NVIDIA GPU and "
                  "driver are present)")
# What the CUDA runtime says when no device is visible: with no NVIDIA driver installed at all,
# cudaGetDeviceCount fails with cudaErrorInsufficientDriver, whose text misleadingly blames the
# driver's version; cudaErrorNoDevice; and our own wording for a count of 0 (cuda/device_query.cu).
_NO_DEVICE_ERRORS = ("CUDA driver version is insufficient", "no CUDA-capable device", "no CUDA device found")


def nvidia_device_visible() -> bool:
    """Whether this machine shows any sign of an NVIDIA GPU: a /dev/nvidia<k> (or WSL's /dev/dxg)
    device node, nvidia-smi on PATH (installed with the driver), or a CUDA device torch counts."""
    if glob.glob("/dev/nvidia[0-9]*") or os.path.exists("/dev/dxg") or shutil.which("nvidia-smi"):
        return True
    try:
        import torch
        return torch.cuda.device_count() > 0
    except Exception:  # noqa: BLE001 (no torch, or torch's CUDA initialisation failing)
        return False


def driver_cuda_version() -> int | None:
    """The newest CUDA version the installed NVIDIA driver supports (e.g. 12040 for 12.4), read from
    libcuda itself (works whatever runtime the kernels were built with); None without a driver."""
    try:
        lib = ctypes.CDLL("libcuda.so.1")
    except OSError:
        return None
    v = ctypes.c_int(0)
    return v.value if lib.cuDriverGetVersion(ctypes.byref(v)) == 0 and v.value else None


def _cuda_version_text(v: int) -> str:
    return f"{v // 1000}.{v % 1000 // 10}"


def _old_driver_advice(built: int | None, driver: int | None) -> str:
    """Why kernels built with CUDA ``built`` do not load on this driver, and the ways out. NVIDIA's
    compatibility rules: a driver runs code from toolkits of its own major version and older (minor
    version compatibility stays within a major family), so a CUDA 13 build needs a driver for CUDA
    13 (580 or newer) even where torch, built with CUDA 12, runs."""
    if not built or not driver:
        return ""
    major = driver // 1000
    return (f": the CUDA kernels were built with CUDA {_cuda_version_text(built)}, and this driver "
            f"supports CUDA {_cuda_version_text(driver)} at most. rollout_backend=auto keeps using torch "
            f"on this GPU. To use the kernels, update the driver (CUDA {built // 1000} needs "
            f"{'580' if built // 1000 == 13 else 'a matching driver'} or newer) or rebuild mac with a CUDA "
            f"{major}.x toolkit: CUDACXX=/usr/local/cuda-{major}/bin/nvcc pip install --force-reinstall "
            "--no-deps .")


def cuda_status() -> dict[str, Any]:
    """Whether the CUDA kernels can run now; ``reason`` says why not."""
    if cuda_ext is None:
        return {"built": False, "usable": False,
                "reason": "CUDA kernels not built (nvcc was not found at build time, or MAC_CUDA=OFF)"
                if cuda_import_error and "No module named" in cuda_import_error
                else f"CUDA extension failed to import: {cuda_import_error}"}
    status = dict(cuda_ext.device_status())
    status["built"] = True
    reason = str(status.get("reason") or "")
    if (not status["usable"] and not status.get("device_count")
            and any(e in reason for e in _NO_DEVICE_ERRORS) and not nvidia_device_visible()):
        # No GPU here at all: say so. (With a device present, an old driver's message is kept.)
        status["reason"] = NO_CUDA_DEVICE
    elif not status["usable"] and "driver version is insufficient" in reason:
        driver = status.get("driver_version") or driver_cuda_version()
        status["driver_cuda_version"] = driver
        status["reason"] = reason + _old_driver_advice(cuda_ext.build_info().get("cuda_runtime_version"), driver)
    if status["usable"]:
        try:
            import torch
            if not torch.cuda.is_available():
                status["usable"] = False
                status["reason"] = "torch was installed without CUDA support (torch.cuda.is_available() is False)"
        except ImportError:
            pass
    return status


def info(kernels: bool = False) -> dict[str, Any]:
    """What was compiled and what is usable now, as a dict (``mac info`` prints it). The compiled
    kernels' registers, stack and static shared memory per architecture are read with cuobjdump
    when it is installed; ``kernels=True`` adds their disassembled hot loops (seconds: mac.sass)."""
    import numpy
    import torch

    from mac import _llvm_isolation
    from mac._version import __version__

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
        if _has(cuda_ext, "launch_plan"):  # per precision, whatever the shapes; no GPU needed
            out["cuda_core"]["dynamic_shared_bytes"] = dict(
                cuda_ext.launch_plan(B=1, N=1, S=1, C=1, actor=(), critic=())["smem_bytes"])
        from mac import sass
        out["cuda_kernels"] = sass.info_section(disassemble=kernels)
    else:
        out["cuda_core"] = "not built"
    out["cuda_status"] = cuda_status()
    out["torch_cuda_available"] = torch.cuda.is_available()
    out["torch_threads"] = torch.get_num_threads()
    out["triton_llvm"] = _llvm_isolation.status
    from mac.config import NATIVE_ROLLOUT_SERVES
    out["native_rollout_serves"] = NATIVE_ROLLOUT_SERVES
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


# ----------------------------------------------------------------------------- rollout backends
# Readiness and argument checks shared by the CPU and CUDA cores. Dependencies run one way:
# mac.rollout -> mac._cpu_core / mac._cuda_core -> mac._native, mac.results (nothing here imports
# the cores or the rollout API).

def _has(ext, name: str) -> bool:
    return ext is not None and hasattr(ext, name)


def cpu_backend_ready(states) -> bool:
    import torch
    return _has(cpu_ext, "best_of_n") and states.dtype == torch.float32


def require_cpu_backend(states) -> None:
    require_cpu_ext()
    if not _has(cpu_ext, "best_of_n"):
        raise RuntimeError("this build of mac._C has no native rollout kernels; use backend='torch'")
    if not cpu_backend_ready(states):
        raise TypeError(f"backend='cpu' needs float32 tensors, got {states.dtype}")


def contiguous_float32(name: str, t, device, shape=None, core: str = "native"):
    """``t`` as a detached, C-contiguous float32 tensor on ``device`` (a copy only if it is strided),
    or a clear TypeError/ValueError. Shared by the CPU and CUDA cores' argument checks."""
    import torch
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if t.device != torch.device(device):
        raise ValueError(f"{name} is on {t.device}, but the {core} core needs it on {device}")
    if t.dtype != torch.float32:
        raise TypeError(f"{name} must be float32 for the {core} core, got {t.dtype}")
    if shape is not None and tuple(t.shape) != tuple(shape):
        raise ValueError(f"{name} must have shape {tuple(shape)}, got {tuple(t.shape)}")
    t = t.detach()
    if not t.is_contiguous() or t.is_conj() or t.is_neg():
        t = t.resolve_conj().resolve_neg().contiguous()
    return t


def checked_layers(name: str, net, in_dim: int, out_dim: int, device, core: str = "native") -> list[tuple]:
    """The layers of ``net`` as (weight, bias, norm_weight, norm_bias) contiguous float32 tensors on
    ``device`` (None norms for the head), checked against the sizes this call needs."""
    from mac.nets import MLP
    if not isinstance(net, MLP):
        raise TypeError(f"{name} must be a mac.nets.MLP, got {type(net).__name__}")
    if net.in_dim != in_dim or net.out_dim != out_dim:
        raise ValueError(f"{name} maps {net.in_dim} -> {net.out_dim}, but these inputs need "
                         f"{in_dim} -> {out_dim}")
    layers = net.dense_layers()
    out, prev = [], in_dim
    for i, layer in enumerate(layers):
        lname = f"{name}.layer{i}"
        w = layer.weight
        if w.dim() != 2 or w.shape[1] != prev:
            raise ValueError(f"{lname}.weight must have shape (out, {prev}), got {tuple(w.shape)}")
        n_out = int(w.shape[0])
        tensors = [contiguous_float32(f"{lname}.weight", w, device, core=core),
                   contiguous_float32(f"{lname}.bias", layer.bias, device, (n_out,), core)]
        if i == len(layers) - 1:
            if layer.norm_weight is not None or layer.norm_bias is not None:
                raise ValueError(f"{lname} is the head and must have no LayerNorm")
            tensors += [None, None]
        else:
            if layer.norm_weight is None or layer.norm_bias is None:
                raise ValueError(f"{lname} is a hidden layer and needs LayerNorm parameters")
            tensors += [contiguous_float32(f"{lname}.norm_weight", layer.norm_weight, device, (n_out,), core),
                        contiguous_float32(f"{lname}.norm_bias", layer.norm_bias, device, (n_out,), core)]
        out.append(tuple(tensors))
        prev = n_out
    if prev != out_dim:
        raise ValueError(f"{name} outputs {prev} features, expected {out_dim}")
    return out


def cuda_backend_ready(states) -> bool:
    import torch
    return _has(cuda_ext, "best_of_n") and cuda_status()["usable"] and states.dtype == torch.float32


def require_cuda_backend(states) -> None:
    st = cuda_status()
    if not st["usable"]:
        raise RuntimeError(f"backend='cuda' is unusable: {st['reason']}")
    if not _has(cuda_ext, "best_of_n"):
        raise RuntimeError("this build of mac._C_cuda has no rollout kernels; use backend='torch'")
    import torch
    if states.dtype != torch.float32:
        raise TypeError(f"backend='cuda' needs float32 tensors, got {states.dtype}")
