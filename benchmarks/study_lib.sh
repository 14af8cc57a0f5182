# Shared by the learning studies (bf16_learning_check.sh, hard_task_study.sh): resumable training
# and fresh final evaluations, so that a study cut off by a session's end picks up where it was.
# Source it; it needs `mac` on PATH.

load() { cut -d' ' -f1-3 /proc/loadavg; }

# ckpt_path RUN STEP: the checkpoint mac train writes at STEP
ckpt_path() { printf '%s/checkpoints/ckpt_%09d.pt' "$1" "$2"; }

# train_to RUN STEPS [flags of a new run...]: train the run directory RUN to STEPS gradient steps.
# A run that already has its checkpoint at STEPS is left alone; one with checkpoints is resumed
# (its flags come from its flags.json); one without is started with the flags given (a start that
# died before its first checkpoint is kept aside as RUN.failed-<time>, never deleted).
train_to() {
  local run=$1 steps=$2; shift 2
  [ -f "$(ckpt_path "$run" "$steps")" ] && return 0
  echo "== $(basename "$run") to $steps steps ($(date '+%F %T'), load: $(load))"
  if compgen -G "$run/checkpoints/ckpt_*.pt" > /dev/null; then
    mac train --restore_path "$run" --offline_steps "$steps" --no_progress
  else
    [ -e "$run" ] && mv "$run" "$run.failed-$(date +%Y%m%d-%H%M%S)"
    mac train --save_dir "$(dirname "$run")" --run_name "$(basename "$run")" --offline_steps "$steps" \
        --no_progress "$@"
  fi
}

# final_eval RUN STEP EXECUTE EPISODES SEED [mac eval flags...]: fresh evaluation of RUN's checkpoint
# at STEP with EXECUTE actions per decision, into RUN/final-<STEP>-x<EXECUTE>.json (skipped if there)
final_eval() {
  local run=$1 step=$2 execute=$3 episodes=$4 seed=$5; shift 5
  local out="$run/final-$step-x$execute.json"
  [ -s "$out" ] && return 0
  echo "== eval $(basename "$run") at $step, $execute actions per decision ($(date '+%F %T'), load: $(load))"
  mac eval --restore_path "$(ckpt_path "$run" "$step")" --eval_episodes "$episodes" --seed "$seed" \
      --action_execute "$execute" --json "$@" > "$out.tmp"
  mv "$out.tmp" "$out"
}

# ensure_data DIR DATASET EPISODES: generate DATASET (e.g. cube-double-play-v0) into DIR unless there
ensure_data() {
  local dir=$1 dataset=$2 episodes=$3
  compgen -G "$dir/$dataset*.npz" > /dev/null && return 0
  echo "== generating $episodes episodes of $dataset into $dir ($(date '+%F %T'), load: $(load))"
  mac data generate --env_name "$dataset" --num_episodes "$episodes" --save_dir "$dir" --workers 2 --no_progress
}
