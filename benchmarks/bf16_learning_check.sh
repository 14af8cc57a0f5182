#!/usr/bin/env bash
# Issue 21's learning check: does --precision bf16 learn as well as fp32?
#
# cube-single task 2 on 1M generated transitions, the CPU preset, STEPS (10k) steps, SEEDS (0 1) x
# {fp32, bf16}, one run at a time; then fresh EPISODES (50) evaluations of each final checkpoint in
# both acting modes (the whole chunk, as trained; the first action of each chunk, as the paper), and
# a table of success (mean +- standard error over seeds) and the final value / model losses.
# Only where it shows no loss may mac.precision.AUTO_BF16_UNITS list the machine's unit.
#
#   benchmarks/bf16_learning_check.sh                 # ~4 x 25 min of training on 2 cores + data
#   STEPS=20 EPISODES=1 GEN_EPISODES=4 benchmarks/bf16_learning_check.sh    # a smoke run (~2 min)
#   SEEDS=0 OMP_NUM_THREADS=1 ... & SEEDS=1 OMP_NUM_THREADS=1 ... ; then SEEDS="0 1" for the table:
#   one seed per core (an invocation skips the runs and evaluations that are done)
#
# Environment: DATA (dataset folder; generated there if missing), OUT (runs and the table),
# STEPS, SEEDS, EPISODES, GEN_EPISODES (episodes to generate: 1000 = 1M transitions).
set -euo pipefail
STEPS=${STEPS:-10000}
SEEDS=${SEEDS:-"0 1"}
EPISODES=${EPISODES:-50}
GEN_EPISODES=${GEN_EPISODES:-1000}
LOG_INTERVAL=${LOG_INTERVAL:-$(( STEPS < 500 ? STEPS : 500 ))}
DATA=${DATA:-$HOME/.ogbench/data/bf16-check-$GEN_EPISODES}
OUT=${OUT:-runs/bf16-check}
ENV=cube-single-play-singletask-task2-v0
mkdir -p "$OUT"
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-2}

source "$(dirname "$0")/study_lib.sh"
ensure_data "$DATA" cube-single-play-v0 "$GEN_EPISODES"
for seed in $SEEDS; do
  for precision in fp32 bf16; do
    run="$OUT/$precision-s$seed"
    train_to "$run" "$STEPS" --env_name "$ENV" --dataset_dir "$DATA" --preset cpu --precision "$precision" \
        --seed "$seed" --eval_interval 0 --video_episodes 0 --log_interval "$LOG_INTERVAL"
    for execute in 10 1; do    # the CPU preset's whole chunk (h = 10), the paper's first action
      final_eval "$run" "$STEPS" "$execute" "$EPISODES" 1000 --precision "$precision"
    done
  done
done

python - "$OUT" "$SEEDS" "$STEPS" <<'PY'
import csv, json, statistics as st, sys
from pathlib import Path
out, seeds, steps = Path(sys.argv[1]), sys.argv[2].split(), sys.argv[3]

def mean_se(xs):
    return f"{st.mean(xs):.3f} +- {st.stdev(xs) / len(xs) ** 0.5:.3f}" if len(xs) > 1 else f"{xs[0]:.3f}"

lines = ["| precision | success, whole chunk | success, first action | loss/value | loss/dynamics |",
         "|---|---|---|---|---|"]
for p in ("fp32", "bf16"):
    runs = [out / f"{p}-s{s}" for s in seeds]
    succ = {e: [json.loads((r / f"final-{steps}-x{e}.json").read_text())["success"] for r in runs] for e in ("10", "1")}
    last = [list(csv.DictReader(open(r / "train.csv")))[-1] for r in runs]
    loss = {k: [float(row[k]) for row in last] for k in ("loss/value", "loss/dynamics")}
    lines.append(f"| {p} | {mean_se(succ['10'])} | {mean_se(succ['1'])} | {mean_se(loss['loss/value'])} "
                 f"| {mean_se(loss['loss/dynamics'])} |")
table = "\n".join(lines)
(out / "bf16_learning_check.md").write_text(table + "\n")
print(table)
PY
