"""The TensorFlow-free path of tfds data sets: ibjax downloads the original files tfds lists
(URL, size, sha256) and reads them with its own readers.

Everything is served by an HTTP server on 127.0.0.1 started here, from files made here,
with a checksum table in tfds's format that the test points ibjax at (a parameter of the
download function, ``url_checksums`` of ``load_dataset``, or ``config.data.url_checksums``).
"""

import errno
import gzip
import hashlib
import http.server
import importlib.util
import os
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest

from ibjax import _download, data

from test_data_sources import MNIST_IDX, cifar_binary_archive, expected_cifar, idx_bytes, tiny_cifar

ROOT = Path(__file__).resolve().parents[1]
needs_no_tensorflow = pytest.mark.skipif(
    importlib.util.find_spec("tensorflow") is not None,
    reason="with TensorFlow installed tfds prepares the data set itself")


class Server:
    """Serves ``files`` (path -> bytes) on 127.0.0.1, with byte ranges; records every request.

    ``cut[path] = n`` sends the full Content-Length but closes after n bytes (a broken transfer).
    """

    def __init__(self):
        self.files: dict[str, bytes] = {}
        self.cut: dict[str, int] = {}
        self.requests: list[tuple[str, str, str | None]] = []  # (method, path, Range header)
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_HEAD(self):
                self._answer(body=False)

            def do_GET(self):
                self._answer(body=True)

            def _answer(self, body):
                server.requests.append((self.command, self.path, self.headers.get("Range")))
                if self.path not in server.files:
                    self.send_error(404)
                    return
                payload, start = server.files[self.path], 0
                requested = self.headers.get("Range")
                if requested and requested.startswith("bytes=") and requested.endswith("-"):
                    start = int(requested[len("bytes="):-1])
                    self.send_response(206)
                    self.send_header("Content-Range", f"bytes {start}-{len(payload) - 1}/{len(payload)}")
                else:
                    self.send_response(200)
                self.send_header("Content-Length", str(len(payload) - start))
                self.end_headers()
                if body:
                    end = server.cut.get(self.path, len(payload))
                    self.wfile.write(payload[start:max(start, end)])
                    if end < len(payload):
                        self.close_connection = True

            def log_message(self, *args):
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def gets(self, path):
        return [r for r in self.requests if r[0] == "GET" and r[1] == path]

    def table(self, path: Path, listed: dict[str, bytes] | None = None) -> Path:
        """A url_checksums table for the served files (or ``listed``: name -> the bytes the table vouches for)."""
        listed = listed or {name.lstrip("/"): payload for name, payload in self.files.items()}
        lines = [f"{self.url}/{name}\t{len(payload)}\t{hashlib.sha256(payload).hexdigest()}\t{name}"
                 for name, payload in listed.items()]
        path.write_text("\n".join(lines) + "\n")
        return path


@pytest.fixture
def server(monkeypatch):
    for variable in ("http_proxy", "HTTP_PROXY", "https_proxy", "HTTPS_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.delenv(variable, raising=False)
    monkeypatch.setenv("no_proxy", "127.0.0.1,localhost")
    s = Server()
    yield s
    s.httpd.shutdown()
    s.httpd.server_close()


def remote(server, name, payload):
    server.files[f"/{name}"] = payload
    return _download.RemoteFile(f"{server.url}/{name}", len(payload), hashlib.sha256(payload).hexdigest(), name)


PAYLOAD = bytes(range(256)) * 4000  # 1,024,000 bytes: more than one chunk


# --------------------------------------------------------------------------
# The table.
# --------------------------------------------------------------------------


def test_tfds_own_tables_list_the_original_files():
    cifar = _download.read_url_checksums(_download.tfds_url_checksums("cifar10"))
    assert [(f.filename, f.size) for f in cifar] == [("cifar-10-binary.tar.gz", 170_052_171)]
    assert cifar[0].url == "https://www.cs.toronto.edu/~kriz/cifar-10-binary.tar.gz"
    mnist = {f.filename: f for f in _download.read_url_checksums(_download.tfds_url_checksums("mnist"))}
    assert set(mnist) == {f"{stem}.gz" for stem in MNIST_IDX.values()}
    assert mnist["t10k-labels-idx1-ubyte.gz"].size == 4542
    assert all(len(f.sha256) == 64 for f in mnist.values())


def test_table_lines_are_checked(tmp_path):
    table = tmp_path / "t.txt"
    table.write_text("# comment\n\nhttp://h/a.gz\t12\t" + "ab" * 32 + "\n")
    (only,) = _download.read_url_checksums(table)
    assert (only.filename, only.size, only.sha256) == ("a.gz", 12, "ab" * 32)
    for bad, says in [("http://h/a\t12\n", "line 1: expected"), ("http://h/a\tten\t" + "ab" * 32, "size"),
                      ("http://h/a\t1\tabc", "sha256"), ("http://h/a\t1\t" + "ab" * 32 + "\t../x", "plain name")]:
        table.write_text(bad)
        with pytest.raises(_download.DownloadError, match=says):
            _download.read_url_checksums(table)
    with pytest.raises(_download.DownloadError, match="cannot read"):
        _download.read_url_checksums(tmp_path / "absent.txt")


# --------------------------------------------------------------------------
# Downloads and their failure modes.
# --------------------------------------------------------------------------


def test_download_verifies_and_keeps_the_files(server, tmp_path, capsys):
    files = [remote(server, "a.bin", PAYLOAD), remote(server, "b.bin", b"small")]
    paths = _download.download_files(files, tmp_path / "cache", what="test set", progress=False)
    assert paths["a.bin"].read_bytes() == PAYLOAD and paths["b.bin"].read_bytes() == b"small"
    assert not list((tmp_path / "cache").glob("*.part"))
    line = capsys.readouterr().err.strip()
    assert "\n" not in line and "2 original file(s)" in line and "1.0 MB" in line
    assert server.url.removeprefix("http://") in line and str(tmp_path / "cache") in line
    # A second call finds them verified and asks the server nothing.
    count = len(server.requests)
    assert _download.download_files(files, tmp_path / "cache", progress=False) == paths
    assert len(server.requests) == count


def test_wrong_hash_removes_the_file_and_names_both_hashes(server, tmp_path):
    f = remote(server, "a.bin", PAYLOAD)
    listed = _download.RemoteFile(f.url, f.size, "0" * 64, f.filename)
    with pytest.raises(_download.DownloadError) as exc_info:
        _download.download_files([listed], tmp_path, progress=False)
    message = str(exc_info.value)
    assert "0" * 64 in message and hashlib.sha256(PAYLOAD).hexdigest() in message and "\n" not in message
    assert not isinstance(exc_info.value, _download.NetworkError)
    assert list(tmp_path.iterdir()) == []  # neither the file nor its .part


def test_a_corrupted_cached_file_is_downloaded_again(server, tmp_path):
    f = remote(server, "a.bin", PAYLOAD)
    (tmp_path / "a.bin").write_bytes(b"x" * len(PAYLOAD))  # the right size, the wrong bytes
    _download.download_files([f], tmp_path, progress=False)
    assert (tmp_path / "a.bin").read_bytes() == PAYLOAD and len(server.gets("/a.bin")) == 1


def test_more_bytes_than_listed_is_refused(server, tmp_path):
    f = remote(server, "a.bin", PAYLOAD)
    listed = _download.RemoteFile(f.url, f.size - 10, f.sha256, f.filename)
    with pytest.raises(_download.DownloadError, match="more than the"):
        _download.download_files([listed], tmp_path, progress=False)
    assert list(tmp_path.iterdir()) == []


def test_a_broken_transfer_keeps_its_part_and_the_rerun_resumes(server, tmp_path):
    f = remote(server, "a.bin", PAYLOAD)
    server.cut["/a.bin"] = 300_000
    with pytest.raises(_download.NetworkError, match="a rerun resumes") as exc_info:
        _download.download_files([f], tmp_path, progress=False)
    assert "\n" not in str(exc_info.value)
    assert not (tmp_path / "a.bin").exists()  # nothing under the final name
    assert (tmp_path / "a.bin.part").stat().st_size == 300_000
    del server.cut["/a.bin"]
    paths = _download.download_files([f], tmp_path, progress=False)
    assert paths["a.bin"].read_bytes() == PAYLOAD and not (tmp_path / "a.bin.part").exists()
    assert server.gets("/a.bin")[-1][2] == "bytes=300000-"  # resumed, not started again


def test_a_truncated_file_is_never_read(server, tmp_path):
    f = remote(server, "a.bin", PAYLOAD)
    server.files["/a.bin"] = PAYLOAD[:1000]  # the server holds a short file
    with pytest.raises(_download.NetworkError, match=f"ended after 1000 of {len(PAYLOAD)} bytes"):
        _download.download_files([f], tmp_path, progress=False)
    assert not (tmp_path / "a.bin").exists()


def test_no_network_is_named_before_anything_is_written(tmp_path):
    closed = _download.RemoteFile("http://127.0.0.1:9/a.bin", 1, "0" * 64, "a.bin")  # port 9: discard, closed
    with pytest.raises(_download.NetworkError, match="no network: cannot reach 127.0.0.1"):
        _download.download_files([closed], tmp_path / "cache", progress=False, timeout=2.0)
    assert not (tmp_path / "cache").exists()


def test_a_cache_that_cannot_be_made_is_named(server, tmp_path):
    f = remote(server, "a.bin", b"data")
    (tmp_path / "file").write_text("a file where the cache's parent should be")
    with pytest.raises(_download.DownloadError, match=f"{tmp_path / 'file' / 'cache'}: cannot create the download cache"):
        _download.download_files([f], tmp_path / "file" / "cache", progress=False)
    assert server.gets("/a.bin") == []


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes to read-only directories")
def test_a_read_only_cache_is_named(server, tmp_path):
    f = remote(server, "a.bin", b"data")
    cache = tmp_path / "cache"
    cache.mkdir()
    cache.chmod(0o500)
    try:
        with pytest.raises(_download.DownloadError, match=f"{cache}: the download cache is not writable"):
            _download.download_files([f], cache, progress=False)
    finally:
        cache.chmod(0o700)
    assert server.gets("/a.bin") == []


@pytest.mark.skipif(not Path("/dev/full").exists(), reason="needs /dev/full")
def test_a_full_cache_is_named_and_leaves_no_part(server, tmp_path):
    f = remote(server, "a.bin", PAYLOAD)
    (tmp_path / "a.bin.part").symlink_to("/dev/full")  # every write fails with ENOSPC
    assert errno.ENOSPC  # what /dev/full raises
    with pytest.raises(_download.DownloadError, match=f"{tmp_path}: no space left for a.bin"):
        _download.download_files([f], tmp_path, progress=False)
    assert not (tmp_path / "a.bin.part").exists() and not (tmp_path / "a.bin").exists()


# --------------------------------------------------------------------------
# load_dataset without TensorFlow, and the CIFAR-10 binary reader.
# --------------------------------------------------------------------------


def serve_mnist(server, rng):
    arrays = {}
    for split, count in (("train", 30), ("test", 12)):
        images = rng.integers(0, 256, (count, 28, 28), dtype=np.uint8)
        labels = rng.integers(0, 10, count).astype(np.uint8)
        arrays[split] = images[..., None], labels.astype(np.int32)
        for kind, array in (("images", images), ("labels", labels)):
            server.files[f"/{MNIST_IDX[f'{split}_{kind}']}.gz"] = gzip.compress(idx_bytes(array))
    return arrays


@needs_no_tensorflow
def test_mnist_without_tensorflow_reads_the_downloaded_idx_files(server, tmp_path):
    arrays = serve_mnist(server, np.random.default_rng(0))
    table = server.table(tmp_path / "mnist.txt")
    ds = data.load_dataset("mnist", source="tfds", data_dir=str(tmp_path / "tfds"), url_checksums=table)
    np.testing.assert_array_equal(ds.x_train, arrays["train"][0])
    np.testing.assert_array_equal(ds.y_train, arrays["train"][1])
    np.testing.assert_array_equal(ds.x_test, arrays["test"][0])
    np.testing.assert_array_equal(ds.y_test, arrays["test"][1])
    cache = tmp_path / "tfds" / "downloads" / "ibjax"
    assert sorted(p.name for p in cache.iterdir()) == sorted(name.lstrip("/") for name in server.files)
    permuted = data.load_dataset("permuted_mnist", source="tfds", data_dir=str(tmp_path / "tfds"), url_checksums=table)
    np.testing.assert_array_equal(np.sort(permuted.x_train.reshape(30, -1), 1), np.sort(ds.x_train.reshape(30, -1), 1))
    assert len(server.gets("/train-images-idx3-ubyte.gz")) == 1  # the second load read the cache


@needs_no_tensorflow
def test_cifar10_without_tensorflow_reads_the_downloaded_binary_archive(server, tmp_path):
    batches = tiny_cifar(seed=3)
    server.files["/cifar-10-binary.tar.gz"] = cifar_binary_archive(tmp_path / "a.tar.gz", batches).read_bytes()
    ds = data.load_dataset("cifar10", source="tfds", data_dir=str(tmp_path / "tfds"),
                           url_checksums=server.table(tmp_path / "cifar10.txt"))
    for got, expected in zip((ds.x_train, ds.y_train, ds.x_test, ds.y_test), expected_cifar(batches)):
        np.testing.assert_array_equal(got, expected)


@needs_no_tensorflow
def test_a_wrong_hash_through_load_dataset_is_one_line_and_leaves_nothing(server, tmp_path):
    serve_mnist(server, np.random.default_rng(1))
    listed = {name.lstrip("/"): payload for name, payload in server.files.items()}
    served = listed["t10k-labels-idx1-ubyte.gz"]
    listed["t10k-labels-idx1-ubyte.gz"] = bytes(len(served))  # the listed size, other bytes
    table = server.table(tmp_path / "mnist.txt", listed)
    with pytest.raises(data.DatasetError) as exc_info:
        data.load_dataset("mnist", source="tfds", data_dir=str(tmp_path / "tfds"), url_checksums=table)
    message = str(exc_info.value)
    assert "\n" not in message and "t10k-labels-idx1-ubyte.gz" in message
    assert hashlib.sha256(bytes(len(served))).hexdigest() in message and hashlib.sha256(served).hexdigest() in message
    cache = tmp_path / "tfds" / "downloads" / "ibjax"
    assert not (cache / "t10k-labels-idx1-ubyte.gz").exists() and not list(cache.glob("*.part"))


def test_cifar_binary_reader_matches_the_pickle_reader(tmp_path):
    from test_data_sources import cifar_pickles, write_cifar_archive

    batches = tiny_cifar(seed=7, per_batch=3)
    binary = data.load_dataset("cifar10", source="cifar_binary",
                               path=cifar_binary_archive(tmp_path / "cifar-10-binary.tar.gz", batches))
    pickled = data.load_dataset("cifar10", source="cifar_pickle",
                                path=write_cifar_archive(tmp_path / "cifar-10-python.tar.gz", cifar_pickles(batches)))
    for split in ("x_train", "y_train", "x_test", "y_test"):
        np.testing.assert_array_equal(getattr(binary, split), getattr(pickled, split))
    # Hand-checked: record 0 of test_batch.bin is its label byte, then the red plane's first pixel.
    assert binary.y_test[0] == batches[5][1][0] and binary.x_test[0, 0, 0, 0] == batches[5][0][0, 0, 0, 0]
    # The extracted folder, found from its parent, reads the same.
    import tarfile
    with tarfile.open(tmp_path / "cifar-10-binary.tar.gz") as tar:
        tar.extractall(tmp_path / "extracted", filter="data")
    folder = data.load_dataset("cifar10", source="cifar_binary", path=tmp_path / "extracted")
    np.testing.assert_array_equal(folder.x_train, binary.x_train)


def test_cifar_binary_reader_names_a_batch_of_broken_records(tmp_path):
    folder = tmp_path / "cifar-10-batches-bin"
    folder.mkdir()
    for stem in ("data_batch_1", "data_batch_2", "data_batch_3", "data_batch_4", "data_batch_5", "test_batch"):
        (folder / f"{stem}.bin").write_bytes(bytes(3073))
    (folder / "data_batch_3.bin").write_bytes(bytes(3073 + 5))
    with pytest.raises(data.DatasetError, match=r"data_batch_3.bin: 3078 bytes are not a whole number of 3073-byte"):
        data.load_dataset("cifar10", source="cifar_binary", path=folder)


# --------------------------------------------------------------------------
# The headline command, end to end, against the local server.
# --------------------------------------------------------------------------


@needs_no_tensorflow
@pytest.mark.slow
def test_headline_command_trains_cifar_from_the_served_archive(server, tmp_path):
    batches = tiny_cifar(seed=11, per_batch=8)
    server.files["/cifar-10-binary.tar.gz"] = cifar_binary_archive(tmp_path / "a.tar.gz", batches).read_bytes()
    table = server.table(tmp_path / "cifar10.txt")
    env = {**os.environ, "TFDS_DATA_DIR": str(tmp_path / "tfds")}
    # The headline command, with a tiny model and one short epoch in place of 100 ResNet18 epochs.
    command = [sys.executable, "scripts/train.py", "--config", "configs/cifar_condvar.py",
               f"--config.data.url_checksums={table}", "--workdir", str(tmp_path / "run"),
               "--config.model.encoder=mlp", "--config.model.encoder_hidden=(16,)", "--config.data.augment=False",
               "--config.train.num_epochs=1", "--config.train.batch_size=8", "--config.train.progress_bar=False"]
    result = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "downloading 1 original file(s) of cifar10 as tfds lists them" in result.stderr
    assert (tmp_path / "tfds" / "downloads" / "ibjax" / "cifar-10-binary.tar.gz").is_file()
    assert (tmp_path / "run" / "metrics.jsonl").read_text().count("\n") == 1


def test_config_names_a_bad_download_table(tmp_path):
    from ibjax import config as configlib

    config = configlib.from_file(ROOT / "configs" / "cifar_condvar.py")
    config.data.url_checksums = str(tmp_path / "absent.txt")
    with pytest.raises(configlib.ConfigError, match=r"config.data.url_checksums: .*absent.txt is not a file"):
        configlib.validate(config)
    config.data.source, config.data.path = "cifar_binary", str(tmp_path)
    with pytest.raises(configlib.ConfigError, match=r"url_checksums is only used with config.data.source='tfds'"):
        configlib.validate(config)
