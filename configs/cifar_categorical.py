"""Section 7.1 on CIFAR10: ResNet18 encoder with a categorical latent of C = 100
categories and the over-parameterised decoder C-1024-1024-10."""

from ibjax.config import default_config


def get_config():
    config = default_config()
    config.data.name = "cifar10"
    config.data.source = "tfds"
    config.data.augment = True
    config.model.encoder = "resnet18"
    config.model.latent = "categorical"
    config.model.latent_dim = 100
    config.model.noise = False
    config.model.decoder = "categorical_mlp"
    config.objective.regularizer = "none"
    config.train.num_epochs = 100
    return config
