"""Population training: one vmapped step trains one member per γ."""

import json
from pathlib import Path

import pytest

from ibjax import analysis, train
from ibjax import config as configlib
from ibjax import workdir as workdirlib
from ibjax.io import read_jsonl

ROOT = Path(__file__).resolve().parents[1]
GAMMAS = (0.001, 0.1, 1.0)


def digits_config(epochs=2):
    config = configlib.from_file(ROOT / "configs" / "digits_condvar.py")
    config.train.num_epochs = epochs
    config.train.progress_bar = False
    return config


def test_population_members_are_complete_runs_equal_to_standalone_runs(tmp_path):
    config = digits_config()
    config.population.gammas = GAMMAS
    record = train.train_and_evaluate(config, tmp_path / "pop")
    assert [m["gamma"] for m in record["members"]] == list(GAMMAS)
    alone = digits_config()
    alone.objective.gamma = GAMMAS[1]
    train.train_and_evaluate(alone, tmp_path / "alone")

    member_dir = workdirlib.member_workdir(tmp_path / "pop", 1, GAMMAS[1])
    stored = json.loads((member_dir / "config.json").read_text())
    assert stored["objective"]["gamma"] == GAMMAS[1] and stored["population"]["gammas"] == []
    got, want = read_jsonl(member_dir / "metrics.jsonl"), read_jsonl(tmp_path / "alone" / "metrics.jsonl")
    for a, b in zip(got, want):
        for key in ("train_loss", "train_regularizer", "train_accuracy", "test_accuracy", "learning_rate"):
            assert a[key] == pytest.approx(b[key], rel=1e-5, abs=1e-6), (a["epoch"], key)
    # The analysis reads a member like any run.
    records = analysis.analyze_run(member_dir, progress=False, max_examples=300)
    assert [r["epoch"] for r in records] == [1, 2] and records[0]["gamma"] == GAMMAS[1]


def test_population_resumes(tmp_path):
    config = digits_config(epochs=3)
    config.population.gammas = GAMMAS[:2]
    train.train_and_evaluate(config, tmp_path / "pop", stop_after_epoch=1)
    record = train.train_and_evaluate(config, tmp_path / "pop")
    assert record["epoch"] == 3
    for i, gamma in enumerate(GAMMAS[:2]):
        epochs = [r["epoch"] for r in read_jsonl(workdirlib.member_workdir(tmp_path / "pop", i, gamma) / "metrics.jsonl")]
        assert epochs == [1, 2, 3]


def test_population_gammas_are_validated():
    config = digits_config()
    config.population.gammas = (0.1, -1.0)
    with pytest.raises(configlib.ConfigError, match="population.gammas"):
        configlib.validate(config)


def test_a_diverging_member_stops_the_population_and_is_named(tmp_path):
    config = digits_config(epochs=1)
    config.objective.regularizer = "l2"
    config.population.gammas = (0.01, 3e38)  # the second loss overflows float32
    with pytest.raises(train.NonFiniteError, match=r"at step 0 \(epoch 1, member 1 with gamma=3e\+38\)"):
        train.train_and_evaluate(config, tmp_path / "pop")
    assert not (tmp_path / "pop" / "lock").exists()
