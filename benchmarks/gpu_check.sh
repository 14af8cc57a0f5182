#!/usr/bin/env bash
# The prepared GPU check: one command a session with an NVIDIA GPU (sm_80+) runs first.
#   bash benchmarks/gpu_check.sh [SOURCE_DIR]        (report: $OUT/gpu_check.md, default ./gpu_check_out)
# Builds mac with the CUDA kernels for this GPU, runs `mac info --check` (every native core vs the
# torch reference, float64 as the judge), the strict gate (device
# kernel == its host emulation, all grid cases and precisions), the whole GPU suite, the kernels
# under compute-sanitizer (memcheck, racecheck, synccheck) on small shapes, and a short benchmark.
# Each stage has its own time limit so that the whole check ends in under 10 minutes on an H100/H200.
set -uo pipefail
src=$(cd "${1:-.}" && pwd)
OUT=${OUT:-$PWD/gpu_check_out}
mkdir -p "$OUT"
report=$OUT/gpu_check.md
: > "$report"
start=$(date +%s)

stage() {  # stage NAME TIMEOUT_S CMD...: run, keep the last 80 lines and the exit status
  local name=$1 limit=$2
  shift 2
  local log="$OUT/${name}.log"
  echo "== [$(( $(date +%s) - start ))s] $name" | tee -a "$report"
  (cd "$src" && timeout "$limit" "$@") > "$log" 2>&1
  local rc=$?
  { echo '```'; tail -n 80 "$log"; echo '```'; echo "$name: exit $rc"; echo; } >> "$report"
  echo "   exit $rc" | tee -a "$report"
}

export PYTHONUNBUFFERED=1 MAC_CUDA=ON CMAKE_BUILD_PARALLEL_LEVEL=$(nproc)
cc=$(python3 -c "import torch; p = torch.cuda.get_device_capability(); print(f'{p[0]}{p[1]}')" 2>/dev/null || echo 90)
export MAC_CUDA_ARCHITECTURES=${MAC_CUDA_ARCHITECTURES:-$cc}

stage gpu 20 nvidia-smi
stage build 300 python3 -m pip install --no-build-isolation --no-deps -q .
stage info 120 bash -c 'cd /tmp && mac info --check'
stage emulator_gate 150 python3 -m pytest -q -x -p no:cacheprovider tests/test_cuda.py -k device_as_accurate_as_host_emulation
stage gpu_suite 240 python3 -m pytest -q -p no:cacheprovider -rs tests/test_cuda.py
for tool in memcheck racecheck synccheck; do
  stage "sanitizer_$tool" 120 compute-sanitizer --tool "$tool" --error-exitcode 99 \
    python3 -m pytest -q -x -p no:cacheprovider tests/test_cuda.py -k "non_contiguous or ties_go"
done
stage bench_quick 60 mac bench --device cuda --quick --no-compile
stage bench_paper 150 mac bench --device cuda --no-compile
echo "total $(( $(date +%s) - start )) s" | tee -a "$report"
