#include <pybind11/pybind11.h>

#include "mac/isa.h"

#ifdef MAC_HAVE_OPENMP
#include <omp.h>
#endif

namespace py = pybind11;

static py::dict build_info() {
  py::dict d;
  d["cpu_isa"] = mac::isa_name(mac::detect_isa());
  d["cpu_isas_compiled"] = py::make_tuple("generic", "avx2", "avx512");
  d["cpu_avx512_bf16"] = mac::cpu_has_avx512_bf16();
#ifdef MAC_HAVE_OPENMP
  d["openmp"] = true;
  d["openmp_max_threads"] = omp_get_max_threads();
#else
  d["openmp"] = false;
  d["openmp_max_threads"] = 1;
#endif
  d["compiler"] = __VERSION__;
  return d;
}

PYBIND11_MODULE(_C, m) {
  m.doc() = "mac native CPU core";
  m.def("build_info", &build_info, "What this CPU core was compiled with and what it uses now");
}
