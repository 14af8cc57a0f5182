#include <cuda_runtime.h>

#include "device_query.h"

namespace mac::cuda {

int runtime_version() {
  int v = 0;
  cudaRuntimeGetVersion(&v);
  return v;
}

DeviceStatus device_status() {
  DeviceStatus s;
  cudaError_t err = cudaGetDeviceCount(&s.device_count);
  if (err != cudaSuccess) {
    s.device_count = 0;
    s.reason = std::string("CUDA runtime reports: ") + cudaGetErrorString(err);
    return s;
  }
  if (s.device_count == 0) {
    s.reason = "no CUDA device found";
    return s;
  }
  s.usable = true;
  return s;
}

}  // namespace mac::cuda
