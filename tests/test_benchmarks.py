"""Tests of the benchmark harness (benchmarks/harness.py), the train-step benchmark and its PyTorch reference."""

import math
import sys
import types
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks import harness  # noqa: E402
from benchmarks import train_step as bench  # noqa: E402
from ibjax import data as datalib  # noqa: E402
from ibjax import information, losses, models  # noqa: E402


# ------------------------------------------------------------------ harness


def test_mlp_row_gives_positive_finite_throughput_and_compile_time():
    result = bench.run_row("mlp_categorical", steps=1, repeats=2, num_images=256)
    timing = result.ibjax
    assert result.row.batch_size == 128 and result.torch is None and result.sequential is None
    assert math.isfinite(timing.examples_per_sec) and timing.examples_per_sec > 0
    assert math.isfinite(timing.setup_seconds) and timing.setup_seconds > 0
    assert timing.steps == 1 and len(timing.repeat_seconds) == 2
    assert timing.examples_per_sec == pytest.approx(128 / timing.step_seconds)
    # Matmul FLOPs of one step per example, by hand: the encoder 784–1024–1024–100 per
    # example, the decoder 100–1024–1024–10 on the 100 one-hot codes once per batch of
    # 128; forward 2·MACs, weight gradients 2·MACs, input gradients 2·MACs except for
    # the first layer (its input is data).
    encoder = [(784, 1024), (1024, 1024), (1024, 100)]
    decoder = [(100, 1024), (1024, 1024), (1024, 10)]

    def matmul_flops(layers, rows):
        macs = [rows * a * b for a, b in layers]
        return 2 * sum(macs) * 2 + 2 * sum(macs[1:])

    expected = matmul_flops(encoder, 1) + matmul_flops(decoder, 100) / 128
    assert expected <= timing.flops_per_example <= 1.1 * expected
    assert result.mfu is None  # no peak FLOP/s for a CPU


def test_measure_interleaves_runners_and_reports_the_median(monkeypatch):
    now = [0.0]
    monkeypatch.setattr(harness, "time", types.SimpleNamespace(perf_counter=lambda: now[0]))
    calls = []

    def fake(name, seconds_per_step):
        def run(n):
            calls.append((name, n))
            now[0] += n * seconds_per_step.pop(0)
        return harness.Runner(run, examples_per_step=10, setup_seconds=0.5, flops_per_example=7.0)

    # Seconds per step of: two warm-up steps, then three repeats.
    a = fake("a", [0.003, 0.002, 0.002, 0.004, 0.001])
    b = fake("b", [0.03, 0.03, 0.02, 0.05, 0.03])
    c = fake("c", [2.0, 1.0, 3.0, 2.0])  # one warm-up step: it lasts min_repeat_seconds
    timings = harness.measure([a, b, c], steps=None, repeats=3, warmup=2, min_repeat_seconds=0.04)
    assert [t.steps for t in timings] == [20, 2, 1]  # ceil(0.04 / last warm-up step), at least 1
    assert calls == [("a", 1), ("a", 1), ("b", 1), ("b", 1), ("c", 1),
                     ("a", 20), ("b", 2), ("c", 1), ("c", 1), ("b", 2), ("a", 20), ("a", 20), ("b", 2), ("c", 1)]
    for timing, repeats, median in zip(timings, ([0.002, 0.004, 0.001], [0.02, 0.05, 0.03], [1.0, 3.0, 2.0]),
                                       (0.002, 0.03, 2.0)):
        np.testing.assert_allclose(timing.repeat_seconds, repeats)
        assert timing.step_seconds == pytest.approx(median)
        assert timing.examples_per_sec == pytest.approx(10 / median)
        assert timing.flops_per_example == 7.0 and timing.setup_seconds == 0.5

    d = fake("d", [0.1, 0.1, 0.1, 0.3])
    (timing,) = harness.measure([d], steps=5, repeats=2, warmup=2, min_repeat_seconds=1.0)
    assert timing.steps == 5 and calls[-2:] == [("d", 5), ("d", 5)]
    assert timing.step_seconds == pytest.approx(0.2)  # the median of two is their mean


def test_measure_rejects_bad_counts():
    runner = harness.Runner(lambda n: None, 1, 0.0)
    with pytest.raises(ValueError, match="`repeats`"):
        harness.measure([runner], steps=1, repeats=0)
    with pytest.raises(ValueError, match="`steps`"):
        harness.measure([runner], steps=0, repeats=1)


def test_run_row_and_flags_name_the_valid_rows():
    with pytest.raises(ValueError, match="mlp_categorical"):
        bench.run_row("resnet50")
    with pytest.raises(SystemExit):
        bench._parse(["--rows", "mlp_categorical,resnet50"])
    args = bench._parse(["--rows", "all", "--no_torch", "--steps", "3"])
    assert args.rows == list(bench.ROWS) and args.torch is False and args.steps == 3
    assert "resnet18_b512_f32" not in bench._parse([]).rows  # the CPU default


class _Device:
    def __init__(self, kind):
        self.device_kind = kind


def test_peak_flops_by_device_kind():
    assert harness.peak_flops(_Device("NVIDIA H100 80GB HBM3"), "bfloat16") == 989e12
    assert harness.peak_flops(_Device("NVIDIA H100 PCIe"), "float32") == 378e12
    assert harness.peak_flops(_Device("TPU v5 lite"), "bfloat16") == 197e12
    assert harness.peak_flops(_Device("cpu"), "float32") is None


def test_report_tables_and_notes_below_the_marker(tmp_path):
    single = harness.Timing(1000.0, 0.128, [0.128, 0.1, 0.2], 4, 2.5, 1.6e7)
    torch_timing = harness.Timing(500.0, 0.256, [0.256, 0.3, 0.25], 2, 1.0)
    population = harness.Timing(1000.0, 0.512, [0.512], 1, 3.0, 1.6e7)
    sequential = harness.Timing(800.0, 0.64, [0.64, 0.7], 1, 2.0)
    results = [bench.Result(bench.ROWS["mlp_categorical"], single, torch=torch_timing),
               bench.Result(bench.ROWS["population_g4"], population, sequential=sequential)]
    report = bench.format_report(results, "python benchmarks/train_step.py", with_torch=False,
                                 load=[(1.0, 2.0, 3.0), (4.0, 5.0, 6.0)])
    # ibjax / PyTorch: medians 1000 / 500, best repeats 0.25 / 0.1; GFLOP/s = 0.016 GFLOP/ex × 1000 ex/s.
    assert "| 1000.0 | 2.5 | 0.016 | 16.0 | n/a | 500.0 | 2.00 (2.50) |" in report
    assert "| population_g4 | 4 | 128 | 1 × 1 | 1000.0 | 3.0 | 0.016 | 16.0 | n/a | 800.0 | 1.25 (1.25) |" in report
    assert "1.00 / 2.00 / 3.00; 4.00 / 5.00 / 6.00" in report
    path = tmp_path / "RESULTS.md"
    harness.write_report(path, report)
    path.write_text(path.read_text() + "\n## Findings\nkeep me\n")
    harness.write_report(path, report.replace("1000.0", "999.0"))
    text = path.read_text()
    assert "999.0" in text and "1000.0" not in text and text.endswith("## Findings\nkeep me\n")
    assert text.count(harness.NOTES_MARKER) == 1


# ------------------------------------------------------------------ PyTorch reference


def _small_mlp_config():
    config = harness.row_config(bench.ROWS["mlp_categorical"])
    config.model.encoder_hidden = (64, 48)
    config.model.latent_dim = 12
    config.model.decoder_hidden = (40, 32)
    return config


def test_torch_mlp_loss_equals_ibjax_decoder_cross_entropy_on_the_same_weights():
    torch = pytest.importorskip("torch")
    from benchmarks import torch_reference

    config = _small_mlp_config()
    images, labels = harness.synthetic_data(bench.ROWS["mlp_categorical"].image_shape, num_images=64, seed=3)
    model = models.create_model(config.model, 10)
    params = jax.jit(lambda key: model.init(key, jnp.zeros((1, 28, 28, 1)), train=False, num_samples=1))(
        jax.random.key(0))["params"]
    batch = np.arange(5, 37)
    # What ibjax's train step computes as its loss for this config.
    out = model.apply({"params": params}, datalib.preprocess(jnp.asarray(images[batch]), config.data.name),
                      train=True, num_samples=1)
    ibjax_loss = float(jnp.mean(information.categorical_decoder_cross_entropy(
        out["z_log_probs"], out["decoder_log_probs"], jnp.asarray(labels[batch]))))

    reference = torch_reference.load_flax_mlp_categorical(torch_reference.build(config), params).train()
    with torch.no_grad():
        torch_loss = torch_reference.training_loss(
            config, reference, torch.from_numpy(images[batch]), torch.from_numpy(labels[batch].astype(np.int64)),
            torch.Generator())
    assert float(torch_loss) == pytest.approx(ibjax_loss, rel=1e-5)

    # float64 NumPy: Σ_z p(z|x)(−log p(y|z)) of the same network.
    def mlp(h, side):
        layers = [params[side][name] for name in ("hidden_0", "hidden_1", "output")]
        for i, layer in enumerate(layers):
            h = h @ np.asarray(layer["kernel"], np.float64) + np.asarray(layer["bias"], np.float64)
            h = np.maximum(h, 0.0) if i < len(layers) - 1 else h
        return h - np.log(np.sum(np.exp(h - h.max(-1, keepdims=True)), -1, keepdims=True)) - h.max(-1, keepdims=True)

    (mean,), (std,) = datalib.NORMALIZATION["permuted_mnist"]
    x = ((images[batch].astype(np.float64) / 255.0 - mean) / std).reshape(len(batch), -1)
    z_log_probs, decoder_log_probs = mlp(x, "encoder"), mlp(np.eye(12), "decoder")
    expected = np.mean(np.sum(np.exp(z_log_probs) * -decoder_log_probs.T[labels[batch]], axis=1))
    assert ibjax_loss == pytest.approx(expected, rel=1e-5)


def test_torch_categorical_decoder_cross_entropy_by_hand():
    torch = pytest.importorskip("torch")
    from benchmarks import torch_reference

    # p(z|x) = (¼, ¾), p(y=0|z) = (1, ½): ¼·(−log 1) + ¾·(−log ½) = ¾ log 2.
    value = torch_reference.categorical_decoder_cross_entropy(
        torch.log(torch.tensor([[0.25, 0.75]])), torch.log(torch.tensor([[1.0, 1e-30], [0.5, 0.5]])),
        torch.tensor([0]))
    assert float(value[0]) == pytest.approx(0.75 * math.log(2.0), rel=1e-6)


def test_torch_losses_equal_ibjax_and_float64_numpy():
    torch = pytest.importorskip("torch")
    from benchmarks import torch_reference

    rng = np.random.default_rng(0)
    z = rng.normal(size=(3, 20, 4)).astype(np.float32)
    labels = np.array([0, 1, 1, 2, 2, 2, 0, 1, 3, 0, 1, 2, 0, 0, 1, 2, 1, 0, 2, 1])  # class 3 once: left out
    logits = rng.normal(size=(3, 20, 5)).astype(np.float32)

    flat = z.reshape(-1, 4).astype(np.float64)
    tiled = np.tile(labels, 3)
    present = [c for c in range(5) if np.sum(tiled == c) >= 2]
    weights = np.array([np.sum(tiled == c) for c in present], np.float64)
    entropies = [0.5 * np.sum(np.log(2 * np.pi * np.e * (np.var(flat[tiled == c], axis=0, ddof=1) + 1e-8)))
                 for c in present]
    expected_clv = np.sum(weights / weights.sum() * np.array(entropies))
    torch_clv = torch_reference.conditional_log_variance(
        torch.from_numpy(z.reshape(-1, 4)), torch.from_numpy(tiled), 5, 1e-8)
    ibjax_clv = losses.conditional_log_variance(jnp.asarray(z), jnp.asarray(labels), 5, eps=1e-8)
    assert float(torch_clv) == pytest.approx(expected_clv, rel=1e-5)
    assert float(ibjax_clv) == pytest.approx(expected_clv, rel=1e-5)

    log_probs = logits.astype(np.float64) - np.log(np.sum(np.exp(logits.astype(np.float64)), -1, keepdims=True))
    expected_dce = -np.mean(log_probs[:, np.arange(20), labels], axis=0)
    torch_dce = torch_reference.decoder_cross_entropy(torch.from_numpy(logits), torch.from_numpy(labels))
    np.testing.assert_allclose(torch_dce.numpy(), expected_dce, rtol=1e-5)
    np.testing.assert_allclose(losses.decoder_cross_entropy(jnp.asarray(logits), jnp.asarray(labels)),
                               expected_dce, rtol=1e-5)


def test_torch_crop_and_flip_equals_ibjax():
    torch = pytest.importorskip("torch")
    from benchmarks import torch_reference

    rng = np.random.default_rng(1)
    images = rng.normal(size=(6, 5, 7, 2)).astype(np.float32)
    offsets = rng.integers(0, 9, (6, 2))
    flips = np.array([True, False, True, True, False, False])
    expected = datalib.crop_and_flip(jnp.asarray(images), jnp.asarray(offsets), jnp.asarray(flips), padding=4)
    got = torch_reference.crop_and_flip(torch.from_numpy(images), torch.from_numpy(offsets), torch.from_numpy(flips))
    np.testing.assert_array_equal(got.numpy(), np.asarray(expected))


@pytest.mark.parametrize("encoder", ["dropout_cnn", "resnet18"])
def test_torch_encoders_have_the_ibjax_parameter_counts(encoder):
    pytest.importorskip("torch")
    from benchmarks import torch_reference

    config = harness.row_config(bench.ROWS["dropout_cnn" if encoder == "dropout_cnn" else "resnet18_b128_f32"])
    model = models.create_model(config.model, 10)
    shape = (1, 28, 28, 1) if encoder == "dropout_cnn" else (1, 32, 32, 3)
    variables = jax.eval_shape(lambda: model.init(
        {"params": jax.random.key(0), "dropout": jax.random.key(0), "noise": jax.random.key(0)},
        jnp.zeros(shape), train=False, num_samples=1))
    reference = torch_reference.build(config)
    # BatchNorm running statistics are buffers in torch and 'batch_stats' in Flax: neither is counted.
    assert sum(p.numel() for p in reference.parameters()) == models.count_params(variables["params"])


# ------------------------------------------------------------------ seed population against sequential runs


def test_seed_population_benchmark_prints_the_ratio_and_checks_members(capsys):
    from benchmarks import seed_population

    seed_population.main(["--trials", "2", "--epochs", "2", "--data", "synthetic"])
    out = capsys.readouterr().out
    rows = {line.split("|")[1].strip(): line for line in out.splitlines() if line.startswith("| ") and "×" in line}
    assert set(rows) == {"wall, compile included", "epochs 2–2 (steady state)"}
    for line in rows.values():
        sequential, population, ratio = (cell.strip() for cell in line.split("|")[2:5])
        # The printed seconds are rounded to 0.01 s and the ratio to 0.01: the ratio must lie
        # within what those roundings allow (a short synthetic run takes well under a second).
        seq, pop, shown = float(sequential), float(population), float(ratio.rstrip("×"))
        assert pop > 0
        low, high = (seq - 0.005) / (pop + 0.005), (seq + 0.005) / max(pop - 0.005, 1e-9)
        assert low - 0.005 <= shown <= high + 0.005, (line, low, high)
    differences = [float(d) for d in out.rsplit(": ", 1)[1].split(", ")]
    assert len(differences) == 2 and all(math.isfinite(d) and d >= 0 for d in differences)


def test_seed_population_benchmark_rejects_a_single_trial():
    from benchmarks import seed_population

    with pytest.raises(SystemExit):
        seed_population.main(["--trials", "1"])
