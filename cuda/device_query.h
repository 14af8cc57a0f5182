#pragma once
#include <string>
#include <vector>

namespace mac::cuda {

struct DeviceInfo {
  int index = 0;
  std::string name;
  int major = 0, minor = 0;
  int num_sms = 0;
  bool usable = false;  // compute capability >= 8.0 (TF32 / bf16 tensor cores)
};

struct DeviceStatus {
  bool usable = false;
  int device_count = 0;
  std::string reason;
  std::vector<DeviceInfo> devices;
};

int runtime_version();
int driver_version();
// Queried once per process (cheap afterwards; creates no CUDA context).
DeviceStatus device_status();

}  // namespace mac::cuda
