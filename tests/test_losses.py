"""Tests of ibjax.losses against independent float64 NumPy references."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import ibjax.losses as L

RNG = np.random.default_rng(0)


# ----------------------------------------------------------------- references


def np_log_softmax(x):
    x = np.asarray(x, np.float64)
    m = x.max(-1, keepdims=True)
    return x - m - np.log(np.exp(x - m).sum(-1, keepdims=True))


def ref_decoder_ce(logits, labels):
    logits = np.asarray(logits, np.float64)
    if logits.ndim == 2:
        logits = logits[None]
    lp = np_log_softmax(logits)
    return np.array([-np.mean(lp[:, b, labels[b]]) for b in range(len(labels))])


def ref_prediction_ce(logits, labels):
    logits = np.asarray(logits, np.float64)
    if logits.ndim == 2:
        logits = logits[None]
    p = np.exp(np_log_softmax(logits))
    return np.array([-np.log(np.mean(p[:, b, labels[b]])) for b in range(len(labels))])


def ref_fold(z, where=None):
    z = np.asarray(z, np.float64)
    if z.ndim == 2:
        z = z[None]
    s, b, _ = z.shape
    keep = np.ones(b, bool) if where is None else np.asarray(where)
    return z[:, keep, :].reshape(-1, z.shape[-1]), s, keep


def ref_l2(z, where=None):
    flat, _, _ = ref_fold(z, where)
    return np.mean(np.sum(flat**2, axis=1))


def ref_log_var(z, where=None, eps=1e-8):
    flat, _, _ = ref_fold(z, where)
    var = np.var(flat, axis=0, ddof=1)
    return np.sum(0.5 * np.log(2 * np.pi * np.e * (var + eps)))


def ref_cond_log_var(z, labels, where=None, eps=1e-8):
    flat, s, keep = ref_fold(z, where)
    lab = np.tile(np.asarray(labels)[keep], s)
    total, weight = 0.0, 0
    for y in np.unique(lab):
        rows = flat[lab == y]
        if len(rows) < 2:
            continue
        var = np.var(rows, axis=0, ddof=1)
        total += len(rows) * np.sum(0.5 * np.log(2 * np.pi * np.e * (var + eps)))
        weight += len(rows)
    return total / weight if weight else 0.0


def random_problem(s=3, b=12, c=5, k=4, seed=0):
    rng = np.random.default_rng(seed)
    logits = rng.normal(size=(s, b, c)).astype(np.float32) * 2
    z = rng.normal(size=(s, b, k)).astype(np.float32) + 3.0
    labels = rng.integers(0, c, size=b).astype(np.int32)
    return logits, z, labels


# ------------------------------------------------------------ noise


def test_zero_entropy_std_has_zero_entropy():
    assert 0.5 * math.log(2 * math.pi * math.e * L.ZERO_ENTROPY_STD**2) == pytest.approx(0.0, abs=1e-12)


def test_zero_entropy_noise_variance():
    z = jnp.full((200_000,), 3.0)
    noisy = np.asarray(L.add_zero_entropy_noise(jax.random.key(1), z), np.float64)
    noise = noisy - 3.0
    target = 1 / (2 * np.pi * np.e)
    # Sample variance of n Gaussians has std sqrt(2/(n-1)) * sigma^2; allow 5 of them.
    assert abs(noise.var(ddof=1) - target) < 5 * math.sqrt(2 / (noise.size - 1)) * target
    assert abs(noise.mean()) < 5 * L.ZERO_ENTROPY_STD / math.sqrt(noise.size)


def test_zero_entropy_noise_keeps_dtype_and_rejects_ints():
    out = L.add_zero_entropy_noise(jax.random.key(0), jnp.zeros((3, 2), jnp.bfloat16))
    assert out.dtype == jnp.bfloat16
    with pytest.raises(TypeError, match="`z`"):
        L.add_zero_entropy_noise(jax.random.key(0), jnp.zeros((3,), jnp.int32))


# ------------------------------------------------------------ cross-entropies


@pytest.mark.parametrize("shape", [(12, 5), (1, 12, 5), (4, 12, 5)])
def test_cross_entropies_match_reference(shape):
    rng = np.random.default_rng(3)
    logits = (rng.normal(size=shape) * 3).astype(np.float32)
    labels = rng.integers(0, 5, size=12).astype(np.int32)
    np.testing.assert_allclose(L.decoder_cross_entropy(logits, labels), ref_decoder_ce(logits, labels), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(L.prediction_cross_entropy(logits, labels), ref_prediction_ce(logits, labels), rtol=1e-5, atol=1e-6)


def test_cross_entropies_hand_checked():
    # Two samples for one example, 2 classes; label 0.
    # softmax([0, 0])[0] = 1/2, softmax([log 3, 0])[0] = 3/4.
    logits = jnp.array([[[0.0, 0.0]], [[math.log(3.0), 0.0]]])
    labels = jnp.array([0])
    dce = float(L.decoder_cross_entropy(logits, labels)[0])
    pce = float(L.prediction_cross_entropy(logits, labels)[0])
    assert dce == pytest.approx(0.5 * (math.log(2) + math.log(4 / 3)), rel=1e-6)
    assert pce == pytest.approx(-math.log(0.5 * (0.5 + 0.75)), rel=1e-6)


def test_jensen_and_single_sample_equality():
    logits, _, labels = random_problem(s=6, b=40, c=7, seed=5)
    dce = np.asarray(L.decoder_cross_entropy(logits, labels))
    pce = np.asarray(L.prediction_cross_entropy(logits, labels))
    assert np.all(pce <= dce + 1e-6)
    assert np.any(pce < dce - 1e-3)
    one = logits[:1]
    np.testing.assert_allclose(L.prediction_cross_entropy(one, labels), L.decoder_cross_entropy(one, labels), rtol=1e-6)


def test_cross_entropy_is_stable_for_huge_logits():
    logits = jnp.array([[[1000.0, -1000.0]], [[-1000.0, 1000.0]]])
    labels = jnp.array([0])
    assert float(L.prediction_cross_entropy(logits, labels)[0]) == pytest.approx(math.log(2), rel=1e-6)
    assert float(L.decoder_cross_entropy(logits, labels)[0]) == pytest.approx(1000.0, rel=1e-6)


def test_cross_entropy_where_zeroes_masked_examples():
    logits, _, labels = random_problem()
    where = np.arange(12) % 3 != 0
    out = np.asarray(L.decoder_cross_entropy(logits, labels, where))
    assert np.all(out[~where] == 0)
    np.testing.assert_allclose(out[where], ref_decoder_ce(logits, labels)[where], rtol=1e-5)


def test_cross_entropy_input_errors():
    logits = jnp.zeros((3, 4))
    with pytest.raises(ValueError, match="labels.*\\[0, 4\\)"):
        L.decoder_cross_entropy(logits, jnp.array([0, 1, 4]))
    with pytest.raises(ValueError, match="3 examples"):
        L.prediction_cross_entropy(logits, jnp.array([0, 1]))
    with pytest.raises(TypeError, match="labels"):
        L.decoder_cross_entropy(logits, jnp.array([0.0, 1.0, 2.0]))
    with pytest.raises(ValueError, match="logits"):
        L.decoder_cross_entropy(jnp.zeros((4,)), jnp.array([0]))
    with pytest.raises(ValueError, match="where"):
        L.decoder_cross_entropy(logits, jnp.array([0, 1, 2]), where=jnp.ones((2,), bool))


def test_out_of_range_labels_under_jit_are_nan_not_silent():
    out = jax.jit(L.decoder_cross_entropy)(jnp.zeros((2, 3)), jnp.array([1, 7]))
    assert np.isfinite(out[0]) and np.isnan(out[1])


def test_training_error_bound():
    np.testing.assert_allclose(L.training_error_bound(jnp.array([0.0, math.log(2), 10.0])), [0.0, 0.5, 1 - math.exp(-10)], rtol=1e-6)


def test_training_error_bound_bounds_the_error():
    # The bound 1 - exp(-H) dominates the expected error of sampling from p_theta.
    logits, _, labels = random_problem(s=1, b=200, c=4, seed=9)
    p = np.exp(np_log_softmax(logits[0]))
    expected_error = 1 - np.mean(p[np.arange(200), labels])
    h = float(jnp.mean(L.decoder_cross_entropy(logits, labels)))
    assert expected_error <= float(L.training_error_bound(jnp.float32(h))) + 1e-6


# ------------------------------------------------------------ regularisers


@pytest.mark.parametrize("s", [None, 1, 3])
def test_regularizers_match_reference(s):
    logits, z, labels = random_problem(s=s or 1, b=30, c=3, k=6, seed=11)
    if s is None:
        z = z[0]
    np.testing.assert_allclose(L.activation_l2(z), ref_l2(z), rtol=1e-5)
    np.testing.assert_allclose(L.log_variance(z), ref_log_var(z), rtol=1e-5)
    np.testing.assert_allclose(L.conditional_log_variance(z, labels, 3), ref_cond_log_var(z, labels), rtol=1e-5)


def test_regularizers_hand_checked():
    # z = [[0], [2]], [[1], [1]] -> E||Z||^2 = (0 + 4 + 1 + 1) / 4 = 1.5
    z = jnp.array([[0.0], [2.0], [1.0], [1.0]])
    assert float(L.activation_l2(z)) == pytest.approx(1.5)
    # Var (ddof=1) of [0, 2, 1, 1] = 2/3.
    assert float(L.log_variance(z, eps=0.0)) == pytest.approx(0.5 * math.log(2 * math.pi * math.e * 2 / 3), rel=1e-6)
    # Class 0 = {0, 2}: var 2; class 1 = {1, 1}: var 0 -> eps.
    labels = jnp.array([0, 0, 1, 1])
    expected = 0.5 * 0.5 * math.log(2 * math.pi * math.e * 2.0) + 0.5 * 0.5 * math.log(2 * math.pi * math.e * 1e-8)
    assert float(L.conditional_log_variance(z, labels, 2)) == pytest.approx(expected, rel=1e-5)


def test_log_variance_keeps_precision_for_large_means():
    rng = np.random.default_rng(2)
    z = (1e4 + 0.1 * rng.normal(size=(256, 3))).astype(np.float32)
    np.testing.assert_allclose(L.log_variance(z), ref_log_var(z.astype(np.float64)), rtol=2e-3)


def test_conditional_log_variance_small_classes_are_renormalised():
    rng = np.random.default_rng(4)
    z = rng.normal(size=(7, 3)).astype(np.float32)
    labels = np.array([0, 0, 0, 1, 2, 2, 3], np.int32)  # class 1 and 3 have one member
    got = float(L.conditional_log_variance(z, labels, 5))
    assert np.isfinite(got)
    assert got == pytest.approx(ref_cond_log_var(z, labels), rel=1e-5)
    # A single point per class: nothing to estimate -> 0, never NaN.
    assert float(L.conditional_log_variance(z[:3], np.array([0, 1, 2], np.int32), 5)) == 0.0


def test_regularizers_are_mask_and_padding_invariant():
    rng = np.random.default_rng(6)
    z = rng.normal(size=(2, 10, 4)).astype(np.float32)
    labels = rng.integers(0, 3, size=10).astype(np.int32)
    where = np.array([1, 1, 1, 0, 1, 1, 1, 1, 0, 1], bool)
    padded = z.copy()
    padded[:, ~where] = 1e6  # garbage in padding must not leak
    for fn, ref in [(L.activation_l2, ref_l2), (L.log_variance, ref_log_var)]:
        np.testing.assert_allclose(fn(padded, where), ref(z, where), rtol=1e-5)
        np.testing.assert_allclose(fn(padded, where), fn(z[:, where]), rtol=1e-5)
    np.testing.assert_allclose(
        L.conditional_log_variance(padded, labels, 3, where), ref_cond_log_var(z, labels, where), rtol=1e-5
    )


def test_regularizers_empty_batch_is_finite():
    z = jnp.zeros((0, 3))
    assert float(L.activation_l2(z)) == 0.0
    assert np.isfinite(float(L.log_variance(z)))
    assert float(L.conditional_log_variance(z, jnp.zeros((0,), jnp.int32), 2)) == 0.0


def test_regularizer_input_errors():
    with pytest.raises(ValueError, match="`z`"):
        L.log_variance(jnp.zeros((2, 3, 4, 5)))
    with pytest.raises(ValueError, match="num_classes"):
        L.conditional_log_variance(jnp.zeros((4, 2)), jnp.zeros((4,), jnp.int32), 0)
    with pytest.raises(ValueError, match="labels"):
        L.conditional_log_variance(jnp.zeros((4, 2)), jnp.array([0, 1, 2, 3]), 3)


# ------------------------------------------------------------ surrogate loss


# "vib" also needs z_mean and z_scale; tests/test_vib.py checks it.
@pytest.mark.parametrize("regularizer", [r for r in L.REGULARIZERS if r != "vib"])
@pytest.mark.parametrize("cross_entropy", L.CROSS_ENTROPIES)
def test_surrogate_loss_matches_reference(regularizer, cross_entropy):
    logits, z, labels = random_problem(s=2, b=16, c=4, k=3, seed=8)
    gamma = 0.3
    loss, metrics = L.surrogate_loss(
        logits, z, labels, regularizer=regularizer, gamma=gamma, num_classes=4, cross_entropy=cross_entropy
    )
    ce = (ref_decoder_ce if cross_entropy == "decoder" else ref_prediction_ce)(logits, labels).mean()
    reg = {"none": 0.0, "l2": ref_l2(z), "log_var": ref_log_var(z), "cond_log_var": ref_cond_log_var(z, labels)}[regularizer]
    assert float(loss) == pytest.approx(ce + gamma * reg, rel=1e-5)
    assert float(metrics["regularizer"]) == pytest.approx(reg, rel=1e-5, abs=1e-7)
    assert float(metrics["decoder_cross_entropy"]) == pytest.approx(ref_decoder_ce(logits, labels).mean(), rel=1e-5)
    assert float(metrics["prediction_cross_entropy"]) == pytest.approx(ref_prediction_ce(logits, labels).mean(), rel=1e-5)
    assert float(metrics["training_error_bound"]) == pytest.approx(1 - math.exp(-ce), rel=1e-5)


def test_surrogate_loss_errors():
    logits, z, labels = random_problem()
    with pytest.raises(ValueError, match="'none', 'l2', 'log_var', 'cond_log_var', 'vib'"):
        L.surrogate_loss(logits, z, labels, regularizer="l1", gamma=1.0, num_classes=5)
    with pytest.raises(ValueError, match="cross_entropy"):
        L.surrogate_loss(logits, z, labels, regularizer="l2", gamma=1.0, num_classes=5, cross_entropy="x")
    with pytest.raises(ValueError, match="gamma"):
        L.surrogate_loss(logits, z, labels, regularizer="l2", gamma=-1.0, num_classes=5)
    with pytest.raises(ValueError, match="num_classes"):
        L.surrogate_loss(logits, z, labels, regularizer="l2", gamma=1.0, num_classes=6)
    with pytest.raises(ValueError, match="leading axes"):
        L.surrogate_loss(logits, z[:, :5], labels, regularizer="l2", gamma=1.0, num_classes=5)


# ------------------------------------------------------------ transformations


def test_jit_grad_vmap():
    logits, z, labels = random_problem(s=2, b=16, c=4, k=3, seed=1)

    def objective(lg, zz, gamma):
        return L.surrogate_loss(lg, zz, labels, regularizer="cond_log_var", gamma=gamma, num_classes=4)[0]

    eager = objective(logits, z, 0.5)
    np.testing.assert_allclose(jax.jit(objective)(logits, z, 0.5), eager, rtol=1e-6)
    g_logits, g_z = jax.grad(objective, argnums=(0, 1))(logits, z, 0.5)
    assert np.all(np.isfinite(g_logits)) and np.all(np.isfinite(g_z))
    # Finite-difference check of the regulariser gradient in float64 terms.
    direction = np.random.default_rng(0).normal(size=z.shape).astype(np.float32)
    h = 1e-2
    fd = (ref_cond_log_var(z + h * direction, labels) - ref_cond_log_var(z - h * direction, labels)) / (2 * h)
    g_reg = jax.grad(lambda zz: L.conditional_log_variance(zz, labels, 4))(z)
    assert float(jnp.sum(g_reg * direction)) == pytest.approx(fd, rel=1e-2)
    # vmap over a population of gammas: each equals its own call.
    gammas = jnp.array([0.0, 0.1, 1.0])
    batched = jax.vmap(objective, in_axes=(None, None, 0))(logits, z, gammas)
    np.testing.assert_allclose(batched, [objective(logits, z, float(g)) for g in gammas], rtol=1e-6)
    # vmap over examples of the per-example cross-entropy.
    per_example = jax.vmap(lambda lg, y: L.decoder_cross_entropy(lg[:, None], y[None])[0], in_axes=(1, 0))(logits, labels)
    np.testing.assert_allclose(per_example, ref_decoder_ce(logits, labels), rtol=1e-5)


def test_axis_name_equals_global_batch_under_pmap():
    n = jax.local_device_count()
    assert n == 4, "conftest forces 4 CPU devices"
    rng = np.random.default_rng(12)
    s, b, k, c = 2, 8 * n, 3, 3
    z = rng.normal(size=(s, b, k)).astype(np.float32)
    logits = rng.normal(size=(s, b, c)).astype(np.float32)
    labels = rng.integers(0, c, size=b).astype(np.int32)
    where = rng.random(b) > 0.2

    def shard(x, axis):
        return np.stack(np.split(x, n, axis=axis))

    def per_device(lg, zz, y, w):
        out = {
            "l2": L.activation_l2(zz, w, axis_name="d"),
            "log_var": L.log_variance(zz, w, axis_name="d"),
            "cond": L.conditional_log_variance(zz, y, c, w, axis_name="d"),
        }
        out["loss"] = L.surrogate_loss(lg, zz, y, regularizer="cond_log_var", gamma=0.2, num_classes=c, where=w, axis_name="d")[0]
        return out

    got = jax.pmap(per_device, axis_name="d")(shard(logits, 1), shard(z, 1), shard(labels, 0), shard(where, 0))
    want_loss = L.surrogate_loss(logits, z, labels, regularizer="cond_log_var", gamma=0.2, num_classes=c, where=where)[0]
    for device in range(n):
        assert float(got["l2"][device]) == pytest.approx(ref_l2(z, where), rel=1e-5)
        assert float(got["log_var"][device]) == pytest.approx(ref_log_var(z, where), rel=1e-5)
        assert float(got["cond"][device]) == pytest.approx(ref_cond_log_var(z, labels, where), rel=1e-5)
        assert float(got["loss"][device]) == pytest.approx(float(want_loss), rel=1e-5)
