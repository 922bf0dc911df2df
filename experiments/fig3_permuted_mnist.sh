#!/usr/bin/env bash
# Section 7.1 / Figure 3 at reduced scale (offline Permutation-MNIST, 8,000 train images):
# train with each of H_Θ[Y|Z], H_Θ[Y|X] and H[Y|Z] in turn, TRIALS seeds each, then plot.
# Usage: bash experiments/fig3_permuted_mnist.sh [TRIALS] [EPOCHS]   (from the repository root)
set -euo pipefail
trials=${1:-3}
epochs=${2:-30}
out=runs/fig3_permuted_mnist
config=configs/permuted_mnist_categorical_offline.py
for seed in $(seq 0 $((trials - 1))); do
  common=(--config "$config" --config.seed="$seed" --config.train.num_epochs="$epochs" --config.train.progress_bar=False)
  python scripts/train.py "${common[@]}" --workdir "$out/decoder_ce/seed$seed" --config.objective.cross_entropy=decoder
  python scripts/train.py "${common[@]}" --workdir "$out/prediction_ce/seed$seed" --config.objective.cross_entropy=prediction
  python scripts/train.py "${common[@]}" --workdir "$out/decoder_uncertainty/seed$seed" --config.objective.loss=decoder_uncertainty
done
python scripts/plot.py --workdir "$out" --figure cross_entropies --out experiments/figures
