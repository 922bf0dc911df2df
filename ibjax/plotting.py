"""Figures of the paper from a run's logged records.

Readers turn a run's workdir (``config.json``, ``metrics.jsonl``,
``information_plane.jsonl``) into plain Python data; each ``plot_*`` function
takes that already-loaded data and returns a :class:`matplotlib.figure.Figure`;
:func:`save_figure` writes it as PNG and PDF.

Figures of Kirsch, Lyle & Gal (2020):

* :func:`plot_information_plane` -- Figs 1 and 6, Information Plane trajectories.
* :func:`plot_entropies_vs_gamma` -- Fig 5, final H[Z], H[Z|Y], H[Z|X] against γ.
* :func:`plot_cross_entropy_curves` -- Fig 3, the two cross-entropies and H[Y|Z].
* :func:`plot_error_vs_entropy_cap` -- Fig 4, error rate against an entropy cap.

Figures are built on :class:`~matplotlib.figure.Figure` with an explicit Agg
canvas, never through ``pyplot``: no global figure registry, no GUI backend,
so the module is safe in headless jobs and tests. It does not import JAX.
All information quantities are in nats.
"""

from __future__ import annotations

import collections
import dataclasses
import math
import pathlib
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import matplotlib
import numpy as np
from matplotlib import colors as mcolors
from matplotlib.axes import Axes
from matplotlib import ticker
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.cm import ScalarMappable
from matplotlib.figure import Figure
from matplotlib.lines import Line2D

from ibjax import config as configlib
from ibjax.io import read_jsonl

FIGURES = ("information_plane", "entropies", "cross_entropies", "entropy_cap")

# losses.REGULARIZERS, spelt out: importing ibjax.losses would import JAX, which plotting never needs
# (tests/test_plotting.py checks that the two agree).
REGULARIZERS = ("none", "l2", "log_var", "cond_log_var", "vib")
# The paper's names for the surrogate regularisers of section 6.3.
_REGULARIZER_TITLES = {
    "none": "no regulariser",
    "l2": r"$\mathbb{E}\,\|Z\|^2$",
    "log_var": r"$\log \mathrm{Var}[Z]$",
    "cond_log_var": r"$\log \mathrm{Var}[Z|Y]$",
    "vib": "VIB",
}

# Training objectives of Fig 3, in the paper's column order.
OBJECTIVES = ("decoder_cross_entropy", "prediction_cross_entropy", "decoder_uncertainty")
_OBJECTIVE_SYMBOLS = {
    "decoder_cross_entropy": r"$H_\Theta[Y|Z]$",
    "prediction_cross_entropy": r"$H_\Theta[Y|X]$",
    "decoder_uncertainty": r"$H[Y|Z]$",
}
# metrics.jsonl key, legend label, colour of each curve in Fig 3. For a
# categorical latent the training loop also logs exact values over the whole
# training set in eval mode (``train_exact_*``, the same pass that gives
# H[Y|Z]); they are preferred so the three curves describe the same model.
_EXACT_PREFIX = "train_exact_"
_CROSS_ENTROPY_METRICS = (
    ("train_decoder_cross_entropy", r"Decoder Cross-Entropy $H_\Theta[Y|Z]$", "C0"),
    ("train_prediction_cross_entropy", r"Prediction Cross-Entropy $H_\Theta[Y|X]$", "C1"),
    ("train_decoder_uncertainty", r"Decoder Uncertainty $H[Y|Z]$", "C2"),
)

PRESERVED_INFORMATION_LABEL = r"Preserved Information $I[X;Z]$ (nats)"
RESIDUAL_INFORMATION_LABEL = r"Residual Information $I[X;Y|Z]$ (nats)"
_BASELINE_COLOR = "0.55"
#: Colour and legend label of information-plane points whose record carries impossible-value flags.
FLAGGED_COLOR = "red"
FLAGGED_LABEL = "impossible value (flagged)"
_BASELINE_LABEL = r"$\gamma = 0$ (no regulariser)"
_PNG_DPI = 150


@dataclasses.dataclass(frozen=True)
class Run:
    """One training run as logged in its workdir.

    Attributes:
      workdir: the run's directory.
      config: ``config.json``, the run's ``ml_collections`` config as nested dicts.
      metrics: ``metrics.jsonl``, one record per epoch.
      information_plane: ``information_plane.jsonl``, one record per analysed
        epoch; empty when the run has not been analysed.
    """

    workdir: pathlib.Path
    config: dict[str, Any]
    metrics: list[dict[str, Any]]
    information_plane: list[dict[str, Any]]


def load_run(workdir: str | pathlib.Path, records_name: str = "information_plane.jsonl") -> Run:
    """Loads a run's config and logged records from its workdir.

    Args:
      workdir: directory holding ``config.json`` and ``metrics.jsonl`` (required)
        and ``information_plane.jsonl`` (optional).
      records_name: the information-plane records to read, e.g.
        ``information_plane_knn.jsonl`` from ``analyze.py --estimator=knn``.

    Returns:
      The :class:`Run`. Without the ``records_name`` file, ``information_plane``
      holds the records the training loop wrote into ``metrics.jsonl``
      (``train.analyze_every``), or nothing.

    Raises:
      FileNotFoundError: ``config.json`` or ``metrics.jsonl`` is missing.
      ValueError: a file is malformed.
    """
    workdir = pathlib.Path(workdir)
    for name in ("config.json", "metrics.jsonl"):
        if not (workdir / name).is_file():
            raise FileNotFoundError(f"workdir {workdir} has no {name}")
    config = configlib.read_stored(workdir / "config.json")
    information_plane_path = workdir / records_name
    metrics = read_jsonl(workdir / "metrics.jsonl")
    if information_plane_path.is_file():
        information_plane = read_jsonl(information_plane_path)
    else:  # The records the training loop made (train.analyze_every), if any.
        information_plane = [m["information_plane"] for m in metrics if m.get("information_plane")]
    return Run(workdir=workdir, config=config, metrics=metrics, information_plane=information_plane)


def save_figure(fig: Figure, path_without_suffix: str | pathlib.Path) -> tuple[pathlib.Path, pathlib.Path]:
    """Writes ``fig`` as ``<path>.png`` and ``<path>.pdf``, creating parent folders.

    Returns:
      The PNG and PDF paths.
    """
    stem = pathlib.Path(path_without_suffix)
    stem.parent.mkdir(parents=True, exist_ok=True)
    png, pdf = stem.parent / f"{stem.name}.png", stem.parent / f"{stem.name}.pdf"
    fig.savefig(png, dpi=_PNG_DPI)
    fig.savefig(pdf)
    return png, pdf


def entropy_cap_records(runs: Sequence[Run]) -> list[dict[str, Any]]:
    """Fig 4 records from runs trained with ``config.capping.schedule``.

    Each epoch after which the latent was capped gives one record: the cap,
    the training error right after capping, the run's noise setting and seed.
    """
    return [
        {"noise": bool(_config_value(run, "model.noise")), "entropy_cap": r["entropy_cap"],
         "error_rate": r["capped_train_error"], "seed": _config_value(run, "seed"), "epoch": r["epoch"]}
        for run in runs for r in run.metrics if "entropy_cap" in r
    ]


def supported_figures(runs: Sequence[Run], entropy_cap_records: Sequence[Mapping[str, Any]] = ()) -> list[str]:
    """Names (from :data:`FIGURES`) of the figures the loaded data can draw.

    Fig 3 needs the exact Decoder Uncertainty, which only categorical-latent
    runs log, so ``cross_entropies`` requires ``train_decoder_uncertainty``.
    """
    names = []
    if any(run.information_plane for run in runs):
        names += ["information_plane", "entropies"]
    if any("train_decoder_uncertainty" in record for run in runs for record in run.metrics):
        names.append("cross_entropies")
    if entropy_cap_records:
        names.append("entropy_cap")
    return names


def make_figures(
    names: Iterable[str],
    runs: Sequence[Run],
    entropy_cap_records: Sequence[Mapping[str, Any]] = (),
) -> dict[str, Figure]:
    """Draws the named figures.

    Args:
      names: figure names from :data:`FIGURES`.
      runs: loaded runs (for all figures but ``entropy_cap``).
      entropy_cap_records: records of the entropy-cap experiment.

    Returns:
      Figures keyed by name.

    Raises:
      ValueError: an unknown name, or data that cannot draw a named figure.
    """
    draw = {
        "information_plane": lambda: plot_information_plane(runs),
        "entropies": lambda: plot_entropies_vs_gamma(runs),
        "cross_entropies": lambda: plot_cross_entropy_curves(runs),
        "entropy_cap": lambda: plot_error_vs_entropy_cap(entropy_cap_records),
    }
    names = list(names)
    for name in names:
        if name not in draw:
            raise ValueError(f"figure must be one of {', '.join(FIGURES)}; got {name!r}")
    return {name: draw[name]() for name in names}


def plot_information_plane(
    runs: Sequence[Run],
    *,
    gamma_cmap: str = "viridis",
    epoch_cmap: str = "Oranges",
) -> Figure:
    """Information Plane: Residual Information against Preserved Information.

    Figs 1 and 6 of the paper. Each run is a trajectory over epochs from
    x = I[X;Z] to y = I[X;Y|Z], its line coloured by γ on a log scale and its
    dots by epoch. The dashed saturation curve is
    ``I[X;Y|Z] = max(0, H[Y] − I[X;Z])``: the least Residual Information a
    latent preserving I[X;Z] nats can leave when the labels are a function of
    the inputs (H[Y|X] = 0, as on a training set), since then
    I[X;Y|Z] = H[Y] − I[Y;Z] ≥ H[Y] − I[X;Z] (Tishby & Zaslavsky, 2015).
    H[Y] is the median ``h_y`` of the records.

    One panel per regulariser (``l2``, ``log_var``, ``cond_log_var``, ``vib``),
    sharing axes and colour scales. Runs with γ = 0 or regulariser ``none``
    train without a bottleneck; they cannot sit on a log γ scale, so they are
    drawn in grey in every panel as a baseline.

    Args:
      runs: loaded runs; those without ``information_plane`` records are skipped.
      gamma_cmap: colour map of the trajectories (γ).
      epoch_cmap: colour map of the dots (epoch).

    Returns:
      The figure.

    Raises:
      ValueError: no run has Information Plane records, a record lacks a
        field, or a regulariser is unknown.
    """
    analysed = _analysed_runs(runs, "plot_information_plane")
    baselines = [run for run in analysed if _is_baseline(run)]
    by_regularizer = _group_by_regularizer(run for run in analysed if not _is_baseline(run))
    panels = list(by_regularizer) or ["none"]

    gammas = [_gamma(run) for runs_ in by_regularizer.values() for run in runs_]
    gamma_norm = _log_norm(gammas)
    epochs = [_field(run, record, "epoch") for run in analysed for record in run.information_plane]
    epoch_norm = mcolors.Normalize(min(epochs), max(epochs))
    # Light end of sequential maps vanishes on white; start at 30 %.
    epoch_colors = mcolors.ListedColormap(matplotlib.colormaps[epoch_cmap](np.linspace(0.3, 1.0, 256)))
    h_y = float(np.median([_field(run, record, "h_y") for run in analysed for record in run.information_plane]))

    fig, axes = _figure(1, len(panels), panel_size=(4.2, 3.8), sharex=True, sharey=True)
    for ax, regularizer in zip(axes[0], panels):
        for run in sorted(by_regularizer.get(regularizer, []), key=_gamma):
            color = matplotlib.colormaps[gamma_cmap](gamma_norm(_gamma(run)))
            _draw_trajectory(ax, run, color, epoch_colors, epoch_norm)
        # Last, so the reference stays visible however many γ runs there are.
        for run in baselines:
            _draw_trajectory(ax, run, _BASELINE_COLOR, epoch_colors, epoch_norm)
        ax.set_title(_REGULARIZER_TITLES[regularizer])
        ax.set_xlabel(PRESERVED_INFORMATION_LABEL)
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel(RESIDUAL_INFORMATION_LABEL)

    # Span the data and the kink at I[X;Z] = H[Y], whichever reaches further.
    x = np.linspace(0.0, max(axes[0][0].get_xlim()[1], 1.05 * h_y), 200)
    for ax in axes[0]:
        ax.plot(x, np.maximum(0.0, h_y - x), "k--", lw=1.2, zorder=1)
    handles = [Line2D([], [], color="k", ls="--", label=r"saturation $\max(0, H[Y] - I[X;Z])$")]
    if baselines:
        handles.append(Line2D([], [], color=_BASELINE_COLOR, label=_BASELINE_LABEL))
    axes[0][-1].legend(handles=handles, loc="upper right", fontsize="small")

    fig.colorbar(ScalarMappable(epoch_norm, epoch_colors), ax=axes[0].tolist(), label="epoch")
    if gammas:
        fig.colorbar(ScalarMappable(gamma_norm, gamma_cmap), ax=axes[0].tolist(), label=r"$\gamma$")
    return fig


def plot_entropies_vs_gamma(runs: Sequence[Run]) -> Figure:
    """Final-epoch entropies of the latent against γ.

    Fig 5 of the paper. One panel per entropy — H[Z], H[Z|Y] and, unless it is
    identically 0 (as under zero-entropy noise, where it is known exactly),
    H[Z|X] — with one line per regulariser so the regularisers can be compared
    at equal γ. Lines are the median over seeds of each run's last analysed
    epoch; faint dots are the seeds. γ = 0 runs are a grey dotted horizontal
    line (their median), as they have no place on the log γ axis.

    Args:
      runs: loaded runs; those without ``information_plane`` records are skipped.

    Returns:
      The figure.

    Raises:
      ValueError: no run has Information Plane records, a record lacks a
        field, or a regulariser is unknown.
    """
    analysed = _analysed_runs(runs, "plot_entropies_vs_gamma")
    final = {id(run): max(run.information_plane, key=lambda r: _field(run, r, "epoch")) for run in analysed}
    quantities = [("h_z", "H[Z]"), ("h_z_given_y", "H[Z|Y]")]
    h_z_given_x = [_field(run, final[id(run)], "h_z_given_x") for run in analysed]
    if not np.allclose(h_z_given_x, 0.0):
        quantities.append(("h_z_given_x", "H[Z|X]"))

    baselines = [run for run in analysed if _is_baseline(run)]
    by_regularizer = _group_by_regularizer(run for run in analysed if not _is_baseline(run))

    fig, axes = _figure(1, len(quantities), panel_size=(3.8, 3.4), sharex=True, sharey=False)
    for ax, (key, symbol) in zip(axes[0], quantities):
        for i, (regularizer, group) in enumerate(by_regularizer.items()):
            color, marker = f"C{i}", "osD^v"[i % 5]
            gamma = np.array([_gamma(run) for run in group])
            value = np.array([_field(run, final[id(run)], key) for run in group], dtype=float)
            ax.plot(gamma, value, marker, color=color, alpha=0.25, ms=4, ls="none")
            levels = np.unique(gamma)
            medians = [np.median(value[gamma == level]) for level in levels]
            ax.plot(levels, medians, marker=marker, color=color, label=_REGULARIZER_TITLES[regularizer])
        if baselines:
            median = np.median([_field(run, final[id(run)], key) for run in baselines])
            ax.axhline(median, color=_BASELINE_COLOR, ls=":", lw=1.5, label=_BASELINE_LABEL)
        ax.set_xscale("log")
        ax.set_xlabel(r"$\gamma$")
        ax.set_ylabel(f"${symbol}$ (nats)")
        ax.set_title(f"${symbol}$ at the final epoch")
        ax.grid(alpha=0.3, which="both")
    axes[0][0].legend(fontsize="small")
    return fig


def plot_cross_entropy_curves(runs: Sequence[Run]) -> Figure:
    """Decoder Cross-Entropy, Prediction Cross-Entropy and Decoder Uncertainty over training.

    Fig 3 of the paper. Runs are grouped by data set (``config.data.name``,
    rows) and training objective (columns): ``objective.loss ==
    "decoder_uncertainty"`` trains with H[Y|Z], otherwise
    ``objective.cross_entropy`` selects H_Θ[Y|Z] (``decoder``) or H_Θ[Y|X]
    (``prediction``). Each panel shows the three training-set metrics over
    epochs: the median over trials with a band from the 25 % to the 75 %
    quartile. H_Θ[Y|Z] upper-bounds both others (section 5). Below each
    data set's row, a row of the test accuracy, drawn the same way.

    Args:
      runs: loaded runs with ``metrics`` records.

    Returns:
      The figure.

    Raises:
      ValueError: no run has metrics, a config lacks a field, or an objective
        is unknown.
    """
    cells: dict[tuple[str, str], list[Run]] = collections.defaultdict(list)
    for run in runs:
        if run.metrics:
            cells[(str(_config_value(run, "data.name")), _training_objective(run))].append(run)
    if not cells:
        raise ValueError("plot_cross_entropy_curves: no run has metrics records")
    datasets = sorted({dataset for dataset, _ in cells})
    objectives = [o for o in OBJECTIVES if any(objective == o for _, objective in cells)]

    fig, axes = _figure(2 * len(datasets), len(objectives), panel_size=(3.8, 2.6), sharex=False, sharey="row")
    drawn = {}
    for row, dataset in enumerate(datasets):
        for column, objective in enumerate(objectives):
            ax, accuracy_ax = axes[2 * row][column], axes[2 * row + 1][column]
            if row == 0:
                ax.set_title(f"Training with {_OBJECTIVE_SYMBOLS[objective]}")
            if row == len(datasets) - 1:
                accuracy_ax.set_xlabel("epoch")
            if column == 0:
                ax.set_ylabel(f"{dataset}\n(nats)")
                accuracy_ax.set_ylabel("test accuracy")
            for panel in (ax, accuracy_ax):
                panel.grid(alpha=0.3)
            group = cells.get((dataset, objective))
            if not group:
                ax.text(0.5, 0.5, "no runs", transform=ax.transAxes, ha="center", va="center", color="0.5")
                continue
            for key, label, color in _CROSS_ENTROPY_METRICS:
                exact = key.replace("train_", _EXACT_PREFIX, 1)
                has_exact = all(exact in r for run in group for r in run.metrics)
                _draw_quartiles(ax, _quartile_curve(group, exact if has_exact else key), color, label, drawn)
            _draw_quartiles(accuracy_ax, _quartile_curve(group, "test_accuracy"), "0.2", "test accuracy", drawn)
    # One row of entries under three columns of panels; two rows where a single column is too narrow.
    ncols = len(drawn) if len(objectives) > 1 else max(1, (len(drawn) + 1) // 2)
    fig.legend(handles=list(drawn.values()), loc="outside lower center", ncols=ncols, fontsize="small")
    return fig


def _draw_quartiles(ax: Axes, curve, color: Any, label: str, drawn: dict) -> None:
    """The median line and the 25-75 % band of a :func:`_quartile_curve` (nothing if it is None)."""
    if curve is None:
        return
    epochs, low, median, high = curve
    ax.fill_between(epochs, low, high, color=color, alpha=0.25, lw=0)
    drawn[label] = ax.plot(epochs, median, color=color, label=label)[0]


def plot_error_vs_entropy_cap(records: Sequence[Mapping[str, Any]]) -> Figure:
    """Error rate against a cap on the entropy of the latent, with and without noise.

    Fig 4 of the paper (section 7.2). The x axis is reversed so that reading
    left to right follows the experiment, which tightens the cap epoch by
    epoch: without noise the latent can be rescaled to any entropy and the
    error stays flat; with zero-entropy noise H[Z] ≥ 0 and the error rises as
    the cap approaches 0. Lines are the median over seeds at each cap, with a
    25–75 % band when there are several seeds.

    Args:
      records: ``{"noise": bool, "entropy_cap": float (nats),
        "error_rate": float, "seed": int}`` records.

    Returns:
      The figure.

    Raises:
      ValueError: no records, or a record lacks a field.
    """
    if not records:
        raise ValueError("plot_error_vs_entropy_cap: records is empty; expected entropy-cap experiment records")
    grouped: dict[bool, dict[float, list[float]]] = collections.defaultdict(lambda: collections.defaultdict(list))
    for i, record in enumerate(records):
        missing = [key for key in ("noise", "entropy_cap", "error_rate") if key not in record]
        if missing:
            raise ValueError(f"plot_error_vs_entropy_cap: record {i} lacks {', '.join(missing)}: {dict(record)}")
        grouped[bool(record["noise"])][float(record["entropy_cap"])].append(float(record["error_rate"]))

    fig, axes = _figure(1, 1, panel_size=(5.2, 3.6), sharex=False, sharey=False)
    ax = axes[0][0]
    styles = {False: ("Without noise", "C0", "o"), True: ("With zero-entropy noise", "C3", "s")}
    for noise in (False, True):
        if noise not in grouped:
            continue
        label, color, marker = styles[noise]
        caps = np.array(sorted(grouped[noise]))
        rates = [np.array(grouped[noise][cap]) for cap in caps]
        ax.plot(caps, [np.median(r) for r in rates], marker=marker, color=color, label=label, ms=4)
        if any(len(r) > 1 for r in rates):
            ax.fill_between(
                caps,
                [np.percentile(r, 25) for r in rates],
                [np.percentile(r, 75) for r in rates],
                color=color,
                alpha=0.2,
                lw=0,
            )
    all_caps = np.array([cap for caps in grouped.values() for cap in caps])
    nonzero = np.abs(all_caps[all_caps != 0])
    if nonzero.size and nonzero.max() / nonzero.min() > 100:
        # Caps spanning orders of magnitude (a geometric schedule): symmetric log scale.
        ax.set_xscale("symlog", linthresh=float(nonzero.min()))
    ax.invert_xaxis()
    ax.set_xlabel(r"Entropy cap on $H[Z]$ (nats), tightening $\rightarrow$")
    ax.set_ylabel("Training error rate")
    ax.yaxis.set_major_formatter(ticker.PercentFormatter(xmax=1.0))
    ax.set_ylim(bottom=0.0)
    ax.grid(alpha=0.3)
    ax.legend(loc="upper left")
    return fig


def _figure(
    rows: int, columns: int, *, panel_size: tuple[float, float], sharex: bool | str, sharey: bool | str
) -> tuple[Figure, np.ndarray]:
    fig = Figure(figsize=(panel_size[0] * columns + 1.2, panel_size[1] * rows + 0.4), layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(rows, columns, sharex=sharex, sharey=sharey, squeeze=False)
    return fig, axes


def _draw_trajectory(
    ax: Axes, run: Run, color: Any, epoch_cmap: mcolors.Colormap, epoch_norm: mcolors.Normalize
) -> None:
    records = sorted(run.information_plane, key=lambda r: _field(run, r, "epoch"))
    x = [_field(run, r, "preserved_information") for r in records]
    y = [_field(run, r, "residual_information") for r in records]
    epochs = [_field(run, r, "epoch") for r in records]
    ax.plot(x, y, color=color, lw=1.5, alpha=0.9, zorder=2)
    ax.scatter(x, y, c=epochs, cmap=epoch_cmap, norm=epoch_norm, s=14, zorder=3, edgecolors=[color], linewidths=0.6)
    # Records with impossible values (ibjax.analysis.impossible_value_flags) are crossed out in red.
    flagged = [(a, b) for a, b, r in zip(x, y, records) if r.get("flags")]
    if flagged:
        ax.scatter(*zip(*flagged), marker="x", color=FLAGGED_COLOR, s=40, linewidths=1.2, zorder=4,
                   label=FLAGGED_LABEL)


def _quartile_curve(runs: Sequence[Run], key: str) -> tuple[np.ndarray, ...] | None:
    """Epochs and the 25 %, 50 %, 75 % quantiles of ``key`` over ``runs``; None if no run logs it."""
    values = [{r["epoch"]: r[key] for r in run.metrics if key in r and "epoch" in r} for run in runs]
    epochs = np.array(sorted({epoch for by_epoch in values for epoch in by_epoch}))
    if epochs.size == 0:
        return None
    table = np.array([[by_epoch.get(epoch, np.nan) for epoch in epochs] for by_epoch in values], dtype=float)
    keep = np.isfinite(table).any(axis=0)
    low, median, high = np.nanpercentile(table[:, keep], [25.0, 50.0, 75.0], axis=0)
    return epochs[keep], low, median, high


def _log_norm(gammas: Sequence[float]) -> mcolors.LogNorm:
    if not gammas:
        return mcolors.LogNorm(1.0, 10.0)
    low, high = min(gammas), max(gammas)
    if low == high:
        # A single γ still needs a non-degenerate colour scale.
        low, high = low / math.sqrt(10.0), high * math.sqrt(10.0)
    return mcolors.LogNorm(low, high)


def _analysed_runs(runs: Sequence[Run], caller: str) -> list[Run]:
    analysed = [run for run in runs if run.information_plane]
    if not analysed:
        raise ValueError(
            f"{caller}: none of the {len(runs)} runs has information_plane records; run the analysis first"
        )
    return analysed


def _group_by_regularizer(runs: Iterable[Run]) -> dict[str, list[Run]]:
    """Runs keyed by regulariser, in the order of :data:`REGULARIZERS`."""
    grouped = collections.defaultdict(list)
    for run in runs:
        grouped[_regularizer(run)].append(run)
    return {r: grouped[r] for r in REGULARIZERS if r in grouped}


def _is_baseline(run: Run) -> bool:
    """γ = 0 and regulariser ``none`` both train without a bottleneck."""
    return _regularizer(run) == "none" or _gamma(run) <= 0.0


def _gamma(run: Run) -> float:
    return float(_config_value(run, "objective.gamma", record_key="gamma"))


def _regularizer(run: Run) -> str:
    regularizer = str(_config_value(run, "objective.regularizer", record_key="regularizer"))
    if regularizer not in REGULARIZERS:
        raise ValueError(
            f"run {run.workdir}: objective.regularizer must be one of {', '.join(REGULARIZERS)}; got {regularizer!r}"
        )
    return regularizer


def _training_objective(run: Run) -> str:
    if _config_value(run, "objective.loss") == "decoder_uncertainty":
        return "decoder_uncertainty"
    cross_entropy = _config_value(run, "objective.cross_entropy")
    if cross_entropy not in ("decoder", "prediction"):
        raise ValueError(
            f"run {run.workdir}: objective.cross_entropy must be one of decoder, prediction; got {cross_entropy!r}"
        )
    return f"{cross_entropy}_cross_entropy"


def _config_value(run: Run, dotted_key: str, record_key: str | None = None) -> Any:
    """``run.config[a][b]`` for ``"a.b"``; falls back to the first Information Plane record's ``record_key``."""
    node: Any = run.config
    for part in dotted_key.split("."):
        if not isinstance(node, dict) or part not in node:
            break
        node = node[part]
    else:
        return node
    if record_key is not None and run.information_plane and record_key in run.information_plane[0]:
        return run.information_plane[0][record_key]
    raise ValueError(f"run {run.workdir}: config.json lacks {dotted_key}")


def _field(run: Run, record: Mapping[str, Any], key: str) -> Any:
    if key not in record:
        raise ValueError(f"run {run.workdir}: record {dict(record)} lacks {key!r}")
    return record[key]
