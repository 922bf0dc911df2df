"""The default experiment config: the one home of every default value.

:func:`default_config` is the config every experiment starts from
(``configs/default.py`` returns it); :func:`value_or_default` reads a field of
a config that may be partial, falling back to it. This module imports nothing
of ibjax, so every module can read the defaults (:mod:`ibjax.config`
re-exports them).
"""

from __future__ import annotations

from typing import Any

__all__ = ["STEPS_PER_CALL", "ANALYZE_EVERY", "ANALYZE_EXAMPLES", "default_config", "value_or_default"]

#: The default of ``train.steps_per_call``, chosen by ``benchmarks/train_step.py --chunks``
#: (benchmarks/RESULTS.md): see there for the measurement.
STEPS_PER_CALL: int = 100

#: The defaults of ``train.analyze_every`` and ``train.analyze_examples`` (the live information
#: plane), chosen by ``benchmarks/live_plane.py`` (benchmarks/RESULTS.md) to cost <= 10% of an epoch.
ANALYZE_EVERY: int = 20
ANALYZE_EXAMPLES: int = 1000


def _at(config, field: str) -> Any:
    node = config
    for part in field.split("."):
        node = node[part]
    return node


def value_or_default(config, field: str) -> Any:
    """``config``'s value of the dotted ``field``, or :func:`default_config`'s where ``config`` lacks it.

    The one home of the defaults: code that reads a config which may be
    partial (a model section on its own, a hand-built config) asks here
    instead of writing a fallback of its own.

    Example:
      >>> import ml_collections
      >>> value_or_default(ml_collections.ConfigDict({"train": {"batch_size": 32}}), "train.batch_size")
      32
      >>> value_or_default(ml_collections.ConfigDict({"train": {}}), "train.plateau_examples")
      60000
    """
    node = config
    for part in field.split("."):
        node = node.get(part) if hasattr(node, "get") else None
        if node is None:
            return _at(default_config(), field)
    return node


def default_config():
    """The default experiment config; ``configs/default.py`` returns it.

    It lives in the package so that every config file, loaded by path, can
    start from it with a plain import.
    """
    import ml_collections as mlc

    config = mlc.ConfigDict()
    config.seed = 0
    config.dtype = "float32"          # or "bfloat16": bf16 compute, float32 params and losses
    config.distributed = False        # call jax.distributed.initialize() (multi-host)

    config.data = mlc.ConfigDict()
    config.data.name = "digits"       # digits | mnist | permuted_mnist | cifar10
    config.data.source = "embedded"   # embedded | tfds | idx | npz | cifar_pickle | cifar_binary
    config.data.path = ""             # IDX directory, .npz file or CIFAR-10 archive/folder (offline sources)
    config.data.url_checksums = ""    # tfds without TensorFlow: a table replacing tfds's url_checksums (mirror)
    config.data.split_at = 0          # > 0: re-split train+test at this index
    config.data.permutation_seed = 0  # pixel permutation of permuted_mnist
    config.data.augment = False       # CIFAR pad-4 random crop + flip, on device
    config.data.num_train = 0         # > 0: train on the first num_train training examples only

    config.model = mlc.ConfigDict()
    config.model.encoder = "mlp"      # mlp | dropout_cnn | resnet18
    config.model.encoder_hidden = (1024, 1024)
    config.model.latent_dim = 100     # K (continuous) or C (categorical)
    config.model.latent = "continuous"
    config.model.noise = True         # zero-entropy noise N(0, 1/(2 pi e)) on Z
    config.model.decoder = "linear"   # linear | categorical_mlp
    config.model.decoder_hidden = (1024, 1024)
    config.model.num_samples = 1      # S dropout / noise samples per example
    # flax: lecun-normal kernels, zero biases. pytorch: nn.Linear/nn.Conv2d's defaults,
    # U(±1/sqrt(fan_in)) for kernel and bias, as the paper (PyTorch) had them.
    config.model.init = "flax"

    config.objective = mlc.ConfigDict()
    config.objective.loss = "cross_entropy"      # cross_entropy | decoder_uncertainty
    config.objective.cross_entropy = "decoder"   # decoder (H_Θ[Y|Z]) | prediction (H_Θ[Y|X])
    config.objective.regularizer = "none"        # none | l2 | log_var | cond_log_var
    config.objective.gamma = 0.0
    config.objective.eps = 1e-8                  # variance floor of the log-variance regularisers
    # loss='decoder_uncertainty': p(y|z) of the batch (plug-in, biased low for many categories)
    # or of the whole training set, re-estimated after every epoch (appendix A.3).
    config.objective.joint = "batch"             # batch | epoch

    # Section 7: Adam, lr 1e-4, x0.8 once the training loss has not improved for more than 3 epochs.
    # The plateau test's "epoch" is plateau_examples examples (the paper's 60,000-image MNIST
    # epoch, whatever the size of the training set at hand); 0: one epoch of the training set.
    config.train = mlc.ConfigDict()
    config.train.num_epochs = 30
    config.train.batch_size = 128
    config.train.eval_batch_size = 512
    config.train.learning_rate = 1e-4
    config.train.plateau_factor = 0.8
    config.train.plateau_patience = 3
    config.train.plateau_examples = 60000
    config.train.progress_bar = True
    # Steps per compiled call (lax.scan; 0: the whole epoch), not part of a run's identity;
    # the calls share an epoch evenly (CPU convolutional encoders: 1, see Experiment.steps_per_call).
    config.train.steps_per_call = STEPS_PER_CALL
    config.train.tensorboard = True   # per-epoch scalars as TensorBoard event files beside metrics.jsonl
    # Live information plane every analyze_every epochs (0: off) on analyze_examples examples (0: all).
    config.train.analyze_every = ANALYZE_EVERY
    config.train.analyze_examples = ANALYZE_EXAMPLES

    # A population trains its members in one vmapped step: one per (gamma, seed) of
    # gammas x (seed, seed + 1, ..., seed + num_seeds - 1). Empty gammas: objective.gamma;
    # num_seeds 0 or 1: config.seed alone. A single run is a population of one.
    config.population = mlc.ConfigDict()
    config.population.gammas = ()
    config.population.num_seeds = 0

    # Section 7.2 (Fig 4): after epoch e, rescale the noise-free latent to a mean-field entropy bound
    # of schedule[e - 1] nats (later epochs keep the last cap), compensated in the decoder. Empty: off.
    config.capping = mlc.ConfigDict()
    config.capping.schedule = ()
    config.capping.num_examples = 10000   # training examples for the latent moments (0: all)

    config.checkpoint = mlc.ConfigDict()
    config.checkpoint.every_epochs = 1
    config.checkpoint.max_to_keep = 0            # 0 keeps all: the analysis reads every epoch
    return config
