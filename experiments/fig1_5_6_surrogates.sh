#!/usr/bin/env bash
# Section 7.3 / Figures 1, 5 and 6 at reduced scale: the embedded digits data, MLP encoder,
# K = 32 latent with zero-entropy noise, linear decoder; the surrogate regularisers
# E||Z||^2, log Var[Z], log Var[Z|Y] and the VIB baseline, each over the 13 gammas
# 1e-4..10 (one vmapped population per regulariser), then the analysis and the plots.
# Usage: bash experiments/fig1_5_6_surrogates.sh [EPOCHS]   (from the repository root)
set -euo pipefail
epochs=${1:-40}
out=runs/fig156_digits
python scripts/sweep.py --config configs/digits_condvar.py --sweep_dir "$out/surrogates" \
  --regularizers=l2,log_var,cond_log_var --population \
  --config.train.num_epochs="$epochs" --config.train.progress_bar=False
python scripts/sweep.py --config configs/digits_vib.py --sweep_dir "$out/vib" --regularizers=vib --population \
  --config.train.num_epochs="$epochs" --config.train.progress_bar=False
python scripts/plot.py --workdir "$out" --figure information_plane --out experiments/figures
python scripts/plot.py --workdir "$out" --figure entropies --out experiments/figures
