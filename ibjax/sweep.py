"""Sweeps: a grid of runs over γ, seeds and regularisers from one config.

Section 7.3 of the paper trains one model per regulariser and per γ, with γ
log-spaced from 1e-4 to 10, and compares their Information Plane
trajectories. :func:`expand_grid` turns a base config into that grid of
:class:`RunSpec` (one workdir each, e.g. ``cond_log_var/gamma0.001/seed0``,
or with ``population=True`` one vmapped population run per regulariser and
seed whose members are the runs); :func:`run_sweep` trains every run, then
analyses every run's checkpoints and draws the figures over all of them.

A sweep directory holds the runs, ``figures/`` and the manifest
``sweep.json``, rewritten atomically on every status change::

    {"base_config": {...}, "status": "running" | "finished" | "stopped",
     "runs": [{"name": ..., "workdir": ..., "overrides": {"objective.gamma": 0.001, ...},
               "status": "pending" | "running" | "done" | "failed" | "preempted",
               "error": ..., "analysis": "done" | "failed", "analysis_error": ...,
               "members": [{"workdir": ..., "gamma": ..., "analysis": ...}, ...]}, ...],
     "other_runs": [...], "figures": {...}}

A sweep stopped at any point resumes when started again: finished runs are
skipped, a half-finished run resumes from its checkpoint, and runs left
``running``, ``failed`` or ``preempted`` are tried again. Nothing is ever
deleted: a workdir that holds a run of another config is refused by
:func:`ibjax.train.train_and_evaluate` and the run is marked failed with the
differing fields; runs of an earlier grid that the current one does not list
stay in the manifest under ``other_runs``.
"""

from __future__ import annotations

import dataclasses
import json
import math
import numbers
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import jax
import ml_collections
import numpy as np

from ibjax import analysis, plotting, train
from ibjax import workdir as workdirlib
from ibjax import config as configlib
from ibjax.io import atomic_write_text, read_jsonl
from ibjax.losses import REGULARIZERS

__all__ = [
    "MANIFEST_NAME",
    "RunSpec",
    "default_gammas",
    "expand_grid",
    "load_manifest",
    "save_manifest",
    "run_sweep",
]

MANIFEST_NAME = "sweep.json"


@dataclasses.dataclass(frozen=True)
class RunSpec:
    """One run of a sweep.

    Attributes:
      name: the run's workdir relative to the sweep directory, e.g.
        ``cond_log_var/gamma0.001/seed0``.
      overrides: the grid's fields of this run (dotted field → value).
      config: the complete config of the run.
      members: for a population run, each member's workdir relative to the
        sweep directory and its γ; empty otherwise.
    """

    name: str
    overrides: dict[str, Any]
    config: ml_collections.ConfigDict
    members: tuple[tuple[str, float], ...] = ()


def default_gammas() -> tuple[float, ...]:
    """The 13 values of γ of section 7.3: log-spaced from 1e-4 to 10, both included."""
    return tuple(float(g) for g in np.logspace(-4.0, 1.0, 13))


def _unique(name: str, values: Sequence) -> None:
    if len(set(values)) != len(values):
        raise ValueError(f"`{name}` must not repeat a value; got {list(values)}.")


def expand_grid(
    base_config: ml_collections.ConfigDict,
    gammas: Sequence[float] | None = None,
    seeds: Sequence[int] | None = None,
    regularizers: Sequence[str] | None = None,
    population: bool = False,
) -> list[RunSpec]:
    """The runs of a sweep: every (regulariser, γ, seed), in that nesting order.

    Workdirs are ``{regulariser}/gamma{γ:g}/seed{seed}``. With
    ``population=True`` each (regulariser, seed) is one run
    ``{regulariser}/population/seed{seed}`` training a member per γ in one
    vmapped step (``config.population.gammas``); its members
    ``memberNN_gammaG`` are the runs the analysis reads. The regulariser
    ``none`` ignores γ, so it contributes one plain baseline run per seed
    with γ = 0 instead of one per γ, in either mode.

    Args:
      base_config: the experiment config every run starts from; its own
        ``objective.gamma`` is replaced by the grid's.
      gammas: values of ``objective.gamma`` (default :func:`default_gammas`).
      seeds: values of ``seed``, one trial each (default the config's seed).
      regularizers: values of ``objective.regularizer`` (default the config's).
      population: train the γ values of a (regulariser, seed) as one population.

    Returns:
      The runs, each with its complete, validated config.

    Raises:
      ValueError: an empty, repeated or invalid grid value, or a base config
        that is already a population; :class:`ibjax.config.ConfigError` for a
        grid point the config cannot take (e.g. a regulariser on a
        categorical latent).
    """
    if tuple(base_config.population.gammas):
        raise ValueError("base_config.population.gammas must be empty: the sweep sets it; "
                         "pass the values as `gammas` with population=True.")
    gammas = default_gammas() if gammas is None else tuple(gammas)
    seeds = (base_config.seed,) if seeds is None else tuple(seeds)
    regularizers = (base_config.objective.regularizer,) if regularizers is None else tuple(regularizers)
    for name, values in (("gammas", gammas), ("seeds", seeds), ("regularizers", regularizers)):
        if not values:
            raise ValueError(f"`{name}` must hold at least one value.")
        _unique(name, values)
    for g in gammas:
        if isinstance(g, bool) or not isinstance(g, numbers.Real) or not math.isfinite(g) or g < 0:
            raise ValueError(f"`gammas` must be non-negative finite numbers; got {g!r}.")
    for s in seeds:
        if isinstance(s, bool) or not isinstance(s, numbers.Integral) or s < 0:
            raise ValueError(f"`seeds` must be non-negative integers; got {s!r}.")
    for r in regularizers:
        if r not in REGULARIZERS:
            raise ValueError(f"`regularizers` must each be one of {REGULARIZERS}; got {r!r}.")
    gammas = tuple(float(g) for g in gammas)
    seeds = tuple(int(s) for s in seeds)
    # Workdir names print γ with %g; two values that print alike would share a workdir.
    _unique("gammas (as printed with %g in workdir names)", [f"{g:g}" for g in gammas])

    specs = []
    for regularizer in regularizers:
        # γ multiplies a zero regulariser: one baseline run, not len(gammas) identical ones.
        grid_gammas = (0.0,) if regularizer == "none" else gammas
        for seed in seeds:
            overrides = {"objective.regularizer": regularizer, "seed": seed}
            if population and regularizer != "none":
                name = f"{regularizer}/population/seed{seed}"
                overrides["population.gammas"] = list(grid_gammas)
                members = tuple((workdirlib.member_workdir(Path(name), i, g).as_posix(), g)
                                for i, g in enumerate(grid_gammas))
                specs.append(RunSpec(name, overrides, _with(base_config, overrides), members))
                continue
            for gamma in grid_gammas:
                run_overrides = {**overrides, "objective.gamma": gamma}
                name = f"{regularizer}/gamma{gamma:g}/seed{seed}"
                specs.append(RunSpec(name, run_overrides, _with(base_config, run_overrides)))
    return specs


def _with(base_config: ml_collections.ConfigDict, overrides: dict[str, Any]) -> ml_collections.ConfigDict:
    """A validated copy of ``base_config`` with the dotted ``overrides`` set."""
    config = ml_collections.ConfigDict(base_config.to_dict())
    for dotted, value in overrides.items():
        *sections, field = dotted.split(".")
        node = config
        for section in sections:
            node = node[section]
        node[field] = tuple(value) if isinstance(value, list) else value
    configlib.validate(config)
    return config


# --------------------------------------------------------------------------
# The manifest
# --------------------------------------------------------------------------


def load_manifest(sweep_dir: str | Path) -> dict[str, Any]:
    """Reads ``sweep_dir/sweep.json``; a sweep not started yet has an empty manifest.

    Raises:
      ValueError: the file is not a JSON object with a ``runs`` list; the
        message names the file.
    """
    path = Path(sweep_dir) / MANIFEST_NAME
    if not path.exists():
        return {"runs": [], "other_runs": []}
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as error:
        raise ValueError(f"{path} is not valid JSON ({error}).") from None
    if not isinstance(manifest, dict) or not isinstance(manifest.get("runs"), list):
        raise ValueError(f"{path} must hold a JSON object with a 'runs' list.")
    manifest.setdefault("other_runs", [])
    return manifest


def save_manifest(sweep_dir: str | Path, manifest: dict[str, Any]) -> None:
    """Replaces ``sweep_dir/sweep.json`` atomically: a reader never sees half a manifest."""
    sweep_dir = Path(sweep_dir)
    sweep_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_text(sweep_dir / MANIFEST_NAME, json.dumps(manifest, indent=2, sort_keys=True) + "\n")


def _merge(manifest: dict[str, Any], base_config, specs: Sequence[RunSpec]) -> dict[str, Any]:
    """The manifest of this grid: known entries keep their status, new ones are pending."""
    known = {entry["name"]: entry for entry in manifest["runs"] + manifest["other_runs"]}
    names = {spec.name for spec in specs}
    runs = []
    for spec in specs:
        entry = known.get(spec.name, {"name": spec.name, "status": "pending"})
        entry.update(workdir=spec.name, overrides=spec.overrides)
        previous = {m["workdir"]: m for m in entry.pop("members", [])}
        if spec.members:
            entry["members"] = [{**previous.get(w, {}), "workdir": w, "gamma": g} for w, g in spec.members]
        runs.append(entry)
    return dict(manifest, base_config=configlib.to_dict(base_config), status="running", runs=runs,
                other_runs=[e for e in known.values() if e["name"] not in names])


# --------------------------------------------------------------------------
# Running
# --------------------------------------------------------------------------


def _finished(workdir: Path, config, members: Sequence[tuple[str, float]], sweep_dir: Path,
              allow_num_epochs_change: bool) -> bool:
    """Whether ``workdir`` holds this config's run trained to ``train.num_epochs``.

    Read from the files, not the manifest, so runs trained outside the sweep
    (or before the manifest was written) count too: the stored config must
    match, and every metrics file must reach the last epoch, whose checkpoint
    must be on disk.
    """
    config_path = workdir / "config.json"
    if not config_path.exists():
        return False
    if workdirlib.run_differences(configlib.read_stored(config_path), configlib.to_dict(config),
                                  allow_num_epochs_change=allow_num_epochs_change):
        return False
    num_epochs = config.train.num_epochs
    run_dirs = [sweep_dir / w for w, _ in members] if members else [workdir]
    for run_dir in run_dirs:
        metrics = run_dir / "metrics.jsonl"
        epochs = [r.get("epoch", 0) for r in read_jsonl(metrics)] if metrics.exists() else []
        if not epochs or max(epochs) < num_epochs or not (run_dir / "checkpoints" / str(max(epochs))).is_dir():
            return False
    return True


def _describe(result: dict[str, Any]) -> str:
    if not result:
        return "nothing left to train"
    return f"epoch {result['epoch']}, test accuracy {result['test_accuracy']:.4f}"


def run_sweep(
    base_config: ml_collections.ConfigDict,
    sweep_dir: str | Path,
    specs: Sequence[RunSpec],
    *,
    analyze: bool = True,
    plot: bool = True,
    progress: bool = True,
    k: int = 3,
    analysis_max_examples: int = 0,
    allow_num_epochs_change: bool = False,
) -> dict[str, Any]:
    """Trains every run of ``specs`` under ``sweep_dir``, then analyses and plots them.

    Runs go in order, each in ``sweep_dir/spec.name``. A finished run is
    skipped; any other is (re)started with
    :func:`ibjax.train.train_and_evaluate`, which resumes from its latest
    checkpoint. A run that raises is marked ``failed`` with the error and the
    sweep goes on. A run stopped by SIGTERM/SIGINT is marked ``preempted``
    and the sweep stops (manifest ``status`` ``stopped``); so does a signal
    between runs. Then, unless stopped, :func:`ibjax.analysis.analyze_run`
    runs on every finished run (each population member), and the figures
    the data supports (:func:`ibjax.plotting.supported_figures`) are drawn
    over all of them into ``sweep_dir/figures/`` as PNG and PDF.

    Args:
      base_config: the config the grid was expanded from (recorded in the manifest).
      sweep_dir: the sweep directory.
      specs: the runs, from :func:`expand_grid`.
      analyze: compute the information-plane quantities of every finished run.
      plot: draw the figures.
      progress: print a line per run and show the analysis progress bars.
      k: neighbours of the k-NN entropy estimators.
      analysis_max_examples: analyse only the first N training examples (0: all).
      allow_num_epochs_change: resume runs whose stored ``train.num_epochs``
        differs (to extend a finished sweep).

    Returns:
      The manifest as written to ``sweep_dir/sweep.json``.

    Raises:
      ValueError: repeated run names, or a run config that fails
        :func:`ibjax.config.validate` on the devices at hand (before
        anything is written).
      ibjax.workdir.WorkdirError: another live process runs this sweep.
    """
    sweep_dir = Path(sweep_dir)
    _unique("specs (run names)", [spec.name for spec in specs])
    for spec in specs:
        # jax.distributed.initialize() must come before the first device query.
        if not configlib.value_or_default(spec.config, "distributed"):
            configlib.validate(spec.config, num_devices=jax.device_count())

    sweep_dir.mkdir(parents=True, exist_ok=True)
    with workdirlib.WorkdirLock(sweep_dir), workdirlib.StopRequests("the sweep stops before its next step.") as stop:
        manifest = _merge(load_manifest(sweep_dir), base_config, specs)
        save_manifest(sweep_dir, manifest)

        def say(index: int, spec: RunSpec, text: str) -> None:
            if progress:
                print(f"[{index}/{len(specs)}] {spec.name} {text}", flush=True)

        for index, (spec, entry) in enumerate(zip(specs, manifest["runs"]), start=1):
            if stop.signal is not None:
                break
            entry.pop("error", None)
            try:
                if _finished(sweep_dir / spec.name, spec.config, spec.members, sweep_dir, allow_num_epochs_change):
                    if entry["status"] != "done":
                        entry["status"] = "done"
                        save_manifest(sweep_dir, manifest)
                    say(index, spec, "already done, skipped")
                    continue
                say(index, spec, "...")
                # Training changes the checkpoints, so an earlier analysis no longer stands.
                for record in [entry, *entry.get("members", [])]:
                    record.pop("analysis", None)
                    record.pop("analysis_error", None)
                entry["status"] = "running"
                save_manifest(sweep_dir, manifest)
                result = train.train_and_evaluate(spec.config, sweep_dir / spec.name,
                                                  allow_num_epochs_change=allow_num_epochs_change)
            except Exception as error:  # noqa: BLE001 -- one failed run must not end the sweep
                entry.update(status="failed", error=f"{type(error).__name__}: {error}")
                save_manifest(sweep_dir, manifest)
                say(index, spec, f"failed: {entry['error']}")
                continue
            if result.get("signal") and not result.get("preempted"):
                stop.signal = result["signal"]  # the run finished, but a stop was asked for
            if result.get("preempted"):
                entry["status"] = "preempted"
                stop.signal = result["signal"]
                save_manifest(sweep_dir, manifest)
                say(index, spec, f"preempted by {result['signal']} at epoch {result['epoch']}")
                break
            entry["status"] = "done"
            save_manifest(sweep_dir, manifest)
            say(index, spec, f"done ({_describe(result)})")

        done = [(spec, entry) for spec, entry in zip(specs, manifest["runs"]) if entry["status"] == "done"]
        # Each analysed run: (its manifest record to mark, its workdir).
        run_dirs = [(record, sweep_dir / record["workdir"])
                    for spec, entry in done for record in (entry["members"] if spec.members else [entry])]
        if analyze:
            _analyze_runs(sweep_dir, manifest, run_dirs, stop, progress=progress, k=k,
                          max_examples=analysis_max_examples)
        if plot and stop.signal is None and run_dirs:
            manifest["figures"] = _draw_figures(sweep_dir, [run_dir for _, run_dir in run_dirs], progress)
        manifest["status"] = "stopped" if stop.signal is not None else "finished"
        save_manifest(sweep_dir, manifest)
    return manifest


def _analyze_runs(sweep_dir: Path, manifest: dict[str, Any], run_dirs, stop, *, progress: bool, k: int,
                  max_examples: int) -> None:
    """Analyses every ``(manifest record, run dir)``, marking each record done or failed, until a stop."""
    for record, run_dir in run_dirs:
        if stop.signal is not None:
            break
        record.pop("analysis_error", None)
        try:
            analysis.analyze_run(run_dir, k=k, max_examples=max_examples, progress=progress)
            record["analysis"] = "done"
        except Exception as error:  # noqa: BLE001 -- analyse the others all the same
            record.update(analysis="failed", analysis_error=f"{type(error).__name__}: {error}")
            if progress:
                print(f"analysis of {run_dir} failed: {record['analysis_error']}", flush=True)
        save_manifest(sweep_dir, manifest)


def _draw_figures(sweep_dir: Path, run_dirs: Sequence[Path], progress: bool) -> dict[str, dict[str, str]]:
    """Every figure the runs support, as ``{name: {"png": ..., "pdf": ...}}`` or ``{name: {"error": ...}}``."""
    runs = [plotting.load_run(d) for d in run_dirs]
    figures = {}
    for name in plotting.supported_figures(runs):
        try:
            figure = plotting.make_figures([name], runs)[name]
            png, pdf = plotting.save_figure(figure, sweep_dir / "figures" / name)
        except ValueError as error:
            figures[name] = {"error": str(error)}
            if progress:
                print(f"figure {name} failed: {error}", flush=True)
            continue
        figures[name] = {"png": png.relative_to(sweep_dir).as_posix(), "pdf": pdf.relative_to(sweep_dir).as_posix()}
        if progress:
            print(f"figure {name}: {png} {pdf}", flush=True)
    return figures
