#!/usr/bin/env bash
# Section 7.2 / Figure 4 at reduced scale: cap the latent's entropy after every epoch,
# with and without zero-entropy noise, TRIALS seeds each, then plot error against the cap.
# Usage: bash experiments/fig4_entropy_cap.sh [TRIALS]   (from the repository root)
set -euo pipefail
trials=${1:-2}
out=runs/fig4_entropy_cap
config=configs/mnist_dropout_cnn_capping_offline.py
for seed in $(seq 0 $((trials - 1))); do
  for noise in True False; do
    # At extreme caps the rescaled weights overflow float32 and the run stops with a
    # non-finite error (the "floating-point trouble" of the paper); the capped epochs
    # before it are kept and plotted, so go on with the next run.
    python scripts/train.py --config "$config" --config.seed="$seed" --config.model.noise="$noise" \
      --config.train.progress_bar=False --workdir "$out/noise$noise/seed$seed" || echo "run stopped early"
  done
done
python scripts/plot.py --workdir "$out" --figure entropy_cap --out experiments/figures
