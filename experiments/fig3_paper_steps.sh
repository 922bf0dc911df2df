#!/usr/bin/env bash
# Section 7.1 / Figure 3 at the paper's number of optimiser steps, for a GPU: offline
# Permutation-MNIST (8,000 train images, 62 steps an epoch), 750 epochs = 46,500 steps against
# the paper's 100 epochs x 469 = 46,900, at the paper's learning rate 1e-4 and setup (PyTorch
# init, plateau test per 60,000 examples). The three objectives, TRIALS seeds each as one seed
# population, run side by side on the one device (each process is host-bound on a small MLP),
# plus the decoder cross-entropy at 1e-3 as a fourth run. MODE=ablation instead runs the decoder
# cross-entropy alone at lr 2e-4, 3e-4 and 5e-4 (the same steps), and on 2,000 and 4,000 images at
# 1e-4 (a third of the steps: their epochs are short, and each ends with an evaluation).
# Every process stops (SIGTERM: a clean save, then exit) when SECONDS_LEFT have passed, so the metrics of a cut run hold every
# epoch it finished. Then the final-epoch table and the code usage of each run.
# Usage: bash experiments/fig3_paper_steps.sh OUT_DIR [DATA_DIR] [SECONDS_LEFT] [TRIALS] [EPOCHS]
#   e.g. bash experiments/fig3_paper_steps.sh runs/fig3_paper_steps ../shared/data/mnist 420
# Afterwards, here: python scripts/plot.py --workdir OUT_DIR/lr1e-4 --figure cross_entropies
set -uo pipefail
out=${1:?OUT_DIR}
data=${2:-../shared/data/mnist}
seconds=${3:-3600}
trials=${4:-8}
epochs=${5:-750}
mkdir -p "$out"
export XLA_PYTHON_CLIENT_PREALLOCATE=false   # four processes share one device
common=(--config configs/permuted_mnist_categorical_offline.py --config.data.path="$data"
        --config.population.num_seeds="$trials" --config.train.num_epochs="$epochs"
        --config.train.progress_bar=False --config.checkpoint.every_epochs=${CHECKPOINT_EVERY:-25} --config.checkpoint.max_to_keep=1)
run() {  # run NAME WORKDIR FLAGS...
  local name=$1 workdir=$2; shift 2
  timeout -k 60 "$seconds" python scripts/train.py "${common[@]}" --workdir "$workdir" "$@" \
    >"$out/$name.log" 2>&1
  echo "$name: exit $?" >>"$out/exits.txt"
}
python -c "import jax, flax, optax, orbax.checkpoint as o; print('jax', jax.__version__, 'flax', flax.__version__, \
'optax', optax.__version__, 'orbax', o.__version__, jax.devices())" | tee "$out/versions.txt" || exit 1
if [[ ${MODE:-figure} == figure ]]; then
  run decoder_ce "$out/lr1e-4/decoder_ce" --config.train.learning_rate=1e-4 --config.objective.cross_entropy=decoder &
  run prediction_ce "$out/lr1e-4/prediction_ce" --config.train.learning_rate=1e-4 \
    --config.objective.cross_entropy=prediction &
  run decoder_uncertainty "$out/lr1e-4/decoder_uncertainty" --config.train.learning_rate=1e-4 \
    --config.objective.loss=decoder_uncertainty &
  run decoder_ce_lr1e-3 "$out/lr1e-3/decoder_ce" --config.train.learning_rate=1e-3 \
    --config.objective.cross_entropy=decoder &
  cells=(lr1e-4 lr1e-3)
else  # MODE=ablation: the decoder cross-entropy alone, at the learning rates between and with less data
  cells=()
  for lr in 2e-4 3e-4 5e-4; do
    run "lr$lr" "$out/lr$lr/decoder_ce" --config.train.learning_rate=$lr --config.objective.cross_entropy=decoder &
    cells+=("lr$lr")
  done
  for n in 2000 4000; do
    run "n$n" "$out/n$n/decoder_ce" --config.train.learning_rate=1e-4 --config.objective.cross_entropy=decoder \
      --config.data.num_train=$n --config.train.num_epochs=$(( epochs * 62 / 3 / (n / 128) )) &
    cells+=("n$n")
  done
fi
wait
cat "$out/exits.txt"
for cell in "${cells[@]}"; do  # code usage of all cells at once, each time-boxed
  timeout 120 python experiments/fig3_codes.py "$out/$cell"/*/ >"$out/codes_$cell.md" 2>/dev/null &
done
wait
for cell in "${cells[@]}"; do
  echo "## $cell"
  python experiments/fig3_summary.py "$out/$cell"
  grep "^|" "$out/codes_$cell.md" || echo "(code usage failed)"
done 2>&1 | tee "$out/summary.md"
