#!/usr/bin/env bash
# The prepared GPU check: one command a session with an NVIDIA GPU (sm_80+) runs first.
#   bash benchmarks/gpu_check.sh [SOURCE_DIR]        (report: $OUT/gpu_check.md, default ./gpu_check_out)
# Builds mac with the CUDA kernels for this GPU, runs `mac info --check` (every native core vs the
# torch reference, float64 as the judge), the SASS summary of the built kernels (python -m mac.sass:
# registers, stack, hot-loop MMA/LDSM/local-memory counts), the strict gate (device kernel == its
# host emulation, all grid cases and precisions), the whole GPU suite, the kernels under
# compute-sanitizer (memcheck, racecheck, synccheck) on small shapes, the benchmark at the paper
# shapes (native vs torch eager vs eager in a CUDA graph, TF32 and bf16, the paper train step and
# issue 20's goals; torch.compile max-autotune left out: compiling these shapes takes minutes), 300
# steps of `mac train --preset paper --device cuda` on a small generated dataset (time per step and
# the projection to 1M steps), where `ncu` is installed an Nsight Compute profile of one paper-shape
# rollout step, native kernel and torch eager (benchmarks/ncu_profile.py), and last, with whatever
# time is left, the max-autotune column on the smallest case (quick shapes, best-of-32 for 1 state).
# Everything goes under $OUT: the report, one log per stage, the SASS listing, the train logs and
# the ncu report. A failing stage is recorded and the next one runs.
# Time: each stage has its own limit, cut to what is left of GPU_CHECK_BUDGET_S (default 340 s), so
# the whole check ends within 6 minutes; stages that find the budget spent are skipped.
# Environment: SKIP_BUILD=1 uses the mac already importable (a warm machine's second run);
# DRY_RUN=1 runs the plumbing without a GPU (implies SKIP_BUILD; training on the CPU with the cpu
# preset for a few steps); the GPU stages then fail, quickly, as they would on a broken device.
set -uo pipefail
src=$(cd "${1:-.}" && pwd)
OUT=${OUT:-$PWD/gpu_check_out}
mkdir -p "$OUT"
report=$OUT/gpu_check.md
: > "$report"
start=$(date +%s)
deadline=$(( start + ${GPU_CHECK_BUDGET_S:-340} ))
work=$(mktemp -d)   # dataset and checkpoints: too big to bring back under $OUT
trap 'rm -rf "$work"' EXIT
results=()

note() { echo "$*" | tee -a "$report"; }

stage() {  # stage NAME TIMEOUT_S CMD...: run within the budget, keep the last 80 lines and the exit status
  local name=$1 limit=$2
  shift 2
  local log="$OUT/${name}.log" now left
  now=$(date +%s)
  left=$(( deadline - now ))
  if (( left < 15 )); then
    note "== [$(( now - start ))s] $name: skipped, the time budget is spent"
    results+=("$name skipped 0")
    return
  fi
  (( limit > left )) && limit=$left
  note "== [$(( now - start ))s] $name (limit ${limit}s)"
  (cd "$src" && timeout -k 5 "$limit" "$@") > "$log" 2>&1
  local rc=$?
  { echo '```'; tail -n 80 "$log"; echo '```'; echo "$name: exit $rc"; echo; } >> "$report"
  note "   exit $rc$( (( rc == 124 || rc == 137 )) && echo ' (timed out)')"
  results+=("$name $rc $(( $(date +%s) - now ))")
}

export PYTHONUNBUFFERED=1 MAC_CUDA=ON CMAKE_BUILD_PARALLEL_LEVEL=$(nproc)
cc=$(python3 -c "import torch; p = torch.cuda.get_device_capability(); print(f'{p[0]}{p[1]}')" 2>/dev/null || echo 90)
export MAC_CUDA_ARCHITECTURES=${MAC_CUDA_ARCHITECTURES:-$cc}
if [[ ${DRY_RUN:-0} == 1 ]]; then
  SKIP_BUILD=1 device=cpu preset=cpu train_steps=20 log_interval=5 episodes=2
else
  device=cuda preset=paper train_steps=300 log_interval=50 episodes=8
fi

stage gpu 20 nvidia-smi
if [[ ${SKIP_BUILD:-0} == 1 ]]; then
  note "== build: skipped (SKIP_BUILD=1): $(cd /tmp && python3 -c 'import mac; print(mac.__file__)' 2>&1)"
else
  stage build 300 python3 -m pip install --no-build-isolation --no-deps -q .
fi
stage info 120 bash -c 'cd /tmp && mac info --check'
stage sass 60 python3 -m mac.sass
stage emulator_gate 150 python3 -m pytest -q -x -p no:cacheprovider tests/test_cuda.py -k device_as_accurate_as_host_emulation
stage gpu_suite 240 python3 -m pytest -q -p no:cacheprovider -rs tests/test_cuda.py
for tool in memcheck racecheck synccheck; do
  stage "sanitizer_$tool" 120 compute-sanitizer --tool "$tool" --error-exitcode 99 \
    python3 -m pytest -q -x -p no:cacheprovider tests/test_cuda.py -k "non_contiguous or ties_go"
done
stage bench_paper 150 mac bench --device cuda --no-compile

# Training: the paper's agent on a few generated episodes; train.csv's time_s excludes evaluation
# and diagnostics, so its slope is the time of a training step.
stage dataset 120 mac data generate --env_name cube-single-play-v0 --num_episodes "$episodes" \
  --save_dir "$work/data" --workers "$(nproc)" --no_progress
stage train 180 mac train --preset "$preset" --device "$device" --env_name cube-single-play-singletask-task2-v0 \
  --dataset_dir "$work/data" --offline_steps "$train_steps" --log_interval "$log_interval" --eval_interval 0 \
  --eval_episodes 1 --save_dir "$work/runs" --run_name train --no_progress
cp "$work"/runs/train/{flags.json,train.csv,eval.csv} "$OUT/" 2>/dev/null
stage train_timing 30 python3 - "$OUT/train.csv" <<'PY'
import csv, sys
rows = [(int(r["step"]), float(r["time_s"])) for r in csv.DictReader(open(sys.argv[1]))]
assert len(rows) >= 2, f"train.csv has {len(rows)} rows: need two to time a step"
(s0, t0), (s1, t1) = rows[0], rows[-1]  # from the first row on: start-up and warm-up excluded
per_step = (t1 - t0) / (s1 - s0)
print(f"steps {s0}..{s1}: {per_step * 1e3:.1f} ms per training step (first {s0} steps, warm-up "
      f"included: {t0 / s0 * 1e3:.1f} ms per step); 1M steps: {per_step * 1e6 / 3600:.1f} h")
PY

ncu_bin=$(command -v ncu || ls /usr/local/cuda/bin/ncu /opt/nvidia/nsight-compute/*/ncu 2>/dev/null | head -n 1)
if [[ -n $ncu_bin ]]; then
  # One rollout step, native then eager (~100 kernels). Four sections (throughputs, launch and
  # occupancy figures, pipe use incl. the tensor pipe) keep the replay passes, and the time, small.
  stage ncu 150 "$ncu_bin" --profile-from-start off --launch-count 200 --replay-mode kernel \
    --section SpeedOfLight --section LaunchStats --section Occupancy --section ComputeWorkloadAnalysis \
    -f -o "$OUT/ncu" python3 benchmarks/ncu_profile.py workload
  stage ncu_summary 30 python3 benchmarks/ncu_profile.py summarize "$OUT/ncu.ncu-rep" --ncu "$ncu_bin"
else
  note "== ncu: not installed (no Nsight Compute profile)"
  results+=("ncu absent 0")
fi

# max-autotune compiles (and autotunes every GEMM) for a minute or more per shape and precision: the
# smallest case only, after everything else.
stage bench_autotune 150 mac bench --device cuda --quick --cuda-cases eval-b1 --train-step none

{ echo; echo "## Summary"; echo; echo "| stage | exit | seconds |"; echo "|---|---|---|"
  for r in "${results[@]}"; do read -r name rc secs <<< "$r"; echo "| $name | $rc | $secs |"; done
  echo; echo "total $(( $(date +%s) - start )) s"; } | tee -a "$report"
