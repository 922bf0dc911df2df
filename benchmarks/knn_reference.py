r"""The references of the k-NN estimator rows of ``benchmarks/accelerator.py``.

Data with known answers (:func:`gaussian_pairs`: paired Gaussian coordinates,
whose entropy and mutual information are analytic) and the estimators of
``ibjax.estimators`` computed another way: the k-th-neighbour distances or
the KSG counts by brute force in PyTorch (on any device, float32), or by
scikit-learn's exact neighbour search on the host (float64), each put through
the estimator's formula in float64 on the host:

* Kozachenko & Leonenko (1987): H[Z] ≈ ψ(N) − ψ(k) + log V_d + (d/N) Σ log ε_i;
* Kraskov, Stögbauer & Grassberger (2004), algorithm 1:
  I[X;Y] ≈ ψ(k) + ψ(N) − mean[ψ(n_x + 1) + ψ(n_y + 1)].
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable

import numpy as np
from scipy import special

K = 3  # neighbour order of every estimator row
RHO = 0.9  # correlation of the paired coordinates of the estimators' Gaussian data


def gaussian_pairs(n: int, d: int, rho: float = RHO, seed: int = 0) -> np.ndarray:
    """float32 ``[n, d]``: d/2 standard normal coordinates, then each paired with correlation ``rho``.

    Analytic values: H[Z] = (d/2) log(2πe) + (d/4) log(1 − ρ²); with x the first
    and y the second half, I[X;Y] = −(d/4) log(1 − ρ²).
    """
    if d % 2:
        raise ValueError(f"`d` must be even; got {d}.")
    rng = np.random.default_rng(seed)
    a = rng.standard_normal((n, d // 2))
    b = rho * a + math.sqrt(1.0 - rho**2) * rng.standard_normal((n, d // 2))
    return np.concatenate([a, b], axis=1).astype(np.float32)


def analytic_entropy(d: int, rho: float = RHO) -> float:
    return 0.5 * d * math.log(2 * math.pi * math.e) + 0.25 * d * math.log(1.0 - rho**2)


def analytic_mutual_information(d: int, rho: float = RHO) -> float:
    return -0.25 * d * math.log(1.0 - rho**2)


def kl_entropy_from_distances(kth: np.ndarray, d: int, k: int) -> float:
    """Kozachenko–Leonenko in float64: ψ(N) − ψ(k) + log V_d + (d/N) Σ log ε_i, ε_i the k-th-neighbour distance."""
    kth = np.asarray(kth, np.float64)
    log_unit_ball = 0.5 * d * math.log(math.pi) - math.lgamma(0.5 * d + 1.0)
    return float(special.digamma(kth.size) - special.digamma(k) + log_unit_ball + d * np.log(kth).mean())


def ksg_from_counts(n_x: np.ndarray, n_y: np.ndarray, k: int) -> float:
    """KSG (algorithm 1) in float64: ψ(k) + ψ(N) − mean[ψ(n_x + 1) + ψ(n_y + 1)]."""
    n_x, n_y = np.asarray(n_x, np.float64), np.asarray(n_y, np.float64)
    return float(special.digamma(k) + special.digamma(n_x.size)
                 - np.mean(special.digamma(n_x + 1.0) + special.digamma(n_y + 1.0)))


def conditional_from_classes(entropy_fn: Callable[[np.ndarray], float], x: np.ndarray, labels: np.ndarray) -> float:
    """Σ_y p̂(y) H[X | Y = y] with ``entropy_fn`` on each class's points."""
    classes, counts = np.unique(labels, return_counts=True)
    return float(sum(c / len(labels) * entropy_fn(x[labels == y]) for y, c in zip(classes, counts)))


@contextlib.contextmanager
def _full_float32_matmuls():
    """Float32 matrix products without TF32 (the distances must be float32-accurate)."""
    import torch

    saved = torch.get_float32_matmul_precision()
    torch.set_float32_matmul_precision("highest")
    try:
        yield
    finally:
        torch.set_float32_matmul_precision(saved)


def torch_kth_distances(x: np.ndarray, k: int, device="cpu", block: int = 1024) -> np.ndarray:
    """Distances to the k-th nearest other point by brute force on ``device``.

    Blocks of query rows: squared distances ‖q‖² + ‖x‖² − 2 q·x as one matrix
    product each (float32, no TF32), then ``torch.topk``.
    """
    import torch

    with _full_float32_matmuls(), torch.no_grad():
        points = torch.as_tensor(np.asarray(x, np.float32), device=device)
        points = points - points.mean(dim=0)
        norms = (points * points).sum(dim=1)
        out = torch.empty(points.shape[0], device=device)
        for start in range(0, points.shape[0], block):
            q = points[start:start + block]
            squared = norms[start:start + len(q), None] + norms[None, :] - 2.0 * (q @ points.T)
            rows = torch.arange(len(q), device=device)
            squared[rows, rows + start] = math.inf  # not the point itself
            out[start:start + len(q)] = torch.topk(squared, k, dim=1, largest=False).values[:, k - 1]
        return out.clamp_min(0.0).sqrt().cpu().numpy()


def torch_ksg_counts(x: np.ndarray, y: np.ndarray, k: int, device="cpu", block: int = 1024
                     ) -> tuple[np.ndarray, np.ndarray]:
    """n_x, n_y of KSG algorithm 1 by brute force on ``device``: max-norm distances (``torch.cdist``, p = ∞)."""
    import torch

    with torch.no_grad():
        xs, ys = (torch.as_tensor(np.asarray(a, np.float32), device=device) for a in (x, y))
        xs, ys = xs - xs.mean(dim=0), ys - ys.mean(dim=0)
        n_x = torch.empty(xs.shape[0], dtype=torch.int64, device=device)
        n_y = torch.empty_like(n_x)
        for start in range(0, xs.shape[0], block):
            dx = torch.cdist(xs[start:start + block], xs, p=math.inf)
            dy = torch.cdist(ys[start:start + block], ys, p=math.inf)
            joint = torch.maximum(dx, dy)
            rows = torch.arange(len(dx), device=device)
            joint[rows, rows + start] = math.inf
            eps = torch.topk(joint, k, dim=1, largest=False).values[:, k - 1:k]
            n_x[start:start + len(dx)] = (dx < eps).sum(dim=1) - 1  # minus the point itself
            n_y[start:start + len(dx)] = (dy < eps).sum(dim=1) - 1
        return n_x.cpu().numpy(), n_y.cpu().numpy()


def torch_knn_entropy(x: np.ndarray, k: int = K, device="cpu") -> float:
    return kl_entropy_from_distances(torch_kth_distances(x, k, device), x.shape[1], k)


def torch_ksg(x: np.ndarray, y: np.ndarray, k: int = K, device="cpu") -> float:
    return ksg_from_counts(*torch_ksg_counts(x, y, k, device), k)


def sklearn_knn_entropy(x: np.ndarray, k: int = K) -> float:
    """Kozachenko–Leonenko with scikit-learn's exact neighbours on the host (float64, all cores)."""
    from sklearn.neighbors import NearestNeighbors

    x = np.asarray(x, np.float64)
    distances = NearestNeighbors(n_neighbors=k + 1, n_jobs=-1).fit(x).kneighbors(x)[0]
    return kl_entropy_from_distances(distances[:, k], x.shape[1], k)


def sklearn_ksg(x: np.ndarray, y: np.ndarray, k: int = K) -> float:
    """KSG with scikit-learn on the host: the joint k-th neighbour (Chebyshev), then KDTree radius counts."""
    from sklearn.neighbors import KDTree, NearestNeighbors

    x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
    z = np.hstack([x, y])
    eps = NearestNeighbors(n_neighbors=k + 1, metric="chebyshev", n_jobs=-1).fit(z).kneighbors(z)[0][:, k]
    radius = np.nextafter(eps, 0)  # query_radius counts distances ≤ r; KSG counts < ε
    n_x = KDTree(x, metric="chebyshev").query_radius(x, radius, count_only=True) - 1
    n_y = KDTree(y, metric="chebyshev").query_radius(y, radius, count_only=True) - 1
    return ksg_from_counts(n_x, n_y, k)
