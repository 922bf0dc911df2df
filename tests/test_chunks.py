"""K training steps per compiled call: the chunked loop computes what the per-step loop computes."""

from pathlib import Path

import jax
import numpy as np
import pytest

from ibjax import config as configlib
from ibjax import data as datalib
from ibjax import experiment, train
from ibjax.io import read_jsonl

ROOT = Path(__file__).resolve().parents[1]
TIMING_KEYS = {"examples_per_sec", "epoch_seconds", "compile_seconds"}


def digits_config(**fields):
    config = configlib.from_file(ROOT / "configs" / "digits_condvar.py")
    config.train.progress_bar = False
    config.train.tensorboard = False
    for dotted, value in fields.items():
        section, name = dotted.split("__")
        config[section][name] = value
    return config


def assert_same_records(got, want, rel):
    assert [r["epoch"] for r in got] == [r["epoch"] for r in want]
    for a, b in zip(got, want):
        assert a.keys() - TIMING_KEYS == b.keys() - TIMING_KEYS
        for key in b.keys() - TIMING_KEYS:
            expected = pytest.approx(b[key], rel=rel, abs=rel) if isinstance(b[key], float) else b[key]
            assert a[key] == expected, (b["epoch"], key)


@pytest.mark.parametrize("requested, batch_size, expected", [
    (0, 64, 22), (1, 64, 1), (5, 64, 5), (7, 64, 6), (100, 64, 22), (4, 128, 4), (6, 128, 6), (10, 128, 6)])
def test_calls_share_the_epoch_evenly(requested, batch_size, expected):
    # 1,437 training digits: 22 steps an epoch at batch 64, 11 at batch 128. K = 7 on 22 steps
    # takes 4 calls, shared as 6 steps each (24 slots, 2 masked), not 7 + 7 + 7 + 1 padded to 7.
    run = experiment.setup(digits_config(train__steps_per_call=requested, train__batch_size=batch_size))
    assert run.steps_per_call == expected


def test_convolutional_encoders_train_one_step_a_call_on_the_cpu():
    # Inside a K-step call's loop XLA:CPU computes a convolution's weight gradient ~40x slower.
    config = configlib.from_file(ROOT / "configs" / "mnist_dropout_cnn.py")
    images = np.zeros((256, 28, 28, 1), np.uint8)
    labels = np.arange(256, dtype=np.int32) % 10
    run = experiment.setup(config, dataset=datalib.Dataset("mnist", images, labels, images, labels, 10))
    assert jax.default_backend() == "cpu" and config.train.steps_per_call > 1 and run.steps_per_call == 1


def test_chunked_run_equals_per_step_run_across_a_resume_in_the_middle_of_a_chunk(tmp_path):
    # 22 steps an epoch. Per step (K = 1) for 3 epochs, against K = 7 (4 calls of 6, the last
    # one masked by 2) stopped at step 30, i.e. epoch 2 after the call ending at step 12 of 22,
    # then resumed with K = 5, whose calls (12-17-22) do not line up with the first run's.
    per_step = digits_config(train__batch_size=64, train__num_epochs=3, train__steps_per_call=1)
    train.train_and_evaluate(per_step, tmp_path / "per_step")

    chunked = digits_config(train__batch_size=64, train__num_epochs=3, train__steps_per_call=7)
    stopped = train.train_and_evaluate(chunked, tmp_path / "chunked", stop_after_step=30)
    assert stopped["preempted"] and (stopped["epoch"], stopped["step_in_epoch"]) == (2, 12)
    assert [r["epoch"] for r in read_jsonl(tmp_path / "chunked" / "metrics.jsonl")] == [1]

    resumed = digits_config(train__batch_size=64, train__num_epochs=3, train__steps_per_call=5)
    record = train.train_and_evaluate(resumed, tmp_path / "chunked")  # steps_per_call is not the run's identity
    assert record["epoch"] == 3 and record["step"] == 66
    assert_same_records(read_jsonl(tmp_path / "chunked" / "metrics.jsonl"),
                        read_jsonl(tmp_path / "per_step" / "metrics.jsonl"), rel=1e-4)


def test_a_seed_population_trains_in_chunks_as_its_members_do_alone(tmp_path):
    # Two trials as one population in whole-epoch calls against each trial alone, per step.
    population = digits_config(train__num_epochs=2, train__steps_per_call=0)
    population.population.num_seeds = 2
    train.train_and_evaluate(population, tmp_path / "trials")
    for i, seed in enumerate((0, 1)):
        alone = digits_config(train__num_epochs=2, train__steps_per_call=1)
        alone.seed = seed
        train.train_and_evaluate(alone, tmp_path / f"alone{seed}")
        member = tmp_path / "trials" / f"member{i:02d}_seed{seed}"
        assert_same_records(read_jsonl(member / "metrics.jsonl"), read_jsonl(tmp_path / f"alone{seed}" / "metrics.jsonl"),
                            rel=1e-4)


def test_masked_tail_steps_change_nothing():
    # A call that starts past the epoch's end is all tail: the state and totals pass through.
    run = experiment.setup(digits_config(train__steps_per_call=4))
    state = run.init_state()
    images, labels = run.device_data()[:2]
    batches = run.epoch_batches(1)
    steps = run.train_steps()
    before = jax.device_get(state)
    totals = run.zero_totals()
    end = experiment.put(np.int32(run.steps_per_epoch), run.replicated)
    after, totals, position = steps(state, totals, images, labels, batches, end, run.keys()["train"], run.gammas())
    assert int(position) == run.steps_per_epoch + run.steps_per_call
    for a, b in zip(jax.tree.leaves(jax.device_get(after)), jax.tree.leaves(before)):
        np.testing.assert_array_equal(a, b)
    assert float(jax.device_get(totals)["steps"][0]) == 0.0


@pytest.mark.parametrize("value", [-1, True])
def test_steps_per_call_is_checked(value):
    config = digits_config()
    config.train.steps_per_call = value
    with pytest.raises(configlib.ConfigError, match="config.train.steps_per_call"):
        configlib.validate(config)
