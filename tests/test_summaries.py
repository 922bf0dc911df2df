"""TensorBoard summaries through tensorboardX and the live information plane (ibjax.summaries).

The event files are read back with TensorBoard's own reader (``EventAccumulator``, the one
its UI uses, with its rule that a restarted run's ``purge_step`` drops the steps it rewrites)
and compared with ``metrics.jsonl``; the in-loop information-plane numbers are compared with
``scripts/analyze.py``'s (``analysis.analyze_run``) on the checkpoint of the same epoch and subset.
"""

import shutil
from pathlib import Path

import numpy as np
import pytest

from ibjax import analysis, summaries, train
from ibjax import config as configlib
from ibjax.io import read_jsonl

event_accumulator = pytest.importorskip("tensorboard.backend.event_processing.event_accumulator")

ROOT = Path(__file__).resolve().parents[1]


def read_events(logdir: Path):
    accumulator = event_accumulator.EventAccumulator(
        str(logdir), size_guidance={event_accumulator.SCALARS: 0, event_accumulator.IMAGES: 0})
    accumulator.Reload()
    return accumulator


def scalars(accumulator) -> dict[str, list[tuple[int, float]]]:
    return {tag: [(e.step, e.value) for e in accumulator.Scalars(tag)] for tag in accumulator.Tags()["scalars"]}


def digits(**train_fields):
    config = configlib.default_config()
    config.train.progress_bar = False
    for key, value in train_fields.items():
        setattr(config.train, key, value)
    return config


def assert_events_match_metrics(run_dir: Path):
    """Every scalar of every metrics.jsonl record is in TensorBoard once, at its epoch, with its value."""
    records = read_jsonl(run_dir / "metrics.jsonl")
    expected: dict[str, list[tuple[int, float]]] = {}
    for record in records:
        for tag, value in summaries.record_scalars(record).items():
            expected.setdefault(tag, []).append((record["epoch"], value))
    got = scalars(read_events(run_dir))
    assert set(got) == set(expected)
    for tag, series in expected.items():
        assert [step for step, _ in got[tag]] == [step for step, _ in series], tag  # one series, in order
        np.testing.assert_allclose([v for _, v in got[tag]], [v for _, v in series], rtol=1e-6, err_msg=tag)
    return records


def test_record_scalars_hand_checked():
    record = {"epoch": 3, "step": 30, "train_loss": 0.5, "train_exact_accuracy": 0.9, "test_accuracy": 0.8,
              "regularizer": "l2", "gamma": 0.1, "flag": True, "members": [1], "nothing": None,
              "information_plane": {"epoch": 3, "gamma": 0.1, "h_z": 2.0, "h_z_given_x": None, "test_accuracy": 0.8,
                                    "h_z_estimator": "mixture", "flags": []}}
    assert summaries.record_scalars(record) == {
        "train/loss": 0.5, "train_exact/accuracy": 0.9, "test/accuracy": 0.8, "run/gamma": 0.1,
        "information_plane/h_z": 2.0}


def test_event_files_before_tensorboardx_are_still_read():
    got = scalars(read_events(ROOT / "tests" / "data" / "events_before_tensorboardx"))
    assert got == {"test/accuracy": [(1, 0.5), (2, 0.75), (3, 0.875)], "train/loss": [(1, 1.5), (2, 1.25), (3, 1.125)]}


@pytest.fixture(scope="module")
def live_run(tmp_path_factory):
    """The digits default, 4 epochs, the information plane every 2 epochs on 300 examples."""
    workdir = tmp_path_factory.mktemp("live") / "run"
    train.train_and_evaluate(digits(num_epochs=4, analyze_every=2, analyze_examples=300), workdir)
    return workdir


def test_scalars_and_the_information_plane_reach_tensorboard(live_run):
    records = assert_events_match_metrics(live_run)
    assert [("information_plane" in r) for r in records] == [False, True, False, True]
    events = read_events(live_run)
    assert [e.step for e in events.Scalars("information_plane/preserved_information")] == [2, 4]
    assert [e.step for e in events.Images("information_plane")] == [2, 4]
    image = events.Images("information_plane")[-1]
    assert image.width > 100 and image.height > 100 and image.encoded_image_string[:4] == b"\x89PNG"


def test_in_loop_numbers_equal_analyze_on_the_same_checkpoint(live_run, tmp_path):
    copy = tmp_path / "run"
    shutil.copytree(live_run, copy)
    analysed = {r["epoch"]: r for r in analysis.analyze_run(copy, max_examples=300, progress=False)}
    in_loop = {r["epoch"]: r["information_plane"] for r in read_jsonl(live_run / "metrics.jsonl")
               if "information_plane" in r}
    assert set(in_loop) == {2, 4} and set(in_loop) <= set(analysed)
    for epoch, record in in_loop.items():
        assert set(record) == set(analysed[epoch])
        assert record["h_z_estimator"].startswith("mixture") and record["flags"] == analysed[epoch]["flags"]
        for key, value in record.items():
            if isinstance(value, float):
                np.testing.assert_allclose(value, analysed[epoch][key], rtol=1e-6, atol=1e-9, err_msg=key)
            else:
                assert value == analysed[epoch][key], key


def test_a_crashed_run_resumes_into_one_series_per_scalar(tmp_path):
    workdir = tmp_path / "run"
    config = digits(num_epochs=4, analyze_every=2, analyze_examples=200)
    config.checkpoint.every_epochs = 2
    train.train_and_evaluate(config, workdir, stop_after_epoch=3)  # epoch 3's records and events are written...
    shutil.rmtree(workdir / "checkpoints" / "3")  # ...but, as after a crash, its checkpoint is not
    train.train_and_evaluate(config, workdir)  # resumes from epoch 2 and writes 3 and 4 again
    assert len(list(workdir.glob("events.out.tfevents*"))) == 2
    records = assert_events_match_metrics(workdir)
    assert [r["epoch"] for r in records] == [1, 2, 3, 4]
    assert [e.step for e in read_events(workdir).Images("information_plane")] == [2, 4]


def test_a_population_draws_one_figure_beside_its_members(tmp_path):
    config = digits(num_epochs=1, analyze_every=1, analyze_examples=200)
    config.population.gammas = (0.001, 0.1)
    train.train_and_evaluate(config, tmp_path / "pop")
    members = sorted(p for p in (tmp_path / "pop").iterdir() if p.name.startswith("member"))
    assert len(members) == 2
    gammas = []
    for member in members:
        (record,) = assert_events_match_metrics(member)
        gammas.append(record["information_plane"]["gamma"])
        assert read_events(member).Tags()["images"] == []
    assert gammas == [0.001, 0.1]
    assert [e.step for e in read_events(tmp_path / "pop").Images("information_plane")] == [1]


def test_switched_off_writes_no_event_file_and_no_plane(tmp_path):
    train.train_and_evaluate(digits(num_epochs=2, tensorboard=False, analyze_every=0), tmp_path / "quiet")
    assert not list((tmp_path / "quiet").glob("events.out.tfevents*"))
    assert all("information_plane" not in r for r in read_jsonl(tmp_path / "quiet" / "metrics.jsonl"))


def test_analyze_fields_are_checked_and_not_part_of_a_run():
    config = digits(analyze_every=-1)
    with pytest.raises(configlib.ConfigError, match=r"config.train.analyze_every must be an integer >= 0"):
        configlib.validate(config)
    from ibjax import workdir as workdirlib

    assert workdirlib.run_differences(configlib.to_dict(digits(analyze_every=0)),
                                      configlib.to_dict(digits(analyze_every=3, analyze_examples=50))) == []


def test_live_plane_benchmark_prints_the_cost_row():
    import sys

    sys.path.insert(0, str(ROOT))
    from benchmarks import live_plane

    report = live_plane.main(["--rows", "digits", "--repeats", "1"])
    (row,) = [line for line in report.splitlines() if line.startswith("| digits")]
    cells = [c.strip() for c in row.strip("|").split("|")]
    assert cells[1] == str(configlib.ANALYZE_EVERY) and cells[2] == "1000"
    assert all(float(c) > 0 for c in cells[3:6]) and all(c.endswith("%") for c in cells[6:])
    assert live_plane.cost(0.1, 0.05, 0.2, 10) == pytest.approx((0.05 + 0.2 * 1 / 30) / 1.0)
