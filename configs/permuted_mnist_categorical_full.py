"""Section 7.1 at the paper's data scale, offline: Permutation-MNIST built from the
real MNIST training set (60,000 images) and test set (10,000) in
../shared/data/mnist_full, the standard split, in the paper's setup throughout
(permuted_mnist_categorical: MLP 784-1024-1024-C, C = 100, decoder C-1024-1024-10,
PyTorch's initialisation, Adam 1e-4, x0.8 after the plateau test per 60,000
examples, batch 128, 100 epochs = 46,900 steps). Run from the repository root.

Measured on the 2-core CPU (experiments/README.md, section 7.1, "At the
paper's data scale", made with experiments/fig3_full_mnist.sh), decoder
cross-entropy, 100 epochs, 4 trials: seeds 0 and 2 reach 0.982 and 0.984 test
accuracy (>= 0.98 from epochs 71 and 52, every class apart); seeds 1 and 3
stay at 0.895 and 0.896 with one class merged; median 0.939. Plain PyTorch
(experiments/fig3_torch.py, seeds 0 and 1) stalls the same way at 0.896 and
0.799. The paper's ~98% is reached at 1e-4 on this data in half the trials.
Prediction cross-entropy: 0.408, 0.409 after 50 epochs; decoder uncertainty
(loss=decoder_uncertainty): 0.977, 0.973.

The smallest change measured to reach ~98% in every trial is the learning rate:

    python scripts/train.py --config configs/permuted_mnist_categorical_full.py \
        --config.train.learning_rate=3e-4 --config.train.num_epochs=50

gives 0.986, 0.984, 0.983, 0.985 (4 seeds, >= 0.98 from epochs 13-17, every
class apart).
"""

from pathlib import Path

from ibjax.config import from_file


def get_config():
    config = from_file(Path(__file__).with_name("permuted_mnist_categorical.py"))
    config.data.source = "idx"
    config.data.path = "../shared/data/mnist_full"
    return config
