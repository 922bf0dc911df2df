"""k-nearest-neighbour estimators of entropy and mutual information (nats).

The paper estimates H[Z], H[Z|Y] and I[X;Z] of continuous latents with the
estimators of Kraskov et al. (2004) (section 7.3, figure 5). This module holds
exact-neighbour, blocked implementations of

* :func:`knn_entropy` -- Kozachenko–Leonenko differential entropy H[X];
* :func:`knn_conditional_entropy` -- Σ_y p(y) H[X|Y=y], one estimate a class;
* :func:`ksg_mutual_information` -- Kraskov–Stögbauer–Grassberger I[X;Y];

and, for a latent with known Gaussian noise Z = f(X) + ε, ε ~ N(0, σ² I),
whose H[Z] is the entropy of a Gaussian mixture over the training points,

* :func:`mixture_entropy_bounds` -- the pairwise-distance bounds of Kolchinsky
  & Tracey (2017): a Bhattacharyya lower and a KL upper bound on H[Z];
* :func:`mixture_conditional_entropy_bounds` -- the same for H[Z|Y].

How the neighbours are found
----------------------------
Query rows are processed ``block_size`` at a time with ``jax.lax.map`` inside
one ``jax.jit``, so memory is O(block_size × N) and never N × N; the blocks are
split over the given devices with ``jax.shard_map`` (data replicated). N is
padded to a multiple of ``block_size × devices``; padded rows and columns are
masked. The neighbours are exact:

1. Squared Euclidean distances are matrix-multiply shaped,
   ‖q‖² + ‖x‖² − 2 q·x, in float32 on data centred and divided by a power
   of two near its largest entry (exact, and no overflow or underflow at
   magnitudes of 1e±30). Each is shifted down by a rigorous bound on its
   float32 rounding error, about (2d + 16) u (‖q‖² + ‖x‖²) with u = 2⁻²⁴, so
   it is a *lower bound* of the true squared distance.
2. Columns are cut into groups of 16; the ``k + 2`` groups with the smallest
   lower bound are the candidates, and the candidates' distances are
   recomputed directly, Σ_c (q_c − x_c)², which is accurate to float32
   rounding whatever the scale of the data.
3. The k-th smallest recomputed distance is certified exact when no point
   outside the candidates can be nearer, i.e. when the smallest lower bound
   outside the candidates is not below it. A block with an uncertified query
   (near-duplicate points, tiny distances in low dimension) is recomputed
   directly for all its pairs instead (``jax.lax.cond``), so the answer never
   depends on matmul rounding.

Selecting whole groups keeps ``jax.lax.top_k`` cheap: it runs over N/16 group
minima rather than N values, and the k groups with the smallest minima
always contain a row's k smallest values (used by the direct path and by KSG).

Duplicates
----------
A point whose k-th neighbour is at distance 0 (a duplicated point, e.g. a
noise-free ReLU latent) makes log ε = −∞. The estimators then raise a
``ValueError`` that counts such points, rather than returning −∞ or NaN. The
fix is to add zero-entropy noise to the latent
(:func:`ibjax.losses.add_zero_entropy_noise`, which keeps H[Z] meaningful) or
to opt in to ``jitter``: Gaussian noise of standard deviation
``jitter × RMS(x − mean x)`` drawn from ``rng``. Kraskov et al. (2004) advise
relative amplitudes near 1e-10, but the distances here are float32, where
noise below about 1e-7 of a coordinate's magnitude is rounded away, so use
``jitter`` of 1e-6 to 1e-5. A duplicated point then contributes about
(d/N) log(jitter) to the entropy, so the estimate depends on the jitter chosen:
report it with the result.

References
----------
* L. F. Kozachenko and N. N. Leonenko, "Sample estimate of the entropy of a
  random vector", Problems of Information Transmission 23(2):95–101, 1987.
* A. Kraskov, H. Stögbauer and P. Grassberger, "Estimating mutual
  information", Physical Review E 69(6):066138, 2004.
* A. Kolchinsky and B. D. Tracey, "Estimating mixture entropy with pairwise
  distances", Entropy 19(7):361, 2017.
* A. M. Saxe et al., "On the information bottleneck theory of deep
  learning", ICLR 2018 (the KL bound as their "KDE upper bound").
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh
from jax.sharding import PartitionSpec as P
from scipy import special

from ibjax import _checks

__all__ = [
    "DEFAULT_BLOCK_SIZE",
    "knn_entropy",
    "knn_conditional_entropy",
    "ksg_mutual_information",
    "gaussian_noise_entropy",
    "mixture_entropy_bounds",
    "mixture_conditional_entropy_bounds",
    "gaussian_mixture_entropy_upper_bound",
]

#: Query rows per block when ``block_size=None`` (tuned on a 2-core CPU for
#: N = 20,000, d = 100; smaller N uses smaller blocks).
DEFAULT_BLOCK_SIZE: int = 128

# Columns per group of the two-stage k-th-smallest selection.
_GROUP = 16
# Extra candidate groups beyond k, the slack that lets step 3 certify a query.
_EXTRA_GROUPS = 2
# Unit roundoff of float32.
_U = 2.0**-24
_AXIS = "queries"


# --------------------------------------------------------------------------
# Preparation: centring, jitter, padding
# --------------------------------------------------------------------------


def _centred(x, name: str) -> np.ndarray:
    """``x − mean(x)`` as a float64 host array, to be cast by :func:`_rescaled`.

    Entropies and mutual information are translation invariant; centring first
    spends no float32 digits on a common offset and keeps ‖x‖² (and so the
    matmul rounding) as small as the spread allows. The preparation is on the
    host so that classes of different sizes compile nothing.
    """
    x = np.asarray(x, np.float64)
    if not np.all(np.isfinite(x)):
        bad = np.count_nonzero(~np.isfinite(x))
        raise ValueError(f"{name} must be finite; it has {bad} NaN or inf entries")
    return x - x.mean(axis=0)


def _rescaled(*arrays: np.ndarray) -> tuple[list[np.ndarray], float]:
    """The arrays divided by one power of two s near their largest |entry|, as float32, and log s.

    Float32 squared distances overflow beyond ~1e19 and underflow to a false
    duplicate below ~1e-19; at |x| < 1 neither happens. Dividing by a power
    of two is exact: an entropy of X is that of X/s plus d log s, and the
    KSG estimate of (X/s, Y/s) is that of (X, Y), bit for bit.
    """
    largest = max(float(np.max(np.abs(a), initial=0.0)) for a in arrays)
    exponent = int(np.frexp(largest)[1])  # largest = m · 2^exponent, ½ ≤ m < 1
    return [np.ldexp(a, -exponent).astype(np.float32) for a in arrays], exponent * math.log(2.0)


def _jittered(x: np.ndarray, jitter: float, rng) -> np.ndarray:
    """``x`` plus N(0, (jitter · RMS(x))²) noise; ``x`` itself when jitter is 0."""
    if jitter == 0:
        return x
    scale = float(np.sqrt(np.mean(np.square(x, dtype=np.float64)))) or 1.0
    noise = np.asarray(jax.random.normal(rng, x.shape, jnp.float32))
    return (x + jitter * scale * noise).astype(np.float32)


def _round_up(a: int, m: int) -> int:
    return -(-a // m) * m


def _layout(n: int, n_devices: int, block_size: int | None) -> tuple[int, int]:
    """(rows a block, padded length): padded to whole blocks on every device and whole groups."""
    if block_size is None:
        block_size = min(DEFAULT_BLOCK_SIZE, _round_up(-(-n // n_devices), _GROUP))
    padded = _round_up(n, math.lcm(block_size * n_devices, _GROUP))
    return block_size, padded


def _pad_rows(x: np.ndarray, padded: int) -> np.ndarray:
    return np.pad(x, ((0, padded - x.shape[0]), (0, 0)))


# --------------------------------------------------------------------------
# Blocked exact k-th-neighbour search (pure, jitted)
# --------------------------------------------------------------------------

# Coordinatewise term and how terms combine, for ‖·‖² and ‖·‖_∞.
_NORMS = {
    "sqeuclidean": (jnp.square, jnp.add, jnp.sum),
    "chebyshev": (jnp.abs, jnp.maximum, jnp.max),
}


def _distances(q: jax.Array, points: jax.Array, norm: str) -> jax.Array:
    """Direct distances from each query q_b [B, d] to points [B or 1, M, d] -> [B, M].

    Never materialises [B, M, d]: XLA fuses either form into one pass. Up to 16
    columns are unrolled into elementwise ops, which vectorise along M (a
    reduction over a short last axis does not).
    """
    term, combine, reduce = _NORMS[norm]
    d = q.shape[1]
    if d <= 16:
        return functools.reduce(
            combine, [term(points[:, :, c] - q[:, c, None]) for c in range(d)]
        )
    return reduce(term(points - q[:, None, :]), axis=-1)


def _smallest_groups(values: jax.Array, num: int) -> tuple[jax.Array, jax.Array]:
    """The ``num`` groups of 16 columns of ``values`` [B, P] with the smallest minima.

    Returns their indices [B, num] and minima [B, num], ascending. The k groups
    with the smallest minima contain a row's k smallest values: any other group's
    minimum is at least the largest of those k minima, which are k distinct
    entries. So ``top_k`` runs over P/16 group minima rather than P values.
    """
    b, p = values.shape
    neg_minima, groups = jax.lax.top_k(-jnp.min(values.reshape(b, p // _GROUP, _GROUP), axis=2), num)
    return groups, -neg_minima


def _kth_in_groups(q, rows, x, n, groups, k: int, distance) -> jax.Array:
    """k-th smallest ``distance(q, candidates)`` over the members of ``groups`` [B, num]."""
    b, num = groups.shape
    d = x.shape[1]
    idx = (groups[:, :, None] * _GROUP + jnp.arange(_GROUP)).reshape(b, num * _GROUP)
    candidates = x.reshape(-1, _GROUP, d)[groups].reshape(b, num * _GROUP, d)
    values = jnp.where(_is_neighbour(rows[:, None], idx, n), distance(q, candidates), jnp.inf)
    return _kth_smallest(values, k)


def _kth_smallest(values: jax.Array, k: int) -> jax.Array:
    """k-th smallest entry of each row of ``values`` [B, M], ties counted.

    k passes of "next larger distinct value, and how many are ≤ it". XLA on
    CPU lowers a values-only ``top_k`` to a full sort, which is 30× slower here.
    """
    kth = jnp.full(values.shape[:1], jnp.inf, values.dtype)
    threshold = jnp.full(values.shape[:1], -jnp.inf, values.dtype)
    for _ in range(k):
        threshold = jnp.min(jnp.where(values > threshold[:, None], values, jnp.inf), axis=1)
        reached = jnp.sum(values <= threshold[:, None], axis=1) >= k
        kth = jnp.where(reached & (kth == jnp.inf), threshold, kth)
    return kth


def _is_neighbour(rows: jax.Array, cols: jax.Array, n: jax.Array) -> jax.Array:
    """Valid (unpadded) columns other than the query itself, broadcast [rows, cols]."""
    return (cols < n) & (rows != cols)


def _kth_sq_distance_block(q, rows, x, xx, n, *, k: int) -> jax.Array:
    """Exact squared distance from each query to its k-th nearest other point.

    Args:
      q: ``[B, d]`` query block. rows: ``[B]`` their indices in ``x``.
      x: ``[P, d]`` all (padded) points. xx: ``[P]`` their squared norms.
      n: number of valid rows of ``x``.

    Returns:
      ``[B]`` squared distances (exact to float32 rounding of the direct sum).
    """
    d = q.shape[1]
    num_groups = x.shape[0] // _GROUP
    neighbour = _is_neighbour(rows[:, None], jnp.arange(x.shape[0])[None, :], n)
    sq_distance = functools.partial(_distances, norm="sqeuclidean")
    # (1 - beta) (|q|^2 + |x|^2) - 2 q.x <= |q - x|^2: beta bounds the float32
    # error of the matmul form relative to |q|^2 + |x|^2: gamma_d = d u / (1 - d u)
    # for each length-d sum (norms; the dot product, as |q.x| <= (|q|^2 + |x|^2) / 2)
    # and a few u for the adds and scalings.
    beta = 2 * d * _U / (1 - d * _U) + 16 * _U
    lower = (1 - beta) * xx[None, :] - 2 * jnp.dot(q, x.T, precision=jax.lax.Precision.HIGHEST)
    num = min(k + _EXTRA_GROUPS, num_groups)
    groups, minima = _smallest_groups(jnp.where(neighbour, lower, jnp.inf), num)
    kth = _kth_in_groups(q, rows, x, n, groups, k, sq_distance)
    if num == num_groups:  # every column was a candidate
        return kth

    outside = minima[:, -1] + (1 - beta) * jnp.sum(q * q, axis=1)  # bounds every non-candidate
    certified = jnp.all((outside >= kth) | (rows >= n))

    def direct():
        exact = jnp.where(neighbour, sq_distance(q, x[None]), jnp.inf)
        groups, _ = _smallest_groups(exact, min(k, num_groups))
        return _kth_in_groups(q, rows, x, n, groups, k, sq_distance)

    return jax.lax.cond(certified, lambda: kth, direct)


def _map_blocks(fn, mesh: Mesh, block: int, x: jax.Array, *replicated):
    """Applies ``fn(q, rows, x, *replicated)`` to every block of rows of ``x``.

    The blocks are split evenly over ``mesh``; each device maps over its own
    with ``lax.map``. Returns ``fn``'s outputs with a leading ``[P]`` axis.
    """
    p, d = x.shape
    n_dev = mesh.devices.size
    per_dev = p // (block * n_dev)
    q = x.reshape(n_dev, per_dev, block, d)
    rows = jnp.arange(p, dtype=jnp.int32).reshape(n_dev, per_dev, block)

    def per_device(q, rows, x, *replicated):
        out = jax.lax.map(lambda a: fn(a[0], a[1], x, *replicated), (q[0], rows[0]))
        return jax.tree.map(lambda o: o[None], out)

    out = jax.shard_map(
        per_device,
        mesh=mesh,
        in_specs=(P(_AXIS), P(_AXIS), P()) + (P(),) * len(replicated),
        out_specs=P(_AXIS),
    )(q, rows, x, *replicated)
    return jax.tree.map(lambda o: o.reshape(p, *o.shape[3:]), out)


@functools.partial(jax.jit, static_argnames=("k", "block", "mesh"))
def _padded_knn_log_distances(x: jax.Array, n: jax.Array, *, k: int, block: int, mesh: Mesh):
    """log ε_i for the first ``n`` rows of padded float32 ``x`` [P, d]; rest unspecified."""
    xx = jnp.sum(x * x, axis=1)
    fn = functools.partial(_kth_sq_distance_block, k=k)
    return 0.5 * jnp.log(_map_blocks(fn, mesh, block, x, xx, n))


@functools.partial(jax.jit, static_argnames=("k", "block_size", "mesh"))
def _knn_log_distances(x: jax.Array, k: int, block_size: int | None, mesh: Mesh) -> jax.Array:
    """log of the Euclidean distance from each point to its k-th nearest other point.

    A pure, jitted function of float32 ``x`` [N, d] (usable under an outer
    ``jax.jit``): ``[N]``, −∞ where that distance is 0. One compilation per
    (N, d, k, block_size, mesh).
    """
    n = x.shape[0]
    block, padded = _layout(n, mesh.devices.size, block_size)
    x = jnp.pad(x, ((0, padded - n), (0, 0)))
    return _padded_knn_log_distances(x, jnp.int32(n), k=k, block=block, mesh=mesh)[:n]


def _ksg_block(q, rows, z, n, *, dim_x: int, k: int):
    """ε_i/2 (max-norm k-th neighbour distance in the joint space), n_x and n_y of a block."""
    neighbour = _is_neighbour(rows[:, None], jnp.arange(z.shape[0])[None, :], n)

    def marginals(q, points):
        return (
            _distances(q[:, :dim_x], points[:, :, :dim_x], "chebyshev"),
            _distances(q[:, dim_x:], points[:, :, dim_x:], "chebyshev"),
        )

    def joint(q, points):
        return jnp.maximum(*marginals(q, points))

    dist_x, dist_y = marginals(q, z[None])
    groups, _ = _smallest_groups(
        jnp.where(neighbour, jnp.maximum(dist_x, dist_y), jnp.inf), min(k, z.shape[0] // _GROUP)
    )
    eps = _kth_in_groups(q, rows, z, n, groups, k, joint)
    n_x = jnp.sum(neighbour & (dist_x < eps[:, None]), axis=1)
    n_y = jnp.sum(neighbour & (dist_y < eps[:, None]), axis=1)
    return eps, n_x, n_y


@functools.partial(jax.jit, static_argnames=("dim_x", "k", "block", "mesh"))
def _padded_ksg_counts(z: jax.Array, n: jax.Array, *, dim_x: int, k: int, block: int, mesh: Mesh):
    fn = functools.partial(_ksg_block, dim_x=dim_x, k=k)
    return _map_blocks(fn, mesh, block, z, n)


# --------------------------------------------------------------------------
# Host-side checks and the estimators
# --------------------------------------------------------------------------


def _check_no_duplicates(kth_is_zero: np.ndarray, k: int, what: str) -> None:
    count = int(np.count_nonzero(kth_is_zero))
    if count:
        raise ValueError(
            f"{count} of {kth_is_zero.size} points have a zero distance to their "
            f"k-th nearest neighbour (k = {k}) in {what}: duplicated points make the "
            "estimate -inf. Add zero-entropy noise to the latent "
            "(ibjax.losses.add_zero_entropy_noise), or pass jitter=1e-6 and rng=key "
            "to add low-amplitude Gaussian noise."
        )


def _log_unit_ball_volume(d: int) -> float:
    """log V_d = (d/2) log π − log Γ(d/2 + 1), the Euclidean unit d-ball."""
    return 0.5 * d * math.log(math.pi) - special.gammaln(0.5 * d + 1)


def _kl_entropy(log_eps: np.ndarray, d: int, k: int) -> float:
    n = log_eps.size
    return float(
        special.digamma(n)
        - special.digamma(k)
        + _log_unit_ball_volume(d)
        + d * np.mean(log_eps, dtype=np.float64)
    )


def _arguments(x, k, block_size, devices, jitter, rng):
    """The checked arguments every estimator takes: ``(k, (N, d), block_size, mesh, jitter)``."""
    k = _checks.check_k(k)
    return (k, _checks.check_points(x, "x", k), _checks.check_block_size(block_size),
            _checks.check_devices(devices, _AXIS), _checks.check_jitter(jitter, rng))


def knn_entropy(
    x: jax.Array,
    k: int = 3,
    *,
    block_size: int | None = None,
    devices: Sequence[jax.Device] | None = None,
    jitter: float = 0.0,
    rng: jax.Array | None = None,
) -> jax.Array:
    """Kozachenko–Leonenko k-nearest-neighbour estimate of differential entropy.

    .. math::
        \\hat H[X] = \\psi(N) - \\psi(k) + \\log V_d
                     + \\frac{d}{N} \\sum_{i=1}^N \\log \\varepsilon_i,
        \\qquad V_d = \\frac{\\pi^{d/2}}{\\Gamma(d/2 + 1)},

    with ε_i the Euclidean distance from x_i to its k-th nearest other sample
    and V_d the volume of the unit d-ball (Kozachenko & Leonenko 1987, in the
    form of Kraskov et al. 2004 with ε_i a radius rather than a diameter).

    Method: exact neighbours by blocked, matmul-shaped distances in float32
    (see the module docstring), O(block_size × N) memory, split over
    ``devices``; one compilation per (N, d, k, block) shape. The average of
    log ε_i and the constants are combined in float64 on the host.

    Bias and variance: the estimator assumes the density is locally constant
    within each ε_i ball. It is consistent, with O(1/√N) standard deviation and a
    bias that vanishes as N → ∞ but grows with d for fixed N (the balls grow)
    and is largest where the density changes fast (e.g. near the support's
    boundary); a larger k lowers the variance and raises the bias. For a
    Gaussian with d = 1–10 and N of a few thousand both are a few hundredths of
    a nat per dimension or less.

    Args:
      x: ``[N, d]`` float samples, N > k.
      k: neighbour order, ≥ 1.
      block_size: query rows per block (memory O(block_size × N)); ``None`` for
        :data:`DEFAULT_BLOCK_SIZE` (less for small N). Does not change the result.
      devices: devices to split the query blocks over; ``None`` for all devices of
        the default backend. Does not change the result.
      jitter: if > 0, add Gaussian noise of standard deviation
        ``jitter × RMS(x − mean x)`` before estimating (opt-in tie breaking; see
        the module docstring). Requires ``rng``.
      rng: ``jax.random`` key for ``jitter``.

    Returns:
      Scalar float32 entropy in nats.

    Raises:
      ValueError: if some point's k-th neighbour is at distance 0 (duplicates);
        the message counts them and suggests zero-entropy noise or ``jitter``.

    References:
      Kozachenko & Leonenko, Problems of Information Transmission 23(2), 1987;
      Kraskov, Stögbauer & Grassberger, Phys. Rev. E 69, 066138, 2004.

    Example:
      A standard normal in d = 2 has H = log(2πe) ≈ 2.838 nats.

      >>> import jax, math
      >>> x = jax.random.normal(jax.random.key(0), (4000, 2))
      >>> h = float(knn_entropy(x, k=3))  # 2.855
      >>> abs(h - math.log(2 * math.pi * math.e)) < 0.05
      True
    """
    k, (n, d), block_size, mesh, jitter = _arguments(x, k, block_size, devices, jitter, rng)
    (x,), log_scale = _rescaled(_centred(x, "x"))
    x = _jittered(x, jitter, rng)
    log_eps = np.asarray(_knn_log_distances(x, k, block_size, mesh))
    _check_no_duplicates(np.isneginf(log_eps), k, "x")
    return jnp.asarray(_kl_entropy(log_eps + log_scale, d, k), jnp.float32)


def knn_conditional_entropy(
    x: jax.Array,
    labels: jax.Array,
    k: int = 3,
    *,
    block_size: int | None = None,
    devices: Sequence[jax.Device] | None = None,
    jitter: float = 0.0,
    rng: jax.Array | None = None,
) -> jax.Array:
    """Conditional differential entropy H[X|Y] of a continuous X given class labels Y.

    .. math::
        \\hat H[X|Y] = \\sum_y \\hat p(y)\\, \\hat H[X \\mid Y=y],
        \\qquad \\hat p(y) = N_y / N,

    where each \\hat H[X|Y=y] is :func:`knn_entropy` on the N_y points of class
    y alone (neighbours are searched within the class).

    Method: as :func:`knn_entropy`; every class is padded to the size of the
    largest, so all classes share one compilation.

    Bias and variance: those of :func:`knn_entropy` at N_y points per class,
    so larger than for H[X] at the same N; the class frequencies are plug-in.

    Args:
      x: ``[N, d]`` float samples.
      labels: ``[N]`` integer class of each sample. Every class present needs
        more than k points.
      k, block_size, devices, jitter, rng: as for :func:`knn_entropy`.

    Returns:
      Scalar float32 conditional entropy in nats.

    Raises:
      ValueError: if a class has at most k points (the message names it), or a
        class has duplicated points (see :func:`knn_entropy`).

    References:
      Kozachenko & Leonenko 1987; Kraskov, Stögbauer & Grassberger 2004.

    Example:
      Two classes with standard normal X in d = 1 around different means:
      H[X|Y] = ½ log(2πe) ≈ 1.419 nats.

      >>> import jax, jax.numpy as jnp, math
      >>> labels = jnp.arange(4000) % 2
      >>> x = jax.random.normal(jax.random.key(0), (4000, 1)) + 5.0 * labels[:, None]
      >>> h = float(knn_conditional_entropy(x, labels, k=3))  # 1.438
      >>> abs(h - 0.5 * math.log(2 * math.pi * math.e)) < 0.05
      True
    """
    k, (n, d), block_size, mesh, jitter = _arguments(x, k, block_size, devices, jitter, rng)
    labels = _checks.check_host_labels(labels, n)
    classes, counts = np.unique(labels, return_counts=True)
    for label, count in zip(classes, counts):
        if count <= k:
            raise ValueError(
                f"class {label} of labels has {count} points; each class needs more than k = {k}"
            )
    (x,), log_scale = _rescaled(_centred(x, "x"))
    x = _jittered(x, jitter, rng)
    block, padded = _layout(int(counts.max()), mesh.devices.size, block_size)
    total = 0.0
    for label, count in zip(classes, counts):
        (xc,), class_log_scale = _rescaled(_centred(x[labels == label], "x"))
        log_eps = np.asarray(
            _padded_knn_log_distances(_pad_rows(xc, padded), np.int32(count), k=k, block=block, mesh=mesh)
        )[:count]
        _check_no_duplicates(np.isneginf(log_eps), k, f"class {label} of x")
        total += count / n * _kl_entropy(log_eps + log_scale + class_log_scale, d, k)
    return jnp.asarray(total, jnp.float32)


def ksg_mutual_information(
    x: jax.Array,
    y: jax.Array,
    k: int = 3,
    *,
    block_size: int | None = None,
    devices: Sequence[jax.Device] | None = None,
    jitter: float = 0.0,
    rng: jax.Array | None = None,
) -> jax.Array:
    """Kraskov–Stögbauer–Grassberger estimate of mutual information I[X;Y] (algorithm 1).

    .. math::
        \\hat I[X;Y] = \\psi(k) + \\psi(N)
                       - \\frac1N \\sum_{i=1}^N \\big[\\psi(n_x(i) + 1) + \\psi(n_y(i) + 1)\\big]

    Distances are max-norms: ‖x − x'‖_∞ in X, ‖y − y'‖_∞ in Y, and
    max(‖x − x'‖_∞, ‖y − y'‖_∞) in the joint space. ε_i/2 is the joint
    distance from z_i = (x_i, y_i) to its k-th nearest other point, and n_x(i)
    (n_y(i)) counts the points j ≠ i with ‖x_i − x_j‖_∞ < ε_i/2 (strictly), as
    in Kraskov et al. (2004), algorithm 1.

    Method: exact, blocked max-norm distances in float32 (O(block_size × N)
    memory), split over ``devices``; the digamma average is taken in float64 on
    the host.

    Bias and variance: using the same ε_i in the joint and marginal spaces
    makes the biases of the entropy terms largely cancel; the estimate is
    close to 0 for independent X, Y (errors of order 1e-2 nats at N ~ 1000)
    and is biased towards 0 for strongly dependent ones; larger k lowers the
    variance and raises the bias (Kraskov et al. recommend k = 2–4). The
    estimate can be slightly negative.

    Args:
      x: ``[N, d_x]`` float samples of X, N > k.
      y: ``[N, d_y]`` float samples of Y (same N).
      k, block_size, devices, jitter, rng: as for :func:`knn_entropy`
        (``jitter`` is applied to x and y with independent noise).

    Returns:
      Scalar float32 mutual information in nats.

    Raises:
      ValueError: if some joint k-th-neighbour distance is 0 (duplicates).

    References:
      Kraskov, Stögbauer & Grassberger, Phys. Rev. E 69, 066138, 2004.

    Example:
      Correlated Gaussians with ρ = 0.9: I = −½ log(1 − ρ²) ≈ 0.830 nats.

      >>> import jax, jax.numpy as jnp, math
      >>> a, b = jax.random.normal(jax.random.key(0), (2, 4000, 1))
      >>> mi = float(ksg_mutual_information(a, 0.9 * a + jnp.sqrt(0.19) * b))  # 0.827
      >>> abs(mi + 0.5 * math.log(1 - 0.9**2)) < 0.05
      True
    """
    k, (n, dim_x), block_size, mesh, jitter = _arguments(x, k, block_size, devices, jitter, rng)
    _checks.check_points(y, "y", k)
    if y.shape[0] != n:
        raise ValueError(f"x and y must have the same number of rows, got {x.shape[0]} and {y.shape[0]}")
    (x, y), _ = _rescaled(_centred(x, "x"), _centred(y, "y"))  # one scale: KSG is not invariant to two
    if jitter:
        rng_x, rng_y = jax.random.split(rng)
        x, y = _jittered(x, jitter, rng_x), _jittered(y, jitter, rng_y)
    block, padded = _layout(n, mesh.devices.size, block_size)
    z = _pad_rows(np.concatenate([x, y], axis=1), padded)
    eps, n_x, n_y = _padded_ksg_counts(z, np.int32(n), dim_x=dim_x, k=k, block=block, mesh=mesh)
    _check_no_duplicates(np.asarray(eps[:n]) == 0, k, "the joint space of (x, y)")
    n_x, n_y = np.asarray(n_x[:n]), np.asarray(n_y[:n])
    mi = (
        special.digamma(k)
        + special.digamma(n)
        - np.mean(special.digamma(n_x + 1.0) + special.digamma(n_y + 1.0))
    )
    return jnp.asarray(mi, jnp.float32)



# --------------------------------------------------------------------------
# Gaussian-mixture entropy bounds (Kolchinsky & Tracey 2017)
# --------------------------------------------------------------------------


def gaussian_noise_entropy(noise_std: float, dim: int) -> float:
    """Differential entropy of N(0, σ² I_d) in nats: d/2 · log(2πe σ²); 0 for zero-entropy noise.

    This is H[Z|X] of Z = f(X) + ε for a deterministic encoder f.

    Example:
      >>> from ibjax.losses import ZERO_ENTROPY_STD
      >>> abs(gaussian_noise_entropy(ZERO_ENTROPY_STD, 128)) < 1e-12
      True
    """
    if isinstance(noise_std, bool) or not isinstance(noise_std, (int, float)) or not 0 < noise_std < math.inf:
        raise ValueError(f"noise_std must be a positive finite number, got {noise_std!r}")
    if isinstance(dim, bool) or not isinstance(dim, (int, np.integer)) or dim < 1:
        raise ValueError(f"dim must be a positive integer, got {dim!r}")
    return 0.5 * dim * math.log(2.0 * math.pi * math.e * float(noise_std) ** 2)


def _pairwise_logsumexp_block(q, rows, x, xx, n, *, scales: tuple[float, ...]) -> jax.Array:
    """``log Σ_j exp(−s ‖q_b − x_j‖²)`` over the valid columns j, for each scale s: ``[B, len(scales)]``.

    The diagonal (j = the query itself) is exactly 0; other squared distances
    come from the matrix-product form, clamped at 0.
    """
    cols = jnp.arange(x.shape[0])
    sq = jnp.sum(q * q, axis=1)[:, None] + xx[None, :] - 2 * jnp.dot(q, x.T, precision=jax.lax.Precision.HIGHEST)
    sq = jnp.where(rows[:, None] == cols[None, :], 0.0, jnp.maximum(sq, 0.0))
    valid = (cols < n)[None, :]
    return jnp.stack([jax.nn.logsumexp(jnp.where(valid, -s * sq, -jnp.inf), axis=1) for s in scales], axis=1)


@functools.partial(jax.jit, static_argnames=("scales", "block", "mesh"))
def _padded_pairwise_logsumexp(x: jax.Array, n: jax.Array, *, scales: tuple[float, ...], block: int, mesh: Mesh):
    xx = jnp.sum(x * x, axis=1)
    fn = functools.partial(_pairwise_logsumexp_block, scales=scales)
    return _map_blocks(fn, mesh, block, x, xx, n)


def _mixture_bounds(means: np.ndarray, noise_std: float, block_size, mesh) -> tuple[float, float]:
    """(lower, upper) for one equal-weight mixture of N(μ_i, σ² I) over the rows of ``means`` (float64 host)."""
    n, d = means.shape
    (x,), log_scale = _rescaled(_centred(means, "means"))
    # Distances of the rescaled means are those of the means over s²: fold s² into the exponents.
    s2 = math.exp(2.0 * log_scale)
    # Bhattacharyya distance ‖Δμ‖²/(8σ²) gives the lower bound, KL ‖Δμ‖²/(2σ²) the upper.
    scales = (s2 / (8.0 * noise_std**2), s2 / (2.0 * noise_std**2))
    block, padded = _layout(n, mesh.devices.size, block_size)
    lse = np.asarray(_padded_pairwise_logsumexp(_pad_rows(x, padded), np.int32(n), scales=scales, block=block,
                                                mesh=mesh), np.float64)[:n]
    h_component = gaussian_noise_entropy(noise_std, d)
    lower, upper = (h_component + math.log(n) - float(np.mean(lse[:, i])) for i in range(2))
    return lower, upper


def _check_mixture_arguments(means, noise_std, block_size, devices):
    shape = getattr(means, "shape", None)
    if shape is None or len(shape) != 2 or shape[0] < 1 or shape[1] < 1:
        raise ValueError(f"means must be a 2-D float array [N, d] with N, d >= 1, got shape {shape}")
    if not jnp.issubdtype(means.dtype, jnp.floating):
        raise TypeError(f"means must have a floating dtype, got {means.dtype}")
    gaussian_noise_entropy(noise_std, int(shape[1]))  # checks noise_std
    return (np.asarray(means, np.float64), float(noise_std), _checks.check_block_size(block_size),
            _checks.check_devices(devices, _AXIS))


def mixture_entropy_bounds(
    means: jax.Array,
    noise_std: float,
    *,
    block_size: int | None = None,
    devices: Sequence[jax.Device] | None = None,
) -> tuple[jax.Array, jax.Array]:
    r"""Lower and upper bounds on H[Z] for Z = μ(X) + ε, ε ~ N(0, σ² I), X uniform over N points (nats).

    Z is then exactly an equal-weight mixture of N Gaussians N(μ_i, σ² I), and
    with H_ε = d/2 log(2πe σ²) (:func:`gaussian_noise_entropy`) the pairwise
    bounds of Kolchinsky & Tracey (2017) are

    .. math::
        \hat H_{BD} = H_\varepsilon - \frac1N \sum_i \log \frac1N \sum_j
            e^{-\|\mu_i - \mu_j\|^2 / 8\sigma^2}
        \;\le\; H[Z] \;\le\;
        \hat H_{KL} = H_\varepsilon - \frac1N \sum_i \log \frac1N \sum_j
            e^{-\|\mu_i - \mu_j\|^2 / 2\sigma^2}

    (the Bhattacharyya and the Kullback–Leibler distance of two components).
    Both lie in [H_ε, H_ε + log N], the range of the true H[Z]; they coincide
    when the means are all equal (H_ε) or all far apart (H_ε + log N). So
    I[X;Z] = H[Z] − H_ε is bounded in [0, log N] by construction — unlike a
    k-NN estimate from one noise draw per example. The KL bound is what Saxe
    et al. (2018) call the KDE upper bound.

    Computation: one logsumexp per row over the pairwise squared distances,
    blocked (``block_size`` query rows at a time, O(block × N) memory) and
    the blocks split over ``devices``. The distances use the matrix-product
    form in float32 on centred, power-of-two rescaled means; each exponent
    is accurate to about (2d + 16) · 2⁻²⁴ · (‖μ_i‖² + ‖μ_j‖²) / σ² of the
    centred means, a bias far below the bounds' gap at the scales of
    trained latents (checked against float64 in the tests).

    Args:
      means: ``[N, d]`` noise-free latents μ(x_n) of the data set.
      noise_std: σ of the isotropic Gaussian noise (``ibjax.losses.ZERO_ENTROPY_STD``
        for zero-entropy noise, whose H_ε = 0).
      block_size: query rows per block (default: up to 128).
      devices: devices to split the blocks over (default: all).

    Returns:
      ``(lower, upper)``: scalar float32 bounds in nats.

    References:
      Kolchinsky & Tracey, Entropy 19(7):361, 2017; Saxe et al., ICLR 2018.

    Example:
      Two means far apart: Z is two separate Gaussians, H[Z] = H_ε + log 2.

      >>> import jax.numpy as jnp, math
      >>> lo, hi = mixture_entropy_bounds(jnp.array([[0.0], [100.0]]), 1.0)
      >>> h = 0.5 * math.log(2 * math.pi * math.e) + math.log(2)
      >>> abs(float(lo) - h) < 1e-5 and abs(float(hi) - h) < 1e-5
      True
    """
    means, noise_std, block_size, mesh = _check_mixture_arguments(means, noise_std, block_size, devices)
    if not np.all(np.isfinite(means)):
        raise ValueError("means must be finite")
    lower, upper = _mixture_bounds(means, noise_std, block_size, mesh)
    return jnp.asarray(lower, jnp.float32), jnp.asarray(upper, jnp.float32)


def mixture_conditional_entropy_bounds(
    means: jax.Array,
    labels: jax.Array,
    noise_std: float,
    *,
    block_size: int | None = None,
    devices: Sequence[jax.Device] | None = None,
) -> tuple[jax.Array, jax.Array]:
    """Lower and upper bounds on H[Z|Y] = Σ_y p(y) H[Z|Y=y] for Z = μ(X) + ε (nats).

    Given Y = y, Z is the equal-weight mixture of the N_y components of the
    class, so each H[Z|Y=y] is bracketed by :func:`mixture_entropy_bounds`
    on that class's means, and the bounds are averaged with p(y) = N_y / N.

    Args:
      means: ``[N, d]`` noise-free latents.
      labels: ``[N]`` integer labels.
      noise_std: σ of the isotropic Gaussian noise.
      block_size, devices: as for :func:`mixture_entropy_bounds`.

    Returns:
      ``(lower, upper)``: scalar float32 bounds in nats.

    Example:
      >>> import jax.numpy as jnp
      >>> means = jnp.array([[0.0], [50.0], [0.0], [50.0]])
      >>> lo, hi = mixture_conditional_entropy_bounds(means, jnp.array([0, 0, 1, 1]), 1.0)
      >>> abs(float(hi) - float(mixture_entropy_bounds(means[:2], 1.0)[1])) < 1e-5
      True
    """
    means, noise_std, block_size, mesh = _check_mixture_arguments(means, noise_std, block_size, devices)
    labels = _checks.check_host_labels(labels, means.shape[0])
    if not np.all(np.isfinite(means)):
        raise ValueError("means must be finite")
    lower = upper = 0.0
    n = means.shape[0]
    for label in np.unique(labels):
        members = means[labels == label]
        lo, hi = _mixture_bounds(members, noise_std, block_size, mesh)
        lower += len(members) / n * lo
        upper += len(members) / n * hi
    return jnp.asarray(lower, jnp.float32), jnp.asarray(upper, jnp.float32)



@functools.partial(jax.jit, static_argnames=("block",))
def _diagonal_kl_logsumexp(q: jax.Array, k: jax.Array, e: jax.Array, *, block: int) -> jax.Array:
    """``log Σ_j exp(−KL(p_i ‖ p_j))`` for every row i, from the packed features of the components.

    KL(p_i ‖ p_j) = ½ (q_i · k_j − d − e_i) with q_i = [σ_i² + μ_i², −2 μ_i, 1],
    k_j = [1/σ_j², μ_j/σ_j², Σ_k μ_jk²/σ_jk² + log σ_jk²] and e_i = Σ_k log σ_ik²;
    padded columns carry +inf in their last feature. Rows go ``block`` at a time.
    """
    n, width = q.shape
    d = (width - 1) // 2
    rows = jnp.arange(n).reshape(-1, block)

    def one_block(r):
        kl = 0.5 * (jnp.dot(q[r], k.T, precision=jax.lax.Precision.HIGHEST) - d - e[r][:, None])
        kl = jnp.where(r[:, None] == jnp.arange(k.shape[0])[None, :], 0.0, jnp.maximum(kl, 0.0))
        return jax.nn.logsumexp(-kl, axis=1)

    return jax.lax.map(one_block, rows).reshape(-1)


def gaussian_mixture_entropy_upper_bound(
    means: jax.Array,
    scales: jax.Array,
    *,
    block_size: int | None = None,
) -> jax.Array:
    """KL upper bound on H[Z] for Z|X=x_i ~ N(μ_i, diag σ_i²), X uniform over N points (nats).

    The heteroscedastic form of :func:`mixture_entropy_bounds` for a latent
    with a learnt, per-example scale such as the Deep Variational IB's:

    .. math::
        H[Z] \\le \\frac1N \\sum_i H(p_i) - \\frac1N \\sum_i \\log \\frac1N \\sum_j
            e^{-\\mathrm{KL}(p_i \\| p_j)}

    (Kolchinsky & Tracey 2017, with the KL divergence of two diagonal
    Gaussians). Every KL is a matrix product of per-component features, so
    the bound is blocked like the others; it lies in [H[Z|X], H[Z|X] + log N]
    with H[Z|X] = (1/N) Σ_i H(p_i), so I[X;Z] ≤ log N.

    Args:
      means: ``[N, d]`` component means μ(x_i).
      scales: ``[N, d]`` component standard deviations σ(x_i) > 0.
      block_size: query rows per block (default: up to 128).

    Returns:
      Scalar float32 upper bound in nats.

    Example:
      Two far-apart components with σ = 1 in d = 1: H = ½ log(2πe) + log 2.

      >>> import jax.numpy as jnp, math
      >>> h = gaussian_mixture_entropy_upper_bound(jnp.array([[0.0], [100.0]]), jnp.ones((2, 1)))
      >>> abs(float(h) - 0.5 * math.log(2 * math.pi * math.e) - math.log(2)) < 1e-5
      True
    """
    means64 = np.asarray(means, np.float64)
    scales64 = np.asarray(scales, np.float64)
    if means64.ndim != 2 or scales64.shape != means64.shape or means64.shape[0] < 1:
        raise ValueError(f"means and scales must both be [N, d] with N >= 1; got {means64.shape} and {scales64.shape}")
    if not (np.all(np.isfinite(means64)) and np.all(np.isfinite(scales64)) and np.all(scales64 > 0)):
        raise ValueError("means must be finite and scales finite and > 0")
    n, d = means64.shape
    block_size = _checks.check_block_size(block_size)
    centred = means64 - means64.mean(axis=0)
    var = scales64**2
    log_var = np.log(var)
    q = np.concatenate([var + centred**2, -2.0 * centred, np.ones((n, 1))], axis=1)
    k = np.concatenate([1.0 / var, centred / var, np.sum(centred**2 / var + log_var, axis=1, keepdims=True)], axis=1)
    block = block_size or min(DEFAULT_BLOCK_SIZE, n)
    padded = _round_up(n, block)
    q = np.pad(q, ((0, padded - n), (0, 0)))
    k = np.pad(k, ((0, padded - n), (0, 0)))
    k[n:, -1] = np.inf  # padded components never count
    e = np.pad(np.sum(log_var, axis=1), (0, padded - n))
    lse = np.asarray(_diagonal_kl_logsumexp(jnp.asarray(q, jnp.float32), jnp.asarray(k, jnp.float32),
                                            jnp.asarray(e, jnp.float32), block=block), np.float64)[:n]
    h_components = float(np.mean(0.5 * np.sum(np.log(2 * np.pi * np.e) + log_var, axis=1)))
    return jnp.asarray(h_components + math.log(n) - float(np.mean(lse)), jnp.float32)
