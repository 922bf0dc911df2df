"""Surrogate information-bottleneck objectives as pure functions of arrays.

Kirsch, Lyle & Gal, "Unpacking Information Bottlenecks" (sections 5 and 6)
show that the IB and DIB objectives reduce to

    min  H[Y|Z]  +  regulariser on H[Z|Y]  (or I[X;Z|Y]),

that the Decoder Cross-Entropy H_Θ[Y|Z] upper-bounds the Decoder Uncertainty
H[Y|Z], and that E||Z||², log Var[Z] and log Var[Z|Y] are cheap surrogates for
the regulariser once zero-entropy noise has been added to a continuous latent.
The Deep Variational IB of Alemi et al. (2016) is here as a baseline: its
regulariser KL(p(z|x) || N(0, I)) = ½ E||Z||² − H[Z|X] + const (appendix A.7)
for an encoder that outputs the mean and scale of a Gaussian p(z|x).

Every function here is a pure function of arrays with static Python options,
so it works unchanged under ``jax.jit``, ``jax.grad``, ``jax.vmap`` and
``jax.pmap``. All values are in nats.

Conventions
-----------
* ``logits``: ``[S, B, C]`` with S stochastic samples (dropout masks or noise
  draws) on the leading axis, or ``[B, C]`` for S = 1.
* ``labels``: integer class indices ``[B]``.
* ``z``: latent ``[B, K]`` or ``[S, B, K]``; samples are folded into the batch.
* ``z_mean``, ``z_scale``: mean μ and standard deviation σ > 0 of a Gaussian
  encoder p(z|x) = N(μ(x), diag σ(x)²), shaped like ``z``.
* ``where``: optional boolean ``[B]``; ``False`` marks padding, left out of
  every statistic.
* ``axis_name``: optional name of a mapped axis (``pmap``/``shard_map``). Batch
  statistics (counts, sums, sums of squares) are ``psum``-ed over it first, so
  the value on each shard equals the value on the global batch.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np

from ibjax import _checks

__all__ = [
    "ZERO_ENTROPY_STD",
    "REGULARIZERS",
    "CROSS_ENTROPIES",
    "add_zero_entropy_noise",
    "decoder_cross_entropy",
    "prediction_cross_entropy",
    "activation_l2",
    "log_variance",
    "conditional_log_variance",
    "kl_to_standard_normal",
    "surrogate_loss",
    "training_error_bound",
]

#: Standard deviation of zero-entropy Gaussian noise: N(0, 1/(2πe)) has
#: differential entropy ½ log(2πe σ²) = 0 nats (section 6.1).
ZERO_ENTROPY_STD: float = (2.0 * math.pi * math.e) ** -0.5

#: Valid ``regularizer`` names for :func:`surrogate_loss` (Observation 8).
REGULARIZERS: tuple[str, ...] = ("none", "l2", "log_var", "cond_log_var", "vib")

#: Valid ``cross_entropy`` names for :func:`surrogate_loss`.
CROSS_ENTROPIES: tuple[str, ...] = ("decoder", "prediction")

_LOG_2PIE = math.log(2.0 * math.pi * math.e)
_F32_TINY = float(np.finfo(np.float32).tiny)


def _as_samples(logits: jax.Array) -> jax.Array:
    logits = _checks.check_float(logits, "logits")
    if logits.ndim == 2:
        return logits[None]
    if logits.ndim == 3 and logits.shape[0]:
        return logits
    raise ValueError(f"`logits` must be [B, C] or [S, B, C] with S >= 1; got shape {logits.shape}.")


def _latent_samples(z: jax.Array) -> jax.Array:
    z = _checks.check_float(z, "z")
    if z.ndim == 2:
        return z[None]
    if z.ndim == 3 and z.shape[0]:
        return z
    raise ValueError(f"`z` must be [B, K] or [S, B, K] with S >= 1; got shape {z.shape}.")


def _check_overflow(value: jax.Array, what: str, cause: str) -> jax.Array:
    """``value``, or a ValueError if it is concrete and ±inf: finite inputs whose exact
    result exceeds float32 (~3.4e38). Traced values pass: under ``jit`` the inf
    reaches the caller (the training loop's non-finite guard stops on it)."""
    if _checks.is_concrete(value) and np.any(np.isinf(np.asarray(value))):
        raise ValueError(f"{what} overflows float32 (max ~3.4e38): {cause}.")
    return value


def _label_log_likelihoods(logits: jax.Array, labels: jax.Array) -> jax.Array:
    """log softmax(logits_s)[label_b] as ``[S, B]``; NaN for out-of-range labels.

    Out-of-range labels cannot be caught at trace time; a NaN makes them loud
    instead of silently scoring the example against no class.
    """
    num_classes = logits.shape[-1]
    log_probs = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
    safe = jnp.clip(labels, 0, num_classes - 1)
    picked = jnp.take_along_axis(log_probs, safe[None, :, None], axis=-1)[..., 0]
    valid = (labels >= 0) & (labels < num_classes)
    return jnp.where(valid[None, :], picked, jnp.nan)


# --------------------------------------------------------------------------
# Zero-entropy noise (section 6.1)
# --------------------------------------------------------------------------


def add_zero_entropy_noise(rng: jax.Array, z: jax.Array) -> jax.Array:
    """Adds zero-entropy Gaussian noise to a continuous latent.

    .. math::
        Z = \\hat Z + \\epsilon, \\quad \\epsilon \\sim \\mathcal N(0, 1/(2\\pi e))

    Each noise dimension has differential entropy ½ log(2πe · 1/(2πe)) = 0, so
    H[Z] ≥ H[ε] = 0 and the information quantities of a continuous latent are
    non-negative (section 6.1, appendix A.5).

    Args:
      rng: a ``jax.random`` key.
      z: latent of any shape, floating point.

    Returns:
      ``z + eps`` with the shape and dtype of ``z``.

    Example:
      >>> import jax, jax.numpy as jnp
      >>> z = add_zero_entropy_noise(jax.random.key(0), jnp.zeros((4, 3)))
      >>> z.shape
      (4, 3)
    """
    z = _checks.check_float(z, "z")
    return z + ZERO_ENTROPY_STD * jax.random.normal(rng, z.shape, z.dtype)


# --------------------------------------------------------------------------
# Cross-entropies (section 5)
# --------------------------------------------------------------------------


def decoder_cross_entropy(
    logits: jax.Array, labels: jax.Array, where: jax.Array | None = None
) -> jax.Array:
    """Per-example Decoder Cross-Entropy H_Θ[Y|Z].

    .. math::
        H_\\Theta[Y|Z]_b = \\frac1S \\sum_{s=1}^S -\\log \\mathrm{softmax}(\\ell_{s,b})[y_b]

    The average over S samples z_s ~ p_Θ(z|x_b) of the decoder's negative
    log-likelihood. One sample is already an unbiased estimator (sections
    5.2–5.3), which is why dropout training minimises the Decoder Uncertainty.

    Args:
      logits: ``[S, B, C]`` decoder logits for S stochastic samples, or ``[B, C]``.
      labels: ``[B]`` integer labels in ``[0, C)``.
      where: optional ``[B]`` boolean mask; masked examples return 0.

    Returns:
      ``[B]`` per-example values in nats (float32).

    Example:
      >>> import jax.numpy as jnp
      >>> float(decoder_cross_entropy(jnp.zeros((2, 4)), jnp.array([0, 3]))[0])  # log 4
      1.386...
    """
    logits = _as_samples(logits)
    labels = _checks.check_labels(labels, logits.shape[1], logits.shape[2])
    where = _checks.check_where(where, logits.shape[1])
    values = -jnp.mean(_label_log_likelihoods(logits, labels), axis=0)
    return jnp.where(where, values, 0.0)


def prediction_cross_entropy(
    logits: jax.Array, labels: jax.Array, where: jax.Array | None = None
) -> jax.Array:
    """Per-example Prediction Cross-Entropy H_Θ[Y|X].

    .. math::
        H_\\Theta[Y|X]_b = -\\log \\frac1S \\sum_{s=1}^S \\mathrm{softmax}(\\ell_{s,b})[y_b]

    The negative log-likelihood of the sample-averaged prediction
    p_Θ(ŷ|x) ≈ (1/S) Σ_s p_Θ(ŷ|z_s), computed with ``logsumexp``. By Jensen's
    inequality it is never larger than :func:`decoder_cross_entropy`, with
    equality for S = 1 (Observation 2).

    Args:
      logits: ``[S, B, C]`` or ``[B, C]``.
      labels: ``[B]`` integer labels in ``[0, C)``.
      where: optional ``[B]`` boolean mask; masked examples return 0.

    Returns:
      ``[B]`` per-example values in nats (float32).
    """
    logits = _as_samples(logits)
    labels = _checks.check_labels(labels, logits.shape[1], logits.shape[2])
    where = _checks.check_where(where, logits.shape[1])
    log_lik = _label_log_likelihoods(logits, labels)
    num_samples = logits.shape[0]
    values = math.log(num_samples) - jax.nn.logsumexp(log_lik, axis=0)
    return jnp.where(where, values, 0.0)


def training_error_bound(cross_entropy: jax.Array) -> jax.Array:
    """Upper bound on the training error from a cross-entropy (Observation 3).

    .. math::
        p(\\hat Y \\text{ is wrong}) \\le 1 - e^{-H_\\Theta[Y|Z]}

    Args:
      cross_entropy: a (mean) Decoder or Prediction Cross-Entropy in nats.

    Returns:
      The bound, elementwise, in [0, 1]; NaN stays NaN.
    """
    cross_entropy = _checks.check_float(cross_entropy, "cross_entropy")
    # A cross-entropy is >= 0, but rounding makes a Prediction Cross-Entropy
    # near 0 come out as -1e-7 at times; a negative input must not give a
    # negative (or, for -1e30, infinite) bound.
    return -jnp.expm1(-jnp.maximum(cross_entropy, 0.0))


# --------------------------------------------------------------------------
# Surrogate regularisers (section 6.2)
# --------------------------------------------------------------------------


def _fold_samples(z: jax.Array, where: jax.Array | None):
    """``[S, B, K]`` latent and ``[B]`` mask -> ``[S*B, K]`` and ``[S*B]`` weights.

    Padding rows come back as 0, so whatever they held (inf, NaN) cannot reach
    a statistic through 0 · inf.
    """
    z = _latent_samples(z)
    num_samples, batch, features = z.shape
    weights = jnp.broadcast_to(_checks.check_where(where, batch), (num_samples, batch)).reshape(-1)
    flat = z.reshape(num_samples * batch, features).astype(jnp.float32)
    return jnp.where(weights[:, None], flat, 0.0), weights


def _deviation_scale(largest: jax.Array, axis_name: str | None) -> jax.Array:
    """The largest |deviation from the mean| over the global batch; 1 where there is none."""
    # A constant: the log-variance does not depend on it, so neither does its gradient.
    largest = jax.lax.stop_gradient(_checks.pmax(largest, axis_name))
    return jnp.where(largest > 0, largest, 1.0)


def _gaussian_entropy_bound(squares: jax.Array, count: jax.Array, scale: jax.Array, eps: float) -> jax.Array:
    """Σ_i ½ log(2πe (Var_i + eps)) over the last axis, Var_i = scale_i² squares_i / (count − 1).

    ``squares`` sums (deviation / scale)², so nothing overflows for latents
    beyond √(float32 max) ≈ 1.8e19; where scale > 1 the log is taken as
    2 log scale + log(v + eps / scale²). Both branches stay finite, and so do
    their gradients.
    """
    v = squares / jnp.maximum(count - 1.0, 1.0)
    big = scale > 1.0
    s_big, s_small = jnp.where(big, scale, 1.0), jnp.where(big, 1.0, scale)
    log_var = jnp.where(big, 2.0 * jnp.log(s_big) + jnp.log(v + eps / s_big**2), jnp.log(s_small**2 * v + eps))
    return 0.5 * jnp.sum(_LOG_2PIE + log_var, axis=-1)


def activation_l2(
    z: jax.Array, where: jax.Array | None = None, axis_name: str | None = None
) -> jax.Array:
    """Activation L2 regulariser E||Z||² (section 6.2, appendix A.7).

    .. math::
        \\mathbb E\\,\\|Z\\|^2 = \\frac1N \\sum_{n} \\sum_i z_{n,i}^2

    Bounding E||Z||² ≤ C' bounds H[Z|Y] ≤ H[Z] ≤ ½ K log(2πe C'/K); it is, up to
    the Encoding Uncertainty, the regulariser of the Deep Variational IB.

    Args:
      z: ``[B, K]`` or ``[S, B, K]`` latent; samples count as examples.
      where: optional ``[B]`` boolean mask of real examples.
      axis_name: optional mapped axis to reduce over (global batch).

    Returns:
      Scalar mean squared norm (0 for an empty batch).

    Raises:
      ValueError: if a concrete result exceeds float32 (``z`` beyond ~1e19);
        under ``jit`` it is inf instead.
    """
    flat, weights = _fold_samples(z, where)
    total = _checks.psum(jnp.sum(weights * jnp.sum(flat**2, axis=-1)), axis_name)
    count = _checks.psum(jnp.sum(weights.astype(jnp.float32)), axis_name)
    return _check_overflow(total / jnp.maximum(count, 1.0), "E||Z||^2", "`z` holds values beyond ~1e19")


def log_variance(
    z: jax.Array,
    where: jax.Array | None = None,
    axis_name: str | None = None,
    eps: float = 1e-8,
) -> jax.Array:
    """Log-variance regulariser, the mean-field Gaussian bound on H[Z] (Observation 8).

    .. math::
        \\sum_i \\tfrac12 \\log\\big(2\\pi e\\,(\\widehat{\\mathrm{Var}}[Z_i] + \\epsilon)\\big)

    with the unbiased (ddof = 1) sample variance over the batch and sample
    axes. Computed in two passes (mean, then centred squares) so that a latent
    with a large mean and a small spread keeps its precision; the deviations
    are divided by the largest one before squaring, so that latents beyond
    ~1e19 give their finite log-variance rather than inf.

    Args:
      z: ``[B, K]`` or ``[S, B, K]`` latent.
      where: optional ``[B]`` boolean mask of real examples.
      axis_name: optional mapped axis to reduce over (global batch).
      eps: added to each variance so a collapsed dimension stays finite.

    Returns:
      Scalar in nats. With fewer than 2 points the variance is taken as 0.
    """
    flat, weights = _fold_samples(z, where)
    w = weights.astype(jnp.float32)[:, None]
    count = _checks.psum(jnp.sum(w), axis_name)
    mean = _checks.psum(jnp.sum(w * flat, axis=0), axis_name) / jnp.maximum(count, 1.0)
    centred = w * (flat - mean)
    scale = _deviation_scale(jnp.max(jnp.abs(centred), axis=0, initial=0.0), axis_name)
    squares = _checks.psum(jnp.sum((centred / scale) ** 2, axis=0), axis_name)
    return _gaussian_entropy_bound(squares, count, scale, eps)


def conditional_log_variance(
    z: jax.Array,
    labels: jax.Array,
    num_classes: int,
    where: jax.Array | None = None,
    axis_name: str | None = None,
    eps: float = 1e-8,
) -> jax.Array:
    """Conditional log-variance regulariser, the bound on H[Z|Y] (Observation 7).

    .. math::
        \\sum_y \\hat p(y) \\sum_i \\tfrac12 \\log\\big(2\\pi e\\,(\\widehat{\\mathrm{Var}}[Z_i|y] + \\epsilon)\\big)

    p̂(y) is the batch frequency of class y and Var[Z_i|y] the unbiased
    within-class sample variance. Classes with fewer than 2 points in the batch
    have no variance; they are left out and p̂(y) is renormalised over the rest
    (0 when no class qualifies). Per-class statistics come from one-hot matrix
    products, so one compiled function serves every label mix.

    Args:
      z: ``[B, K]`` or ``[S, B, K]`` latent.
      labels: ``[B]`` integer labels in ``[0, num_classes)``.
      num_classes: number of classes (static).
      where: optional ``[B]`` boolean mask of real examples.
      axis_name: optional mapped axis to reduce over (global batch).
      eps: added to each variance so a collapsed dimension stays finite.

    Returns:
      Scalar in nats.

    Reference:
      Kirsch, Lyle & Gal, "Unpacking Information Bottlenecks", section 6.2.
    """
    if not isinstance(num_classes, (int, np.integer)) or num_classes < 1:
        raise ValueError(f"`num_classes` must be a positive Python int; got {num_classes!r}.")
    flat, weights = _fold_samples(z, where)
    num_samples = _latent_samples(z).shape[0]
    labels = _checks.check_labels(labels, flat.shape[0] // num_samples, num_classes)
    labels = jnp.tile(labels, num_samples)
    one_hot = jax.nn.one_hot(labels, num_classes, dtype=jnp.float32) * weights[:, None]
    counts = _checks.psum(jnp.sum(one_hot, axis=0), axis_name)                       # [C]
    sums = _checks.psum(one_hot.T @ flat, axis_name)                                # [C, K]
    means = sums / jnp.maximum(counts, 1.0)[:, None]
    centred = flat - one_hot @ means                       # masked rows are 0 (or ignored below)
    scale = _deviation_scale(jax.ops.segment_max(jnp.abs(centred), labels, num_classes), axis_name)
    scaled = centred / jnp.take(scale, labels, axis=0, mode="clip")
    squares = _checks.psum(one_hot.T @ scaled**2, axis_name)                        # [C, K]
    usable = jnp.where(counts >= 2.0, counts, 0.0)
    p_y = usable / jnp.maximum(jnp.sum(usable), 1.0)
    return jnp.sum(p_y * _gaussian_entropy_bound(squares, counts[:, None], scale, eps))


def _gaussian_encoder(mean: jax.Array, scale: jax.Array, names=("mean", "scale")):
    """Checks μ and σ of p(z|x) and returns both as ``[S, B, K]``."""
    mean, scale = _checks.check_float(mean, names[0]), _checks.check_float(scale, names[1])
    if mean.ndim not in (2, 3):
        raise ValueError(f"`{names[0]}` must be [B, K] or [S, B, K]; got shape {mean.shape}.")
    if scale.shape != mean.shape:
        raise ValueError(f"`{names[1]}` {scale.shape} must have the shape of `{names[0]}` {mean.shape}.")
    if mean.ndim == 2:
        return mean[None], scale[None]
    return mean, scale


def kl_to_standard_normal(
    mean: jax.Array,
    scale: jax.Array,
    where: jax.Array | None = None,
    axis_name: str | None = None,
) -> jax.Array:
    """Deep Variational IB regulariser KL(p(z|x) ‖ N(0, I)) (Alemi et al., 2016).

    .. math::
        \\frac1N \\sum_n \\tfrac12 \\sum_i
        \\big(\\sigma_{n,i}^2 + \\mu_{n,i}^2 - 1 - 2 \\log \\sigma_{n,i}\\big)

    the closed-form KL divergence of a diagonal Gaussian encoder
    p(z|x_n) = N(μ_n, diag σ_n²) from the standard normal, averaged over the
    N examples (samples count as examples, as in :func:`activation_l2`).
    Per example it is ½ E[||Z||² | x] + (K/2) log 2π − H[Z|x], so the mean is
    ½ E||Z||² − H[Z|X] + const (appendix A.7): half the activation L2
    regulariser minus the Encoding Uncertainty H[Z|X].

    Args:
      mean: ``[B, K]`` or ``[S, B, K]`` encoder means μ.
      scale: encoder standard deviations σ > 0, shaped like ``mean``.
      where: optional ``[B]`` boolean mask of real examples; masked entries
        may hold anything (even σ = 0) without affecting value or gradient.
      axis_name: optional mapped axis to reduce over (global batch).

    Returns:
      Scalar mean KL in nats (0 for an empty batch).

    Raises:
      ValueError: for mismatched shapes, a concrete σ ≤ 0 (or below float32's
        smallest normal, 1.2e-38) on a real example, or a concrete result
        beyond float32 (μ or σ beyond ~1e19).

    Reference:
      Alemi, Fischer, Dillon & Murphy, "Deep Variational Information
      Bottleneck", ICLR 2017 (arXiv:1612.00410).

    Example:
      >>> import jax.numpy as jnp
      >>> float(kl_to_standard_normal(jnp.ones((2, 1)), jnp.ones((2, 1))))  # ½ μ²
      0.5
    """
    mean, scale = _gaussian_encoder(mean, scale)
    mask = _checks.check_where(where, mean.shape[1])
    keep = jnp.broadcast_to(mask[None, :, None], mean.shape)
    if _checks.is_concrete(scale) and _checks.is_concrete(keep) and scale.size:
        real = np.asarray(scale, np.float32)[np.asarray(keep)]
        # XLA flushes float32 subnormals to 0, which would make log σ = -inf.
        if real.size and not np.all(real >= _F32_TINY):
            raise ValueError(
                f"`scale` must be > 0 on every real example, and at least {_F32_TINY:.4g} (float32's "
                f"smallest normal number; smaller ones flush to 0); got minimum {real.min()}."
            )
    # Padding is replaced by N(0, 1), whose KL is 0, so that neither its value
    # nor its gradient (log 0, 0 · inf) can leak into the mean.
    mu = jnp.where(keep, mean.astype(jnp.float32), 0.0)
    log_sigma = jnp.log(jnp.where(keep, scale.astype(jnp.float32), 1.0))
    # σ² − 1 − 2 log σ as expm1(2 log σ) − 2 log σ: no cancellation near σ = 1.
    per_example = 0.5 * jnp.sum(mu**2 + jnp.expm1(2.0 * log_sigma) - 2.0 * log_sigma, axis=-1)
    w = jnp.broadcast_to(mask[None, :], mean.shape[:2]).astype(jnp.float32)
    total = _checks.psum(jnp.sum(w * per_example), axis_name)
    count = _checks.psum(jnp.sum(w), axis_name)
    return _check_overflow(total / jnp.maximum(count, 1.0), "KL", "`mean` or `scale` holds values beyond ~1e19")


# --------------------------------------------------------------------------
# The surrogate objectives (Observation 8)
# --------------------------------------------------------------------------


def _masked_mean(values, where, axis_name):
    w = where.astype(jnp.float32)
    total = _checks.psum(jnp.sum(values * w), axis_name)
    return total / jnp.maximum(_checks.psum(jnp.sum(w), axis_name), 1.0)


def surrogate_loss(
    logits: jax.Array,
    z: jax.Array,
    labels: jax.Array,
    *,
    regularizer: str,
    gamma: float | jax.Array,
    num_classes: int,
    cross_entropy: str = "decoder",
    where: jax.Array | None = None,
    axis_name: str | None = None,
    eps: float = 1e-8,
    z_mean: jax.Array | None = None,
    z_scale: jax.Array | None = None,
) -> tuple[jax.Array, dict[str, jax.Array]]:
    """A surrogate IB objective: cross-entropy + γ · regulariser (Observation 8).

    .. math::
        \\min\\; H_\\Theta[Y|Z] + \\gamma\\, R(Z), \\qquad
        R \\in \\{0,\\; \\mathbb E\\|Z\\|^2,\\; \\log\\mathrm{Var}[Z],\\; \\log\\mathrm{Var}[Z|Y],\\;
        D_{KL}(p(z|x) \\| \\mathcal N(0, I))\\}

    Args:
      logits: ``[S, B, C]`` or ``[B, C]`` decoder logits.
      z: ``[S, B, K]`` or ``[B, K]`` latent the logits were decoded from (with
        its zero-entropy noise, if any).
      labels: ``[B]`` integer labels.
      regularizer: one of ``"none"``, ``"l2"``, ``"log_var"``, ``"cond_log_var"``,
        ``"vib"`` (the Deep Variational IB baseline, :func:`kl_to_standard_normal`).
      gamma: regularisation strength γ ≥ 0; may be a traced scalar (e.g. under
        ``vmap`` over a population of γ values).
      num_classes: number of label classes (static).
      cross_entropy: ``"decoder"`` (H_Θ[Y|Z], the mean of per-sample NLLs) or
        ``"prediction"`` (H_Θ[Y|X], the NLL of the sample-mean prediction).
      where: optional ``[B]`` boolean mask of real examples.
      axis_name: optional mapped axis to reduce over (global batch).
      eps: variance floor of the log-variance regularisers.
      z_mean: mean μ of the Gaussian encoder p(z|x), shaped like ``z``;
        required by ``"vib"`` and ignored by the other regularisers.
      z_scale: its standard deviation σ > 0, shaped like ``z``; required by
        ``"vib"`` and ignored by the other regularisers.

    Returns:
      ``(loss, metrics)``: the scalar objective, and a dict with the batch means
      ``decoder_cross_entropy``, ``prediction_cross_entropy``, ``regularizer``,
      ``training_error_bound`` and ``loss``.

    Raises:
      ValueError: for an unknown ``regularizer`` or ``cross_entropy``, a
        concrete ``gamma`` that is negative or not finite, ``"vib"`` without
        ``z_mean`` and ``z_scale``, or a concrete loss beyond float32.
      TypeError: for a ``gamma`` that is not a number.
    """
    if regularizer not in REGULARIZERS:
        raise ValueError(f"`regularizer` must be one of {REGULARIZERS}; got {regularizer!r}.")
    if cross_entropy not in CROSS_ENTROPIES:
        raise ValueError(f"`cross_entropy` must be one of {CROSS_ENTROPIES}; got {cross_entropy!r}.")
    if _checks.is_concrete(gamma):
        values = np.asarray(gamma)
        if values.dtype.kind not in "iuf":
            raise TypeError(f"`gamma` must be a number; got {gamma!r}.")
        if not np.all(np.isfinite(values) & (values >= 0)):
            raise ValueError(f"`gamma` must be a finite non-negative number; got {gamma!r}.")
    logits = _as_samples(logits)
    z = _latent_samples(z)
    if z.shape[:2] != logits.shape[:2]:
        raise ValueError(
            f"`z` {z.shape} and `logits` {logits.shape} must share their [S, B] leading axes."
        )
    if logits.shape[-1] != num_classes:
        raise ValueError(
            f"`logits` has {logits.shape[-1]} classes but `num_classes` is {num_classes}."
        )
    if regularizer == "vib":
        if z_mean is None or z_scale is None:
            raise ValueError(
                "`regularizer='vib'` needs `z_mean` and `z_scale`, the mean and scale of the "
                "Gaussian encoder p(z|x) (IBModel with latent='vib' returns them)."
            )
        z_mean, z_scale = _gaussian_encoder(z_mean, z_scale, ("z_mean", "z_scale"))
        if z_mean.shape != z.shape:
            raise ValueError(f"`z_mean` and `z_scale` {z_mean.shape} must have the shape of `z` {z.shape}.")
    mask = _checks.check_where(where, logits.shape[1])
    dce = _masked_mean(decoder_cross_entropy(logits, labels, mask), mask, axis_name)
    pce = _masked_mean(prediction_cross_entropy(logits, labels, mask), mask, axis_name)
    if regularizer == "none":
        reg = jnp.zeros((), jnp.float32)
    elif regularizer == "l2":
        reg = activation_l2(z, mask, axis_name)
    elif regularizer == "log_var":
        reg = log_variance(z, mask, axis_name, eps)
    elif regularizer == "cond_log_var":
        reg = conditional_log_variance(z, labels, num_classes, mask, axis_name, eps)
    else:
        reg = kl_to_standard_normal(z_mean, z_scale, mask, axis_name)
    ce = dce if cross_entropy == "decoder" else pce
    loss = _check_overflow(ce + gamma * reg, "The loss", "`gamma` times the regulariser is too large")
    metrics = {
        "loss": loss,
        "decoder_cross_entropy": dce,
        "prediction_cross_entropy": pce,
        "regularizer": reg,
        "training_error_bound": training_error_bound(ce),
    }
    return loss, metrics
