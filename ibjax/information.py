"""Exact information quantities for a categorical latent Z (section 5.4).

For a categorical latent the encoder gives p_Θ(z|x) exactly, so the empirical
joint p(z, y) = (1/B) Σ_b p_Θ(z|x_b) 1[y = y_b] can be formed and H[Y|Z], the
optimal decoder p(y|z) and I[Y;Z] computed exactly, like a confusion matrix
between Z and Y (footnote 13). These are pure functions of arrays and work
under ``jit``, ``grad`` and ``vmap``; 0 · log 0 = 0 throughout; nats.

Joints are indexed ``[z, y]``.

The module also holds the maps between the IB/DIB trade-off β and the weights
of the rewritten objectives of section 4.3 and appendix A.2.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from ibjax import _checks

__all__ = [
    "categorical_joint",
    "entropy",
    "conditional_entropy",
    "mutual_information",
    "optimal_decoder",
    "log_optimal_decoder",
    "decoder_uncertainty",
    "categorical_decoder_cross_entropy",
    "prediction_log_probs",
    "beta_prime",
    "beta_double_prime",
    "edm_gamma",
]


def _plogp(p: jax.Array) -> jax.Array:
    """p log p with 0 log 0 = 0, and a finite gradient path where p = 0.

    A NaN or negative p gives NaN: a bad probability is never hidden as 0.
    """
    zero = p == 0
    return jnp.where(zero, 0.0, p * jnp.log(jnp.where(zero, 1.0, p)))


def _check_joint(joint: jax.Array) -> jax.Array:
    joint = _checks.check_float(joint, "joint")
    if joint.ndim != 2:
        raise ValueError(f"`joint` must be a 2-D array indexed [z, y]; got shape {joint.shape}.")
    return joint


def categorical_joint(
    z_probs: jax.Array,
    labels: jax.Array,
    num_classes: int,
    where: jax.Array | None = None,
    axis_name: str | None = None,
) -> jax.Array:
    """Empirical joint p(z, y) of a categorical latent and the labels.

    .. math::
        p(z, y) = \\frac1B \\sum_b p_\\Theta(z|x_b)\\, \\mathbb 1[y = y_b]

    Args:
      z_probs: ``[B, Cz]`` encoder probabilities p_Θ(z|x_b) (rows sum to 1).
      labels: ``[B]`` integer labels in ``[0, num_classes)``.
      num_classes: number of label classes Cy (static).
      where: optional ``[B]`` boolean mask; masked examples are left out and the
        mean is over the real ones.
      axis_name: optional mapped axis to sum the batch over (global joint).

    Returns:
      ``[Cz, Cy]`` joint that sums to 1 (0 for an empty batch).
    """
    if isinstance(num_classes, bool) or not isinstance(num_classes, (int, np.integer)) or num_classes < 1:
        raise ValueError(f"`num_classes` must be a positive Python int; got {num_classes!r}.")
    z_probs = _checks.check_float(z_probs, "z_probs")
    if z_probs.ndim != 2:
        raise ValueError(f"`z_probs` must be [B, Cz]; got shape {z_probs.shape}.")
    labels = _checks.check_labels(labels, z_probs.shape[0], num_classes)
    weights = _checks.check_where(where, z_probs.shape[0]).astype(jnp.float32)
    one_hot = jax.nn.one_hot(labels, num_classes, dtype=jnp.float32) * weights[:, None]
    # Padding rows are zeroed first: whatever they hold (NaN) must not reach the joint as 0 · NaN.
    z_probs = jnp.where(weights[:, None] > 0, z_probs.astype(jnp.float32), 0.0)
    joint = _checks.psum(z_probs.T @ one_hot, axis_name)
    return joint / jnp.maximum(_checks.psum(jnp.sum(weights), axis_name), 1.0)


def entropy(p: jax.Array) -> jax.Array:
    """Shannon entropy H = -Σ p log p over all entries (nats), 0 log 0 = 0.

    Args:
      p: probabilities of any shape that sum to 1 (a marginal or a joint).

    Returns:
      Scalar entropy.

    Example:
      >>> import jax.numpy as jnp
      >>> float(entropy(jnp.array([0.5, 0.5, 0.0])))  # log 2
      0.693...
    """
    return -jnp.sum(_plogp(_checks.check_float(p, "p")))


def conditional_entropy(joint: jax.Array) -> jax.Array:
    """Conditional entropy H[Y|Z] = H[Z, Y] - H[Z] of a joint indexed ``[z, y]``.

    Args:
      joint: ``[Cz, Cy]`` joint distribution.

    Returns:
      Scalar H[Y|Z] in nats.
    """
    joint = _check_joint(joint)
    return entropy(joint) - entropy(jnp.sum(joint, axis=1))


def mutual_information(joint: jax.Array) -> jax.Array:
    """Mutual information I[Y;Z] = H[Z] + H[Y] - H[Z, Y] of a joint ``[z, y]``.

    Args:
      joint: ``[Cz, Cy]`` joint distribution.

    Returns:
      Scalar I[Y;Z] ≥ 0 in nats.
    """
    joint = _check_joint(joint)
    return entropy(jnp.sum(joint, axis=1)) + entropy(jnp.sum(joint, axis=0)) - entropy(joint)


def optimal_decoder(joint: jax.Array) -> jax.Array:
    """The optimal decoder p(y|z) = p(z, y) / p(z) (section 5.4).

    Using it as p_Θ(ŷ|z) makes the Decoder Cross-Entropy equal to the Decoder
    Uncertainty H[Y|Z].

    Args:
      joint: ``[Cz, Cy]`` joint distribution.

    Returns:
      ``[Cz, Cy]`` row-stochastic matrix; a z without mass gets the uniform row.
    """
    joint = _check_joint(joint)
    p_z = jnp.sum(joint, axis=1, keepdims=True)
    has_mass = p_z != 0  # not > 0: a NaN row stays NaN rather than turn uniform
    uniform = jnp.full_like(joint, 1.0 / max(joint.shape[1], 1))
    return jnp.where(has_mass, joint / jnp.where(has_mass, p_z, 1.0), uniform)


def log_optimal_decoder(joint: jax.Array) -> jax.Array:
    """log p(y|z) of :func:`optimal_decoder`, floored at the log of the dtype's smallest normal number.

    Under a softmax encoder p_Θ(z|x) > 0 for every x, so the exact p(y|z) is
    never 0. In float32 it can round to 0: when the encoder is confident,
    every p_Θ(z|x) of class y at category z underflows in the joint's sum.
    Then −log p(y|z) would be +∞ and p_Θ(z|x)·(−log p(y|z)) = tiny·∞ = ∞
    although the exact term is finite and negligible. The floor
    (log 1.18e-38 = −87.3 nats in float32) keeps it finite; where the exact
    log p(y|z) lies below the floor, a cross-entropy with this decoder is an
    underestimate of at most p_Θ(z|x)·(−87.3 − log p(y|z)) per such term.

    Args:
      joint: ``[Cz, Cy]`` joint distribution.

    Returns:
      ``[Cz, Cy]`` log p(y|z), finite; a z without mass gets the uniform row.

    Example:
      >>> import jax.numpy as jnp
      >>> d = log_optimal_decoder(jnp.array([[0.5, 0.0], [0.25, 0.25]]))
      >>> [[round(float(v), 3) for v in row] for row in d]
      [[0.0, -87.337], [-0.693, -0.693]]
    """
    decoder = optimal_decoder(joint)
    return jnp.log(jnp.maximum(decoder, jnp.finfo(decoder.dtype).tiny))


def decoder_uncertainty(
    z_probs: jax.Array,
    labels: jax.Array,
    num_classes: int,
    where: jax.Array | None = None,
    axis_name: str | None = None,
) -> jax.Array:
    """Decoder Uncertainty H[Y|Z] of the batch, exact for a categorical latent.

    .. math::
        H[Y|Z] = -\\sum_{z,y} p(z,y) \\log \\frac{p(z,y)}{p(z)}, \\quad
        p(z,y) = \\frac1B \\sum_b p_\\Theta(z|x_b)\\,\\mathbb 1[y=y_b]

    Differentiable through ``z_probs``. Its gradient is the score-function form
    of appendix A.3, E_{p(x,z)}[∇ log p_Θ(z|x) · h(p(y|z))] with p(y|z) held
    fixed, because the term from differentiating p(y|z) vanishes.

    Args:
      z_probs: ``[B, Cz]`` encoder probabilities p_Θ(z|x_b).
      labels: ``[B]`` integer labels.
      num_classes: number of label classes (static).
      where: optional ``[B]`` boolean mask of real examples.
      axis_name: optional mapped axis to sum the batch over.

    Returns:
      Scalar H[Y|Z] in nats.
    """
    return conditional_entropy(categorical_joint(z_probs, labels, num_classes, where, axis_name))


def categorical_decoder_cross_entropy(
    z_log_probs: jax.Array,
    decoder_log_probs: jax.Array,
    labels: jax.Array,
    where: jax.Array | None = None,
) -> jax.Array:
    """Per-example Decoder Cross-Entropy H_Θ[Y|Z] of a categorical latent, exact in z.

    .. math::
        H_\\Theta[Y|Z]_b = \\frac1S \\sum_s \\sum_z p_\\Theta(z|x_b, \\omega_s)\\,
        \\big(-\\log p_\\Theta(y_b|z)\\big)

    The expectation over z is taken exactly; the S samples (dropout masks ω_s
    of the encoder) are averaged. With the optimal decoder its batch mean is
    H[Y|Z] (section 5.4). 0 · log 0 = 0.

    Args:
      z_log_probs: ``[S, B, Cz]`` or ``[B, Cz]`` encoder log-probabilities log p_Θ(z|x).
      decoder_log_probs: ``[Cz, Cy]`` decoder matrix log p_Θ(ŷ|z).
      labels: ``[B]`` integer labels in ``[0, Cy)``.
      where: optional ``[B]`` boolean mask; masked examples return 0.

    Returns:
      ``[B]`` per-example values in nats.
    """
    z_log_probs = _checks.check_float(z_log_probs, "z_log_probs")
    if z_log_probs.ndim == 2:
        z_log_probs = z_log_probs[None]
    decoder_log_probs = _checks.check_float(decoder_log_probs, "decoder_log_probs")
    if decoder_log_probs.ndim != 2:
        raise ValueError(f"`decoder_log_probs` must be [Cz, Cy]; got shape {decoder_log_probs.shape}.")
    if z_log_probs.ndim != 3 or not z_log_probs.shape[0] or z_log_probs.shape[-1] != decoder_log_probs.shape[0]:
        raise ValueError(
            f"`z_log_probs` {z_log_probs.shape} must be [S, B, Cz] with S >= 1 and Cz = "
            f"{decoder_log_probs.shape[0]} rows of `decoder_log_probs`."
        )
    labels = _checks.check_labels(labels, z_log_probs.shape[1], decoder_log_probs.shape[1])
    where = _checks.check_where(where, z_log_probs.shape[1])
    nll = -decoder_log_probs.T[labels]                       # [B, Cz]: -log p(y_b|z)
    p = jnp.exp(z_log_probs)
    zero = p == 0  # 0 · log 0 = 0; a NaN p stays NaN
    terms = jnp.where(zero, 0.0, p * jnp.where(zero, 0.0, nll[None]))
    values = jnp.mean(jnp.sum(terms, axis=-1), axis=0)
    return jnp.where(where, values, 0.0)


def beta_prime(beta: float | jax.Array) -> float | jax.Array:
    """β' = 1/(β − 1): weight of I[X;Z|Y] (IB) or H[Z|Y] (DIB) against H[Y|Z].

    Observation 1: min I[X;Z] − β I[Y;Z] = min H[Y|Z] + β' I[X;Z|Y], for β ≥ 1
    (β = 1 gives β' = ∞).
    """
    return 1.0 / (beta - 1.0)


def beta_double_prime(beta: float | jax.Array) -> float | jax.Array:
    """β'' = 1/β: weight of H[Z] in the DIB form min H[Y|Z] + β'' H[Z] (section 4.3)."""
    return 1.0 / beta


def edm_gamma(beta: float | jax.Array) -> float | jax.Array:
    """γ = 1 − 2/β ∈ [−1, 1]: the Entropy-Distance-Metric mix of appendix A.2.1.

    DIB becomes min EDM(Y, Z) + γ (H[Y|Z] − H[Z|Y]); β = 2 gives γ = 0, the
    Entropy Distance Metric itself. (Not the surrogate weight γ of Observation 8.)
    """
    return 1.0 - 2.0 / beta


def prediction_log_probs(z_log_probs: jax.Array, decoder_log_probs: jax.Array) -> jax.Array:
    """log p_Θ(ŷ|x) = log Σ_z p_Θ(z|x) p_Θ(ŷ|z) for a categorical latent Z (equation 1).

    Computed with a logsumexp over z, so it is stable for very peaked encoders.

    Args:
      z_log_probs: log p_Θ(z|x), ``[..., C]`` (normalised over C).
      decoder_log_probs: the decoder matrix log p_Θ(ŷ|z), ``[C, num_classes]``
        (normalised over classes).

    Returns:
      log p_Θ(ŷ|x), ``[..., num_classes]``, normalised over classes.

    Example:
      >>> import jax.numpy as jnp
      >>> p = prediction_log_probs(jnp.log(jnp.array([0.25, 0.75])),
      ...                          jnp.log(jnp.array([[1.0, 0.0], [0.5, 0.5]])))
      >>> [round(float(v), 3) for v in jnp.exp(p)]
      [0.625, 0.375]
    """
    if z_log_probs.shape[-1] != decoder_log_probs.shape[0]:
        raise ValueError(
            "`z_log_probs` [..., C] and `decoder_log_probs` [C, num_classes] must agree on C; "
            f"got shapes {z_log_probs.shape} and {decoder_log_probs.shape}."
        )
    return jax.nn.logsumexp(z_log_probs[..., :, None] + decoder_log_probs, axis=-2)
