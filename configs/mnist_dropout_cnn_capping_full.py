"""Section 7.2 / Figure 4 at the paper's data scale, offline: MNIST from the real
training set (60,000 images) and test set (10,000) in ../shared/data/mnist_full, the
standard split; otherwise mnist_dropout_cnn_capping_offline (Dropout CNN, K = 128,
linear decoder, 12 dropout samples, Adam 1e-3, the cap applied after every epoch along
the same schedule). The latent's moments for the cap come from 10,000 training images,
and the plateau test is the default one per 60,000 examples (= one epoch here).
Run with --config.model.noise=True and False. Run from the repository root.

On the 2-core CPU an epoch (469 steps) takes about 3 minutes, so the results page ran
the first 7 caps (--config.train.num_epochs=7, experiments/fig4_entropy_cap.sh with
CONFIG and EPOCHS set): with zero-entropy noise the training error right after the
cap rises from 0.2% at 0 nats to 0.9% at -100; without noise it stays at 0.1-0.2%
(experiments/README.md, section 7.2, "At the paper's data scale").
"""

from pathlib import Path

from ibjax.config import from_file


def get_config():
    config = from_file(Path(__file__).with_name("mnist_dropout_cnn_capping_offline.py"))
    config.data.path = "../shared/data/mnist_full"
    config.data.split_at = 0
    config.capping.num_examples = 10000
    config.train.plateau_examples = 60000
    return config
