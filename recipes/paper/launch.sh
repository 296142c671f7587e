#!/bin/bash
# The paper's runs (arXiv 2510.04072): one model, GRPO or SFPO (on GRPO or on DAPO), on this machine's GPUs or
# through Slurm.
#
#   recipes/paper/launch.sh MODEL ALGORITHM [HYDRA_OVERRIDE ...]
#     MODEL      qwen25_math_1p5b | r1_distill_qwen_1p5b | r1_distill_qwen_7b | qwen3_4b_base
#     ALGORITHM  grpo | sfpo | dapo | sfpo_dapo (the DAPO pair: Table 3's r1_distill_qwen_1p5b, qwen3_4b_base)
#
# Environment (defaults in brackets):
#   MODEL_ROOT [/models]        holds the HF model directories, named as on the Hub (e.g. Qwen2.5-Math-1.5B)
#   TRAIN_FILES [[$DATA_ROOT/train.parquet]]   VAL_FILES [[$DATA_ROOT/val.parquet]]   DATA_ROOT [/data]
#   RUN_ROOT [outputs/paper]    run directories go to $RUN_ROOT/<model>_<algorithm>
#   LAUNCHER [local]            local: sfpo-rl-train here (a Ray cluster you already joined: add ray.address=auto);
#                               slurm: sbatch docker/slurm/sfpo_rl.sbatch (set #SBATCH options with SBATCH_ARGS)
#   SBATCH_ARGS []              e.g. "--nodes=2 --partition=gpu --time=48:00:00"
#
# Examples:
#   MODEL_ROOT=/shared/models DATA_ROOT=/shared/data recipes/paper/launch.sh qwen25_math_1p5b sfpo
#   LAUNCHER=slurm SBATCH_ARGS=--nodes=2 recipes/paper/launch.sh r1_distill_qwen_7b grpo trainer.total_steps=200
set -euo pipefail

usage() {
    sed -n '2,19p' "$0" >&2
    exit 2
}
(($# >= 2)) || usage
MODEL=$1
ALGORITHM=$2
shift 2

case "$MODEL" in
    qwen25_math_1p5b) HF_NAME=Qwen2.5-Math-1.5B ;;
    r1_distill_qwen_1p5b) HF_NAME=DeepSeek-R1-Distill-Qwen-1.5B ;;
    r1_distill_qwen_7b) HF_NAME=DeepSeek-R1-Distill-Qwen-7B ;;
    qwen3_4b_base) HF_NAME=Qwen3-4B-Base ;;
    *) echo "launch.sh: unknown model '$MODEL'" >&2 && usage ;;
esac
REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
case "$ALGORITHM" in
    grpo | sfpo) ALGORITHM_OVERRIDES=("experiment=paper_$MODEL" "algorithm=$ALGORITHM") ;;
    dapo | sfpo_dapo)
        if [[ ! -f "$REPO/configs/experiment/paper_${MODEL}_dapo.yaml" ]]; then
            echo "launch.sh: the paper runs DAPO on r1_distill_qwen_1p5b and qwen3_4b_base only, not '$MODEL'" >&2
            usage
        fi
        SFPO=false && [[ "$ALGORITHM" == sfpo_dapo ]] && SFPO=true
        ALGORITHM_OVERRIDES=("experiment=paper_${MODEL}_dapo" "algorithm.sfpo.enable=$SFPO")
        ;;
    *) echo "launch.sh: algorithm must be grpo, sfpo, dapo or sfpo_dapo, got '$ALGORITHM'" >&2 && usage ;;
esac

MODEL_ROOT=${MODEL_ROOT:-/models}
DATA_ROOT=${DATA_ROOT:-/data}
RUN_ROOT=${RUN_ROOT:-outputs/paper}
MODEL_PATH="$MODEL_ROOT/$HF_NAME"
if [[ ! -f "$MODEL_PATH/config.json" ]]; then
    echo "launch.sh: no Hugging Face model at $MODEL_PATH (set MODEL_ROOT; download $HF_NAME there first)" >&2
    exit 2
fi

OVERRIDES=(
    "${ALGORITHM_OVERRIDES[@]}"
    "model.path=$MODEL_PATH"
    "data.train_files=${TRAIN_FILES:-[$DATA_ROOT/train.parquet]}"
    "data.val_files=${VAL_FILES:-[$DATA_ROOT/val.parquet]}"
    "trainer.run_dir=$RUN_ROOT/${MODEL}_$ALGORITHM"
    "$@"
)

case "${LAUNCHER:-local}" in
    local) exec sfpo-rl-train "${OVERRIDES[@]}" ;;
    slurm)
        read -r -a SBATCH_OPTS <<<"${SBATCH_ARGS:-}"
        exec sbatch --job-name="sfpo_${MODEL}_$ALGORITHM" "${SBATCH_OPTS[@]}" \
            "$REPO/docker/slurm/sfpo_rl.sbatch" "${OVERRIDES[@]}"
        ;;
    *) echo "launch.sh: LAUNCHER must be local or slurm, got '$LAUNCHER'" >&2 && exit 2 ;;
esac
