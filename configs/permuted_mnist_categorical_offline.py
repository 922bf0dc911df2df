"""Section 7.1 at reduced scale, offline: Permutation-MNIST built from the 10,000
real MNIST test images in ../shared/data/mnist (first 8,000 train, last 2,000
test), otherwise as permuted_mnist_categorical (MLP 784-1024-1024-C, C = 100,
decoder C-1024-1024-10, Adam 1e-4). Run from the repository root."""

from pathlib import Path

from ibjax.config import from_file


def get_config():
    config = from_file(Path(__file__).with_name("permuted_mnist_categorical.py"))
    config.data.source = "idx"
    config.data.path = "../shared/data/mnist"
    config.data.split_at = 8000
    config.train.num_epochs = 30
    return config
