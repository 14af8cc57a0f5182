#include <cuda_runtime.h>

#include <mutex>

#include "device_query.h"

namespace mac::cuda {

int runtime_version() {
  int v = 0;
  cudaRuntimeGetVersion(&v);
  return v;
}

int driver_version() {
  int v = 0;
  cudaDriverGetVersion(&v);
  return v;
}

namespace {
DeviceStatus query() {
  DeviceStatus s;
  cudaError_t err = cudaGetDeviceCount(&s.device_count);
  if (err != cudaSuccess) {
    s.device_count = 0;
    s.reason = std::string("CUDA runtime reports: ") + cudaGetErrorString(err);
    cudaGetLastError();  // clear, so later calls do not see a stale error
    return s;
  }
  if (s.device_count == 0) {
    s.reason = "no CUDA device found";
    return s;
  }
  std::string found;
  for (int i = 0; i < s.device_count; ++i) {
    cudaDeviceProp prop{};
    DeviceInfo d;
    d.index = i;
    if (cudaGetDeviceProperties(&prop, i) == cudaSuccess) {
      d.name = prop.name;
      d.major = prop.major;
      d.minor = prop.minor;
      d.num_sms = prop.multiProcessorCount;
      d.usable = prop.major >= 8;
    }
    s.usable = s.usable || d.usable;
    found += (i ? ", " : "") + d.name + " (sm_" + std::to_string(d.major) + std::to_string(d.minor) + ")";
    s.devices.push_back(d);
  }
  if (!s.usable)
    s.reason = "no device with compute capability >= 8.0 (TF32/bf16 tensor cores); found: " + found;
  return s;
}
}  // namespace

DeviceStatus device_status() {
  static std::once_flag once;
  static DeviceStatus status;
  std::call_once(once, [] { status = query(); });
  return status;
}

}  // namespace mac::cuda
