#!/usr/bin/env bash
# Section 7.2 / Figure 4: cap the latent's entropy after every epoch, with and without
# zero-entropy noise, TRIALS seeds each, then plot error against the cap.
# Usage: bash experiments/fig4_entropy_cap.sh [TRIALS] [OUT] [CONFIG] [EPOCHS]   (from the repository root)
#   reduced scale (default):  bash experiments/fig4_entropy_cap.sh 1
#   full MNIST, first 7 caps: bash experiments/fig4_entropy_cap.sh 1 runs/fig4_full configs/mnist_dropout_cnn_capping_full.py 7
# Every run is a resumable run directory: the same command again resumes what was cut.
set -euo pipefail
trials=${1:-2}
out=${2:-runs/fig4_entropy_cap}
config=${3:-configs/mnist_dropout_cnn_capping_offline.py}
epochs=${4:-}
flags=()
if [[ -n "$epochs" ]]; then flags+=(--config.train.num_epochs="$epochs"); fi
suffix=""
if [[ "$out" != runs/fig4_entropy_cap ]]; then suffix="_$(basename "$out")"; fi
for seed in $(seq 0 $((trials - 1))); do
  for noise in True False; do
    # At extreme caps the rescaled weights overflow float32 and the run stops with a
    # non-finite error (the "floating-point trouble" of the paper); the capped epochs
    # before it are kept and plotted, so go on with the next run.
    python scripts/train.py --config "$config" --config.seed="$seed" --config.model.noise="$noise" \
      --config.train.progress_bar=False "${flags[@]}" --workdir "$out/noise$noise/seed$seed" \
      || echo "run stopped early"
  done
done
python scripts/plot.py --workdir "$out" --figure entropy_cap --suffix "$suffix" --out experiments/figures
