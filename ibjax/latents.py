"""The kinds of latent Z: one object per kind, owning everything that differs between kinds.

``config.model.latent`` names a kind; with ``config.model.noise`` and the
encoder it resolves (:func:`of`) to one of five objects:

* :data:`CATEGORICAL` -- ``latent='categorical'``: p_Θ(z|x) over C codes, the
  decoder matrix p_Θ(ŷ|z), every quantity exact (sections 5, 7.1).
* :data:`GAUSSIAN_NOISE` -- ``latent='continuous'``, ``noise=True``, a
  deterministic encoder: Z = f(x) + ε with zero-entropy noise
  ε ~ N(0, 1/(2πe)) (section 6.1), so H[Z|X] = 0 exactly and H[Z], H[Z|Y]
  are Gaussian-mixture bounds.
* :data:`DETERMINISTIC` -- ``latent='continuous'``, ``noise=False``: Z = f(x),
  H[Z|X] = −∞ and I[X;Z] undefined; H[Z], H[Z|Y] by k-NN.
* :data:`DROPOUT` -- ``latent='continuous'`` with the Dropout encoder
  ('dropout_cnn'): Z is sampled through the Dropout masks (plus the noise,
  if any), and the analysis bounds it over sampled masks (section 7.2).
* :data:`VIB` -- ``latent='vib'``: the Gaussian encoder
  Z = μ(x) + σ(x) ⊙ ε of the Deep Variational IB baseline.

A kind decides how Z is sampled from the encoder's outputs
(:meth:`LatentKind.sample`), the objective and metrics of a train step
(:meth:`LatentKind.objective`, :meth:`LatentKind.metric_names`), which config
fields go with it (:meth:`LatentKind.validate`), whether entropy capping can
rewrite it (:attr:`LatentKind.cappable`) and which estimators the
information-plane analysis uses (:attr:`LatentKind.estimators`,
:attr:`LatentKind.h_z_given_x_method`). The model, the
train step, evaluation, the loop, config validation, capping and the
analysis ask the kind; no other module compares ``latent`` with a name.

Adding a kind: subclass :class:`LatentKind` (or :class:`ContinuousLatent` for
a real-valued Z the linear decoder reads), give it a new ``name``, and
:func:`register` an instance; ``config.model.latent=<name>`` then trains,
evaluates and analyses through the usual API.

Example:
  >>> model = dict(latent="continuous", noise=True, encoder="mlp")
  >>> of(model) is GAUSSIAN_NOISE, of(dict(model, noise=False)) is DETERMINISTIC
  (True, True)
  >>> of(dict(model, encoder="dropout_cnn")).label, of(dict(latent="vib")).has_scale
  ('Dropout-sampled', True)
  >>> names()[:3]
  ('continuous', 'categorical', 'vib')
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp

from ibjax import information, losses
from ibjax.defaults import default_config

__all__ = ["LatentKind", "ContinuousLatent", "CategoricalLatent", "VIBLatent", "CONTINUOUS", "CATEGORICAL", "GAUSSIAN_NOISE",
           "DETERMINISTIC", "DROPOUT", "VIB", "BUILTIN", "VIB_SCALE_SHIFT", "VIB_MIN_SCALE",
           "STOCHASTIC_ENCODERS", "of", "names", "register", "unregister", "categorical_terms"]

# VIB scale σ = softplus(s − 5) + 1e-6 of the encoder output s: the shift of
# Alemi et al. (2016) starts σ near softplus(−5) ≈ 0.0067, a nearly
# deterministic encoder; the floor keeps log σ finite where softplus underflows.
VIB_SCALE_SHIFT: float = 5.0
VIB_MIN_SCALE: float = 1e-6

#: Encoders with Dropout: p_Θ(z|x) is sampled through the Dropout masks.
STOCHASTIC_ENCODERS: tuple[str, ...] = ("dropout_cnn",)


def _field(model: Any, name: str) -> Any:
    value = model.get(name) if hasattr(model, "get") else getattr(model, name, None)
    if value is None:
        value = default_config().model[name]
    return value


def categorical_terms(out: Mapping[str, jax.Array], labels: jax.Array, where=None):
    """The Figure 3 terms of a categorical latent: per-example H_Θ[Y|Z] and H_Θ[Y|X], and p(z|x) ``[B, C]``."""
    dce = information.categorical_decoder_cross_entropy(out["z_log_probs"], out["decoder_log_probs"], labels, where)
    pce = losses.prediction_cross_entropy(out["logits"], labels, where)
    z_probs = jnp.mean(jnp.exp(out["z_log_probs"]), axis=0)
    return dce, pce, z_probs


class LatentKind:
    """What one kind of latent Z is: its sampling, objective, config fields, capping and analysis.

    Subclasses set the class attributes and override the methods that differ;
    the defaults describe a real-valued Z read by the decoder.

    Attributes:
      name: the value of ``config.model.latent`` that selects the kind.
      label: a short human name, for messages and plots.
      discrete: Z is categorical: the model returns ``z_log_probs`` and
        ``decoder_log_probs``, and evaluation accumulates the joint p(z, y)
        for the exact train-set quantities.
      cappable: entropy capping (section 7.2) can rescale Z in the encoder's
        last dense layer.
      has_scale: the encoder returns ``z_mean`` and ``z_scale`` of a Gaussian p(z|x).
      noise_refusal: why ``noise=True`` is not defined for the kind (None: it is).
      estimators: for each ``estimator`` of the analysis (``'mixture'``,
        ``'knn'``), the recipe of :data:`ibjax.analysis.RECIPES` that gives
        H[Z], H[Z|Y] and H[Z|X] of this kind.
      h_z_given_x_method: how the ``'knn'`` recipe obtains H[Z|X]: a key of
        :data:`ibjax.analysis.H_Z_GIVEN_X_METHODS` (``'exact_zero'``:
        zero-entropy noise, ``'exact_gaussian'``: from the encoder's scales,
        ``'undefined'``: no noise, H[Z|X] = −∞).
    """

    name: str = ""
    label: str = ""
    discrete: bool = False
    cappable: bool = False
    has_scale: bool = False
    noise_refusal: str | None = None
    estimators: Mapping[str, str] = {"mixture": "knn", "knn": "knn"}
    h_z_given_x_method: str = "undefined"

    def resolve(self, model: Any) -> LatentKind:
        """The kind a model with this ``latent`` name is, given its other fields (``noise``, ``encoder``)."""
        del model
        return self

    def check_model(self, model: Any) -> None:
        """Raises ``ValueError`` for an :class:`ibjax.models.IBModel` whose fields do not fit the kind."""
        if model.noise and self.noise_refusal:
            raise ValueError(self.noise_refusal)

    def config_error(self, config) -> str | None:
        """What in the objective's fields does not fit the kind (:func:`ibjax.config.validate` raises it), or None."""
        if config.objective.loss == "decoder_uncertainty":
            return ("config.objective.loss='decoder_uncertainty' is exact only for a categorical latent; "
                    "set config.model.latent='categorical' or use loss='cross_entropy'.")
        if config.objective.regularizer == "vib":
            return "config.objective.regularizer='vib' needs the Gaussian encoder of config.model.latent='vib'."
        return None

    def encoder_width(self, latent_dim: int) -> int:
        """How many outputs the encoder needs for a latent of ``latent_dim``."""
        return latent_dim

    def sample(self, module, outputs: jax.Array, decoder) -> dict[str, jax.Array]:
        """The model's outputs from the encoder's ``outputs`` ``[S, B, width]`` (float32), inside ``module``'s call.

        Random draws come from ``module.make_rng('noise')``; ``decoder`` is the
        bound decoder module. Returns at least ``logits`` ``[S, B, num_classes]``.
        """
        raise NotImplementedError(f"latent kind {self.name!r} does not define `sample`.")

    def objective(self, config, num_classes: int, out, labels, gamma, data_decoder=None):
        """One member's ``(loss, metrics)`` for the configured objective (see :func:`ibjax.step.objective`)."""
        settings = config.objective
        return losses.surrogate_loss(
            out["logits"], out["z"], labels,
            regularizer=settings.regularizer, gamma=gamma, num_classes=num_classes,
            cross_entropy=settings.cross_entropy, eps=settings.eps,
            z_mean=out.get("z_mean"), z_scale=out.get("z_scale"),
        )

    def metric_names(self) -> tuple[str, ...]:
        """Batch-mean metrics the kind's objective adds to those every step has."""
        return ()

    def point(self, out: Mapping[str, jax.Array], key: str = "z") -> jax.Array:
        """The latent the analysis reads from a one-sample forward pass: ``[B, K]``."""
        return out[key][0]

    def __repr__(self) -> str:
        return f"<latent kind {self.name!r}: {self.label}>"


class ContinuousLatent(LatentKind):
    """Real-valued Z = the encoder's K outputs, plus zero-entropy noise ε ~ N(0, 1/(2πe)) when ``noise``."""

    name = "continuous"
    label = "continuous"
    cappable = True

    def sample(self, module, outputs, decoder):
        z = outputs
        if module.noise:
            z = losses.add_zero_entropy_noise(module.make_rng("noise"), z)
        return {"z": z, "logits": decoder(z).astype(jnp.float32)}


class _ContinuousFamily(ContinuousLatent):
    """``latent='continuous'``: one of three kinds, by the encoder and ``noise``."""

    def resolve(self, model: Any) -> LatentKind:
        if _field(model, "encoder") in STOCHASTIC_ENCODERS:
            return DROPOUT
        return GAUSSIAN_NOISE if _field(model, "noise") else DETERMINISTIC


class _GaussianNoiseLatent(ContinuousLatent):
    label = "deterministic encoder + zero-entropy noise"
    # Z is a Gaussian mixture over the training points; Z|x is N(f(x), I/(2πe)), whose entropy is 0.
    estimators = {"mixture": "mixture", "knn": "knn"}
    h_z_given_x_method = "exact_zero"


class _DeterministicLatent(ContinuousLatent):
    label = "deterministic, no noise"


class _DropoutLatent(ContinuousLatent):
    label = "Dropout-sampled"
    # One definition of Z for every quantity, the train-mode latent, bounded over sampled masks.
    estimators = {"mixture": "dropout_mixture", "knn": "dropout_mixture"}


class VIBLatent(LatentKind):
    """Gaussian Z = μ(x) + σ(x) ⊙ ε of the Deep Variational IB (Alemi et al., 2016), ε ~ N(0, I).

    The encoder has 2K outputs s: the first K are μ(x), the last K give
    σ(x) = softplus(s − 5) + 1e-6 (:data:`VIB_SCALE_SHIFT`, :data:`VIB_MIN_SCALE`).
    Z is stochastic by definition, so it is sampled in train and eval mode alike.
    """

    name = "vib"
    label = "VIB Gaussian"
    has_scale = True
    noise_refusal = ("`noise=True` adds zero-entropy Gaussian noise, but `latent='vib'` already samples "
                     "Z = μ(x) + σ(x)·ε from its Gaussian encoder; set `noise=False`.")

    estimators = {"mixture": "mixture_diagonal", "knn": "knn"}
    h_z_given_x_method = "exact_gaussian"  # eval mode: Z|x is exactly N(μ(x), diag σ(x)²)

    def config_error(self, config) -> str | None:
        return super().config_error(config) if config.objective.loss == "decoder_uncertainty" else None

    def encoder_width(self, latent_dim: int) -> int:
        return 2 * latent_dim

    def sample(self, module, outputs, decoder):
        z_mean, raw_scale = jnp.split(outputs, 2, axis=-1)
        z_scale = jax.nn.softplus(raw_scale - VIB_SCALE_SHIFT) + VIB_MIN_SCALE
        epsilon = jax.random.normal(module.make_rng("noise"), z_mean.shape, jnp.float32)
        z = z_mean + z_scale * epsilon
        return {"z": z, "z_mean": z_mean, "z_scale": z_scale, "logits": decoder(z).astype(jnp.float32)}


class CategoricalLatent(LatentKind):
    """Categorical Z over C = ``latent_dim`` codes (section 7.1).

    The encoder's C outputs give log p_Θ(z|x) by a log-softmax; the decoder
    is evaluated once on eye(C) to give the decoder matrix log p_Θ(ŷ|z), and
    log p_Θ(ŷ|x) = logsumexp_z [log p_Θ(z|x) + log p_Θ(ŷ|z)]. The objective is
    H_Θ[Y|Z], H_Θ[Y|X] or the exact H[Y|Z] (``loss='decoder_uncertainty'``).
    """

    name = "categorical"
    label = "categorical"
    discrete = True
    noise_refusal = ("`noise=True` adds zero-entropy Gaussian noise to a continuous latent; "
                     "it is not defined for `latent='categorical'`.")

    estimators = {"mixture": "exact", "knn": "exact"}

    def config_error(self, config) -> str | None:
        if config.objective.regularizer != "none":
            return ("config.objective.regularizer acts on a continuous latent; use 'none' with "
                    "config.model.latent='categorical'.")
        return None

    def sample(self, module, outputs, decoder):
        z_log_probs = jax.nn.log_softmax(outputs, axis=-1)
        codes = jnp.eye(module.latent_dim, dtype=jnp.dtype(module.dtype))
        decoder_log_probs = jax.nn.log_softmax(decoder(codes).astype(jnp.float32), axis=-1)
        return {"z_log_probs": z_log_probs, "decoder_log_probs": decoder_log_probs,
                "logits": information.prediction_log_probs(z_log_probs, decoder_log_probs)}

    def objective(self, config, num_classes, out, labels, gamma, data_decoder=None):
        del gamma  # no regulariser on a categorical latent
        settings = config.objective
        dce, pce, z_probs = categorical_terms(out, labels)
        metrics = {
            "decoder_cross_entropy": jnp.mean(dce),
            "prediction_cross_entropy": jnp.mean(pce),
            "decoder_uncertainty": information.decoder_uncertainty(z_probs, labels, num_classes),
            "regularizer": jnp.zeros(()),
        }
        if settings.loss == "decoder_uncertainty" and data_decoder is not None:
            loss = jnp.mean(information.categorical_decoder_cross_entropy(
                out["z_log_probs"], jax.lax.stop_gradient(data_decoder), labels))
            metrics["data_decoder_uncertainty"] = loss
        elif settings.loss == "decoder_uncertainty":
            loss = metrics["decoder_uncertainty"]
        else:
            loss = metrics[f"{settings.cross_entropy}_cross_entropy"]
        metrics["loss"] = loss
        metrics["training_error_bound"] = losses.training_error_bound(loss)
        return loss, metrics

    def metric_names(self) -> tuple[str, ...]:
        return ("decoder_uncertainty",)

    def point(self, out, key="z"):
        del key
        return jnp.exp(out["z_log_probs"][0])  # p(z|x) [B, C]


CONTINUOUS = _ContinuousFamily()
GAUSSIAN_NOISE = _GaussianNoiseLatent()
DETERMINISTIC = _DeterministicLatent()
DROPOUT = _DropoutLatent()
VIB = VIBLatent()
CATEGORICAL = CategoricalLatent()

#: The names of the kinds ibjax ships, in the order error messages list them.
BUILTIN: tuple[str, ...] = ("continuous", "categorical", "vib")

_REGISTRY: dict[str, LatentKind] = {kind.name: kind for kind in (CONTINUOUS, CATEGORICAL, VIB)}


def names() -> tuple[str, ...]:
    """The valid values of ``config.model.latent``: the built-in kinds, then the registered ones."""
    return tuple(_REGISTRY)


def register(kind: LatentKind) -> LatentKind:
    """Makes ``kind`` selectable as ``config.model.latent=kind.name``; returns it.

    Raises:
      TypeError: ``kind`` is not a :class:`LatentKind` instance.
      ValueError: the name is empty or already taken.
    """
    if not isinstance(kind, LatentKind):
        raise TypeError(f"`kind` must be a LatentKind instance; got {type(kind).__name__}.")
    if not kind.name or not isinstance(kind.name, str):
        raise ValueError(f"`kind.name` must be a non-empty string; got {kind.name!r}.")
    if kind.name in _REGISTRY:
        raise ValueError(f"latent kind {kind.name!r} is already registered; the kinds are {list(names())}.")
    _REGISTRY[kind.name] = kind
    return kind


def unregister(name: str) -> None:
    """Removes a kind added with :func:`register` (the built-in kinds stay)."""
    if name in BUILTIN:
        raise ValueError(f"the built-in latent kind {name!r} cannot be removed.")
    if name not in _REGISTRY:
        raise ValueError(f"no latent kind {name!r} is registered; the kinds are {list(names())}.")
    del _REGISTRY[name]


def of(model: Any) -> LatentKind:
    """The kind of Z a model describes: ``config.model``, a mapping or an :class:`ibjax.models.IBModel`.

    Reads ``latent``, ``noise`` and ``encoder`` (fields left out take
    :func:`ibjax.config.default_config`'s values).

    Raises:
      ValueError: ``latent`` names no kind; the message lists the valid names.
    """
    name = _field(model, "latent")
    if name not in _REGISTRY:
        raise ValueError(f"`latent` must be one of {list(names())}; got {name!r}.")
    return _REGISTRY[name].resolve(model)
