"""Section 7.1: Permutation-MNIST, MLP encoder 784-1024-1024-C with a categorical
latent of C = 100 categories and the over-parameterised decoder C-1024-1024-10.

Train with each objective in turn, 8 trials each as one seed population
(--config.population.num_seeds=8: seeds 0..7 in one compiled step, each trial a
complete run of its own in WORKDIR/memberNN_seedS):
  --config.objective.cross_entropy=decoder      (H_Θ[Y|Z])
  --config.objective.cross_entropy=prediction   (H_Θ[Y|X])
  --config.objective.loss=decoder_uncertainty   (H[Y|Z])
"""

from ibjax.config import default_config


def get_config():
    config = default_config()
    config.data.name = "permuted_mnist"
    config.data.source = "tfds"
    config.model.encoder = "mlp"
    config.model.encoder_hidden = (1024, 1024)
    config.model.latent = "categorical"
    config.model.latent_dim = 100
    config.model.noise = False
    config.model.decoder = "categorical_mlp"
    config.objective.regularizer = "none"
    config.train.num_epochs = 100
    return config
