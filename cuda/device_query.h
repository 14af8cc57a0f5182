#pragma once
#include <string>

namespace mac::cuda {

struct DeviceStatus {
  bool usable = false;
  int device_count = 0;
  std::string reason;
};

int runtime_version();
DeviceStatus device_status();

}  // namespace mac::cuda
