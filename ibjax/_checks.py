"""Argument checks shared by :mod:`ibjax.losses`, :mod:`ibjax.information` and :mod:`ibjax.estimators`.

The trace-time checks look at shapes and dtypes, never at the values of
traced arrays, so they cost nothing inside a compiled step; a concrete
array's values are checked too. Each error names the argument.
"""

from __future__ import annotations

import numbers
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh



def is_concrete(x: Any) -> bool:
    return not isinstance(x, jax.core.Tracer)


def check_labels(labels: jax.Array, batch: int, num_classes: int | None, name="labels"):
    # The range is checked on the values as given: jnp.asarray wraps an int64
    # label such as 2**32 + 1 into int32 range (to 1) when x64 is off.
    values = np.asarray(labels) if is_concrete(labels) else None
    labels = jnp.asarray(labels)
    if labels.ndim != 1:
        raise ValueError(f"`{name}` must be a 1-D array [B] of class indices; got shape {labels.shape}.")
    if not jnp.issubdtype(labels.dtype, jnp.integer):
        raise TypeError(f"`{name}` must hold integer class indices; got dtype {labels.dtype}.")
    if labels.shape[0] != batch:
        raise ValueError(
            f"`{name}` has {labels.shape[0]} entries but the batch has {batch} examples."
        )
    if num_classes is not None and values is not None and values.size:
        if values.min() < 0 or values.max() >= num_classes:
            raise ValueError(
                f"`{name}` must lie in [0, {num_classes}); got values in "
                f"[{values.min()}, {values.max()}]."
            )
    return labels


def check_where(where: jax.Array | None, batch: int) -> jax.Array:
    if where is None:
        return jnp.ones((batch,), dtype=bool)
    where = jnp.asarray(where)
    if where.shape != (batch,):
        raise ValueError(f"`where` must have shape ({batch},) like the batch; got {where.shape}.")
    if where.dtype != jnp.bool_:
        raise TypeError(f"`where` must be a boolean mask; got dtype {where.dtype}.")
    return where


def check_float(x: jax.Array, name: str) -> jax.Array:
    x = jnp.asarray(x)
    if not jnp.issubdtype(x.dtype, jnp.floating):
        raise TypeError(f"`{name}` must be a floating-point array; got dtype {x.dtype}.")
    return x


def psum(x, axis_name):
    return x if axis_name is None else jax.lax.psum(x, axis_name)


def pmax(x, axis_name):
    return x if axis_name is None else jax.lax.pmax(x, axis_name)




def check_k(k) -> int:
    if isinstance(k, bool) or not isinstance(k, numbers.Integral) or k < 1:
        raise ValueError(f"k must be an integer >= 1, got {k!r}")
    return int(k)


def check_block_size(block_size) -> int | None:
    if block_size is None:
        return None
    if (
        isinstance(block_size, bool)
        or not isinstance(block_size, numbers.Integral)
        or block_size < 1
    ):
        raise ValueError(f"block_size must be a positive integer or None, got {block_size!r}")
    return int(block_size)


def check_points(x, name: str, k: int) -> tuple[int, int]:
    """Checks that ``x`` is a 2-D float array with more than k rows."""
    shape = getattr(x, "shape", None)
    dtype = getattr(x, "dtype", None)
    if shape is None or dtype is None:
        raise TypeError(f"{name} must be a 2-D float array [N, d], got {type(x).__name__}")
    if len(shape) != 2:
        raise ValueError(f"{name} must be 2-D [N, d], got shape {tuple(shape)}")
    if not jnp.issubdtype(dtype, jnp.floating):
        raise TypeError(f"{name} must have a floating dtype, got {dtype}")
    n, d = shape
    if d < 1:
        raise ValueError(f"{name} must have at least one column, got shape {tuple(shape)}")
    if n <= k:
        raise ValueError(f"{name} needs more than k = {k} points, got N = {n}")
    return n, d


def check_devices(devices, axis_name: str) -> Mesh:
    """A 1-D mesh named ``axis_name`` over ``devices`` (default: every device of the default backend)."""
    if devices is None:
        devices = jax.devices()
    if isinstance(devices, jax.Device):
        devices = [devices]
    devices = list(devices)
    if not devices or not all(isinstance(d, jax.Device) for d in devices):
        raise TypeError(f"devices must be a non-empty sequence of jax.Device or None, got {devices!r}")
    return Mesh(np.array(devices), (axis_name,))


def check_jitter(jitter, rng) -> float:
    if isinstance(jitter, bool) or not isinstance(jitter, numbers.Real) or not jitter >= 0:
        raise ValueError(f"jitter must be a float >= 0, got {jitter!r}")
    if jitter > 0 and rng is None:
        raise ValueError("rng (a jax.random key) is required when jitter > 0")
    return float(jitter)


def check_host_labels(labels, n: int) -> np.ndarray:
    shape = getattr(labels, "shape", None)
    dtype = getattr(labels, "dtype", None)
    if shape is None or dtype is None:
        raise TypeError(f"labels must be a 1-D integer array [N], got {type(labels).__name__}")
    if len(shape) != 1 or shape[0] != n:
        raise ValueError(
            f"labels must be 1-D with one label per row of x (N = {n}), got shape {tuple(shape)}"
        )
    if not jnp.issubdtype(dtype, jnp.integer):
        raise TypeError(f"labels must have an integer dtype, got {dtype}")
    return np.asarray(labels)
