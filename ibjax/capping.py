"""Entropy capping of a noise-free latent (section 7.2, "Differential entropies need noise").

Kirsch, Lyle & Gal train a Dropout CNN encoder (K = 128) with a linear decoder
on MNIST and, after every epoch, "decrease the entropy of the latent by
normalizing it and then scaling it to bound the entropy", multiplying the
decoder's weights so that performance is not hurt unnecessarily (Fig 4).

With per-dimension mean μ_i and standard deviation σ_i of the noise-free
latent Ẑ = h W + b (h: the input of the encoder's last dense layer), the
capped latent is

    Ẑ'_i = α (Ẑ_i − μ_i) / σ_i,   α = exp(cap / K) / √(2πe),

so that its mean-field Gaussian entropy bound Σ_i ½ log(2πe Var[Ẑ'_i]) =
Σ_i ½ log(2πe α²) equals ``cap`` nats. It is an affine rewrite of the last
encoder layer, W' = W diag(α/σ), b' = α (b − μ)/σ, compensated exactly in the
linear decoder: Ẑ = diag(σ/α) Ẑ' + μ, so

    logits = Ẑ D + c = Ẑ' D' + c',   D' = diag(σ/α) D,   c' = c + μ D.

Without noise the predictions are unchanged (up to float rounding) whatever
the cap: a differential entropy can be made arbitrarily negative for free.
With zero-entropy noise Z = Ẑ' + ε, ε ~ N(0, 1/(2πe)), the decoder sees
Ẑ D + c + ε D' and the amplified noise ε D' raises the error as the cap
approaches and passes 0 (H[Z] ≥ H[ε] = 0, section 6.1).

Every function is pure: parameters go in as a pytree and come out as a new one.
"""

from __future__ import annotations

import math
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax.core import FrozenDict

from ibjax import data as datalib
from ibjax import evaluation, latents, losses, models, step

__all__ = [
    "CAPPABLE_ENCODERS",
    "latent_moments",
    "entropy_bound",
    "entropy_cap_scale",
    "noise_free_latent",
    "cap_latent_entropy",
    "entropy_cap",
    "cap_state",
]

#: Encoders whose latent :func:`cap_latent_entropy` can rewrite (defined beside the encoders).
CAPPABLE_ENCODERS: tuple[str, ...] = models.CAPPABLE_ENCODERS

_LOG_2PIE = math.log(2.0 * math.pi * math.e)


def _check_model(model: models.IBModel) -> None:
    if not isinstance(model, models.IBModel):
        raise TypeError(f"`model` must be an ibjax.models.IBModel; got {type(model).__name__}.")
    if model.encoder not in CAPPABLE_ENCODERS:
        raise ValueError(
            f"entropy capping rewrites the last dense layer of the encoder; `model.encoder` must be one of "
            f"{list(CAPPABLE_ENCODERS)}; got {model.encoder!r}."
        )
    if not latents.of(model).cappable:
        raise ValueError(f"entropy capping needs `model.latent='continuous'`; got {model.latent!r}.")
    if model.decoder != "linear":
        raise ValueError(
            "entropy capping compensates the rescaling in a linear decoder; `model.decoder` must be "
            f"'linear'; got {model.decoder!r}."
        )


def _flat_latent(z: jax.Array) -> jax.Array:
    z = jnp.asarray(z)
    if not jnp.issubdtype(z.dtype, jnp.floating):
        raise TypeError(f"`z` must be a floating-point array; got dtype {z.dtype}.")
    if z.ndim not in (2, 3):
        raise ValueError(f"`z` must be [N, K] or [S, N, K]; got shape {z.shape}.")
    flat = z.reshape(-1, z.shape[-1]).astype(jnp.float32)
    if flat.shape[0] < 2:
        raise ValueError(f"`z` needs at least 2 latent vectors for a variance; got shape {z.shape}.")
    return flat


def latent_moments(z: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Per-dimension mean μ_i and standard deviation σ_i of a latent sample.

    .. math::
        \\mu_i = \\frac1N \\sum_n z_{n,i}, \\qquad
        \\sigma_i = \\Big(\\frac1{N-1} \\sum_n (z_{n,i} - \\mu_i)^2\\Big)^{1/2}

    The unbiased (ddof = 1) variance, as in :func:`ibjax.losses.log_variance`,
    so that a latent normalised with these moments has an
    :func:`entropy_bound` of exactly Σ_i ½ log(2πe) on the same sample.

    Args:
      z: ``[N, K]`` or ``[S, N, K]`` noise-free latents (samples count as
        examples), e.g. of the training set in eval mode.

    Returns:
      ``(mean, std)``, each ``[K]`` float32.

    Example:
      >>> import jax.numpy as jnp
      >>> mean, std = latent_moments(jnp.array([[0.0, 1.0], [2.0, 1.0]]))
      >>> [float(v) for v in mean], [round(float(v), 4) for v in std]
      ([1.0, 1.0], [1.4142, 0.0])
    """
    flat = _flat_latent(z)
    mean = jnp.mean(flat, axis=0)
    # Two passes: a large mean with a small spread keeps its precision.
    variance = jnp.sum((flat - mean) ** 2, axis=0) / (flat.shape[0] - 1)
    return mean, jnp.sqrt(variance)


def entropy_bound(z: jax.Array) -> jax.Array:
    """Mean-field Gaussian upper bound on the entropy of a latent sample (nats).

    .. math::
        H[Z] \\le \\sum_i \\tfrac12 \\log\\big(2\\pi e\\, \\widehat{\\mathrm{Var}}[Z_i]\\big)

    :func:`ibjax.losses.log_variance` without a variance floor (a collapsed
    dimension gives −∞): the quantity that :func:`cap_latent_entropy` sets.

    Args:
      z: ``[N, K]`` or ``[S, N, K]`` latents.

    Returns:
      Scalar bound in nats (float32).
    """
    _flat_latent(z)
    return losses.log_variance(z, eps=0.0)


def entropy_cap_scale(cap: float, num_dims: int) -> float:
    """Standard deviation α per dimension that gives an entropy bound of ``cap`` nats.

    .. math::
        \\alpha = \\frac{e^{\\mathrm{cap}/K}}{\\sqrt{2\\pi e}}, \\qquad
        \\sum_{i=1}^K \\tfrac12 \\log(2\\pi e\\,\\alpha^2) = \\mathrm{cap}

    Args:
      cap: the entropy cap in nats, a finite number.
      num_dims: K, the number of latent dimensions.

    Returns:
      α as a Python float (computed in float64).

    Example:
      >>> round(entropy_cap_scale(0.0, 128) ** 2 * 2 * math.pi * math.e, 12)  # zero entropy
      1.0
    """
    if not isinstance(num_dims, (int, np.integer)) or isinstance(num_dims, bool) or num_dims < 1:
        raise ValueError(f"`num_dims` must be a positive int; got {num_dims!r}.")
    if isinstance(cap, jax.core.Tracer):
        raise TypeError("`cap` must be a concrete number, not a traced value: it sets a Python float α.")
    cap = float(cap)
    if not math.isfinite(cap):
        raise ValueError(f"`cap` must be a finite number of nats; got {cap!r}.")
    log_alpha = cap / num_dims - 0.5 * _LOG_2PIE
    if not -745.0 < log_alpha < 709.0:
        raise ValueError(
            f"`cap`={cap} nats over {num_dims} dimensions needs α = exp({log_alpha:.1f}), "
            "which a float64 cannot hold."
        )
    return math.exp(log_alpha)


def noise_free_latent(model: models.IBModel, variables: Any, x: jax.Array, *, train: bool = False,
                      rng: jax.Array | None = None) -> jax.Array:
    """The latent Ẑ before its zero-entropy noise: ``[B, K]`` float32.

    The same network with ``noise=False`` (the noise adds no parameters), in
    eval mode (Dropout off) or, with ``train``, with the Dropout masks drawn
    from ``rng``. Jit it with the model static, e.g.
    ``jax.jit(functools.partial(noise_free_latent, model))``.

    Args:
      model: an :class:`ibjax.models.IBModel` with a continuous latent.
      variables: ``{'params': ...}`` (and ``'batch_stats'`` if any).
      x: preprocessed inputs ``[B, ...]``.
      train: draw the Dropout masks (the analysis of a Dropout encoder's Z).
      rng: the 'dropout' key, needed with ``train``.
    """
    if not isinstance(model, models.IBModel) or not latents.of(model).cappable:
        raise ValueError("`model` must be an ibjax.models.IBModel with latent='continuous'.")
    rngs = {"dropout": rng} if rng is not None else {}
    return model.clone(noise=False).apply(variables, x, train=train, num_samples=1, rngs=rngs)["z"][0]


def _updated(tree: Any, path: tuple[str, ...], updates: dict[str, Any]) -> Any:
    """A copy of the nested mapping ``tree`` whose mapping at ``path`` is updated with ``updates``."""
    if path:
        new = {**tree, path[0]: _updated(tree[path[0]], path[1:], updates)}
    else:
        new = {**tree, **updates}
    return FrozenDict(new) if isinstance(tree, FrozenDict) else new


def cap_latent_entropy(
    params: Any,
    mean: jax.Array,
    std: jax.Array,
    cap: float,
    *,
    model: models.IBModel,
) -> Any:
    """Rescales the latent to an entropy bound of ``cap`` nats, keeping the predictions.

    .. math::
        W' = W\\,\\mathrm{diag}(\\alpha/\\sigma), \\quad b' = \\alpha\\,(b - \\mu)/\\sigma, \\quad
        D' = \\mathrm{diag}(\\sigma/\\alpha)\\,D, \\quad c' = c + \\mu D

    with α = :func:`entropy_cap_scale` (``cap``, K). The new noise-free latent
    Ẑ' = α (Ẑ − μ)/σ has per-dimension variance α² on the sample the moments
    came from, so Σ_i ½ log(2πe Var[Ẑ'_i]) = ``cap``; the decoder computes
    Ẑ' D' + c' = Ẑ D + c, so without noise the logits are unchanged (section
    7.2). With zero-entropy noise the decoder amplifies ε by σ/α instead.

    Args:
      params: ``params`` of ``model`` (``{'encoder', 'decoder'}``).
      mean: ``[K]`` latent means μ, from :func:`latent_moments`.
      std: ``[K]`` latent standard deviations σ > 0, from :func:`latent_moments`.
      cap: entropy cap in nats (a concrete number; may be negative).
      model: the :class:`ibjax.models.IBModel` the parameters belong to:
        encoder 'mlp' or 'dropout_cnn', a continuous latent (with or without
        noise) and a 'linear' decoder.

    Returns:
      A new parameter pytree; ``params`` is not modified.

    Raises:
      ValueError: for an unsupported model, mismatched shapes, or a
        concrete σ_i ≤ 0 (a constant dimension cannot be normalised).

    Reference:
      Kirsch, Lyle & Gal, "Unpacking Information Bottlenecks", section 7.2, Fig 4.
    """
    _check_model(model)
    layer = models.LAST_DENSE_LAYER[model.encoder]
    try:
        encoder_out = params["encoder"][layer]
        decoder_out = params["decoder"]["output"]
        w, b, d, c = encoder_out["kernel"], encoder_out["bias"], decoder_out["kernel"], decoder_out["bias"]
    except (KeyError, TypeError):
        raise ValueError(
            f"`params` must hold params['encoder']['{layer}'] and params['decoder']['output'] (kernel and bias) "
            f"of a {model.encoder!r} encoder with a linear decoder."
        ) from None
    num_dims = model.latent_dim
    mean, std = jnp.asarray(mean, jnp.float32), jnp.asarray(std, jnp.float32)
    for name, value in (("mean", mean), ("std", std)):
        if value.shape != (num_dims,):
            raise ValueError(f"`{name}` must have shape ({num_dims},) like the latent; got {value.shape}.")
    if w.shape[-1] != num_dims or b.shape != (num_dims,) or d.shape[0] != num_dims:
        raise ValueError(
            f"the encoder's last layer {w.shape} and the decoder {d.shape} do not match latent_dim={num_dims}."
        )
    if not isinstance(std, jax.core.Tracer) and not np.all(np.asarray(std) > 0):
        raise ValueError(f"`std` must be > 0 in every dimension; got minimum {float(np.min(std))}.")
    alpha = entropy_cap_scale(cap, num_dims)
    gain = alpha / std                                                       # α/σ, [K]
    # μ D over K terms at full float32 precision (no TF32 on GPUs).
    shift = jnp.dot(mean, d, precision=jax.lax.Precision.HIGHEST)
    params = _updated(params, ("encoder", layer), {"kernel": w * gain, "bias": (b - mean) * gain})
    return _updated(params, ("decoder", "output"), {"kernel": d / gain[:, None], "bias": c + shift})


def entropy_cap(schedule, epoch: int) -> float | None:
    """The cap (nats) applied after ``epoch`` (1-based) by ``config.capping.schedule``; None when off.

    Epochs past the end of the schedule keep its last cap.

    Example:
      >>> entropy_cap((10.0, 0.0), 1), entropy_cap((10.0, 0.0), 5), entropy_cap((), 1)
      (10.0, 0.0, None)
    """
    schedule = tuple(schedule)
    return float(schedule[min(epoch, len(schedule)) - 1]) if schedule else None


def cap_state(model: models.IBModel, config, state: step.TrainState, images, cap: float,
              latent_fn=None) -> tuple[step.TrainState, list[float]]:
    """Section 7.2: rescales every member's latent to an entropy bound of ``cap`` nats, predictions unchanged.

    The moments come from the first ``config.capping.num_examples`` training
    images (eval mode, no noise), in batches of ``config.train.eval_batch_size``.

    Args:
      model: the run's :class:`ibjax.models.IBModel`.
      config: the experiment config.
      state: the run's state with its member axis ``[M]``.
      images: the uint8 training images.
      cap: the entropy cap in nats.
      latent_fn: a jitted ``(variables, images) -> Ẑ`` to reuse across epochs
        (default: built here).

    Returns:
      The new state and, per member, the entropy bound of its new latent on those images.
    """
    if latent_fn is None:
        latent_fn = make_latent_fn(model, config)
    num_examples = config.capping.num_examples or None
    size = config.train.eval_batch_size

    def latents(params, batch_stats):
        variables = {"params": params, **({"batch_stats": batch_stats} if batch_stats else {})}
        return evaluation.map_batches(lambda batch, _: latent_fn(variables, batch), images, size,
                                      num_examples=num_examples)

    params, bounds = [], []
    for i in range(jax.tree.leaves(state.step)[0].shape[0]):
        member = step.member(state, i)
        mean, std = latent_moments(latents(member.params, member.batch_stats))
        capped = cap_latent_entropy(member.params, mean, std, cap, model=model)
        params.append(capped)
        bounds.append(float(entropy_bound(latents(capped, member.batch_stats))))
    return state.replace(params=step.stack_members(params)), bounds


def make_latent_fn(model: models.IBModel, config):
    """Jitted ``(variables, images_uint8) -> Ẑ [B, K]``: the latent before its noise, eval mode."""
    return jax.jit(lambda variables, images: noise_free_latent(model, variables,
                                                               datalib.preprocess(images, config.data.name)))
