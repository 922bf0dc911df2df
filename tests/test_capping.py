"""Tests of ibjax.capping: the entropy cap of section 7.2 against float64 NumPy references."""

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax.core import FrozenDict, freeze

from ibjax import capping, models

LOG_2PIE = math.log(2 * math.pi * math.e)
LAST_LAYER = {"mlp": "output", "dropout_cnn": "fc2"}
NUM_CLASSES = 4


# ----------------------------------------------------------------- float64 NumPy references


def ref_moments(z):
    flat = np.asarray(z, np.float64).reshape(-1, np.shape(z)[-1])
    return flat.mean(0), flat.std(0, ddof=1)


def ref_entropy_bound(z):
    flat = np.asarray(z, np.float64).reshape(-1, np.shape(z)[-1])
    return np.sum(0.5 * np.log(2 * np.pi * np.e * flat.var(0, ddof=1)))


def ref_cap(w, b, d, c, mean, std, cap):
    """W' = W diag(α/σ), b' = α(b − μ)/σ, D' = diag(σ/α) D, c' = c + μ D, in float64."""
    w, b, d, c, mean, std = (np.asarray(a, np.float64) for a in (w, b, d, c, mean, std))
    alpha = math.exp(cap / len(mean)) / math.sqrt(2 * math.pi * math.e)
    return w * (alpha / std), alpha * (b - mean) / std, (std / alpha)[:, None] * d, c + mean @ d


# ----------------------------------------------------------------- a tiny model of each encoder


class Setup:
    """A random model (noise off), its twin with zero-entropy noise, jitted forward passes and data."""

    def __init__(self, encoder, latent_dim, shape, seed=0):
        kwargs = dict(num_classes=NUM_CLASSES, encoder_hidden=(32,))
        self.model = models.IBModel(encoder, latent_dim, noise=False, **kwargs)
        self.noisy = models.IBModel(encoder, latent_dim, noise=True, **kwargs)
        self.x = jnp.asarray(np.random.default_rng(seed).uniform(-1, 1, shape), jnp.float32)
        keys = {"params": jax.random.key(seed), "dropout": jax.random.key(1), "noise": jax.random.key(2)}
        self.params = jax.jit(lambda x: self.model.init(keys, x, train=False, num_samples=1))(self.x)["params"]
        self.latent = jax.jit(functools.partial(capping.noise_free_latent, self.model))

    @functools.partial(jax.jit, static_argnums=(0, 3, 4))
    def logits(self, params, x, noise, train, seed=0):
        model = self.noisy if noise else self.model
        keys = {"dropout": jax.random.key(seed + 7), "noise": jax.random.key(seed)}
        return model.apply({"params": params}, x, train=train, num_samples=1, rngs=keys)["logits"][0]

    def __hash__(self):
        return id(self)


@pytest.fixture(scope="module", params=["mlp", "dropout_cnn"])
def setup(request):
    shape = (200, 8, 8, 1) if request.param == "mlp" else (64, 10, 10, 1)
    return Setup(request.param, 8 if request.param == "mlp" else 16, shape)


# ----------------------------------------------------------------- moments and the entropy bound


def test_latent_moments_and_entropy_bound_match_numpy():
    rng = np.random.default_rng(0)
    z = (rng.normal(size=(3, 50, 5)) * [0.1, 1.0, 3.0, 10.0, 1e-3] + 100.0).astype(np.float32)
    mean, std = capping.latent_moments(z)
    ref_mean, ref_std = ref_moments(z)
    assert mean.shape == std.shape == (5,) and mean.dtype == std.dtype == jnp.float32
    np.testing.assert_allclose(mean, ref_mean, rtol=1e-6)
    np.testing.assert_allclose(std, ref_std, rtol=1e-3)  # a large mean: float32 rounding of z itself
    assert float(capping.entropy_bound(z)) == pytest.approx(ref_entropy_bound(z), rel=1e-4)


def test_moments_and_bound_hand_checked():
    mean, std = capping.latent_moments(jnp.array([[0.0, 1.0], [2.0, 1.0]]))
    np.testing.assert_allclose(mean, [1.0, 1.0])
    np.testing.assert_allclose(std, [math.sqrt(2.0), 0.0])
    # Two dimensions with variance 1/(2πe) (zero-entropy) and e²/(2πe) (1 nat): bound = 1.
    z = np.array([[-1.0, -math.e], [1.0, math.e]]) / math.sqrt(2 * 2 * math.pi * math.e)
    assert float(capping.entropy_bound(z.astype(np.float32))) == pytest.approx(1.0, abs=1e-5)
    # A collapsed dimension has no entropy bound but −∞.
    assert float(capping.entropy_bound(jnp.array([[0.0, 1.0], [0.0, 2.0]]))) == -math.inf


def test_moment_input_errors():
    with pytest.raises(ValueError, match="at least 2"):
        capping.latent_moments(jnp.zeros((1, 3)))
    with pytest.raises(ValueError, match="`z`"):
        capping.latent_moments(jnp.zeros((3,)))
    with pytest.raises(TypeError, match="`z`"):
        capping.entropy_bound(jnp.zeros((4, 3), jnp.int32))


def test_entropy_cap_scale():
    assert capping.entropy_cap_scale(0.0, 128) ** 2 * 2 * math.pi * math.e == pytest.approx(1.0, rel=1e-12)
    # cap = K/2 log(2πe) is the bound of unit variances: α = 1.
    assert capping.entropy_cap_scale(64 * LOG_2PIE, 128) == pytest.approx(1.0, rel=1e-12)
    for cap, k in [(-200.0, 128), (37.5, 3)]:
        alpha = capping.entropy_cap_scale(cap, k)
        assert k * 0.5 * math.log(2 * math.pi * math.e * alpha**2) == pytest.approx(cap, rel=1e-12)
    for bad in (math.nan, math.inf):
        with pytest.raises(ValueError, match="`cap`"):
            capping.entropy_cap_scale(bad, 4)
    with pytest.raises(ValueError, match="float64"):
        capping.entropy_cap_scale(-1e6, 4)
    with pytest.raises(ValueError, match="num_dims"):
        capping.entropy_cap_scale(0.0, 0)


# ----------------------------------------------------------------- the affine rewrite


def test_cap_rewrite_matches_float64_reference(setup):
    layer = LAST_LAYER[setup.model.encoder]
    mean, std = capping.latent_moments(setup.latent({"params": setup.params}, setup.x))
    new = capping.cap_latent_entropy(setup.params, mean, std, -30.0, model=setup.model)
    enc, dec = setup.params["encoder"][layer], setup.params["decoder"]["output"]
    want = ref_cap(enc["kernel"], enc["bias"], dec["kernel"], dec["bias"], mean, std, -30.0)
    got = (new["encoder"][layer]["kernel"], new["encoder"][layer]["bias"],
           new["decoder"]["output"]["kernel"], new["decoder"]["output"]["bias"])
    for g, w in zip(got, want):
        assert g.dtype == jnp.float32
        np.testing.assert_allclose(g, w, rtol=2e-6, atol=1e-6 * np.abs(w).max())
    # The reference is the identity it claims: (h W' + b') D' + c' = (h W + b) D + c.
    h = np.random.default_rng(1).normal(size=(7, enc["kernel"].shape[0]))
    w64, b64, d64, c64 = (np.asarray(a, np.float64) for a in (enc["kernel"], enc["bias"], dec["kernel"], dec["bias"]))
    np.testing.assert_allclose((h @ want[0] + want[1]) @ want[2] + want[3], (h @ w64 + b64) @ d64 + c64, rtol=1e-9)
    # Everything else is untouched, and so is the input.
    flat_old = dict(jax.tree_util.tree_flatten_with_path(setup.params)[0])
    for path, leaf in jax.tree_util.tree_flatten_with_path(new)[0]:
        names = [k.key for k in path]
        if names[:2] not in (["encoder", layer], ["decoder", "output"]):
            assert leaf is flat_old[path]
    np.testing.assert_array_equal(setup.params["encoder"][layer]["kernel"], enc["kernel"])
    assert jax.tree_util.tree_structure(new) == jax.tree_util.tree_structure(setup.params)


@pytest.mark.parametrize("cap", [-200.0, 0.0, 60.0])
def test_capped_latent_has_the_cap_and_the_same_logits_without_noise(setup, cap):
    mean, std = capping.latent_moments(setup.latent({"params": setup.params}, setup.x))
    new = capping.cap_latent_entropy(setup.params, mean, std, cap, model=setup.model)
    z_new = setup.latent({"params": new}, setup.x)
    # The model's own new latents, noise-free: their bound is the cap.
    assert float(capping.entropy_bound(z_new)) == pytest.approx(cap, rel=1e-4, abs=1e-3)
    np.testing.assert_allclose(ref_entropy_bound(z_new), cap, rtol=1e-4, atol=1e-3)
    np.testing.assert_allclose(np.mean(z_new, axis=0), 0.0, atol=1e-4 * float(np.std(z_new)))
    modes = (False, True) if setup.model.encoder == "dropout_cnn" else (False,)
    for train in modes:  # Dropout masks act before the rewritten layer: train mode is unchanged too.
        before = setup.logits(setup.params, setup.x, False, train)
        after = setup.logits(new, setup.x, False, train)
        np.testing.assert_allclose(after, before, rtol=1e-4, atol=1e-4 * float(jnp.abs(before).max()))


def test_noise_makes_a_low_cap_costly():
    setup = Setup("mlp", 8, (400, 8, 8, 1), seed=3)
    labels = np.argmax(setup.logits(setup.params, setup.x, False, False), axis=-1)
    mean, std = capping.latent_moments(setup.latent({"params": setup.params}, setup.x))

    def error(params, noise):
        return float(np.mean(np.argmax(setup.logits(params, setup.x, noise, False), axis=-1) != labels))

    errors = {}
    for cap in (40.0, 0.0, -40.0, -200.0):
        new = capping.cap_latent_entropy(setup.params, mean, std, cap, model=setup.model)
        assert error(new, noise=False) == 0.0  # without noise the cap costs nothing
        errors[cap] = error(new, noise=True)
        noisy_before = setup.logits(setup.params, setup.x, True, False)
        assert not np.allclose(setup.logits(new, setup.x, True, False), noisy_before, rtol=1e-2)
    # 5 nats a dimension: the zero-entropy noise is small next to the latent.
    assert errors[40.0] < 0.1
    # Far below 0 nats the noise drowns the latent: about chance (3/4 for 4 classes).
    assert errors[-40.0] > 0.5 and errors[-200.0] > 0.5
    # In between, the error rises as the cap tightens (Fig 4).
    assert errors[40.0] < errors[0.0] < errors[-40.0]
    assert len(set(labels.tolist())) == NUM_CLASSES


def test_cap_under_jit_and_frozen_params():
    setup = Setup("mlp", 8, (50, 8, 8, 1), seed=4)
    mean, std = capping.latent_moments(setup.latent({"params": setup.params}, setup.x))
    eager = capping.cap_latent_entropy(setup.params, mean, std, 5.0, model=setup.model)
    jitted = jax.jit(lambda p, m, s: capping.cap_latent_entropy(p, m, s, 5.0, model=setup.model))(
        setup.params, mean, std)
    jax.tree_util.tree_map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-6), eager, jitted)
    frozen = capping.cap_latent_entropy(freeze(setup.params), mean, std, 5.0, model=setup.model)
    assert isinstance(frozen, FrozenDict) and isinstance(frozen["encoder"]["output"], FrozenDict)
    jax.tree_util.tree_map(np.testing.assert_array_equal, eager, frozen.unfreeze())


def test_noise_free_latent_ignores_the_noise():
    setup = Setup("mlp", 8, (6, 8, 8, 1), seed=5)
    z = capping.noise_free_latent(setup.noisy, {"params": setup.params}, setup.x)
    clean = setup.model.apply({"params": setup.params}, setup.x, train=False, num_samples=1)["z"][0]
    np.testing.assert_array_equal(z, clean)
    with pytest.raises(ValueError, match="latent='continuous'"):
        capping.noise_free_latent(models.IBModel("mlp", 4, 3, latent="vib"), {"params": setup.params}, setup.x)


def test_cap_input_errors():
    setup = Setup("mlp", 8, (6, 8, 8, 1), seed=6)
    mean, std = jnp.zeros(8), jnp.ones(8)
    bad_models = {
        "encoder": models.IBModel("resnet18", 8, NUM_CLASSES),
        "latent": models.IBModel("mlp", 8, NUM_CLASSES, latent="vib"),
        "decoder": models.IBModel("mlp", 8, NUM_CLASSES, decoder="categorical_mlp"),
    }
    for field, model in bad_models.items():
        with pytest.raises(ValueError, match=f"`model.{field}"):
            capping.cap_latent_entropy(setup.params, mean, std, 0.0, model=model)
    with pytest.raises(ValueError, match="model.latent"):
        capping.cap_latent_entropy(setup.params, mean, std, 0.0,
                                   model=models.IBModel("mlp", 8, NUM_CLASSES, latent="categorical"))
    with pytest.raises(TypeError, match="IBModel"):
        capping.cap_latent_entropy(setup.params, mean, std, 0.0, model="mlp")
    with pytest.raises(ValueError, match="fc2"):
        capping.cap_latent_entropy(setup.params, mean, std, 0.0, model=models.IBModel("dropout_cnn", 8, NUM_CLASSES))
    with pytest.raises(ValueError, match="`mean`"):
        capping.cap_latent_entropy(setup.params, jnp.zeros(7), std, 0.0, model=setup.model)
    with pytest.raises(ValueError, match="`std` must be > 0"):
        capping.cap_latent_entropy(setup.params, mean, std.at[3].set(0.0), 0.0, model=setup.model)
    with pytest.raises(ValueError, match="latent_dim"):
        capping.cap_latent_entropy(setup.params, jnp.zeros(9), jnp.ones(9), 0.0,
                                   model=models.IBModel("mlp", 9, NUM_CLASSES))
    with pytest.raises(ValueError, match="`cap`"):
        capping.cap_latent_entropy(setup.params, mean, std, math.nan, model=setup.model)
