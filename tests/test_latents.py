"""Latent kinds (ibjax.latents): one module decides what each kind of Z is.

A new kind, a deterministic encoder plus zero-entropy *Laplace* noise, is added
through the public route alone (subclass, ``latents.register``) and trains,
evaluates and analyses through ``train_and_evaluate`` and ``analyze_run``. A
static check keeps every other module of ``ibjax/`` from comparing the latent's
name with a string.
"""

import ast
import math
from pathlib import Path

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from ibjax import analysis, latents, models, train
from ibjax import config as configlib
from ibjax.io import read_jsonl

ROOT = Path(__file__).resolve().parents[1]

#: Laplace(0, b) has differential entropy 1 + log(2b) per dimension: 0 nats at b = 1/(2e).
LAPLACE_ZERO_ENTROPY_SCALE = 1.0 / (2.0 * math.e)


class LaplaceLatent(latents.ContinuousLatent):
    """Z = f(x) + ε with ε ~ Laplace(0, 1/(2e)) per dimension: H[Z|X] = K (1 + log 2b) = 0 exactly."""

    name = "laplace"
    label = "deterministic encoder + zero-entropy Laplace noise"
    noise_refusal = "`latent='laplace'` draws its own zero-entropy Laplace noise; set `noise=False`."
    h_z_given_x_method = "exact_zero"  # H[Z|X] = K (1 + log 2b) = 0 nats, exactly

    def sample(self, module, outputs, decoder):
        epsilon = jax.random.laplace(module.make_rng("noise"), outputs.shape, jnp.float32)
        z = outputs + LAPLACE_ZERO_ENTROPY_SCALE * epsilon
        return {"z": z, "logits": decoder(z).astype(jnp.float32)}


@pytest.fixture
def laplace():
    kind = latents.register(LaplaceLatent())
    yield kind
    latents.unregister(kind.name)


def laplace_config(**train_fields):
    config = configlib.default_config()
    config.model.latent = "laplace"
    config.model.noise = False
    config.model.latent_dim = 8
    config.model.encoder_hidden = (32,)
    config.train.num_epochs = 2
    config.train.learning_rate = 1e-2
    config.train.progress_bar = False
    config.train.tensorboard = False
    for key, value in train_fields.items():
        setattr(config.train, key, value)
    return config


def test_laplace_noise_entropy_is_zero_hand_checked_and_numerically():
    b = LAPLACE_ZERO_ENTROPY_SCALE
    assert 1.0 + math.log(2.0 * b) == pytest.approx(0.0, abs=1e-15)  # hand-checked: log(2 / 2e) = -1
    # Independent float64 reference: -∫ p log p of p(e) = exp(-|e|/b) / 2b, by the trapezoid rule.
    grid = np.linspace(-60 * b, 60 * b, 2_000_001, dtype=np.float64)
    p = np.exp(-np.abs(grid) / b) / (2 * b)
    assert -np.trapezoid(p * np.log(p), grid) == pytest.approx(0.0, abs=1e-6)


def test_kinds_resolve_from_the_model_fields():
    assert latents.of({"latent": "categorical"}) is latents.CATEGORICAL
    assert latents.of({"latent": "vib", "noise": False}) is latents.VIB
    assert latents.of({"latent": "continuous", "noise": True, "encoder": "mlp"}) is latents.GAUSSIAN_NOISE
    assert latents.of({"latent": "continuous", "noise": False, "encoder": "resnet18"}) is latents.DETERMINISTIC
    assert latents.of({"latent": "continuous", "noise": True, "encoder": "dropout_cnn"}) is latents.DROPOUT
    assert latents.of(models.IBModel("dropout_cnn", 4, 10, noise=False)) is latents.DROPOUT
    # A field left out takes default_config's value (noise=True).
    assert latents.of({"latent": "continuous", "encoder": "mlp"}) is latents.GAUSSIAN_NOISE
    with pytest.raises(ValueError, match=r"`latent` must be one of \['continuous', 'categorical', 'vib'\]"):
        latents.of({"latent": "laplace"})


def test_register_checks_its_argument(laplace):
    assert latents.names() == ("continuous", "categorical", "vib", "laplace")
    with pytest.raises(ValueError, match="already registered"):
        latents.register(LaplaceLatent())
    with pytest.raises(TypeError, match="LatentKind"):
        latents.register("laplace")
    with pytest.raises(ValueError, match="built-in"):
        latents.unregister("vib")


def test_laplace_kind_samples_its_noise_in_the_model(laplace):
    model = models.IBModel("mlp", 64, 3, latent="laplace", encoder_hidden=(8,))
    x = jnp.asarray(np.random.default_rng(0).normal(size=(256, 8, 8, 1)), jnp.float32)
    variables = model.init({"params": jax.random.key(0), "noise": jax.random.key(1)}, x, train=False, num_samples=1)
    out = model.apply(variables, x, train=False, num_samples=2, rngs={"noise": jax.random.key(2)})
    # The same parameters as a noise-free continuous latent give f(x).
    clean = model.clone(latent="continuous", noise=False).apply(variables, x, train=False, num_samples=1)["z"]
    noise = np.asarray(out["z"], np.float64) - np.asarray(clean, np.float64)
    # Laplace(0, b): E|ε| = b, Var ε = 2b²; 32,768 draws.
    assert np.mean(np.abs(noise)) == pytest.approx(LAPLACE_ZERO_ENTROPY_SCALE, rel=0.03)
    assert np.var(noise) == pytest.approx(2 * LAPLACE_ZERO_ENTROPY_SCALE**2, rel=0.05)
    assert not np.allclose(noise[0], noise[1])  # each sample of Z draws its own noise
    with pytest.raises(ValueError, match="draws its own zero-entropy Laplace noise"):
        models.IBModel("mlp", 4, 3, latent="laplace", noise=True)


def test_laplace_kind_trains_evaluates_and_analyses_through_the_public_api(laplace, tmp_path):
    config = laplace_config(analyze_every=2, analyze_examples=200)
    with pytest.raises(configlib.ConfigError, match="config.model.noise"):
        train.train_and_evaluate(dict_with(config, noise=True), tmp_path / "refused")
    assert not (tmp_path / "refused").exists()

    record = train.train_and_evaluate(config, tmp_path / "run")
    assert record["test_accuracy"] > 0.5  # 10 digit classes: well above chance after 2 epochs
    records = read_jsonl(tmp_path / "run" / "metrics.jsonl")
    assert [r["epoch"] for r in records] == [1, 2]
    live = records[-1]["information_plane"]
    assert live["h_z_given_x"] == 0.0 and "exact" in live["h_z_given_x_method"]

    analysed = analysis.analyze_run(tmp_path / "run", max_examples=200, progress=False)
    assert [r["epoch"] for r in analysed] == [1, 2]
    last = analysed[-1]
    assert last["h_z_given_x"] == 0.0 and last["preserved_information"] == pytest.approx(last["h_z"])
    assert "knn" in last["h_z_estimator"]
    # The loop's in-loop analysis and analyze_run agree on the same checkpoint and examples.
    for key in ("h_z", "h_z_given_y", "i_y_z"):
        assert live[key] == pytest.approx(last[key], rel=1e-4, abs=1e-4), key


def dict_with(config, **model_fields):
    config = ml_collections.ConfigDict(config.to_dict())
    for key, value in model_fields.items():
        setattr(config.model, key, value)
    return config


def _compares_latent_with_a_string(node: ast.Compare) -> bool:
    def names_latent(expr) -> bool:
        return (isinstance(expr, ast.Attribute) and expr.attr == "latent") or (
            isinstance(expr, ast.Name) and expr.id == "latent")

    def is_string(expr) -> bool:
        if isinstance(expr, ast.Constant):
            return isinstance(expr.value, str)
        return isinstance(expr, (ast.Tuple, ast.List, ast.Set)) and any(is_string(e) for e in expr.elts)

    sides = [node.left, *node.comparators]
    return any(names_latent(s) for s in sides) and any(is_string(s) for s in sides)


def test_only_the_latents_module_compares_the_latent_name_with_a_string():
    offenders = []
    for path in sorted((ROOT / "ibjax").glob("*.py")):
        if path.name == "latents.py":
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Compare) and _compares_latent_with_a_string(node):
                offenders.append(f"{path.name}:{node.lineno}")
    assert offenders == []
    # The check does fire on the comparisons it is meant to find.
    for source in ('config.model.latent == "vib"', 'm.latent in ("categorical", "vib")', '"x" != latent'):
        assert _compares_latent_with_a_string(ast.parse(source, mode="eval").body), source


def test_create_model_takes_its_defaults_from_default_config():
    defaults = configlib.default_config().model
    model = models.create_model(ml_collections.ConfigDict({"encoder": "mlp", "latent_dim": 4}), num_classes=3)
    assert model.noise is defaults.noise is True  # was False before, unlike default_config
    assert (model.latent, model.decoder, model.encoder_hidden, model.decoder_hidden, model.param_init) == (
        defaults.latent, defaults.decoder, tuple(defaults.encoder_hidden), tuple(defaults.decoder_hidden),
        defaults.init)
    assert model.dtype == configlib.default_config().dtype
