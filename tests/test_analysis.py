"""Tests of the information-plane analysis, scripts/analyze.py and scripts/plot.py."""

import json
import math
import shutil
import subprocess
import sys
from pathlib import Path

import matplotlib.image
import numpy as np
import pytest

from ibjax import analysis, train
from ibjax import config as configlib

ROOT = Path(__file__).resolve().parents[1]


def test_categorical_quantities_match_numpy_reference():
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(60, 5)) * 2
    z_probs = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    labels = rng.integers(0, 3, size=60)
    q = analysis.categorical_quantities(z_probs.astype(np.float32), labels.astype(np.int32), 3)

    joint = np.zeros((5, 3))
    for b in range(60):
        joint[:, labels[b]] += z_probs[b] / 60

    def h(p):
        p = p[p > 0]
        return -np.sum(p * np.log(p))

    h_z, h_y, h_zy = h(joint.sum(1)), h(joint.sum(0)), h(joint.ravel())
    h_z_given_x = np.mean([h(row) for row in z_probs])
    assert q["h_z"] == pytest.approx(h_z, rel=1e-5)
    assert q["h_y"] == pytest.approx(h_y, rel=1e-5)
    assert q["h_z_given_y"] == pytest.approx(h_zy - h_y, rel=1e-5)
    assert q["h_z_given_x"] == pytest.approx(h_z_given_x, rel=1e-5)
    assert q["preserved_information"] == pytest.approx(h_z - h_z_given_x, rel=1e-4)
    assert q["decoder_uncertainty"] == pytest.approx(h_zy - h_z, rel=1e-4)
    assert q["residual_information"] == q["decoder_uncertainty"]
    # eq. 12: H[Z] = H[Z|X] + I[Y;Z] + I[X;Z|Y].
    assert q["h_z"] == pytest.approx(q["h_z_given_x"] + q["i_y_z"] + q["redundant_information"], rel=1e-5)


def test_categorical_hand_checked_copy_of_labels():
    # Z copies Y deterministically: H[Z|X] = 0, I[Y;Z] = H[Y] = log 2, H[Y|Z] = 0.
    z_probs = np.array([[1.0, 0.0], [0.0, 1.0], [1.0, 0.0], [0.0, 1.0]], np.float32)
    q = analysis.categorical_quantities(z_probs, np.array([0, 1, 0, 1], np.int32), 2)
    assert q["i_y_z"] == pytest.approx(math.log(2), rel=1e-6)
    assert q["decoder_uncertainty"] == pytest.approx(0.0, abs=1e-6)
    assert q["h_z_given_x"] == pytest.approx(0.0, abs=1e-7)


def test_continuous_quantities_on_gaussian_with_known_answer():
    # Z = Y-dependent mean + unit Gaussian in d = 2: H[Z|Y] = log(2 pi e) exactly.
    rng = np.random.default_rng(1)
    labels = rng.integers(0, 2, size=4000).astype(np.int32)
    z = (rng.normal(size=(4000, 2)) + 50.0 * labels[:, None]).astype(np.float32)
    q = analysis.continuous_quantities(z, labels, 2, h_z_given_x=0.0, h_z_given_x_method="exact_zero")
    assert q["h_z_given_y"] == pytest.approx(math.log(2 * math.pi * math.e), abs=0.05)
    # Well-separated classes: I[Y;Z] ~ H[Y] ~ log 2 and H[Y|Z] ~ 0.
    assert q["i_y_z"] == pytest.approx(q["h_y"], abs=0.05)
    assert q["residual_information"] == pytest.approx(q["h_y"] - q["i_y_z"], abs=1e-9)
    assert q["preserved_information"] == q["h_z"]
    undefined = analysis.continuous_quantities(z, labels, 2, h_z_given_x=None, h_z_given_x_method="undefined")
    assert undefined["preserved_information"] is None and "undefined" in undefined["h_z_given_x_method"]


def _train(workdir, gamma, epochs=3):
    config = configlib.from_file(ROOT / "configs" / "digits_condvar.py")
    config.train.num_epochs = epochs
    config.train.progress_bar = False
    config.objective.gamma = gamma
    train.train_and_evaluate(config, workdir)


def test_analyze_and_plot_a_gamma_sweep(tmp_path):
    sweep = tmp_path / "sweep"
    for gamma in (0.001, 0.1):
        _train(sweep / f"gamma{gamma}", gamma)
    result = subprocess.run([sys.executable, str(ROOT / "scripts" / "analyze.py"), "--workdir", str(sweep)],
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-2000:]
    for gamma in (0.001, 0.1):
        records = [json.loads(l) for l in (sweep / f"gamma{gamma}" / "information_plane.jsonl").read_text().splitlines()]
        assert [r["epoch"] for r in records] == [1, 2, 3]
        for r in records:
            assert r["gamma"] == gamma and r["regularizer"] == "cond_log_var"
            assert r["h_z_given_x"] == 0.0 and "exact" in r["h_z_given_x_method"]
            assert r["i_y_z"] == pytest.approx(r["h_z"] - r["h_z_given_y"])
            assert all(np.isfinite(r[k]) for k in ("h_z", "h_z_given_y", "preserved_information", "residual_information"))
    out = tmp_path / "figures"
    result = subprocess.run([sys.executable, str(ROOT / "scripts" / "plot.py"), "--workdir", str(sweep),
                             "--figure", "information_plane", "--out", str(out)],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    png = next(out.glob("information_plane*.png"))
    assert matplotlib.image.imread(png).shape[0] > 200
    assert next(out.glob("information_plane*.pdf")).stat().st_size > 0


def test_analyze_run_is_incremental_and_skips_unfinished_checkpoints(tmp_path):
    run = tmp_path / "run"
    _train(run, 0.01, epochs=2)
    # A checkpoint still being written lives in an Orbax temporary directory.
    shutil.copytree(run / "checkpoints" / "2", run / "checkpoints" / "3.orbax-checkpoint-tmp-1234")
    first = analysis.analyze_run(run, progress=False)
    assert [r["epoch"] for r in first] == [1, 2]
    assert analysis.analyze_run(run, progress=False) == []
    lines = (run / "information_plane.jsonl").read_text().splitlines()
    assert len(lines) == 2


def test_analyze_rejects_a_directory_that_is_not_a_run(tmp_path):
    with pytest.raises(FileNotFoundError, match="config.json"):
        analysis.analyze_run(tmp_path)


# ------------------------------------------------------------------ section 7.1: code usage of a categorical Z


def test_categorical_code_usage_hand_checked_case():
    # Four examples of classes 0, 1, 2, 2, each sent wholly to one category: x0 -> z0, x1, x2, x3 -> z1.
    # z0 holds class 0; z1 holds classes 1, 2, 2 (majority 2), so class 1 is merged; z2 and z3 are empty.
    z_probs = np.eye(4)[[0, 1, 1, 1]]
    labels = np.array([0, 1, 2, 2])
    q = np.array([[0.8, 0.1, 0.1], [0.1, 0.3, 0.6], [0.2, 0.5, 0.3], [0.4, 0.2, 0.4]])
    usage = analysis.categorical_code_usage(z_probs, labels, np.log(q), 3)
    assert usage["classes_apart"] == 2
    assert usage["best_accuracy"] == pytest.approx(0.25 + 0.5)
    assert usage["effective_categories"] == pytest.approx(math.exp(-(0.25 * math.log(0.25) + 0.75 * math.log(0.75))))
    assert usage["merged_fraction"] == pytest.approx(0.25)
    assert usage["merged_cross_entropy"] == pytest.approx(-math.log(0.3))   # x1 pays −log q(1|z1)
    assert usage["cheapest_move"] == pytest.approx(-math.log(0.5))          # z2 is its cheapest empty category


def test_categorical_code_usage_matches_a_float64_loop_reference():
    rng = np.random.default_rng(3)
    n, c, k = 300, 12, 4
    logits = rng.normal(size=(n, c)) * 3
    logits[:, 8:] -= 40                                                   # categories 8-11 (nearly) empty
    z_probs = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    labels = rng.integers(0, k, size=n)
    dec = rng.normal(size=(c, k))
    dec_log = dec - np.log(np.exp(dec).sum(axis=1, keepdims=True))
    usage = analysis.categorical_code_usage(z_probs.astype(np.float32), labels, dec_log, k)

    joint = np.zeros((c, k))
    for i in range(n):
        for z in range(c):
            joint[z, labels[i]] += z_probs[i, z] / n
    p_z = joint.sum(axis=1)
    used = [z for z in range(c) if p_z[z] >= 0.005]
    apart = {int(np.argmax(joint[z])) for z in used}
    merged = [i for i in range(n) if labels[i] not in apart]
    assert usage["classes_apart"] == len(apart)
    assert usage["best_accuracy"] == pytest.approx(sum(joint[z].max() for z in range(c)), rel=1e-6)
    assert usage["effective_categories"] == pytest.approx(
        math.exp(-sum(p * math.log(p) for p in p_z if p > 0)), rel=1e-6)
    assert usage["merged_fraction"] == pytest.approx(len(merged) / n)
    assert 0 < len(merged) < n   # this draw leaves one of the 4 classes merged
    pays = [sum(z_probs[i, z] * -dec_log[z, labels[i]] for z in range(c)) for i in merged]
    moves = [min(-dec_log[z, labels[i]] for z in range(c) if z not in used) for i in merged]
    assert usage["merged_cross_entropy"] == pytest.approx(np.median(pays), rel=1e-6)
    assert usage["cheapest_move"] == pytest.approx(np.median(moves), rel=1e-6)
    # Every class apart: nothing is merged, and the two medians are NaN.
    alone = analysis.categorical_code_usage(np.eye(c)[labels], labels, dec_log, k)
    assert alone["classes_apart"] == k and alone["merged_fraction"] == 0.0
    assert math.isnan(alone["merged_cross_entropy"]) and math.isnan(alone["cheapest_move"])


def test_categorical_code_usage_rejects_mismatched_shapes():
    with pytest.raises(ValueError, match="decoder_log_probs"):
        analysis.categorical_code_usage(np.full((2, 3), 1 / 3), np.array([0, 1]), np.zeros((4, 2)), 2)
    with pytest.raises(ValueError, match="min_mass"):
        analysis.categorical_code_usage(np.full((2, 3), 1 / 3), np.array([0, 1]), np.zeros((3, 2)), 2, min_mass=1.5)
