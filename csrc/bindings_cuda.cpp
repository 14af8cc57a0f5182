#include <pybind11/pybind11.h>

#include "device_query.h"

namespace py = pybind11;

PYBIND11_MODULE(_C_cuda, m) {
  m.doc() = "mac native CUDA core";
  m.def("build_info", []() {
    py::dict d;
    d["cuda_archs"] = MAC_CUDA_ARCHS;
    d["cuda_runtime_version"] = mac::cuda::runtime_version();
    return d;
  });
  m.def("device_status", []() {
    auto s = mac::cuda::device_status();
    py::dict d;
    d["usable"] = s.usable;
    d["device_count"] = s.device_count;
    d["reason"] = s.reason;
    return d;
  }, "Whether a CUDA device can run these kernels now, and if not, why");
}
