#!/usr/bin/env bash
# Stage 0 of the stability study (results/stability/PROTOCOL.md): GRPO, GRPO x4 and GRPO x8 at lr 3e-4, 1e-3 and
# 3e-3, seed 0, 80 steps, two runs at a time. Run from a pinned checkout; re-run to continue (a finished run
# is left alone, an interrupted one resumes from its last checkpoint).
#   results/stability/pilot.sh [runs_dir [lr ...]]
set -uo pipefail
cd "$(dirname "$0")/../.."
RUNS=${1:-outputs/stability/pilot}
LRS=("${@:2}")
[ ${#LRS[@]} -gt 0 ] || LRS=(3e-4 1e-3 3e-3)
mkdir -p "$RUNS"
# The warm-start once, before two runs would both build it.
.venv/bin/python -c "from sfpo_rl.bench.single_process import compose
from sfpo_rl.trainer.main import resolve_model_and_data
resolve_model_and_data(compose([]))"
one() {  # arm lr overrides...
  local dir="$RUNS/${1}_lr${2}_seed0" lr=$2
  shift 2
  mkdir -p "$dir"
  echo "[pilot] $(date -u +%H:%M:%S) start $dir"
  .venv/bin/python -m sfpo_rl.trainer.main "trainer.run_dir=$dir" "trainer.logger=[console]" \
    trainer.export_hf=false trainer.total_steps=80 "$@" "actor.lr=$lr" trainer.seed=0 data.seed=0 \
    >>"$dir/train.log" 2>&1
  local rc=$?
  echo "[pilot] $(date -u +%H:%M:%S) end $dir exit $rc"
}
export -f one
export RUNS
for arm in "grpo_x8 actor.ppo_epochs=8" "grpo_x4 actor.ppo_epochs=4" "grpo actor.ppo_epochs=1"; do  # longest first; every line ends in an override (xargs -L joins a line ending in a blank to the next)
  for lr in "${LRS[@]}"; do
    read -r name epochs <<<"$arm"
    echo "$name $lr algorithm=grpo $epochs"
  done
done | xargs -P 2 -L 1 bash -c 'one "$@"' _
