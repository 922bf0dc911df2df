"""Tests of benchmarks/accelerator.py: its estimator references (benchmarks/knn_reference.py), its command line, and a --small run end to end."""

import math
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from scipy.spatial import cKDTree

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks import accelerator as acc  # noqa: E402
from benchmarks import knn_reference as ref  # noqa: E402
from ibjax import estimators  # noqa: E402

# ------------------------------------------------------- estimator references


def _data(n=600, d=4, seed=0):
    z = ref.gaussian_pairs(n, d, seed=seed)
    labels = np.random.default_rng(seed + 1).integers(0, 3, n).astype(np.int32)
    return z, labels


def test_kl_formula_on_exact_distances_matches_knn_entropy():
    # Formula level, no PyTorch: float64 cKDTree k-th-neighbour distances through the benchmark's formula.
    z, _ = _data()
    kth = cKDTree(z.astype(np.float64)).query(z.astype(np.float64), ref.K + 1)[0][:, ref.K]
    expected = float(estimators.knn_entropy(z, ref.K))
    assert ref.kl_entropy_from_distances(kth, z.shape[1], ref.K) == pytest.approx(expected, rel=1e-4)
    # and the estimate is near the analytic entropy of the paired Gaussian
    assert expected == pytest.approx(ref.analytic_entropy(z.shape[1]), abs=0.3)


def test_ksg_formula_on_exact_counts_matches_ksg_mutual_information():
    z, _ = _data()
    x, y = z[:, :2].astype(np.float64), z[:, 2:].astype(np.float64)
    joint = np.hstack([x, y])
    eps = cKDTree(joint).query(joint, ref.K + 1, p=np.inf)[0][:, ref.K]
    radius = np.nextafter(eps, 0)
    n_x = cKDTree(x).query_ball_point(x, radius, p=np.inf, return_length=True) - 1
    n_y = cKDTree(y).query_ball_point(y, radius, p=np.inf, return_length=True) - 1
    expected = float(estimators.ksg_mutual_information(z[:, :2], z[:, 2:], ref.K))
    assert ref.ksg_from_counts(n_x, n_y, ref.K) == pytest.approx(expected, rel=1e-4)


def test_sklearn_references_match_ibjax():
    pytest.importorskip("sklearn")
    z, labels = _data()
    assert ref.sklearn_knn_entropy(z) == pytest.approx(float(estimators.knn_entropy(z, ref.K)), rel=1e-4)
    assert ref.conditional_from_classes(ref.sklearn_knn_entropy, z, labels) == pytest.approx(
        float(estimators.knn_conditional_entropy(z, labels, ref.K)), rel=1e-4)
    assert ref.sklearn_ksg(z[:, :2], z[:, 2:]) == pytest.approx(
        float(estimators.ksg_mutual_information(z[:, :2], z[:, 2:], ref.K)), rel=1e-4)


def test_torch_brute_force_references_match_ibjax():
    pytest.importorskip("torch")
    z, labels = _data()
    # Blocks smaller than N, so the self-exclusion of every block is exercised.
    kth = ref.torch_kth_distances(z, ref.K, "cpu", block=256)
    assert ref.kl_entropy_from_distances(kth, z.shape[1], ref.K) == pytest.approx(
        float(estimators.knn_entropy(z, ref.K)), rel=1e-4)
    assert ref.conditional_from_classes(lambda p: ref.torch_knn_entropy(p, ref.K), z, labels) == pytest.approx(
        float(estimators.knn_conditional_entropy(z, labels, ref.K)), rel=1e-4)
    n_x, n_y = ref.torch_ksg_counts(z[:, :2], z[:, 2:], ref.K, "cpu", block=256)
    assert ref.ksg_from_counts(n_x, n_y, ref.K) == pytest.approx(
        float(estimators.ksg_mutual_information(z[:, :2], z[:, 2:], ref.K)), rel=1e-4)


def _context(**overrides):
    fields = dict(small=False, repeats=3, min_repeat_seconds=0.1, num_images=256, epoch_images=256, epoch_batch=32,
                  sklearn_max_s=60.0, torch_device=None, torch_note="n/a: --no_torch", torch_compile=False,
                  compile_note="n/a: --no_torch", start=0.0, budget_s=100.0)
    return acc.Context(**{**fields, **overrides})


def test_sklearn_reference_projects_its_time_and_skips_what_would_not_fit():
    calls = []

    def reference(z, labels):
        calls.append(len(z))
        return 1.5

    z, labels = np.zeros((200_000, 2), np.float32), np.zeros(200_000, np.int32)
    ctx = _context(sklearn_seconds={"knn_entropy": (50_000, 5.0)})  # 16 × 5 s = 80 s > 60 s
    seconds, value, note = acc._sklearn_reference(ctx, "knn_entropy", z, labels, reference)
    assert (seconds, value, calls) == (None, None, []) and "est. 80 s > 60 s" in note
    # No earlier size: a 5,000-point subsample is timed first; fast enough, so the whole is run and repeated.
    seconds, value, note = acc._sklearn_reference(ctx, "ksg", z[:30_000], labels[:30_000], reference)
    assert value == 1.5 and note == "" and calls == [5_000, 30_000, 30_000, 30_000]
    assert ctx.sklearn_seconds["ksg"][0] == 30_000


def test_targets_table_marks_each_target():
    ctx = _context(deadline=float("inf"))
    ctx.target("knn_entropy", "knn_entropy_n50000_d100", "12.0 ms", True)
    ctx.target("resnet18_torch", "resnet18_b512_bf16", "1.70×", True)
    ctx.target("resnet18_torch", "resnet18_b1024_bf16", "1.20×", False)
    ctx.target("resnet18_mfu", "resnet18_b512_bf16", "n/a", None)
    text = acc.render(ctx, "python benchmarks/accelerator.py", [], {}, 1.0)
    rows = _table_rows(text)
    assert rows[acc.TARGETS["knn_entropy"]]["status"] == "met"
    assert rows[acc.TARGETS["resnet18_torch"]]["status"] == "not met"
    assert rows[acc.TARGETS["resnet18_mfu"]]["status"] == "n/a"
    assert rows[acc.TARGETS["epoch"]]["status"].startswith("n/a (not measured")
    assert "Estimator agreement check: passed." in text


# ------------------------------------------------------------- command line


def test_unknown_row_is_refused_with_the_valid_rows(capsys):
    with pytest.raises(SystemExit) as exit_info:
        acc.parse_args(["--rows", "resnet18,bogus"])
    assert exit_info.value.code == 2
    message = capsys.readouterr().err
    assert "'bogus'" in message
    assert all(name in message for name in acc.FAMILIES)


def test_rows_run_in_the_family_order_and_small_defaults():
    args = acc.parse_args(["--small", "--rows", "epoch,mlp"])
    assert args.rows == ["mlp", "epoch"]
    assert (args.repeats, args.budget_s, args.epoch_images, args.epoch_batch) == (3, 150.0, 256, 32)
    full = acc.parse_args([])
    assert full.rows == list(acc.FAMILIES) and (full.repeats, full.budget_s) == (5, 420.0)


# ------------------------------------------------------------ end to end

#: Row-name prefixes of every family's rows.
FAMILY_ROWS = ("resnet18_b", "mlp_b", "dropout_cnn_b", "population_mlp", "population_resnet18", "knn_entropy",
               "knn_conditional_entropy", "ksg_mutual_information", "epoch_overhead")

def _table_rows(text: str) -> dict[str, dict[str, str]]:
    """Every table row of the report as {row name: {column: cell}}."""
    rows, columns = {}, None
    for line in text.splitlines():
        if not line.startswith("|"):
            columns = None
            continue
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if columns is None:
            columns = cells
        elif not set(line) <= set("|-: "):
            rows[cells[0]] = dict(zip(columns, cells))
    return rows


def _number(cell: str) -> float:
    match = re.match(r"\*{0,2}(-?[\d,]+(?:\.\d+)?)", cell)
    assert match, f"not a number: {cell!r}"
    return float(match.group(1).replace(",", ""))


@pytest.mark.slow
def test_small_run_measures_every_row(tmp_path):
    env = dict(os.environ, XLA_FLAGS="", JAX_PLATFORMS="cpu")
    # A budget above the default 150 s, so that a loaded machine still starts every row.
    command = [sys.executable, str(ROOT / "benchmarks" / "accelerator.py"), "--small", "--no_torch",
               "--out", str(tmp_path), "--budget_s", "270"]
    result = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    table_file = tmp_path / "accelerator.md"
    assert table_file.exists(), result.stderr[-3000:]
    text = table_file.read_text()
    assert result.stdout.strip().endswith(text.strip().splitlines()[-1])  # the table went to stdout too
    rows = _table_rows(text)
    for prefix in FAMILY_ROWS:
        family = {name: cells for name, cells in rows.items() if name.startswith(prefix)}
        assert family, f"no {prefix} row in\n{text}"
        for name, cells in family.items():
            notes = cells.get("notes", "")
            assert "skipped" not in notes and "error" not in notes, f"{name}: {notes}"
            if prefix in ("resnet18_b", "mlp_b", "dropout_cnn_b"):
                assert _number(cells["ibjax ex/s"]) > 0 and _number(cells["ms/step"]) > 0
                assert _number(cells["TFLOP/s"]) > 0 and cells["MFU"].startswith("n/a")
                assert cells["ibjax / faster torch"].startswith("n/a")  # PyTorch's ratio, under --no_torch
            elif prefix.startswith("population"):
                assert _number(cells["vmapped ex/s (all members)"]) > 0 and _number(cells["sequential ex/s"]) > 0
                assert _number(cells["vmapped / sequential"]) > 0
            elif prefix == "epoch_overhead":
                assert _number(cells["step ms"]) > 0 and _number(cells["epoch 2 s"]) > 0
                assert 0.5 < _number(cells["overhead ratio"]) < 20
            else:
                assert _number(cells["ibjax ms"]) > 0 and _number(cells["sklearn / ibjax"]) > 0
                assert cells["agreement"].startswith("agree ("), cells["agreement"]
                ibjax_value, _, sklearn_value = cells[
                    "estimates, nats (ibjax / torch / sklearn; analytic)"].split(";")[0].split(" / ")
                assert math.isclose(float(ibjax_value), float(sklearn_value), rel_tol=1e-3)
    assert "DISAGREE" not in text
    assert "Estimator agreement check: passed." in text
    assert result.returncode == 0, result.stderr[-3000:]
