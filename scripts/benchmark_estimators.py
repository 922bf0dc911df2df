r"""Times ``ibjax.estimators.knn_entropy`` against reference k-NN searches.

  python scripts/benchmark_estimators.py --n 20000 --d 100 --k 3 --repeats 3

Every method computes the same Kozachenko–Leonenko estimate on the same
float32 standard normal data [N, d] (analytic entropy (d/2) log(2πe)); only
the k-th-neighbour search differs:

* ``ibjax``: :func:`ibjax.estimators.knn_entropy` (exact, float32, jitted);
* ``cKDTree``: ``scipy.spatial.cKDTree.query`` on all cores (float64 inside);
* ``sklearn``: ``sklearn.neighbors.NearestNeighbors`` with ``n_jobs=-1``;
* ``numpy brute``: blocked ‖q‖² + ‖x‖² − 2 q·x and ``np.partition``.

Seconds are the best of ``--repeats`` calls (for JAX, after one compiling call);
the JAX compile time (first call minus steady state) is its own column. "ratio" is seconds over the
fastest reference's seconds.
"""

import math
import time

import jax
import numpy as np
from absl import app, flags
from scipy import special
from scipy.spatial import cKDTree
from sklearn.neighbors import NearestNeighbors

from ibjax import estimators

_N = flags.DEFINE_integer("n", 20_000, "Number of samples N.")
_D = flags.DEFINE_integer("d", 100, "Dimension d.")
_K = flags.DEFINE_integer("k", 3, "Neighbour order k.")
_REPEATS = flags.DEFINE_integer("repeats", 3, "Timed calls per method (best is reported).")
_BLOCK_SIZE = flags.DEFINE_integer("block_size", None, "knn_entropy block_size; default its own.")
_SEED = flags.DEFINE_integer("seed", 0, "Seed of the Gaussian data.")

_NUMPY_BLOCK = 512


def kl_entropy(kth_distances: np.ndarray, d: int, k: int) -> float:
    """Kozachenko–Leonenko estimate from the k-th-neighbour distances, float64."""
    n = kth_distances.size
    log_volume = 0.5 * d * math.log(math.pi) - special.gammaln(0.5 * d + 1)
    return float(
        special.digamma(n)
        - special.digamma(k)
        + log_volume
        + d * np.mean(np.log(np.asarray(kth_distances, np.float64)))
    )


def ckdtree_kth(x: np.ndarray, k: int) -> np.ndarray:
    distances, _ = cKDTree(x).query(x, k + 1, workers=-1)
    return distances[:, k]


def sklearn_kth(x: np.ndarray, k: int) -> np.ndarray:
    distances, _ = NearestNeighbors(n_neighbors=k + 1, n_jobs=-1).fit(x).kneighbors(x)
    return distances[:, k]


def numpy_brute_kth(x: np.ndarray, k: int) -> np.ndarray:
    x = x - x.mean(axis=0)
    xx = np.einsum("nd,nd->n", x, x)
    out = np.empty(len(x), np.float32)
    for start in range(0, len(x), _NUMPY_BLOCK):
        q = x[start : start + _NUMPY_BLOCK]
        sq = xx[start : start + len(q), None] + xx[None, :] - 2.0 * (q @ x.T)
        sq[np.arange(len(q)), np.arange(start, start + len(q))] = np.inf  # not self
        out[start : start + len(q)] = np.partition(sq, k - 1, axis=1)[:, k - 1]
    return np.sqrt(np.maximum(out, 0.0))


def best_of(fn, repeats: int) -> tuple[float, float, object]:
    """(first call's seconds, best of all ``repeats`` calls, last result)."""
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - start)
    return times[0], min(times), result


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {' '.join(argv[1:])}")
    n, d, k, repeats = _N.value, _D.value, _K.value, _REPEATS.value
    x = np.random.default_rng(_SEED.value).standard_normal((n, d)).astype(np.float32)
    analytic = 0.5 * d * math.log(2 * math.pi * math.e)

    def ibjax_entropy():
        return float(estimators.knn_entropy(x, k, block_size=_BLOCK_SIZE.value))

    # One call more than the references: the first one compiles.
    first, _, _ = best_of(ibjax_entropy, 1)
    _, steady, h = best_of(ibjax_entropy, repeats)
    rows = [("ibjax knn_entropy", steady, first - steady, h)]
    for name, kth in [("cKDTree", ckdtree_kth), ("sklearn", sklearn_kth), ("numpy brute", numpy_brute_kth)]:
        _, steady, distances = best_of(lambda: kth(x, k), repeats)
        rows.append((name, steady, None, kl_entropy(distances, d, k)))

    fastest = min(seconds for _, seconds, _, _ in rows[1:])
    print(f"N = {n}, d = {d}, k = {k}, devices = {jax.device_count()} "
          f"({jax.devices()[0].platform}), best of {repeats}")
    print(
        "| method | N | d | seconds | compile s | ratio vs fastest reference "
        "| estimate (nats) | analytic (nats) |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for name, seconds, compile_s, h in rows:
        compile_col = f"{compile_s:.2f}" if compile_s is not None else "-"
        print(
            f"| {name} | {n} | {d} | {seconds:.3f} | {compile_col} | {seconds / fastest:.2f} "
            f"| {h:.4f} | {analytic:.4f} |"
        )


if __name__ == "__main__":
    app.run(main)
