"""Tests for ibjax.plotting and scripts/plot.py on small synthetic run folders."""

import json
import math
import pathlib
import subprocess
import sys

import matplotlib
import numpy as np
import pytest
from matplotlib import colors as mcolors
from matplotlib import image as mimage

from ibjax import plotting
from ibjax.io import find_run_dirs, read_jsonl

REPO = pathlib.Path(__file__).resolve().parents[1]
H_Y = math.log(10.0)
EPOCHS = 6
GAMMAS = (1e-3, 1e-2, 1e-1, 1.0)
SEEDS = (0, 1)
REGULARIZERS = ("l2", "log_var", "cond_log_var")


def _write_jsonl(path, records):
    path.write_text("".join(json.dumps(r) + "\n" for r in records))


def _config(regularizer, gamma, seed, *, data="cifar10", loss="cross_entropy", cross_entropy="decoder"):
    return {
        "seed": seed,
        "data": {"name": data},
        "model": {"noise": True},
        "objective": {"gamma": gamma, "regularizer": regularizer, "cross_entropy": cross_entropy, "loss": loss},
    }


def _information_plane(regularizer, gamma, seed):
    """An expansion-then-compression trajectory that ends lower in I[X;Z] for larger γ."""
    rng = np.random.default_rng(seed)
    records = []
    strength = {"none": 0.0, "l2": 30.0, "log_var": 10.0, "cond_log_var": 5.0}[regularizer]
    final = 1.0 + 3.5 / (1.0 + strength * gamma)
    for epoch in range(EPOCHS):
        progress = epoch / (EPOCHS - 1)
        preserved = final * progress + 1.5 * math.sin(math.pi * progress) + 0.05 * rng.standard_normal()
        residual = max(H_Y - preserved, 0.0) + 0.4 * (1.0 - progress) + 0.02 * abs(rng.standard_normal())
        h_z = 2.0 * preserved + 0.3 * seed
        records.append(
            {
                "epoch": epoch,
                "gamma": gamma,
                "regularizer": regularizer,
                "h_z": h_z,
                "h_z_given_y": h_z - 0.8,
                "h_z_given_x": 0.0,
                "h_z_given_x_method": "zero_entropy_noise",
                "i_y_z": H_Y - residual,
                "preserved_information": preserved,
                "h_y": H_Y,
                "decoder_uncertainty": residual,
                "residual_information": residual,
                "train_cross_entropy": residual + 0.1,
                "train_accuracy": 0.9,
                "test_accuracy": 0.8,
            }
        )
    return records


def _metrics(seed, *, categorical, time_scale=2.0):
    rng = np.random.default_rng(100 + seed)
    records = []
    for epoch in range(EPOCHS):
        decoder_ce = 2.3 * math.exp(-epoch / time_scale) + 0.1 + 0.2 * rng.random()
        record = {
            "epoch": epoch,
            "step": 10 * (epoch + 1),
            "train_accuracy": 0.5,
            "test_accuracy": 1.0 - decoder_ce / 3.0,
            "train_loss": decoder_ce,
            "train_decoder_cross_entropy": decoder_ce,
            "train_prediction_cross_entropy": decoder_ce - 0.2 * rng.random(),
            "train_regularizer": 0.0,
            "training_error_bound": 0.5,
            "learning_rate": 1e-4,
            "examples_per_sec": 1000.0,
        }
        if categorical:
            record["train_decoder_uncertainty"] = decoder_ce - 0.1 * rng.random()
        records.append(record)
    return records


def _write_run(workdir, config, metrics, information_plane=None):
    workdir.mkdir(parents=True)
    (workdir / "config.json").write_text(json.dumps(config))
    _write_jsonl(workdir / "metrics.jsonl", metrics)
    if information_plane is not None:
        _write_jsonl(workdir / "information_plane.jsonl", information_plane)


@pytest.fixture(scope="module")
def gamma_sweep(tmp_path_factory):
    """Continuous-latent runs: three regularisers × four γ × two seeds, plus γ = 0 baselines."""
    root = tmp_path_factory.mktemp("gamma_sweep")
    for seed in SEEDS:
        for regularizer in REGULARIZERS:
            for gamma in GAMMAS:
                _write_run(
                    root / f"{regularizer}_gamma{gamma:g}" / f"seed{seed}",
                    _config(regularizer, gamma, seed),
                    _metrics(seed, categorical=False),
                    _information_plane(regularizer, gamma, seed),
                )
        _write_run(
            root / "baseline" / f"seed{seed}",
            _config("none", 0.0, seed),
            _metrics(seed, categorical=False),
            _information_plane("none", 0.0, seed),
        )
    return root


@pytest.fixture(scope="module")
def categorical_sweep(tmp_path_factory):
    """Categorical-latent runs for Fig 3: two data sets × three objectives × three trials."""
    root = tmp_path_factory.mktemp("categorical_sweep")
    objectives = {
        "decoder": {"cross_entropy": "decoder"},
        "prediction": {"cross_entropy": "prediction"},
        "uncertainty": {"loss": "decoder_uncertainty"},
    }
    for time_scale, data in enumerate(("permuted_mnist", "cifar10"), start=1):
        for name, objective in objectives.items():
            for seed in range(3):
                config = _config("none", 0.0, seed, data=data, **objective)
                metrics = _metrics(seed, categorical=True, time_scale=time_scale + len(name) / 5)
                _write_run(root / f"{data}_{name}_{seed}", config, metrics)
    return root


@pytest.fixture(scope="module")
def entropy_cap_records():
    records = []
    for seed in SEEDS:
        for cap in np.linspace(40.0, -20.0, 7):
            error_with_noise = 0.02 + 0.5 / (1.0 + math.exp(cap / 5.0)) + 0.01 * seed
            records.append({"noise": True, "entropy_cap": cap, "error_rate": error_with_noise, "seed": seed})
            records.append({"noise": False, "entropy_cap": cap, "error_rate": 0.02 + 0.001 * seed, "seed": seed})
    return records


def _load(root):
    return [plotting.load_run(d) for d in find_run_dirs([root])]


def _assert_rendered(stem: pathlib.Path):
    png, pdf = stem.with_suffix(".png"), stem.with_suffix(".pdf")
    assert png.stat().st_size > 10_000, png
    assert pdf.stat().st_size > 1_000, pdf
    assert pdf.read_bytes()[:5] == b"%PDF-"
    image = mimage.imread(png)
    height, width, channels = image.shape
    assert 300 <= height <= 4000 and 400 <= width <= 6000 and channels in (3, 4)
    assert image[..., :3].std() > 0.05  # not a blank canvas


# Readers.


def test_read_jsonl_skips_trailing_blank_line(tmp_path):
    path = tmp_path / "m.jsonl"
    path.write_text('{"epoch": 0, "x": 1.5}\n{"epoch": 1, "x": NaN}\n\n')
    records = read_jsonl(path)
    assert [r["epoch"] for r in records] == [0, 1]
    assert records[0]["x"] == 1.5 and math.isnan(records[1]["x"])


def test_read_jsonl_malformed_line_names_file_and_line(tmp_path):
    path = tmp_path / "metrics.jsonl"
    path.write_text('{"epoch": 0}\n{"epoch": 1}\n{"epoch": 2, "x": \n')
    with pytest.raises(ValueError, match=rf"{path}:3: malformed JSON line"):
        read_jsonl(path)
    path.write_text('{"epoch": 0}\n[1, 2]\n')
    with pytest.raises(ValueError, match=rf"{path}:2: expected a JSON object, got list"):
        read_jsonl(path)


def test_load_run_without_information_plane(tmp_path):
    _write_run(tmp_path / "run", _config("l2", 0.1, 0), _metrics(0, categorical=False))
    run = plotting.load_run(tmp_path / "run")
    assert run.workdir == tmp_path / "run"
    assert run.config["objective"]["gamma"] == 0.1
    assert len(run.metrics) == EPOCHS and run.information_plane == []
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="config.json"):
        plotting.load_run(tmp_path / "empty")


def test_find_run_dirs_expands_sweeps(gamma_sweep, tmp_path):
    run_dirs = find_run_dirs([gamma_sweep, gamma_sweep / "l2_gamma0.1" / "seed0"])
    assert len(run_dirs) == len(SEEDS) * (len(REGULARIZERS) * len(GAMMAS) + 1)
    assert len(set(run_dirs)) == len(run_dirs)
    with pytest.raises(ValueError, match="holds no metrics.jsonl"):
        find_run_dirs([tmp_path])
    with pytest.raises(FileNotFoundError, match="not a directory"):
        find_run_dirs([tmp_path / "missing"])


def test_supported_figures(gamma_sweep, categorical_sweep, entropy_cap_records):
    assert plotting.supported_figures(_load(gamma_sweep)) == ["information_plane", "entropies"]
    assert plotting.supported_figures(_load(categorical_sweep), entropy_cap_records) == [
        "cross_entropies",
        "entropy_cap",
    ]


def test_make_figures_rejects_unknown_name():
    with pytest.raises(ValueError, match="information_plane, entropies, cross_entropies, entropy_cap"):
        plotting.make_figures(["loss_curves"], [])


# Figures through the library.


def test_information_plane(gamma_sweep, tmp_path):
    runs = _load(gamma_sweep)
    fig = plotting.plot_information_plane(runs)
    panels, colorbars = fig.axes[: len(REGULARIZERS)], fig.axes[len(REGULARIZERS) :]
    assert len(fig.axes) == len(REGULARIZERS) + 2
    assert [ax.get_xlabel() for ax in panels] == [plotting.PRESERVED_INFORMATION_LABEL] * len(REGULARIZERS)
    assert panels[0].get_ylabel() == plotting.RESIDUAL_INFORMATION_LABEL

    epoch_bar, gamma_bar = colorbars
    assert gamma_bar.get_ylabel() == r"$\gamma$" and epoch_bar.get_ylabel() == "epoch"
    # A LogNorm colour bar has a log axis spanning exactly the γ range.
    assert gamma_bar.get_yscale() == "log" and epoch_bar.get_yscale() == "linear"
    np.testing.assert_allclose(gamma_bar.get_ylim(), (min(GAMMAS), max(GAMMAS)))
    np.testing.assert_allclose(epoch_bar.get_ylim(), (0, EPOCHS - 1))

    grey = mcolors.to_rgba("0.55")
    for ax, regularizer in zip(panels, REGULARIZERS):
        lines = ax.get_lines()
        # One trajectory per seed and γ, the γ = 0 baselines, the saturation curve.
        assert len(lines) == len(SEEDS) * len(GAMMAS) + len(SEEDS) + 1
        assert sum(mcolors.to_rgba(line.get_color()) == grey for line in lines) == len(SEEDS)
        saturation = next(line for line in lines if line.get_linestyle() == "--")
        x = np.asarray(saturation.get_xdata(), dtype=np.float64)
        np.testing.assert_allclose(saturation.get_ydata(), np.maximum(0.0, H_Y - x), atol=1e-12)
        assert x.min() == 0.0 and x.max() >= H_Y
        # Trajectories are coloured by γ: the largest γ takes the top of the colour map.
        run = next(r for r in runs if r.config["objective"] == _config(regularizer, 1.0, 0)["objective"])
        xy = [(r["preserved_information"], r["residual_information"]) for r in run.information_plane]
        line = next(line for line in lines if np.allclose(np.column_stack(line.get_data()), xy))
        assert np.allclose(mcolors.to_rgba(line.get_color()), matplotlib.colormaps["viridis"](1.0))
    legend_texts = [t.get_text() for t in panels[-1].get_legend().get_texts()]
    assert any("no regulariser" in t for t in legend_texts) and any("saturation" in t for t in legend_texts)

    plotting.save_figure(fig, tmp_path / "information_plane")
    _assert_rendered(tmp_path / "information_plane")


def test_information_plane_only_baselines_and_single_gamma(gamma_sweep, tmp_path):
    runs = _load(gamma_sweep)
    baselines = [r for r in runs if r.config["objective"]["regularizer"] == "none"]
    fig = plotting.plot_information_plane(baselines)
    assert len(fig.axes) == 2  # one panel and the epoch colour bar; no γ colour bar
    single = [r for r in runs if r.config["objective"]["gamma"] == 0.1]
    fig = plotting.plot_information_plane(single)
    gamma_bar = fig.axes[-1]
    low, high = gamma_bar.get_ylim()
    assert gamma_bar.get_ylabel() == r"$\gamma$" and gamma_bar.get_yscale() == "log" and low < 0.1 < high
    plotting.save_figure(fig, tmp_path / "single")
    _assert_rendered(tmp_path / "single")


def test_information_plane_errors(gamma_sweep, tmp_path):
    runs = _load(gamma_sweep)
    with pytest.raises(ValueError, match="none of the 1 runs has information_plane records"):
        plotting.plot_information_plane([plotting.Run(tmp_path, {}, [], [])])
    bad = plotting.Run(runs[0].workdir, _config("l3", 0.1, 0), [], runs[0].information_plane)
    with pytest.raises(ValueError, match="regularizer must be one of none, l2, log_var, cond_log_var, vib; got 'l3'"):
        plotting.plot_information_plane([bad])


def test_entropies_vs_gamma(gamma_sweep, tmp_path):
    runs = _load(gamma_sweep)
    fig = plotting.plot_entropies_vs_gamma(runs)
    # H[Z|X] is identically 0 under zero-entropy noise, so it gets no panel.
    assert len(fig.axes) == 2
    assert [ax.get_ylabel() for ax in fig.axes] == ["$H[Z]$ (nats)", "$H[Z|Y]$ (nats)"]
    assert all(ax.get_xscale() == "log" for ax in fig.axes)
    for ax, key in zip(fig.axes, ("h_z", "h_z_given_y")):
        for regularizer in REGULARIZERS:
            median_line = next(
                line for line in ax.get_lines() if line.get_label() == plotting._REGULARIZER_TITLES[regularizer]
            )
            expected = [
                np.median([_information_plane(regularizer, gamma, seed)[-1][key] for seed in SEEDS])
                for gamma in GAMMAS
            ]
            np.testing.assert_allclose(median_line.get_xdata(), GAMMAS)
            np.testing.assert_allclose(median_line.get_ydata(), expected, rtol=1e-12)
        baseline = next(line for line in ax.get_lines() if "no regulariser" in line.get_label())
        expected = np.median([_information_plane("none", 0.0, seed)[-1][key] for seed in SEEDS])
        np.testing.assert_allclose(baseline.get_ydata(), [expected, expected])
    plotting.save_figure(fig, tmp_path / "entropies")
    _assert_rendered(tmp_path / "entropies")


def test_entropies_vs_gamma_shows_nonzero_conditional_entropy(gamma_sweep):
    runs = _load(gamma_sweep)
    for run in runs:
        for record in run.information_plane:
            record["h_z_given_x"] = record["h_z"] - 2.0
    fig = plotting.plot_entropies_vs_gamma(runs)
    assert [ax.get_ylabel() for ax in fig.axes] == ["$H[Z]$ (nats)", "$H[Z|Y]$ (nats)", "$H[Z|X]$ (nats)"]


def test_cross_entropy_curves(categorical_sweep, tmp_path):
    runs = _load(categorical_sweep)
    fig = plotting.plot_cross_entropy_curves(runs)
    assert len(fig.axes) == 4 * 3
    grid = np.array(fig.axes).reshape(4, 3)
    accuracy_rows, grid = grid[1::2], grid[0::2]
    assert [ax.get_title() for ax in grid[0]] == [
        r"Training with $H_\Theta[Y|Z]$",
        r"Training with $H_\Theta[Y|X]$",
        r"Training with $H[Y|Z]$",
    ]
    assert [ax.get_ylabel() for ax in grid[:, 0]] == ["cifar10\n(nats)", "permuted_mnist\n(nats)"]
    objectives = ("decoder", "prediction", "uncertainty")
    for ax, (data, name) in zip(grid.flat, [(d, o) for d in ("cifar10", "permuted_mnist") for o in objectives]):
        trials = [run for run in runs if run.workdir.name.startswith(f"{data}_{name}_")]
        table = np.array([[r["train_decoder_uncertainty"] for r in run.metrics] for run in trials], dtype=np.float64)
        assert table.shape == (3, EPOCHS)
        low, median, high = np.percentile(table, [25, 50, 75], axis=0)
        lines = ax.get_lines()
        assert [line.get_label() for line in lines] == [label for _, label, _ in plotting._CROSS_ENTROPY_METRICS]
        np.testing.assert_allclose(lines[2].get_xdata(), np.arange(EPOCHS))
        np.testing.assert_allclose(lines[2].get_ydata(), median, rtol=1e-12)
        band = ax.collections[2].get_paths()[0].vertices
        for epoch in range(EPOCHS):
            ys = band[np.isclose(band[:, 0], epoch), 1]
            assert np.isclose(ys.min(), low[epoch]) and np.isclose(ys.max(), high[epoch])
    # Below each data set, its test accuracy: median over the trials.
    assert [ax.get_ylabel() for ax in accuracy_rows[:, 0]] == ["test accuracy", "test accuracy"]
    for ax, (data, name) in zip(accuracy_rows.flat, [(d, o) for d in ("cifar10", "permuted_mnist") for o in objectives]):
        trials = [run for run in runs if run.workdir.name.startswith(f"{data}_{name}_")]
        table = np.array([[r["test_accuracy"] for r in run.metrics] for run in trials], dtype=np.float64)
        (line,) = ax.get_lines()
        np.testing.assert_allclose(line.get_ydata(), np.median(table, axis=0), rtol=1e-12)
    plotting.save_figure(fig, tmp_path / "cross_entropies")
    _assert_rendered(tmp_path / "cross_entropies")


def test_cross_entropy_curves_rejects_unknown_objective(categorical_sweep):
    run = _load(categorical_sweep)[0]
    bad = plotting.Run(run.workdir, _config("none", 0.0, 0, cross_entropy="mutual"), run.metrics, [])
    with pytest.raises(ValueError, match="cross_entropy must be one of decoder, prediction; got 'mutual'"):
        plotting.plot_cross_entropy_curves([bad])


def test_error_vs_entropy_cap(entropy_cap_records, tmp_path):
    fig = plotting.plot_error_vs_entropy_cap(entropy_cap_records)
    (ax,) = fig.axes
    assert ax.xaxis_inverted()
    without_noise, with_noise = ax.get_lines()
    assert without_noise.get_label() == "Without noise" and with_noise.get_label() == "With zero-entropy noise"
    caps = sorted({r["entropy_cap"] for r in entropy_cap_records})
    expected = [
        np.median([r["error_rate"] for r in entropy_cap_records if r["noise"] and r["entropy_cap"] == cap])
        for cap in caps
    ]
    np.testing.assert_allclose(with_noise.get_xdata(), caps)
    np.testing.assert_allclose(with_noise.get_ydata(), expected, rtol=1e-12)
    # The story of Fig 4: as the cap tightens, only the noisy latent loses accuracy.
    assert np.ptp(without_noise.get_ydata()) < 0.01 < np.ptp(with_noise.get_ydata())
    plotting.save_figure(fig, tmp_path / "entropy_cap")
    _assert_rendered(tmp_path / "entropy_cap")
    with pytest.raises(ValueError, match="record 0 lacks error_rate"):
        plotting.plot_error_vs_entropy_cap([{"noise": True, "entropy_cap": 1.0}])


def test_error_vs_entropy_cap_hand_checked_quartiles(tmp_path):
    # Three seeds at one cap: median 0.2, quartiles 0.15 and 0.25 (linear interpolation).
    records = [{"noise": True, "entropy_cap": 1.0, "error_rate": e, "seed": s} for s, e in enumerate((0.1, 0.3, 0.2))]
    records.append({"noise": True, "entropy_cap": 2.0, "error_rate": 0.05, "seed": 0})
    fig = plotting.plot_error_vs_entropy_cap(records)
    (ax,) = fig.axes
    (line,) = ax.get_lines()
    np.testing.assert_allclose(line.get_xdata(), [1.0, 2.0])
    np.testing.assert_allclose(line.get_ydata(), [0.2, 0.05])
    band = ax.collections[0].get_paths()[0].vertices
    at_one = band[np.isclose(band[:, 0], 1.0), 1]
    np.testing.assert_allclose([at_one.min(), at_one.max()], [0.15, 0.25])
    png, pdf = plotting.save_figure(fig, tmp_path / "nested" / "cap")
    assert (png, pdf) == (tmp_path / "nested" / "cap.png", tmp_path / "nested" / "cap.pdf")
    _assert_rendered(tmp_path / "nested" / "cap")


# The script.


def _run_script(*args):
    return subprocess.run(
        [sys.executable, str(REPO / "scripts" / "plot.py"), *map(str, args)],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=120,
    )


def test_script_draws_every_supported_figure(gamma_sweep, categorical_sweep, entropy_cap_records, tmp_path):
    cap_file = tmp_path / "entropy_cap.jsonl"
    _write_jsonl(cap_file, entropy_cap_records)
    out = tmp_path / "figures"
    result = _run_script(
        "--workdir", gamma_sweep, "--workdir", categorical_sweep, "--entropy_cap_file", cap_file, "--out", out
    )
    assert result.returncode == 0, result.stderr
    assert sorted(p.name for p in out.iterdir()) == sorted(f"{n}.{s}" for n in plotting.FIGURES for s in ("png", "pdf"))
    for name in plotting.FIGURES:
        _assert_rendered(out / name)


def test_script_one_figure_default_out_and_bad_flags(gamma_sweep, tmp_path):
    result = _run_script("--workdir", gamma_sweep, "--figure", "entropies")
    assert result.returncode == 0, result.stderr
    assert sorted(p.name for p in (gamma_sweep / "figures").iterdir()) == ["entropies.pdf", "entropies.png"]
    _assert_rendered(gamma_sweep / "figures" / "entropies")

    result = _run_script("--workdir", gamma_sweep, "--figure", "loss")
    assert result.returncode != 0
    choices = "<all|information_plane|entropies|cross_entropies|entropy_cap>"
    assert f"--figure=loss: value should be one of {choices}" in result.stderr


def test_import_does_not_import_jax():
    code = "import sys, ibjax.plotting; assert 'jax' not in sys.modules, 'jax imported'"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr


def test_regularizer_names_agree_with_the_losses():
    from ibjax import losses, plotting

    assert plotting.REGULARIZERS == losses.REGULARIZERS
