"""Tests for ibjax.data: loaders (tfds mock, IDX, npz, digits) and on-device pipeline."""

import gzip
import itertools
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import tensorflow_datasets as tfds

from ibjax import _sources, data, experiment

REAL_MNIST = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "mnist"
# Label counts of the 10,000 MNIST t10k images (LeCun et al.), digits 0..9.
MNIST_TEST_LABEL_COUNTS = [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]

TRAIN_IMAGES, TRAIN_LABELS = "train-images-idx3-ubyte", "train-labels-idx1-ubyte"
TEST_IMAGES, TEST_LABELS = "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"


# --------------------------------------------------------------------------
# Helpers: hand-written IDX and npz files.
# --------------------------------------------------------------------------


def idx_bytes(array: np.ndarray, magic: int | None = None) -> bytes:
    """IDX encoding written from the format description, independent of the reader."""
    array = np.asarray(array, np.uint8)
    if magic is None:
        magic = 0x0800 | array.ndim
    header = magic.to_bytes(4, "big") + b"".join(d.to_bytes(4, "big") for d in array.shape)
    return header + array.tobytes()


def write(path: Path, payload: bytes, gz: bool) -> Path:
    if gz:
        path = path.with_name(path.name + ".gz")
        path.write_bytes(gzip.compress(payload))
    else:
        path.write_bytes(payload)
    return path


def tiny_mnist(seed: int = 0, n_train: int = 5, n_test: int = 3):
    rng = np.random.default_rng(seed)
    x_train = rng.integers(0, 256, (n_train, 28, 28), dtype=np.uint8)
    y_train = rng.integers(0, 10, n_train).astype(np.uint8)
    x_test = rng.integers(0, 256, (n_test, 28, 28), dtype=np.uint8)
    y_test = rng.integers(0, 10, n_test).astype(np.uint8)
    return x_train, y_train, x_test, y_test


def write_idx_dir(directory: Path, arrays, gz=(False, False, False, False), skip=()) -> dict:
    paths = {}
    for stem, array, z in zip((TRAIN_IMAGES, TRAIN_LABELS, TEST_IMAGES, TEST_LABELS), arrays, gz):
        if stem not in skip:
            paths[stem] = write(directory / stem, idx_bytes(array), z)
    return paths


def assert_error_names(exc_info, path) -> None:
    assert str(path) in str(exc_info.value), str(exc_info.value)


# --------------------------------------------------------------------------
# Argument checks and constants.
# --------------------------------------------------------------------------


def test_exported_names_are_consistent():
    assert set(data.DATASET_SOURCES) == set(data.DATASETS)
    assert set(data.NORMALIZATION) == set(data.DATASETS)
    for sources in data.DATASET_SOURCES.values():
        assert set(sources) <= set(data.SOURCES)
    for mean, std in data.NORMALIZATION.values():
        assert all(isinstance(v, float) for v in (*mean, *std))
        assert len(mean) == len(std)


@pytest.mark.parametrize(
    "kwargs, fragment",
    [
        (dict(name="fashion"), "`name` must be one of ('digits', 'mnist', 'permuted_mnist', 'cifar10')"),
        (dict(name="mnist", source="http"), "`source` must be one of ('embedded', 'tfds', 'idx', 'npz', 'cifar_pickle', 'cifar_binary')"),
        (dict(name="digits", source="idx", path="x"), "`source` for 'digits' must be one of ('embedded', 'npz')"),
        (dict(name="cifar10", source="idx", path="x"), "`source` for 'cifar10' must be one of ('tfds', 'cifar_pickle', 'cifar_binary', 'npz')"),
        (dict(name="mnist", source="idx"), "`path` is required"),
        (dict(name="mnist", source="tfds", path="x"), "`path` is only used"),
        (dict(name="digits", data_dir="x"), "`data_dir` is only used"),
        (dict(name="digits", split_at=0), "`split_at`"),
        (dict(name="digits", split_at=True), "`split_at`"),
        (dict(name="digits", split_at=1797), "`split_at` must be below the 1797"),
        (dict(name="permuted_mnist", source="idx", path="x", permutation_seed=1.5), "`permutation_seed`"),
    ],
)
def test_load_dataset_rejects_bad_arguments(kwargs, fragment):
    with pytest.raises(ValueError) as exc_info:
        data.load_dataset(**kwargs)
    assert fragment in str(exc_info.value)


def test_dataset_checks_its_arrays():
    x = np.zeros((2, 4, 4, 1), np.uint8)
    y = np.zeros(2, np.int32)
    ds = data.Dataset("digits", x, y, x[:1], y[:1], 10)
    assert ds.image_shape == (4, 4, 1)
    with pytest.raises(ValueError, match="x_train"):
        data.Dataset("digits", x.astype(np.float32), y, x, y, 10)
    with pytest.raises(ValueError, match="y_test"):
        data.Dataset("digits", x, y, x, y[:1], 10)
    with pytest.raises(ValueError, match="y_train"):
        data.Dataset("digits", x, y + 10, x, y, 10)


# --------------------------------------------------------------------------
# tfds through tfds.data_source, mocked (offline, no TensorFlow).
# --------------------------------------------------------------------------


@pytest.fixture(autouse=True)
def _mocked_tfds_needs_no_preparation(monkeypatch):
    # mock_data leaves builders unprepared and makes preparing them a no-op; ibjax's checks
    # before a download (network) and its TensorFlow-free download path do not apply.
    monkeypatch.setattr(_sources, "_tensorflow_installed", lambda: True)
    monkeypatch.setattr(_sources, "_prepare_tfds", lambda builder, name: None)


def test_tfds_mnist_matches_data_source():
    with tfds.testing.mock_data(num_examples=12):
        ds = data.load_dataset("mnist", source="tfds")
        raw = tfds.data_source("mnist", split="test")
        expected = np.stack([raw[i]["image"] for i in range(len(raw))])
        expected_labels = np.array([raw[i]["label"] for i in range(len(raw))])
    assert ds.x_train.shape == (12, 28, 28, 1) and ds.x_test.shape == (12, 28, 28, 1)
    assert ds.x_train.dtype == np.uint8 and ds.y_train.dtype == np.int32 and ds.y_test.dtype == np.int32
    assert ds.y_train.shape == (12,) and ds.num_classes == 10
    assert ds.y_train.min() >= 0 and ds.y_train.max() < 10
    np.testing.assert_array_equal(ds.x_test, expected)
    np.testing.assert_array_equal(ds.y_test, expected_labels)


def test_tfds_cifar10_shapes_and_split_at():
    with tfds.testing.mock_data(num_examples=6):
        ds = data.load_dataset("cifar10", source="tfds")
        resplit = data.load_dataset("cifar10", source="tfds", split_at=8)
    assert ds.x_train.shape == (6, 32, 32, 3) and ds.image_shape == (32, 32, 3)
    assert ds.y_test.shape == (6,) and 0 <= ds.y_test.min() and ds.y_test.max() < 10
    assert resplit.x_train.shape == (8, 32, 32, 3) and resplit.x_test.shape == (4, 32, 32, 3)
    np.testing.assert_array_equal(resplit.x_train, np.concatenate([ds.x_train, ds.x_test])[:8])
    np.testing.assert_array_equal(resplit.y_test, np.concatenate([ds.y_train, ds.y_test])[8:])


def test_tfds_permuted_mnist_one_permutation_for_train_and_test():
    n = 10
    with tfds.testing.mock_data(num_examples=n):
        plain = data.load_dataset("mnist", source="tfds")
        permuted = data.load_dataset("permuted_mnist", source="tfds", permutation_seed=3)
    perm = data.pixel_permutation(3)
    np.testing.assert_array_equal(np.sort(perm), np.arange(784))
    assert np.any(perm != np.arange(784))
    assert np.any(perm != data.pixel_permutation(4))
    for split in ("train", "test"):
        x = getattr(plain, f"x_{split}").reshape(n, 784)
        xp = getattr(permuted, f"x_{split}")
        assert xp.shape == (n, 28, 28, 1) and xp.dtype == np.uint8
        np.testing.assert_array_equal(xp.reshape(n, 784), x[:, perm])
        assert np.any(xp.reshape(n, 784) != x)
        np.testing.assert_array_equal(getattr(permuted, f"y_{split}"), getattr(plain, f"y_{split}"))


# --------------------------------------------------------------------------
# IDX files.
# --------------------------------------------------------------------------


@pytest.mark.parametrize("gz", [(False,) * 4, (True,) * 4, (True, False, False, True)])
def test_idx_reads_plain_and_gzipped(tmp_path, gz):
    arrays = tiny_mnist()
    write_idx_dir(tmp_path, arrays, gz)
    ds = data.load_dataset("mnist", source="idx", path=str(tmp_path))
    x_train, y_train, x_test, y_test = arrays
    np.testing.assert_array_equal(ds.x_train, x_train[..., None])
    np.testing.assert_array_equal(ds.y_train, y_train)
    np.testing.assert_array_equal(ds.x_test, x_test[..., None])
    np.testing.assert_array_equal(ds.y_test, y_test)
    assert ds.x_train.dtype == np.uint8 and ds.y_test.dtype == np.int32


def test_idx_hand_checked_pixel(tmp_path):
    x_train, y_train, x_test, y_test = (np.zeros((1, 28, 28), np.uint8), np.array([7], np.uint8),
                                        np.zeros((1, 28, 28), np.uint8), np.array([2], np.uint8))
    x_train[0, 3, 5] = 200
    write_idx_dir(tmp_path, (x_train, y_train, x_test, y_test))
    # Byte 16 + 3·28 + 5 of the image file is pixel (3, 5) of image 0.
    assert (tmp_path / TRAIN_IMAGES).read_bytes()[16 + 3 * 28 + 5] == 200
    ds = data.load_dataset("mnist", source="idx", path=tmp_path)
    assert ds.x_train[0, 3, 5, 0] == 200 and ds.x_train.sum() == 200
    assert ds.y_train.tolist() == [7] and ds.y_test.tolist() == [2]


def test_idx_split_at_concatenates_train_then_test(tmp_path):
    arrays = tiny_mnist(n_train=5, n_test=3)
    write_idx_dir(tmp_path, arrays)
    ds = data.load_dataset("mnist", source="idx", path=tmp_path, split_at=6)
    x_all = np.concatenate([arrays[0], arrays[2]])[..., None]
    y_all = np.concatenate([arrays[1], arrays[3]])
    np.testing.assert_array_equal(ds.x_train, x_all[:6])
    np.testing.assert_array_equal(ds.x_test, x_all[6:])
    np.testing.assert_array_equal(ds.y_train, y_all[:6])
    np.testing.assert_array_equal(ds.y_test, y_all[6:])


def test_idx_split_at_with_only_test_files(tmp_path):
    arrays = tiny_mnist(n_test=4)
    write_idx_dir(tmp_path, arrays, gz=(True,) * 4, skip=(TRAIN_IMAGES, TRAIN_LABELS))
    ds = data.load_dataset("mnist", source="idx", path=tmp_path, split_at=3)
    np.testing.assert_array_equal(ds.x_train[..., 0], arrays[2][:3])
    np.testing.assert_array_equal(ds.x_test[..., 0], arrays[2][3:])
    with pytest.raises(data.DatasetFileNotFoundError) as exc_info:
        data.load_dataset("mnist", source="idx", path=tmp_path)
    assert isinstance(exc_info.value, FileNotFoundError) and isinstance(exc_info.value, ValueError)
    assert_error_names(exc_info, tmp_path / TRAIN_IMAGES)
    assert "split_at" in str(exc_info.value)
    with pytest.raises(ValueError, match="`split_at` must be below the 4"):
        data.load_dataset("mnist", source="idx", path=tmp_path, split_at=4)


@pytest.mark.parametrize("missing", [TRAIN_LABELS, TEST_IMAGES, TEST_LABELS])
@pytest.mark.parametrize("split_at", [None, 2])
def test_idx_missing_file(tmp_path, missing, split_at):
    write_idx_dir(tmp_path, tiny_mnist(), skip=(missing,))
    with pytest.raises(data.DatasetFileNotFoundError) as exc_info:
        data.load_dataset("mnist", source="idx", path=tmp_path, split_at=split_at)
    assert_error_names(exc_info, tmp_path / missing)


def test_idx_missing_directory(tmp_path):
    with pytest.raises(FileNotFoundError) as exc_info:
        data.load_dataset("mnist", source="idx", path=tmp_path / "nope")
    assert_error_names(exc_info, tmp_path / "nope")


def idx_corruptions():
    """(case name, file to replace, its new bytes, expected message fragment)."""
    x_train, y_train, _, _ = tiny_mnist()
    images, labels = idx_bytes(x_train), idx_bytes(y_train)
    return [
        ("bad magic", TRAIN_LABELS, idx_bytes(y_train, magic=0x0803), "bad IDX magic number 0x00000803"),
        ("images as labels", TRAIN_IMAGES, idx_bytes(x_train, magic=0x0801), "bad IDX magic"),
        ("no header", TRAIN_IMAGES, b"\x00\x00", "no header"),
        ("cut header", TRAIN_IMAGES, images[:10], "truncated IDX header"),
        ("truncated data", TRAIN_IMAGES, images[:-1], "truncated or trailing"),
        ("trailing bytes", TRAIN_LABELS, labels + b"\x01", "truncated or trailing"),
        ("wrong image size", TRAIN_IMAGES, idx_bytes(x_train[:, :27]), "[N, 28, 28, 1]"),
        ("count mismatch", TRAIN_LABELS, idx_bytes(y_train[:4]), "holds 5 images but"),
        ("label out of range", TRAIN_LABELS, idx_bytes(np.r_[y_train[:2], 10, y_train[3:]]), "found 10 at index 2"),
    ]


@pytest.mark.parametrize("gz", [False, True])
@pytest.mark.parametrize("case", idx_corruptions(), ids=lambda c: c[0])
def test_idx_malformed_file_names_it(tmp_path, case, gz):
    _, stem, payload, fragment = case
    write_idx_dir(tmp_path, tiny_mnist(), gz=(gz,) * 4, skip=(stem,))
    bad = write(tmp_path / stem, payload, gz)
    with pytest.raises(data.DatasetError) as exc_info:
        data.load_dataset("mnist", source="idx", path=tmp_path)
    assert isinstance(exc_info.value, ValueError)
    assert_error_names(exc_info, bad)
    assert fragment in str(exc_info.value)


def test_idx_corrupt_gzip_names_file(tmp_path):
    write_idx_dir(tmp_path, tiny_mnist(), skip=(TEST_IMAGES,))
    compressed = gzip.compress(idx_bytes(tiny_mnist()[2]))
    bad = tmp_path / f"{TEST_IMAGES}.gz"
    bad.write_bytes(compressed[: len(compressed) // 2])
    with pytest.raises(data.DatasetError) as exc_info:
        data.load_dataset("mnist", source="idx", path=tmp_path)
    assert_error_names(exc_info, bad)
    assert "cannot read" in str(exc_info.value)


def test_idx_count_mismatch_names_both_files(tmp_path):
    x_train, y_train, x_test, y_test = tiny_mnist()
    paths = write_idx_dir(tmp_path, (x_train, y_train, x_test, y_test[:2]))
    with pytest.raises(data.DatasetError) as exc_info:
        data.load_dataset("mnist", source="idx", path=tmp_path)
    assert_error_names(exc_info, paths[TEST_IMAGES])
    assert_error_names(exc_info, paths[TEST_LABELS])


# --------------------------------------------------------------------------
# The real MNIST test set in /work/shared/data/mnist.
# --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def real_mnist():
    if not (REAL_MNIST / f"{TEST_IMAGES}.gz").is_file():
        pytest.skip(f"real MNIST files not found in {REAL_MNIST}")
    return data.load_dataset("mnist", source="idx", path=REAL_MNIST, split_at=8000)


def test_real_mnist_split_at_8000(real_mnist):
    assert real_mnist.x_train.shape == (8000, 28, 28, 1) and real_mnist.x_test.shape == (2000, 28, 28, 1)
    x = np.concatenate([real_mnist.x_train, real_mnist.x_test])
    y = np.concatenate([real_mnist.y_train, real_mnist.y_test])
    assert x.shape == (10000, 28, 28, 1) and x.dtype == np.uint8
    counts = np.bincount(y, minlength=10)
    assert counts.sum() == 10000
    assert counts.tolist() == MNIST_TEST_LABEL_COUNTS
    # Independent parse: pixels start at byte 16 of the image file, labels at byte 8.
    with gzip.open(REAL_MNIST / f"{TEST_IMAGES}.gz") as f:
        raw = f.read()
    with gzip.open(REAL_MNIST / f"{TEST_LABELS}.gz") as f:
        raw_labels = f.read()
    np.testing.assert_array_equal(x[0, :, :, 0], np.frombuffer(raw[16 : 16 + 784], np.uint8).reshape(28, 28))
    np.testing.assert_array_equal(x[-1].ravel(), np.frombuffer(raw[-784:], np.uint8))
    np.testing.assert_array_equal(y[[0, 8000, 9999]], np.frombuffer(raw_labels, np.uint8)[8:][[0, 8000, 9999]])
    # The t10k statistics are within a few thousandths of the training-set constants.
    (mean,), (std,) = data.NORMALIZATION["mnist"]
    pixels = x.astype(np.float64) / 255.0
    assert abs(pixels.mean() - mean) < 0.005 and abs(pixels.std() - std) < 0.005


def test_real_mnist_needs_split_at_without_train_files(real_mnist):
    with pytest.raises(FileNotFoundError) as exc_info:
        data.load_dataset("mnist", source="idx", path=REAL_MNIST)
    assert_error_names(exc_info, REAL_MNIST / TRAIN_IMAGES)


def test_real_permuted_mnist(real_mnist):
    permuted = data.load_dataset("permuted_mnist", source="idx", path=str(REAL_MNIST), split_at=8000)
    perm = data.pixel_permutation(0)
    for split in ("train", "test"):
        x = getattr(real_mnist, f"x_{split}")
        flat = x.reshape(len(x), -1)
        np.testing.assert_array_equal(getattr(permuted, f"x_{split}").reshape(len(x), -1), flat[:, perm])
    assert np.any(permuted.x_test != real_mnist.x_test)


# --------------------------------------------------------------------------
# npz files.
# --------------------------------------------------------------------------


def npz_arrays(n_train=4, n_test=3, shape=(28, 28)):
    rng = np.random.default_rng(1)
    return dict(
        x_train=rng.integers(0, 256, (n_train, *shape), dtype=np.uint8),
        y_train=rng.integers(0, 10, n_train),
        x_test=rng.integers(0, 256, (n_test, *shape), dtype=np.uint8),
        y_test=rng.integers(0, 10, n_test),
    )


def test_npz_loader(tmp_path):
    arrays = npz_arrays()
    path = tmp_path / "mnist.npz"
    np.savez_compressed(path, **arrays)
    ds = data.load_dataset("mnist", source="npz", path=str(path))
    np.testing.assert_array_equal(ds.x_train, arrays["x_train"][..., None])
    np.testing.assert_array_equal(ds.y_test, arrays["y_test"])
    assert ds.y_train.dtype == np.int32 and ds.x_test.dtype == np.uint8

    resplit = data.load_dataset("permuted_mnist", source="npz", path=path, split_at=2, permutation_seed=5)
    x_all = np.concatenate([arrays["x_train"], arrays["x_test"]]).reshape(7, 784)
    perm = data.pixel_permutation(5)
    np.testing.assert_array_equal(resplit.x_train.reshape(2, 784), x_all[:2, perm])
    np.testing.assert_array_equal(resplit.x_test.reshape(5, 784), x_all[2:, perm])


def test_npz_cifar10_keras_style_labels(tmp_path):
    arrays = npz_arrays(shape=(32, 32, 3))
    arrays["y_train"] = arrays["y_train"][:, None].astype(np.uint8)
    path = tmp_path / "cifar.npz"
    np.savez(path, **arrays)
    ds = data.load_dataset("cifar10", source="npz", path=path)
    assert ds.image_shape == (32, 32, 3)
    np.testing.assert_array_equal(ds.y_train, arrays["y_train"][:, 0])


def npz_corruptions():
    good = npz_arrays()
    without_x_test = {k: v for k, v in good.items() if k != "x_test"}
    return [
        ("missing key", {k: v for k, v in good.items() if k != "y_test"}, "must hold keys"),
        ("renamed key", {**without_x_test, "x_val": good["x_test"]}, "must hold keys"),
        ("wrong image shape", {**good, "x_train": good["x_train"][:, :, :20]}, "(x_train): images must have shape"),
        ("float images", {**good, "x_test": good["x_test"].astype(np.float32)}, "(x_test): images must hold integers"),
        ("pixel range", {**good, "x_test": good["x_test"].astype(np.int32) + 1}, "pixel values must lie in 0..255"),
        ("labels 2-D", {**good, "y_train": np.zeros((4, 2), np.int64)}, "(y_train): labels must be integers"),
        ("count mismatch", {**good, "y_test": good["y_test"][:2]}, "holds 3 images but"),
        ("label out of range", {**good, "y_train": np.array([0, 1, -1, 2])}, "found -1 at index 2"),
    ]


@pytest.mark.parametrize("case", npz_corruptions(), ids=lambda c: c[0])
def test_npz_malformed_names_file(tmp_path, case):
    _, arrays, fragment = case
    path = tmp_path / "bad.npz"
    np.savez(path, **arrays)
    with pytest.raises(data.DatasetError) as exc_info:
        data.load_dataset("mnist", source="npz", path=path)
    assert_error_names(exc_info, path)
    assert fragment in str(exc_info.value)


def test_npz_missing_or_not_an_archive(tmp_path):
    with pytest.raises(data.DatasetFileNotFoundError) as exc_info:
        data.load_dataset("mnist", source="npz", path=tmp_path / "none.npz")
    assert_error_names(exc_info, tmp_path / "none.npz")
    npy = tmp_path / "x.npy"
    np.save(npy, np.zeros(3))
    with pytest.raises(data.DatasetError) as exc_info:
        data.load_dataset("mnist", source="npz", path=npy)
    assert_error_names(exc_info, npy)


# --------------------------------------------------------------------------
# digits, embedded from scikit-learn.
# --------------------------------------------------------------------------


def test_digits_split_is_deterministic_stratified_and_complete():
    from sklearn.datasets import load_digits

    ds = data.load_dataset("digits")
    again = data.load_dataset("digits", source="embedded")
    np.testing.assert_array_equal(ds.x_train, again.x_train)
    np.testing.assert_array_equal(ds.y_test, again.y_test)
    assert ds.x_train.shape == (1438, 8, 8, 1) and ds.x_test.shape == (359, 8, 8, 1)
    assert ds.x_train.dtype == np.uint8 and ds.y_train.dtype == np.int32
    assert ds.x_train.min() == 0 and ds.x_train.max() == 255

    digits = load_digits()
    counts = np.bincount(digits.target)
    np.testing.assert_array_equal(np.bincount(ds.y_test, minlength=10), np.round(0.2 * counts))
    # The two splits together are exactly the 1,797 scaled images, as a multiset.
    reference = np.round(digits.images * 255.0 / 16.0).reshape(-1, 64)
    rows = np.concatenate([ds.x_train.reshape(-1, 64), ds.x_test.reshape(-1, 64)])
    labels = np.concatenate([ds.y_train, ds.y_test])
    got = np.column_stack([rows, labels]).astype(np.int64)
    want = np.column_stack([reference, digits.target]).astype(np.int64)
    np.testing.assert_array_equal(got[np.lexsort(got.T)], want[np.lexsort(want.T)])

    (mean,), (std,) = data.NORMALIZATION["digits"]
    all_pixels = reference / 255.0
    assert abs(all_pixels.mean() - mean) < 1e-4 and abs(all_pixels.std() - std) < 1e-4


def test_digits_split_at():
    ds = data.load_dataset("digits", split_at=1000)
    base = data.load_dataset("digits")
    assert ds.x_train.shape == (1000, 8, 8, 1) and ds.x_test.shape == (797, 8, 8, 1)
    np.testing.assert_array_equal(ds.y_test, np.concatenate([base.y_train, base.y_test])[1000:])


# --------------------------------------------------------------------------
# Normalisation.
# --------------------------------------------------------------------------


def test_normalize_matches_numpy_reference():
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (3, 5, 5, 3), dtype=np.uint8)
    mean, std = data.NORMALIZATION["cifar10"]
    want = (images.astype(np.float64) / 255.0 - np.array(mean)) / np.array(std)
    got = jax.jit(data.normalize, static_argnums=(1, 2))(images, mean, std)
    assert got.dtype == jnp.float32 and got.shape == images.shape
    np.testing.assert_allclose(np.asarray(got), want, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(np.asarray(jax.jit(data.preprocess, static_argnums=1)(images, "cifar10")), want,
                               rtol=1e-6, atol=1e-6)


def test_normalize_hand_checked_and_checks():
    images = jnp.array([0, 51, 255], jnp.uint8).reshape(1, 1, 3, 1)
    # (0 - .5)/.5 = -1, (.2 - .5)/.5 = -0.6, (1 - .5)/.5 = 1.
    np.testing.assert_allclose(np.asarray(data.normalize(images, (0.5,), (0.5,))).ravel(), [-1.0, -0.6, 1.0],
                               rtol=1e-6)
    with pytest.raises(ValueError, match="one value per channel"):
        data.normalize(images, (0.1, 0.2), (0.3, 0.4))
    with pytest.raises(ValueError, match="`dataset_name` must be one of"):
        data.preprocess(images, "svhn")


# --------------------------------------------------------------------------
# Augmentation.
# --------------------------------------------------------------------------


def crop_flip_reference(images, offsets, flips, padding):
    padded = np.pad(images, ((0, 0), (padding, padding), (padding, padding), (0, 0)))
    h, w = images.shape[1:3]
    out = np.stack([padded[b, dy : dy + h, dx : dx + w] for b, (dy, dx) in enumerate(offsets)])
    return np.where(np.asarray(flips)[:, None, None, None], out[:, :, ::-1], out)


@pytest.mark.parametrize("dtype", [np.uint8, np.float32])
def test_crop_and_flip_matches_numpy_reference(dtype):
    rng = np.random.default_rng(0)
    images = rng.integers(1, 256, (6, 8, 7, 3)).astype(dtype)
    offsets = rng.integers(0, 9, (6, 2)).astype(np.int32)
    flips = rng.random(6) < 0.5
    got = jax.jit(data.crop_and_flip, static_argnums=3)(images, offsets, flips, 4)
    assert got.dtype == dtype and got.shape == images.shape
    np.testing.assert_array_equal(np.asarray(got), crop_flip_reference(images, offsets, flips, 4))


def test_crop_and_flip_hand_checked():
    images = np.arange(1, 17, dtype=np.float32).reshape(1, 4, 4, 1)
    centre = data.crop_and_flip(images, jnp.full((1, 2), 4, jnp.int32), jnp.zeros(1, bool), 4)
    np.testing.assert_array_equal(np.asarray(centre), images)  # offset (4, 4): identity
    flipped = data.crop_and_flip(images, jnp.full((1, 2), 4, jnp.int32), jnp.ones(1, bool), 4)
    np.testing.assert_array_equal(np.asarray(flipped), images[:, :, ::-1])
    # Offset (3, 5) with padding 4: one zero row on top, shifted one column left.
    shifted = np.asarray(data.crop_and_flip(images, jnp.array([[3, 5]]), jnp.zeros(1, bool), 4))[0, :, :, 0]
    np.testing.assert_array_equal(shifted, [[0, 0, 0, 0], [2, 3, 4, 0], [6, 7, 8, 0], [10, 11, 12, 0]])


def test_random_crop_flip_is_a_crop_and_flip_of_each_example():
    batch, size, padding = 128, 6, 2
    # Distinct positive pixels, so each output identifies its offset and flip uniquely.
    images = np.arange(1, batch * size * size + 1, dtype=np.float32).reshape(batch, size, size, 1)
    key = jax.random.key(0)
    out = np.asarray(jax.jit(data.random_crop_flip, static_argnums=2)(key, images, padding))
    assert out.shape == images.shape and out.dtype == np.float32
    np.testing.assert_array_equal(out, np.asarray(data.random_crop_flip(key, images, padding)))
    assert np.any(out != np.asarray(data.random_crop_flip(jax.random.key(1), images, padding)))

    found = []
    combos = list(itertools.product(range(2 * padding + 1), range(2 * padding + 1), (False, True)))
    for b in range(batch):
        matches = [c for c in combos
                   if np.array_equal(out[b], crop_flip_reference(images[b : b + 1], [c[:2]], [c[2]], padding)[0])]
        assert len(matches) == 1
        found.append(matches[0])
    dy, dx, flip = map(np.array, zip(*found))
    assert len(set(dy)) == 2 * padding + 1 and len(set(dx)) == 2 * padding + 1
    assert 34 <= flip.sum() <= 94  # Binomial(128, ½) is within ±5.3σ.
    assert np.any(out != images)


def test_random_crop_flip_uint8_and_checks():
    images = np.random.default_rng(0).integers(0, 256, (4, 32, 32, 3), dtype=np.uint8)
    out = data.random_crop_flip(jax.random.key(3), images)
    assert out.dtype == jnp.uint8 and out.shape == images.shape
    with pytest.raises(ValueError, match="`images` must be a batch"):
        data.random_crop_flip(jax.random.key(0), images[0])
    with pytest.raises(ValueError, match="`padding`"):
        data.random_crop_flip(jax.random.key(0), images, padding=-1)


# --------------------------------------------------------------------------
# Batching.
# --------------------------------------------------------------------------


def test_epoch_batches_is_a_permutation_subset():
    key = jax.random.key(0)
    batches = jax.jit(data.epoch_batches, static_argnums=(1, 2))(key, 10, 3)
    assert batches.shape == (3, 3) and batches.dtype == jnp.int32
    flat = np.asarray(batches).ravel()
    assert len(set(flat.tolist())) == 9 and flat.min() >= 0 and flat.max() < 10
    np.testing.assert_array_equal(batches, data.epoch_batches(key, 10, 3))
    assert np.any(np.asarray(data.epoch_batches(jax.random.key(1), 10, 3)) != np.asarray(batches))
    whole = np.asarray(data.epoch_batches(key, 12, 4)).ravel()
    np.testing.assert_array_equal(np.sort(whole), np.arange(12))
    with pytest.raises(ValueError, match="no full batch"):
        data.epoch_batches(key, 3, 4)
    with pytest.raises(ValueError, match="`batch_size` must be a positive int"):
        data.epoch_batches(key, 3, 0)


def test_eval_batches_hand_checked():
    indices, mask = jax.jit(data.eval_batches, static_argnums=(0, 1))(10, 4)
    assert indices.dtype == jnp.int32 and mask.dtype == jnp.bool_
    np.testing.assert_array_equal(indices, [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9, 9, 9]])
    np.testing.assert_array_equal(mask, [[1, 1, 1, 1], [1, 1, 1, 1], [1, 1, 0, 0]])


@pytest.mark.parametrize("num_examples, batch_size", [(1, 1), (8, 4), (9, 4), (7, 16), (2000, 256)])
def test_eval_batches_counts_every_example_once(num_examples, batch_size):
    indices, mask = map(np.asarray, data.eval_batches(num_examples, batch_size))
    assert indices.shape == mask.shape == (-(-num_examples // batch_size), batch_size)
    np.testing.assert_array_equal(np.sort(indices[mask]), np.arange(num_examples))
    assert indices.min() >= 0 and indices.max() == num_examples - 1
    with pytest.raises(ValueError, match="`num_examples`"):
        data.eval_batches(0, batch_size)


def test_num_train_keeps_the_first_training_examples_and_the_test_split():
    from ibjax import config as configlib

    config = configlib.default_config()
    full = experiment.load_data(config)
    config.data.num_train = 100
    part = experiment.load_data(config)
    np.testing.assert_array_equal(part.x_train, full.x_train[:100])
    np.testing.assert_array_equal(part.y_train, full.y_train[:100])
    np.testing.assert_array_equal(part.x_test, full.x_test)
    config.data.num_train = 5000
    with pytest.raises(configlib.ConfigError, match=r"config.data.num_train=5000 exceeds the 1438 training examples"):
        experiment.load_data(config)
