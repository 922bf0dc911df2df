"""Evaluation: whole-split metrics of every member, and batched passes over a split.

:func:`evaluate` runs a compiled eval step over every example of a split
once (the last batch padded and masked), for all members of a run at once.
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
from ibjax import information, losses, models
from ibjax.step import categorical_terms, correct, forward

__all__ = ["make_eval_step", "evaluate", "evaluate_train_exact", "map_batches"]

_SUMS = ("count", "decoder_cross_entropy", "prediction_cross_entropy", "correct")

# Every member's key folded with a batch index; module-level so it compiles once, not per evaluation.
_fold_members = jax.jit(jax.vmap(jax.random.fold_in, in_axes=(0, None)))


def make_eval_step(model, config, num_classes: int, mesh: Mesh) -> Callable:
    """The jitted eval step ``(state, totals, images, labels, batch_idx, mask, rng, decoder) -> totals``.

    Sums over the real (``mask``) examples, per member: correct predictions,
    decoder and prediction cross-entropies, the count, and for a categorical
    latent the joint p(z, y) (unnormalised). ``state``, ``totals``, ``rng``
    (a key per member) and ``decoder`` carry the member axis. ``decoder`` ``[M, C, num_classes]``, if
    not None, replaces the learnt decoder matrix log p_Θ(ŷ|z) (the optimal
    decoder of a run that minimises H[Y|Z] directly, section 5.4).
    """
    batch_sharding = NamedSharding(mesh, P("data"))
    categorical = config.model.latent == "categorical"

    def eval_step(state, totals, images, labels, batch_idx, mask, rng, decoder):
        batch_idx = jax.lax.with_sharding_constraint(batch_idx, batch_sharding)
        x, y = images[batch_idx], labels[batch_idx]
        out, _ = forward(model, config, state.params, state.batch_stats, x, rng, train=False)
        w = mask.astype(jnp.float32)
        sums = {"count": jnp.sum(w)}
        if categorical:
            if decoder is not None:
                out = dict(out, decoder_log_probs=decoder,
                           logits=models.prediction_log_probs(out["z_log_probs"], decoder))
            dce, pce, z_probs = categorical_terms(out, y, mask)
            sums["joint"] = information.categorical_joint(z_probs, y, num_classes, mask) * sums["count"]
        else:
            dce = losses.decoder_cross_entropy(out["logits"], y, mask)
            pce = losses.prediction_cross_entropy(out["logits"], y, mask)
        sums["decoder_cross_entropy"] = jnp.sum(dce)
        sums["prediction_cross_entropy"] = jnp.sum(pce)
        sums["correct"] = jnp.sum(correct(out["logits"], y) * w)
        return jax.tree.map(jnp.add, totals, sums)

    mapped = jax.vmap(eval_step, in_axes=(0, 0, None, None, None, None, 0, 0))
    return jax.jit(mapped, donate_argnums=(1,))


def evaluate(eval_step: Callable, state, images, labels, *, batch_size: int, rng: jax.Array, sharding,
             num_members: int, joint_shape: tuple[int, int] | None = None, decoder=None) -> dict[str, np.ndarray]:
    """Means of ``eval_step`` over every example of a split, each counted once, per member.

    ``rng`` holds a key per member ``[M]``; batch ``i`` uses ``fold_in(key, i)``.

    Returns:
      ``{"accuracy", "decoder_cross_entropy", "prediction_cross_entropy"}``,
      each ``[M]``, and ``"joint"`` ``[M, C, num_classes]`` (normalised) when
      ``joint_shape`` is given.
    """
    idx, mask = jax.device_put(datalib.eval_batches(int(images.shape[0]), batch_size), sharding)
    totals = {k: jnp.zeros((num_members,), jnp.float32) for k in _SUMS}
    if joint_shape is not None:
        totals["joint"] = jnp.zeros((num_members, *joint_shape), jnp.float32)
    totals = jax.device_put(totals, sharding)
    for i in range(idx.shape[0]):
        totals = eval_step(state, totals, images, labels, idx[i], mask[i], _fold_members(rng, i), decoder)
    totals = jax.device_get(totals)
    n = totals.pop("count")
    summary = {k: v / n for k, v in totals.items() if k != "joint"}
    summary["accuracy"] = summary.pop("correct")
    if "joint" in totals:
        summary["joint"] = totals["joint"] / n[:, None, None]
    return summary


def evaluate_train_exact(eval_step: Callable, state, images, labels, *, optimal_decoder: bool,
                         **kwargs: Any) -> tuple[dict[str, np.ndarray], jax.Array | None]:
    """Exact train-set quantities of a categorical latent in eval mode (Figure 3).

    With ``optimal_decoder`` (a run that minimises H[Y|Z] directly, section
    5.4) the decoder is fixed to p(y|z) of the training set's joint and the
    metrics are recomputed with it.

    Args:
      eval_step, state, images, labels: as for :func:`evaluate`.
      optimal_decoder: evaluate with the optimal decoder.
      **kwargs: the keyword arguments of :func:`evaluate` (``joint_shape`` required).

    Returns:
      The summary (with ``"joint"``) and the log optimal decoder
      ``[M, C, num_classes]`` on the device, or None.
    """
    summary = evaluate(eval_step, state, images, labels, **kwargs)
    if not optimal_decoder:
        return summary, None
    decoder = jax.device_put(jax.vmap(information.log_optimal_decoder)(jnp.asarray(summary["joint"])),
                             kwargs["sharding"])
    return dict(evaluate(eval_step, state, images, labels, decoder=decoder, **kwargs), joint=summary["joint"]), decoder


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
