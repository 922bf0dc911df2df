#!/usr/bin/env bash
# Section 7.1 / Figure 3 at reduced scale (offline Permutation-MNIST, 8,000 train images):
# train with each of H_Θ[Y|Z], H_Θ[Y|X] and H[Y|Z] in turn, TRIALS seeds each as one seed
# population (one compiled step trains all trials; each trial is a complete run in
# memberNN_seedS/), then plot the medians with 25-75% bands and print the final-epoch table.
# Only the last checkpoint of each trial is kept (37 MB a trial an epoch); the metrics hold every epoch.
# Usage: bash experiments/fig3_permuted_mnist.sh [TRIALS] [EPOCHS] [extra --config.* flags]
#        (from the repository root; 8 trials, 50 epochs: about 25 minutes on 2 CPU cores)
set -euo pipefail
trials=${1:-8}
epochs=${2:-50}
shift $(( $# < 2 ? $# : 2 ))
out=runs/fig3_permuted_mnist
config=configs/permuted_mnist_categorical_offline.py
common=(--config "$config" --config.population.num_seeds="$trials" --config.train.num_epochs="$epochs"
        --config.train.progress_bar=False --config.checkpoint.max_to_keep=1 "$@")
python scripts/train.py "${common[@]}" --workdir "$out/decoder_ce" --config.objective.cross_entropy=decoder
python scripts/train.py "${common[@]}" --workdir "$out/prediction_ce" --config.objective.cross_entropy=prediction
python scripts/train.py "${common[@]}" --workdir "$out/decoder_uncertainty" --config.objective.loss=decoder_uncertainty
python scripts/plot.py --workdir "$out" --figure cross_entropies --out experiments/figures
python experiments/fig3_summary.py "$out"
