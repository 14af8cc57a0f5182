"""MAC: scalable offline model-based RL with action chunks.

PyTorch owns parameters, autograd and the optimiser; the native core (``mac._C`` for CPUs,
``mac._C_cuda`` for NVIDIA GPUs) runs the inference-only hot paths (best-of-N, imagined rollouts).
"""

from mac._version import __version__

# First, before anything can import mujoco: see _llvm_isolation for the crash this prevents.
from mac._llvm_isolation import isolate_triton_llvm as _isolate_triton_llvm

_isolate_triton_llvm()

from mac._native import info  # noqa: E402

__all__ = ["info", "__version__"]
