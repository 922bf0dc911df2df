"""The readers behind :func:`ibjax.data.load_dataset`: embedded digits, tfds, IDX, npz, CIFAR-10 pickles.

Each returns host uint8 images and int32 labels of the train and test splits,
checked against the data set's image shape and class count; a missing or
malformed file raises :class:`DatasetError` naming it. The public API is
:mod:`ibjax.data`.
"""

from __future__ import annotations

import dataclasses
import gzip
import importlib.util
import io
import math
import pickle
import tarfile
import zipfile
import zlib
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from ibjax import _download
from ibjax._download import unreachable_hosts as _unreachable_hosts

if TYPE_CHECKING:
    import tensorflow_datasets as tfds

#: Valid ``name`` values for :func:`load_dataset`.
DATASETS: tuple[str, ...] = ("digits", "mnist", "permuted_mnist", "cifar10")

#: Valid ``source`` values for :func:`load_dataset`.
SOURCES: tuple[str, ...] = ("embedded", "tfds", "idx", "npz", "cifar_pickle", "cifar_binary")

#: Sources each data set can be read from; the first is the default.
DATASET_SOURCES: dict[str, tuple[str, ...]] = {
    "digits": ("embedded", "npz"),
    "mnist": ("tfds", "idx", "npz"),
    "permuted_mnist": ("tfds", "idx", "npz"),
    "cifar10": ("tfds", "cifar_pickle", "cifar_binary", "npz"),
}

#: Sources that read local files at ``path`` (and need it); the others take none.
PATH_SOURCES: tuple[str, ...] = ("idx", "npz", "cifar_pickle", "cifar_binary")

_IMAGE_SHAPE: dict[str, tuple[int, int, int]] = {
    "digits": (8, 8, 1),
    "mnist": (28, 28, 1),
    "permuted_mnist": (28, 28, 1),
    "cifar10": (32, 32, 3),
}

_NUM_CLASSES = 10
_TFDS_NAME = {"mnist": "mnist", "permuted_mnist": "mnist", "cifar10": "cifar10"}

_IDX_TRAIN_IMAGES = "train-images-idx3-ubyte"
_IDX_TRAIN_LABELS = "train-labels-idx1-ubyte"
_IDX_TEST_IMAGES = "t10k-images-idx3-ubyte"
_IDX_TEST_LABELS = "t10k-labels-idx1-ubyte"
# Magic number: two zero bytes, element type 0x08 (unsigned byte), rank.
_IDX_IMAGES_MAGIC = 0x00000803
_IDX_LABELS_MAGIC = 0x00000801

_NPZ_KEYS = ("x_train", "y_train", "x_test", "y_test")


@dataclasses.dataclass(frozen=True)
class _CifarLayout:
    """Where one of CIFAR-10's distributions keeps its six batches: train 1..5, then test."""

    folder: str
    archive: str
    batches: tuple[str, ...]


_CIFAR_BATCH_STEMS = ("data_batch_1", "data_batch_2", "data_batch_3", "data_batch_4", "data_batch_5", "test_batch")
# The python version: each batch a pickled dict. The binary version: each batch records of
# one label byte and 3,072 pixel bytes.
_CIFAR_PICKLE = _CifarLayout("cifar-10-batches-py", "cifar-10-python.tar.gz", _CIFAR_BATCH_STEMS)
_CIFAR_BINARY = _CifarLayout("cifar-10-batches-bin", "cifar-10-binary.tar.gz",
                             tuple(f"{stem}.bin" for stem in _CIFAR_BATCH_STEMS))
# The only globals a CIFAR-10 python batch refers to: NumPy's array reconstruction
# (module path of NumPy 1 and of NumPy 2); bytes are handled by _latin1_bytes.
_CIFAR_PICKLE_GLOBALS = frozenset({
    ("numpy.core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "_reconstruct"),
    ("numpy", "ndarray"),
    ("numpy", "dtype"),
})

# Seconds a tfds download host gets to answer before it counts as unreachable:
# tfds's own downloader has no timeout and retries for minutes when offline.
_TFDS_PROBE_TIMEOUT_S = 5.0

# digits: fraction of each class held out for the test split, and its seed.
_DIGITS_TEST_FRACTION = 0.2
_DIGITS_SPLIT_SEED = 0


class DatasetError(ValueError):
    """A data file is malformed or inconsistent; the message names the file."""


class DatasetFileNotFoundError(DatasetError, FileNotFoundError):
    """A data file or directory is missing; the message names it."""


Splits = tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]


def _checked(images, labels, name: str, images_origin: str, labels_origin: str) -> tuple[np.ndarray, np.ndarray]:
    """Validates one split against ``name``'s image shape and class count."""
    shape = _IMAGE_SHAPE[name]
    images, labels = np.asarray(images), np.asarray(labels)
    if images.ndim == 3 and shape[-1] == 1:
        images = images[..., None]
    if images.ndim != 4 or images.shape[1:] != shape:
        raise DatasetError(f"{images_origin}: images must have shape [N, {', '.join(map(str, shape))}] "
                           f"for {name!r}; got {images.shape}.")
    if not np.issubdtype(images.dtype, np.integer):
        raise DatasetError(f"{images_origin}: images must hold integers 0..255; got dtype {images.dtype}.")
    if images.size and (images.min() < 0 or images.max() > 255):
        raise DatasetError(f"{images_origin}: pixel values must lie in 0..255; "
                           f"got range [{images.min()}, {images.max()}].")
    if labels.ndim == 2 and labels.shape[1] == 1:  # Keras-style [N, 1] labels.
        labels = labels[:, 0]
    if labels.ndim != 1 or not np.issubdtype(labels.dtype, np.integer):
        raise DatasetError(f"{labels_origin}: labels must be integers of shape [N]; got {labels.dtype} {labels.shape}.")
    if len(images) != len(labels):
        raise DatasetError(
            f"{images_origin} holds {len(images)} images but {labels_origin} holds {len(labels)} labels."
        )
    bad = np.flatnonzero((labels < 0) | (labels >= _NUM_CLASSES))
    if bad.size:
        raise DatasetError(f"{labels_origin}: labels must lie in [0, {_NUM_CLASSES - 1}]; "
                           f"found {labels[bad[0]]} at index {bad[0]} ({bad.size} out of range).")
    return images.astype(np.uint8, copy=False), labels.astype(np.int32)


def _load_digits() -> Splits:
    """The 8×8 digits of scikit-learn, split 80/20 per class with a fixed seed."""
    # Imported here: scikit-learn is slow to import and only this source needs it.
    from sklearn.datasets import load_digits

    digits = load_digits()
    # Values 0..16 -> 0..255, rounded (x·255/16 is never exactly k + ½ except at x = 8).
    images = ((digits.images.astype(np.int64) * 255 + 8) // 16).astype(np.uint8)[..., None]
    labels = digits.target.astype(np.int32)
    rng = np.random.default_rng(_DIGITS_SPLIT_SEED)
    test = np.zeros(len(labels), bool)
    for c in range(_NUM_CLASSES):
        members = rng.permutation(np.flatnonzero(labels == c))
        test[members[: round(_DIGITS_TEST_FRACTION * len(members))]] = True
    return images[~test], labels[~test], images[test], labels[test]


def _load_tfds(tfds_name: str, name: str, data_dir: str | None, url_checksums: str | None = None) -> Splits:
    """Reads train and test of a tfds data set: its prepared copy, or else its original files.

    A copy prepared as ArrayRecord is read as it is. Without one, tfds
    prepares it where TensorFlow is installed; where it is not (Colab's TPU
    runtimes), or when ``url_checksums`` names a table, ibjax downloads the
    original files the table lists and reads them with its own readers
    (:func:`_load_tfds_originals`).
    """
    # Imported here: tensorflow-datasets is only needed by this source.
    import tensorflow_datasets as tfds

    builder = tfds.builder(tfds_name, data_dir=data_dir)
    # Checking that the folder exists first spares a tfds warning about its missing metadata.
    if not (builder.data_path.exists() and builder.is_prepared()):
        if url_checksums is not None or not _tensorflow_installed():
            return _load_tfds_originals(builder, name, url_checksums)
        _prepare_tfds(builder, name)
    try:
        sources = builder.as_data_source(split=["train", "test"])
    except NotImplementedError:
        raise DatasetError(
            f"{builder.data_dir}: tfds {tfds_name!r} is prepared there in a format without random access "
            "(TFRecord, as tfds.load writes it); prepare it with tfds.data_source (ArrayRecord) "
            "or point TFDS_DATA_DIR elsewhere."
        ) from None
    arrays = []
    for split, source in zip(("train", "test"), sources):
        examples = [source[i] for i in range(len(source))]
        origin = f"tfds {tfds_name!r} split {split!r}"
        images = np.stack([ex["image"] for ex in examples])
        labels = np.asarray([ex["label"] for ex in examples], np.int64)
        arrays.extend(_checked(images, labels, name, origin, origin))
    return tuple(arrays)


def _tfds_download_cache(builder: tfds.core.DatasetBuilder) -> Path:
    """Where ibjax keeps the original files of ``builder``'s data set: ``<tfds data dir>/downloads/ibjax``."""
    # builder.data_dir is <data dir>/<name>/<version>.
    return Path(builder.data_dir).parents[1] / "downloads" / "ibjax"


def _load_tfds_originals(builder: tfds.core.DatasetBuilder, name: str, url_checksums: str | None) -> Splits:
    """Downloads (once) the original files tfds lists for ``builder`` and reads them without TensorFlow.

    MNIST's four IDX files are read by the IDX reader, CIFAR-10's binary
    archive by the CIFAR-10 binary reader.
    """
    try:
        table = Path(url_checksums) if url_checksums is not None else _download.tfds_url_checksums(builder.name)
        files = _download.read_url_checksums(table)
        paths = _download.download_files(files, _tfds_download_cache(builder), what=f"{builder.name} as tfds lists them "
                                         "(its tfds copy is not prepared, and preparing it needs TensorFlow)")
    except _download.NetworkError as e:
        cache = _tfds_download_cache(builder)
        raise _tfds_unavailable(builder, name, f"{e}; TensorFlow is not installed, so ibjax downloads the original "
                                f"files into {cache} when there is network, or reads them there if copied") from None
    except _download.DownloadError as e:
        raise DatasetError(str(e)) from None
    if builder.name == "cifar10":
        archives = [path for path in paths.values() if path.name.endswith((".tar.gz", ".tgz"))]
        if len(archives) != 1:
            raise DatasetError(f"{table}: lists {len(archives)} .tar.gz archives for cifar10; expected one "
                               f"({_CIFAR_BINARY.archive}).")
        return _load_cifar_binary(archives[0])
    return _load_idx(_tfds_download_cache(builder), optional_train=False)


def _prepare_tfds(builder: tfds.core.DatasetBuilder, name: str) -> None:
    """Downloads and prepares ``builder`` as ArrayRecord with TensorFlow, or raises a one-line :class:`DatasetError`.

    The cheap check comes first, so that no download starts that is bound to
    fail: tfds's downloader retries for minutes without network.
    """
    from tensorflow_datasets.core.download import download_manager, extractor

    unreachable = _unreachable_hosts(builder.url_infos or {}, _TFDS_PROBE_TIMEOUT_S)
    if unreachable:
        raise _tfds_unavailable(builder, name, f"no network: cannot reach {', '.join(unreachable)}")
    try:
        # ArrayRecord: the format with random access that needs no TensorFlow to
        # read (tfds.data_source asks for it only when data_dir is None).
        builder.download_and_prepare(file_format="array_record")
    except (OSError, ImportError, download_manager.NonMatchingChecksumError, extractor.ExtractError) as e:
        first_line = (str(e).strip().splitlines() or [""])[0]
        raise _tfds_unavailable(builder, name, f"preparing it failed: {type(e).__name__}: {first_line}") from None


def _tensorflow_installed() -> bool:
    """Whether TensorFlow can be imported, found without importing it (that takes seconds)."""
    return importlib.util.find_spec("tensorflow") is not None


def _tfds_unavailable(builder: tfds.core.DatasetBuilder, name: str, reason: str) -> DatasetError:
    """The one-line error for a tfds data set that is neither prepared nor preparable here."""
    offline = "|".join(source for source in DATASET_SOURCES[name] if source in PATH_SOURCES)
    return DatasetError(
        f"tfds data set {builder.name!r} is not prepared in {builder.data_dir} and cannot be prepared here "
        f"({reason}). Offline alternatives: --config.data.source={offline} with --config.data.path=...; "
        f"or set TFDS_DATA_DIR to a directory holding a prepared {builder.name}/{builder.version}; "
        f"or copy a prepared ~/tensorflow_datasets/{builder.name} folder (made by tfds.data_source, ArrayRecord) "
        "from a machine with network."
    )


def _find_idx(directory: Path, stem: str) -> Path | None:
    """``directory/stem`` or ``directory/stem.gz``, the uncompressed one first."""
    for candidate in (directory / stem, directory / f"{stem}.gz"):
        if candidate.is_file():
            return candidate
    return None


def _read_idx(path: Path, magic: int) -> np.ndarray:
    """Reads one IDX file of unsigned bytes (LeCun et al., MNIST format)."""
    try:
        opener = gzip.open if path.suffix == ".gz" else open
        with opener(path, "rb") as f:
            raw = f.read()
    except (OSError, EOFError, zlib.error) as e:
        raise DatasetError(f"{path}: cannot read IDX file ({e}).") from e
    if len(raw) < 4:
        raise DatasetError(f"{path}: truncated IDX file ({len(raw)} bytes, no header).")
    found = int.from_bytes(raw[:4], "big")
    if found != magic:
        raise DatasetError(f"{path}: bad IDX magic number 0x{found:08x}; expected 0x{magic:08x}.")
    rank = magic & 0xFF
    header = 4 + 4 * rank
    if len(raw) < header:
        raise DatasetError(f"{path}: truncated IDX header ({len(raw)} of {header} bytes).")
    dims = tuple(int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(rank))
    expected = math.prod(dims)
    if len(raw) - header != expected:
        raise DatasetError(
            f"{path}: header declares shape {dims} ({expected} bytes of data) "
            f"but the file holds {len(raw) - header} bytes of data (truncated or trailing bytes)."
        )
    return np.frombuffer(raw, np.uint8, offset=header).reshape(dims)


def _load_idx(directory: Path, optional_train: bool) -> Splits:
    """Reads MNIST's four IDX files; the train pair may be absent if ``optional_train``."""
    if not directory.is_dir():
        raise DatasetFileNotFoundError(f"{directory}: IDX directory not found.")
    stems = (_IDX_TRAIN_IMAGES, _IDX_TRAIN_LABELS, _IDX_TEST_IMAGES, _IDX_TEST_LABELS)
    found = {stem: _find_idx(directory, stem) for stem in stems}
    missing = [stem for stem in stems if found[stem] is None]
    train_absent = missing[:2] == [_IDX_TRAIN_IMAGES, _IDX_TRAIN_LABELS]
    if optional_train and train_absent:
        # With split_at, a directory holding only the test files is complete.
        missing = missing[2:]
    if missing:
        hint = "" if optional_train else " (or set split_at to re-split the test files alone)"
        raise DatasetFileNotFoundError(
            f"{directory / missing[0]}[.gz]: IDX file not found{hint}; missing: {', '.join(missing)}."
        )
    splits = []
    pairs = [(_IDX_TEST_IMAGES, _IDX_TEST_LABELS)]
    if not train_absent:
        pairs.insert(0, (_IDX_TRAIN_IMAGES, _IDX_TRAIN_LABELS))
    for images_stem, labels_stem in pairs:
        images_path, labels_path = found[images_stem], found[labels_stem]
        images = _read_idx(images_path, _IDX_IMAGES_MAGIC)
        labels = _read_idx(labels_path, _IDX_LABELS_MAGIC)
        splits.extend(_checked(images, labels, "mnist", str(images_path), str(labels_path)))
    if train_absent:
        empty_images = np.zeros((0, *_IMAGE_SHAPE["mnist"]), np.uint8)
        splits = [empty_images, np.zeros(0, np.int32), *splits]
    return tuple(splits)


def _load_npz(path: Path, name: str) -> Splits:
    """Reads ``x_train, y_train, x_test, y_test`` from one ``.npz`` file."""
    if not path.is_file():
        raise DatasetFileNotFoundError(f"{path}: npz file not found.")
    if not zipfile.is_zipfile(path):
        raise DatasetError(f"{path}: not an .npz (zip) archive.")
    try:
        with np.load(path, allow_pickle=False) as npz:
            arrays = {key: npz[key] for key in npz.files}
    except (OSError, ValueError, EOFError, zlib.error, zipfile.BadZipFile) as e:
        raise DatasetError(f"{path}: cannot read npz file ({e}).") from e
    if not set(_NPZ_KEYS) <= set(arrays):
        raise DatasetError(f"{path}: npz must hold keys {_NPZ_KEYS}; found {tuple(sorted(arrays))}.")
    splits = []
    for split in ("train", "test"):
        splits.extend(
            _checked(arrays[f"x_{split}"], arrays[f"y_{split}"], name, f"{path} (x_{split})", f"{path} (y_{split})")
        )
    return tuple(splits)


def _find_cifar(path: Path, layout: _CifarLayout) -> Path:
    """The batch folder or ``.tar.gz`` archive of ``layout`` that ``path`` names or holds."""
    if path.is_file():
        return path
    if not path.is_dir():
        raise DatasetFileNotFoundError(f"{path}: CIFAR-10 archive or folder not found.")
    if path.name == layout.folder or any((path / batch).exists() for batch in layout.batches):
        return path
    for candidate in (path / layout.folder, path / layout.archive):
        if candidate.exists():
            return candidate
    raise DatasetFileNotFoundError(
        f"{path}: holds neither {layout.folder}/ nor {layout.archive} nor the CIFAR-10 batch files."
    )


def _read_cifar_batches(location: Path, layout: _CifarLayout) -> list[tuple[str, bytes]]:
    """``(origin, raw bytes)`` of the six batch files, from a folder or a tar archive."""
    if location.is_dir():
        files = [location / batch for batch in layout.batches]
        missing = [f for f in files if not f.is_file()]
        if missing:
            raise DatasetFileNotFoundError(
                f"{missing[0]}: CIFAR-10 batch not found; missing: {', '.join(f.name for f in missing)}."
            )
        try:
            return [(str(f), f.read_bytes()) for f in files]
        except OSError as e:
            raise DatasetError(f"{location}: cannot read CIFAR-10 batch ({e}).") from e
    members = [f"{layout.folder}/{batch}" for batch in layout.batches]
    try:
        with tarfile.open(location, "r:*") as tar:
            found = {info.name: info for info in tar.getmembers() if info.isfile()}
            missing = [member for member in members if member not in found]
            if missing:
                raise DatasetFileNotFoundError(
                    f"{location}: CIFAR-10 batch {missing[0]} not in the archive; missing: {', '.join(missing)}."
                )
            raws = [tar.extractfile(found[member]).read() for member in members]
    except DatasetError:
        raise
    except (tarfile.TarError, OSError, EOFError, zlib.error) as e:
        raise DatasetError(f"{location}: cannot read CIFAR-10 archive ({e}).") from e
    return [(f"{location}:{member}", raw) for member, raw in zip(members, raws)]


def _latin1_bytes(text: str, encoding: str) -> bytes:
    """``_codecs.encode`` limited to what pickle protocol 2 uses it for: bytes as latin1 text."""
    if not isinstance(text, str) or encoding != "latin1":
        raise pickle.UnpicklingError(f"_codecs.encode is only allowed on text with 'latin1'; got {encoding!r}.")
    return text.encode("latin1")


class _CifarUnpickler(pickle.Unpickler):
    """An unpickler that resolves only the globals a CIFAR-10 batch needs.

    Builtin containers, bytes, str and int need no global. Allowed: NumPy's
    ``_reconstruct``, ``ndarray`` and ``dtype`` (``b"data"`` is an ndarray) and
    ``_codecs.encode`` with ``"latin1"`` only (how Python 3 pickles bytes at
    protocol 2). Anything else, e.g. ``os.system``, raises
    ``pickle.UnpicklingError`` before it is called.
    """

    def find_class(self, module: str, name: str):
        if (module, name) == ("_codecs", "encode"):
            return _latin1_bytes
        if (module, name) in _CIFAR_PICKLE_GLOBALS:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"global {module}.{name} is not allowed in a CIFAR-10 batch")


def _parse_cifar_batch(raw: bytes, origin: str) -> tuple[np.ndarray, np.ndarray]:
    """Images ``[N, 32, 32, 3]`` uint8 and labels ``[N]`` int32 of one pickled batch."""
    try:
        # encoding="bytes": the original batches were pickled by Python 2, whose str is bytes.
        batch = _CifarUnpickler(io.BytesIO(raw), encoding="bytes").load()
    except Exception as e:  # A malformed pickle can fail in many ways; each means a bad file.
        raise DatasetError(f"{origin}: not a valid CIFAR-10 batch pickle ({type(e).__name__}: {e}).") from e
    if not isinstance(batch, dict) or b"data" not in batch or b"labels" not in batch:
        found = list(batch) if isinstance(batch, dict) else type(batch).__name__
        raise DatasetError(f"{origin}: a CIFAR-10 batch must be a dict with keys b'data' and b'labels'; found {found}.")
    data, labels = batch[b"data"], batch[b"labels"]
    pixels = math.prod(_IMAGE_SHAPE["cifar10"])
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != pixels:
        described = f"{data.dtype} array {data.shape}" if isinstance(data, np.ndarray) else type(data).__name__
        raise DatasetError(f"{origin}: b'data' must be a uint8 array [N, {pixels}]; got {described}.")
    if not isinstance(labels, list) or any(type(label) is not int for label in labels):
        raise DatasetError(f"{origin}: b'labels' must be a list of int.")
    return _checked(_channel_major_images(data), np.asarray(labels, np.int64), "cifar10", origin, origin)


def _channel_major_images(rows: np.ndarray) -> np.ndarray:
    """CIFAR-10 rows ``[N, 3072]`` (the red plane, then green, then blue, each row-major) -> ``[N, 32, 32, 3]``."""
    height, width, channels = _IMAGE_SHAPE["cifar10"]
    return rows.reshape(-1, channels, height, width).transpose(0, 2, 3, 1)


def _parse_cifar_binary(raw: bytes, origin: str) -> tuple[np.ndarray, np.ndarray]:
    """Images ``[N, 32, 32, 3]`` uint8 and labels ``[N]`` int32 of one binary batch.

    Each record is one label byte followed by the image's 3,072 pixel bytes.
    """
    record = 1 + math.prod(_IMAGE_SHAPE["cifar10"])
    if not raw or len(raw) % record:
        raise DatasetError(f"{origin}: {len(raw)} bytes are not a whole number of {record}-byte CIFAR-10 records "
                           "(one label byte and 3,072 pixel bytes each).")
    rows = np.frombuffer(raw, np.uint8).reshape(-1, record)
    return _checked(_channel_major_images(rows[:, 1:]), rows[:, 0].astype(np.int64), "cifar10", origin, origin)


def _load_cifar_pickle(path: Path) -> Splits:
    """Reads CIFAR-10's python batches: ``data_batch_1..5`` for train, ``test_batch`` for test."""
    return _load_cifar(path, _CIFAR_PICKLE, _parse_cifar_batch)


def _load_cifar_binary(path: Path) -> Splits:
    """Reads CIFAR-10's binary batches: ``data_batch_1..5.bin`` for train, ``test_batch.bin`` for test."""
    return _load_cifar(path, _CIFAR_BINARY, _parse_cifar_binary)


def _load_cifar(path: Path, layout: _CifarLayout, parse) -> Splits:
    """Reads the six batches of ``layout`` at ``path``: the first five train, the last test."""
    batches = [parse(raw, origin) for origin, raw in _read_cifar_batches(_find_cifar(path, layout), layout)]
    train, test = batches[:-1], batches[-1:]
    splits = []
    for split in (train, test):
        splits.append(np.ascontiguousarray(np.concatenate([images for images, _ in split])))
        splits.append(np.concatenate([labels for _, labels in split]))
    return tuple(splits)
