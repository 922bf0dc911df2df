"""Tests of ibjax.models against float64 NumPy forward passes and exact parameter counts."""

import itertools
import math

import flax
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest

from ibjax import models as M
from ibjax import step

ZERO_ENTROPY_STD = (2 * math.pi * math.e) ** -0.5
MNIST = (2, 28, 28, 1)
CIFAR = (2, 32, 32, 3)
INPUT_SHAPE = {"mlp": MNIST, "dropout_cnn": MNIST, "resnet18": CIFAR}


def rngs(seed=0):
    return {
        "params": jax.random.key(seed),
        "dropout": jax.random.key(seed + 1),
        "noise": jax.random.key(seed + 2),
    }


def images(shape, seed=0):
    return jnp.asarray(np.random.default_rng(seed).uniform(-1.0, 1.0, shape), jnp.float32)


def to_np(tree):
    return jax.tree_util.tree_map(lambda a: np.asarray(a, np.float64), tree)


# ----------------------------------------------------------------- float64 NumPy references


def np_dense(x, p):
    return x @ p["kernel"] + p["bias"]


def np_relu(x):
    return np.maximum(x, 0.0)


def np_log_softmax(x):
    m = x.max(-1, keepdims=True)
    return x - m - np.log(np.exp(x - m).sum(-1, keepdims=True))


def np_conv(x, kernel, stride=1, pad=0):
    """NHWC cross-correlation with a [kh, kw, c_in, c_out] kernel, symmetric zero padding."""
    x = np.pad(x, ((0, 0), (pad, pad), (pad, pad), (0, 0)))
    kh, kw, _, c_out = kernel.shape
    h = (x.shape[1] - kh) // stride + 1
    w = (x.shape[2] - kw) // stride + 1
    out = np.zeros((x.shape[0], h, w, c_out))
    for i in range(kh):
        for j in range(kw):
            patch = x[:, i : i + stride * (h - 1) + 1 : stride, j : j + stride * (w - 1) + 1 : stride]
            out += patch @ kernel[i, j]
    return out


def np_max_pool2(x):
    b, h, w, c = x.shape
    x = x[:, : h // 2 * 2, : w // 2 * 2]
    return x.reshape(b, h // 2, 2, w // 2, 2, c).max(axis=(2, 4))


def np_batch_norm_train(x, p, eps=1e-5):
    """Batch statistics over (B, H, W); biased variance."""
    mean = x.mean(axis=(0, 1, 2))
    var = x.var(axis=(0, 1, 2))
    return (x - mean) / np.sqrt(var + eps) * p["scale"] + p["bias"], mean, var


def np_mlp(x, p, hidden_names, out_name="output"):
    h = x.reshape(x.shape[0], -1)
    for name in hidden_names:
        h = np_relu(np_dense(h, p[name]))
    return np_dense(h, p[out_name])


def np_dropout_cnn_eval(x, p):
    h = np_relu(np_conv(x, p["conv1"]["kernel"]) + p["conv1"]["bias"])
    h = np_relu(np_conv(h, p["conv2"]["kernel"]) + p["conv2"]["bias"])
    h = np_max_pool2(h).reshape(x.shape[0], -1)
    h = np_relu(np_dense(h, p["fc1"]))
    return np_dense(h, p["fc2"])


# Parameter counts by formula: a dense layer has d_in d_out + d_out, a conv k² c_in c_out (+ c_out
# with bias), a BatchNorm 2c (scale, bias; running statistics are not parameters).
def dense_count(d_in, d_out):
    return d_in * d_out + d_out


def mlp_count(widths):
    return sum(dense_count(a, b) for a, b in zip(widths[:-1], widths[1:]))


def dropout_cnn_count(k):
    return (9 * 1 * 32 + 32) + (9 * 32 * 64 + 64) + dense_count(12 * 12 * 64, 128) + dense_count(128, k)


def resnet18_count(k):
    total = 9 * 3 * 64 + 2 * 64
    c_in = 64
    for width, stride in zip((64, 128, 256, 512), (1, 2, 2, 2)):
        for block in range(2):
            total += 9 * c_in * width + 2 * width + 9 * width * width + 2 * width
            if block == 0 and (stride != 1 or c_in != width):
                total += c_in * width + 2 * width
            c_in = width
    return total + dense_count(512, k)


def abstract_init(model, shape, train=False, num_samples=2, **kwargs):
    """Output and variable shapes without running the model."""
    return jax.eval_shape(
        lambda: model.init_with_output(
            rngs(), jnp.zeros(shape), train=train, num_samples=num_samples, **kwargs
        )
    )


# ----------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def resnet():
    """ResNet18, continuous Z with noise, K = 10, initialised once on a CIFAR-sized batch."""
    model = M.IBModel("resnet18", latent_dim=10, num_classes=10, noise=True)
    x = images(CIFAR)
    variables = jax.jit(lambda x: model.init(rngs(), x, train=False, num_samples=1))(x)
    return model, variables, x


# ----------------------------------------------------------------- shapes and parameter counts


@pytest.mark.parametrize(
    "encoder,latent,decoder,train",
    list(itertools.product(M.ENCODERS, M.LATENTS, M.DECODERS, (False, True))),
)
def test_output_shapes_and_dtypes(encoder, latent, decoder, train):
    s, k, n = 3, 7, 10
    noise = latent == "continuous"
    model = M.IBModel(encoder, k, n, latent=latent, noise=noise, decoder=decoder,
                      encoder_hidden=(32,), decoder_hidden=(16, 16))
    shape = INPUT_SHAPE[encoder]
    mutable = ["params", "batch_stats"] if encoder == "resnet18" else ["params"]
    out, variables = abstract_init(model, shape, train=train, num_samples=s)
    b = shape[0]
    if latent == "continuous":
        expected = {"z": (s, b, k), "logits": (s, b, n)}
    elif latent == "vib":
        expected = {"z": (s, b, k), "z_mean": (s, b, k), "z_scale": (s, b, k), "logits": (s, b, n)}
    else:
        expected = {"z_log_probs": (s, b, k), "decoder_log_probs": (k, n), "logits": (s, b, n)}
    assert {key: v.shape for key, v in out.items()} == expected
    assert all(v.dtype == jnp.float32 for v in out.values())
    assert sorted(variables) == sorted(mutable)
    assert sorted(variables["params"]) == ["decoder", "encoder"]


def test_mlp_encoder_parameter_count():
    k = 100
    model = M.IBModel("mlp", k, 10, latent="categorical", decoder="categorical_mlp")
    _, variables = abstract_init(model, MNIST)
    params = variables["params"]
    assert M.count_params(params["encoder"]) == mlp_count((784, 1024, 1024, k))
    assert M.count_params(params["decoder"]) == mlp_count((k, 1024, 1024, 10))
    # Hand-checked: 784·1024+1024 + 1024·1024+1024 + 1024·100+100.
    assert M.count_params(params["encoder"]) == 1_955_940


def test_dropout_cnn_parameter_count():
    model = M.IBModel("dropout_cnn", 128, 10, decoder="linear")
    _, variables = abstract_init(model, MNIST)
    params = variables["params"]
    assert M.count_params(params["encoder"]) == dropout_cnn_count(128)
    assert M.count_params(params["decoder"]) == dense_count(128, 10)
    # The PyTorch MNIST example (10 outputs) has 1,199,882 parameters.
    assert dropout_cnn_count(10) == 1_199_882
    shapes = jax.tree_util.tree_map(lambda a: a.shape, params["encoder"])
    assert shapes["conv1"]["kernel"] == (3, 3, 1, 32)
    assert shapes["conv2"]["kernel"] == (3, 3, 32, 64)
    assert shapes["fc1"]["kernel"] == (9216, 128)


@pytest.mark.parametrize("k", [10, 100])
def test_resnet18_parameter_count(k):
    model = M.IBModel("resnet18", k, 10)
    _, variables = abstract_init(model, CIFAR)
    assert M.count_params(variables["params"]["encoder"]) == resnet18_count(k)
    # torchvision-style CIFAR ResNet18 with 10 outputs.
    assert resnet18_count(10) == 11_173_962
    # 20 BatchNorms (stem, 16 in blocks, 3 projection shortcuts), each with mean and var.
    assert len(jax.tree_util.tree_leaves(variables["batch_stats"])) == 2 * 20


def test_resnet18_stage_resolutions_and_widths():
    encoder = M.ResNet18(10)
    _, state = jax.eval_shape(
        lambda: encoder.init_with_output(
            rngs(), jnp.zeros(CIFAR), train=False, capture_intermediates=True
        )
    )
    stages = state["intermediates"]
    for stage, (size, width) in enumerate([(32, 64), (16, 128), (8, 256), (4, 512)], start=1):
        for block in (1, 2):
            (out,) = stages[f"stage{stage}_block{block}"]["__call__"]
            assert out.shape == (2, size, size, width)
    assert "shortcut_conv" not in state["params"]["stage1_block1"]
    for stage in (2, 3, 4):
        assert state["params"][f"stage{stage}_block1"]["shortcut_conv"]["kernel"].shape[:2] == (1, 1)
        assert "shortcut_conv" not in state["params"][f"stage{stage}_block2"]


def test_count_params_hand_checked():
    params = {"a": jnp.zeros((2, 3)), "b": {"c": jnp.zeros((4,)), "d": jnp.zeros(())}}
    assert M.count_params(params) == 11


# ----------------------------------------------------------------- forward passes vs NumPy


def test_mlp_forward_matches_numpy():
    model = M.IBModel("mlp", 6, 4, encoder_hidden=(32, 16))
    x = images(MNIST)
    variables = model.init(rngs(), x, train=False, num_samples=1)
    out = model.apply(variables, x, train=False, num_samples=3)
    p = to_np(variables["params"])
    z = np_mlp(np.asarray(x, np.float64), p["encoder"], ["hidden_0", "hidden_1"])
    logits = np_dense(z, p["decoder"]["output"])
    for s in range(3):
        np.testing.assert_allclose(out["z"][s], z, rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(out["logits"][s], logits, rtol=1e-5, atol=1e-5)


def test_dropout_cnn_dropout_rates():
    """Dropout(0.25) after pooling and Dropout(0.5) after fc1: drop fraction and 1/(1-p) scaling."""
    encoder = M.DropoutCNN(features=5)
    x = images((64, 28, 28, 1), seed=3)
    variables = encoder.init(rngs(), x, train=False)
    _, state = encoder.apply(
        variables, x, train=True, rngs={"dropout": jax.random.key(7)}, capture_intermediates=True
    )
    inter = to_np(state["intermediates"])
    (conv2,) = inter["conv2"]["__call__"]
    (dropout1,) = inter["dropout1"]["__call__"]
    (fc1,) = inter["fc1"]["__call__"]
    (dropout2,) = inter["dropout2"]["__call__"]
    for inputs, outputs, rate in [
        (np_max_pool2(np_relu(conv2)).reshape(dropout1.shape), dropout1, 0.25),
        (np_relu(fc1), dropout2, 0.5),
    ]:
        live = inputs != 0
        dropped = live & (outputs == 0)
        kept = live & ~dropped
        n = live.sum()
        assert n > 3000
        assert abs(dropped.sum() / n - rate) < 4 * math.sqrt(rate * (1 - rate) / n)
        np.testing.assert_allclose(outputs[kept], inputs[kept] / (1 - rate), rtol=1e-5)


def test_basic_block_with_projection_matches_numpy_in_train_mode():
    block = M.BasicBlock(features=8, strides=2)
    x = images((3, 6, 6, 4), seed=1)
    variables = block.init(rngs(), x, train=False)
    # Non-trivial BatchNorm affine parameters so that scale and bias are checked too.
    leaves, treedef = jax.tree_util.tree_flatten(variables["params"])
    keys = jax.random.split(jax.random.key(5), len(leaves))
    params = jax.tree_util.tree_unflatten(
        treedef, [l + 0.3 * jax.random.normal(k, l.shape) for l, k in zip(leaves, keys)]
    )
    out, updates = block.apply(
        {"params": params, "batch_stats": variables["batch_stats"]}, x, train=True,
        mutable=["batch_stats"],
    )
    p = to_np(params)
    xn = np.asarray(x, np.float64)
    y, m1, v1 = np_batch_norm_train(np_conv(xn, p["conv1"]["kernel"], stride=2, pad=1), p["bn1"])
    y, m2, v2 = np_batch_norm_train(np_conv(np_relu(y), p["conv2"]["kernel"], pad=1), p["bn2"])
    sc, m3, v3 = np_batch_norm_train(
        np_conv(xn, p["shortcut_conv"]["kernel"], stride=2), p["shortcut_bn"]
    )
    assert out.shape == (3, 3, 3, 8)
    np.testing.assert_allclose(out, np_relu(y + sc), rtol=1e-4, atol=1e-4)
    # Running averages with PyTorch's momentum 0.1, from mean 0 and variance 1.
    for name, mean, var in [("bn1", m1, v1), ("bn2", m2, v2), ("shortcut_bn", m3, v3)]:
        stats = updates["batch_stats"][name]
        np.testing.assert_allclose(stats["mean"], 0.1 * mean, rtol=1e-4, atol=1e-5)
        np.testing.assert_allclose(stats["var"], 0.9 + 0.1 * var, rtol=1e-4, atol=1e-5)


def test_basic_block_identity_shortcut():
    block = M.BasicBlock(features=4, strides=1)
    x = images((2, 5, 5, 4), seed=2)
    variables = block.init(rngs(), x, train=False)
    assert sorted(variables["params"]) == ["bn1", "bn2", "conv1", "conv2"]
    out = block.apply(variables, x, train=False)
    # Eval mode with fresh statistics (mean 0, var 1) is BN(y) = y / sqrt(1 + eps).
    p = to_np(variables["params"])
    c = 1.0 / math.sqrt(1 + 1e-5)
    xn = np.asarray(x, np.float64)
    y = np_conv(np_relu(c * np_conv(xn, p["conv1"]["kernel"], pad=1)), p["conv2"]["kernel"], pad=1)
    np.testing.assert_allclose(out, np_relu(c * y + xn), rtol=1e-4, atol=1e-5)


# ----------------------------------------------------------------- samples, Dropout and noise


def test_dropout_samples_differ_in_train_mode_and_not_in_eval():
    model = M.IBModel("dropout_cnn", 16, 10)
    x = images(MNIST)
    variables = model.init(rngs(), x, train=False, num_samples=1)

    def run(train, dropout_seed):
        return model.apply(variables, x, train=train, num_samples=4,
                           rngs={"dropout": jax.random.key(dropout_seed)})["z"]

    train_a, train_b = run(True, 0), run(True, 1)
    assert not np.allclose(train_a, train_b)
    for i, j in itertools.combinations(range(4), 2):
        assert not np.allclose(train_a[i], train_a[j])
    np.testing.assert_array_equal(train_a, run(True, 0))
    eval_a, eval_b = run(False, 0), run(False, 1)
    np.testing.assert_array_equal(eval_a, eval_b)
    for s in range(4):
        np.testing.assert_array_equal(eval_a[s], eval_a[0])
    # Eval mode is the deterministic network (Dropout is the identity).
    np.testing.assert_allclose(
        eval_a[0], np_dropout_cnn_eval(np.asarray(x, np.float64), to_np(variables["params"]["encoder"])),
        rtol=1e-4, atol=1e-5,
    )


def test_zero_entropy_noise_statistics_and_decoder_input():
    s, k = 16, 64
    noisy = M.IBModel("mlp", k, 10, noise=True, encoder_hidden=(32,))
    clean = M.IBModel("mlp", k, 10, noise=False, encoder_hidden=(32,))
    x = images(MNIST)
    variables = noisy.init(rngs(), x, train=False, num_samples=1)
    assert jax.tree_util.tree_structure(variables) == jax.tree_util.tree_structure(
        clean.init(rngs(), x, train=False, num_samples=1)
    )
    out = noisy.apply(variables, x, train=False, num_samples=s, rngs={"noise": jax.random.key(3)})
    z_clean = clean.apply(variables, x, train=False, num_samples=s)["z"]
    eps = np.asarray(out["z"], np.float64) - np.asarray(z_clean, np.float64)
    n = eps.size
    assert abs(eps.mean()) < 4 * ZERO_ENTROPY_STD / math.sqrt(n)
    assert abs(eps.std() / ZERO_ENTROPY_STD - 1) < 4 / math.sqrt(2 * n)
    # Independent draws across samples of the same input.
    assert abs(np.corrcoef(eps[0].ravel(), eps[1].ravel())[0, 1]) < 4 / math.sqrt(2 * k)
    # The decoder sees the noisy latent.
    p = to_np(variables["params"]["decoder"]["output"])
    np.testing.assert_allclose(out["logits"], np_dense(np.asarray(out["z"], np.float64), p),
                               rtol=1e-5, atol=1e-5)


def test_noise_is_on_in_eval_and_train_and_off_is_deterministic():
    x = images(MNIST)
    noisy = M.IBModel("mlp", 8, 10, noise=True, encoder_hidden=(16,))
    variables = noisy.init(rngs(), x, train=False, num_samples=1)
    for train in (False, True):
        a = noisy.apply(variables, x, train=train, num_samples=2, rngs={"noise": jax.random.key(0)})
        b = noisy.apply(variables, x, train=train, num_samples=2, rngs={"noise": jax.random.key(1)})
        assert not np.allclose(a["z"], b["z"])
        assert not np.allclose(a["z"][0], a["z"][1])
    clean = M.IBModel("mlp", 8, 10, noise=False, encoder_hidden=(16,))
    a = clean.apply(variables, x, train=False, num_samples=2, rngs={"noise": jax.random.key(0)})
    b = clean.apply(variables, x, train=False, num_samples=2)
    np.testing.assert_array_equal(a["z"], b["z"])
    np.testing.assert_array_equal(a["logits"], b["logits"])
    np.testing.assert_array_equal(a["z"][0], a["z"][1])


# ----------------------------------------------------------------- categorical latent


def test_prediction_log_probs_hand_checked():
    z_log_probs = jnp.log(jnp.array([[0.25, 0.75], [1.0, 0.0]]))
    decoder_log_probs = jnp.log(jnp.array([[1.0, 0.0], [0.5, 0.5]]))
    out = np.exp(M.prediction_log_probs(z_log_probs, decoder_log_probs))
    # p(ŷ|x) = 0.25·(1, 0) + 0.75·(0.5, 0.5) and 1·(1, 0).
    np.testing.assert_allclose(out, [[0.625, 0.375], [1.0, 0.0]], rtol=1e-6, atol=1e-7)


def test_prediction_log_probs_is_stable_for_peaked_distributions():
    z_log_probs = jnp.array([0.0, -1e4, -1e4])
    decoder_log_probs = jnp.array([[-200.0, 0.0], [0.0, -1e4], [0.0, -1e4]])
    out = M.prediction_log_probs(z_log_probs, decoder_log_probs)
    np.testing.assert_allclose(out, [-200.0, 0.0], rtol=1e-6)


@pytest.mark.parametrize("decoder", M.DECODERS)
def test_categorical_latent_matches_numpy(decoder):
    c, n, s = 12, 10, 3
    model = M.IBModel("dropout_cnn", c, n, latent="categorical", decoder=decoder, decoder_hidden=(32, 16))
    x = images(MNIST)
    variables = model.init(rngs(), x, train=False, num_samples=1)
    out = to_np(model.apply(variables, x, train=True, num_samples=s,
                            rngs={"dropout": jax.random.key(4)}))
    z_lp, dec_lp = out["z_log_probs"], out["decoder_log_probs"]
    np.testing.assert_allclose(np.exp(z_lp).sum(-1), 1.0, rtol=1e-5)
    np.testing.assert_allclose(np.exp(dec_lp).sum(-1), 1.0, rtol=1e-5)
    assert not np.allclose(z_lp[0], z_lp[1])  # Dropout samples of p(z|x).
    # log p(ŷ|x) = log Σ_z p(z|x) p(ŷ|z), in float64.
    p_y = np.einsum("sbc,cn->sbn", np.exp(z_lp), np.exp(dec_lp))
    np.testing.assert_allclose(out["logits"], np.log(p_y), rtol=1e-5, atol=1e-5)
    # The decoder matrix is the decoder evaluated on the C one-hot codes.
    p = to_np(variables["params"]["decoder"])
    hidden = sorted(name for name in p if name.startswith("hidden_"))
    np.testing.assert_allclose(dec_lp, np_log_softmax(np_mlp(np.eye(c), p, hidden)),
                               rtol=1e-5, atol=1e-5)


# ----------------------------------------------------------------- ResNet18 and BatchNorm


def test_resnet18_batch_stats_update_in_train_mode(resnet):
    model, variables, x = resnet
    out, updates = model.apply(variables, x, train=True, num_samples=2,
                               rngs={"noise": jax.random.key(0)}, mutable=["batch_stats"])
    assert out["z"].shape == (2, 2, 10)
    assert jax.tree_util.tree_structure(updates["batch_stats"]) == jax.tree_util.tree_structure(
        variables["batch_stats"]
    )
    old = variables["batch_stats"]["encoder"]["stem_bn"]
    new = updates["batch_stats"]["encoder"]["stem_bn"]
    assert not np.allclose(old["mean"], new["mean"])
    assert not np.allclose(old["var"], new["var"])
    # Running statistics stay float32 and so do the parameters.
    for leaf in jax.tree_util.tree_leaves(updates) + jax.tree_util.tree_leaves(variables["params"]):
        assert leaf.dtype == jnp.float32


def test_resnet18_eval_uses_running_statistics(resnet):
    model, variables, x = resnet
    clean = model.clone(noise=False)
    full = clean.apply(variables, x, train=False, num_samples=1)["z"][0]
    single = clean.apply(variables, x[:1], train=False, num_samples=1)["z"][0]
    np.testing.assert_allclose(single[0], full[0], rtol=1e-4, atol=1e-5)
    # In train mode the output of an example depends on the rest of the batch.
    full_train, _ = clean.apply(variables, x, train=True, num_samples=1, mutable=["batch_stats"])
    alone_train, _ = clean.apply(variables, jnp.concatenate([x[:1], -x[1:]]), train=True,
                                 num_samples=1, mutable=["batch_stats"])
    assert not np.allclose(full_train["z"][0, 0], alone_train["z"][0, 0])


def test_resnet18_bfloat16_close_to_float32(resnet):
    model, variables, x = resnet
    clean32 = model.clone(noise=False)
    clean16 = model.clone(noise=False, dtype="bfloat16")
    z32 = clean32.apply(variables, x, train=False, num_samples=1)["z"]
    z16 = clean16.apply(variables, x, train=False, num_samples=1)["z"]
    assert z16.dtype == jnp.float32
    assert not np.array_equal(z16, z32)
    np.testing.assert_allclose(z16, z32, atol=0.05 * float(jnp.abs(z32).max()))


# ----------------------------------------------------------------- mixed precision and jit


@pytest.mark.parametrize("encoder", M.ENCODERS)
def test_bfloat16_keeps_float32_params_and_outputs(encoder):
    model = M.IBModel(encoder, 8, 10, latent="categorical", decoder="categorical_mlp",
                      dtype="bfloat16", encoder_hidden=(32,), decoder_hidden=(16,))
    out, variables = abstract_init(model, INPUT_SHAPE[encoder], train=True)
    for leaf in jax.tree_util.tree_leaves(variables):
        assert leaf.dtype == jnp.float32
    for leaf in out.values():
        assert leaf.dtype == jnp.float32


@pytest.mark.parametrize("latent,decoder", [("continuous", "linear"), ("categorical", "categorical_mlp")])
def test_bfloat16_computes_in_bfloat16_and_is_close_to_float32(latent, decoder):
    x = images(MNIST)
    model32 = M.IBModel("mlp", 16, 10, latent=latent, decoder=decoder)
    model16 = model32.clone(dtype="bfloat16")
    variables = model32.init(rngs(), x, train=False, num_samples=1)
    out32 = model32.apply(variables, x, train=False, num_samples=1)
    out16, state = model16.apply(variables, x, train=False, num_samples=1, capture_intermediates=True)
    (encoder_out,) = state["intermediates"]["encoder"]["__call__"]
    assert encoder_out.dtype == jnp.bfloat16
    for key in out32:
        assert out16[key].dtype == jnp.float32
        assert not np.array_equal(out16[key], out32[key])
        scale = float(jnp.abs(out32[key]).max())
        np.testing.assert_allclose(out16[key], out32[key], atol=0.03 * scale)


def test_jit_matches_eager():
    model = M.IBModel("dropout_cnn", 16, 10, noise=True)
    x = images(MNIST)
    variables = model.init(rngs(), x, train=False, num_samples=1)

    def forward(variables, x, key):
        dropout, noise = jax.random.split(key)
        return model.apply(variables, x, train=True, num_samples=3,
                           rngs={"dropout": dropout, "noise": noise})

    eager = forward(variables, x, jax.random.key(9))
    jitted = jax.jit(forward)(variables, x, jax.random.key(9))
    for key in eager:
        np.testing.assert_allclose(jitted[key], eager[key], rtol=1e-5, atol=1e-5)
    grads = jax.jit(jax.grad(lambda v: forward(v, x, jax.random.key(9))["logits"].sum()))(variables)
    assert all(np.isfinite(g).all() for g in jax.tree_util.tree_leaves(grads))
    assert float(jnp.abs(grads["params"]["encoder"]["conv1"]["kernel"]).sum()) > 0


# ----------------------------------------------------------------- config and validation


def test_create_model_from_config():
    config = ml_collections.ConfigDict(
        dict(encoder="mlp", latent_dim=100, latent="categorical", noise=False,
             decoder="categorical_mlp", num_samples=1, dtype="bfloat16", encoder_hidden=(64,))
    )
    model = M.create_model(config, num_classes=10)
    assert (model.encoder, model.latent_dim, model.num_classes, model.latent, model.noise,
            model.decoder, model.dtype, model.encoder_hidden, model.decoder_hidden) == (
        "mlp", 100, 10, "categorical", False, "categorical_mlp", "bfloat16", (64,), (1024, 1024))
    config.latent = "gaussian"
    with pytest.raises(ValueError, match="latent"):
        M.create_model(config, num_classes=10)


@pytest.mark.parametrize(
    "kwargs,error,match",
    [
        (dict(encoder="vgg"), ValueError, "encoder.*mlp.*dropout_cnn.*resnet18"),
        (dict(latent="gaussian"), ValueError, "latent.*continuous.*categorical"),
        (dict(decoder="deep"), ValueError, "decoder.*linear.*categorical_mlp"),
        (dict(dtype="float16"), ValueError, "dtype.*float32.*bfloat16"),
        (dict(latent_dim=0), ValueError, "latent_dim"),
        (dict(num_classes=2.5), ValueError, "num_classes"),
        (dict(noise=1), TypeError, "noise"),
        (dict(latent="categorical", noise=True), ValueError, "noise"),
        (dict(encoder_hidden=(32, 0)), ValueError, "encoder_hidden"),
        (dict(decoder_hidden=64), ValueError, "decoder_hidden"),
        (dict(decoder_hidden=[64]), ValueError, "decoder_hidden"),
    ],
)
def test_invalid_configuration_raises(kwargs, error, match):
    args = dict(encoder="mlp", latent_dim=4, num_classes=10) | kwargs
    with pytest.raises(error, match=match):
        M.IBModel(**args)


def test_dtype_accepts_jnp_dtypes():
    assert M.IBModel("mlp", 4, 10, dtype=jnp.bfloat16).dtype == jnp.bfloat16


def test_invalid_call_arguments_raise():
    model = M.IBModel("mlp", 4, 10, encoder_hidden=(8,))
    with pytest.raises(ValueError, match="num_samples"):
        abstract_init(model, MNIST, num_samples=0)
    with pytest.raises(TypeError, match="train"):
        abstract_init(model, MNIST, train=1)
    with pytest.raises(ValueError, match="rank 4"):
        abstract_init(M.IBModel("dropout_cnn", 4, 10), (2, 28, 28))
    with pytest.raises(ValueError, match="agree on C"):
        M.prediction_log_probs(jnp.zeros((2, 3)), jnp.zeros((4, 10)))


def test_params_are_plain_dicts_of_encoder_and_decoder():
    """Train and eval, stochastic or not, share one parameter tree (params['encoder'|'decoder'])."""
    model = M.IBModel("dropout_cnn", 8, 10, noise=True)
    train_vars = abstract_init(model, MNIST, train=True)[1]
    eval_vars = abstract_init(model, MNIST, train=False)[1]
    assert jax.tree_util.tree_structure(train_vars) == jax.tree_util.tree_structure(eval_vars)
    shapes = jax.tree_util.tree_map(lambda a: a.shape, flax.core.unfreeze(train_vars))
    assert shapes == jax.tree_util.tree_map(lambda a: a.shape, flax.core.unfreeze(eval_vars))


# --------------------------------------------------------------------------
# PyTorch's default initialisation (section 7: the paper trained with PyTorch).
# --------------------------------------------------------------------------


def test_pytorch_default_init_redraws_kernel_and_bias_pairs_only():
    tree = {
        "dense": {"kernel": jnp.zeros((4, 3)), "bias": jnp.zeros((3,))},
        "conv": {"kernel": jnp.ones((3, 3, 2, 5)), "bias": jnp.zeros((5,))},
        "resnet_conv": {"kernel": jnp.full((3, 3, 2, 5), 7.0)},          # no bias: torchvision's He init stays
        "bn": {"scale": jnp.ones((3,)), "bias": jnp.zeros((3,))},        # no kernel: not a layer to redraw
    }
    out = M.pytorch_default_init(jax.random.key(0), tree)
    # Hand bounds: 1/sqrt(fan_in) with fan_in = 4 (dense) and 3*3*2 = 18 (conv).
    for name, bound in (("dense", 0.5), ("conv", 1 / math.sqrt(18))):
        for leaf in ("kernel", "bias"):
            values = np.asarray(out[name][leaf])
            assert values.shape == tree[name][leaf].shape and values.dtype == np.float32
            assert np.all(np.abs(values) <= bound) and np.any(values != 0.0), (name, leaf)
    np.testing.assert_array_equal(out["resnet_conv"]["kernel"], tree["resnet_conv"]["kernel"])
    np.testing.assert_array_equal(out["bn"]["scale"], tree["bn"]["scale"])
    np.testing.assert_array_equal(out["bn"]["bias"], tree["bn"]["bias"])


def test_pytorch_default_init_has_the_moments_of_torch_kaiming_uniform():
    """The 784-1024-1024-100 encoder of section 7.1 against float64 U(-1/sqrt(fan_in), 1/sqrt(fan_in)) moments."""
    model = M.IBModel(encoder="mlp", latent_dim=100, num_classes=10, latent="categorical",
                      decoder="categorical_mlp", param_init="pytorch")
    state = step.create_train_state(jax.random.key(0), model, optax.adam(1e-3), (28, 28, 1))
    flax_state = step.create_train_state(jax.random.key(0), model.clone(param_init="flax"), optax.adam(1e-3),
                                         (28, 28, 1))
    for part, layer, fan_in in (("encoder", "hidden_0", 784), ("encoder", "output", 1024), ("decoder", "hidden_0", 100)):
        kernel = np.asarray(state.params[part][layer]["kernel"], np.float64)
        bias = np.asarray(state.params[part][layer]["bias"], np.float64)
        bound = 1.0 / math.sqrt(fan_in)
        # kaiming_uniform_(a=sqrt(5)): gain sqrt(2 / (1 + 5)), std gain / sqrt(fan_in), uniform bound sqrt(3) std.
        torch_bound = math.sqrt(3.0) * math.sqrt(2.0 / (1.0 + 5.0)) / math.sqrt(fan_in)
        assert torch_bound == pytest.approx(bound, rel=1e-12)
        assert np.abs(kernel).max() <= bound and np.abs(kernel).max() > 0.99 * bound
        assert kernel.var() == pytest.approx(bound**2 / 3.0, rel=0.02)
        assert abs(kernel.mean()) < 0.01 * bound
        assert np.abs(bias).max() <= bound and bias.std() > 0.4 * bound
        # Flax's lecun-normal has three times the variance and zero biases.
        flax_kernel = np.asarray(flax_state.params[part][layer]["kernel"], np.float64)
        assert flax_kernel.var() == pytest.approx(1.0 / fan_in, rel=0.05)
        assert not np.any(np.asarray(flax_state.params[part][layer]["bias"]))


def test_param_init_is_validated():
    with pytest.raises(ValueError, match=r"`param_init` must be one of \['flax', 'pytorch'\]; got 'torch'"):
        M.IBModel(encoder="mlp", latent_dim=4, num_classes=10, param_init="torch")
    config = ml_collections.ConfigDict({"encoder": "mlp", "latent_dim": 4, "init": "pytorch"})
    assert M.create_model(config, 10).param_init == "pytorch"
