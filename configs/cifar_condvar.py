"""Section 7.3: CIFAR10, ResNet18, K = 100 with zero-entropy noise, linear decoder,
conditional log-variance regulariser log Var[Z|Y]. Sweep gamma from 1e-4 to 10
with --config.objective.gamma=...; the plateau test counts CIFAR10's 50,000-image epochs."""

from ibjax.config import default_config


def get_config():
    config = default_config()
    config.data.name = "cifar10"
    config.data.source = "tfds"
    config.data.augment = True
    config.model.encoder = "resnet18"
    config.model.latent_dim = 100
    config.model.noise = True
    config.model.decoder = "linear"
    config.model.num_samples = 1
    config.objective.regularizer = "cond_log_var"
    config.objective.gamma = 0.01
    config.train.num_epochs = 100
    config.train.batch_size = 128
    config.train.plateau_examples = 50000
    # The live information plane every epoch: an epoch here is long against its cost
    # (benchmarks/RESULTS.md, "Live information plane").
    config.train.analyze_every = 1
    return config
