"""Gaussian-mixture entropy bounds (Kolchinsky & Tracey 2017) against float64 references and Monte Carlo."""

import math

import jax
import numpy as np
import pytest
from scipy.special import logsumexp

from ibjax import estimators as E
from ibjax.losses import ZERO_ENTROPY_STD


def reference_bounds(means, sigma):
    """float64 NumPy: H_ε − mean_i log mean_j exp(−‖μ_i − μ_j‖² / (c σ²)), c = 8 (lower) and 2 (upper)."""
    means = np.asarray(means, np.float64)
    n, d = means.shape
    sq = np.sum((means[:, None, :] - means[None, :, :]) ** 2, axis=-1)
    h_eps = 0.5 * d * math.log(2 * math.pi * math.e * sigma**2)
    return tuple(h_eps - np.mean(logsumexp(-sq / (c * sigma**2), axis=1) - math.log(n)) for c in (8.0, 2.0))


def monte_carlo_entropy(means, sigma, num_samples, seed=0):
    """−E log p(Z) of the equal-weight mixture, float64, with its standard error."""
    rng = np.random.default_rng(seed)
    n, d = means.shape
    z = means[rng.integers(0, n, num_samples)] + sigma * rng.standard_normal((num_samples, d))
    sq = np.sum((z[:, None, :] - means[None, :, :]) ** 2, axis=-1)
    log_p = logsumexp(-sq / (2 * sigma**2), axis=1) - math.log(n) - 0.5 * d * math.log(2 * math.pi * sigma**2)
    return -np.mean(log_p), np.std(log_p) / math.sqrt(num_samples)


@pytest.mark.parametrize("scale, sigma", [(1.0, 0.7), (30.0, 0.5), (1e-3, ZERO_ENTROPY_STD), (1e4, 200.0)])
def test_bounds_match_float64_reference(scale, sigma):
    means = scale * np.random.default_rng(1).standard_normal((70, 4))
    lower, upper = E.mixture_entropy_bounds(means.astype(np.float32), sigma)
    want_lower, want_upper = reference_bounds(means.astype(np.float32), sigma)
    assert float(lower) == pytest.approx(want_lower, rel=1e-5, abs=2e-4)
    assert float(upper) == pytest.approx(want_upper, rel=1e-5, abs=2e-4)
    assert float(lower) <= float(upper) + 1e-6


def test_hand_checked_cases():
    sigma = 0.8
    h_eps = 0.5 * 3 * math.log(2 * math.pi * math.e * sigma**2)
    assert E.gaussian_noise_entropy(sigma, 3) == pytest.approx(h_eps, rel=1e-12)
    # One component, or every component on the same mean: H[Z] = H_ε exactly.
    for means in (np.zeros((1, 3)), np.ones((9, 3))):
        lower, upper = E.mixture_entropy_bounds(means.astype(np.float32), sigma)
        assert float(lower) == pytest.approx(h_eps, abs=1e-5) and float(upper) == pytest.approx(h_eps, abs=1e-5)
    # Five components far apart: H[Z] = H_ε + log 5, both bounds meet it.
    far = 1000.0 * np.eye(5, 3)[:, :3].astype(np.float32)
    far[3:] = [[0, 0, 2000.0], [0, 2000.0, 2000.0]]
    lower, upper = E.mixture_entropy_bounds(far, sigma)
    assert float(lower) == pytest.approx(h_eps + math.log(5), abs=1e-5)
    assert float(upper) == pytest.approx(h_eps + math.log(5), abs=1e-5)
    # Two 1-D components at distance 2σ: the KL term is exp(−2) by hand.
    lower, upper = E.mixture_entropy_bounds(np.array([[0.0], [2 * sigma]], np.float32), sigma)
    h1 = 0.5 * math.log(2 * math.pi * math.e * sigma**2)
    assert float(upper) == pytest.approx(h1 - math.log((1 + math.exp(-2.0)) / 2), abs=1e-5)
    assert float(lower) == pytest.approx(h1 - math.log((1 + math.exp(-0.5)) / 2), abs=1e-5)


@pytest.mark.parametrize("spread", [0.5, 2.0, 6.0])
def test_bounds_bracket_the_monte_carlo_mixture_entropy(spread):
    means = spread * np.random.default_rng(2).standard_normal((25, 2))
    h, se = monte_carlo_entropy(means, 1.0, 100_000)
    lower, upper = E.mixture_entropy_bounds(means.astype(np.float32), 1.0)
    assert float(lower) <= h + 4 * se and h - 4 * se <= float(upper), (float(lower), h, float(upper))


def test_zero_entropy_noise_bounds_preserved_information_in_0_log_n():
    n = 200
    # Well-separated means in d = 32: the case where a one-draw k-NN estimate reads 80+ nats.
    means = 10.0 * np.random.default_rng(3).standard_normal((n, 32)).astype(np.float32)
    lower, upper = E.mixture_entropy_bounds(means, ZERO_ENTROPY_STD)
    assert E.gaussian_noise_entropy(ZERO_ENTROPY_STD, 32) == pytest.approx(0.0, abs=1e-12)
    assert 0.0 <= float(lower) <= float(upper) <= math.log(n) + 1e-5
    assert float(upper) == pytest.approx(math.log(n), abs=1e-4)


def test_conditional_bounds_average_the_classes():
    rng = np.random.default_rng(4)
    means = rng.standard_normal((90, 3)).astype(np.float32)
    labels = rng.integers(0, 3, 90)
    lower, upper = E.mixture_conditional_entropy_bounds(means, labels, 0.6)
    want = np.zeros(2)
    for c in range(3):
        want += np.mean(labels == c) * np.array(reference_bounds(means[labels == c], 0.6))
    np.testing.assert_allclose([float(lower), float(upper)], want, rtol=1e-5, atol=2e-4)
    # Conditioning cannot raise the upper bound above H's range of the class sizes.
    assert float(upper) <= float(E.mixture_entropy_bounds(means, 0.6)[1]) + 1e-5


def test_one_device_and_four_devices_agree():
    assert jax.device_count() == 4
    means = np.random.default_rng(5).standard_normal((301, 7)).astype(np.float32)
    one = E.mixture_entropy_bounds(means, 0.3, devices=jax.devices()[:1], block_size=32)
    four = E.mixture_entropy_bounds(means, 0.3, devices=jax.devices(), block_size=16)
    np.testing.assert_allclose(np.asarray(one), np.asarray(four), rtol=1e-6, atol=1e-5)


@pytest.mark.parametrize("kwargs, error, message", [
    (dict(means=np.zeros(5, np.float32), noise_std=1.0), ValueError, "means must be a 2-D"),
    (dict(means=np.zeros((5, 2), np.int32), noise_std=1.0), TypeError, "means must have a floating dtype"),
    (dict(means=np.zeros((5, 2), np.float32), noise_std=0.0), ValueError, "noise_std must be a positive"),
    (dict(means=np.full((5, 2), np.nan, np.float32), noise_std=1.0), ValueError, "means must be finite"),
])
def test_bad_arguments_name_the_argument(kwargs, error, message):
    with pytest.raises(error, match=message):
        E.mixture_entropy_bounds(**kwargs)
    with pytest.raises(ValueError, match="labels must be 1-D"):
        E.mixture_conditional_entropy_bounds(np.zeros((5, 2), np.float32), np.zeros(4, np.int32), 1.0)


def test_analysis_uses_the_mixture_bounds_for_noisy_latents_and_records_the_estimator(tmp_path):
    from pathlib import Path

    from ibjax import analysis, train
    from ibjax import config as configlib

    config = configlib.from_file(Path(__file__).resolve().parents[1] / "configs" / "digits_condvar.py")
    config.train.num_epochs = 1
    config.train.progress_bar = False
    train.train_and_evaluate(config, tmp_path / "run")
    (mixture,) = analysis.analyze_run(tmp_path / "run", progress=False, max_examples=400)
    assert mixture["h_z_estimator"].startswith("mixture")
    assert mixture["h_z_given_x"] == 0.0
    assert 0.0 <= mixture["preserved_information"] <= math.log(400) + 1e-4
    assert mixture["h_z_lower"] <= mixture["h_z"] + 1e-5
    assert mixture["h_z_given_y_lower"] <= mixture["h_z_given_y"] + 1e-5
    assert mixture["flags"] == []
    with pytest.raises(ValueError, match=r"`estimator` must be one of \('mixture', 'knn'\)"):
        analysis.analyze_run(tmp_path / "run", estimator="kde")
    (tmp_path / "run" / "information_plane.jsonl").unlink()
    (knn,) = analysis.analyze_run(tmp_path / "run", progress=False, max_examples=400, estimator="knn")
    assert knn["h_z_estimator"].startswith("knn")


@pytest.mark.parametrize("changes, expected", [
    ({}, []),
    ({"preserved_information": 8.0}, ["I[X;Z] > log N"]),
    ({"i_y_z": -0.2, "residual_information": 2.5}, ["I[Y;Z] < 0", "Residual Information 2.500 outside"]),
    ({"residual_information": -0.1}, ["Residual Information -0.100 outside"]),
    ({"preserved_information": None}, []),
])
def test_impossible_values_are_flagged_with_their_cause(changes, expected):
    from ibjax import analysis

    record = dict({"preserved_information": 3.0, "i_y_z": 1.0, "residual_information": 1.3, "h_y": 2.3}, **changes)
    flags = analysis.impossible_value_flags(record, num_examples=1000)  # log N = 6.9
    assert len(flags) == len(expected)
    for flag, start in zip(flags, expected):
        assert flag.startswith(start) and ":" in flag


def test_flagged_records_are_crossed_out_in_the_information_plane(tmp_path):
    import json

    from matplotlib import colors as mcolors

    from ibjax import plotting

    run_dir = tmp_path / "run"
    run_dir.mkdir()
    config = {"objective": {"regularizer": "l2", "gamma": 0.1}, "data": {"name": "digits"}}
    (run_dir / "config.json").write_text(json.dumps(config))
    (run_dir / "metrics.jsonl").write_text(json.dumps({"epoch": 1, "train_decoder_cross_entropy": 1.0}) + "\n")
    records = [{"epoch": e, "preserved_information": p, "residual_information": 0.5, "gamma": 0.1,
                "regularizer": "l2", "flags": flags, "h_z": 1.0, "h_z_given_y": 0.5, "h_y": 2.3}
               for e, p, flags in ((1, 2.0, []), (2, 9.0, ["I[X;Z] > log N = 7.3: biased"]))]
    (run_dir / "information_plane.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    fig = plotting.plot_information_plane([plotting.load_run(run_dir)])
    crosses = [c for ax in fig.axes for c in ax.collections
               if c.get_label() == plotting.FLAGGED_LABEL]
    assert len(crosses) == 1
    np.testing.assert_allclose(crosses[0].get_offsets(), [[9.0, 0.5]])
    assert tuple(crosses[0].get_edgecolor()[0]) == mcolors.to_rgba(plotting.FLAGGED_COLOR) or \
        tuple(crosses[0].get_facecolor()[0]) == mcolors.to_rgba(plotting.FLAGGED_COLOR)


def _draws_with_outcomes(outcomes_per_example, num_draws, dim=6, seed=0):
    """[S, N, K] draws where example n's mask picks one of its outcomes uniformly (far apart)."""
    rng = np.random.default_rng(seed)
    n = len(outcomes_per_example)
    centres = [100.0 * rng.standard_normal((m, dim)) for m in outcomes_per_example]
    picks = [rng.integers(0, m, num_draws) for m in outcomes_per_example]
    return np.stack([np.stack([centres[i][picks[i][s]] for i in range(n)]) for s in range(num_draws)])


def test_dropout_h_z_given_x_on_noise_alone_is_zero():
    from ibjax import analysis

    # Masks that do not move the latent: Z|X=x is the zero-entropy noise alone, H[Z|X] = 0.
    draws = np.repeat(np.random.default_rng(1).standard_normal((1, 50, 6)), 8, axis=0)
    q = analysis.dropout_quantities(draws, np.arange(50) % 5, 5, ZERO_ENTROPY_STD)
    assert abs(q["h_z_given_x"]) < 1e-9 and abs(q["h_z_given_x_lower"]) < 1e-9
    assert q["h_z_given_x_method"].startswith("bounded")
    # H[Z] counts each example once per draw: the N·S mixture of 50 distinct means, log 50 at most.
    assert 0.0 <= q["preserved_information"] <= math.log(50) + 1e-4


def test_dropout_h_z_given_x_bias_on_known_mask_distributions():
    from ibjax import analysis

    # Two far-apart outcomes, each drawn once: H[Z|X] = log 2, both bounds.
    base = np.random.default_rng(2).standard_normal((40, 6))
    distinct = np.stack([base, base + 500.0])
    q = analysis.dropout_quantities(distinct, np.zeros(40, np.int64), 1, ZERO_ENTROPY_STD)
    assert q["h_z_given_x"] == pytest.approx(math.log(2), abs=1e-6)
    assert q["h_z_given_x_lower"] == pytest.approx(math.log(2), abs=1e-6)
    # Four equally likely outcomes seen through S = 8 sampled masks: the estimate is the entropy of the
    # empirical outcome frequencies, biased low. Its expectation, by exact enumeration of the multinomial,
    # is the stated bias; the mean over 400 examples must match it.
    from itertools import product
    expected = 0.0
    for counts in product(range(9), repeat=4):
        if sum(counts) != 8:
            continue
        p = math.factorial(8) / np.prod([math.factorial(c) for c in counts]) / 4**8
        freqs = np.array([c for c in counts if c]) / 8
        expected += p * -np.sum(freqs * np.log(freqs))
    bias = math.log(4) - expected
    draws = _draws_with_outcomes([4] * 400, 8, seed=3)
    q = analysis.dropout_quantities(draws, np.zeros(400, np.int64), 1, ZERO_ENTROPY_STD)
    assert 0.2 < bias < 0.25  # log 4 = 1.386 against an expected 1.165: S = 8 draws under-count the masks
    assert q["h_z_given_x"] == pytest.approx(math.log(4) - bias, abs=0.03)


def test_dropout_without_noise_reports_undefined_not_finite():
    from ibjax import analysis

    q = analysis.dropout_quantities(_draws_with_outcomes([3] * 10, 4), np.arange(10) % 2, 2, None)
    for key in ("h_z", "h_z_given_y", "h_z_given_x", "preserved_information", "i_y_z", "residual_information"):
        assert q[key] is None, key
    assert "undefined" in q["h_z_given_x_method"] and "-inf" in q["h_z_given_x_method"]
    assert analysis.impossible_value_flags(q, 10) == []


@pytest.mark.slow
def test_analysis_of_a_dropout_run_uses_one_latent_for_every_quantity(tmp_path):
    from pathlib import Path

    from ibjax import analysis, train
    from ibjax import config as configlib

    config = configlib.from_file(Path(__file__).resolve().parents[1] / "configs" / "digits_condvar.py")
    config.model.encoder = "dropout_cnn"
    config.model.latent_dim = 16
    config.objective.regularizer = "none"
    config.train.num_epochs = 1
    config.train.progress_bar = False
    train.train_and_evaluate(config, tmp_path / "run")
    (record,) = analysis.analyze_run(tmp_path / "run", progress=False, max_examples=200)
    assert record["h_z_given_x_method"].startswith("bounded") and record["num_dropout_draws"] == 8
    # Every quantity of the same mixture over N·S draws: I[X;Z] ≤ log(N·S) and I[X;Z] ≥ 0 up to the bounds' gap.
    assert record["h_z_given_x_lower"] <= record["h_z_given_x"] + 1e-6
    assert record["preserved_information"] <= math.log(200 * 8) + 1e-4
    assert record["h_z_lower"] <= record["h_z"] + 1e-5


def reference_diagonal_upper_bound(means, scales):
    """float64 NumPy: mean_i H(p_i) − mean_i log mean_j exp(−KL(p_i ‖ p_j)), diagonal Gaussians."""
    m, v = np.asarray(means, np.float64), np.asarray(scales, np.float64) ** 2
    n, d = m.shape
    kl = 0.5 * np.sum(v[:, None, :] / v[None, :, :] + (m[:, None, :] - m[None, :, :]) ** 2 / v[None, :, :]
                      - 1.0 + np.log(v[None, :, :]) - np.log(v[:, None, :]), axis=-1)
    h = np.mean(0.5 * np.sum(np.log(2 * np.pi * np.e * v), axis=1))
    return h - np.mean(logsumexp(-kl, axis=1) - math.log(n))


def test_diagonal_upper_bound_matches_float64_and_the_isotropic_case():
    rng = np.random.default_rng(7)
    means = 2.0 * rng.standard_normal((60, 5))
    scales = np.exp(0.5 * rng.standard_normal((60, 5)))
    got = float(E.gaussian_mixture_entropy_upper_bound(means, scales, block_size=16))
    assert got == pytest.approx(reference_diagonal_upper_bound(means, scales), rel=1e-5, abs=2e-4)
    # Equal scales: the isotropic KL bound.
    equal = float(E.gaussian_mixture_entropy_upper_bound(means, np.full_like(means, 0.6)))
    assert equal == pytest.approx(float(E.mixture_entropy_bounds(means.astype(np.float32), 0.6)[1]), abs=2e-4)


def test_diagonal_upper_bound_brackets_monte_carlo_from_above_and_log_n():
    rng = np.random.default_rng(8)
    n, d = 30, 2
    means = 1.5 * rng.standard_normal((n, d))
    scales = np.exp(0.4 * rng.standard_normal((n, d)))
    samples = 100_000
    pick = rng.integers(0, n, samples)
    z = means[pick] + scales[pick] * rng.standard_normal((samples, d))
    log_comp = (-0.5 * np.sum(((z[:, None, :] - means[None]) / scales[None]) ** 2, axis=-1)
                - np.sum(np.log(scales), axis=1)[None] - 0.5 * d * math.log(2 * math.pi))
    log_p = logsumexp(log_comp, axis=1) - math.log(n)
    h, se = -np.mean(log_p), np.std(log_p) / math.sqrt(samples)
    upper = float(E.gaussian_mixture_entropy_upper_bound(means, scales))
    h_given_x = np.mean(0.5 * np.sum(np.log(2 * np.pi * np.e * scales**2), axis=1))
    assert h - 4 * se <= upper <= h_given_x + math.log(n) + 1e-5
    with pytest.raises(ValueError, match="scales finite and > 0"):
        E.gaussian_mixture_entropy_upper_bound(means, -scales)


def test_vib_analysis_uses_the_diagonal_mixture_bound():
    from ibjax import analysis

    rng = np.random.default_rng(9)
    means = 5.0 * rng.standard_normal((120, 4))
    scales = np.full((120, 4), 0.3)
    labels = np.arange(120) % 3
    q = analysis.vib_mixture_quantities(means, scales, labels, 3)
    assert q["h_z_estimator"].startswith("mixture") and "exact" in q["h_z_given_x_method"]
    assert 0.0 <= q["preserved_information"] <= math.log(120) + 1e-4
    assert analysis.impossible_value_flags(q, 120) == []


def test_analysis_of_a_vib_run_bounds_preserved_information_by_log_n(tmp_path):
    from pathlib import Path

    from ibjax import analysis, train
    from ibjax import config as configlib

    config = configlib.from_file(Path(__file__).resolve().parents[1] / "configs" / "digits_vib.py")
    config.train.num_epochs = 1
    config.train.progress_bar = False
    train.train_and_evaluate(config, tmp_path / "run")
    (record,) = analysis.analyze_run(tmp_path / "run", progress=False, max_examples=300)
    assert record["h_z_estimator"].startswith("mixture")
    assert 0.0 <= record["preserved_information"] <= math.log(300) + 1e-4
    assert record["flags"] == [] or all(not f.startswith("I[X;Z]") for f in record["flags"])
