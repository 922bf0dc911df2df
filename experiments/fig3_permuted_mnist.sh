#!/usr/bin/env bash
# Section 7.1 / Figure 3 at reduced scale (offline Permutation-MNIST, 8,000 train images):
# train with each of H_Θ[Y|Z], H_Θ[Y|X] and H[Y|Z] in turn, TRIALS seeds each as one seed
# population (one compiled step trains all trials; each trial is a complete run in
# memberNN_seedS/), then plot the medians with 25-75% bands.
# Usage: bash experiments/fig3_permuted_mnist.sh [TRIALS] [EPOCHS]   (from the repository root)
set -euo pipefail
trials=${1:-3}
epochs=${2:-30}
out=runs/fig3_permuted_mnist
config=configs/permuted_mnist_categorical_offline.py
common=(--config "$config" --config.population.num_seeds="$trials" --config.train.num_epochs="$epochs"
        --config.train.progress_bar=False)
python scripts/train.py "${common[@]}" --workdir "$out/decoder_ce" --config.objective.cross_entropy=decoder
python scripts/train.py "${common[@]}" --workdir "$out/prediction_ce" --config.objective.cross_entropy=prediction
python scripts/train.py "${common[@]}" --workdir "$out/decoder_uncertainty" --config.objective.loss=decoder_uncertainty
python scripts/plot.py --workdir "$out" --figure cross_entropies --out experiments/figures
