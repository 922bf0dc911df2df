"""Data sets as uint8 NumPy arrays, and the on-device input pipeline.

The paper's experiments (Kirsch, Lyle & Gal, "Unpacking Information
Bottlenecks", section 7) use Permutation-MNIST (Goodfellow et al., 2013),
MNIST and CIFAR10. Each data set is read once on the host into a frozen
:class:`Dataset` of uint8 images ``[N, H, W, C]`` and int32 labels ``[N]``;
everything after that (normalisation, augmentation, batching) is a pure
function of arrays meant to run *inside* the compiled train step.

Sources
-------
* ``"embedded"``: ``digits``, the 1,797 real 8×8 handwritten digits shipped
  with scikit-learn (no download), the default for quick runs and tests.
* ``"tfds"``: a tensorflow-datasets ArrayRecord copy read through
  ``builder.as_data_source`` (reading needs no TensorFlow; preparing a copy
  that is not there yet does, and needs network).
* ``"idx"``: a directory of MNIST-format IDX files, gzipped or not.
* ``"npz"``: one ``.npz`` with ``x_train, y_train, x_test, y_test``.
* ``"cifar_pickle"``: CIFAR-10's own python version, ``cifar-10-python.tar.gz``
  or its extracted ``cifar-10-batches-py/`` folder.
* ``"cifar_binary"``: CIFAR-10's binary version, ``cifar-10-binary.tar.gz`` or
  its extracted ``cifar-10-batches-bin/`` folder (records of one label byte and
  3,072 pixel bytes).

Without TensorFlow (Colab's TPU runtimes), a tfds data set that is not
prepared is read from its original files: ibjax downloads those that tfds
lists for it (URL, size and sha256 from tfds's own ``url_checksums`` table)
into ``<tfds data dir>/downloads/ibjax/``, verifies them and reads them with
the IDX or CIFAR-10 binary reader.

A file that is missing, malformed or inconsistent raises one
:class:`DatasetError` naming the file; nothing is returned half-loaded.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from ibjax._sources import (_IMAGE_SHAPE, _NUM_CLASSES, _TFDS_NAME, DATASET_SOURCES, DATASETS, PATH_SOURCES,
                            SOURCES, DatasetError, DatasetFileNotFoundError, _load_cifar_binary, _load_cifar_pickle,
                            _load_digits, _load_idx, _load_npz, _load_tfds)

__all__ = [
    "DATASETS",
    "SOURCES",
    "DATASET_SOURCES",
    "PATH_SOURCES",
    "NORMALIZATION",
    "Dataset",
    "DatasetError",
    "DatasetFileNotFoundError",
    "load_dataset",
    "pixel_permutation",
    "normalize",
    "preprocess",
    "crop_and_flip",
    "random_crop_flip",
    "epoch_batches",
    "eval_batches",
]

#: Per-channel ``(mean, std)`` of pixel values scaled to [0, 1].
#: MNIST and CIFAR10: the standard values over their training sets (for
#: CIFAR10 the true per-pixel std, not the often-copied 0.2023/0.1994/0.2010).
#: digits: computed once over all 1,797 images after scaling 0..16 to 0..255.
#: A pixel permutation leaves the statistics of MNIST unchanged.
NORMALIZATION: dict[str, tuple[tuple[float, ...], tuple[float, ...]]] = {
    "digits": ((0.3053,), (0.3759,)),
    "mnist": ((0.1307,), (0.3081,)),
    "permuted_mnist": ((0.1307,), (0.3081,)),
    "cifar10": ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
}

@dataclasses.dataclass(frozen=True, eq=False, repr=False)
class Dataset:
    """A classification data set held on the host.

    Attributes:
      name: one of :data:`DATASETS`.
      x_train: uint8 images ``[N_train, H, W, C]``.
      y_train: int32 labels ``[N_train]`` in ``[0, num_classes)``.
      x_test: uint8 images ``[N_test, H, W, C]``.
      y_test: int32 labels ``[N_test]`` in ``[0, num_classes)``.
      num_classes: number of classes of Y.
    """

    name: str
    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    num_classes: int

    def __post_init__(self):
        for split in ("train", "test"):
            x, y = getattr(self, f"x_{split}"), getattr(self, f"y_{split}")
            if x.dtype != np.uint8 or x.ndim != 4:
                raise ValueError(f"`x_{split}` must be uint8 [N, H, W, C]; got {x.dtype} {x.shape}.")
            if y.dtype != np.int32 or y.shape != x.shape[:1]:
                raise ValueError(f"`y_{split}` must be int32 [{x.shape[0]}]; got {y.dtype} {y.shape}.")
            if y.size and (y.min() < 0 or y.max() >= self.num_classes):
                raise ValueError(f"`y_{split}` must lie in [0, {self.num_classes}).")
        if self.x_train.shape[1:] != self.x_test.shape[1:]:
            raise ValueError(
                f"`x_train` and `x_test` image shapes differ: {self.x_train.shape[1:]} vs {self.x_test.shape[1:]}."
            )

    @property
    def image_shape(self) -> tuple[int, int, int]:
        """``(H, W, C)`` of one image."""
        return tuple(self.x_train.shape[1:])

    def __repr__(self) -> str:
        return (
            f"Dataset(name={self.name!r}, x_train={self.x_train.shape}, x_test={self.x_test.shape}, "
            f"num_classes={self.num_classes})"
        )


# --------------------------------------------------------------------------
# Host-side loading.
# --------------------------------------------------------------------------


def load_dataset(
    name: str,
    *,
    source: str | None = None,
    path: str | Path | None = None,
    split_at: int | None = None,
    permutation_seed: int = 0,
    data_dir: str | None = None,
    url_checksums: str | Path | None = None,
) -> Dataset:
    """Loads a data set into a :class:`Dataset` of uint8 images and int32 labels.

    ``permuted_mnist`` is MNIST (from any MNIST source) with one fixed
    permutation of the 784 pixels, :func:`pixel_permutation` of
    ``permutation_seed``, applied to train and test alike (Goodfellow et al.,
    2013).

    With ``split_at`` set, all examples the source holds (its train split if
    present, then its test split) are concatenated in order and split at that
    index: ``split_at=8000`` on the 10,000 MNIST ``t10k`` images trains on the
    first 8,000 and tests on the last 2,000. For ``idx`` the train files may
    then be absent.

    Args:
      name: one of :data:`DATASETS`.
      source: one of :data:`SOURCES` valid for ``name``
        (:data:`DATASET_SOURCES`); ``None`` picks the first of those.
      path: directory of IDX files (``source="idx"``), ``.npz`` file
        (``source="npz"``), for ``source="cifar_pickle"`` the
        ``cifar-10-python.tar.gz`` archive, its extracted
        ``cifar-10-batches-py`` folder, or a directory holding either, and
        for ``source="cifar_binary"`` likewise ``cifar-10-binary.tar.gz`` or
        ``cifar-10-batches-bin``; must be ``None`` for sources outside
        :data:`PATH_SOURCES`.
      split_at: optional index at which to re-split train + test, with
        ``0 < split_at < total``.
      permutation_seed: seed of the pixel permutation of ``permuted_mnist``;
        ignored for other data sets.
      data_dir: tensorflow-datasets data directory (``source="tfds"``);
        ``None`` uses the tfds default, ``$TFDS_DATA_DIR`` or
        ``~/tensorflow_datasets``. A data set not prepared there is
        downloaded and prepared as ArrayRecord where TensorFlow is installed;
        where it is not, the original files tfds lists are downloaded into
        ``<data_dir>/downloads/ibjax/`` (once; verified by size and sha256)
        and read without TensorFlow. Without network a one-line
        :class:`DatasetError` names the directory and the offline alternatives.
      url_checksums: (``source="tfds"``) a table in tfds's ``url_checksums``
        format (``URL<TAB>size<TAB>sha256<TAB>filename`` per line) to fetch the
        original files from instead of the one tfds ships, e.g. a mirror;
        given, it is used whenever the tfds copy is not prepared.

    Returns:
      The :class:`Dataset`.

    Raises:
      ValueError: for an unknown ``name`` or ``source``, or bad arguments.
      DatasetError: (a ``ValueError``) for a malformed or inconsistent file,
        or :class:`DatasetFileNotFoundError` (also a ``FileNotFoundError``)
        for a missing one; the message names the file.
    """
    if name not in DATASETS:
        raise ValueError(f"`name` must be one of {DATASETS}; got {name!r}.")
    if source is None:
        source = DATASET_SOURCES[name][0]
    if source not in SOURCES:
        raise ValueError(f"`source` must be one of {SOURCES}; got {source!r}.")
    if source not in DATASET_SOURCES[name]:
        raise ValueError(f"`source` for {name!r} must be one of {DATASET_SOURCES[name]}; got {source!r}.")
    if source in PATH_SOURCES and path is None:
        raise ValueError(f"`path` is required for source={source!r}.")
    if source not in PATH_SOURCES and path is not None:
        raise ValueError(
            f"`path` is only used by sources {PATH_SOURCES}; got path={path!r} with source={source!r}."
        )
    for argument, value in (("data_dir", data_dir), ("url_checksums", url_checksums)):
        if value is not None and source != "tfds":
            raise ValueError(f"`{argument}` is only used by source 'tfds'; got source={source!r}.")
    if split_at is not None and (not isinstance(split_at, int) or isinstance(split_at, bool) or split_at <= 0):
        raise ValueError(f"`split_at` must be None or a positive int; got {split_at!r}.")
    if not isinstance(permutation_seed, int) or isinstance(permutation_seed, bool):
        raise ValueError(f"`permutation_seed` must be an int; got {permutation_seed!r}.")

    if source == "embedded":
        splits = _load_digits()
    elif source == "tfds":
        splits = _load_tfds(_TFDS_NAME[name], name, data_dir, None if url_checksums is None else str(url_checksums))
    elif source == "idx":
        splits = _load_idx(Path(path), optional_train=split_at is not None)
    elif source == "cifar_pickle":
        splits = _load_cifar_pickle(Path(path))
    elif source == "cifar_binary":
        splits = _load_cifar_binary(Path(path))
    else:
        splits = _load_npz(Path(path), name)
    x_train, y_train, x_test, y_test = splits

    if split_at is not None:
        x_all = np.concatenate([x_train, x_test])
        y_all = np.concatenate([y_train, y_test])
        if split_at >= len(x_all):
            raise ValueError(f"`split_at` must be below the {len(x_all)} examples of {name!r}; got {split_at}.")
        x_train, x_test = x_all[:split_at], x_all[split_at:]
        y_train, y_test = y_all[:split_at], y_all[split_at:]

    if name == "permuted_mnist":
        permutation = pixel_permutation(permutation_seed, math.prod(_IMAGE_SHAPE[name]))
        x_train, x_test = (x.reshape(len(x), -1)[:, permutation].reshape(x.shape) for x in (x_train, x_test))

    return Dataset(name, x_train, y_train, x_test, y_test, _NUM_CLASSES)


def pixel_permutation(seed: int, num_pixels: int = 784) -> np.ndarray:
    """The fixed pixel permutation of Permutation-MNIST for ``seed``.

    Args:
      seed: permutation seed.
      num_pixels: number of pixels H·W·C of one image.

    Returns:
      int64 ``[num_pixels]``, a permutation of ``0..num_pixels-1``; flattened
      image ``x`` becomes ``x[permutation]``.
    """
    return np.random.default_rng(seed).permutation(num_pixels)


# --------------------------------------------------------------------------
# On-device input pipeline: pure functions of arrays with static Python
# options, called inside the compiled train and eval steps.
# --------------------------------------------------------------------------


def normalize(images: jax.Array, mean: Sequence[float], std: Sequence[float]) -> jax.Array:
    """Scales uint8 pixels to [0, 1] and standardises each channel.

    ``out[..., c] = (images[..., c] / 255 - mean[c]) / std[c]``

    Args:
      images: ``[..., C]`` pixels 0..255, uint8 or any real dtype.
      mean: ``C`` Python floats, per-channel mean of the [0, 1] pixels.
      std: ``C`` Python floats, per-channel standard deviation.

    Returns:
      float32 ``[..., C]``.
    """
    if len(mean) != images.shape[-1] or len(std) != images.shape[-1]:
        raise ValueError(
            f"`mean` and `std` need one value per channel ({images.shape[-1]}); got {len(mean)} and {len(std)}."
        )
    mean = jnp.asarray(mean, jnp.float32)
    std = jnp.asarray(std, jnp.float32)
    return (jnp.asarray(images, jnp.float32) / 255.0 - mean) / std


def preprocess(images: jax.Array, dataset_name: str) -> jax.Array:
    """:func:`normalize` with the :data:`NORMALIZATION` constants of a data set.

    Args:
      images: ``[..., C]`` pixels 0..255.
      dataset_name: one of :data:`DATASETS` (static).

    Returns:
      float32 ``[..., C]``.
    """
    if dataset_name not in NORMALIZATION:
        raise ValueError(f"`dataset_name` must be one of {DATASETS}; got {dataset_name!r}.")
    mean, std = NORMALIZATION[dataset_name]
    return normalize(images, mean, std)


def _check_images(images: jax.Array) -> None:
    if images.ndim != 4:
        raise ValueError(f"`images` must be a batch [B, H, W, C]; got shape {images.shape}.")


def _check_padding(padding: int) -> None:
    if not isinstance(padding, int) or isinstance(padding, bool) or padding < 0:
        raise ValueError(f"`padding` must be a non-negative int; got {padding!r}.")


def crop_and_flip(images: jax.Array, offsets: jax.Array, flips: jax.Array, padding: int = 4) -> jax.Array:
    """Zero-pads, crops back to H×W at given offsets, and mirrors chosen examples.

    ``out[b] = flip_b(pad(images[b])[dy_b : dy_b + H, dx_b : dx_b + W])`` where
    ``pad`` adds ``padding`` zero pixels on every side and ``flip_b`` mirrors
    left-right when ``flips[b]``. Offset ``(padding, padding)`` without flip
    is the identity.

    Args:
      images: ``[B, H, W, C]``, any dtype.
      offsets: integer ``[B, 2]`` of ``(dy, dx)`` in ``[0, 2·padding]``.
      flips: bool ``[B]``.
      padding: pixels of zero padding per side (static).

    Returns:
      ``[B, H, W, C]`` with the dtype of ``images``.
    """
    _check_images(images)
    _check_padding(padding)
    batch, height, width, channels = images.shape
    if offsets.shape != (batch, 2) or flips.shape != (batch,):
        raise ValueError(
            f"`offsets` must be [{batch}, 2] and `flips` [{batch}]; got {offsets.shape} and {flips.shape}."
        )
    padded = jnp.pad(images, ((0, 0), (padding, padding), (padding, padding), (0, 0)))

    def one(image, offset, flip):
        crop = jax.lax.dynamic_slice(image, (offset[0], offset[1], 0), (height, width, channels))
        return jnp.where(flip, crop[:, ::-1], crop)

    return jax.vmap(one)(padded, offsets, flips)


def random_crop_flip(rng: jax.Array, images: jax.Array, padding: int = 4) -> jax.Array:
    """CIFAR augmentation: random crop with zero padding and random horizontal flip.

    Each example gets an independent uniform offset in ``[0, 2·padding]²`` and
    a flip with probability ½, as torchvision's ``RandomCrop(32, padding=4)``
    followed by ``RandomHorizontalFlip()`` (He et al., 2016). See
    :func:`crop_and_flip`.

    Args:
      rng: PRNG key.
      images: ``[B, H, W, C]``, float or uint8.
      padding: pixels of zero padding per side (static).

    Returns:
      ``[B, H, W, C]`` with the dtype of ``images``; deterministic for a fixed ``rng``.
    """
    _check_images(images)
    _check_padding(padding)
    key_offsets, key_flips = jax.random.split(rng)
    batch = images.shape[0]
    offsets = jax.random.randint(key_offsets, (batch, 2), 0, 2 * padding + 1)
    flips = jax.random.bernoulli(key_flips, 0.5, (batch,))
    return crop_and_flip(images, offsets, flips, padding)


def _check_sizes(num_examples: int, batch_size: int) -> None:
    for arg, value in (("num_examples", num_examples), ("batch_size", batch_size)):
        if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
            raise ValueError(f"`{arg}` must be a positive int; got {value!r}.")


def epoch_batches(rng: jax.Array, num_examples: int, batch_size: int) -> jax.Array:
    """Shuffled example indices for one training epoch, in full batches.

    A random permutation of ``0..num_examples-1`` cut into
    ``num_examples // batch_size`` batches; the last partial batch is dropped
    so every step sees the same batch shape (its examples come back in later
    epochs under other permutations).

    Args:
      rng: PRNG key.
      num_examples: size of the training set (static).
      batch_size: examples per batch (static), at most ``num_examples``.

    Returns:
      int32 ``[num_examples // batch_size, batch_size]``, no index repeated.
    """
    _check_sizes(num_examples, batch_size)
    if batch_size > num_examples:
        raise ValueError(f"`batch_size` ({batch_size}) exceeds `num_examples` ({num_examples}): no full batch.")
    num_batches = num_examples // batch_size
    permutation = jax.random.permutation(rng, num_examples).astype(jnp.int32)
    return permutation[: num_batches * batch_size].reshape(num_batches, batch_size)


def eval_batches(num_examples: int, batch_size: int) -> tuple[jax.Array, jax.Array]:
    """Example indices in order for evaluation, with a mask for the padded tail.

    ``ceil(num_examples / batch_size)`` batches cover ``0..num_examples-1``
    once each; the last batch is padded with the index ``num_examples - 1``
    and ``mask`` is ``False`` there, so masked means count every example
    exactly once.

    Args:
      num_examples: size of the evaluated set (static).
      batch_size: examples per batch (static).

    Returns:
      ``(indices, mask)``: int32 and bool ``[num_batches, batch_size]``.
    """
    _check_sizes(num_examples, batch_size)
    num_batches = -(-num_examples // batch_size)
    positions = jnp.arange(num_batches * batch_size, dtype=jnp.int32).reshape(num_batches, batch_size)
    return jnp.minimum(positions, num_examples - 1), positions < num_examples
