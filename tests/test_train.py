"""End-to-end tests of the training loop, configs and scripts/train.py."""

import json
import os
import subprocess
import sys
from pathlib import Path

import ml_collections
import numpy as np
import pytest

from ibjax import config as configlib
from ibjax import models, train

ROOT = Path(__file__).resolve().parents[1]
MNIST_DIR = ROOT.parent / "shared" / "data" / "mnist"


def digits_config(**overrides) -> ml_collections.ConfigDict:
    config = configlib.from_file(ROOT / "configs" / "digits_condvar.py")
    config.train.progress_bar = False
    for dotted, value in overrides.items():
        section, field = dotted.split("__")
        config[section][field] = value
    return config


def read_metrics(workdir):
    return [json.loads(line) for line in (Path(workdir) / "metrics.jsonl").read_text().splitlines() if line]


# ------------------------------------------------------------------ configs


@pytest.mark.parametrize("path", sorted((ROOT / "configs").glob("*.py")), ids=lambda p: p.stem)
def test_every_config_validates_and_builds_its_model(path):
    config = configlib.from_file(path)
    configlib.validate(config, num_devices=4)
    model = models.create_model(config.model, 10)
    assert model.encoder == config.model.encoder


@pytest.mark.parametrize(
    "field, value, message",
    [
        ("objective.regularizer", "l1", "'none', 'l2', 'log_var', 'cond_log_var'"),
        ("objective.gamma", -1.0, "config.objective.gamma"),
        ("data.name", "imagenet", "'digits', 'mnist', 'permuted_mnist', 'cifar10'"),
        ("model.encoder", "vgg", "'mlp', 'dropout_cnn', 'resnet18'"),
        ("train.batch_size", 130, "divisible by the 4 devices"),
        ("objective.loss", "decoder_uncertainty", "categorical"),
    ],
)
def test_config_validation_names_field_and_choices(field, value, message):
    config = digits_config()
    section, name = field.split(".")
    config[section][name] = value
    with pytest.raises(configlib.ConfigError, match=message.replace("(", "\\(").replace("[", "\\[")):
        configlib.validate(config, num_devices=4)


def test_script_rejects_bad_value_before_touching_disk(tmp_path):
    workdir = tmp_path / "run"
    result = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "train.py"), "--config", str(ROOT / "configs" / "digits_condvar.py"),
         "--workdir", str(workdir), "--config.objective.regularizer=l3"],
        capture_output=True, text=True, timeout=120,
    )
    assert result.returncode != 0
    assert "config.objective.regularizer must be one of" in result.stderr
    assert "cond_log_var" in result.stderr
    assert "Traceback" not in result.stderr
    assert not workdir.exists()


# ------------------------------------------------------------------ training


def test_quick_start_trains_digits_above_90_percent(tmp_path):
    record = train.train_and_evaluate(digits_config(), tmp_path / "run")
    assert record["epoch"] == 40
    assert record["test_accuracy"] > 0.9
    metrics = read_metrics(tmp_path / "run")
    assert [m["epoch"] for m in metrics] == list(range(1, 41))
    assert metrics[-1]["train_decoder_cross_entropy"] < metrics[0]["train_decoder_cross_entropy"]
    for key in ("train_accuracy", "test_accuracy", "train_decoder_cross_entropy", "train_prediction_cross_entropy",
                "train_regularizer", "training_error_bound", "learning_rate", "examples_per_sec"):
        assert np.isfinite(metrics[-1][key]), key
    # S = 1: the two cross-entropies coincide (Observation 2).
    assert metrics[-1]["train_prediction_cross_entropy"] == pytest.approx(metrics[-1]["train_decoder_cross_entropy"], rel=1e-5)
    assert json.loads((tmp_path / "run" / "config.json").read_text())["objective"]["regularizer"] == "cond_log_var"
    assert sorted(int(p.name) for p in (tmp_path / "run" / "checkpoints").iterdir() if p.name.isdigit()) == list(range(1, 41))


def test_resume_equals_uninterrupted_run(tmp_path):
    config = digits_config(train__num_epochs=4)
    train.train_and_evaluate(config, tmp_path / "whole")
    train.train_and_evaluate(config, tmp_path / "split", stop_after_epoch=2)
    assert [m["epoch"] for m in read_metrics(tmp_path / "split")] == [1, 2]
    train.train_and_evaluate(config, tmp_path / "split")
    whole, split = read_metrics(tmp_path / "whole"), read_metrics(tmp_path / "split")
    assert [m["epoch"] for m in split] == [1, 2, 3, 4]
    for a, b in zip(whole, split):
        for key in ("train_loss", "train_accuracy", "test_accuracy", "train_regularizer", "learning_rate"):
            assert a[key] == pytest.approx(b[key], rel=1e-6, abs=1e-7), (a["epoch"], key)
    # A finished run started again does nothing and keeps its metrics.
    assert train.train_and_evaluate(config, tmp_path / "split") == {}
    assert len(read_metrics(tmp_path / "split")) == 4


def test_refuses_workdir_of_a_different_config(tmp_path):
    config = digits_config(train__num_epochs=1)
    train.train_and_evaluate(config, tmp_path / "run")
    before = sorted(p.name for p in (tmp_path / "run" / "checkpoints").iterdir())
    other = digits_config(train__num_epochs=1, objective__gamma=0.5)
    with pytest.raises(train.WorkdirError, match="objective.gamma: stored 0.01, now 0.5"):
        train.train_and_evaluate(other, tmp_path / "run")
    longer = digits_config(train__num_epochs=2)
    with pytest.raises(train.WorkdirError, match="allow_num_epochs_change"):
        train.train_and_evaluate(longer, tmp_path / "run")
    assert sorted(p.name for p in (tmp_path / "run" / "checkpoints").iterdir()) == before
    record = train.train_and_evaluate(longer, tmp_path / "run", allow_num_epochs_change=True)
    assert record["epoch"] == 2


def test_categorical_latent_records_the_three_metrics(tmp_path):
    config = digits_config(train__num_epochs=2)
    config.model.latent = "categorical"
    config.model.noise = False
    config.model.latent_dim = 16
    config.model.decoder = "categorical_mlp"
    config.model.decoder_hidden = (64, 64)
    config.objective.regularizer = "none"
    for loss in ("cross_entropy", "decoder_uncertainty"):
        config.objective.loss = loss
        record = train.train_and_evaluate(config, tmp_path / loss)
        h, dce, pce = (record["train_decoder_uncertainty"], record["train_exact_decoder_cross_entropy"],
                       record["train_exact_prediction_cross_entropy"])
        # H[Y|Z] <= H_Θ[Y|Z] and H_Θ[Y|X] <= H_Θ[Y|Z] (Observations 2 and 4).
        assert h <= dce + 1e-4 and pce <= dce + 1e-4
        if loss == "decoder_uncertainty":
            # The optimal decoder closes the gap (section 5.4).
            assert dce == pytest.approx(h, rel=1e-3, abs=1e-4)
        assert 0 < record["test_accuracy"] <= 1


@pytest.mark.skipif(not MNIST_DIR.exists(), reason="../shared/data/mnist is absent")
def test_real_mnist_idx_mlp_above_90_percent(tmp_path):
    config = configlib.default_config()
    config.data.name = "mnist"
    config.data.source = "idx"
    config.data.path = str(MNIST_DIR)
    config.data.split_at = 8000
    config.model.encoder_hidden = (256, 256)
    config.model.latent_dim = 64
    config.train.num_epochs = 3
    config.train.learning_rate = 1e-3
    config.train.progress_bar = False
    record = train.train_and_evaluate(config, tmp_path / "run")
    assert record["test_accuracy"] > 0.9


def test_quick_start_command_with_a_relative_workdir(tmp_path):
    result = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "train.py"), "--config", str(ROOT / "configs" / "digits_condvar.py"),
         "--workdir", "runs/digits", "--config.train.num_epochs=2"],
        capture_output=True, text=True, timeout=300, cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert "epoch   2 |" in result.stdout
    assert (tmp_path / "runs" / "digits" / "checkpoints" / "2").is_dir()


def test_headline_cifar_command_without_data_fails_in_one_line_before_touching_disk(tmp_path):
    workdir = tmp_path / "cifar"
    result = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "train.py"), "--config", str(ROOT / "configs" / "cifar_condvar.py"),
         "--workdir", str(workdir)],
        capture_output=True, text=True, timeout=300,
        # No network, whatever this machine has: every request goes to a proxy on a closed port.
        env={**os.environ, "TFDS_DATA_DIR": str(tmp_path / "tfds"), "http_proxy": "http://127.0.0.1:9",
             "https_proxy": "http://127.0.0.1:9", "no_proxy": ""},
    )
    assert result.returncode != 0
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error: tfds data set 'cifar10' is not prepared in " + str(tmp_path / "tfds"))
    assert "--config.data.source=cifar_pickle|cifar_binary|npz" in lines[0] and "TFDS_DATA_DIR" in lines[0]
    assert "no network: cannot reach www.cs.toronto.edu" in lines[0]
    assert not workdir.exists()


def test_decoder_uncertainty_with_the_training_sets_joint_trains_and_resumes(tmp_path):
    config = digits_config(train__num_epochs=3)
    config.model.latent = "categorical"
    config.model.noise = False
    config.model.latent_dim = 16
    config.model.decoder = "categorical_mlp"
    config.model.decoder_hidden = (64, 64)
    config.objective.regularizer = "none"
    config.objective.loss = "decoder_uncertainty"
    config.objective.joint = "epoch"
    train.train_and_evaluate(config, tmp_path / "whole")
    train.train_and_evaluate(config, tmp_path / "split", stop_after_epoch=1)
    train.train_and_evaluate(config, tmp_path / "split")
    whole, split = read_metrics(tmp_path / "whole"), read_metrics(tmp_path / "split")
    for a, b in zip(whole, split):
        for key in ("train_loss", "train_data_decoder_uncertainty", "train_decoder_uncertainty", "test_accuracy"):
            assert a[key] == pytest.approx(b[key], rel=1e-5, abs=1e-6), (a["epoch"], key)
    last = whole[-1]
    # The loss is the data-level estimate; the batch plug-in and the exact full-data value are recorded beside it.
    assert last["train_loss"] == pytest.approx(last["train_data_decoder_uncertainty"], rel=1e-6)
    assert {"train_batch_decoder_uncertainty", "train_decoder_uncertainty"} <= set(last)
    assert last["train_decoder_uncertainty"] < whole[0]["train_decoder_uncertainty"]
