"""Tests of the sweep runner (ibjax.sweep, scripts/sweep.py) on tiny digits runs."""

import contextlib
import io
import json
import os
import re
import signal
import subprocess
import sys
import types
from pathlib import Path

import numpy as np
import pytest

from ibjax import config as configlib
from ibjax import sweep, train
from ibjax import workdir as workdirlib
from ibjax.io import find_run_dirs, read_jsonl
from ibjax.losses import REGULARIZERS

ROOT = Path(__file__).resolve().parents[1]
CONFIG = ROOT / "configs" / "digits_condvar.py"
GAMMAS = (0.001, 0.01, 0.1)
MAX_EXAMPLES = 300


# The same overrides as command-line flags, for scripts/sweep.py.
OVERRIDE_FLAGS = ["--config.train.num_epochs=2", "--config.train.progress_bar=False",
                  "--config.model.encoder_hidden=(64,)", "--config.model.latent_dim=8"]


def base_config():
    config = configlib.from_file(CONFIG)
    config.train.num_epochs = 2
    config.train.progress_bar = False
    config.model.encoder_hidden = (64,)
    config.model.latent_dim = 8
    return config


def epochs(path):
    return [r["epoch"] for r in read_jsonl(path)]


# ------------------------------------------------------------------ the grid


def test_default_gammas_are_13_log_spaced_from_1e_4_to_10():
    gammas = sweep.default_gammas()
    assert len(gammas) == 13
    assert gammas[0] == 1e-4 and gammas[-1] == 10.0
    reference = [10.0 ** (-4.0 + 5.0 * i / 12.0) for i in range(13)]
    np.testing.assert_allclose(gammas, reference, rtol=1e-12)
    # Equal ratios: the step in log10 is 5/12.
    np.testing.assert_allclose(np.diff(np.log10(gammas)), 5.0 / 12.0, rtol=1e-9)


def test_expand_grid_names_overrides_and_configs():
    base = base_config()
    specs = sweep.expand_grid(base, gammas=(0.001, 0.1), seeds=(0, 1), regularizers=("l2", "cond_log_var"))
    assert [s.name for s in specs] == [
        "l2/gamma0.001/seed0", "l2/gamma0.1/seed0", "l2/gamma0.001/seed1", "l2/gamma0.1/seed1",
        "cond_log_var/gamma0.001/seed0", "cond_log_var/gamma0.1/seed0",
        "cond_log_var/gamma0.001/seed1", "cond_log_var/gamma0.1/seed1",
    ]
    assert specs[3].overrides == {"objective.regularizer": "l2", "objective.gamma": 0.1, "seed": 1}
    for spec in specs:
        assert spec.config.objective.regularizer == spec.overrides["objective.regularizer"]
        assert spec.config.objective.gamma == spec.overrides["objective.gamma"]
        assert spec.config.seed == spec.overrides["seed"]
        assert spec.members == ()
        # Everything else is the base config's.
        assert spec.config.train.learning_rate == 1e-3 and spec.config.model.latent_dim == 8
    # The base config is not modified.
    assert base.objective.gamma == 0.01 and base.seed == 0


def test_expand_grid_defaults_to_13_gammas_and_the_configs_seed_and_regularizer():
    base = base_config()
    base.seed = 5
    specs = sweep.expand_grid(base)
    assert len(specs) == 13
    assert specs[0].name == "cond_log_var/gamma0.0001/seed5"
    assert specs[-1].name == "cond_log_var/gamma10/seed5"
    assert [s.config.objective.gamma for s in specs] == list(sweep.default_gammas())
    assert len({s.name for s in specs}) == 13


def test_expand_grid_regularizer_none_is_one_baseline_per_seed():
    specs = sweep.expand_grid(base_config(), gammas=GAMMAS, seeds=(0, 1), regularizers=("none", "l2"))
    assert [s.name for s in specs][:2] == ["none/gamma0/seed0", "none/gamma0/seed1"]
    assert len(specs) == 2 + 3 * 2
    assert specs[0].config.objective.gamma == 0.0


def test_expand_grid_population_is_one_run_per_regularizer_and_seed():
    specs = sweep.expand_grid(base_config(), gammas=GAMMAS, seeds=(0, 1), population=True)
    assert [s.name for s in specs] == ["cond_log_var/population/seed0", "cond_log_var/population/seed1"]
    spec = specs[1]
    assert spec.config.population.gammas == GAMMAS
    assert spec.overrides == {"objective.regularizer": "cond_log_var", "seed": 1, "population.gammas": list(GAMMAS)}
    assert spec.members == (
        ("cond_log_var/population/seed1/member00_gamma0.001", 0.001),
        ("cond_log_var/population/seed1/member01_gamma0.01", 0.01),
        ("cond_log_var/population/seed1/member02_gamma0.1", 0.1),
    )
    # The member names are the ones training writes.
    assert spec.members[2][0] == workdirlib.member_workdir(Path(spec.name), 2, 0.1).as_posix()


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(gammas=()), "`gammas` must hold at least one value"),
        (dict(gammas=(0.1, 0.1)), "`gammas` must not repeat"),
        (dict(gammas=(-1.0,)), "`gammas` must be non-negative"),
        (dict(gammas=(float("nan"),)), "`gammas` must be non-negative"),
        (dict(gammas=(0.1, 0.1000000001)), "as printed with %g"),
        (dict(seeds=(-1,)), "`seeds` must be non-negative integers"),
        (dict(seeds=(1.5,)), "`seeds` must be non-negative integers"),
        (dict(regularizers=("l1",)), f"`regularizers` must each be one of {REGULARIZERS}; got 'l1'"),
    ],
)
def test_expand_grid_rejects_bad_values_naming_the_argument(kwargs, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        sweep.expand_grid(base_config(), **kwargs)


def test_expand_grid_rejects_a_grid_point_the_config_cannot_take():
    categorical = configlib.from_file(ROOT / "configs" / "permuted_mnist_categorical.py")
    with pytest.raises(configlib.ConfigError, match="config.objective.regularizer acts on a continuous latent"):
        sweep.expand_grid(categorical, gammas=GAMMAS, regularizers=("l2",))
    population = base_config()
    population.population.gammas = (0.1,)
    with pytest.raises(ValueError, match="base_config.population.gammas must be empty"):
        sweep.expand_grid(population, gammas=GAMMAS)


def test_manifest_round_trip_and_malformed_file(tmp_path):
    assert sweep.load_manifest(tmp_path / "new") == {"runs": [], "other_runs": []}
    manifest = {"runs": [{"name": "a", "status": "done"}], "other_runs": [], "status": "finished"}
    sweep.save_manifest(tmp_path, manifest)
    assert sweep.load_manifest(tmp_path) == manifest
    assert not [p for p in tmp_path.iterdir() if p.name != "sweep.json"]  # no temporary file left
    (tmp_path / "sweep.json").write_text('{"runs": [')
    with pytest.raises(ValueError, match="sweep.json is not valid JSON"):
        sweep.load_manifest(tmp_path)


# ------------------------------------------------------------------ a real sweep


@pytest.fixture(scope="module")
def tiny_sweep(tmp_path_factory):
    """Three runs: one fresh, one half-finished beforehand, one whose workdir holds another config."""
    sweep_dir = tmp_path_factory.mktemp("sweep")
    config = base_config()
    specs = sweep.expand_grid(config, gammas=GAMMAS)
    half, poisoned = specs[1], specs[2]
    train.train_and_evaluate(half.config, sweep_dir / half.name, stop_after_epoch=1)
    other = sweep.expand_grid(config, gammas=(0.1,))[0].config
    other.train.learning_rate = 5e-4
    (sweep_dir / poisoned.name).mkdir(parents=True)
    poisoned_config = configlib.to_json(other)
    (sweep_dir / poisoned.name / "config.json").write_text(poisoned_config)
    output = io.StringIO()
    with contextlib.redirect_stdout(output):
        manifest = sweep.run_sweep(config, sweep_dir, specs, progress=True, analysis_max_examples=MAX_EXAMPLES)
    return types.SimpleNamespace(dir=sweep_dir, specs=specs, manifest=manifest, output=output.getvalue(),
                                 poisoned_config=poisoned_config)


def test_sweep_trains_analyses_and_plots_every_run(tiny_sweep):
    d, manifest = tiny_sweep.dir, tiny_sweep.manifest
    assert json.loads((d / "sweep.json").read_text()) == manifest
    assert manifest["status"] == "finished"
    assert [e["name"] for e in manifest["runs"]] == [s.name for s in tiny_sweep.specs]
    assert [e["status"] for e in manifest["runs"]] == ["done", "done", "failed"]
    assert manifest["runs"][0]["overrides"] == {"objective.regularizer": "cond_log_var", "objective.gamma": 0.001,
                                                "seed": 0}
    assert manifest["base_config"] == configlib.to_dict(base_config())
    for entry in manifest["runs"][:2]:
        workdir = d / entry["workdir"]
        assert epochs(workdir / "metrics.jsonl") == [1, 2]
        assert entry["analysis"] == "done"
        records = read_jsonl(workdir / "information_plane.jsonl")
        assert sorted(r["epoch"] for r in records) == [1, 2]
        assert all(r["gamma"] == entry["overrides"]["objective.gamma"] for r in records)
    assert "analysis" not in manifest["runs"][2]
    assert set(manifest["figures"]) == {"information_plane", "entropies"}
    for name in ("information_plane", "entropies"):
        for suffix in ("png", "pdf"):
            path = d / "figures" / f"{name}.{suffix}"
            assert path.stat().st_size > 1000
            assert manifest["figures"][name][suffix] == f"figures/{name}.{suffix}"
    assert "[1/3] cond_log_var/gamma0.001/seed0 ..." in tiny_sweep.output
    assert "[2/3] cond_log_var/gamma0.01/seed0 done (epoch 2, test accuracy" in tiny_sweep.output
    assert not (d / "lock").exists()


def test_sweep_resumes_a_half_finished_run_from_its_checkpoint(tiny_sweep):
    workdir = tiny_sweep.dir / tiny_sweep.specs[1].name
    assert f"Resuming {workdir} from the checkpoint of epoch 1." in tiny_sweep.output
    assert epochs(workdir / "metrics.jsonl") == [1, 2]
    assert sorted(int(p.name) for p in (workdir / "checkpoints").iterdir() if p.name.isdigit()) == [1, 2]


def test_a_run_of_another_config_is_marked_failed_and_left_untouched(tiny_sweep):
    entry = tiny_sweep.manifest["runs"][2]
    assert entry["error"].startswith("WorkdirError: ")
    assert "holds a run with a different config" in entry["error"]
    assert "train.learning_rate: stored 0.0005, now 0.001" in entry["error"]
    workdir = tiny_sweep.dir / entry["workdir"]
    assert (workdir / "config.json").read_text() == tiny_sweep.poisoned_config
    assert sorted(p.name for p in workdir.iterdir()) == ["config.json"]
    assert f"[3/3] {entry['name']} failed: WorkdirError" in tiny_sweep.output


def test_script_rerun_skips_finished_runs_and_exits_nonzero_for_the_failed_one(tiny_sweep):
    d = tiny_sweep.dir
    done = [d / e["workdir"] for e in tiny_sweep.manifest["runs"][:2]]
    before = {p: (p / "metrics.jsonl").stat().st_mtime_ns for p in done}
    result = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "sweep.py"), "--config", str(CONFIG), "--sweep_dir", d.name,
         "--gammas=0.001,0.01,0.1", *OVERRIDE_FLAGS, "--skip_analysis"],
        capture_output=True, text=True, timeout=120, cwd=d.parent,  # a relative --sweep_dir
    )
    assert result.returncode == 1, result.stderr
    assert "[1/3] cond_log_var/gamma0.001/seed0 already done, skipped" in result.stdout
    assert "[2/3] cond_log_var/gamma0.01/seed0 already done, skipped" in result.stdout
    assert "Resuming" not in result.stdout and "epoch   1" not in result.stdout
    assert {p: (p / "metrics.jsonl").stat().st_mtime_ns for p in done} == before
    assert "failed: cond_log_var/gamma0.1/seed0: WorkdirError" in result.stderr
    assert "Traceback" not in result.stderr
    manifest = sweep.load_manifest(d)
    assert [e["status"] for e in manifest["runs"]] == ["done", "done", "failed"]
    assert manifest["figures"] == tiny_sweep.manifest["figures"]


def test_script_rejects_a_bad_grid_before_touching_disk(tmp_path):
    result = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "sweep.py"), "--config", str(CONFIG),
         "--sweep_dir", str(tmp_path / "sweep"), "--regularizers=l2,l1"],
        capture_output=True, text=True, timeout=120,
    )
    assert result.returncode != 0
    assert f"error: `regularizers` must each be one of {REGULARIZERS}; got 'l1'." in result.stderr
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "sweep").exists()


def test_population_sweep_trains_members_that_the_analysis_reads(tmp_path):
    config = base_config()
    specs = sweep.expand_grid(config, gammas=(0.01, 0.1), population=True)
    manifest = sweep.run_sweep(config, tmp_path, specs, plot=False, progress=False,
                               analysis_max_examples=MAX_EXAMPLES)
    (entry,) = manifest["runs"]
    assert entry["status"] == "done" and entry["name"] == "cond_log_var/population/seed0"
    assert [m["gamma"] for m in entry["members"]] == [0.01, 0.1]
    member_dirs = [tmp_path / m["workdir"] for m in entry["members"]]
    assert find_run_dirs([tmp_path]) == member_dirs
    for member, workdir in zip(entry["members"], member_dirs):
        assert member["analysis"] == "done"
        assert json.loads((workdir / "config.json").read_text())["objective"]["gamma"] == member["gamma"]
        assert epochs(workdir / "metrics.jsonl") == [1, 2]
        records = read_jsonl(workdir / "information_plane.jsonl")
        assert [r["gamma"] for r in records] == [member["gamma"]] * 2
    assert "figures" not in manifest and not (tmp_path / "figures").exists()


# ------------------------------------------------------------------ stopping and resuming (no training)


def fake_training(calls, results):
    """A stand-in for train.train_and_evaluate: records its calls, returns (or runs) the next result."""

    def train_and_evaluate(config, workdir, **kwargs):
        calls.append("/".join(Path(workdir).parts[-2:]))
        result = results.pop(0)
        return result() if callable(result) else result

    return train_and_evaluate


def test_preempted_run_stops_the_sweep_and_a_rerun_resumes_it(tmp_path, monkeypatch):
    config = base_config()
    specs = sweep.expand_grid(config, gammas=(0.01, 0.1))
    calls = []
    preempted = {"preempted": True, "epoch": 1, "step_in_epoch": 3, "signal": "SIGTERM"}
    finished = {"epoch": 2, "test_accuracy": 0.5}
    monkeypatch.setattr(train, "train_and_evaluate", fake_training(calls, [preempted, finished, finished]))
    manifest = sweep.run_sweep(config, tmp_path, specs, analyze=False, plot=False, progress=False)
    assert calls == ["gamma0.01/seed0"]
    assert manifest["status"] == "stopped"
    assert [e["status"] for e in manifest["runs"]] == ["preempted", "pending"]
    assert sweep.load_manifest(tmp_path) == manifest

    manifest = sweep.run_sweep(config, tmp_path, specs, analyze=False, plot=False, progress=False)
    assert calls == ["gamma0.01/seed0", "gamma0.01/seed0", "gamma0.1/seed0"]
    assert manifest["status"] == "finished"
    assert [e["status"] for e in manifest["runs"]] == ["done", "done"]


def test_signal_between_runs_stops_before_the_next_run(tmp_path, monkeypatch):
    config = base_config()
    specs = sweep.expand_grid(config, gammas=(0.01, 0.1))
    calls = []

    def finished_then_terminated():
        # Arrives outside training, where the sweep's own handler is installed.
        os.kill(os.getpid(), signal.SIGTERM)
        return {"epoch": 2, "test_accuracy": 0.5}

    monkeypatch.setattr(train, "train_and_evaluate", fake_training(calls, [finished_then_terminated]))
    previous = signal.getsignal(signal.SIGTERM)
    manifest = sweep.run_sweep(config, tmp_path, specs, analyze=False, plot=False, progress=False)
    assert signal.getsignal(signal.SIGTERM) is previous
    assert calls == ["gamma0.01/seed0"]
    assert manifest["status"] == "stopped"
    assert [e["status"] for e in manifest["runs"]] == ["done", "pending"]


def test_running_entries_of_a_killed_sweep_are_resumed_and_other_runs_kept(tmp_path, monkeypatch):
    config = base_config()
    specs = sweep.expand_grid(config, gammas=(0.01,))
    killed = {"name": specs[0].name, "workdir": specs[0].name, "status": "running"}
    earlier = {"name": "l2/gamma1/seed0", "workdir": "l2/gamma1/seed0", "status": "done"}
    sweep.save_manifest(tmp_path, {"runs": [earlier, killed], "status": "running"})
    calls = []
    monkeypatch.setattr(train, "train_and_evaluate", fake_training(calls, [{"epoch": 2, "test_accuracy": 0.5}]))
    manifest = sweep.run_sweep(config, tmp_path, specs, analyze=False, plot=False, progress=False)
    assert calls == ["gamma0.01/seed0"]
    assert [(e["name"], e["status"]) for e in manifest["runs"]] == [(specs[0].name, "done")]
    assert manifest["other_runs"] == [earlier]


def test_an_exception_in_one_run_does_not_stop_the_others(tmp_path, monkeypatch):
    config = base_config()
    specs = sweep.expand_grid(config, gammas=(0.01, 0.1))
    calls = []

    def non_finite():
        raise train.NonFiniteError("non-finite loss at step 3")

    monkeypatch.setattr(train, "train_and_evaluate",
                        fake_training(calls, [non_finite, {"epoch": 2, "test_accuracy": 0.5}]))
    manifest = sweep.run_sweep(config, tmp_path, specs, analyze=False, plot=False, progress=False)
    assert calls == ["gamma0.01/seed0", "gamma0.1/seed0"]
    assert [e["status"] for e in manifest["runs"]] == ["failed", "done"]
    assert manifest["runs"][0]["error"] == "NonFiniteError: non-finite loss at step 3"
    assert manifest["status"] == "finished"


def test_an_unreadable_workdir_is_marked_failed_without_training(tmp_path, monkeypatch):
    config = base_config()
    specs = sweep.expand_grid(config, gammas=(np.float32(0.01), 0.1), seeds=(np.int64(0),))
    (tmp_path / specs[0].name).mkdir(parents=True)
    (tmp_path / specs[0].name / "config.json").write_text('{"seed": ')
    calls = []
    monkeypatch.setattr(train, "train_and_evaluate", fake_training(calls, [{"epoch": 2, "test_accuracy": 0.5}]))
    manifest = sweep.run_sweep(config, tmp_path, specs, analyze=False, plot=False, progress=False)
    assert calls == ["gamma0.1/seed0"]
    assert [e["status"] for e in manifest["runs"]] == ["failed", "done"]
    assert manifest["runs"][0]["error"].startswith("ConfigError: ")
    assert "config.json is not valid JSON" in manifest["runs"][0]["error"]
    assert (tmp_path / specs[0].name / "config.json").read_text() == '{"seed": '
