"""Tests for ibjax.data's sources beyond tests/test_data.py: load_data(config),
CIFAR-10's python pickles, and tensorflow-datasets' real builders, offline.

The tfds tests run the real mnist and cifar10 builders on small files written
here in the formats they download, served by a local stand-in for the
download step; the builders' own preparation calls TensorFlow, so those tests
are skipped where it is not installed.
"""

import gzip
import http.server
import io
import os
import pickle
import socket
import struct
import tarfile
import threading
from pathlib import Path

import ml_collections
import numpy as np
import pytest
import tensorflow_datasets as tfds

from ibjax import _sources, data, experiment

CIFAR_BATCHES = ("data_batch_1", "data_batch_2", "data_batch_3", "data_batch_4", "data_batch_5", "test_batch")
MNIST_IDX = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}


# --------------------------------------------------------------------------
# Helpers: files in the formats the data sets are distributed in.
# --------------------------------------------------------------------------


def idx_bytes(array: np.ndarray) -> bytes:
    """IDX encoding of unsigned bytes, from the format description."""
    array = np.asarray(array, np.uint8)
    header = (0x0800 | array.ndim).to_bytes(4, "big") + b"".join(d.to_bytes(4, "big") for d in array.shape)
    return header + array.tobytes()


def channel_major(images: np.ndarray) -> np.ndarray:
    """``[N, 32, 32, 3]`` -> CIFAR rows ``[N, 3072]``: red plane, green, blue, each row-major."""
    rows = np.zeros((len(images), 3072), np.uint8)
    for n, r, c, ch in np.ndindex(*images.shape):
        rows[n, 1024 * ch + 32 * r + c] = images[n, r, c, ch]
    return rows


def tiny_cifar(seed: int = 0, per_batch: int = 2):
    """Six batches of ``per_batch`` random images ``[N, 32, 32, 3]`` and labels."""
    rng = np.random.default_rng(seed)
    return [
        (rng.integers(0, 256, (per_batch, 32, 32, 3), dtype=np.uint8), rng.integers(0, 10, per_batch).tolist())
        for _ in CIFAR_BATCHES
    ]


def cifar_batch(batch_name: str, images: np.ndarray, labels: list) -> dict:
    """A batch dict with the keys and value types of the original python pickles."""
    return {
        b"batch_label": f"{batch_name} of 6".encode(),
        b"labels": labels,
        b"data": channel_major(images),
        b"filenames": [f"image_{i}.png".encode() for i in range(len(labels))],
    }


def cifar_pickles(batches, dumps=pickle.dumps) -> dict[str, bytes]:
    """Each batch pickled at protocol 2, as the originals are."""
    return {name: dumps(cifar_batch(name, *batch), protocol=2) for name, batch in zip(CIFAR_BATCHES, batches)}


def write_cifar_folder(directory: Path, pickles: dict[str, bytes]) -> Path:
    folder = directory / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    for name, payload in pickles.items():
        (folder / name).write_bytes(payload)
    return folder


def write_tar_gz(path: Path, members: dict[str, bytes]) -> Path:
    with tarfile.open(path, "w:gz") as tar:
        for name, payload in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(payload)
            tar.addfile(info, io.BytesIO(payload))
    return path


def write_cifar_archive(path: Path, pickles: dict[str, bytes]) -> Path:
    return write_tar_gz(path, {f"cifar-10-batches-py/{name}": payload for name, payload in pickles.items()})


class Python2Pickler(pickle._Pickler):
    """Protocol 2 as Python 2 wrote the original batches: every str and bytes a byte string."""

    def save_bytes(self, obj):
        if len(obj) < 256:
            self.write(pickle.SHORT_BINSTRING + bytes([len(obj)]) + obj)
        else:
            self.write(pickle.BINSTRING + struct.pack("<i", len(obj)) + obj)
        self.memoize(obj)

    def save_str(self, obj):
        self.save_bytes(obj.encode("latin1"))

    dispatch = dict(pickle._Pickler.dispatch)
    dispatch[bytes] = save_bytes
    dispatch[str] = save_str


def python2_dumps(obj, protocol: int) -> bytes:
    buffer = io.BytesIO()
    Python2Pickler(buffer, protocol).dump(obj)
    # Python 2's NumPy named its reconstruct function from numpy.core.
    return buffer.getvalue().replace(b"cnumpy._core.multiarray\n", b"cnumpy.core.multiarray\n")


def expected_cifar(batches):
    x_train = np.concatenate([images for images, _ in batches[:5]])
    y_train = np.concatenate([labels for _, labels in batches[:5]]).astype(np.int32)
    return x_train, y_train, batches[5][0], np.asarray(batches[5][1], np.int32)


def assert_dataset(ds: data.Dataset, x_train, y_train, x_test, y_test) -> None:
    assert ds.x_train.dtype == np.uint8 and ds.y_train.dtype == np.int32 and ds.y_test.dtype == np.int32
    np.testing.assert_array_equal(ds.x_train, x_train)
    np.testing.assert_array_equal(ds.y_train, y_train)
    np.testing.assert_array_equal(ds.x_test, x_test)
    np.testing.assert_array_equal(ds.y_test, y_test)


class Evil:
    """Unpickling this would run a shell command that creates ``marker``."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


@pytest.fixture
def no_network(monkeypatch):
    """Every socket connection or name lookup fails at once; the attempts are recorded."""
    attempts = []

    def refuse(*args, **kwargs):
        attempts.append(args)
        raise OSError("network disabled by the test")

    monkeypatch.setattr(socket, "getaddrinfo", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setattr(socket.socket, "connect", refuse)
    return attempts


# --------------------------------------------------------------------------
# Argument checks and load_data(config).
# --------------------------------------------------------------------------


def test_cifar_pickle_is_a_cifar10_path_source():
    assert "cifar_pickle" in data.SOURCES and "cifar_pickle" in data.PATH_SOURCES
    assert data.DATASET_SOURCES["cifar10"][:2] == ("tfds", "cifar_pickle")
    assert set(data.PATH_SOURCES) <= set(data.SOURCES)


@pytest.mark.parametrize(
    "kwargs, fragment",
    [
        (dict(name="cifar10", source="cifar_pickle"), "`path` is required for source='cifar_pickle'"),
        (dict(name="mnist", source="cifar_pickle", path="x"), "`source` for 'mnist' must be one of"),
        (dict(name="cifar10", source="tfds", path="x"),
         "only used by sources ('idx', 'npz', 'cifar_pickle', 'cifar_binary')"),
    ],
)
def test_path_checks_name_the_path_sources(kwargs, fragment):
    with pytest.raises(ValueError) as exc_info:
        data.load_dataset(**kwargs)
    assert fragment in str(exc_info.value)


def data_config(**fields) -> ml_collections.ConfigDict:
    config = ml_collections.ConfigDict()
    config.data = dict(name="mnist", source="idx", path="", split_at=0, permutation_seed=0, augment=False)
    config.data.update(fields)
    return config


def test_load_data_reads_the_config_data_section(tmp_path):
    rng = np.random.default_rng(0)
    arrays = {
        "train_images": rng.integers(0, 256, (4, 28, 28), dtype=np.uint8),
        "train_labels": rng.integers(0, 10, 4),
        "test_images": rng.integers(0, 256, (2, 28, 28), dtype=np.uint8),
        "test_labels": rng.integers(0, 10, 2),
    }
    for key, stem in MNIST_IDX.items():
        (tmp_path / stem).write_bytes(idx_bytes(arrays[key]))

    ds = experiment.load_data(data_config(path=str(tmp_path)))
    assert_dataset(ds, arrays["train_images"][..., None], arrays["train_labels"],
                   arrays["test_images"][..., None], arrays["test_labels"])

    # split_at and permutation_seed are passed on; 0 and "" mean "none".
    permuted = experiment.load_data(data_config(name="permuted_mnist", path=str(tmp_path), split_at=5,
                                                permutation_seed=2))
    expected = data.load_dataset("permuted_mnist", source="idx", path=tmp_path, split_at=5, permutation_seed=2)
    assert permuted.x_train.shape == (5, 28, 28, 1) and permuted.x_test.shape == (1, 28, 28, 1)
    assert_dataset(permuted, expected.x_train, expected.y_train, expected.x_test, expected.y_test)

    digits = experiment.load_data(data_config(name="digits", source="embedded"))
    assert digits.name == "digits" and digits.x_train.shape[1:] == (8, 8, 1)


def test_load_data_cifar_pickle(tmp_path):
    batches = tiny_cifar()
    write_cifar_archive(tmp_path / "cifar-10-python.tar.gz", cifar_pickles(batches))
    ds = experiment.load_data(data_config(name="cifar10", source="cifar_pickle", path=str(tmp_path)))
    assert_dataset(ds, *expected_cifar(batches))


# --------------------------------------------------------------------------
# CIFAR-10 python pickles.
# --------------------------------------------------------------------------


@pytest.mark.parametrize("layout", ["archive", "folder", "dir_with_archive", "dir_with_folder"])
def test_cifar_pickle_reads_archive_and_folder(tmp_path, layout):
    batches = tiny_cifar(seed=1)
    pickles = cifar_pickles(batches)
    if layout in ("archive", "dir_with_archive"):
        archive = write_cifar_archive(tmp_path / "cifar-10-python.tar.gz", pickles)
        path = archive if layout == "archive" else tmp_path
    else:
        folder = write_cifar_folder(tmp_path, pickles)
        path = folder if layout == "folder" else tmp_path
    ds = data.load_dataset("cifar10", source="cifar_pickle", path=path)
    assert ds.x_train.shape == (10, 32, 32, 3) and ds.x_test.shape == (2, 32, 32, 3)
    assert ds.x_train.flags.c_contiguous and ds.x_test.flags.c_contiguous
    assert_dataset(ds, *expected_cifar(batches))


def test_cifar_pickle_pixel_order_hand_checked(tmp_path):
    pickles = {}
    for index, name in enumerate(CIFAR_BATCHES):
        row = np.zeros(3072, np.uint8)  # one image per batch, written byte by byte
        row[index] = 100 + index        # red, row 0, column `index`: tells the batches apart
        row[1024 + 32 * 2 + 5] = 200    # green, row 2, column 5
        row[2048 + 32 * 31 + 30] = 77   # blue, row 31, column 30
        batch = {b"batch_label": b"x", b"labels": [index], b"data": row[None], b"filenames": [b"a.png"]}
        pickles[name] = pickle.dumps(batch, protocol=2)
    write_cifar_folder(tmp_path, pickles)
    ds = data.load_dataset("cifar10", source="cifar_pickle", path=tmp_path)
    # Train holds data_batch_1..5 in order, test holds test_batch.
    assert ds.x_train.shape == (5, 32, 32, 3) and ds.y_train.tolist() == [0, 1, 2, 3, 4] and ds.y_test.tolist() == [5]
    for index, image in enumerate([*ds.x_train, *ds.x_test]):
        assert image[0, index, 0] == 100 + index and image[2, 5, 1] == 200 and image[31, 30, 2] == 77
        assert np.count_nonzero(image) == 3


def test_cifar_pickle_reads_python2_pickles(tmp_path):
    batches = tiny_cifar(seed=2)
    pickles = cifar_pickles(batches, dumps=python2_dumps)
    assert b"_codecs" not in pickles["test_batch"] and b"cnumpy.core.multiarray\n" in pickles["test_batch"]
    write_cifar_archive(tmp_path / "cifar-10-python.tar.gz", pickles)
    ds = data.load_dataset("cifar10", source="cifar_pickle", path=tmp_path / "cifar-10-python.tar.gz")
    assert_dataset(ds, *expected_cifar(batches))


def test_cifar_pickle_split_at(tmp_path):
    batches = tiny_cifar(seed=3)
    write_cifar_folder(tmp_path, cifar_pickles(batches))
    ds = data.load_dataset("cifar10", source="cifar_pickle", path=tmp_path, split_at=7)
    x_train, y_train, x_test, y_test = expected_cifar(batches)
    x_all, y_all = np.concatenate([x_train, x_test]), np.concatenate([y_train, y_test])
    assert_dataset(ds, x_all[:7], y_all[:7], x_all[7:], y_all[7:])


@pytest.mark.parametrize("layout", ["folder", "archive"])
def test_cifar_pickle_missing_batch_names_it(tmp_path, layout):
    pickles = cifar_pickles(tiny_cifar())
    del pickles["data_batch_3"]
    if layout == "folder":
        path = write_cifar_folder(tmp_path, pickles)
    else:
        path = write_cifar_archive(tmp_path / "cifar-10-python.tar.gz", pickles)
    with pytest.raises(data.DatasetFileNotFoundError) as exc_info:
        data.load_dataset("cifar10", source="cifar_pickle", path=path)
    assert "data_batch_3" in str(exc_info.value) and str(path) in str(exc_info.value)


def test_cifar_pickle_missing_path_or_contents(tmp_path):
    with pytest.raises(data.DatasetFileNotFoundError, match="not found"):
        data.load_dataset("cifar10", source="cifar_pickle", path=tmp_path / "absent")
    with pytest.raises(data.DatasetFileNotFoundError) as exc_info:
        data.load_dataset("cifar10", source="cifar_pickle", path=tmp_path)
    assert str(tmp_path) in str(exc_info.value) and "cifar-10-python.tar.gz" in str(exc_info.value)


def test_cifar_pickle_corrupt_archive_names_it(tmp_path):
    archive = tmp_path / "cifar-10-python.tar.gz"
    archive.write_bytes(b"not a tar archive")
    with pytest.raises(data.DatasetError) as exc_info:
        data.load_dataset("cifar10", source="cifar_pickle", path=tmp_path)
    assert str(archive) in str(exc_info.value)


def replace_batch(batch: dict, case: str):
    if case == "wrong_row_length":
        batch[b"data"] = batch[b"data"][:, :3000]
    elif case == "wrong_dtype":
        batch[b"data"] = batch[b"data"].astype(np.int64)
    elif case == "data_not_array":
        batch[b"data"] = batch[b"data"].tobytes()
    elif case == "labels_not_list":
        batch[b"labels"] = "01"
    elif case == "label_out_of_range":
        batch[b"labels"] = [0, 10]
    elif case == "count_mismatch":
        batch[b"labels"] = [0, 1, 2]
    elif case == "missing_key":
        del batch[b"labels"]
    elif case == "not_a_dict":
        return [batch[b"data"], batch[b"labels"]]
    return batch


@pytest.mark.parametrize(
    "case, fragment",
    [
        ("wrong_row_length", "[N, 3072]"),
        ("wrong_dtype", "uint8"),
        ("data_not_array", "got bytes"),
        ("labels_not_list", "list of int"),
        ("label_out_of_range", "labels must lie in [0, 9]"),
        ("count_mismatch", "2 images but"),
        ("missing_key", "keys b'data' and b'labels'"),
        ("not_a_dict", "found list"),
        ("truncated", "not a valid CIFAR-10 batch pickle"),
        ("not_a_pickle", "not a valid CIFAR-10 batch pickle"),
    ],
)
def test_cifar_pickle_malformed_batch_names_it(tmp_path, case, fragment):
    pickles = cifar_pickles(tiny_cifar())
    if case == "truncated":
        pickles["data_batch_2"] = pickles["data_batch_2"][:-100]
    elif case == "not_a_pickle":
        pickles["data_batch_2"] = b"\x00" * 64
    else:
        batch = pickle.loads(pickles["data_batch_2"])
        pickles["data_batch_2"] = pickle.dumps(replace_batch(batch, case), protocol=2)
    write_cifar_archive(tmp_path / "cifar-10-python.tar.gz", pickles)
    with pytest.raises(data.DatasetError) as exc_info:
        data.load_dataset("cifar10", source="cifar_pickle", path=tmp_path)
    message = str(exc_info.value)
    assert f"{tmp_path / 'cifar-10-python.tar.gz'}:cifar-10-batches-py/data_batch_2" in message
    assert fragment in message


@pytest.mark.parametrize("layout", ["folder", "archive"])
def test_cifar_pickle_refuses_disallowed_globals_without_running_them(tmp_path, layout):
    marker = tmp_path / "executed"
    pickles = cifar_pickles(tiny_cifar())
    pickles["test_batch"] = pickle.dumps({b"data": Evil(marker), b"labels": [0]}, protocol=2)
    if layout == "folder":
        path = write_cifar_folder(tmp_path, pickles)
    else:
        path = write_cifar_archive(tmp_path / "cifar-10-python.tar.gz", pickles)
    with pytest.raises(data.DatasetError) as exc_info:
        data.load_dataset("cifar10", source="cifar_pickle", path=path)
    message = str(exc_info.value)
    assert "system is not allowed" in message and "test_batch" in message
    assert not marker.exists()


@pytest.mark.parametrize(
    "payload, refused",
    [
        # builtins.eval("1") by hand: GLOBAL, argument tuple, REDUCE.
        (b"\x80\x02cbuiltins\neval\nX\x01\x00\x00\x001\x85R.", "builtins.eval is not allowed"),
        # _codecs.encode with a codec other than latin1.
        (b"\x80\x02c_codecs\nencode\nX\x01\x00\x00\x00aX\x05\x00\x00\x00rot13\x86R.", "only allowed"),
        # numpy.load is NumPy but not array reconstruction.
        (b"\x80\x02cnumpy\nload\nX\x01\x00\x00\x00x\x85R.", "numpy.load is not allowed"),
    ],
)
def test_cifar_unpickler_allows_only_array_reconstruction(tmp_path, payload, refused):
    pickles = cifar_pickles(tiny_cifar())
    pickles["data_batch_1"] = payload
    folder = write_cifar_folder(tmp_path, pickles)
    with pytest.raises(data.DatasetError) as exc_info:
        data.load_dataset("cifar10", source="cifar_pickle", path=folder)
    assert refused in str(exc_info.value) and str(folder / "data_batch_1") in str(exc_info.value)


# --------------------------------------------------------------------------
# tfds: a data set that is not prepared, offline.
# --------------------------------------------------------------------------


def assert_one_line_offline_error(exc_info, name: str, tfds_name: str, directory: Path) -> str:
    error = exc_info.value
    message = str(error)
    assert "\n" not in message
    assert error.__cause__ is None and (error.__context__ is None or error.__suppress_context__)  # no chain
    builder = tfds.builder(tfds_name, data_dir=str(directory))
    assert f"tfds data set {tfds_name!r} is not prepared in {directory / tfds_name / str(builder.version)}" in message
    offline = "cifar_pickle|cifar_binary|npz" if name == "cifar10" else "idx|npz"
    assert f"--config.data.source={offline} with --config.data.path=" in message
    assert "TFDS_DATA_DIR" in message and f"~/tensorflow_datasets/{tfds_name}" in message
    assert not (directory / tfds_name).exists()  # nothing half-written
    return message


@pytest.mark.parametrize("name, tfds_name, host", [("mnist", "mnist", "storage.googleapis.com"),
                                                   ("permuted_mnist", "mnist", "storage.googleapis.com"),
                                                   ("cifar10", "cifar10", "www.cs.toronto.edu")])
def test_tfds_unprepared_without_tensorflow_or_network_fails_in_one_line(tmp_path, no_network, monkeypatch, name,
                                                                          tfds_name, host):
    # Without TensorFlow ibjax downloads the original files tfds lists (tests/test_download.py);
    # without network either, it says so before writing anything.
    monkeypatch.setattr(_sources, "_tensorflow_installed", lambda: False)
    with pytest.raises(data.DatasetError) as exc_info:
        data.load_dataset(name, source="tfds", data_dir=str(tmp_path))
    message = assert_one_line_offline_error(exc_info, name, tfds_name, tmp_path)
    assert f"no network: cannot reach {host}" in message and "TensorFlow is not installed" in message
    assert str(tmp_path / "downloads" / "ibjax") in message and not (tmp_path / "downloads").exists()
    assert no_network  # the reachability probe asked, and was refused at once


@pytest.mark.parametrize("name, host", [("mnist", "storage.googleapis.com"), ("cifar10", "www.cs.toronto.edu")])
def test_tfds_unprepared_without_network_fails_before_downloading(tmp_path, no_network, monkeypatch, name, host):
    monkeypatch.setattr(_sources, "_tensorflow_installed", lambda: True)

    def download_and_prepare(self, *args, **kwargs):
        raise AssertionError("a download must not start without network")

    monkeypatch.setattr(tfds.core.DatasetBuilder, "download_and_prepare", download_and_prepare)
    with pytest.raises(data.DatasetError) as exc_info:
        data.load_dataset(name, source="tfds", data_dir=str(tmp_path))
    message = assert_one_line_offline_error(exc_info, name, name, tmp_path)
    assert f"no network: cannot reach {host}" in message
    assert no_network  # the reachability probe asked, and was refused at once


def test_tfds_failed_preparation_is_one_line(tmp_path, no_network, monkeypatch):
    monkeypatch.setattr(_sources, "_tensorflow_installed", lambda: True)
    monkeypatch.setattr(_sources, "_unreachable_hosts", lambda urls, timeout: [])

    def download_and_prepare(self, *args, **kwargs):
        raise ConnectionError("Max retries exceeded\n" + "  traceback line\n" * 40)

    monkeypatch.setattr(tfds.core.DatasetBuilder, "download_and_prepare", download_and_prepare)
    with pytest.raises(data.DatasetError) as exc_info:
        data.load_dataset("mnist", source="tfds", data_dir=str(tmp_path))
    message = assert_one_line_offline_error(exc_info, "mnist", "mnist", tmp_path)
    assert "preparing it failed: ConnectionError: Max retries exceeded)" in message


def test_tfds_builders_find_their_download_checksums(tmp_path):
    # DatasetBuilder.code_path imports importlib_resources (a declared dependency).
    urls = {name: list(tfds.builder(name, data_dir=str(tmp_path)).url_infos) for name in ("mnist", "cifar10")}
    assert "https://www.cs.toronto.edu/~kriz/cifar-10-binary.tar.gz" in urls["cifar10"]
    assert any(url.endswith("/t10k-images-idx3-ubyte.gz") for url in urls["mnist"])


class _Handler(http.server.BaseHTTPRequestHandler):
    def do_HEAD(self):
        self.send_response(200 if self.path == "/present" else 404)
        self.end_headers()

    def log_message(self, *args):
        pass


def test_unreachable_hosts_counts_any_http_answer_as_reachable(monkeypatch):
    for variable in ("http_proxy", "HTTP_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.delenv(variable, raising=False)
    server = http.server.HTTPServer(("127.0.0.1", 0), _Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        port = server.server_address[1]
        answering = [f"http://127.0.0.1:{port}/present", f"http://127.0.0.1:{port}/missing"]
        assert _sources._unreachable_hosts(answering, timeout=5.0) == []
    finally:
        server.shutdown()
        server.server_close()
    with socket.socket() as closed:  # a port nothing listens on
        closed.bind(("127.0.0.1", 0))
        closed_port = closed.getsockname()[1]
    assert _sources._unreachable_hosts([f"http://localhost:{closed_port}/x"], timeout=5.0) == ["localhost"]


# --------------------------------------------------------------------------
# tfds: the real mnist and cifar10 builders prepare ArrayRecord from local
# files in their download formats. Their preparation calls TensorFlow
# (tf.io.gfile in the builders and tfds's extractor, tf.image.encode_png for
# the images), so these run only where TensorFlow is installed.
# --------------------------------------------------------------------------


@pytest.fixture
def offline_downloads(monkeypatch, tmp_path, no_network):
    """Serves downloads from a local mirror folder; extraction is tfds's own."""
    mirror = tmp_path / "mirror"
    mirror.mkdir()

    def download_and_extract(self, url_or_urls):
        local = lambda url: mirror / url.rsplit("/", 1)[-1]  # noqa: E731
        if isinstance(url_or_urls, dict):
            return self.extract({key: local(url) for key, url in url_or_urls.items()})
        return self.extract(local(url_or_urls))

    monkeypatch.setattr(tfds.download.DownloadManager, "download_and_extract", download_and_extract)
    return mirror


def sort_by_first_pixel(x: np.ndarray, y: np.ndarray):
    order = np.argsort(x.reshape(len(x), -1)[:, 0], kind="stable")
    return x[order], y[order]


def test_tfds_real_mnist_builder_prepares_local_idx_files(tmp_path, offline_downloads):
    pytest.importorskip("tensorflow", reason="tfds's mnist preparation calls TensorFlow")
    kept = 4
    rng = np.random.default_rng(0)
    # The builder reads exactly 60,000 / 10,000 images; all but the first are
    # zeros (they compress to little), and max_examples_per_split keeps `kept`.
    files = {}
    for split, count in (("train", 60_000), ("test", 10_000)):
        images = np.zeros((count, 28, 28), np.uint8)
        images[:kept] = rng.integers(0, 256, (kept, 28, 28), dtype=np.uint8)
        images[:kept, 0, 0] = np.arange(kept) + (10 if split == "test" else 1)  # a unique first pixel
        labels = np.zeros(count, np.uint8)
        labels[:kept] = rng.integers(0, 10, kept)
        files[split] = images[:kept, ..., None], labels[:kept].astype(np.int32)
        for kind, array in (("images", images), ("labels", labels)):
            stem = MNIST_IDX[f"{split}_{kind}"]
            (offline_downloads / f"{stem}.gz").write_bytes(gzip.compress(idx_bytes(array), compresslevel=1))

    builder = tfds.builder("mnist", data_dir=str(tmp_path / "tfds"), file_format="array_record")
    builder.download_and_prepare(download_config=tfds.download.DownloadConfig(max_examples_per_split=kept))
    assert builder.is_prepared()

    ds = data.load_dataset("mnist", source="tfds", data_dir=str(tmp_path / "tfds"))
    # tfds writes examples in an order shuffled by key; compare as sets.
    for split in ("train", "test"):
        x, y = sort_by_first_pixel(getattr(ds, f"x_{split}"), getattr(ds, f"y_{split}"))
        np.testing.assert_array_equal(x, files[split][0])
        np.testing.assert_array_equal(y, files[split][1])


def cifar_binary_archive(path: Path, batches) -> Path:
    """``cifar-10-binary.tar.gz``: records of one label byte and 3,072 channel-major pixels."""
    members = {"cifar-10-batches-bin/batches.meta.txt": "".join(f"class_{i}\n" for i in range(10)).encode()}
    for name, (images, labels) in zip(CIFAR_BATCHES, batches):
        rows = channel_major(images)
        records = b"".join(bytes([label]) + row.tobytes() for label, row in zip(labels, rows))
        members[f"cifar-10-batches-bin/{name}.bin"] = records
    return write_tar_gz(path, members)


def test_tfds_real_cifar10_builder_prepares_local_archive(tmp_path, offline_downloads, monkeypatch):
    pytest.importorskip("tensorflow", reason="tfds's cifar10 preparation calls TensorFlow")
    batches = tiny_cifar(seed=4)
    for index, (images, _) in enumerate(batches):
        images[:, 0, 0, 0] = [2 * index + 1, 2 * index + 2]  # a unique first pixel
    cifar_binary_archive(offline_downloads / "cifar-10-binary.tar.gz", batches)
    monkeypatch.setattr(_sources, "_unreachable_hosts", lambda urls, timeout: [])  # the mirror stands in

    # Not prepared yet: load_dataset prepares it through the builder, then reads it.
    ds = data.load_dataset("cifar10", source="tfds", data_dir=str(tmp_path / "tfds"))
    # tfds writes examples in an order shuffled by key; compare as sets.
    loaded = (*sort_by_first_pixel(ds.x_train, ds.y_train), *sort_by_first_pixel(ds.x_test, ds.y_test))
    for got, expected in zip(loaded, expected_cifar(batches)):
        np.testing.assert_array_equal(got, expected)


def test_tfds_copy_prepared_as_tfrecord_is_named(tmp_path, offline_downloads):
    pytest.importorskip("tensorflow", reason="tfds's cifar10 preparation calls TensorFlow")
    cifar_binary_archive(offline_downloads / "cifar-10-binary.tar.gz", tiny_cifar(seed=5))
    builder = tfds.builder("cifar10", data_dir=str(tmp_path / "tfds"), file_format="tfrecord")
    builder.download_and_prepare()
    with pytest.raises(data.DatasetError) as exc_info:
        data.load_dataset("cifar10", source="tfds", data_dir=str(tmp_path / "tfds"))
    assert str(builder.data_dir) in str(exc_info.value) and "TFRecord" in str(exc_info.value)
