"""The §7.1 full-scale config on the real 60,000/10,000 MNIST split (skipped when the folder is absent)."""

from pathlib import Path

import jax
import numpy as np
import pytest

from ibjax import config as configlib
from ibjax import experiment

ROOT = Path(__file__).resolve().parents[1]
MNIST_FULL = ROOT.parent / "shared" / "data" / "mnist_full"
# Training-label counts per digit 0-9 of the standard MNIST training set (../shared/data/README.md).
TRAIN_COUNTS = [5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949]

pytestmark = pytest.mark.skipif(not (MNIST_FULL / "train-images-idx3-ubyte.gz").exists(),
                                reason=f"{MNIST_FULL} is absent")


def test_full_scale_config_loads_the_standard_split_and_trains_a_few_steps(monkeypatch):
    monkeypatch.chdir(ROOT)  # the config names the data folder relative to the repository root
    config = configlib.from_file(ROOT / "configs" / "permuted_mnist_categorical_full.py")
    assert (config.train.learning_rate, config.train.batch_size, config.train.num_epochs) == (1e-4, 128, 100)
    run = experiment.setup(config)
    data = run.dataset
    assert data.x_train.shape == (60000, 28, 28, 1) and data.x_test.shape == (10000, 28, 28, 1)
    assert np.bincount(data.y_train, minlength=10).tolist() == TRAIN_COUNTS
    assert run.steps_per_epoch == 468 and run.steps_per_call == 94

    state, totals = run.init_state(), run.zero_totals()
    images, labels = run.device_data()[:2]
    first = experiment.put(np.int32(0), run.replicated)
    state, totals, first = run.train_steps(3)(state, totals, images, labels, run.epoch_batches(1), first,
                                              run.keys()["train"], run.gammas())
    totals = jax.device_get(totals)
    assert int(first) == 3 and int(jax.device_get(state.step)[0]) == 3 and float(totals["steps"][0]) == 3
    mean_loss = float(totals["loss"][0]) / 3
    assert np.isfinite(mean_loss) and 1.0 < mean_loss < 3.0  # near log 10 at the start, not yet trained
