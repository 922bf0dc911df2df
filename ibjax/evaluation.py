"""Evaluation: whole-split metrics of every member, and batched passes over a split.

:func:`make_evaluator` compiles one pass over every example of a split
(a ``lax.scan`` over its batches, the last padded and masked) for all
members of a run at once: no per-batch dispatch from Python.
:func:`evaluate` turns its sums into means.
:func:`evaluate_train_exact` is the exact categorical evaluation of the
training set behind Figure 3: H_Θ[Y|Z], H_Θ[Y|X], accuracy and the joint
p(z, y), and for a run that minimises H[Y|Z] directly the optimal decoder
p(y|z) of section 5.4. :func:`map_batches` is the one batched pass that
capping and analysis use to compute latents of a split.
"""

from __future__ import annotations

from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from ibjax import data as datalib
from ibjax import information, latents, losses
from ibjax.latents import categorical_terms
from ibjax.step import correct, forward

__all__ = ["make_evaluator", "summarize", "evaluate", "evaluate_train_exact", "map_batches"]

_SUMS = ("count", "decoder_cross_entropy", "prediction_cross_entropy", "correct")


def make_evaluator(model, config, num_classes: int, mesh: Mesh, batch_size: int) -> Callable:
    """The jitted whole-split pass ``(state, images, labels, rng, decoder=None, *, optimal_decoder=False)``.

    One compiled call evaluates every example of a split once, for every
    member: a ``lax.scan`` over the split's batches of ``batch_size`` (the
    last one padded and masked), batch ``i`` with the key ``fold_in(rng_m, i)``
    of member ``m``, summing correct predictions, the decoder and prediction
    cross-entropies, the count, and for a categorical latent the joint
    p(z, y) (unnormalised). ``state``, ``rng`` (a key per member) and
    ``decoder`` carry the member axis; ``images``/``labels`` are the split on
    the device. ``decoder`` ``[M, C, num_classes]``, if given, replaces the
    learnt decoder matrix log p_Θ(ŷ|z). With ``optimal_decoder`` (a
    categorical run that minimises H[Y|Z], section 5.4) the same call makes a
    second pass with the decoder fixed to p(y|z) of the first pass's joint.

    Returns:
      ``(sums, joint, decoder)``: the sums ``[M]`` (and ``"joint"``
      ``[M, C, num_classes]``) of the last pass, the first pass's normalised
      joint (None for a continuous latent) and the log optimal decoder (None
      without ``optimal_decoder``), all on the device.
    """
    batch_sharding = NamedSharding(mesh, P("data"))
    categorical = latents.of(config.model).discrete

    def batch_sums(state, x, y, mask, rng, decoder):
        out, _ = forward(model, config, state.params, state.batch_stats, x, rng, train=False)
        w = mask.astype(jnp.float32)
        sums = {"count": jnp.sum(w)}
        if categorical:
            if decoder is not None:
                out = dict(out, decoder_log_probs=decoder,
                           logits=information.prediction_log_probs(out["z_log_probs"], decoder))
            dce, pce, z_probs = categorical_terms(out, y, mask)
            sums["joint"] = information.categorical_joint(z_probs, y, num_classes, mask) * sums["count"]
        else:
            dce = losses.decoder_cross_entropy(out["logits"], y, mask)
            pce = losses.prediction_cross_entropy(out["logits"], y, mask)
        sums["decoder_cross_entropy"] = jnp.sum(dce)
        sums["prediction_cross_entropy"] = jnp.sum(pce)
        sums["correct"] = jnp.sum(correct(out["logits"], y) * w)
        return sums

    def member_pass(state, images, labels, rng, decoder):
        idx, mask = datalib.eval_batches(int(images.shape[0]), batch_size)

        def one_batch(totals, batch):
            i, batch_idx, batch_mask = batch
            batch_idx = jax.lax.with_sharding_constraint(batch_idx, batch_sharding)
            sums = batch_sums(state, images[batch_idx], labels[batch_idx], batch_mask,
                              jax.random.fold_in(rng, i), decoder)
            return jax.tree.map(jnp.add, totals, sums), None

        zeros = {k: jnp.zeros((), jnp.float32) for k in _SUMS}
        if categorical:
            zeros["joint"] = jnp.zeros((config.model.latent_dim, num_classes), jnp.float32)
        totals, _ = jax.lax.scan(one_batch, zeros, (jnp.arange(idx.shape[0]), idx, mask))
        return totals

    every_member = jax.vmap(member_pass, in_axes=(0, None, None, 0, 0))

    def evaluate_split(state, images, labels, rng, decoder=None, *, optimal_decoder=False):
        sums = every_member(state, images, labels, rng, decoder)
        joint = sums["joint"] / sums["count"][:, None, None] if categorical else None
        if not optimal_decoder:
            return sums, joint, None
        decoder = jax.vmap(information.log_optimal_decoder)(joint)
        return every_member(state, images, labels, rng, decoder), joint, decoder

    return jax.jit(evaluate_split, static_argnames=("optimal_decoder",))


def summarize(sums: dict[str, Any]) -> dict[str, np.ndarray]:
    """Means per member from the sums of an evaluator: accuracy and the two cross-entropies ``[M]``."""
    sums = jax.device_get(sums)
    n = sums["count"]
    return {"accuracy": sums["correct"] / n, "decoder_cross_entropy": sums["decoder_cross_entropy"] / n,
            "prediction_cross_entropy": sums["prediction_cross_entropy"] / n}


def evaluate(evaluator: Callable, state, images, labels, *, rng: jax.Array,
             decoder=None) -> dict[str, np.ndarray]:
    """Means of ``evaluator`` (:func:`make_evaluator`) over every example of a split, each counted once, per member.

    Returns:
      ``{"accuracy", "decoder_cross_entropy", "prediction_cross_entropy"}``,
      each ``[M]``, and for a categorical latent ``"joint"``
      ``[M, C, num_classes]`` (normalised).
    """
    sums, joint, _ = evaluator(state, images, labels, rng, decoder)
    summary = summarize(sums)
    if joint is not None:
        summary["joint"] = np.asarray(jax.device_get(joint))
    return summary


def evaluate_train_exact(evaluator: Callable, state, images, labels, *, rng: jax.Array,
                         optimal_decoder: bool) -> tuple[dict[str, np.ndarray], jax.Array | None]:
    """Exact train-set quantities of a categorical latent in eval mode (Figure 3).

    With ``optimal_decoder`` (a run that minimises H[Y|Z] directly, section
    5.4) the decoder is fixed to p(y|z) of the training set's joint and the
    metrics are recomputed with it, in the same compiled call.

    Returns:
      The summary (with ``"joint"``, the training set's p(z, y) ``[M, C,
      num_classes]``) and the log optimal decoder ``[M, C, num_classes]`` on
      the device, or None.
    """
    sums, joint, decoder = evaluator(state, images, labels, rng, optimal_decoder=optimal_decoder)
    return dict(summarize(sums), joint=np.asarray(jax.device_get(joint))), decoder


def map_batches(fn: Callable, images, batch_size: int, *, rng: jax.Array | None = None,
                num_examples: int | None = None) -> jax.Array:
    """``fn(batch, key)`` over consecutive batches of ``images``, outputs concatenated on axis 0.

    Args:
      fn: a (jitted) function of a batch ``[b, ...]`` and a key.
      images: the split, on the host or the device.
      batch_size: examples per call (the last call may be smaller).
      rng: key of batch ``i`` is ``fold_in(rng, i)``; default ``key(0)``.
      num_examples: only the first N examples (default all).
    """
    rng = jax.random.key(0) if rng is None else rng
    n = images.shape[0] if num_examples is None else min(num_examples, images.shape[0])
    return jnp.concatenate([fn(images[start:min(start + batch_size, n)], jax.random.fold_in(rng, i))
                            for i, start in enumerate(range(0, n, batch_size))])
