"""TensorBoard event files of per-epoch scalars, written without TensorFlow.

Why this module exists: ``%tensorboard --logdir runs`` (Colab, Jupyter) is
the quickest way to watch a sweep, but TensorBoard only reads its own event
files, and the usual writers (``tf.summary``, ``tensorboardX``,
``torch.utils.tensorboard``) pull in TensorFlow, PyTorch or ``protobuf``
code generation. The format of a scalar event file is small, so it is encoded
here by hand with the standard library alone: no new dependency, and
TensorBoard itself is needed only to *view* the files.

``metrics.jsonl`` stays the contract: analysis, plotting and resumption read
it, never these files. The event files are a best-effort mirror of the same
per-epoch records for TensorBoard's UI; deleting them loses nothing.

Files
-----
A writer creates one file in the run's directory (beside ``metrics.jsonl``)::

    <logdir>/events.out.tfevents.<int unix time>.<hostname>.<pid>.ibjax

TensorBoard's directory loader picks up every file whose name contains
``tfevents`` and reads the files of a directory in name order, so a resumed
run simply opens a second file (its later time stamp sorts after the first)
and TensorBoard merges the two into one run. If that name exists already
(two writers in one second and process), ``.1``, ``.2``, ... is appended.

Format (the specs this encoder follows)
---------------------------------------
* TFRecord framing, ``tensorflow/core/lib/io/record_writer.cc``; each record
  is::

      uint64 length            little-endian, of `data`
      uint32 masked_crc32c(length bytes)
      byte   data[length]      a serialized Event
      uint32 masked_crc32c(data)

  where ``masked_crc32c(b) = ((c >> 15) | (c << 17)) + 0xa282ead8 mod 2**32``
  with ``c = crc32c(b)``, CRC-32C being the Castagnoli CRC (reflected
  polynomial ``0x82F63B78``, RFC 3720 appendix B.4).
* The Event and Summary messages of ``tensorflow/core/util/event.proto`` and
  ``tensorflow/core/framework/summary.proto``, of which only these fields are
  written, in protobuf's wire format (https://protobuf.dev/programming-guides/encoding/)::

      Event   { double wall_time = 1; int64 step = 2;
                oneof what { string file_version = 3; Summary summary = 5; } }
      Summary { repeated Value value = 1; }
      Value   { string tag = 1; oneof value { float simple_value = 2; ... } }

  The first record of a file is an Event with ``file_version =
  "brain.Event:2"``; every :meth:`ScalarWriter.write` adds one Event whose
  Summary holds one Value per scalar. ``wall_time``, ``step`` and
  ``simple_value`` are always written, even when zero: ``simple_value`` is
  a member of a oneof, and a reader tells a scalar from other summaries by
  its presence.

Values are stored as float32 (TensorBoard's ``simple_value``); NaN and
infinities are kept (TensorBoard shows them), finite values beyond float32's
range become infinities, and values that are not real numbers (strings,
``None``, booleans, arrays, nested records) are skipped.

Tags of a metrics record (:func:`write_record_scalars`, :func:`scalar_tag`)
----------------------------------------------------------------------------
TensorBoard groups charts by the part of a tag before its first ``/``, so the
record's keys are mapped to tags by prefix, the first matching rule winning:

=====================  ======================  ==============================
key                    tag                     e.g.
=====================  ======================  ==============================
``train_exact_<x>``    ``train_exact/<x>``     ``train_exact/accuracy``
``train_<x>``          ``train/<x>``           ``train/loss``
``test_<x>``           ``test/<x>``            ``test/accuracy``
anything else ``<x>``  ``run/<x>``             ``run/learning_rate``,
                                               ``run/training_error_bound``,
                                               ``run/entropy_cap``,
                                               ``run/examples_per_sec``
=====================  ======================  ==============================

Every real-number field is written at ``step = record["epoch"]`` except the
step key itself and ``"step"`` (the optimizer step count).

Reading
-------
:func:`read_scalars` is a minimal reader of such files (framing, both CRCs,
Events with ``simple_value`` summaries) for tests and for users without
TensorBoard installed. It reads files written by other tools as well but
returns only their ``simple_value`` scalars (TF2's ``tf.summary.scalar``
stores tensors instead, which it skips).

Example::

    with ScalarWriter(workdir) as writer:
        for record in records:          # the dicts appended to metrics.jsonl
            write_record_scalars(writer, record)
    read_scalars(workdir)["test/accuracy"]  # [(1, 0.91...), (2, 0.95...), ...]
"""

from __future__ import annotations

import math
import numbers
import os
import pathlib
import socket
import struct
import time
from collections.abc import Iterator, Mapping
from typing import Any

__all__ = [
    "ScalarWriter",
    "write_record_scalars",
    "scalar_tag",
    "read_scalars",
    "crc32c",
    "masked_crc32c",
    "FILE_VERSION",
]

FILE_VERSION = "brain.Event:2"
"""The ``file_version`` of the first Event of every file written here."""

_FILENAME_PREFIX = "events.out.tfevents"
_FILENAME_SUFFIX = ".ibjax"
_INT64_MIN, _INT64_MAX = -(2**63), 2**63 - 1
_MASK_DELTA = 0xA282EAD8
_U32 = 0xFFFFFFFF


# ---------------------------------------------------------------------------
# CRC-32C
# ---------------------------------------------------------------------------


def _crc32c_table() -> tuple[int, ...]:
    table = []
    for byte in range(256):
        crc = byte
        for _ in range(8):
            crc = (crc >> 1) ^ 0x82F63B78 if crc & 1 else crc >> 1
        table.append(crc)
    return tuple(table)


_CRC32C_TABLE = _crc32c_table()


def crc32c(data: bytes) -> int:
    """CRC-32C (Castagnoli) of ``data``, as used by TFRecord framing.

    Pure Python with a 256-entry table: slow for large buffers, but event
    records here are a few hundred bytes.

    Args:
      data: bytes (or any bytes-like object).

    Returns:
      The checksum as an unsigned 32-bit int; ``crc32c(b"123456789") ==
      0xE3069283``.
    """
    table = _CRC32C_TABLE
    crc = _U32
    for byte in bytes(data):
        crc = table[(crc ^ byte) & 0xFF] ^ (crc >> 8)
    return crc ^ _U32


def masked_crc32c(data: bytes) -> int:
    """The masked CRC-32C that TFRecord stores: ``rotr15(crc) + 0xa282ead8``."""
    crc = crc32c(data)
    return (((crc >> 15) | (crc << 17)) + _MASK_DELTA) & _U32


# ---------------------------------------------------------------------------
# Protobuf and TFRecord encoding
# ---------------------------------------------------------------------------


def _varint(value: int) -> bytes:
    if value < 0:  # int64: ten-byte two's complement
        value += 1 << 64
    out = bytearray()
    while value > 0x7F:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def _length_delimited(field: int, payload: bytes) -> bytes:
    return _varint(field << 3 | 2) + _varint(len(payload)) + payload


def _float32(value: float) -> bytes:
    try:
        return struct.pack("<f", value)
    except OverflowError:  # finite but beyond float32: what a float32 cast gives
        return struct.pack("<f", math.copysign(math.inf, value))


def _encode_value(tag: str, value: float) -> bytes:
    # Value.tag = 1 (string), Value.simple_value = 2 (float, wire type 5).
    return _length_delimited(1, tag.encode("utf-8")) + b"\x15" + _float32(value)


def _encode_event(wall_time: float, step: int, *, file_version: str | None = None,
                  summary: bytes | None = None) -> bytes:
    # Event.wall_time = 1 (double, wire type 1), Event.step = 2 (int64 varint).
    out = b"\x09" + struct.pack("<d", wall_time) + b"\x10" + _varint(step)
    if file_version is not None:
        out += _length_delimited(3, file_version.encode("utf-8"))
    if summary is not None:
        out += _length_delimited(5, summary)
    return out


def _frame(data: bytes) -> bytes:
    header = struct.pack("<Q", len(data))
    return header + struct.pack("<I", masked_crc32c(header)) + data + struct.pack("<I", masked_crc32c(data))


def _is_real(value: Any) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def _as_float(value: numbers.Real) -> float:
    try:
        return float(value)
    except OverflowError:  # a Python int too large for a double
        return math.copysign(math.inf, value)


# ---------------------------------------------------------------------------
# Writer
# ---------------------------------------------------------------------------


class ScalarWriter:
    """Appends scalar summaries to a new TensorBoard event file in ``logdir``.

    The file is created (with ``logdir`` and its parents) on construction, and
    its first record, the ``file_version`` Event, is written at once. Each
    :meth:`write` appends one Event and flushes it to the operating system, so
    a running TensorBoard sees every epoch as it arrives (there is no fsync:
    a machine crash may lose the tail, which ``metrics.jsonl`` still has).

    Use as a context manager, or call :meth:`close`.

    Args:
      logdir: directory of the run (created if missing).

    Attributes:
      path: the event file, ``logdir/events.out.tfevents.<time>.<host>.<pid>.ibjax``.
    """

    def __init__(self, logdir: str | os.PathLike):
        logdir = pathlib.Path(logdir)
        logdir.mkdir(parents=True, exist_ok=True)
        wall_time = time.time()
        base = f"{_FILENAME_PREFIX}.{int(wall_time)}.{socket.gethostname()}.{os.getpid()}{_FILENAME_SUFFIX}"
        for attempt in range(1000):
            path = logdir / (base if attempt == 0 else f"{base}.{attempt}")
            try:
                self._file = open(path, "xb")  # noqa: SIM115 -- closed by close()
                break
            except FileExistsError:
                continue
        else:
            raise FileExistsError(f"{logdir}: no free event file name after {base}")
        self.path = path
        self._write_event(_encode_event(wall_time, 0, file_version=FILE_VERSION))

    @property
    def closed(self) -> bool:
        """Whether :meth:`close` has been called."""
        return self._file.closed

    def _write_event(self, event: bytes) -> None:
        if self._file.closed:
            raise ValueError(f"{self.path}: write to a closed ScalarWriter")
        self._file.write(_frame(event))
        self._file.flush()

    def write(self, step: int, scalars: Mapping[str, float], wall_time: float | None = None) -> int:
        """Writes one Event holding a scalar summary per entry of ``scalars``.

        Args:
          step: the x-axis value (an int64), e.g. the epoch.
          scalars: tag -> value. Values that are not real numbers (strings,
            ``None``, booleans, arrays) are skipped; NaN and infinities are
            kept; values are stored as float32.
          wall_time: seconds since the epoch; ``time.time()`` if ``None``.

        Returns:
          The number of values written. When it is 0 no Event is written.

        Raises:
          TypeError: ``step`` is not an integer or a tag is not a string.
          ValueError: ``step`` is outside int64, or the writer is closed.
        """
        if self._file.closed:
            raise ValueError(f"{self.path}: write to a closed ScalarWriter")
        if not isinstance(step, numbers.Integral) or isinstance(step, bool):
            raise TypeError(f"step must be an int, got {step!r}")
        step = int(step)
        if not _INT64_MIN <= step <= _INT64_MAX:
            raise ValueError(f"step {step} is outside int64")
        values = []
        for tag, value in scalars.items():
            if not isinstance(tag, str):
                raise TypeError(f"tag must be a str, got {tag!r}")
            if _is_real(value):
                values.append(_encode_value(tag, _as_float(value)))
        if not values:
            return 0
        summary = b"".join(_length_delimited(1, value) for value in values)
        self._write_event(_encode_event(time.time() if wall_time is None else float(wall_time), step,
                                        summary=summary))
        return len(values)

    def flush(self) -> None:
        """Flushes buffered records to the operating system (write already does)."""
        if not self._file.closed:
            self._file.flush()

    def close(self) -> None:
        """Flushes and closes the file; calling it again does nothing."""
        self._file.close()

    def __enter__(self) -> ScalarWriter:
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"ScalarWriter({str(self.path)!r}{', closed' if self.closed else ''})"


def scalar_tag(key: str) -> str:
    """The TensorBoard tag of a metrics-record key (see the module docstring).

    ``train_exact_x`` -> ``train_exact/x``, ``train_x`` -> ``train/x``,
    ``test_x`` -> ``test/x``, anything else -> ``run/<key>``.
    """
    for prefix in ("train_exact", "train", "test"):
        if key.startswith(prefix + "_") and len(key) > len(prefix) + 1:
            return f"{prefix}/{key[len(prefix) + 1:]}"
    return f"run/{key}"


def write_record_scalars(writer: ScalarWriter, record: Mapping[str, Any], step_key: str = "epoch") -> dict[str, float]:
    """Writes every real-number field of a metrics record as one Event.

    Args:
      writer: the run's :class:`ScalarWriter`.
      record: one per-epoch metrics record (the dict appended to
        ``metrics.jsonl``). Fields that are not real numbers (the regularizer's
        name, a population's ``members`` list, booleans) are skipped, and so
        are ``step_key`` and ``"step"``.
      step_key: the field used as TensorBoard's step.

    Returns:
      tag -> value of what was written (tags as :func:`scalar_tag` maps them).

    Raises:
      KeyError: ``record`` has no ``step_key``.
      TypeError: ``record[step_key]`` is not an integer.
    """
    if step_key not in record:
        raise KeyError(f"metrics record has no step key {step_key!r}")
    skip = {step_key, "step"}
    scalars = {scalar_tag(key): value for key, value in record.items()
               if key not in skip and isinstance(key, str) and _is_real(value)}
    writer.write(record[step_key], scalars)
    return scalars


# ---------------------------------------------------------------------------
# Reader
# ---------------------------------------------------------------------------


def _parse_varint(buf: bytes, pos: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        if pos >= len(buf):
            raise ValueError("truncated varint")
        byte = buf[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return result, pos
        shift += 7
        if shift >= 70:
            raise ValueError("varint too long")


def _parse_fields(buf: bytes) -> Iterator[tuple[int, int, Any]]:
    """(field number, wire type, value) of a message; value is an int or bytes."""
    pos = 0
    while pos < len(buf):
        key, pos = _parse_varint(buf, pos)
        field, wire_type = key >> 3, key & 7
        if wire_type == 0:
            value, pos = _parse_varint(buf, pos)
        elif wire_type in (1, 5):
            size = 8 if wire_type == 1 else 4
            value, pos = buf[pos:pos + size], pos + size
        elif wire_type == 2:
            size, pos = _parse_varint(buf, pos)
            value, pos = buf[pos:pos + size], pos + size
        else:
            raise ValueError(f"unsupported wire type {wire_type}")
        if pos > len(buf):
            raise ValueError("truncated field")
        yield field, wire_type, value


def _decode_scalars(event: bytes) -> tuple[int, list[tuple[str, float]]]:
    """step and (tag, simple_value) pairs of a serialized Event."""
    step, scalars = 0, []
    for field, wire_type, value in _parse_fields(event):
        if field == 2 and wire_type == 0:
            step = value - (1 << 64) if value >= 1 << 63 else value
        elif field == 5 and wire_type == 2:
            for v_field, v_wire, v_value in _parse_fields(value):
                if v_field != 1 or v_wire != 2:
                    continue
                tag, simple = None, None
                for f, w, x in _parse_fields(v_value):
                    if f == 1 and w == 2:
                        tag = x.decode("utf-8")
                    elif f == 2 and w == 5:
                        (simple,) = struct.unpack("<f", x)
                if tag is not None and simple is not None:
                    scalars.append((tag, simple))
    return step, scalars


def _iter_records(path: pathlib.Path) -> Iterator[tuple[int, bytes]]:
    """(byte offset, data) of each record of a TFRecord file, CRCs verified."""
    data = path.read_bytes()
    pos = 0
    while pos < len(data):
        if len(data) - pos < 12:
            raise ValueError(f"{path}: truncated record header at byte offset {pos}")
        header = data[pos:pos + 8]
        (length,), (length_crc,) = struct.unpack("<Q", header), struct.unpack("<I", data[pos + 8:pos + 12])
        if length_crc != masked_crc32c(header):
            raise ValueError(f"{path}: corrupt record at byte offset {pos}: length CRC mismatch")
        end = pos + 12 + length + 4
        if end > len(data):
            raise ValueError(f"{path}: truncated record at byte offset {pos}")
        payload = data[pos + 12:pos + 12 + length]
        (data_crc,) = struct.unpack("<I", data[end - 4:end])
        if data_crc != masked_crc32c(payload):
            raise ValueError(f"{path}: corrupt record at byte offset {pos}: data CRC mismatch")
        yield pos, payload
        pos = end


def read_scalars(path_or_dir: str | os.PathLike) -> dict[str, list[tuple[int, float]]]:
    """Reads the ``simple_value`` scalars of an event file or a run directory.

    Args:
      path_or_dir: one event file, or a directory whose files with
        ``tfevents`` in their names are read in name order (as TensorBoard
        does; subdirectories are not searched).

    Returns:
      tag -> [(step, value), ...] in file order; values are the stored
      float32 values as Python floats. ``{}`` for a directory without event
      files.

    Raises:
      FileNotFoundError: ``path_or_dir`` does not exist.
      ValueError: a record is truncated, fails a CRC check or is not a valid
        Event; the message names the file and the record's byte offset.
    """
    path = pathlib.Path(path_or_dir)
    if path.is_dir():
        files = sorted(p for p in path.iterdir() if "tfevents" in p.name and p.is_file())
    elif path.exists():
        files = [path]
    else:
        raise FileNotFoundError(f"{path}: no such event file or directory")
    result: dict[str, list[tuple[int, float]]] = {}
    for file in files:
        for offset, event in _iter_records(file):
            try:
                step, scalars = _decode_scalars(event)
            except (ValueError, struct.error, UnicodeDecodeError) as e:
                raise ValueError(f"{file}: invalid Event in record at byte offset {offset}: {e}") from None
            for tag, value in scalars:
                result.setdefault(tag, []).append((step, value))
    return result
