"""Section 7.1 on CIFAR10: ResNet18 encoder with a categorical latent of C = 100
categories and the over-parameterised decoder C-1024-1024-10 (data and training
as cifar_condvar)."""

from pathlib import Path

from ibjax.config import from_file


def get_config():
    config = from_file(Path(__file__).with_name("cifar_condvar.py"))
    config.model.latent = "categorical"
    config.model.noise = False
    config.model.decoder = "categorical_mlp"
    config.objective.regularizer = "none"
    config.objective.gamma = 0.0
    return config
