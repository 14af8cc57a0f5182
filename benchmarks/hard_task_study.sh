#!/usr/bin/env bash
# Issue 23's controlled study: on a hard task, with the same training-time budget per run, does
# model size, candidates per state (N_train), rollout batch or only the step count move success?
#
# Recipes (all on the CPU preset, --precision auto = bf16 where measured not to hurt, 1 thread):
#   preset  the CPU preset (3x256 networks, batch 256, rollout batch 128, N_train 8)
#   wide    4x512 networks, batch 512, rollout batch 512
#   n32     N_train 32
#   rb256   rollout batch 256 (= batch)
#   long    the preset's run continued to LONG_FACTOR x its budget: only the step count changes
# A recipe's budget in steps is BUDGET_S seconds of training (gradient steps, as train.csv's time_s)
# over its seconds per step, timed by a CAL_STEPS-step calibration run under the same conditions as
# the runs (one per core), rounded down to EVAL_INTERVAL. Each run is evaluated every EVAL_INTERVAL
# steps (EVAL_EPISODES episodes, whole chunk); at its budget's last step on FINAL_EPISODES fresh
# episodes (seed 1) in both acting modes: the whole chunk (the preset's) and the first action of each
# chunk (the paper's). Everything resumes: rerun the same command after an interruption.
#
#   RECIPES="preset long" benchmarks/hard_task_study.sh &  RECIPES="wide n32 rb256" benchmarks/hard_task_study.sh &
#   benchmarks/hard_task_study.sh report      # OUT/study.md (table) and OUT/study.png (curves)
#   BUDGET_S=60 CAL_STEPS=20 EVAL_INTERVAL=20 EVAL_EPISODES=1 FINAL_EPISODES=1 GEN_EPISODES=4 \
#     RECIPES="preset wide long" benchmarks/hard_task_study.sh     # a smoke run (~3 min)
#
# Environment: ENV (task), DATASET (its dataset), DATA (dataset folder, generated if missing),
# GEN_EPISODES, OUT, SEED, PRECISION, and the sizes above.
set -euo pipefail
ENV=${ENV:-cube-double-play-singletask-task2-v0}
DATASET=${DATASET:-cube-double-play-v0}
GEN_EPISODES=${GEN_EPISODES:-1000}
DATA=${DATA:-$HOME/.ogbench/data/study-$DATASET-$GEN_EPISODES}
OUT=${OUT:-runs/study-$ENV}
RECIPES=${RECIPES:-"preset wide n32 rb256 long"}
BUDGET_S=${BUDGET_S:-7200}
LONG_FACTOR=${LONG_FACTOR:-2}
CAL_STEPS=${CAL_STEPS:-200}
EVAL_INTERVAL=${EVAL_INTERVAL:-2500}
EVAL_EPISODES=${EVAL_EPISODES:-50}
FINAL_EPISODES=${FINAL_EPISODES:-100}
SEED=${SEED:-0}
PRECISION=${PRECISION:-auto}
export OMP_NUM_THREADS=1
source "$(dirname "$0")/study_lib.sh"

declare -A FLAGS=(
  [preset]=""
  [wide]="--agent.hidden_dims=512,512,512,512 --agent.batch_size=512 --agent.rollout_batch=512"
  [n32]="--agent.num_samples_train=32"
  [rb256]="--agent.rollout_batch=256"
)

if [ "${1:-}" = report ]; then
  exec python "$(dirname "$0")/study_report.py" "$OUT"
fi
mkdir -p "$OUT"
ensure_data "$DATA" "$DATASET" "$GEN_EPISODES"

# run_flags RECIPE: the mac train flags of a new run of RECIPE
run_flags() {
  echo --env_name "$ENV" --dataset_dir "$DATA" --preset cpu --precision "$PRECISION" --threads 1 \
      --seed "$SEED" --no_download --video_episodes 0 ${FLAGS[$1]}
}

# budget_steps RECIPE: its step budget, from its calibration (timed once, kept in OUT/budget-RECIPE.json)
budget_steps() {
  local recipe=$1 file="$OUT/budget-$1.json" cal="$OUT/calibrate/$1"
  if [ ! -s "$file" ]; then
    echo "== calibrating $recipe: $CAL_STEPS steps ($(date '+%F %T'), load: $(load))" >&2
    train_to "$cal" "$CAL_STEPS" $(run_flags "$recipe") --eval_interval 0 --eval_episodes 1 \
        --save_interval "$CAL_STEPS" --log_interval $(( CAL_STEPS / 4 )) >&2    # (the last step is always evaluated)
    python - "$cal/train.csv" "$BUDGET_S" "$EVAL_INTERVAL" "$(load)" > "$file.tmp" <<'PY'
import csv, json, sys
rows = list(csv.DictReader(open(sys.argv[1])))
budget_s, interval = float(sys.argv[2]), int(sys.argv[3])
first, last = rows[len(rows) // 2 - 1], rows[-1]     # the second half: warm caches, steady threads
step_s = (float(last["time_s"]) - float(first["time_s"])) / (int(last["step"]) - int(first["step"]))
steps = max(interval, int(budget_s / step_s) // interval * interval)
print(json.dumps({"step_s": step_s, "steps": steps, "budget_s": budget_s, "load": sys.argv[4]}))
PY
    mv "$file.tmp" "$file"
  fi
  python -c 'import json, sys; print(json.load(open(sys.argv[1]))["steps"])' "$file"
}

for recipe in $RECIPES; do
  if [ "$recipe" = long ]; then
    run="$OUT/preset"; steps=$(( LONG_FACTOR * $(budget_steps preset) ))
  else
    [ -n "${FLAGS[$recipe]+set}" ] || { echo "unknown recipe '$recipe' (known: ${!FLAGS[*]} long)" >&2; exit 2; }
    run="$OUT/$recipe"; steps=$(budget_steps "$recipe")
  fi
  train_to "$run" "$steps" $(run_flags "$recipe") --eval_interval "$EVAL_INTERVAL" \
      --eval_episodes "$EVAL_EPISODES" --save_interval "$EVAL_INTERVAL" --keep_checkpoints 0 --log_interval $(( EVAL_INTERVAL < 500 ? EVAL_INTERVAL : 500 ))
  for execute in 10 1; do    # the CPU preset's whole chunk (h = 10), the paper's first action
    final_eval "$run" "$steps" "$execute" "$FINAL_EPISODES" 1 --precision "$PRECISION"
  done
done
echo "== done: $RECIPES ($(date '+%F %T')); the table: $0 report"
