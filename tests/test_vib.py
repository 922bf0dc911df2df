"""Tests of the Deep Variational IB baseline: the KL regulariser, the VIB latent and its exact H[Z|X]."""

import math

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest
import scipy.stats

import ibjax.losses as L
from ibjax import analysis, models, step

LOG_2PIE = math.log(2 * math.pi * math.e)


# ----------------------------------------------------------------- float64 NumPy references


def ref_kl(mean, scale, where=None):
    """Mean over (sample, example) of ½ Σ_i (σ² + μ² − 1 − 2 log σ), in float64."""
    mean, scale = np.asarray(mean, np.float64), np.asarray(scale, np.float64)
    if mean.ndim == 2:
        mean, scale = mean[None], scale[None]
    if where is not None:
        mean, scale = mean[:, where], scale[:, where]
    per_example = 0.5 * np.sum(scale**2 + mean**2 - 1.0 - 2.0 * np.log(scale), axis=-1)
    return per_example.mean() if per_example.size else 0.0


def ref_ce(logits, labels):
    logits = np.asarray(logits, np.float64)
    m = logits.max(-1, keepdims=True)
    log_probs = logits - m - np.log(np.exp(logits - m).sum(-1, keepdims=True))
    return -np.mean([log_probs[:, b, labels[b]] for b in range(len(labels))])


def ref_softplus(x):
    return np.logaddexp(0.0, x)


def gaussian_problem(shape, seed=0):
    rng = np.random.default_rng(seed)
    mean = rng.normal(size=shape).astype(np.float32) * 1.5
    scale = np.exp(rng.normal(size=shape) * 0.7).astype(np.float32)
    return mean, scale


# ----------------------------------------------------------------- the KL regulariser


@pytest.mark.parametrize("shape", [(9, 4), (3, 7, 5)])
def test_kl_matches_reference(shape):
    mean, scale = gaussian_problem(shape, seed=len(shape))
    np.testing.assert_allclose(L.kl_to_standard_normal(mean, scale), ref_kl(mean, scale), rtol=1e-5)


def test_kl_hand_checked():
    assert float(L.kl_to_standard_normal(jnp.zeros((5, 3)), jnp.ones((5, 3)))) == 0.0
    assert float(L.kl_to_standard_normal(jnp.ones((1, 1)), jnp.ones((1, 1)))) == pytest.approx(0.5, rel=1e-7)
    # σ = e, μ = 0, K = 1: ½ (e² − 1 − 2).
    got = L.kl_to_standard_normal(jnp.zeros((1, 1)), jnp.full((1, 1), math.e))
    assert float(got) == pytest.approx(0.5 * (math.e**2 - 3.0), rel=1e-6)
    # Two examples with KL 0 and 2 (μ = 2): the mean is 1.
    got = L.kl_to_standard_normal(jnp.array([[0.0], [2.0]]), jnp.ones((2, 1)))
    assert float(got) == pytest.approx(1.0, rel=1e-7)


def test_kl_monte_carlo_with_scipy():
    # KL(q || p) = E_q[log q(z) − log p(z)] from 200k draws per example, in float64.
    mean = np.array([[0.3, -1.2], [2.0, 0.5]])
    scale = np.array([[0.5, 1.7], [0.2, 1.0]])
    rng = np.random.default_rng(3)
    z = mean + scale * rng.standard_normal((200_000, *mean.shape))
    log_ratio = (scipy.stats.norm.logpdf(z, mean, scale) - scipy.stats.norm.logpdf(z)).sum(-1).mean(-1)
    estimate, stderr = log_ratio.mean(), log_ratio.std() / math.sqrt(len(log_ratio))
    got = float(L.kl_to_standard_normal(mean.astype(np.float32), scale.astype(np.float32)))
    assert abs(got - estimate) < 5 * stderr
    assert stderr < 0.01  # the check above is sharp


def test_kl_is_accurate_near_unit_scale():
    # ½ (σ² − 1 − 2 log σ) ≈ δ² for σ = 1 + δ: a naive float32 σ² − 1 loses it.
    scale = np.float32(1.0 + 1e-3) * np.ones((4, 3), np.float32)
    mean = np.zeros((4, 3), np.float32)
    np.testing.assert_allclose(L.kl_to_standard_normal(mean, scale), ref_kl(mean, scale), rtol=1e-3)


def test_kl_is_mask_and_padding_invariant():
    mean, scale = gaussian_problem((2, 10, 3), seed=4)
    where = np.array([1, 1, 0, 1, 1, 1, 0, 1, 1, 1], bool)
    mean_pad, scale_pad = mean.copy(), scale.copy()
    mean_pad[:, ~where], scale_pad[:, ~where] = 1e6, 0.0  # garbage, even σ = 0, must not leak
    got = L.kl_to_standard_normal(mean_pad, scale_pad, where)
    np.testing.assert_allclose(got, ref_kl(mean, scale, where), rtol=1e-5)
    np.testing.assert_allclose(got, L.kl_to_standard_normal(mean[:, where], scale[:, where]), rtol=1e-6)
    g_mean, g_scale = jax.grad(L.kl_to_standard_normal, argnums=(0, 1))(mean_pad, scale_pad, where)
    assert np.all(np.isfinite(g_mean)) and np.all(np.isfinite(g_scale))
    assert np.all(g_mean[:, ~where] == 0) and np.all(g_scale[:, ~where] == 0)
    assert float(L.kl_to_standard_normal(jnp.zeros((0, 3)), jnp.ones((0, 3)))) == 0.0


def test_kl_jit_and_grad_hand_derived():
    mean, scale = gaussian_problem((2, 6, 3), seed=5)
    n = 2 * 6
    np.testing.assert_allclose(jax.jit(L.kl_to_standard_normal)(mean, scale), ref_kl(mean, scale), rtol=1e-5)
    g_mean, g_scale = jax.jit(jax.grad(L.kl_to_standard_normal, argnums=(0, 1)))(mean, scale)
    # ∂/∂μ = μ/N and ∂/∂σ = (σ − 1/σ)/N.
    m64, s64 = mean.astype(np.float64), scale.astype(np.float64)
    np.testing.assert_allclose(g_mean, m64 / n, rtol=1e-5, atol=1e-8)
    np.testing.assert_allclose(g_scale, (s64 - 1.0 / s64) / n, rtol=1e-4, atol=1e-7)


def test_kl_axis_name_equals_global_batch_under_pmap():
    n = jax.local_device_count()
    assert n == 4, "conftest forces 4 CPU devices"
    mean, scale = gaussian_problem((2, 4 * n, 3), seed=6)
    where = np.random.default_rng(7).random(4 * n) > 0.3

    def shard(x, axis):
        return np.stack(np.split(x, n, axis=axis))

    got = jax.pmap(lambda m, s, w: L.kl_to_standard_normal(m, s, w, axis_name="d"), axis_name="d")(
        shard(mean, 1), shard(scale, 1), shard(where, 0)
    )
    np.testing.assert_allclose(got, np.full(n, ref_kl(mean, scale, where)), rtol=1e-5)


def test_kl_input_errors():
    with pytest.raises(ValueError, match="`scale`"):
        L.kl_to_standard_normal(jnp.zeros((2, 3)), jnp.ones((2, 4)))
    with pytest.raises(ValueError, match="`scale` must be > 0"):
        L.kl_to_standard_normal(jnp.zeros((2, 3)), jnp.zeros((2, 3)))
    with pytest.raises(ValueError, match="`mean`"):
        L.kl_to_standard_normal(jnp.zeros((3,)), jnp.ones((3,)))
    with pytest.raises(TypeError, match="`mean`"):
        L.kl_to_standard_normal(jnp.zeros((2, 3), jnp.int32), jnp.ones((2, 3)))
    with pytest.raises(ValueError, match="`where`"):
        L.kl_to_standard_normal(jnp.zeros((2, 3)), jnp.ones((2, 3)), jnp.ones((3,), bool))


# ----------------------------------------------------------------- surrogate_loss with "vib"


@pytest.mark.parametrize("cross_entropy", L.CROSS_ENTROPIES)
def test_surrogate_loss_vib_is_cross_entropy_plus_gamma_kl(cross_entropy):
    rng = np.random.default_rng(8)
    s, b, k, c = 2, 12, 3, 4
    mean, scale = gaussian_problem((s, b, k), seed=9)
    z = mean + scale * rng.standard_normal((s, b, k)).astype(np.float32)
    logits = rng.normal(size=(s, b, c)).astype(np.float32)
    labels = rng.integers(0, c, size=b).astype(np.int32)
    gamma = 0.7
    loss, metrics = L.surrogate_loss(logits, z, labels, regularizer="vib", gamma=gamma, num_classes=c,
                                     cross_entropy=cross_entropy, z_mean=mean, z_scale=scale)
    ce = float(metrics[f"{cross_entropy}_cross_entropy"])
    assert float(metrics["decoder_cross_entropy"]) == pytest.approx(ref_ce(logits, labels), rel=1e-5)
    assert float(metrics["regularizer"]) == pytest.approx(ref_kl(mean, scale), rel=1e-5)
    assert float(loss) == pytest.approx(ce + gamma * ref_kl(mean, scale), rel=1e-5)
    # z_mean and z_scale are ignored by the other regularisers.
    with_extra = L.surrogate_loss(logits, z, labels, regularizer="l2", gamma=gamma, num_classes=c,
                                  z_mean=mean, z_scale=scale)[0]
    plain = L.surrogate_loss(logits, z, labels, regularizer="l2", gamma=gamma, num_classes=c)[0]
    assert float(with_extra) == float(plain)


def test_surrogate_loss_vib_errors():
    mean, scale = gaussian_problem((2, 5, 3))
    logits, labels = np.zeros((2, 5, 4), np.float32), np.zeros(5, np.int32)
    for kwargs in ({}, {"z_mean": mean}, {"z_scale": scale}):
        with pytest.raises(ValueError, match="`z_mean` and `z_scale`"):
            L.surrogate_loss(logits, mean, labels, regularizer="vib", gamma=1.0, num_classes=4, **kwargs)
    with pytest.raises(ValueError, match="shape of `z`"):
        L.surrogate_loss(logits, mean, labels, regularizer="vib", gamma=1.0, num_classes=4,
                         z_mean=mean[:, :, :2], z_scale=scale[:, :, :2])
    with pytest.raises(ValueError, match="`z_scale`"):
        L.surrogate_loss(logits, mean, labels, regularizer="vib", gamma=1.0, num_classes=4,
                         z_mean=mean, z_scale=scale[0])


# ----------------------------------------------------------------- the VIB latent of IBModel


def rngs(seed=0):
    return {"params": jax.random.key(seed), "dropout": jax.random.key(seed + 1), "noise": jax.random.key(seed + 2)}


def images(shape, seed=0):
    return jnp.asarray(np.random.default_rng(seed).uniform(-1.0, 1.0, shape), jnp.float32)


def np_mlp_vib(x, p, k):
    """Float64 forward of the one-hidden-layer MLP encoder: (μ, σ)."""
    h = np.asarray(x, np.float64).reshape(x.shape[0], -1)
    h = np.maximum(h @ p["hidden_0"]["kernel"] + p["hidden_0"]["bias"], 0.0)
    s = h @ p["output"]["kernel"] + p["output"]["bias"]
    return s[:, :k], ref_softplus(s[:, k:] - 5.0) + 1e-6


def to_np(tree):
    return jax.tree_util.tree_map(lambda a: np.asarray(a, np.float64), tree)


def init_and_apply(model, x):
    """Jitted ``init`` and ``apply(variables, x, train, num_samples, noise_seed)``."""
    variables = jax.jit(lambda x: model.init(rngs(), x, train=False, num_samples=1))(x)

    @jax.jit(static_argnames=("train", "num_samples"))
    def apply(variables, x, train, num_samples, seed):
        keys = {"dropout": jax.random.key(seed + 100), "noise": jax.random.key(seed)}
        return model.apply(variables, x, train=train, num_samples=num_samples, rngs=keys)

    return variables, apply


@pytest.mark.parametrize("encoder,shape", [("mlp", (3, 8, 8, 1)), ("dropout_cnn", (3, 12, 12, 1))])
def test_vib_latent_shapes_and_parameters(encoder, shape):
    s, k, c = 4, 5, 3
    model = models.IBModel(encoder, k, c, latent="vib", encoder_hidden=(16,))
    x = images(shape)
    variables, apply = init_and_apply(model, x)
    assert sorted(variables["params"]) == ["decoder", "encoder"]
    last = "output" if encoder == "mlp" else "fc2"
    assert variables["params"]["encoder"][last]["kernel"].shape[-1] == 2 * k
    assert variables["params"]["decoder"]["output"]["kernel"].shape == (k, c)
    p = to_np(variables["params"]["decoder"]["output"])
    for train_mode in (False, True):
        out = apply(variables, x, train_mode, s, 1)
        assert {key: v.shape for key, v in out.items()} == {
            "z": (s, 3, k), "z_mean": (s, 3, k), "z_scale": (s, 3, k), "logits": (s, 3, c)}
        assert all(v.dtype == jnp.float32 for v in out.values())
        assert np.all(np.asarray(out["z_scale"]) > 0)
        np.testing.assert_allclose(out["logits"], np.asarray(out["z"], np.float64) @ p["kernel"] + p["bias"],
                                   rtol=1e-5, atol=1e-6)


def test_vib_mean_and_scale_match_numpy_and_noise_has_that_scale():
    s, k = 400, 6
    model = models.IBModel("mlp", k, 3, latent="vib", encoder_hidden=(16,))
    x = images((5, 8, 8, 1), seed=1)
    variables, apply = init_and_apply(model, x)
    # Larger raw scales than at initialisation, so σ is far from its floor.
    params = jax.tree_util.tree_map(lambda a: a, variables["params"])
    params["encoder"]["output"]["bias"] = params["encoder"]["output"]["bias"].at[k:].set(5.0)
    out = apply({"params": params}, x, False, s, 2)
    mean, scale = np_mlp_vib(x, to_np(params)["encoder"], k)
    for i in range(s):
        np.testing.assert_allclose(out["z_mean"][i], mean, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(out["z_scale"][i], scale, rtol=1e-5, atol=1e-7)
    eps = (np.asarray(out["z"], np.float64) - mean) / scale                  # [S, B, K]
    # (z − μ)/σ is standard normal: per-entry std over S draws ≈ 1, overall mean ≈ 0.
    assert abs(eps.mean()) < 4 / math.sqrt(eps.size)
    np.testing.assert_allclose(eps.std(axis=0), 1.0, atol=6 / math.sqrt(2 * s))
    assert abs(eps.std() - 1.0) < 4 / math.sqrt(2 * eps.size)


def test_vib_latent_is_stochastic_in_eval_and_train():
    model = models.IBModel("mlp", 4, 3, latent="vib", encoder_hidden=(8,))
    x = images((2, 8, 8, 1))
    variables, apply = init_and_apply(model, x)
    for train_mode in (False, True):
        a, b, again = (apply(variables, x, train_mode, 2, seed) for seed in (0, 1, 0))
        assert not np.allclose(a["z"], b["z"])
        assert not np.allclose(a["z"][0], a["z"][1])
        np.testing.assert_array_equal(a["z"], again["z"])
        np.testing.assert_array_equal(a["z_mean"], b["z_mean"])


def test_vib_latent_rejects_noise():
    assert "vib" in models.LATENTS
    with pytest.raises(ValueError, match="noise=False"):
        models.IBModel("mlp", 4, 3, latent="vib", noise=True)


# ----------------------------------------------------------------- exact H[Z|X] of the analysis


def test_gaussian_conditional_entropy_matches_numpy_and_hand_check():
    _, scale = gaussian_problem((20, 4), seed=10)
    want = np.mean(np.sum(0.5 * np.log(2 * np.pi * np.e * scale.astype(np.float64) ** 2), axis=-1))
    assert float(analysis.gaussian_conditional_entropy(scale)) == pytest.approx(want, rel=1e-5)
    # σ = 1 in K = 3 dimensions: 3/2 log(2πe).
    assert float(analysis.gaussian_conditional_entropy(np.ones((2, 3), np.float32))) == pytest.approx(1.5 * LOG_2PIE)
    with pytest.raises(ValueError, match="z_scale"):
        analysis.gaussian_conditional_entropy(np.ones((2, 3, 4), np.float32))


def _vib_config():
    config = ml_collections.ConfigDict()
    config.data = ml_collections.ConfigDict({"name": "digits"})
    config.model = ml_collections.ConfigDict({"latent": "vib", "encoder": "mlp", "noise": False})
    return config


def test_analysis_exact_h_z_given_x_for_vib_matches_numpy():
    k = 4
    config = _vib_config()
    model = models.IBModel("mlp", k, 3, latent="vib", encoder_hidden=(16,))
    state = step.create_train_state(jax.random.key(0), model, optax.adam(1e-3), (8, 8, 1))
    pixels = np.random.default_rng(11).integers(0, 256, size=(37, 8, 8, 1)).astype(np.uint8)
    scale_fn = analysis.make_latent_fn(model, config, scale=True)
    h, method = analysis._h_z_given_x(config, None, scale_fn, state, pixels, k=3)
    assert method == "exact_gaussian" and "exact" in analysis.H_Z_GIVEN_X_METHODS[method]
    x = (pixels.astype(np.float64) / 255.0 - 0.3053) / 0.3759
    _, scale = np_mlp_vib(x, to_np(state.params)["encoder"], k)
    want = np.mean(np.sum(0.5 * np.log(2 * np.pi * np.e * scale**2), axis=-1))
    assert h == pytest.approx(want, rel=1e-5)
    # The latents themselves are samples of Z, not the scales.
    z = analysis.compute_latents(analysis.make_latent_fn(model, config), state, pixels, batch_size=16)[0]
    assert z.shape == (37, k) and not np.allclose(z, scale)


def test_make_latent_fn_scale_needs_vib():
    config = _vib_config()
    config.model.latent = "continuous"
    with pytest.raises(ValueError, match="latent='vib'"):
        analysis.make_latent_fn(models.IBModel("mlp", 4, 3), config, scale=True)
