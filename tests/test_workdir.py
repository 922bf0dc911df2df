"""The workdir: config identity, claiming only after every check, old checkpoints, member directories."""

import json
import shutil
from pathlib import Path

import jax
import pytest

import ibjax
from ibjax import config as configlib
from ibjax import experiment, train
from ibjax import workdir as workdirlib
from ibjax.io import read_jsonl

ROOT = Path(__file__).resolve().parents[1]
FIXTURE = ROOT / "tests" / "data" / "checkpoint_9e741c0"


def digits_config(**overrides):
    config = configlib.from_file(ROOT / "configs" / "digits_condvar.py")
    config.train.progress_bar = False
    config.train.num_epochs = 1
    for dotted, value in overrides.items():
        section, field = dotted.split("__")
        config[section][field] = value
    return config


@pytest.mark.parametrize("field, value, message", [
    ("train__batch_size", 4096, "batch_size=4096 exceeds the 1438 training examples"),
    ("train__plateau_factor", 1.0, r"plateau_factor must be in \(0, 1\)"),
    ("train__plateau_examples", -1, r"config\.train\.plateau_examples must be an integer >= 0; got -1"),
    ("model__init", "torch", r"config\.model\.init must be one of \('flax', 'pytorch'\); got 'torch'"),
    ("data__num_train", -3, r"config\.data\.num_train must be an integer >= 0; got -3"),
    ("data__num_train", 5000, r"config\.data\.num_train=5000 exceeds the 1438 training examples"),
])
def test_a_run_that_fails_its_checks_leaves_the_workdir_reusable(tmp_path, field, value, message):
    workdir = tmp_path / "run"
    with pytest.raises(configlib.ConfigError, match=message):
        train.train_and_evaluate(digits_config(**{field: value}), workdir)
    assert not (workdir / "config.json").exists() and not (workdir / "checkpoints").exists()
    # The corrected config trains in the same workdir: nothing claimed it.
    assert train.train_and_evaluate(digits_config(), workdir)["epoch"] == 1


def test_a_population_that_fails_its_checks_claims_no_member(tmp_path):
    config = digits_config(train__batch_size=4096)
    config.population.gammas = (0.1, 1.0)
    with pytest.raises(configlib.ConfigError, match="batch_size"):
        train.train_and_evaluate(config, tmp_path / "pop")
    assert not list(tmp_path.rglob("config.json"))


def test_run_differences_has_one_ignore_list():
    stored = configlib.to_dict(digits_config())
    assert workdirlib.run_differences(stored, configlib.to_dict(digits_config(train__progress_bar=True))) == []
    longer = configlib.to_dict(digits_config(train__num_epochs=5))
    assert workdirlib.run_differences(stored, longer) == ["train.num_epochs: stored 1, now 5"]
    assert workdirlib.run_differences(stored, longer, allow_num_epochs_change=True) == []
    # A field added to ibjax after a run was written takes its default: still the same run.
    del stored["capping"]["num_examples"]
    assert workdirlib.run_differences(stored, configlib.to_dict(digits_config())) == []
    # A field whose default changed after a run was written takes the value the run had then.
    for section, field in (("model", "init"), ("train", "plateau_examples")):
        del stored[section][field]
    then = configlib.to_dict(digits_config(model__init="flax", train__plateau_examples=0))
    assert workdirlib.run_differences(stored, then) == []
    assert workdirlib.run_differences(stored, configlib.to_dict(digits_config(train__plateau_examples=60000))) == [
        "train.plateau_examples: stored 0, now 60000"]
    assert workdirlib.IGNORED_ON_RESUME == ("train.progress_bar", "train.tensorboard", "train.steps_per_call",
                                            "distributed", "data.url_checksums", "train.analyze_every",
                                            "train.analyze_examples")
    distributed = configlib.to_dict(digits_config())
    distributed["distributed"] = True
    assert workdirlib.run_differences(stored, distributed) == []
    mirrored = configlib.to_dict(digits_config())
    mirrored["data"]["url_checksums"] = "/mirror/url_checksums.txt"  # where verified files come from
    assert workdirlib.run_differences(stored, mirrored) == []


def test_member_workdirs_are_named_by_index_and_gamma(tmp_path):
    assert workdirlib.member_workdir(tmp_path, 3, 0.001) == tmp_path / "member03_gamma0.001"
    config = digits_config()
    config.population.gammas = (0.001, 1.0)
    members = experiment.member_configs(config)
    assert [m.objective.gamma for m in members] == [0.001, 1.0]
    assert all(tuple(m.population.gammas) == () for m in members)
    single = digits_config()
    assert experiment.member_configs(single) == (single,)  # a single run is a population of one


def _fixture_config():
    return configlib.load_stored(FIXTURE / "run" / "config.json")


def test_a_checkpoint_written_by_9e741c0_resumes_and_matches_that_version(tmp_path):
    workdir = tmp_path / "run"
    shutil.copytree(FIXTURE / "run", workdir)
    config = _fixture_config()
    config.train.progress_bar = False
    record = train.train_and_evaluate(config, workdir)
    assert record["epoch"] == 2
    got = read_jsonl(workdir / "metrics.jsonl")
    want = read_jsonl(FIXTURE / "uninterrupted_metrics.jsonl")
    assert [r["epoch"] for r in got] == [1, 2]
    # Epoch 2 continued from 9e741c0's checkpoint equals 9e741c0's own uninterrupted epoch 2.
    for key in ("train_loss", "train_accuracy", "train_regularizer", "test_accuracy", "learning_rate", "step"):
        assert got[1][key] == pytest.approx(want[1][key], rel=1e-5, abs=1e-6), key
    with experiment.restore_run(workdir) as run:
        _, meta = run.restore(2)
    assert meta["ibjax_version"] == ibjax.__version__


def test_a_checkpoint_that_does_not_fit_is_refused_naming_its_version(tmp_path):
    config = _fixture_config()
    config.model.latent_dim = 5  # another train state than the one stored
    run = experiment.setup(config, mesh=jax.sharding.Mesh(jax.devices()[:1], ("data",)))
    manager = workdirlib.checkpoint_manager(FIXTURE / "run", read_only=True)
    try:
        with pytest.raises(workdirlib.WorkdirError, match=r"written by ibjax 0\.1\.0 or earlier.*does not fit"):
            workdirlib.restore_state(manager, 1, run.state_template())
    finally:
        manager.close()


def test_config_json_of_the_fixture_is_refused_for_another_config(tmp_path):
    workdir = tmp_path / "run"
    shutil.copytree(FIXTURE / "run", workdir)
    other = _fixture_config()
    other.objective.gamma = 0.5
    with pytest.raises(workdirlib.WorkdirError, match="objective.gamma: stored 0.01, now 0.5"):
        train.train_and_evaluate(other, workdir)
    assert json.loads((workdir / "config.json").read_text())["objective"]["gamma"] == 0.01
