"""Section 7.2: MNIST, the PyTorch-example Dropout CNN with K = 128 continuous latent
dimensions, a K x 10 linear decoder and 12 dropout samples. Run with and without
zero-entropy noise (--config.model.noise=False)."""

from ibjax.config import default_config


def get_config():
    config = default_config()
    config.data.name = "mnist"
    config.data.source = "tfds"
    config.model.encoder = "dropout_cnn"
    config.model.latent_dim = 128
    config.model.noise = True
    config.model.decoder = "linear"
    config.model.num_samples = 12
    config.objective.regularizer = "none"
    config.train.num_epochs = 30
    # The live information plane every epoch: an epoch here is long against its cost
    # (benchmarks/RESULTS.md, "Live information plane").
    config.train.analyze_every = 1
    return config
