"""Tests of ibjax.estimators against analytic values and float64 cKDTree references."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import special
from scipy.spatial import cKDTree

from ibjax import _checks
from ibjax import estimators as E

# --------------------------------------------------------------------------
# Independent float64 references (scipy.spatial.cKDTree)
# --------------------------------------------------------------------------


def ref_kl_entropy(x, k):
    x = np.asarray(x, np.float64)
    n, d = x.shape
    eps = cKDTree(x).query(x, k + 1)[0][:, k]  # k + 1: the query point itself comes first
    log_vd = 0.5 * d * math.log(math.pi) - math.lgamma(0.5 * d + 1)
    return special.digamma(n) - special.digamma(k) + log_vd + d * np.mean(np.log(eps))


def ref_conditional_entropy(x, labels, k):
    labels = np.asarray(labels)
    return sum(
        np.mean(labels == c) * ref_kl_entropy(np.asarray(x)[labels == c], k) for c in np.unique(labels)
    )


def ref_ksg(x, y, k):
    x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
    z = np.hstack([x, y])
    n = len(z)
    eps = cKDTree(z).query(z, k + 1, p=np.inf)[0][:, k]
    r = np.nextafter(eps, 0)  # query_ball_point counts <= r; the estimator counts < eps
    n_x = cKDTree(x).query_ball_point(x, r, p=np.inf, return_length=True) - 1  # minus self
    n_y = cKDTree(y).query_ball_point(y, r, p=np.inf, return_length=True) - 1
    return special.digamma(k) + special.digamma(n) - np.mean(special.digamma(n_x + 1) + special.digamma(n_y + 1))


def gaussian(n, cov, seed):
    rng = np.random.default_rng(seed)
    return (rng.standard_normal((n, len(cov))) @ np.linalg.cholesky(cov).T).astype(np.float32)


def correlated_cov(d):
    a = np.random.default_rng(123).standard_normal((d, d))
    return a @ a.T / d + 0.5 * np.eye(d)


def gaussian_entropy(cov):
    return 0.5 * np.linalg.slogdet(2 * np.pi * np.e * np.asarray(cov))[1]


# --------------------------------------------------------------------------
# Hand-checked tiny cases
# --------------------------------------------------------------------------


def test_entropy_four_points_on_a_line_by_hand():
    # x = 0, 1, 3, 7 and k = 1: nearest-neighbour distances 1, 1, 2, 4.
    # psi(4) - psi(1) = 1 + 1/2 + 1/3; V_1 = 2; mean log eps = (0 + 0 + log 2 + log 4)/4.
    expected = (1 + 1 / 2 + 1 / 3) + math.log(2) + 3 / 4 * math.log(2)
    x = np.array([[0.0], [1.0], [3.0], [7.0]], np.float32)
    assert float(E.knn_entropy(x, k=1)) == pytest.approx(expected, rel=1e-6)


def test_ksg_four_points_by_hand():
    # z = (0,0), (1,2), (3,1), (7,5), k = 1. Max-norm joint distances:
    # d01 = 2, d02 = 3, d03 = 7, d12 = 2, d13 = 6, d23 = 4, so eps = 2, 2, 2, 4.
    # n_x (|dx| < eps strictly): 1, 1, 0, 0  (|1-3| = 2 and |7-3| = 4 are ties, not counted).
    # n_y: 1, 1, 2, 1                         (|0-2| = 2 and |5-1| = 4 are ties).
    # I = psi(1) + psi(4) - mean(psi(n_x+1) + psi(n_y+1))
    #   = (11/6 - 2 gamma) - (5 psi(2) + 2 psi(1) + psi(3)) / 4 = 11/6 - 13/8.
    x = np.array([[0.0], [1.0], [3.0], [7.0]], np.float32)
    y = np.array([[0.0], [2.0], [1.0], [5.0]], np.float32)
    assert float(E.ksg_mutual_information(x, y, k=1)) == pytest.approx(11 / 6 - 13 / 8, abs=1e-6)


def test_kth_smallest_counts_ties():
    values = jnp.array([[3.0, 1.0, 1.0, 2.0, jnp.inf], [5.0, 4.0, 4.0, 4.0, 0.0]])
    np.testing.assert_array_equal(E._kth_smallest(values, 1), [1.0, 0.0])
    np.testing.assert_array_equal(E._kth_smallest(values, 2), [1.0, 4.0])
    np.testing.assert_array_equal(E._kth_smallest(values, 3), [2.0, 4.0])
    np.testing.assert_array_equal(E._kth_smallest(values, 5), [jnp.inf, 5.0])


# --------------------------------------------------------------------------
# Against float64 cKDTree computations of the same estimators
# --------------------------------------------------------------------------


@pytest.mark.parametrize(
    "n, d, k",
    [
        (1500, 1, 3),  # tiny distances: the matmul bound cannot certify, the direct path runs
        (2000, 3, 1),
        (1000, 10, 4),
        (600, 100, 3),  # the certified matmul path
        (5, 2, 4),  # k = N - 1: every other point is a neighbour
    ],
)
def test_knn_entropy_matches_ckdtree(n, d, k):
    x = gaussian(n, correlated_cov(d), seed=d)
    assert float(E.knn_entropy(x, k)) == pytest.approx(ref_kl_entropy(x, k), rel=1e-4)


def test_knn_entropy_exact_for_low_rank_and_offset_data():
    # A 2-D plane in 40 dimensions at offset 1e5: neighbours are close compared
    # with |x|, so exactness needs centring and the direct recomputation.
    rng = np.random.default_rng(5)
    x = 1e5 + rng.standard_normal((1200, 2)) @ rng.standard_normal((2, 40))
    x32 = x.astype(np.float32)
    assert float(E.knn_entropy(x32, 3)) == pytest.approx(ref_kl_entropy(x32, 3), rel=1e-4)
    # float64 input is centred in float64 before the cast, losing no digits to the offset.
    assert float(E.knn_entropy(x, 3)) == pytest.approx(ref_kl_entropy(x, 3), rel=1e-4)


def test_knn_entropy_exact_when_matmul_rounding_exceeds_neighbour_distances():
    # Two tight clusters far from the mean: float32 rounding of |q|^2 + |x|^2 - 2 q.x
    # (~1e-4 at |x|^2 = 900) exceeds the squared neighbour distances (~1e-6), so the
    # matmul candidates are arbitrary; only the certified direct fallback is exact.
    rng = np.random.default_rng(9)
    centre = 30.0 * np.ones(10) / np.sqrt(10)
    x = np.concatenate([c + 1e-3 * rng.standard_normal((300, 10)) for c in (centre, -centre)])
    x = x.astype(np.float32)
    assert float(E.knn_entropy(x, 3)) == pytest.approx(ref_kl_entropy(x, 3), rel=1e-4)


def test_knn_conditional_entropy_matches_ckdtree():
    rng = np.random.default_rng(1)
    labels = rng.integers(0, 3, 900)
    x = (gaussian(900, correlated_cov(4), seed=1) * (1 + labels[:, None])).astype(np.float32)
    got = float(E.knn_conditional_entropy(x, labels, k=3))
    assert got == pytest.approx(ref_conditional_entropy(x, labels, 3), rel=1e-4)


@pytest.mark.parametrize("dx, dy, k", [(1, 1, 3), (2, 3, 2), (18, 2, 3)])
def test_ksg_matches_ckdtree(dx, dy, k):
    z = gaussian(1500 if dx + dy < 10 else 600, correlated_cov(dx + dy), seed=dx)
    x, y = z[:, :dx], z[:, dx:]
    assert float(E.ksg_mutual_information(x, y, k)) == pytest.approx(ref_ksg(x, y, k), rel=1e-4)


# --------------------------------------------------------------------------
# Against analytic values
# --------------------------------------------------------------------------


# Tolerance = |bias| + 4 standard deviations of the k = 3 estimator for these
# covariances at N = 4000, measured over 40 float64 cKDTree replicates:
# d = 1: bias +0.004, sd 0.014; d = 2: bias -0.004, sd 0.017;
# d = 10: bias +0.10, sd 0.035 (the bias grows with d at fixed N).
@pytest.mark.parametrize("d, tol", [(1, 0.07), (2, 0.08), (10, 0.25)])
def test_knn_entropy_of_correlated_gaussian(d, tol):
    cov = correlated_cov(d) * (4.0 if d == 1 else 1.0)
    x = gaussian(4000, cov, seed=10 + d)
    assert abs(float(E.knn_entropy(x, 3)) - gaussian_entropy(cov)) < tol


# I = -1/2 log(1 - rho^2). Tolerance = |bias| + 4 sd of KSG (k = 3) at N = 2000
# over 40 replicates: rho = 0.6: bias -0.003, sd 0.020; rho = 0.9: bias +0.016, sd 0.028.
@pytest.mark.parametrize("rho, tol", [(0.6, 0.09), (0.9, 0.13)])
def test_ksg_of_correlated_gaussians(rho, tol):
    a, b = np.random.default_rng(20).standard_normal((2, 2000, 1)).astype(np.float32)
    y = rho * a + math.sqrt(1 - rho**2) * b
    assert abs(float(E.ksg_mutual_information(a, y, 3)) + 0.5 * math.log(1 - rho**2)) < tol


def test_ksg_of_independent_variables_is_near_zero():
    a, b = np.random.default_rng(21).standard_normal((2, 2000, 2)).astype(np.float32)
    assert abs(float(E.ksg_mutual_information(a, b, 3))) < 0.05


# --------------------------------------------------------------------------
# Blocks and devices do not change the result; the core is usable under jit
# --------------------------------------------------------------------------


def test_block_size_does_not_change_result():
    x = gaussian(700, correlated_cov(5), seed=2)
    y = x[:, :2] + gaussian(700, np.eye(1), seed=3)
    base = float(E.knn_entropy(x, 3))
    base_mi = float(E.ksg_mutual_information(x, y, 3))
    for block_size in (16, 37):  # 37: blocks not a multiple of the 16-column groups
        assert float(E.knn_entropy(x, 3, block_size=block_size)) == pytest.approx(base, rel=1e-6)
        assert float(E.ksg_mutual_information(x, y, 3, block_size=block_size)) == pytest.approx(base_mi, rel=1e-6)


def test_device_count_does_not_change_result():
    assert jax.device_count() == 4  # forced by conftest.py
    x = gaussian(900, correlated_cov(6), seed=4)
    y = x[:, :1] + gaussian(900, np.eye(1), seed=5)
    labels = np.arange(900) % 2
    one = jax.devices()[:1]
    assert float(E.knn_entropy(x, 3)) == pytest.approx(float(E.knn_entropy(x, 3, devices=one)), rel=1e-6)
    assert float(E.knn_conditional_entropy(x, labels, 3)) == pytest.approx(
        float(E.knn_conditional_entropy(x, labels, 3, devices=one)), rel=1e-6
    )
    assert float(E.ksg_mutual_information(x, y, 3)) == pytest.approx(
        float(E.ksg_mutual_information(x, y, 3, devices=one)), rel=1e-6
    )


def test_knn_log_distances_under_jit():
    x = jnp.asarray(gaussian(300, correlated_cov(3), seed=6))
    expected = np.log(cKDTree(np.asarray(x, np.float64)).query(np.asarray(x, np.float64), 4)[0][:, 3])
    mesh = _checks.check_devices(None, "queries")
    got = jax.jit(lambda x: E._knn_log_distances(x, 3, None, mesh))(x)
    np.testing.assert_allclose(got, expected, rtol=1e-5)


# --------------------------------------------------------------------------
# Duplicates
# --------------------------------------------------------------------------


def duplicated_points():
    x = gaussian(400, np.eye(3), seed=7)
    x[:50] = 0.0  # 50 identical points, e.g. dead ReLU latents
    return x


def test_duplicates_raise_with_count():
    with pytest.raises(ValueError, match=r"50 of 400 points .*add_zero_entropy_noise"):
        E.knn_entropy(duplicated_points(), 3)


def test_duplicates_in_a_class_raise():
    labels = np.arange(400) % 2
    with pytest.raises(ValueError, match=r"25 of 200 points .* class 0"):
        E.knn_conditional_entropy(duplicated_points(), labels, 3)


def test_ksg_duplicates_raise():
    x = duplicated_points()
    with pytest.raises(ValueError, match=r"50 of 400 points .* joint space"):
        E.ksg_mutual_information(x[:, :1], x[:, 1:], 3)


def test_jitter_separates_duplicates():
    x = duplicated_points()
    h = float(E.knn_entropy(x, 3, jitter=1e-6, rng=jax.random.key(0)))
    assert np.isfinite(h)
    # 50 of 400 points at distances ~1e-6 pull the estimate far below the clean one.
    assert h < float(E.knn_entropy(x[50:], 3)) - 2.0
    mi = float(E.ksg_mutual_information(x[:, :1], x[:, 1:], 3, jitter=1e-6, rng=jax.random.key(1)))
    assert np.isfinite(mi)


def test_jitter_barely_moves_a_clean_estimate():
    x = gaussian(500, correlated_cov(2), seed=8)
    clean = float(E.knn_entropy(x, 3))
    assert float(E.knn_entropy(x, 3, jitter=1e-6, rng=jax.random.key(0))) == pytest.approx(clean, abs=1e-3)


# --------------------------------------------------------------------------
# Input validation
# --------------------------------------------------------------------------

X = np.zeros((10, 2), np.float32)


@pytest.mark.parametrize(
    "call, error, match",
    [
        (lambda: E.knn_entropy(np.zeros(10, np.float32)), ValueError, "x must be 2-D"),
        (lambda: E.knn_entropy(np.zeros((10, 2), np.int32)), TypeError, "x must have a floating dtype"),
        (lambda: E.knn_entropy([[0.0, 1.0]]), TypeError, "x must be a 2-D float array"),
        (lambda: E.knn_entropy(X[:3], k=3), ValueError, "more than k = 3 points"),
        (lambda: E.knn_entropy(np.full((10, 2), np.nan, np.float32)), ValueError, "x must be finite"),
        (lambda: E.ksg_mutual_information(X, np.full((10, 1), np.inf)), ValueError, "y must be finite"),
        (lambda: E.knn_entropy(X, k=0), ValueError, "k must be an integer >= 1"),
        (lambda: E.knn_entropy(X, k=1.5), ValueError, "k must be an integer >= 1"),
        (lambda: E.knn_entropy(X, k=True), ValueError, "k must be an integer >= 1"),
        (lambda: E.knn_entropy(X, block_size=0), ValueError, "block_size must be a positive integer"),
        (lambda: E.knn_entropy(X, block_size=8.0), ValueError, "block_size must be a positive integer"),
        (lambda: E.knn_entropy(X, devices=["cpu"]), TypeError, "devices must be"),
        (lambda: E.knn_entropy(X, jitter=-1.0), ValueError, "jitter must be a float >= 0"),
        (lambda: E.knn_entropy(X, jitter=1e-6), ValueError, "rng .* is required"),
        (lambda: E.knn_conditional_entropy(X, np.zeros(9, np.int32)), ValueError, "labels must be 1-D"),
        (lambda: E.knn_conditional_entropy(X, np.zeros((10, 1), np.int32)), ValueError, "labels must be 1-D"),
        (lambda: E.knn_conditional_entropy(X, np.zeros(10, np.float32)), TypeError, "labels must have an integer"),
        (
            lambda: E.knn_conditional_entropy(X, np.array([0] * 7 + [4] * 3)),
            ValueError,
            "class 4 of labels has 3 points",
        ),
        (lambda: E.ksg_mutual_information(X, X[:9]), ValueError, "same number of rows"),
        (lambda: E.ksg_mutual_information(X, np.zeros(10, np.float32)), ValueError, "y must be 2-D"),
    ],
)
def test_input_errors(call, error, match):
    with pytest.raises(error, match=match):
        call()

