"""Population training: one vmapped step trains one member per γ."""

import json
from pathlib import Path

import ml_collections
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


def test_a_population_combines_with_entropy_capping(tmp_path):
    config = digits_config()
    config.capping.schedule = (20.0, 5.0)
    config.population.gammas = GAMMAS[:2]
    record = train.train_and_evaluate(config, tmp_path / "pop")
    alone = digits_config()
    alone.capping.schedule = (20.0, 5.0)
    alone.objective.gamma = GAMMAS[1]
    train.train_and_evaluate(alone, tmp_path / "alone")
    got = read_jsonl(workdirlib.member_workdir(tmp_path / "pop", 1, GAMMAS[1]) / "metrics.jsonl")
    want = read_jsonl(tmp_path / "alone" / "metrics.jsonl")
    assert [r["entropy_cap"] for r in got] == [20.0, 5.0]
    for a, b in zip(got, want):
        # Each member is capped on its own latent, as a standalone run is.
        for key in ("latent_entropy_bound", "capped_train_error", "test_accuracy", "train_loss"):
            assert a[key] == pytest.approx(b[key], rel=1e-4, abs=1e-4), (a["epoch"], key)
        assert a["latent_entropy_bound"] == pytest.approx(a["entropy_cap"], abs=1e-2)
    assert record["members"][0]["gamma"] == GAMMAS[0]


def test_seed_population_members_equal_standalone_runs_with_their_seeds(tmp_path):
    config = digits_config()
    config.seed = 5
    config.population.num_seeds = 3
    record = train.train_and_evaluate(config, tmp_path / "trials")
    assert [m["seed"] for m in record["members"]] == [5, 6, 7]
    alone = digits_config()
    alone.seed = 7
    train.train_and_evaluate(alone, tmp_path / "alone")
    member_dir = workdirlib.member_workdir(tmp_path / "trials", 2, seed=7)
    assert member_dir.name == "member02_seed7"
    stored = json.loads((member_dir / "config.json").read_text())
    assert stored["seed"] == 7 and stored["population"]["num_seeds"] == 0
    got, want = read_jsonl(member_dir / "metrics.jsonl"), read_jsonl(tmp_path / "alone" / "metrics.jsonl")
    assert [r["epoch"] for r in got] == [1, 2]
    for a, b in zip(got, want):
        # Init, data order, noise and evaluation keys all come from the member's own seed.
        for key in ("train_loss", "train_regularizer", "train_accuracy", "test_accuracy", "learning_rate"):
            assert a[key] == pytest.approx(b[key], rel=1e-5, abs=1e-6), (a["epoch"], key)
    # The trials really differ.
    first = read_jsonl(workdirlib.member_workdir(tmp_path / "trials", 0, seed=5) / "metrics.jsonl")
    assert first[-1]["train_loss"] != got[-1]["train_loss"]


def test_gamma_and_seed_population_resumes_with_one_workdir_per_member(tmp_path):
    config = digits_config(epochs=3)
    config.population.gammas = (0.01, 0.1)
    config.population.num_seeds = 2
    train.train_and_evaluate(config, tmp_path / "pop", stop_after_epoch=1)
    record = train.train_and_evaluate(config, tmp_path / "pop")
    assert record["epoch"] == 3
    names = sorted(p.name for p in (tmp_path / "pop").iterdir() if p.is_dir())
    assert names == ["member00_gamma0.01_seed0", "member01_gamma0.01_seed1", "member02_gamma0.1_seed0",
                     "member03_gamma0.1_seed1"]
    for name in names:
        assert [r["epoch"] for r in read_jsonl(tmp_path / "pop" / name / "metrics.jsonl")] == [1, 2, 3]


@pytest.mark.parametrize("value", [-1, 2.5, "8", True])
def test_population_num_seeds_is_validated(value):
    fields = digits_config().to_dict()
    fields["population"]["num_seeds"] = value  # as a hand-edited or JSON-stored config could hold
    config = ml_collections.ConfigDict(fields)
    with pytest.raises(configlib.ConfigError, match=r"config\.population\.num_seeds must be an integer >= 0"):
        configlib.validate(config)


def test_seed_population_of_the_section_7_1_model_equals_standalone_runs(tmp_path):
    """The categorical latent, its MLP decoder and PyTorch's initialisation, as configs/permuted_mnist_categorical.py."""
    import numpy as np

    from ibjax import data as datalib

    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (640, 28, 28, 1), dtype=np.uint8)
    labels = rng.integers(0, 10, 640).astype(np.int32)
    dataset = datalib.Dataset("permuted_mnist", images[:512], labels[:512], images[512:], labels[512:], 10)
    config = configlib.from_file(ROOT / "configs" / "permuted_mnist_categorical.py")
    config.model.encoder_hidden, config.model.decoder_hidden, config.model.latent_dim = (64, 64), (64, 64), 20
    config.train.num_epochs, config.train.progress_bar, config.train.tensorboard = 2, False, False
    assert config.model.init == "pytorch"
    config.population.num_seeds = 2
    train.train_and_evaluate(config, tmp_path / "trials", dataset=dataset)
    for seed in (0, 1):
        alone = configlib.from_file(ROOT / "configs" / "permuted_mnist_categorical.py")
        alone.update_from_flattened_dict({"model.encoder_hidden": (64, 64), "model.decoder_hidden": (64, 64),
                                          "model.latent_dim": 20, "train.num_epochs": 2, "seed": seed,
                                          "train.progress_bar": False, "train.tensorboard": False})
        train.train_and_evaluate(alone, tmp_path / f"alone{seed}", dataset=dataset)
        got = read_jsonl(workdirlib.member_workdir(tmp_path / "trials", seed, seed=seed) / "metrics.jsonl")
        want = read_jsonl(tmp_path / f"alone{seed}" / "metrics.jsonl")
        for a, b in zip(got, want, strict=True):
            for key in ("train_loss", "train_exact_decoder_cross_entropy", "train_decoder_uncertainty",
                        "test_accuracy", "learning_rate"):
                assert a[key] == pytest.approx(b[key], rel=1e-5, abs=1e-6), (seed, a["epoch"], key)
