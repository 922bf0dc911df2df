"""Population training: one vmapped step trains one member per γ."""

import json
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ibjax import analysis, train
from ibjax import config as configlib
from ibjax import data as datalib
from ibjax import models
from ibjax.io import read_jsonl

ROOT = Path(__file__).resolve().parents[1]
GAMMAS = (0.001, 0.1, 1.0)


def digits_config(epochs=2):
    config = configlib.from_file(ROOT / "configs" / "digits_condvar.py")
    config.train.num_epochs = epochs
    config.train.progress_bar = False
    return config


def test_member_steps_equal_standalone_steps():
    config = digits_config()
    mesh = train.make_mesh()
    rep = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
    rows = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("data"))
    dataset = datalib.load_dataset("digits")
    model = models.create_model(config.model, 10)
    tx = train.make_optimizer(config, 11)
    single = train.create_train_state(jax.random.key(0), model, tx, dataset.image_shape)
    images, labels = jax.device_put((dataset.x_train, dataset.y_train), rep)
    batches = np.asarray(datalib.epoch_batches(jax.random.key(3), dataset.x_train.shape[0], 128))

    def stack(tree):
        return jax.tree.map(lambda x: jnp.stack([x] * len(GAMMAS)), tree)

    pop_step = train.make_train_step(model, tx, config, 10, mesh, population=True)
    one_step = train.make_train_step(model, tx, config, 10, mesh)
    pop_state = jax.device_put(stack(single), rep)
    # Independent buffers per model: the steps donate their state.
    alone = [jax.device_put(jax.tree.map(jnp.copy, single), rep) for _ in GAMMAS]
    for i in range(5):
        idx = jax.device_put(batches[i], rows)
        pop_state, pop_totals = pop_step(pop_state, jax.device_put(stack(train.zero_totals(config)), rep), images,
                                         labels, idx, jax.random.key(1), jnp.asarray(GAMMAS, jnp.float32))
        for m, gamma in enumerate(GAMMAS):
            alone[m], totals = one_step(alone[m], jax.device_put(train.zero_totals(config), rep), images, labels, idx,
                                        jax.random.key(1), jnp.float32(gamma))
            assert float(pop_totals["loss"][m]) == pytest.approx(float(totals["loss"]), rel=1e-5, abs=1e-6)
    for m in range(len(GAMMAS)):
        for a, b in zip(jax.tree.leaves(alone[m].params), jax.tree.leaves(pop_state.params)):
            # Adam amplifies float reassociation where a gradient is ~0; 1e-5 absolute
            # is two orders below one step (lr 1e-3).
            np.testing.assert_allclose(np.asarray(b[m]), np.asarray(a), rtol=1e-5, atol=1e-5)
    # Different gammas really gave different members.
    first = jax.tree.leaves(pop_state.params)[0]
    assert not np.allclose(first[0], first[-1])


def test_population_members_are_complete_runs_equal_to_standalone_runs(tmp_path):
    config = digits_config()
    config.population.gammas = GAMMAS
    record = train.train_and_evaluate(config, tmp_path / "pop")
    assert [m["gamma"] for m in record["members"]] == list(GAMMAS)
    alone = digits_config()
    alone.objective.gamma = GAMMAS[1]
    train.train_and_evaluate(alone, tmp_path / "alone")

    member_dir = train.member_workdir(tmp_path / "pop", 1, GAMMAS[1])
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
        epochs = [r["epoch"] for r in read_jsonl(train.member_workdir(tmp_path / "pop", i, gamma) / "metrics.jsonl")]
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
