"""The Deep Variational Information Bottleneck baseline (Alemi et al. 2016) on the
embedded digits: as digits_condvar, but the encoder outputs a mean and a softplus
scale, Z is sampled by reparameterisation and the regulariser is
KL(p(z|x) || N(0, I)) (appendix A.7 relates it to E||Z||^2)."""

from pathlib import Path

from ibjax.config import from_file


def get_config():
    config = from_file(Path(__file__).with_name("digits_condvar.py"))
    config.model.latent = "vib"
    config.model.noise = False
    config.objective.regularizer = "vib"
    return config
