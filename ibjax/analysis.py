"""Information-plane quantities of a trained run, read from its checkpoints.

For the latent Z of the training set (eval mode, with the noise as
configured) and the labels Y, the Mickey-Mouse I-diagram quantities of
appendix A.1 (eqs. 13–18):

    H[Z], H[Z|Y], I[Y;Z] = H[Z] − H[Z|Y], H[Z|X], I[X;Z] = H[Z] − H[Z|X],
    H[Y], H[Y|Z] = H[Y] − I[Y;Z], I[X;Y|Z] = H[Y|Z] − H[Y|X]  (H[Y|X] = 0).

Continuous Z: H[Z] and H[Z|Y] by the k-NN estimators of
:mod:`ibjax.estimators`. H[Z|X] is exactly 0 for a deterministic encoder
plus zero-entropy noise (Z|X=x is N(f(x), I/(2πe))); for a stochastic
(dropout) encoder it is estimated from repeated draws per example; without
noise and with a deterministic encoder it is −∞ and I[X;Z] is undefined
(section 6.1), recorded as ``null``. The Gaussian latent of the Deep
Variational IB (``latent='vib'``) has an exact H[Z|X] from its encoder scales
σ(x) (:func:`gaussian_conditional_entropy`). Categorical Z: every quantity is exact
(:mod:`ibjax.information`). The analysis never retrains: it reads the
checkpoints that training left.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from ibjax import data as datalib
from ibjax import estimators, evaluation, experiment, information
from ibjax.io import append_jsonl, read_jsonl

__all__ = ["continuous_quantities", "categorical_quantities", "gaussian_conditional_entropy", "make_latent_fn",
           "compute_latents", "analyze_run"]

#: How H[Z|X] was obtained, written beside it in every record.
H_Z_GIVEN_X_METHODS = {
    "exact_zero": "exact: deterministic encoder + zero-entropy noise gives H[Z|X] = 0",
    "estimated": "estimated: k-NN entropy over repeated dropout/noise draws per example",
    "undefined": "undefined: deterministic latent without noise has H[Z|X] = -inf (section 6.1)",
    "exact_categorical": "exact: mean entropy of p(z|x) for a categorical latent",
    "exact_gaussian": "exact: mean entropy of the Gaussian p(z|x) = N(mu(x), diag sigma(x)^2) of a VIB latent",
}


def _label_entropy(labels: np.ndarray, num_classes: int) -> float:
    p = np.bincount(labels, minlength=num_classes) / len(labels)
    p = p[p > 0]
    return float(-np.sum(p * np.log(p)))


def continuous_quantities(
    z: jax.Array,
    labels: np.ndarray,
    num_classes: int,
    *,
    h_z_given_x: float | None,
    h_z_given_x_method: str,
    k: int = 3,
) -> dict[str, Any]:
    """Information-plane quantities of a continuous latent sample (nats).

    Args:
      z: ``[N, K]`` latents of the training set.
      labels: ``[N]`` integer labels.
      num_classes: number of classes.
      h_z_given_x: H[Z|X] (0 for a deterministic encoder with zero-entropy
        noise), or None when undefined.
      h_z_given_x_method: key of :data:`H_Z_GIVEN_X_METHODS`.
      k: neighbours of the k-NN estimators.
    """
    h_z = float(estimators.knn_entropy(z, k=k))
    h_z_given_y = float(estimators.knn_conditional_entropy(z, labels, k=k))
    return _assemble(h_z, h_z_given_y, h_z_given_x, h_z_given_x_method, _label_entropy(labels, num_classes))


def categorical_quantities(z_probs: np.ndarray, labels: np.ndarray, num_classes: int) -> dict[str, Any]:
    """Exact information-plane quantities of a categorical latent (nats).

    Args:
      z_probs: ``[N, C]`` encoder probabilities p_Θ(z|x) of the training set.
      labels: ``[N]`` integer labels.
      num_classes: number of classes.
    """
    joint = information.categorical_joint(jnp.asarray(z_probs), jnp.asarray(labels), num_classes)
    h_z = float(information.entropy(jnp.sum(joint, axis=1)))
    h_y = float(information.entropy(jnp.sum(joint, axis=0)))
    h_z_given_y = float(information.entropy(joint)) - h_y
    h_z_given_x = float(jnp.mean(jax.vmap(information.entropy)(jnp.asarray(z_probs))))
    return _assemble(h_z, h_z_given_y, h_z_given_x, "exact_categorical", h_y)


def gaussian_conditional_entropy(z_scale: jax.Array) -> jax.Array:
    """Exact Encoding Uncertainty H[Z|X] of a diagonal Gaussian encoder (nats).

    .. math::
        H[Z|X] = \\frac1N \\sum_n \\sum_i \\tfrac12 \\log\\big(2\\pi e\\,\\sigma_i(x_n)^2\\big)

    the mean over the examples of the differential entropy of
    p(z|x_n) = N(μ(x_n), diag σ(x_n)²), as for the VIB latent.

    Args:
      z_scale: ``[N, K]`` encoder standard deviations σ(x_n) > 0.

    Returns:
      Scalar H[Z|X] in nats (float32).

    Example:
      >>> import jax.numpy as jnp, math
      >>> h = gaussian_conditional_entropy(jnp.full((3, 2), (2 * math.pi * math.e) ** -0.5))
      >>> abs(float(h)) < 1e-5  # zero-entropy noise has H = 0
      True
    """
    z_scale = jnp.asarray(z_scale)
    if z_scale.ndim != 2 or not jnp.issubdtype(z_scale.dtype, jnp.floating):
        raise ValueError(f"`z_scale` must be a floating [N, K] array; got {z_scale.dtype} {z_scale.shape}.")
    log_2pie = math.log(2.0 * math.pi * math.e)
    return jnp.mean(jnp.sum(0.5 * log_2pie + jnp.log(z_scale.astype(jnp.float32)), axis=-1))


def _assemble(h_z, h_z_given_y, h_z_given_x, method, h_y) -> dict[str, Any]:
    i_y_z = h_z - h_z_given_y
    decoder_uncertainty = h_y - i_y_z
    return {
        "h_z": h_z,
        "h_z_given_y": h_z_given_y,
        "h_z_given_x": h_z_given_x,
        "h_z_given_x_method": H_Z_GIVEN_X_METHODS[method],
        "i_y_z": i_y_z,
        "preserved_information": None if h_z_given_x is None else h_z - h_z_given_x,
        "redundant_information": None if h_z_given_x is None else h_z_given_y - h_z_given_x,
        "h_y": h_y,
        "decoder_uncertainty": decoder_uncertainty,
        # H[Y|X] = 0 for single labels, so the Residual Information is H[Y|Z].
        "residual_information": decoder_uncertainty,
    }


def make_latent_fn(model, config, *, stochastic: bool = False, scale: bool = False):
    """Jitted ``(state, images_uint8, key) -> latents``: Z ``[B, K]`` or p(z|x) ``[B, C]``.

    Eval mode with the configured noise; ``stochastic`` turns the Dropout
    encoder's masks on (train mode), to sample H[Z|X] of a stochastic encoder.
    ``scale`` returns the encoder scales σ(x) ``[B, K]`` of a VIB latent instead.
    """
    categorical = config.model.latent == "categorical"
    if scale and config.model.latent != "vib":
        raise ValueError(f"`scale=True` needs config.model.latent='vib'; got {config.model.latent!r}.")
    key_out = "z_scale" if scale else "z"

    @jax.jit
    def latent_fn(state, batch, key):
        x = datalib.preprocess(batch, config.data.name)
        dropout_key, noise_key = jax.random.split(key)
        variables = {"params": state.params, **({"batch_stats": state.batch_stats} if state.batch_stats else {})}
        out = model.apply(variables, x, train=stochastic, num_samples=1, rngs={"dropout": dropout_key, "noise": noise_key})
        return jnp.exp(out["z_log_probs"][0]) if categorical else out[key_out][0]

    return latent_fn


def compute_latents(latent_fn, state, images, *, num_draws: int = 1, rng=None, batch_size: int = 512) -> jax.Array:
    """Latents of ``images`` for ``num_draws`` independent noise/dropout draws: ``[num_draws, N, ...]``."""
    rng = jax.random.key(0) if rng is None else rng
    return jnp.stack([evaluation.map_batches(lambda batch, key: latent_fn(state, batch, key), images, batch_size,
                                             rng=jax.random.fold_in(rng, d)) for d in range(num_draws)])


def _h_z_given_x(config, stochastic_fn, scale_fn, state, images, k: int, num_examples: int = 64,
                 num_draws: int = 200):
    """H[Z|X] and how it was obtained, for a continuous or VIB latent."""
    if config.model.latent == "vib":
        # Eval mode: Dropout is off, so Z|x is exactly N(μ(x), diag σ(x)²).
        scales = compute_latents(scale_fn, state, images)[0]
        return float(gaussian_conditional_entropy(scales)), "exact_gaussian"
    if config.model.encoder != "dropout_cnn":
        return (0.0, "exact_zero") if config.model.noise else (None, "undefined")
    subset = images[:num_examples]
    draws = compute_latents(stochastic_fn, state, subset, num_draws=num_draws, rng=jax.random.key(1))
    per_example = [float(estimators.knn_entropy(draws[:, i], k=k)) for i in range(subset.shape[0])]
    return float(np.mean(per_example)), "estimated"


def _read_done_epochs(path: Path) -> set[int]:
    return {int(r["epoch"]) for r in read_jsonl(path)} if path.exists() else set()


def analyze_run(workdir, *, k: int = 3, max_examples: int = 0, progress: bool = True) -> list[dict]:
    """Computes the information-plane quantities of every checkpoint of a run.

    Appends one record per epoch to ``workdir/information_plane.jsonl``;
    epochs already there are skipped, and so is a checkpoint still being
    written (Orbax lists only finalised steps).

    Args:
      workdir: a run directory written by :func:`ibjax.train.train_and_evaluate`.
      k: neighbours of the k-NN estimators.
      max_examples: use only the first N training examples (0: all).
      progress: show a progress bar over checkpoints.

    Returns:
      The records computed by this call.
    """
    with experiment.restore_run(workdir) as run:
        return _analyze_checkpoints(run, k, max_examples, progress)


def _analyze_checkpoints(run: experiment.RunCheckpoints, k: int, max_examples: int, progress: bool) -> list[dict]:
    from tqdm.auto import tqdm

    config, dataset, workdir = run.experiment.config, run.experiment.dataset, run.workdir
    model = run.experiment.model
    images, labels = dataset.x_train, dataset.y_train
    if max_examples:
        images, labels = images[:max_examples], labels[:max_examples]
    metrics_path = workdir / "metrics.jsonl"
    metrics = {m["epoch"]: m for m in (read_jsonl(metrics_path) if metrics_path.exists() else [])}
    out_path = workdir / "information_plane.jsonl"
    done = _read_done_epochs(out_path)
    epochs = [e for e in run.epochs if e not in done]
    latent_fn = make_latent_fn(model, config)
    stochastic_fn = make_latent_fn(model, config, stochastic=True)
    scale_fn = make_latent_fn(model, config, scale=True) if config.model.latent == "vib" else None
    records = []
    for epoch in tqdm(epochs, desc=f"analyse {workdir.name}", unit="ckpt", disable=not progress):
        state, _ = run.restore(epoch)
        latents = compute_latents(latent_fn, state, images)[0]
        if config.model.latent == "categorical":
            quantities = categorical_quantities(np.asarray(latents), labels, dataset.num_classes)
        else:
            h, method = _h_z_given_x(config, stochastic_fn, scale_fn, state, images, k)
            quantities = continuous_quantities(np.asarray(latents), labels, dataset.num_classes, h_z_given_x=h,
                                               h_z_given_x_method=method, k=k)
        m = metrics.get(epoch, {})
        record = {
            "epoch": epoch,
            "gamma": float(config.objective.gamma),
            "regularizer": config.objective.regularizer,
            **quantities,
            "train_cross_entropy": m.get("train_decoder_cross_entropy", math.nan),
            "train_accuracy": m.get("train_accuracy", math.nan),
            "test_accuracy": m.get("test_accuracy", math.nan),
        }
        append_jsonl(out_path, record)
        records.append(record)
    return records
