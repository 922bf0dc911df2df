"""Information-plane quantities of a trained run, read from its checkpoints.

For the latent Z of the training set (eval mode, with the noise as
configured) and the labels Y, the Mickey-Mouse I-diagram quantities of
appendix A.1 (eqs. 13–18):

    H[Z], H[Z|Y], I[Y;Z] = H[Z] − H[Z|Y], H[Z|X], I[X;Z] = H[Z] − H[Z|X],
    H[Y], H[Y|Z] = H[Y] − I[Y;Z], I[X;Y|Z] = H[Y|Z] − H[Y|X]  (H[Y|X] = 0).

Continuous Z = μ(X) + ε of a deterministic encoder with zero-entropy noise:
Z is a Gaussian mixture over the training points, and H[Z], H[Z|Y] are the
Kolchinsky–Tracey pairwise bounds of :mod:`ibjax.estimators` (KL upper bound
reported, Bhattacharyya lower bound kept beside it); H[Z|X] = 0 exactly, so
I[X;Z] lies in [0, log N]. Other continuous latents, or ``estimator='knn'``:
H[Z] and H[Z|Y] by the k-NN estimators of
:mod:`ibjax.estimators`. H[Z|X] is exactly 0 for a deterministic encoder
plus zero-entropy noise (Z|X=x is N(f(x), I/(2πe))); for a Dropout encoder
Z is its train-mode latent for every quantity, bounded with the mixture
bounds over sampled masks (:func:`dropout_quantities`); without
noise and with a deterministic encoder it is −∞ and I[X;Z] is undefined
(section 6.1), recorded as ``null``. The Gaussian latent of the Deep
Variational IB (``latent='vib'``) has an exact H[Z|X] from its encoder scales
σ(x) (:func:`gaussian_conditional_entropy`). Categorical Z: every quantity is exact
(:mod:`ibjax.information`). Every record names its H[Z] estimator and flags
impossible values (:func:`impossible_value_flags`). The analysis never
retrains: it reads the checkpoints that training left.
"""

from __future__ import annotations

import math
from pathlib import Path
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from ibjax import data as datalib
from scipy import special

from ibjax import capping, estimators, evaluation, experiment, information, latents
from ibjax.losses import ZERO_ENTROPY_STD
from ibjax.io import append_jsonl, read_jsonl

__all__ = ["ESTIMATORS", "continuous_quantities", "mixture_quantities", "vib_mixture_quantities",
           "dropout_quantities", "categorical_quantities",
           "gaussian_conditional_entropy", "impossible_value_flags", "make_latent_fn", "compute_latents",
           "noise_free_latent_fn", "make_analyzer", "RECIPES", "information_plane_record", "analyze_run"]

#: Valid ``estimator`` values of :func:`analyze_run`: the Gaussian-mixture bounds
#: for noisy deterministic latents (k-NN where they do not apply), or k-NN always.
ESTIMATORS: tuple[str, ...] = ("mixture", "knn")

#: How H[Z] and H[Z|Y] were obtained, written beside them in every record.
H_Z_ESTIMATORS = {
    "mixture": "mixture: Kolchinsky-Tracey KL upper bound of the Gaussian mixture over the training points "
               "(h_z, h_z_given_y; Bhattacharyya lower bounds in h_z_lower, h_z_given_y_lower)",
    "mixture_diagonal": "mixture: Kolchinsky-Tracey KL upper bound of the mixture of the per-example Gaussians "
                        "N(mu(x), diag sigma(x)^2) over the training points (h_z, h_z_given_y)",
    "knn": "knn: Kozachenko-Leonenko k-NN estimate from one noise draw per example",
    "exact": "exact: categorical latent",
    "undefined": "undefined: a latent without noise whose values are discrete given X has H[Z] = -inf",
}

# Slack (nats) before a value counts as impossible: float rounding, not estimator bias.
_FLAG_TOLERANCE = 1e-3

#: How H[Z|X] was obtained, written beside it in every record.
H_Z_GIVEN_X_METHODS = {
    "exact_zero": "exact: deterministic encoder + zero-entropy noise gives H[Z|X] = 0",
    "undefined": "undefined: deterministic latent without noise has H[Z|X] = -inf (section 6.1)",
    "exact_categorical": "exact: mean entropy of p(z|x) for a categorical latent",
    "exact_gaussian": "exact: mean entropy of the Gaussian p(z|x) = N(mu(x), diag sigma(x)^2) of a VIB latent",
    "dropout_mixture": "bounded: KL upper bound of each example's mixture over its sampled Dropout masks plus noise "
                       "(Bhattacharyya lower bound in h_z_given_x_lower)",
    "undefined_dropout": "undefined: Dropout masks without noise make Z|X discrete, H[Z|X] = -inf",
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
    quantities = _assemble(h_z, h_z_given_y, h_z_given_x, h_z_given_x_method, _label_entropy(labels, num_classes))
    return dict(quantities, h_z_estimator=H_Z_ESTIMATORS["knn"])


def vib_mixture_quantities(means: jax.Array, scales: jax.Array, labels: np.ndarray,
                           num_classes: int) -> dict[str, Any]:
    """Information-plane quantities of a VIB latent Z|x ~ N(μ(x), diag σ(x)²) from the mixture bound (nats).

    H[Z] and H[Z|Y] are the KL upper bounds of
    :func:`ibjax.estimators.gaussian_mixture_entropy_upper_bound` over the
    training points (and over each class's); H[Z|X] is exact from σ(x). The
    Bhattacharyya lower bound has no matrix-product form for per-example
    covariances and is not computed. I[X;Z] lies in [0, log N].

    Args:
      means: ``[N, K]`` encoder means μ(x).
      scales: ``[N, K]`` encoder standard deviations σ(x).
      labels: ``[N]`` integer labels.
      num_classes: number of classes.
    """
    means, scales = np.asarray(means), np.asarray(scales)
    h_z = float(estimators.gaussian_mixture_entropy_upper_bound(means, scales))
    h_z_given_y = sum(np.mean(labels == c) * float(estimators.gaussian_mixture_entropy_upper_bound(
        means[labels == c], scales[labels == c])) for c in np.unique(labels))
    h_z_given_x = float(gaussian_conditional_entropy(scales))
    quantities = _assemble(h_z, float(h_z_given_y), h_z_given_x, "exact_gaussian", _label_entropy(labels, num_classes))
    return dict(quantities, h_z_estimator=H_Z_ESTIMATORS["mixture_diagonal"])


def mixture_quantities(means: jax.Array, labels: np.ndarray, num_classes: int, noise_std: float) -> dict[str, Any]:
    """Information-plane quantities of Z = μ(X) + ε, ε ~ N(0, σ² I), from the Gaussian-mixture bounds (nats).

    H[Z] and H[Z|Y] are the KL upper bounds of
    :func:`ibjax.estimators.mixture_entropy_bounds` (the Bhattacharyya lower
    bounds are kept as ``h_z_lower`` and ``h_z_given_y_lower``); H[Z|X] is the
    noise entropy exactly, so I[X;Z] lies in [0, log N] by construction.

    Args:
      means: ``[N, K]`` noise-free latents μ(x) of the training set.
      labels: ``[N]`` integer labels.
      num_classes: number of classes.
      noise_std: σ of the latent's noise.
    """
    lower, upper = estimators.mixture_entropy_bounds(means, noise_std)
    lower_y, upper_y = estimators.mixture_conditional_entropy_bounds(means, labels, noise_std)
    h_noise = estimators.gaussian_noise_entropy(noise_std, int(means.shape[1]))
    quantities = _assemble(float(upper), float(upper_y), h_noise, "exact_zero", _label_entropy(labels, num_classes))
    return dict(quantities, h_z_lower=float(lower), h_z_given_y_lower=float(lower_y),
                h_z_estimator=H_Z_ESTIMATORS["mixture"])


def _per_example_mixture_bounds(draws: np.ndarray, noise_std: float) -> tuple[float, float]:
    """Mean over examples of the (Bhattacharyya, KL) bounds of each example's mixture of its S draws, float64.

    Args:
      draws: ``[S, N, K]`` noise-free latents, S draws per example.
    """
    x = np.asarray(draws, np.float64).transpose(1, 0, 2)                       # [N, S, K]
    norms = np.sum(x * x, axis=-1)
    sq = np.maximum(norms[:, :, None] + norms[:, None, :] - 2 * np.einsum("nsk,ntk->nst", x, x), 0.0)
    s, k = x.shape[1], x.shape[2]
    h_noise = estimators.gaussian_noise_entropy(noise_std, k)
    bounds = []
    for c in (8.0, 2.0):
        log_mean = special.logsumexp(-sq / (c * noise_std**2), axis=-1) - math.log(s)   # [N, S]
        bounds.append(h_noise - float(np.mean(log_mean)))
    return bounds[0], bounds[1]


def dropout_quantities(draws: np.ndarray, labels: np.ndarray, num_classes: int,
                       noise_std: float | None) -> dict[str, Any]:
    """Information-plane quantities of a Dropout encoder's train-mode latent Z, all of the same variable (nats).

    Z = f_M(X) + ε with a random Dropout mask M and noise ε ~ N(0, σ² I). With
    S mask draws per training example, p(z|x) is approximated by the mixture
    of its S Gaussians N(f_m(x), σ² I) and p(z) by the mixture of all N·S, so
    H[Z], H[Z|Y] and H[Z|X] are each bracketed by the Kolchinsky–Tracey
    bounds (KL upper bound reported, Bhattacharyya lower bound in ``*_lower``).
    Drawing S masks out of the 2^m possible ones biases H[Z|X] low by at most
    log(2^m / S)-scale amounts when masks give well separated latents;
    ``tests/test_mixture.py`` measures it on cases with a known answer.

    Without noise the masks are discrete: Z|X=x takes finitely many values,
    so H[Z|X] = −∞ and H[Z], H[Z|Y] are −∞ too; every quantity is then
    reported as undefined (``None``), never as a finite number.

    Args:
      draws: ``[S, N, K]`` noise-free train-mode latents f_m(x), S ≥ 2 draws per example.
      labels: ``[N]`` integer labels.
      num_classes: number of classes.
      noise_std: σ of the latent's noise, or None for a latent without noise.
    """
    h_y = _label_entropy(labels, num_classes)
    if noise_std is None:
        undefined = {key: None for key in ("h_z", "h_z_given_y", "h_z_given_x", "i_y_z", "preserved_information",
                                           "redundant_information", "decoder_uncertainty", "residual_information")}
        return dict(undefined, h_y=h_y, h_z_given_x_method=H_Z_GIVEN_X_METHODS["undefined_dropout"],
                    h_z_estimator=H_Z_ESTIMATORS["undefined"])
    s, n, k = draws.shape
    flat = np.asarray(draws).transpose(1, 0, 2).reshape(n * s, k)
    lower, upper = estimators.mixture_entropy_bounds(flat, noise_std)
    lower_y, upper_y = estimators.mixture_conditional_entropy_bounds(flat, np.repeat(labels, s), noise_std)
    lower_x, upper_x = _per_example_mixture_bounds(draws, noise_std)
    quantities = _assemble(float(upper), float(upper_y), upper_x, "dropout_mixture", h_y)
    return dict(quantities, h_z_lower=float(lower), h_z_given_y_lower=float(lower_y), h_z_given_x_lower=lower_x,
                h_z_estimator=H_Z_ESTIMATORS["mixture"], num_dropout_draws=s)


def impossible_value_flags(record: dict[str, Any], num_examples: int) -> list[str]:
    """The quantities of an information-plane record outside their possible range, each with its likely cause.

    I[X;Z] ≤ H[X] = log N for N equally likely training points, I[Y;Z] ≥ 0,
    and the Residual Information I[X;Y|Z] = H[Y|Z] lies in [0, H[Y]].

    Example:
      >>> impossible_value_flags({"preserved_information": 9.0, "i_y_z": 0.5, "residual_information": 1.0,
      ...                         "h_y": 2.3}, num_examples=100)[0][:22]
      'I[X;Z] > log N = 4.605'
    """
    flags = []
    log_n = math.log(num_examples)
    preserved = record.get("preserved_information")
    if preserved is not None and preserved > log_n + _FLAG_TOLERANCE:
        flags.append(f"I[X;Z] > log N = {log_n:.3f}: the H[Z] estimate is biased high (k-NN from one noise draw "
                     "per example cannot see the noise; use the mixture bounds)")
    if record["i_y_z"] is None:  # undefined quantities (no noise) are not impossible values
        return flags
    if record["i_y_z"] < -_FLAG_TOLERANCE:
        flags.append("I[Y;Z] < 0: H[Z] and H[Z|Y] are biased differently (k-NN on classes of different sizes, or "
                     "a collapsed latent)")
    residual = record["residual_information"]
    if not -_FLAG_TOLERANCE <= residual <= record["h_y"] + _FLAG_TOLERANCE:
        flags.append(f"Residual Information {residual:.3f} outside [0, H[Y] = {record['h_y']:.3f}]: I[Y;Z] is "
                     "estimated outside [0, H[Y]]")
    return flags


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
    return dict(_assemble(h_z, h_z_given_y, h_z_given_x, "exact_categorical", h_y),
                h_z_estimator=H_Z_ESTIMATORS["exact"])


def categorical_code_usage(z_probs: np.ndarray, labels: np.ndarray, decoder_log_probs: np.ndarray,
                           num_classes: int, *, min_mass: float = 0.005) -> dict[str, float]:
    """How an encoder uses the categories of a categorical Z, and what a merged class would pay to leave (7.1).

    From p(z, y) = mean_n p(z|x_n) 1[y = y_n] (float64), with *used* categories
    those of p(z) >= ``min_mass`` and a class *apart* when it is the majority
    class of at least one used category:

    * ``classes_apart``: the number of classes apart; the others share every
      category they use with another class, so a decoder can only guess;
    * ``best_accuracy``: Σ_z max_y p(z, y), the accuracy of the optimal decoder;
    * ``effective_categories``: exp H[Z];
    * ``merged_fraction``: the fraction of examples whose class is not apart;
    * ``merged_cross_entropy``: their median decoder cross-entropy
      Σ_z p(z|x_n) (−log p_Θ(y_n|z)), what they pay where they are;
    * ``cheapest_move``: their median of min_z −log p_Θ(y_n|z) over the
      unused categories, what an example would pay if the encoder sent it
      wholly to the best empty category (a class that has no category of its
      own has to pass through one). ``cheapest_move`` > ``merged_cross_entropy``
      means that, with this decoder, every step towards an empty category
      raises the example's loss: the merged classes sit in a local minimum.

    The two medians are NaN when no class is merged (or no category is unused).

    Args:
      z_probs: ``[N, C]`` encoder probabilities p_Θ(z|x_n).
      labels: ``[N]`` integer labels in ``[0, num_classes)``.
      decoder_log_probs: ``[C, num_classes]`` log p_Θ(y|z) of the decoder.
      num_classes: the number of classes.
      min_mass: the least p(z) of a used category.
    """
    z_probs = np.asarray(z_probs, np.float64)
    labels = np.asarray(labels)
    decoder_log_probs = np.asarray(decoder_log_probs, np.float64)
    if z_probs.ndim != 2 or labels.shape != z_probs.shape[:1]:
        raise ValueError(f"`z_probs` must be [N, C] and `labels` [N]; got shapes {z_probs.shape} and {labels.shape}.")
    if decoder_log_probs.shape != (z_probs.shape[1], num_classes):
        raise ValueError(f"`decoder_log_probs` must be [C, num_classes] = [{z_probs.shape[1]}, {num_classes}]; "
                         f"got shape {decoder_log_probs.shape}.")
    if not 0.0 <= min_mass < 1.0:
        raise ValueError(f"`min_mass` must lie in [0, 1); got {min_mass!r}.")
    joint = np.zeros((z_probs.shape[1], num_classes))
    np.add.at(joint.T, labels, z_probs)
    joint /= len(labels)
    p_z = joint.sum(axis=1)
    used = p_z >= min_mass
    apart = set(np.argmax(joint[used], axis=1).tolist())
    merged = ~np.isin(labels, list(apart))
    nll = -decoder_log_probs[:, labels].T                              # [N, C]: −log p_Θ(y_n|z)
    paid = np.sum(z_probs * nll, axis=1)
    moves = nll[:, ~used].min(axis=1) if (~used).any() else np.full(len(labels), np.nan)
    positive = p_z[p_z > 0]
    return {"classes_apart": len(apart), "best_accuracy": float(joint.max(axis=1).sum()),
            "effective_categories": float(np.exp(-np.sum(positive * np.log(positive)))),
            "merged_fraction": float(merged.mean()),
            "merged_cross_entropy": float(np.median(paid[merged])) if merged.any() else math.nan,
            "cheapest_move": float(np.median(moves[merged])) if merged.any() else math.nan}


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


def make_latent_fn(model, config, *, stochastic: bool = False, scale: bool = False, mean: bool = False):
    """Jitted ``(state, images_uint8, key) -> latents``: Z ``[B, K]`` or p(z|x) ``[B, C]``.

    Eval mode with the configured noise; ``stochastic`` turns the Dropout
    encoder's masks on (train mode), to sample H[Z|X] of a stochastic encoder.
    ``scale`` returns the encoder scales σ(x) ``[B, K]`` of a VIB latent instead,
    ``mean`` its means μ(x).
    """
    kind = latents.of(config.model)
    if (scale or mean) and not kind.has_scale:
        raise ValueError(f"`scale=True` and `mean=True` need config.model.latent='vib'; got {config.model.latent!r}.")
    key_out = "z_scale" if scale else "z_mean" if mean else "z"

    @jax.jit
    def latent_fn(state, batch, key):
        x = datalib.preprocess(batch, config.data.name)
        dropout_key, noise_key = jax.random.split(key)
        variables = {"params": state.params, **({"batch_stats": state.batch_stats} if state.batch_stats else {})}
        out = model.apply(variables, x, train=stochastic, num_samples=1, rngs={"dropout": dropout_key, "noise": noise_key})
        return kind.point(out, key_out)

    return latent_fn


def compute_latents(latent_fn, state, images, *, num_draws: int = 1, rng=None, batch_size: int = 512) -> jax.Array:
    """Latents of ``images`` for ``num_draws`` independent noise/dropout draws: ``[num_draws, N, ...]``."""
    rng = jax.random.key(0) if rng is None else rng
    return jnp.stack([evaluation.map_batches(lambda batch, key: latent_fn(state, batch, key), images, batch_size,
                                             rng=jax.random.fold_in(rng, d)) for d in range(num_draws)])


def _h_z_given_x(config, stochastic_fn, scale_fn, state, images, k: int):
    """H[Z|X] and how it was obtained, by the latent kind's ``h_z_given_x_method``.

    (Dropout encoders' continuous latents go through :func:`dropout_quantities`.)
    """
    del stochastic_fn, k  # kept for the signature callers use
    method = latents.of(config.model).h_z_given_x_method
    if method == "exact_gaussian":
        scales = compute_latents(scale_fn, state, images)[0]
        return float(gaussian_conditional_entropy(scales)), method
    return (0.0 if method == "exact_zero" else None), method


def noise_free_latent_fn(model, config, train: bool = False):
    """Jitted ``(state, images_uint8, key) -> f(x)`` ``[B, K]``: a continuous latent before its noise.

    Eval mode, or with ``train`` the Dropout masks drawn from ``key``.
    """
    @jax.jit
    def mean_fn(state, batch, key):
        variables = {"params": state.params, **({"batch_stats": state.batch_stats} if state.batch_stats else {})}
        x = datalib.preprocess(batch, config.data.name)
        return capping.noise_free_latent(model, variables, x, train=train, rng=key)

    return mean_fn


def _read_done_epochs(path: Path) -> set[int]:
    return {int(r["epoch"]) for r in read_jsonl(path)} if path.exists() else set()


def analyze_run(workdir, *, k: int = 3, max_examples: int = 0, progress: bool = True,
                estimator: str = "mixture", records_name: str = "information_plane.jsonl") -> list[dict]:
    """Computes the information-plane quantities of every checkpoint of a run.

    Appends one record per epoch to ``workdir/information_plane.jsonl`` (or ``records_name``);
    epochs already there are skipped, and so is a checkpoint still being
    written (Orbax lists only finalised steps).

    Args:
      workdir: a run directory written by :func:`ibjax.train.train_and_evaluate`.
      k: neighbours of the k-NN estimators.
      max_examples: use only the first N training examples (0: all).
      progress: show a progress bar over checkpoints.
      records_name: the file name of the records, e.g. ``information_plane_knn.jsonl``
        to keep a k-NN analysis beside the default one.
      estimator: one of :data:`ESTIMATORS`. ``'mixture'`` (default) bounds
        H[Z] and H[Z|Y] of a deterministic encoder with zero-entropy noise by
        the Gaussian-mixture bounds (:func:`mixture_quantities`); other
        continuous latents (Dropout, VIB, no noise) use k-NN either way.

    Every record names the estimator of H[Z] (``h_z_estimator``) and lists
    the impossible values it holds in ``flags`` (:func:`impossible_value_flags`).

    Returns:
      The records computed by this call.
    """
    if estimator not in ESTIMATORS:
        raise ValueError(f"`estimator` must be one of {ESTIMATORS}; got {estimator!r}.")
    if "/" in records_name or not records_name.endswith(".jsonl"):
        raise ValueError(f"`records_name` must be a file name ending in .jsonl; got {records_name!r}.")
    with experiment.restore_run(workdir) as run:
        return _analyze_checkpoints(run, k, max_examples, progress, estimator, records_name)


def make_analyzer(model, config, *, estimator: str = "mixture", k: int = 3, num_dropout_draws: int = 8):
    """``(state, images, labels, num_classes) -> quantities`` of one run's state, the estimator chosen per latent.

    The latent kind chooses (:attr:`ibjax.latents.LatentKind.estimators`), for
    :func:`analyze_run` (on checkpoints) and the training loop
    (``train.analyze_every``) alike: categorical Z exact
    (:func:`categorical_quantities`); a Dropout encoder's continuous Z by the
    mixture bounds over sampled masks (:func:`dropout_quantities`); a VIB
    latent by the diagonal-Gaussian mixture bound
    (:func:`vib_mixture_quantities`); a deterministic encoder with
    zero-entropy noise by the Gaussian-mixture bounds
    (:func:`mixture_quantities`); otherwise, or with ``estimator='knn'``, k-NN
    (:func:`continuous_quantities`). The recipes are in :data:`RECIPES`; the
    functions are compiled once here.

    Args:
      model: the run's Flax model.
      config: the run's config (one member's).
      estimator: one of :data:`ESTIMATORS`.
      k: neighbours of the k-NN estimators.
      num_dropout_draws: Dropout masks sampled per example.
    """
    if estimator not in ESTIMATORS:
        raise ValueError(f"`estimator` must be one of {ESTIMATORS}; got {estimator!r}.")
    recipe = latents.of(config.model).estimators[estimator]
    return RECIPES[recipe](model, config, k=k, num_dropout_draws=num_dropout_draws)


def _exact_recipe(model, config, **_):
    latent_fn = make_latent_fn(model, config)

    def analyze(state, images, labels: np.ndarray, num_classes: int) -> dict[str, Any]:
        return categorical_quantities(np.asarray(compute_latents(latent_fn, state, images)[0]), labels, num_classes)

    return analyze


def _knn_recipe(model, config, *, k: int, **_):
    latent_fn = make_latent_fn(model, config)
    scale_fn = make_latent_fn(model, config, scale=True) if latents.of(config.model).has_scale else None

    def analyze(state, images, labels: np.ndarray, num_classes: int) -> dict[str, Any]:
        z = compute_latents(latent_fn, state, images)[0]
        h, method = _h_z_given_x(config, None, scale_fn, state, images, k)
        return continuous_quantities(np.asarray(z), labels, num_classes, h_z_given_x=h,
                                     h_z_given_x_method=method, k=k)

    return analyze


def _mixture_recipe(model, config, **_):
    mean_fn = noise_free_latent_fn(model, config)

    def analyze(state, images, labels: np.ndarray, num_classes: int) -> dict[str, Any]:
        means = compute_latents(mean_fn, state, images)[0]
        return mixture_quantities(np.asarray(means), labels, num_classes, ZERO_ENTROPY_STD)

    return analyze


def _mixture_diagonal_recipe(model, config, **_):
    mean_fn = make_latent_fn(model, config, mean=True)
    scale_fn = make_latent_fn(model, config, scale=True)

    def analyze(state, images, labels: np.ndarray, num_classes: int) -> dict[str, Any]:
        return vib_mixture_quantities(compute_latents(mean_fn, state, images)[0],
                                      compute_latents(scale_fn, state, images)[0], labels, num_classes)

    return analyze


def _dropout_mixture_recipe(model, config, *, num_dropout_draws: int, **_):
    dropout_fn = noise_free_latent_fn(model, config, train=True)
    noise_std = ZERO_ENTROPY_STD if config.model.noise else None

    def analyze(state, images, labels: np.ndarray, num_classes: int) -> dict[str, Any]:
        draws = compute_latents(dropout_fn, state, images, num_draws=num_dropout_draws, rng=jax.random.key(1))
        return dropout_quantities(np.asarray(draws), labels, num_classes, noise_std)

    return analyze


#: How the analysis obtains a kind's quantities (:attr:`ibjax.latents.LatentKind.estimators` names one):
#: ``exact`` (categorical, :func:`categorical_quantities`), ``knn`` (:func:`continuous_quantities`, H[Z|X] by
#: the kind's ``h_z_given_x_method``), ``mixture`` (:func:`mixture_quantities`), ``mixture_diagonal``
#: (:func:`vib_mixture_quantities`) and ``dropout_mixture`` (:func:`dropout_quantities` over sampled masks).
RECIPES: dict[str, Callable[..., Callable]] = {
    "exact": _exact_recipe, "knn": _knn_recipe, "mixture": _mixture_recipe,
    "mixture_diagonal": _mixture_diagonal_recipe, "dropout_mixture": _dropout_mixture_recipe,
}


def information_plane_record(config, epoch: int, quantities: dict[str, Any], metrics: dict[str, Any],
                             num_examples: int) -> dict[str, Any]:
    """One information-plane record: the epoch, γ, the quantities, the epoch's accuracies and the ``flags``."""
    record = {
        "epoch": epoch,
        "gamma": float(config.objective.gamma),
        "regularizer": config.objective.regularizer,
        **quantities,
        "train_cross_entropy": metrics.get("train_decoder_cross_entropy", math.nan),
        "train_accuracy": metrics.get("train_accuracy", math.nan),
        "test_accuracy": metrics.get("test_accuracy", math.nan),
    }
    record["flags"] = impossible_value_flags(record, num_examples)
    return record


def _analyze_checkpoints(run: experiment.RunCheckpoints, k: int, max_examples: int, progress: bool,
                         estimator: str, records_name: str) -> list[dict]:
    from tqdm.auto import tqdm

    config, dataset, workdir = run.experiment.config, run.experiment.dataset, run.workdir
    images, labels = dataset.x_train, dataset.y_train
    if max_examples:
        images, labels = images[:max_examples], labels[:max_examples]
    metrics_path = workdir / "metrics.jsonl"
    metrics = {m["epoch"]: m for m in (read_jsonl(metrics_path) if metrics_path.exists() else [])}
    out_path = workdir / records_name
    done = _read_done_epochs(out_path)
    epochs = [e for e in run.epochs if e not in done]
    analyze = make_analyzer(run.experiment.model, config, estimator=estimator, k=k)
    records = []
    for epoch in tqdm(epochs, desc=f"analyse {workdir.name}", unit="ckpt", disable=not progress):
        state, _ = run.restore(epoch)
        quantities = analyze(state, images, labels, dataset.num_classes)
        record = information_plane_record(config, epoch, quantities, metrics.get(epoch, {}), len(labels))
        append_jsonl(out_path, record)
        records.append(record)
    return records
