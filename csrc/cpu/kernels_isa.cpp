// Compiled once per instruction set (MAC_ISA_NAME = generic | avx2 | avx512); see CMakeLists.txt.
#include "mac/isa.h"
