"""Tests of ibjax.information against independent float64 NumPy references."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import ibjax.information as I


def ref_joint(z_probs, labels, num_classes, where=None):
    z_probs = np.asarray(z_probs, np.float64)
    keep = np.ones(len(labels), bool) if where is None else np.asarray(where)
    joint = np.zeros((z_probs.shape[1], num_classes))
    for b in np.flatnonzero(keep):
        joint[:, labels[b]] += z_probs[b]
    return joint / max(keep.sum(), 1)


def ref_h(p):
    p = np.asarray(p, np.float64).ravel()
    p = p[p > 0]
    return -np.sum(p * np.log(p))


def ref_cond_h(joint):
    joint = np.asarray(joint, np.float64)
    total = 0.0
    for z in range(joint.shape[0]):
        pz = joint[z].sum()
        for y in range(joint.shape[1]):
            if joint[z, y] > 0:
                total -= joint[z, y] * np.log(joint[z, y] / pz)
    return total


def random_encoder(b=50, cz=6, cy=3, seed=0):
    rng = np.random.default_rng(seed)
    logits = rng.normal(size=(b, cz)) * 2
    probs = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    labels = rng.integers(0, cy, size=b).astype(np.int32)
    return logits.astype(np.float32), probs.astype(np.float32), labels


def test_joint_matches_reference_and_sums_to_one():
    _, probs, labels = random_encoder()
    joint = I.categorical_joint(probs, labels, 3)
    np.testing.assert_allclose(joint, ref_joint(probs, labels, 3), rtol=1e-5, atol=1e-7)
    assert float(jnp.sum(joint)) == pytest.approx(1.0, rel=1e-5)


def test_joint_masking():
    _, probs, labels = random_encoder(b=20)
    where = np.arange(20) % 4 != 0
    np.testing.assert_allclose(I.categorical_joint(probs, labels, 3, where), ref_joint(probs, labels, 3, where), rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(I.categorical_joint(probs, labels, 3, where), I.categorical_joint(probs[where], labels[where], 3), rtol=1e-6)


def test_entropies_match_reference():
    _, probs, labels = random_encoder(seed=3)
    joint = np.asarray(I.categorical_joint(probs, labels, 3))
    assert float(I.entropy(joint)) == pytest.approx(ref_h(joint), rel=1e-5)
    assert float(I.conditional_entropy(joint)) == pytest.approx(ref_cond_h(joint), rel=1e-5)
    mi = ref_h(joint.sum(1)) + ref_h(joint.sum(0)) - ref_h(joint)
    assert float(I.mutual_information(joint)) == pytest.approx(mi, rel=1e-4, abs=1e-6)
    # I[Y;Z] = H[Y] - H[Y|Z] (eq. 17).
    assert float(I.mutual_information(joint)) == pytest.approx(ref_h(joint.sum(0)) - ref_cond_h(joint), rel=1e-4, abs=1e-6)


def test_hand_checked_cases():
    # Deterministic Z that copies Y: H[Y|Z] = 0, I = H[Y] = log 2.
    copy = jnp.array([[0.5, 0.0], [0.0, 0.5]])
    assert float(I.conditional_entropy(copy)) == pytest.approx(0.0, abs=1e-7)
    assert float(I.mutual_information(copy)) == pytest.approx(math.log(2), rel=1e-6)
    # Independent uniform Z and Y: H[Y|Z] = log 2, I = 0.
    indep = jnp.full((2, 2), 0.25)
    assert float(I.conditional_entropy(indep)) == pytest.approx(math.log(2), rel=1e-6)
    assert float(I.mutual_information(indep)) == pytest.approx(0.0, abs=1e-7)
    # 0 log 0 = 0.
    assert float(I.entropy(jnp.array([1.0, 0.0, 0.0]))) == 0.0
    # Decoder uncertainty from encoder outputs: two examples, labels 0 and 1,
    # both encoded to z=0 with prob 1 -> p(y|z=0) = (1/2, 1/2), H[Y|Z] = log 2.
    probs = jnp.array([[1.0, 0.0], [1.0, 0.0]])
    assert float(I.decoder_uncertainty(probs, jnp.array([0, 1]), 2)) == pytest.approx(math.log(2), rel=1e-6)


def test_optimal_decoder():
    joint = jnp.array([[0.2, 0.2], [0.6, 0.0], [0.0, 0.0]])
    dec = np.asarray(I.optimal_decoder(joint))
    np.testing.assert_allclose(dec, [[0.5, 0.5], [1.0, 0.0], [0.5, 0.5]])
    # With the optimal decoder the decoder cross-entropy equals H[Y|Z] (section 5.4).
    _, probs, labels = random_encoder(seed=4)
    joint = I.categorical_joint(probs, labels, 3)
    decoder = np.asarray(I.optimal_decoder(joint), np.float64)
    cross_entropy = -np.mean([np.sum(probs[b] * np.log(decoder[:, labels[b]])) for b in range(len(labels))])
    assert cross_entropy == pytest.approx(float(I.conditional_entropy(joint)), rel=1e-5)


def test_log_optimal_decoder_is_finite_where_float32_rounds_p_y_given_z_to_zero():
    # Hand case: p(y=1|z=0) = 0 is floored at log(float32 tiny) = -87.3365.
    np.testing.assert_allclose(np.asarray(I.log_optimal_decoder(jnp.array([[0.5, 0.0], [0.25, 0.25]]))),
                               [[0.0, math.log(np.finfo(np.float32).tiny)], [math.log(0.5), math.log(0.5)]],
                               rtol=1e-6)
    # A confident encoder: class 1's mass at category 0 underflows in float32 but not in float64.
    logits = np.array([[30.0, -80.0], [-80.0, 30.0], [-80.0, 30.0]])
    labels = np.array([0, 1, 1])
    probs64 = np.exp(logits - logits.max(1, keepdims=True))
    probs64 /= probs64.sum(1, keepdims=True)
    joint64 = ref_joint(probs64, labels, 2)
    log_decoder64 = np.log(joint64 / joint64.sum(1, keepdims=True))
    want = np.mean([np.sum(probs64[b] * -log_decoder64[:, labels[b]]) for b in range(3)])
    joint = I.categorical_joint(jax.nn.softmax(jnp.asarray(logits, jnp.float32), axis=-1), jnp.asarray(labels), 2)
    assert float(joint[0, 1]) == 0.0  # rounded to zero in float32
    assert float(I.optimal_decoder(joint)[0, 1]) == 0.0  # so -log p(y|z) would be +inf
    log_decoder = I.log_optimal_decoder(joint)
    got = I.categorical_decoder_cross_entropy(jax.nn.log_softmax(jnp.asarray(logits, jnp.float32), axis=-1),
                                              log_decoder, jnp.asarray(labels))
    assert np.all(np.isfinite(np.asarray(got)))
    assert float(jnp.mean(got)) == pytest.approx(want, abs=1e-6)


def test_decoder_uncertainty_gradient_matches_appendix_a3():
    """Autodiff gradient == E_{p(x,z)}[d log p(z|x) * E_{p(y|x)} h(p(y|z))] with p(y|z) fixed."""
    logits, _, labels = random_encoder(b=30, cz=5, cy=3, seed=7)
    logits64 = np.asarray(logits, np.float64)

    def h_of_theta(theta):
        return I.decoder_uncertainty(jax.nn.softmax(theta, axis=-1), labels, 3)

    autodiff = np.asarray(jax.grad(h_of_theta)(jnp.asarray(logits)), np.float64)

    # Appendix A.3 in float64: theta = per-example encoder logits.
    probs = np.exp(logits64) / np.exp(logits64).sum(1, keepdims=True)
    decoder = ref_joint(probs, labels, 3)
    decoder = decoder / decoder.sum(1, keepdims=True)  # p(y|z), held fixed
    b, cz = probs.shape
    formula = np.zeros_like(probs)
    for i in range(b):
        weights = -np.log(decoder[:, labels[i]])          # h(p(y_i|z)) for every z
        for z in range(cz):
            dlogp = -probs[i].copy()
            dlogp[z] += 1.0                                   # d log softmax_z / d theta_i
            formula[i] += probs[i, z] * dlogp * weights[z] / b
    np.testing.assert_allclose(autodiff, formula, rtol=1e-4, atol=1e-6)


def test_jit_vmap_and_input_errors():
    _, probs, labels = random_encoder(b=16, seed=2)
    eager = I.decoder_uncertainty(probs, labels, 3)
    assert float(jax.jit(I.decoder_uncertainty, static_argnums=2)(probs, labels, 3)) == pytest.approx(float(eager), rel=1e-6)
    stacked = jnp.stack([probs, probs[::-1]])
    both = jax.vmap(lambda p: I.decoder_uncertainty(p, labels, 3))(stacked)
    assert float(both[0]) == pytest.approx(float(eager), rel=1e-6)
    with pytest.raises(ValueError, match="z_probs"):
        I.categorical_joint(probs[0], labels, 3)
    with pytest.raises(ValueError, match="labels"):
        I.categorical_joint(probs, labels + 5, 3)
    with pytest.raises(ValueError, match="joint"):
        I.conditional_entropy(jnp.ones((3,)))


def test_axis_name_under_pmap():
    n = jax.local_device_count()
    _, probs, labels = random_encoder(b=8 * n, seed=5)
    got = jax.pmap(lambda p, y: I.decoder_uncertainty(p, y, 3, axis_name="d"), axis_name="d")(
        probs.reshape(n, 8, -1), labels.reshape(n, 8)
    )
    np.testing.assert_allclose(got, np.full(n, ref_cond_h(ref_joint(probs, labels, 3))), rtol=1e-5)


def test_beta_maps():
    assert I.beta_prime(3.0) == pytest.approx(0.5)
    assert I.beta_double_prime(4.0) == pytest.approx(0.25)
    assert I.edm_gamma(2.0) == pytest.approx(0.0)
    assert I.edm_gamma(1.0) == pytest.approx(-1.0)
    # beta -> infinity: gamma -> 1, beta' -> 0.
    assert I.edm_gamma(1e12) == pytest.approx(1.0)
    assert I.beta_prime(1e12) == pytest.approx(0.0, abs=1e-11)
