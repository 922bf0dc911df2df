"""Bad inputs, tried systematically: property-based tests (hypothesis) of
``ibjax.losses``, ``ibjax.information`` and ``ibjax.estimators``.

Hypothesis feeds every public function of the three modules layouts with
empty batches, one example, one class, one feature and up to 4 samples x 33
examples x 12 classes x 9 features; dtypes float16, bfloat16, float32 and
float64 (float32 inside, as ``jax_enable_x64`` is off), and int32 or bool
where floats belong; values of unit size, huge (1e30), tiny (1e-30), zero,
all-identical rows and mixtures of these, NaN and inf; labels in and out of
range (an int64 label of 2**32 + 1 included), single-class batches and
all-False ``where`` masks; random ranks and sizes of every argument.

The contract checked:

1. Finite inputs in a function's domain (probabilities >= 0, log-probabilities
   <= 0, sigma > 0): the call returns finite values, every element, that agree
   with a float64 NumPy reference; or it raises a ValueError/TypeError whose
   message names the offending argument (in backticks in losses and
   information; bare, "x must ...", in estimators). It raises only for an invalid
   input, or when the exact value exceeds the float32 range (E||Z||^2 or the
   KL of latents beyond ~1e19), where an eager call raises a ValueError rather
   than return inf.
2. Non-finite inputs: losses and information do not scan values (they run
   under ``jit``), but NaN in a real (unmasked) entry is never hidden: every
   output that depends on it is NaN, or the call raises a named ValueError.
   So a NaN out means a NaN (or inf) went in. +-inf may give +-inf or NaN, or
   a finite limit (a -inf logit is a class of probability 0). Estimators
   check on the host and raise a named ValueError.
3. Padding (``where`` False) may hold anything, NaN and inf included: the
   outputs equal those with zero padding.
4. Estimators never return NaN or +-inf. N <= k, non-finite input and points
   that coincide at float32 resolution raise a named ValueError, and
   H[2^a X] = H[X] + d a log 2, I[2^a X; 2^a Y] = I[X; Y] for a = +-100
   (magnitudes 1e+-30).
5. No call hangs: every example has a deadline, and a call that never returns
   dumps every stack and ends the run.

Layouts and estimator shapes come from small fixed sets, so each function
compiles a bounded number of times; ``derandomize=True`` makes every run try
the same cases. Run with ``--hypothesis-show-statistics`` to see the counts.
"""

import faulthandler
import functools
import math
import re
from datetime import timedelta

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import HealthCheck, event, example, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from scipy import special
from scipy.spatial import cKDTree

import ibjax.estimators as E
import ibjax.information as I
import ibjax.losses as L

F32_MAX = float(np.finfo(np.float32).max)
F32_TINY = float(np.finfo(np.float32).tiny)  # smaller values flush to 0 in XLA on CPU
U = 2.0**-24  # float32 unit roundoff
# Exact values above this may overflow float32 on the way (sums of squares).
OVERFLOW = 1e-4 * F32_MAX
LOG_2PIE = math.log(2 * math.pi * math.e)

FLOATS = ("float16", "bfloat16", "float32", "float64")
NOT_FLOATS = ("int32", "bool")
DTYPES = st.sampled_from(FLOATS * 3 + NOT_FLOATS)  # mostly floats
# (S, B, C, K): samples (None: no sample axis), batch, classes, latent features.
# Few of them, as each new shape compiles; the explicit examples reuse them.
LAYOUTS = ((None, 0, 3, 2), (None, 1, 1, 1), (1, 3, 3, 2), (4, 33, 12, 9))
REGIMES = ("unit", "huge", "tiny", "zero", "identical", "mixed")


def profile(max_examples: int):
    return settings(
        max_examples=max_examples,
        derandomize=True,
        database=None,
        # Generous: the first example of a layout compiles; a hang never returns at all.
        deadline=timedelta(seconds=10),
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.large_base_example],
    )


@pytest.fixture(scope="module", autouse=True)
def hang_guard():
    """A call that never returns to Python dumps every thread's stack and ends the run."""
    faulthandler.dump_traceback_later(900, exit=True)
    yield
    faulthandler.cancel_dump_traceback_later()


# --------------------------------------------------------------------------
# Harness
# --------------------------------------------------------------------------


def named_arguments(message: str, backticks: bool = True) -> set[str]:
    return set(re.findall(r"`(\w+)" if backticks else r"\w+", message))


def run(call, problems: dict, names, *, may_raise: bool = False, backticks: bool = True):
    """Calls ``call()`` and checks the error half of the contract.

    Args:
      problems: ``{argument: exception type or types}`` of the invalid inputs:
        the call must raise one of those types, naming one of those arguments.
      names: the argument names a message may use when ``may_raise``.
      may_raise: a ValueError naming one of ``names`` is allowed without a
        problem (the exact result overflows float32; points coincide).

    Returns:
      The outputs as a flat list of float64 arrays, or None after an error.
    """
    try:
        out = call()
    except (ValueError, TypeError) as err:
        event(f"raised {type(err).__name__}")  # --hypothesis-show-statistics shows the mix
        named = named_arguments(str(err), backticks)
        if problems:
            types = tuple(t for v in problems.values() for t in (v if isinstance(v, tuple) else (v,)))
            assert isinstance(err, types), f"{err!r} for problems {problems}"
            assert named & set(problems), f"names none of {sorted(problems)}: {err}"
        else:
            assert may_raise and isinstance(err, ValueError), f"valid input raised {err!r}"
            assert named & set(names), f"names none of {sorted(names)}: {err}"
        return None
    assert not problems, f"accepted invalid {sorted(problems)}"
    event("returned")
    return [np.asarray(leaf, np.float64) for leaf in jax.tree.leaves(out)]


def outcome(call):
    """The outputs of ``call()`` as float64 arrays, or the type of its ValueError/TypeError."""
    try:
        return [np.asarray(leaf, np.float64) for leaf in jax.tree.leaves(call())]
    except (ValueError, TypeError) as err:
        event(f"raised {type(err).__name__}")
        return type(err)


def assert_finite(outputs):
    for out in outputs:
        assert np.all(np.isfinite(out)), f"non-finite output from finite input: {out}"


def cast(values: np.ndarray, dtype: str):
    """``values`` as an argument of ``dtype``; float64 stays NumPy (float32 once in JAX)."""
    values = np.asarray(values, np.float64)
    if dtype == "float64":
        return values
    if dtype == "bool":
        return jnp.asarray(values != 0)
    if dtype == "int32":
        return jnp.asarray(np.clip(np.nan_to_num(values), -100, 100).astype(np.int32))
    return jnp.asarray(values, dtype=dtype)


def seen(x) -> np.ndarray:
    """The float64 values of what a loss computes with: ``x`` cast to float32."""
    return np.asarray(jnp.asarray(x).astype(jnp.float32), np.float64)


def dtype_eps(dtype: str) -> float:
    return float(jnp.finfo(jnp.float32 if dtype == "float64" else dtype).eps)


# --------------------------------------------------------------------------
# Strategies
# --------------------------------------------------------------------------


@st.composite
def float_arrays(draw, shape, dtype="float32", positive=False, regimes=REGIMES, fill=True):
    """Finite float64 values of ``shape`` that ``dtype`` represents (up to rounding).

    The regime picks unit-sized, huge (1e30, or the dtype's max / 64), tiny
    (1e-30, or the dtype's smallest normal) or zero values, rows all equal
    along the leading axes, or a mixture of all of these. ``positive`` maps
    them to |x| with zeros replaced by the regime's magnitude. ``fill=False``
    draws every element (else hypothesis sets most to one value).
    """
    info = jnp.finfo(dtype if dtype in ("float16", "bfloat16") else jnp.float32)
    huge, tiny = min(1e30, float(info.max) / 64), max(1e-30, float(info.tiny))
    regime = draw(st.sampled_from(regimes))
    unit = st.floats(-1.0, 1.0, allow_subnormal=False)
    arrays = functools.partial(hnp.arrays, fill=None if fill else st.nothing())
    size = {"unit": 10.0, "huge": huge, "tiny": tiny, "zero": 1.0, "identical": 10.0, "mixed": 1.0}[regime]
    if regime == "zero":
        values = np.zeros(shape)
    elif regime == "identical":
        row = draw(arrays(np.float64, shape[-1:], elements=unit))
        values = size * np.broadcast_to(row, shape)
    elif regime == "mixed":
        choices = st.sampled_from([0.0, 1.0, -2.5, huge, -huge, tiny, -tiny])
        values = draw(arrays(np.float64, shape, elements=choices))
    else:
        values = size * draw(arrays(np.float64, shape, elements=unit))
    if positive:
        values = np.where(values == 0, size, np.abs(values))
    return np.array(values)


@st.composite
def label_arrays(draw, batch: int, num_classes: int):
    """``(labels, problem)``: integer labels, maybe one out of range, and the error due."""
    kind = draw(st.sampled_from(["random", "one_class", "one_class", "out_of_range", "float"]))
    if kind == "float":
        return np.zeros(batch, np.float32), TypeError
    dtype = draw(st.sampled_from(["int32", "int64"]))
    if kind == "one_class":
        labels = np.full(batch, draw(st.integers(0, num_classes - 1)), np.int64)
    else:
        labels = draw(hnp.arrays(np.int64, batch, elements=st.integers(0, num_classes - 1)))
    if kind != "out_of_range" or batch == 0:
        return labels.astype(dtype), None
    wrong = {
        "int32": [num_classes, -1, 2**31 - 1],
        "int64": [num_classes, -1, 2**32 + 1, -(2**40)],  # would wrap into range as int32
    }[dtype]
    labels[draw(st.integers(0, batch - 1))] = draw(st.sampled_from(wrong))
    return labels.astype(dtype), ValueError


@st.composite
def masks(draw, batch: int):
    kind = draw(st.sampled_from(["none", "all", "nothing", "random", "random"]))
    if kind == "none":
        return None
    if kind == "random":
        return draw(hnp.arrays(np.bool_, batch))
    return np.full(batch, kind == "all")


def samples_first(x: np.ndarray) -> np.ndarray:
    return x[None] if x.ndim == 2 else x


def real_rows(x: np.ndarray, where) -> np.ndarray:
    """``[S, B, K]`` or ``[B, K]`` -> the ``[N, K]`` real rows, samples folded in."""
    x = samples_first(x)
    keep = np.ones(x.shape[1], bool) if where is None else np.asarray(where)
    return x[:, keep].reshape(x.shape[0] * int(keep.sum()), x.shape[-1])


def real_labels(labels, where, num_samples: int) -> np.ndarray:
    keep = np.ones(len(labels), bool) if where is None else np.asarray(where)
    return np.tile(np.asarray(labels, np.int64)[keep], num_samples)


# --------------------------------------------------------------------------
# Float64 references
# --------------------------------------------------------------------------


def log_softmax(x: np.ndarray, axis: int = -1) -> np.ndarray:
    """Shifted by the max first: 1e30 - logsumexp([1e30, 1e30]) would round log 2 away."""
    shifted = x - np.max(x, axis=axis, keepdims=True)
    return shifted - np.log(np.sum(np.exp(shifted), axis=axis, keepdims=True))


def ref_cross_entropies(logits: np.ndarray, labels) -> tuple[np.ndarray, np.ndarray]:
    logits = samples_first(logits)
    if logits.shape[1] == 0:
        return np.zeros(0), np.zeros(0)
    log_probs = log_softmax(logits)
    picked = log_probs[:, np.arange(logits.shape[1]), np.asarray(labels, np.int64)]  # [S, B]
    return -picked.mean(0), math.log(len(logits)) - special.logsumexp(picked, axis=0)


def ref_gaussian_bound(rows: np.ndarray, eps: float) -> tuple[float, float]:
    """½ Σ_i log 2πe (Var_i + eps) (ddof 1; Var 0 below 2 rows) and a bound on its float32 error.

    The float32 mean is off by up to n u max|z_i|: a variance far below that
    (identical huge latents) is rounding noise, so the tolerance grows with it.
    """
    n, k = rows.shape
    var = np.var(rows, axis=0, ddof=1) if n >= 2 else np.zeros(k)
    spread = 4 * (n + 2) * U * (np.max(np.abs(rows), axis=0) if n else np.zeros(k))
    err = 2 * spread * np.sqrt(var) + spread**2 + 4 * (n + 2) * U * var
    log_err = 0.5 * np.log((var + err + eps) / (var + eps)) + 0.5 * np.log((var + eps) / (np.maximum(var - err, 0) + eps))
    return 0.5 * np.sum(LOG_2PIE + np.log(var + eps)), float(np.sum(log_err))


def ref_regularizers(z: np.ndarray, labels, where, eps: float = 1e-8):
    """(E||Z||², its sum, log-variance ± tol, conditional log-variance ± tol)."""
    rows = real_rows(z, where)
    total = float(np.sum(rows**2))
    l2 = total / max(len(rows), 1)
    log_var = ref_gaussian_bound(rows, eps)
    y = real_labels(labels, where, samples_first(z).shape[0])
    cond, tol, weight = 0.0, 0.0, 0
    for c in np.unique(y):
        members = rows[y == c]
        if len(members) >= 2:
            value, err = ref_gaussian_bound(members, eps)
            cond, tol, weight = cond + len(members) * value, tol + len(members) * err, weight + len(members)
    return l2, total, log_var, (cond / max(weight, 1), tol / max(weight, 1))


def ref_kl(mean: np.ndarray, scale: np.ndarray, where):
    """(mean KL over real rows, its float32 error bound, the largest sum on the way)."""
    mu, sigma = real_rows(mean, where), real_rows(scale, where)
    terms = 0.5 * np.sum(sigma**2 + mu**2 - 1 - 2 * np.log(sigma), axis=-1)
    size = 0.5 * np.sum(sigma**2 + mu**2 + 1 + 2 * np.abs(np.log(sigma)), axis=-1)
    n = max(len(mu), 1)
    return terms.sum() / n, 1e-4 * size.sum() / n + 1e-6, float(np.sum(sigma**2 + mu**2))


def assert_close(got, want, tol, what):
    assert abs(got - want) <= tol, f"{what}: got {got}, float64 reference {want} (tolerance {tol})"


# --------------------------------------------------------------------------
# Cross-entropies and the training error bound
# --------------------------------------------------------------------------


def ce_case(logits, labels, dtype="float32", where=None, problem=None):
    return dict(logits=np.asarray(logits, np.float64), labels=np.asarray(labels), label_problem=problem,
                dtype=dtype, where=where)


@st.composite
def ce_cases(draw):
    s, b, c, _ = draw(st.sampled_from(LAYOUTS))
    dtype = draw(DTYPES)
    logits = draw(float_arrays((b, c) if s is None else (s, b, c), dtype))
    labels, problem = draw(label_arrays(b, c))
    return ce_case(logits, labels, dtype, draw(masks(b)), problem)


CE_NAMES = ("logits", "labels", "where")


@profile(150)
@given(case=ce_cases())
@example(case=ce_case(np.zeros((0, 3)), np.zeros(0, np.int32)))  # empty batch
@example(case=ce_case([[[1e30, -1e30, 0.0], [0.0, 0.0, 1e30], [-1e30] * 3]], [1, 2, 0]))  # huge: logsumexp
@example(case=ce_case(np.where(np.add.outer(np.arange(4), np.arange(12)) % 2, -1e30, 1e30)[:, None].repeat(33, 1),
                      np.zeros(33, np.int32)))  # samples that disagree hugely
@example(case=ce_case(np.zeros((1, 3, 3)), np.array([0, 2**32 + 1, 1]), problem=ValueError))  # int64 wraps to 1
@example(case=ce_case(np.zeros((1, 3, 3)), [0, 1, 2], where=np.zeros(3, bool)))  # all-False mask
def test_cross_entropies(case):
    logits = cast(case["logits"], case["dtype"])
    labels, where = case["labels"], case["where"]
    problems = {}
    if case["dtype"] not in FLOATS:
        problems["logits"] = TypeError
    if case["label_problem"]:
        problems["labels"] = case["label_problem"]
    dce = run(lambda: L.decoder_cross_entropy(logits, labels, where), problems, CE_NAMES)
    pce = run(lambda: L.prediction_cross_entropy(logits, labels, where), problems, CE_NAMES)
    if problems:
        return
    (dce,), (pce,) = dce, pce
    assert_finite([dce, pce])
    x = seen(logits)
    ref_dce, ref_pce = ref_cross_entropies(x, labels)
    keep = np.ones(len(labels), bool) if where is None else where
    tol = 1e-5 + 4e-6 * np.max(np.abs(samples_first(x)), axis=(0, 2), initial=0.0)
    np.testing.assert_array_less(np.abs(dce - ref_dce)[keep], tol[keep])
    np.testing.assert_array_less(np.abs(pce - ref_pce)[keep], tol[keep])
    assert np.all(dce[~keep] == 0) and np.all(pce[~keep] == 0)
    assert np.all(pce <= dce + tol) and np.all(pce >= -tol)  # Jensen; cross-entropies are >= 0


@st.composite
def error_bound_cases(draw):
    dtype = draw(DTYPES)
    values = draw(float_arrays(draw(st.sampled_from([(), (0,), (7,), (2, 3)])), dtype))
    return dict(values=values, dtype=dtype)


@profile(100)
@given(case=error_bound_cases())
@example(case=dict(values=np.array([0.0, 1e30, 1e-30]), dtype="float32"))
@example(case=dict(values=np.array([-1e30, -1e-7]), dtype="float32"))  # negative: rounding, or garbage
@example(case=dict(values=np.array(math.log(2)), dtype="int32"))
def test_training_error_bound(case):
    ce = cast(case["values"], case["dtype"])
    problems = {} if case["dtype"] in FLOATS else {"cross_entropy": TypeError}
    outputs = run(lambda: L.training_error_bound(ce), problems, ("cross_entropy",))
    if outputs is None:
        return
    (bound,) = outputs
    assert_finite([bound])
    assert np.all((bound >= 0) & (bound <= 1))
    want = -np.expm1(-np.maximum(np.asarray(jnp.asarray(ce), np.float64), 0))
    np.testing.assert_allclose(bound, want, rtol=4 * dtype_eps(case["dtype"]), atol=1e-30)


@st.composite
def noise_cases(draw):
    s, b, _, k = draw(st.sampled_from([LAYOUTS[0], LAYOUTS[-1]]))  # each shape and dtype compiles threefry
    dtype = draw(DTYPES)
    return dict(z=draw(float_arrays((b, k) if s is None else (s, b, k), dtype)), dtype=dtype,
                seed=draw(st.integers(0, 2**31 - 1)))


@profile(40)
@given(case=noise_cases())
@example(case=dict(z=np.full((4, 33, 9), 1e30), dtype="float32", seed=0))
@example(case=dict(z=np.full((4, 33, 9), 65504.0 / 64), dtype="float16", seed=1))
def test_add_zero_entropy_noise(case):
    z = cast(case["z"], case["dtype"])
    problems = {} if case["dtype"] in FLOATS else {"z": TypeError}
    out = run(lambda: L.add_zero_entropy_noise(jax.random.key(case["seed"]), z), problems, ("z",))
    if out is None:
        return
    (noisy,) = out
    assert noisy.shape == z.shape and L.add_zero_entropy_noise(jax.random.key(0), z).dtype == jnp.asarray(z).dtype
    assert_finite([noisy])
    z64 = np.asarray(jnp.asarray(z), np.float64)
    assert np.all(np.abs(noisy - z64) <= 8 * L.ZERO_ENTROPY_STD + 2 * dtype_eps(case["dtype"]) * np.abs(z64))


# --------------------------------------------------------------------------
# Regularisers
# --------------------------------------------------------------------------


def reg_case(z, labels=None, dtype="float32", where=None, problem=None, num_classes=None):
    z = np.asarray(z, np.float64)
    batch = samples_first(z).shape[1]
    labels = np.zeros(batch, np.int32) if labels is None else np.asarray(labels)
    num_classes = num_classes or int(np.max(labels, initial=0)) + 1
    return dict(z=z, labels=labels, label_problem=problem, num_classes=num_classes, dtype=dtype, where=where)


@st.composite
def reg_cases(draw):
    s, b, c, k = draw(st.sampled_from(LAYOUTS))
    dtype = draw(DTYPES)
    z = draw(float_arrays((b, k) if s is None else (s, b, k), dtype))
    labels, problem = draw(label_arrays(b, c))
    return reg_case(z, labels, dtype, draw(masks(b)), problem, c)


@profile(120)
@given(case=reg_cases())
@example(case=reg_case(np.zeros((0, 2)), num_classes=3))  # empty batch
@example(case=reg_case(np.ones((1, 1))))  # one example: no ddof=1 variance
@example(case=reg_case(np.arange(6.0).reshape(1, 3, 2), [0, 1, 2]))  # every class has one member
@example(case=reg_case(np.full((4, 33, 9), 4.2), np.arange(33) % 12))  # all-identical latents: eps
@example(case=reg_case([[[1e30, -1e30], [-1e30, 1e30], [1e30, 1e30]]], [0, 1, 0], num_classes=3))  # huge
@example(case=reg_case(1e-30 * np.array([[[1.0, -1.0], [-1.0, 2.0], [3.0, 1.0]]]), [0, 1, 0], num_classes=3))  # tiny
@example(case=reg_case(np.full((1, 3, 2), 1e30), where=np.zeros(3, bool), num_classes=3))  # huge padding only
def test_regularizers(case):
    z = cast(case["z"], case["dtype"])
    labels, where, num_classes = case["labels"], case["where"], case["num_classes"]
    problems = {} if case["dtype"] in FLOATS else {"z": TypeError}
    names = ("z", "labels", "where", "num_classes")
    if not problems:
        ref_l2, ref_total, (ref_lv, lv_tol), (ref_clv, clv_tol) = ref_regularizers(seen(z), labels, where)
    l2 = run(lambda: L.activation_l2(z, where), problems, names, may_raise=not problems and ref_total > OVERFLOW)
    log_var = run(lambda: L.log_variance(z, where), problems, names)
    cond_problems = dict(problems, **({"labels": case["label_problem"]} if case["label_problem"] else {}))
    cond = run(lambda: L.conditional_log_variance(z, labels, num_classes, where), cond_problems, names)
    if problems:
        return
    if l2 is not None:
        assert_finite(l2)
        assert_close(l2[0], ref_l2, 1e-4 * ref_l2 + 1e-30, "E||Z||^2")
    assert_finite(log_var)
    assert_close(log_var[0], ref_lv, lv_tol + 1e-5 * abs(ref_lv) + 1e-4, "log Var[Z]")
    if cond is not None:
        assert_finite(cond)
        assert_close(cond[0], ref_clv, clv_tol + 1e-5 * abs(ref_clv) + 1e-4, "log Var[Z|Y]")


@st.composite
def gradient_cases(draw):
    s, b, c, k = draw(st.sampled_from(LAYOUTS[2:]))  # jit compiles once a layout
    z = draw(float_arrays((s, b, k), "float32"))
    where = draw(hnp.arrays(np.bool_, b))
    return z.astype(np.float32), draw(hnp.arrays(np.int32, b, elements=st.integers(0, c - 1))), c, where


@profile(40)
@given(case=gradient_cases())
@example(case=(np.full((4, 33, 9), 1e30, np.float32), np.arange(33, dtype=np.int32) % 12, 12, np.ones(33, bool)))
@example(case=(np.full((1, 3, 2), 4.2, np.float32), np.zeros(3, np.int32), 3, np.array([True, True, False])))
def test_log_variance_gradients_are_finite(case):
    """Training differentiates the regularisers under jit: huge, tiny and identical latents included."""
    z, labels, num_classes, where = case
    grads = {
        "log_variance": _grad_log_variance(z, where),
        "conditional_log_variance": _grad_conditional_log_variance(z, labels, where, num_classes=num_classes),
    }
    for name, grad in grads.items():
        grad = np.asarray(grad)
        assert np.all(np.isfinite(grad)), f"{name}: non-finite gradient {grad}"
        assert np.all(grad[:, ~where] == 0), f"{name}: gradient reaches padding"


_grad_log_variance = jax.jit(jax.grad(lambda z, where: L.log_variance(z, where)))
_grad_conditional_log_variance = jax.jit(
    jax.grad(lambda z, labels, where, num_classes: L.conditional_log_variance(z, labels, num_classes, where)),
    static_argnames="num_classes",
)


def kl_case(mean, scale, dtype="float32", where=None):
    return dict(mean=np.asarray(mean, np.float64), scale=np.asarray(scale, np.float64), dtype=dtype, where=where)


@st.composite
def kl_cases(draw):
    s, b, _, k = draw(st.sampled_from(LAYOUTS))
    shape = (b, k) if s is None else (s, b, k)
    dtype = draw(DTYPES)
    scale = draw(float_arrays(shape, dtype, positive=True))
    if scale.size and draw(st.integers(0, 3)) == 0:  # sigma <= 0, or below float32's smallest normal
        scale.flat[draw(st.integers(0, scale.size - 1))] = draw(st.sampled_from([0.0, -1.0, 1e-40]))
    return kl_case(draw(float_arrays(shape, dtype)), scale, dtype, draw(masks(b)))


def kl_problems(case) -> dict:
    if case["dtype"] not in FLOATS:
        return {"mean": TypeError, "scale": TypeError}
    sigma = real_rows(seen(cast(case["scale"], case["dtype"])), case["where"])
    return {"scale": ValueError} if np.any(sigma < F32_TINY) else {}


@profile(100)
@given(case=kl_cases())
@example(case=kl_case(np.zeros((0, 2)), np.zeros((0, 2))))  # empty batch
@example(case=kl_case(np.zeros((1, 3, 2)), np.full((1, 3, 2), 1e-30)))  # tiny sigma: -2 log sigma = 138
@example(case=kl_case(np.zeros((1, 3, 2)), np.full((1, 3, 2), 1e-40)))  # subnormal sigma flushes to 0
@example(case=kl_case(np.full((1, 3, 2), 1e30), np.ones((1, 3, 2))))  # KL ~ 1e60: beyond float32
def test_kl_to_standard_normal(case):
    mean, scale, where = cast(case["mean"], case["dtype"]), cast(case["scale"], case["dtype"]), case["where"]
    problems = kl_problems(case)
    if not problems:
        ref, tol, largest = ref_kl(seen(mean), seen(scale), where)
    outputs = run(lambda: L.kl_to_standard_normal(mean, scale, where), problems, ("mean", "scale"),
                  may_raise=not problems and largest > OVERFLOW)
    if outputs is None:
        return
    assert_finite(outputs)
    assert_close(outputs[0], ref, tol, "KL")


# --------------------------------------------------------------------------
# The surrogate objective
# --------------------------------------------------------------------------

GAMMAS = (0.0, 0.5, 1e3, 1e30, np.float32(2.0), jnp.float32(0.1)) * 2 + (-1.0, math.nan, math.inf, "1.0")


@st.composite
def surrogate_cases(draw):
    s, b, c, k = draw(st.sampled_from(LAYOUTS))
    dtype = draw(DTYPES)
    zshape = (b, k) if s is None else (s, b, k)
    case = dict(
        logits=draw(float_arrays((b, c) if s is None else (s, b, c), dtype)),
        z=draw(float_arrays(zshape, dtype)),
        regularizer=draw(st.sampled_from(L.REGULARIZERS)),
        cross_entropy=draw(st.sampled_from(L.CROSS_ENTROPIES)),
        gamma=draw(st.sampled_from(GAMMAS)),
        num_classes=c,
        dtype=dtype,
        where=draw(masks(b)),
    )
    case["labels"], case["label_problem"] = draw(label_arrays(b, c))
    case.update(mean=draw(float_arrays(zshape, dtype)), scale=draw(float_arrays(zshape, dtype, positive=True)))
    return case


def surrogate_problems(case) -> dict:
    gamma = case["gamma"]
    problems = {}
    if isinstance(gamma, str):
        problems["gamma"] = TypeError
    elif not (0 <= gamma < math.inf):
        problems["gamma"] = ValueError
    if case["dtype"] not in FLOATS:
        problems.update(logits=TypeError, z=TypeError)
    if case["label_problem"]:
        problems["labels"] = case["label_problem"]
    if case["regularizer"] == "vib" and case["dtype"] in FLOATS:
        problems.update({"z_scale" if k == "scale" else k: e for k, e in kl_problems(case).items()})
    return problems


SURROGATE_NAMES = ("logits", "z", "labels", "gamma", "num_classes", "where", "z_mean", "z_scale", "mean", "scale")


@profile(150)
@given(case=surrogate_cases())
def test_surrogate_loss(case):
    logits, z = cast(case["logits"], case["dtype"]), cast(case["z"], case["dtype"])
    z_mean, z_scale = cast(case["mean"], case["dtype"]), cast(case["scale"], case["dtype"])
    regularizer, where = case["regularizer"], case["where"]
    problems = surrogate_problems(case)
    # "scale" is how kl_to_standard_normal, which surrogate_loss calls, names z_scale.
    if "z_scale" in problems:
        problems["scale"] = problems["z_scale"]
    may_raise = False
    if not problems:
        ref_l2, ref_total, (ref_lv, _), (ref_clv, _) = ref_regularizers(seen(z), case["labels"], where)
        largest = ref_kl(seen(z_mean), seen(z_scale), where)[2] if regularizer == "vib" else 0.0
        reg = {"none": 0.0, "l2": ref_l2, "log_var": ref_lv, "cond_log_var": ref_clv, "vib": largest}[regularizer]
        may_raise = max(largest, ref_total if regularizer == "l2" else 0.0, float(case["gamma"]) * abs(reg)) > OVERFLOW

    def call():
        return L.surrogate_loss(
            logits, z, case["labels"], regularizer=regularizer, gamma=case["gamma"],
            num_classes=case["num_classes"], cross_entropy=case["cross_entropy"], where=where,
            z_mean=z_mean if regularizer == "vib" else None, z_scale=z_scale if regularizer == "vib" else None,
        )

    outputs = run(call, problems, SURROGATE_NAMES, may_raise=may_raise)
    if outputs is None:
        return
    assert_finite(outputs)
    loss, metrics = call()
    ce = metrics[f"{case['cross_entropy']}_cross_entropy"]
    assert float(loss) == pytest.approx(float(ce) + float(case["gamma"]) * float(metrics["regularizer"]), rel=1e-5, abs=1e-6)
    assert 0 <= float(metrics["training_error_bound"]) <= 1


# --------------------------------------------------------------------------
# Padding may hold anything; NaN in a real entry is never hidden
# --------------------------------------------------------------------------

GARBAGE = (math.nan, math.inf, -math.inf, 1e30, -1e30, 0.0)


def categorical_inputs(logits64: np.ndarray, decoder64: np.ndarray, dtype: str):
    """(z_probs [B, Cz], z_log_probs, decoder_log_probs [Cz, Cy]) from logits, in ``dtype``."""
    z_log_probs, decoder = log_softmax(logits64), log_softmax(decoder64)
    return cast(np.exp(samples_first(z_log_probs)[0]), dtype), cast(z_log_probs, dtype), cast(decoder, dtype)


def call_with(fn: str, a: dict):
    """Calls the function ``fn`` names on the arrays in ``a``."""
    if fn in ("decoder_cross_entropy", "prediction_cross_entropy"):
        return getattr(L, fn)(a["logits"], a["labels"], a["where"])
    if fn in ("activation_l2", "log_variance"):
        return getattr(L, fn)(a["z"], a["where"])
    if fn == "conditional_log_variance":
        return L.conditional_log_variance(a["z"], a["labels"], a["num_classes"], a["where"])
    if fn == "kl_to_standard_normal":
        return L.kl_to_standard_normal(a["z_mean"], a["z_scale"], a["where"])
    if fn.startswith("surrogate_loss"):
        regularizer = fn.split(":")[1]
        vib = regularizer == "vib"
        return L.surrogate_loss(
            a["logits"], a["z"], a["labels"], regularizer=regularizer, gamma=0.5, num_classes=a["num_classes"],
            where=a["where"], z_mean=a["z_mean"] if vib else None, z_scale=a["z_scale"] if vib else None,
        )
    if fn in ("categorical_joint", "decoder_uncertainty"):
        return getattr(I, fn)(a["z_probs"], a["labels"], a["num_classes"], a["where"])
    assert fn == "categorical_decoder_cross_entropy"
    return I.categorical_decoder_cross_entropy(a["z_log_probs"], a["decoder_log_probs"], a["labels"], a["where"])


# The batch arguments each function reads: a NaN in a real entry must reach its output.
READS = {
    "decoder_cross_entropy": ("logits",),
    "prediction_cross_entropy": ("logits",),
    "activation_l2": ("z",),
    "log_variance": ("z",),
    "conditional_log_variance": ("z",),
    "kl_to_standard_normal": ("z_mean", "z_scale"),
    **{f"surrogate_loss:{r}": ("logits", "z") for r in L.REGULARIZERS if r not in ("none", "vib")},
    "surrogate_loss:none": ("logits",),
    "surrogate_loss:vib": ("logits", "z_mean", "z_scale"),
    "categorical_joint": ("z_probs",),
    "decoder_uncertainty": ("z_probs",),
    "categorical_decoder_cross_entropy": ("z_log_probs", "decoder_log_probs"),
}


@st.composite
def batch_arrays(draw, at_least_one_masked=False):
    """Every batch argument of every function, for one layout with B >= 1 and a mask."""
    s, b, c, k = draw(st.sampled_from([layout for layout in LAYOUTS if layout[1] >= 1]))
    dtype = draw(st.sampled_from(FLOATS))
    lead = (b,) if s is None else (s, b)
    where = draw(hnp.arrays(np.bool_, b))
    if at_least_one_masked:
        where[draw(st.integers(0, b - 1))] = False
    z_probs, z_log_probs, decoder = categorical_inputs(
        draw(float_arrays(lead + (c,), dtype)), draw(float_arrays((c, k), dtype)), dtype
    )
    arrays = dict(
        logits=draw(float_arrays(lead + (c,), dtype)),
        z=draw(float_arrays(lead + (k,), dtype)),
        z_mean=draw(float_arrays(lead + (k,), dtype)),
        z_scale=draw(float_arrays(lead + (k,), dtype, positive=True)),
    )
    arrays = {name: cast(value, dtype) for name, value in arrays.items()}
    labels = draw(hnp.arrays(np.int32, b, elements=st.integers(0, c - 1)))
    arrays.update(z_probs=z_probs, z_log_probs=z_log_probs, decoder_log_probs=decoder, labels=labels,
                  num_classes=c, where=where)
    return arrays


def put(x, index, value):
    """``x`` (NumPy or JAX) with ``x[index] = value``, same type and dtype."""
    if isinstance(x, np.ndarray):
        x = x.copy()
        x[index] = value
        return x
    return x.at[index].set(value)


@profile(100)
@given(fn=st.sampled_from(sorted(READS)), arrays=batch_arrays(at_least_one_masked=True), data=st.data())
def test_padding_may_hold_anything(fn, arrays, data):
    dirty = dict(arrays)
    for name in ("logits", "z", "z_mean", "z_scale", "z_probs", "z_log_probs"):
        for b in np.flatnonzero(~arrays["where"]):
            garbage = data.draw(st.sampled_from(GARBAGE), label=f"{name}[{b}]")
            dirty[name] = put(dirty[name], (Ellipsis, b, slice(None)), garbage)
    clean, got = outcome(lambda: call_with(fn, arrays)), outcome(lambda: call_with(fn, dirty))
    if isinstance(clean, type):  # e.g. E||Z||^2 of real latents beyond float32
        assert got is clean
        return
    assert not isinstance(got, type), f"{fn} raised {got.__name__} for garbage in padding"
    for a, b in zip(clean, got):
        np.testing.assert_array_equal(a, b)


@profile(120)
@given(fn=st.sampled_from(sorted(READS)), arrays=batch_arrays(), data=st.data())
def test_nan_in_a_real_entry_is_never_hidden(fn, arrays, data):
    real = np.flatnonzero(arrays["where"])
    if not len(real):
        arrays["where"][0] = True
        real = np.array([0])
    b = data.draw(st.sampled_from(real.tolist()), label="example")
    name = data.draw(st.sampled_from(READS[fn]), label="argument")
    x = arrays[name]
    names = set(SURROGATE_NAMES) | {"z_probs", "z_log_probs", "decoder_log_probs", "joint", "p"}
    if name == "decoder_log_probs":  # a class and latent the example gives weight: p(z|x_b) > 0
        p = np.exp(np.asarray(samples_first(seen(arrays["z_log_probs"]))[:, b], np.float64))
        index = (int(np.argmax(p.max(0))), int(arrays["labels"][b]))
    elif name == "z_probs":
        index = (b, data.draw(st.integers(0, x.shape[-1] - 1)))
    else:
        index = tuple(data.draw(st.integers(0, n - 1)) for n in x.shape[:-2]) + (b, data.draw(st.integers(0, x.shape[-1] - 1)))
    arrays[name] = put(x, index, math.nan)
    if name == "z_scale":  # sigma is checked on the host: NaN is not > 0
        run(lambda: call_with(fn, arrays), {"z_scale": ValueError, "scale": ValueError}, ())
        return
    outputs = run(lambda: call_with(fn, arrays), {}, names, may_raise=True)
    if outputs is None:
        return
    if fn in ("decoder_cross_entropy", "prediction_cross_entropy", "categorical_decoder_cross_entropy"):
        outputs = [outputs[0][b]]  # per example: the example with the NaN
    elif fn.startswith("surrogate_loss"):
        outputs = outputs[:1]  # the loss (the leaves are loss, then the metrics)
    for out in outputs:
        assert np.any(np.isnan(out)), f"{fn}: NaN in `{name}`{index} came out as {out}"


# --------------------------------------------------------------------------
# Information of a categorical latent
# --------------------------------------------------------------------------


@st.composite
def joint_arrays(draw):
    """A joint p(z, y) [Cz, Cy] that sums to 1 (or 0: an empty batch), in some float dtype."""
    _, _, cz, cy = draw(st.sampled_from(LAYOUTS))
    dtype = draw(st.sampled_from(FLOATS))
    weights = np.abs(draw(float_arrays((cz, cy), dtype)))
    total = weights.sum()
    return cast(weights / total if total > 0 else weights, dtype), dtype


def tolerance(dtype: str, size: int) -> float:
    return 8 * size * dtype_eps(dtype) + 1e-6


@profile(80)
@given(joint_dtype=joint_arrays())
@example(joint_dtype=(jnp.zeros((3, 2)), "float32"))  # empty batch
@example(joint_dtype=(jnp.array([[1.0, 0.0], [0.0, 0.0], [0.0, 0.0]]), "float32"))  # one class, one z
def test_entropies_of_a_joint(joint_dtype):
    joint, dtype = joint_dtype
    cz, cy = joint.shape
    tol = tolerance(dtype, cz * cy) * max(1.0, math.log(cz * cy))
    h = run(lambda: I.entropy(joint), {}, ())
    h_y_given_z = run(lambda: I.conditional_entropy(joint), {}, ())
    mi = run(lambda: I.mutual_information(joint), {}, ())
    decoder = run(lambda: I.optimal_decoder(joint), {}, ())
    assert_finite(h + h_y_given_z + mi + decoder)
    assert -tol <= h[0] <= math.log(cz * cy) + tol
    assert -tol <= h_y_given_z[0] <= math.log(cy) + tol
    assert -tol <= mi[0] <= min(math.log(cz), math.log(cy)) + tol
    np.testing.assert_allclose(decoder[0].sum(axis=1), 1.0, atol=tol)


@st.composite
def categorical_cases(draw):
    s, b, cz, cy = draw(st.sampled_from(LAYOUTS))
    dtype = draw(DTYPES)
    lead = (b,) if s is None else (s, b)
    z_logits, decoder_logits = draw(float_arrays(lead + (cz,), dtype)), draw(float_arrays((cz, cy), dtype))
    labels, problem = draw(label_arrays(b, cy))
    return dict(z_logits=z_logits, decoder_logits=decoder_logits, dtype=dtype, labels=labels,
                label_problem=problem, where=draw(masks(b)), num_classes=cy)


@profile(100)
@given(case=categorical_cases())
def test_categorical_latent(case):
    dtype, labels, where, cy = case["dtype"], case["labels"], case["where"], case["num_classes"]
    z_probs, z_log_probs, decoder = categorical_inputs(case["z_logits"], case["decoder_logits"],
                                                       dtype if dtype in FLOATS else "float32")
    if dtype not in FLOATS:
        z_probs, z_log_probs = cast(np.asarray(z_probs, np.float64), dtype), cast(np.asarray(z_log_probs, np.float64), dtype)
    problems = {} if dtype in FLOATS else {"z_probs": TypeError, "z_log_probs": TypeError}
    if case["label_problem"]:
        problems["labels"] = case["label_problem"]
    names = ("z_probs", "labels", "num_classes", "where", "z_log_probs", "decoder_log_probs", "joint", "p")
    joint = run(lambda: I.categorical_joint(z_probs, labels, cy, where), problems, names)
    h = run(lambda: I.decoder_uncertainty(z_probs, labels, cy, where), problems, names)
    ce = run(lambda: I.categorical_decoder_cross_entropy(z_log_probs, decoder, labels, where), problems, names)
    if problems:
        return
    (joint,), (h,), (ce,) = joint, h, ce
    assert_finite([joint, h, ce])
    keep = np.ones(len(labels), bool) if where is None else where
    tol = tolerance(dtype, z_probs.shape[-1] * cy)
    assert np.all(joint >= 0) and abs(joint.sum() - (1.0 if keep.any() else 0.0)) <= tol
    assert -tol <= h <= math.log(cy) + tol
    # H_Θ[Y|Z]_b = mean_s Σ_z p(z|x_b) (-log q(y_b|z)), 0 log 0 = 0.
    p = np.exp(samples_first(np.asarray(jnp.asarray(z_log_probs), np.float64)))
    nll = -np.asarray(decoder, np.float64).T[np.asarray(labels, np.int64)]  # [B, Cz]
    want = np.mean(np.sum(np.where(p > 0, p * nll[None], 0.0), axis=-1), axis=0) if len(labels) else np.zeros(0)
    assert np.all(ce[~keep] == 0)
    np.testing.assert_allclose(ce[keep], want[keep], rtol=tol, atol=tol * (1 + np.abs(nll).max(initial=0)))


@profile(60)
@given(joint_dtype=joint_arrays(), data=st.data())
def test_nan_or_negative_probabilities_are_never_hidden(joint_dtype, data):
    joint, dtype = joint_dtype
    z, y = data.draw(st.integers(0, joint.shape[0] - 1)), data.draw(st.integers(0, joint.shape[1] - 1))
    joint = put(joint, (z, y), data.draw(st.sampled_from([math.nan, -0.25])))
    for fn in (I.entropy, I.conditional_entropy, I.mutual_information):
        outputs = run(lambda: fn(joint), {}, ("joint", "p"), may_raise=True)
        assert outputs is None or np.isnan(outputs[0]), f"{fn.__name__} hid a bad entry: {outputs}"
    if np.isnan(float(joint[z, y])):
        outputs = run(lambda: I.optimal_decoder(joint), {}, ("joint",), may_raise=True)
        assert outputs is None or np.isnan(outputs[0][z]).all(), f"optimal_decoder hid NaN: {outputs}"


# --------------------------------------------------------------------------
# Any rank, any size, any dtype: a named error or a finite answer
# --------------------------------------------------------------------------

# Arguments of each function: name -> rank it expects (for drawing, mostly right).
SIGNATURES = {
    L.decoder_cross_entropy: dict(logits=3, labels=1, where=1),
    L.prediction_cross_entropy: dict(logits=3, labels=1, where=1),
    L.training_error_bound: dict(cross_entropy=1),
    L.activation_l2: dict(z=3, where=1),
    L.log_variance: dict(z=3, where=1),
    L.conditional_log_variance: dict(z=3, labels=1, num_classes=0, where=1),
    L.kl_to_standard_normal: dict(mean=3, scale=3, where=1),
    I.categorical_joint: dict(z_probs=2, labels=1, num_classes=0, where=1),
    I.decoder_uncertainty: dict(z_probs=2, labels=1, num_classes=0, where=1),
    I.entropy: dict(p=2),
    I.conditional_entropy: dict(joint=2),
    I.mutual_information: dict(joint=2),
    I.optimal_decoder: dict(joint=2),
    I.categorical_decoder_cross_entropy: dict(z_log_probs=3, decoder_log_probs=2, labels=1, where=1),
}


@st.composite
def any_arguments(draw):
    fn = draw(st.sampled_from(list(SIGNATURES)))
    size = st.sampled_from([0, 1, 2, 3])
    kwargs = {}
    for name, rank in SIGNATURES[fn].items():
        if name == "num_classes":
            kwargs[name] = draw(st.sampled_from([1, 2, 3, 0, -1, 2.5]))
            continue
        rank = draw(st.sampled_from([rank, rank, max(rank - 1, 0), rank + 1]))
        shape = tuple(draw(size) for _ in range(rank))
        if name == "labels":
            labels = draw(hnp.arrays(np.int64, shape, elements=st.integers(0, 2)))
            kwargs[name] = labels.astype(draw(st.sampled_from([np.int32, np.float32])))
        elif name == "where":
            kwargs[name] = draw(st.sampled_from([None, np.ones(shape, bool), np.ones(shape, np.int32)]))
        else:
            values = np.abs(draw(hnp.arrays(np.float64, shape, elements=st.floats(0, 1))))
            if name in ("z_log_probs", "decoder_log_probs"):
                values = -values
            kwargs[name] = cast(values + (1.0 if name == "scale" else 0.0), draw(DTYPES))
    return fn, kwargs


ALL_NAMES = {name for signature in SIGNATURES.values() for name in signature} | {"joint", "p"}


@profile(150)
@given(fn_kwargs=any_arguments())
@example(fn_kwargs=(L.prediction_cross_entropy, dict(logits=jnp.zeros((0, 2, 3)), labels=np.zeros(2, np.int32))))
@example(fn_kwargs=(L.conditional_log_variance, dict(z=jnp.zeros((0, 2, 3)), labels=np.zeros(2, np.int32), num_classes=2)))
@example(fn_kwargs=(L.kl_to_standard_normal, dict(mean=jnp.zeros((4, 0)), scale=jnp.zeros((4, 0)))))
@example(fn_kwargs=(I.optimal_decoder, dict(joint=jnp.zeros((3, 0)))))
@example(fn_kwargs=(I.categorical_joint, dict(z_probs=jnp.zeros((0, 3)), labels=np.zeros(0, np.int32), num_classes=-1)))
def test_any_shape_and_dtype(fn_kwargs):
    fn, kwargs = fn_kwargs
    try:
        out = fn(**kwargs)
    except (ValueError, TypeError) as err:
        assert named_arguments(str(err)) & ALL_NAMES, f"{fn.__name__}: {err!r} names no argument"
        return
    assert_finite([np.asarray(leaf, np.float64) for leaf in jax.tree.leaves(out)])


# --------------------------------------------------------------------------
# Estimators
# --------------------------------------------------------------------------

# At most one fault a case; N, d and k from small sets, as each (N, d, k) compiles.
FAULTS = ("none",) * 8 + (
    "k", "no_columns", "few_points", "dtype", "rank", "non_finite", "duplicate", "degenerate", "labels", "rows",
)
ESTIMATORS = ("knn_entropy", "knn_conditional_entropy", "ksg_mutual_information")


@st.composite
def gaussian_points(draw, shape, dtype):
    """N(0, σ²) samples, σ unit-sized, huge (1e30) or tiny (1e-30) as ``dtype`` allows."""
    info = jnp.finfo(dtype if dtype in ("float16", "bfloat16") else jnp.float32)
    sigma = draw(st.sampled_from([10.0, 10.0, min(1e30, float(info.max) / 64), max(1e-30, 64 * float(info.tiny))]))
    return sigma * np.random.default_rng(draw(st.integers(0, 2**32 - 1))).standard_normal(shape)


@st.composite
def estimator_cases(draw):
    fault = draw(st.sampled_from(FAULTS))
    k = 0 if fault == "k" else draw(st.sampled_from([1, 3]))
    n = draw(st.sampled_from([0, 1, k] if fault == "few_points" else [9, 20, 20]))
    d = 0 if fault == "no_columns" else draw(st.sampled_from([1, 3]))
    dtype = draw(st.sampled_from(NOT_FLOATS if fault == "dtype" else FLOATS))
    if fault == "degenerate":  # zeros, identical rows, or a mixture of a few values
        points = functools.partial(float_arrays, dtype=dtype, regimes=REGIMES[3:])
    else:  # continuous: hypothesis's own floats favour 0, ±1 and coincide too often
        points = functools.partial(gaussian_points, dtype=dtype)
    x = draw(points((n, d)))
    if fault == "duplicate":
        x[1] = x[0]
    if fault == "non_finite" and x.size:
        x.flat[draw(st.integers(0, x.size - 1))] = draw(st.sampled_from([math.nan, math.inf, -math.inf]))
    if fault == "rank":
        x = draw(st.sampled_from([x[:, 0], x[..., None]]))
    y = draw(points((n - (fault == "rows"), draw(st.sampled_from([1, 2])))))
    labels = np.asarray(draw(st.permutations(np.arange(n) % draw(st.sampled_from([1, 2, 3])))), np.int64)
    if fault == "labels":
        labels = draw(st.sampled_from([labels.astype(np.float32), labels[:-1], np.where(np.arange(n) == 0, 99, labels)]))
    return dict(estimator=draw(st.sampled_from(ESTIMATORS)), x=x, y=y, k=k, dtype=dtype, labels=labels)


def kth_distances(points: np.ndarray, k: int, p=2) -> np.ndarray:
    """Distance from each point to its k-th nearest other point (float64, cKDTree)."""
    return cKDTree(points).query(points, k + 1, p=p)[0][:, k]


def point_problems(x, name: str, k: int, dtype: str) -> dict:
    """What is wrong with ``x`` as [N, d] points: ``{name: error types}``, or {}."""
    errors = ()
    if x.ndim != 2 or x.shape[1] == 0 or x.shape[0] <= k or not np.all(np.isfinite(x)):
        errors += (ValueError,)
    if dtype not in FLOATS:
        errors += (TypeError,)
    return {name: errors} if errors else {}


def ref_entropy(x: np.ndarray, k: int) -> float:
    n, d = x.shape
    log_vd = 0.5 * d * math.log(math.pi) - math.lgamma(0.5 * d + 1)
    return special.digamma(n) - special.digamma(k) + log_vd + d * np.mean(np.log(kth_distances(x, k)))


def spread(*arrays) -> float:
    """The largest |coordinate - its mean|: float32 coordinates are good to about u times it."""
    return max(np.max(np.abs(a - a.mean(axis=0)), initial=0.0) for a in arrays)


@profile(120)
@given(case=estimator_cases())
@example(case=dict(estimator="knn_entropy", x=np.ones((9, 3)), y=None, k=3, dtype="float32", labels=None))  # all identical
@example(case=dict(estimator="ksg_mutual_information", x=np.ones((9, 1)), y=np.ones((9, 1)), k=3,
                   dtype="float32", labels=None))  # all identical: the duplicates error, not -inf
@example(case=dict(estimator="knn_entropy", x=np.zeros((3, 2)), y=None, k=3, dtype="float32", labels=None))  # N <= k
@example(case=dict(estimator="knn_entropy", x=1e30 * np.arange(60.0).reshape(20, 3) ** 0.5, y=None, k=3,
                   dtype="float32", labels=None))  # squared distances ~1e60
@example(case=dict(estimator="knn_conditional_entropy", x=1e-30 * np.arange(60.0).reshape(20, 3) ** 0.5, y=None, k=1,
                   dtype="float32", labels=np.arange(20) % 2))  # squared distances ~1e-60
def test_estimators(case):
    estimator, k, dtype = case["estimator"], case["k"], case["dtype"]
    x = cast(case["x"], dtype)
    host = np.asarray(x, np.float64)
    # Every fault present; the estimator reports the first it checks.
    problems = dict({"k": ValueError} if k < 1 else {}, **point_problems(host, "x", max(k, 1), dtype))
    may_raise = False
    if estimator == "knn_entropy":
        call = lambda: E.knn_entropy(x, k)  # noqa: E731
    elif estimator == "knn_conditional_entropy":
        labels = case["labels"]
        call = lambda: E.knn_conditional_entropy(x, labels, k)  # noqa: E731
        if labels.dtype.kind != "i":
            problems["labels"] = TypeError
        elif len(labels) != host.shape[0]:
            problems["labels"] = ValueError
        elif len(labels) and np.min(np.unique(labels, return_counts=True)[1]) <= k:
            problems["labels"] = ValueError  # "class c of labels has n points"
    else:
        y = cast(case["y"], dtype)
        call = lambda: E.ksg_mutual_information(x, y, k)  # noqa: E731
        problems.update(point_problems(np.asarray(y, np.float64), "y", max(k, 1), dtype))
        if y.shape[0] != host.shape[0]:
            problems.update(x=ValueError, y=ValueError)
    if not problems:
        if estimator == "ksg_mutual_information":
            hy = np.asarray(y, np.float64)
            kth = kth_distances(np.hstack([host, hy]), k, p=np.inf)
            size = spread(host, hy)
        elif estimator == "knn_entropy":
            kth, size = kth_distances(host, k), spread(host)
        else:
            kth = np.concatenate([kth_distances(host[labels == c], k) for c in np.unique(labels)])
            size = spread(host)
        may_raise = np.any(kth <= 16 * U * size * math.sqrt(host.shape[1] + 2))  # they coincide in float32
        if np.any(kth == 0):  # duplicates: the estimate would be -inf
            problems = {"x": ValueError}
    outputs = run(call, problems, ("x", "y", "labels", "k"), may_raise=may_raise, backticks=False)
    if outputs is None:
        return
    assert_finite(outputs)
    if estimator == "ksg_mutual_information" or np.any(kth < 2**-10 * size):
        return  # KSG counts ties; the reference is only for well-separated points
    event("compared with the cKDTree reference")
    if estimator == "knn_entropy":
        want = ref_entropy(host, k)
    else:
        want = sum(np.mean(labels == c) * ref_entropy(host[labels == c], k) for c in np.unique(labels))
    assert_close(outputs[0], want, 1e-3 * host.shape[1] + 1e-6 * abs(want), estimator)


@st.composite
def separated_points(draw):
    n, d, k = draw(st.sampled_from([9, 20])), draw(st.sampled_from([1, 3])), draw(st.sampled_from([1, 3]))
    x = np.random.default_rng(draw(st.integers(0, 2**32 - 1))).standard_normal((n, d + 1))
    return x, np.arange(n) % draw(st.sampled_from([1, 2])), k


@profile(30)
@given(case=separated_points())
def test_estimators_move_exactly_with_scale(case):
    """H[2^a X] = H[X] + d a log 2 and I[2^a X; 2^a Y] = I[X; Y], for magnitudes 1e±30."""
    xy, labels, k = case
    x, y = xy[:, :-1], xy[:, -1:]
    h, h_y, mi = E.knn_entropy(x, k), E.knn_conditional_entropy(x, labels, k), E.ksg_mutual_information(x, y, k)
    d = x.shape[1]
    for a in (-100, 100):
        s = 2.0**a
        shift = d * a * math.log(2)
        assert float(E.knn_entropy(x * s, k)) == pytest.approx(float(h) + shift, rel=1e-6, abs=1e-5)
        assert float(E.knn_conditional_entropy(x * s, labels, k)) == pytest.approx(float(h_y) + shift, rel=1e-6, abs=1e-5)
        assert float(E.ksg_mutual_information(x * s, y * s, k)) == float(mi)
