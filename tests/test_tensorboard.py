"""TensorBoard event files written without TensorFlow (ibjax.tensorboard).

The byte format is checked against independent code in this file (a bitwise
CRC-32C and hand-decoding with ``struct``), not against the module's own
helpers, and, when the ``tensorboard`` package is installed, against
TensorBoard's own readers.
"""

import math
import os
import re
import socket
import struct

import numpy as np
import pytest

from ibjax import tensorboard as tb


# ---------------------------------------------------------------------------
# Independent references
# ---------------------------------------------------------------------------


def reference_crc32c(data: bytes) -> int:
    """Bit-at-a-time CRC-32C (reflected Castagnoli polynomial), no table."""
    crc = 0xFFFFFFFF
    for byte in data:
        crc ^= byte
        for _ in range(8):
            crc = (crc >> 1) ^ (0x82F63B78 & -(crc & 1))
    return crc ^ 0xFFFFFFFF


def reference_masked(data: bytes) -> int:
    crc = reference_crc32c(data)
    return ((((crc >> 15) | (crc << 17)) & 0xFFFFFFFF) + 0xA282EAD8) % 2**32


def f32(x: float) -> float:
    return struct.unpack("<f", struct.pack("<f", x))[0]


def split_records(raw: bytes) -> list[bytes]:
    """Hand-decodes TFRecord framing, asserting both masked CRCs."""
    records, pos = [], 0
    while pos < len(raw):
        header = raw[pos:pos + 8]
        (length,) = struct.unpack("<Q", header)
        (length_crc,) = struct.unpack("<I", raw[pos + 8:pos + 12])
        assert length_crc == reference_masked(header)
        data = raw[pos + 12:pos + 12 + length]
        assert len(data) == length
        (data_crc,) = struct.unpack("<I", raw[pos + 12 + length:pos + 16 + length])
        assert data_crc == reference_masked(data)
        records.append(data)
        pos += 16 + length
    assert pos == len(raw)
    return records


def event_files(directory):
    return sorted(p for p in directory.iterdir() if "tfevents" in p.name)


def realistic_records():
    """Three epochs of metrics.jsonl records of a categorical run."""
    records = []
    for epoch in (1, 2, 3):
        records.append({
            "epoch": epoch,
            "step": 62 * epoch,
            "train_loss": 1.0 / epoch,
            "train_decoder_cross_entropy": 0.9 / epoch,
            "train_prediction_cross_entropy": 0.8 / epoch,
            "train_regularizer": 0.123456789 * epoch,
            "train_accuracy": 0.9 + 0.01 * epoch,
            "train_gradient_norm": math.nan if epoch == 2 else 3.5 * epoch,
            "training_error_bound": 0.63 / epoch,
            "train_decoder_uncertainty": 0.2 / epoch,
            "train_exact_decoder_cross_entropy": 0.25 / epoch,
            "train_exact_prediction_cross_entropy": 0.3 / epoch,
            "train_exact_accuracy": 0.95 + 0.001 * epoch,
            "test_accuracy": 0.97 - 0.01 / epoch,
            "test_decoder_cross_entropy": 0.4 / epoch,
            "test_prediction_cross_entropy": 0.35 / epoch,
            "learning_rate": 1e-4 * epoch,
            "gamma": 0.1,
            "regularizer": "cond_log_var",
            "entropy_cap": 0.5,
            "capped_train_error": 0.0,
            "examples_per_sec": 123456.0 + epoch,
            "compile_seconds": 12,
            "diverged": False,
            "note": None,
        })
    return records


EXPECTED_TAGS = {
    "train_loss": "train/loss",
    "train_decoder_cross_entropy": "train/decoder_cross_entropy",
    "train_prediction_cross_entropy": "train/prediction_cross_entropy",
    "train_regularizer": "train/regularizer",
    "train_accuracy": "train/accuracy",
    "train_gradient_norm": "train/gradient_norm",
    "training_error_bound": "run/training_error_bound",
    "train_decoder_uncertainty": "train/decoder_uncertainty",
    "train_exact_decoder_cross_entropy": "train_exact/decoder_cross_entropy",
    "train_exact_prediction_cross_entropy": "train_exact/prediction_cross_entropy",
    "train_exact_accuracy": "train_exact/accuracy",
    "test_accuracy": "test/accuracy",
    "test_decoder_cross_entropy": "test/decoder_cross_entropy",
    "test_prediction_cross_entropy": "test/prediction_cross_entropy",
    "learning_rate": "run/learning_rate",
    "gamma": "run/gamma",
    "entropy_cap": "run/entropy_cap",
    "capped_train_error": "run/capped_train_error",
    "examples_per_sec": "run/examples_per_sec",
    "compile_seconds": "run/compile_seconds",
}


def expected_scalars(records):
    expected = {}
    for record in records:
        for key, tag in EXPECTED_TAGS.items():
            expected.setdefault(tag, []).append((record["epoch"], float(record[key])))
    return expected


def assert_scalars_equal(actual, expected):
    assert set(actual) == set(expected)
    for tag, points in expected.items():
        assert [s for s, _ in actual[tag]] == [s for s, _ in points], tag
        for (_, got), (_, want) in zip(actual[tag], points):
            assert got == pytest.approx(want, rel=2**-23, nan_ok=True), tag


@pytest.fixture
def written_run(tmp_path):
    records = realistic_records()
    with tb.ScalarWriter(tmp_path) as writer:
        for record in records:
            tb.write_record_scalars(writer, record)
    return tmp_path, writer.path, records


# ---------------------------------------------------------------------------
# CRC-32C
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("data, crc", [
    (b"", 0),
    (b"123456789", 0xE3069283),
    (bytes(32), 0x8A9136AA),            # RFC 3720 B.4
    (b"\xff" * 32, 0x62A8AB43),         # RFC 3720 B.4
    (bytes(range(32)), 0x46DD794E),     # RFC 3720 B.4
])
def test_crc32c_known_vectors(data, crc):
    assert tb.crc32c(data) == crc
    assert reference_crc32c(data) == crc


def test_crc32c_and_mask_match_bitwise_reference():
    data = bytes((i * 37 + 11) % 256 for i in range(300))
    for n in (0, 1, 7, 8, 12, 255, 300):
        assert tb.crc32c(data[:n]) == reference_crc32c(data[:n])
        assert tb.masked_crc32c(data[:n]) == reference_masked(data[:n])
    # The mask by hand: crc32c(b"123456789") = 0xE3069283; rotated right by 15
    # bits it is 0x2507C60D (high part 0xE3069283 >> 15 = 0x1C60D, low 15 bits
    # 0x1283 moved to the top: 0x1283 << 17 = 0x25060000); adding 0xA282EAD8
    # mod 2**32 gives 0xC78AB0E5.
    assert ((0xE3069283 >> 15) | (0xE3069283 << 17)) & 0xFFFFFFFF == 0x2507C60D
    assert (0x2507C60D + 0xA282EAD8) % 2**32 == 0xC78AB0E5
    assert tb.masked_crc32c(b"123456789") == 0xC78AB0E5 == reference_masked(b"123456789")


# ---------------------------------------------------------------------------
# Round trip and file layout
# ---------------------------------------------------------------------------


def test_round_trip_of_metrics_records(written_run):
    logdir, path, records = written_run
    assert event_files(logdir) == [path]
    assert_scalars_equal(tb.read_scalars(logdir), expected_scalars(records))
    assert_scalars_equal(tb.read_scalars(path), expected_scalars(records))
    assert math.isnan(tb.read_scalars(path)["train/gradient_norm"][1][1])  # NaN kept


def test_file_name_pattern(written_run):
    _, path, _ = written_run
    pattern = (r"events\.out\.tfevents\.(\d+)\." + re.escape(socket.gethostname())
               + r"\." + str(os.getpid()) + r"\.ibjax")
    match = re.fullmatch(pattern, path.name)
    assert match, path.name
    assert abs(int(match.group(1)) - path.stat().st_mtime) < 3600


def test_first_record_is_file_version(written_run):
    _, path, _ = written_run
    records = split_records(path.read_bytes())
    assert len(records) == 4  # file_version + one Event per epoch
    first = records[0]
    assert first[0] == 0x09  # field 1 (wall_time), wire type 1 (64-bit)
    (wall_time,) = struct.unpack("<d", first[1:9])
    assert abs(wall_time - path.stat().st_mtime) < 3600
    assert first[9:11] == b"\x10\x00"  # field 2 (step), varint 0
    assert first[11] == 0x1A  # field 3 (file_version), length-delimited
    assert first[12] == len(b"brain.Event:2")
    assert first[13:] == b"brain.Event:2"


def test_exact_bytes_of_a_tiny_event(tmp_path):
    with tb.ScalarWriter(tmp_path) as writer:
        assert writer.write(1, {"a": 1.5}, wall_time=0.0) == 1
    raw = writer.path.read_bytes()
    first_length = struct.unpack("<Q", raw[:8])[0]
    second = raw[16 + first_length:]

    value = b"\x0a\x01a" + b"\x15" + struct.pack("<f", 1.5)      # Value{tag, simple_value}
    summary = b"\x0a" + bytes([len(value)]) + value               # Summary{value}
    event = (b"\x09" + bytes(8)                                   # wall_time = 0.0
             + b"\x10\x01"                                        # step = 1
             + b"\x2a" + bytes([len(summary)]) + summary)         # summary
    assert event == bytes.fromhex("09 0000000000000000 1001 2a0a 0a08 0a0161 15 0000c03f")
    header = struct.pack("<Q", len(event))
    expected = header + struct.pack("<I", reference_masked(header)) + event + struct.pack("<I", reference_masked(event))
    assert second == expected
    assert split_records(raw)[1] == event
    assert tb.read_scalars(writer.path) == {"a": [(1, 1.5)]}


def test_values_edge_cases(tmp_path):
    with tb.ScalarWriter(tmp_path) as writer:
        # Zero is still written (simple_value is in a oneof: presence matters).
        assert writer.write(0, {"zero": 0.0, "big": 1e300, "small": -1e300, "int": 7,
                                "inf": math.inf, "s": "text", "none": None, "flag": True}) == 5
        assert writer.write(-5, {"neg_step": 2.0}) == 1
        assert writer.write(2**40, {"huge_step": 3.0}) == 1
        size = writer.path.stat().st_size
        assert writer.write(3, {"s": "only strings", "n": None}) == 0  # nothing to write: no Event
        assert writer.path.stat().st_size == size
        with pytest.raises(TypeError):
            writer.write(1.0, {"x": 1.0})
        with pytest.raises(TypeError):
            writer.write(True, {"x": 1.0})
        with pytest.raises(TypeError):
            writer.write(1, {2: 1.0})
        with pytest.raises(ValueError, match="int64"):
            writer.write(2**63, {"x": 1.0})
    assert tb.read_scalars(writer.path) == {
        "zero": [(0, 0.0)], "big": [(0, math.inf)], "small": [(0, -math.inf)], "int": [(0, 7.0)],
        "inf": [(0, math.inf)], "neg_step": [(-5, 2.0)], "huge_step": [(2**40, 3.0)],
    }
    # A negative int64 step is a ten-byte varint.
    events = split_records(writer.path.read_bytes())
    assert events[2][9:20] == b"\x10" + b"\xfb" + b"\xff" * 8 + b"\x01"


def test_writer_flushes_each_write_and_closes(tmp_path):
    writer = tb.ScalarWriter(tmp_path)
    writer.write(1, {"x": 1.0})
    # Visible to another reader before close (no buffering across writes).
    assert tb.read_scalars(tmp_path) == {"x": [(1, 1.0)]}
    writer.flush()
    writer.close()
    writer.close()
    assert writer.closed
    writer.flush()  # harmless after close
    with pytest.raises(ValueError, match="closed"):
        writer.write(2, {"x": 2.0})


def test_resume_adds_a_file_and_reader_merges(tmp_path):
    records = realistic_records()
    with tb.ScalarWriter(tmp_path) as first:
        for record in records[:2]:
            tb.write_record_scalars(first, record)
    with tb.ScalarWriter(tmp_path) as second:
        tb.write_record_scalars(second, records[2])
    assert first.path != second.path
    assert event_files(tmp_path) == [first.path, second.path]  # name order = write order
    (tmp_path / "metrics.jsonl").write_text("{}\n")  # other files in the run are ignored
    assert_scalars_equal(tb.read_scalars(tmp_path), expected_scalars(records))


def test_read_scalars_missing_and_empty(tmp_path):
    assert tb.read_scalars(tmp_path) == {}
    with pytest.raises(FileNotFoundError):
        tb.read_scalars(tmp_path / "nope")


# ---------------------------------------------------------------------------
# Tags
# ---------------------------------------------------------------------------


def test_scalar_tag_mapping():
    for key, tag in EXPECTED_TAGS.items():
        assert tb.scalar_tag(key) == tag
    assert tb.scalar_tag("train_") == "run/train_"
    assert tb.scalar_tag("train_exact_") == "train/exact_"
    assert tb.scalar_tag("testing") == "run/testing"


def test_write_record_scalars_picks_real_numbers(tmp_path):
    record = realistic_records()[0]
    with tb.ScalarWriter(tmp_path) as writer:
        written = tb.write_record_scalars(writer, record)
        assert set(written) == set(EXPECTED_TAGS.values())
        assert "run/epoch" not in written and "run/step" not in written
        by_step = tb.write_record_scalars(writer, {"epoch": 4, "step": 248, "x": 1.0}, step_key="step")
        assert by_step == {"run/epoch": 4, "run/x": 1.0}
        with pytest.raises(KeyError, match="epoch"):
            tb.write_record_scalars(writer, {"step": 1, "x": 1.0})
    scalars = tb.read_scalars(tmp_path)
    assert scalars["run/x"] == [(248, 1.0)]
    assert scalars["test/accuracy"] == [(1, f32(record["test_accuracy"]))]


# ---------------------------------------------------------------------------
# Corruption
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("where", ["length", "data"])
def test_corrupt_record_names_file_and_offset(written_run, where):
    _, path, _ = written_run
    raw = bytearray(path.read_bytes())
    first_length = struct.unpack("<Q", raw[:8])[0]
    second = 16 + first_length  # byte offset of the second record
    raw[second + (2 if where == "length" else 20)] ^= 0x01
    path.write_bytes(bytes(raw))
    with pytest.raises(ValueError, match=re.escape(str(path)) + f".*byte offset {second}.*{where} CRC"):
        tb.read_scalars(path.parent)


def test_truncated_file_is_an_error(written_run):
    _, path, _ = written_run
    raw = path.read_bytes()
    path.write_bytes(raw[:-3])
    with pytest.raises(ValueError, match=re.escape(path.name) + ".*truncated"):
        tb.read_scalars(path)


# ---------------------------------------------------------------------------
# TensorBoard's own readers (only where the package is installed)
# ---------------------------------------------------------------------------


def test_tensorboard_event_accumulator_reads_the_file(written_run):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing import event_accumulator

    logdir, _, records = written_run
    accumulator = event_accumulator.EventAccumulator(str(logdir))
    accumulator.Reload()
    expected = expected_scalars(records)
    assert set(accumulator.Tags()["scalars"]) == set(expected)
    actual = {tag: [(e.step, e.value) for e in accumulator.Scalars(tag)] for tag in expected}
    assert_scalars_equal(actual, expected)


def test_tensorboard_plugin_event_accumulator_reads_the_file(written_run):
    # The accumulator behind TensorBoard's Python data provider: simple_value
    # summaries are migrated to scalar tensors of the "scalars" plugin.
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing import plugin_event_accumulator
    from tensorboard.util import tensor_util

    logdir, _, records = written_run
    accumulator = plugin_event_accumulator.EventAccumulator(str(logdir))
    accumulator.Reload()
    expected = expected_scalars(records)
    assert set(accumulator.PluginTagToContent("scalars")) == set(expected)
    actual = {tag: [(e.step, float(tensor_util.make_ndarray(e.tensor_proto))) for e in accumulator.Tensors(tag)]
              for tag in expected}
    assert_scalars_equal(actual, expected)


def test_training_writes_the_epoch_records_as_tensorboard_scalars(tmp_path):
    from pathlib import Path

    from ibjax import config as configlib
    from ibjax import train
    from ibjax.io import read_jsonl

    config = configlib.from_file(Path(__file__).resolve().parents[1] / "configs" / "digits_condvar.py")
    config.train.num_epochs = 2
    config.train.progress_bar = False
    train.train_and_evaluate(config, tmp_path / "run")
    records = read_jsonl(tmp_path / "run" / "metrics.jsonl")
    scalars = tb.read_scalars(tmp_path / "run")
    for key in ("train_loss", "train_regularizer", "train_accuracy", "test_accuracy", "learning_rate",
                "training_error_bound", "train_decoder_cross_entropy"):
        got = scalars[tb.scalar_tag(key)]
        assert [step for step, _ in got] == [1, 2], key
        np.testing.assert_allclose([v for _, v in got], [r[key] for r in records], rtol=1e-6, err_msg=key)
    config.train.tensorboard = False
    train.train_and_evaluate(config, tmp_path / "quiet")
    assert not list((tmp_path / "quiet").glob("events.out.tfevents*"))
