#!/usr/bin/env bash
# Section 7.1 / Figure 3 at the paper's data scale on a CPU: Permutation-MNIST from the real
# 60,000/10,000 MNIST split (configs/permuted_mnist_categorical_full.py), the paper's setup at
# lr 1e-4. Trials are single runs one after another (on a 2-core CPU a vmapped seed population
# has been slower than sequential runs). Every run is a resumable run directory: the same
# command again resumes what was cut. Only the last checkpoint of a trial is kept.
# Usage: bash experiments/fig3_full_mnist.sh OUT_DIR [CE_TRIALS] [CE_EPOCHS] [OTHER_TRIALS] [OTHER_EPOCHS]
#   e.g. bash experiments/fig3_full_mnist.sh runs/fig3_full 4 100 2 50   (from the repository root)
# Extra flags for every run: EXTRA="--config.train.learning_rate=1e-3" bash experiments/...
set -uo pipefail
out=${1:?OUT_DIR}
ce_trials=${2:-4}
ce_epochs=${3:-100}
other_trials=${4:-2}
other_epochs=${5:-50}
read -r -a extra <<<"${EXTRA:-}"
common=(--config configs/permuted_mnist_categorical_full.py --config.train.progress_bar=False
        --config.checkpoint.max_to_keep=1 "${extra[@]}")
run() {  # run WORKDIR EPOCHS SEED FLAGS...
  local workdir=$1 epochs=$2 seed=$3; shift 3
  mkdir -p "$(dirname "$workdir")"
  python scripts/train.py "${common[@]}" --config.seed="$seed" --config.train.num_epochs="$epochs" \
    --workdir "$workdir" "$@" >>"$workdir.log" 2>&1
  echo "$workdir: exit $?" >>"$out/exits.txt"
}
mkdir -p "$out"
for seed in $(seq 0 $((ce_trials - 1))); do
  run "$out/decoder_ce/seed$seed" "$ce_epochs" "$seed" --config.objective.cross_entropy=decoder
done
for seed in $(seq 0 $((other_trials - 1))); do
  run "$out/prediction_ce/seed$seed" "$other_epochs" "$seed" --config.objective.cross_entropy=prediction
  run "$out/decoder_uncertainty/seed$seed" "$other_epochs" "$seed" --config.objective.loss=decoder_uncertainty
done
