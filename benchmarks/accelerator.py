r"""Every throughput target of ibjax in one command, for an accelerator (and a ``--small`` CPU smoke run).

  python benchmarks/accelerator.py --out DIR         # the GPU run: under 8 minutes on one H200
  XLA_FLAGS= python benchmarks/accelerator.py --small --no_torch --out /tmp/acc    # CPU smoke run, 2-3 min

Running it on a GPU machine without network access
--------------------------------------------------
The device machine has no ``ml-collections`` (nor ``tensorflow-datasets``,
which this script never imports: it trains on synthetic data) and no network.
ibjax needs no ``pip install`` there: this script puts the checkout on
``sys.path`` itself. Bring the missing pure-Python wheels along in the work
tree (untracked and not ignored, so they travel with it; do not commit them)::

  # here, where PyPI is reachable:
  pip download ml-collections absl-py --no-deps -d wheels/
  # on the device machine, in the copy of the checkout:
  python benchmarks/accelerator.py --preflight            # seconds: what is missing, and the devices
  pip install --no-index --no-deps wheels/*.whl
  python benchmarks/accelerator.py --out $OUT --compile_cache /tmp/ibjax_jax_cache

``--preflight`` says which of the modules the script needs are missing
(all of them, not just the first). ml-collections also imports ``yaml``: if
PyYAML is missing too, download the binary wheel for the device's Python (``pip download PyYAML
--no-deps --only-binary=:all: --python-version 3.X --platform
manylinux2014_x86_64 -d wheels/``). PyTorch (the reference of rows 1-2 and
of the estimators) and scikit-learn are optional: without them those columns
say n/a and why. A CUDA build of PyTorch is too large to carry: it is
timed only if the device machine has one installed. ``--compile_cache`` keeps
XLA's compiled executables between runs on the same machine, so a rerun
spends its minutes on timing rather than compiling (PyTorch's inductor keeps
its own cache in /tmp).

What is timed
-------------
Every row times its computation after compilation, blocks on the result
(``jax.block_until_ready``, ``torch.cuda.synchronize``, or a host value) and
takes the median of ``--repeats`` repeats with ``benchmarks.harness.measure``,
which interleaves the repeats of the implementations compared so that a
change in the machine's load hits all alike. Each row's ratio is against a
reference measured in the same run:

1. ``resnet18``: the ResNet18 step of ``configs/cifar_condvar.py`` (noise,
   conditional log-variance, crop+flip on the device) in float32 and bfloat16
   at batch 256/512/1024 (``--small``: 32), built with
   ``ibjax.experiment.setup`` exactly as ``train_and_evaluate`` builds it:
   examples/s, achieved TFLOP/s from XLA's cost analysis of the compiled step,
   MFU against the chip's dense peak from ``harness.PEAK_FLOPS``, and the same
   model, loss and Adam step in PyTorch on the same device
   (``harness.prepare_torch``), eager and ``torch.compile``-d (bf16 autocast
   for bf16 rows, channels_last); the ratio is against the faster PyTorch
   variant.
2. ``mlp`` and ``dropout_cnn``: the §7.1 MLP with a categorical latent and the
   §7.2 Dropout CNN, the same way (batch 128; ``--small``: 32).
3. ``population``: G members of the MLP and of ResNet18 (batch 128) in one
   vmapped step against G single-model steps one after another (G = 1, 4,
   16, 64; ``--small``: MLP G = 1, 4 at batch 32, ResNet18 G = 1, 2 at batch 8).
4. ``estimators``: ``knn_entropy``, ``knn_conditional_entropy`` and
   ``ksg_mutual_information`` at N = 50,000, d = 100 (the entropy also at
   N = 200,000; ``--small``: N = 2,000, d = 10) against a brute-force PyTorch
   search on the same device and scikit-learn on the host
   (``benchmarks/knn_reference.py``), with every estimate printed and checked
   to agree.
5. ``epoch``: the training loop's own epoch function,
   ``ibjax.train.train_epoch``, on a run opened with ``ibjax.train.open_run``
   on synthetic CIFAR-shaped data on the device (50,000 / 10,000 images,
   batch 128; ``--small``: 256 / 64, batch 32), each epoch followed by its
   checkpoint (``harness.LoopEpochs``), timed directly against the compiled
   step's time × steps per epoch, the repeats of the two interleaved; the
   epoch without its checkpoint is timed too. Evaluation and the metrics
   records, which ``train_and_evaluate`` adds after an epoch, are not.

Rows are skipped (and listed as such) once ``--budget_s`` is spent; each
family of rows has a share of it, unused time passing on to the next.
``torch.compile`` is skipped on a CPU unless ``--torch_compile=on``.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import datetime
import gc
import importlib.util
import math
import os
import platform
import statistics
import sys
import tempfile
import time
import traceback
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

# Before JAX or PyTorch start: JAX would otherwise take 75% of the GPU's memory
# up front and leave PyTorch, timed in the same process, the rest; libgomp's
# spin-waiting slows PyTorch's CPU threads on a shared machine (see harness.prepare_torch).
os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

#: Modules the script cannot run without (import names).
REQUIRED_MODULES = ("scipy", "jax", "jaxlib", "flax", "optax", "orbax.checkpoint", "ml_collections", "yaml",
                    "absl", "tqdm")
#: Modules of the references; a row without one says n/a.
OPTIONAL_MODULES = ("torch", "sklearn")

try:
    import jax

    from benchmarks import harness
    from benchmarks import knn_reference as knn
    from benchmarks.harness import Row, Runner, Timing, fmt, measure, ratio, ratio_cell, usable_cores
    from benchmarks.knn_reference import K, RHO
    from ibjax import data as datalib
    from ibjax import estimators, experiment
except ImportError as _error:  # reported by main() with what to install
    _IMPORT_ERROR: ImportError | None = _error
else:
    _IMPORT_ERROR = None

DEFAULT_OUT = ROOT / "benchmarks" / "results"

# --------------------------------------------------------------------------
# Rows and targets
# --------------------------------------------------------------------------

#: Row families in the order they run, with their share of --budget_s.
FAMILIES: dict[str, float] = {
    "resnet18": 0.36,
    "mlp": 0.07,
    "dropout_cnn": 0.07,
    "population": 0.20,
    "estimators": 0.13,
    "epoch": 0.17,
}

#: The models of the training rows: description, config file, image shape.
MODELS: dict[str, tuple[str, str, tuple[int, int, int]]] = {
    "resnet18": ("ResNet18, K = 100, noise, cond_log_var, crop+flip", "cifar_condvar.py", (32, 32, 3)),
    "mlp": ("MLP 784–1024–1024–100, categorical latent, decoder 100–1024–1024–10",
            "permuted_mnist_categorical.py", (28, 28, 1)),
    "dropout_cnn": ("Dropout CNN, K = 128, 12 samples, noise", "mnist_dropout_cnn.py", (28, 28, 1)),
}

TARGETS: dict[str, str] = {
    "resnet18_mfu": "ResNet18 bf16, batch ≥ 512: MFU ≥ 40%",
    "resnet18_torch": "ResNet18 bf16, batch ≥ 512: ≥ 1.5× the faster PyTorch variant",
    "population": "γ-population of 16 MLPs: ≥ 8× 16 sequential steps",
    "knn_entropy": "k-NN entropy, N = 50,000, d = 100: ≤ 20 ms",
    "ksg": "KSG mutual information, N = 50,000, d = 100: ≤ 50 ms",
    "epoch": "epoch overhead: epoch ≤ 1.05 × steps per epoch × step time",
}

SECTIONS: dict[str, tuple[str, tuple[str, ...]]] = {
    "training": ("Single-model training step: ibjax vs PyTorch on the same device", (
        "row", "batch", "dtype", "ibjax ex/s", "ms/step", "compile s", "TFLOP/s", "MFU", "torch eager ex/s",
        "torch.compile ex/s", "ibjax / faster torch", "target", "notes")),
    "population": ("γ-population: G members in one vmapped step vs G sequential single-model steps", (
        "row", "G", "batch", "vmapped ex/s (all members)", "compile s", "TFLOP/s", "MFU", "sequential ex/s",
        "vmapped / sequential", "target", "notes")),
    "estimators": ("k-NN estimators: seconds per call after compilation", (
        "row", "N", "d", "ibjax ms", "compile s", "torch ms", "sklearn ms", "torch / ibjax", "sklearn / ibjax",
        "estimates, nats (ibjax / torch / sklearn; analytic)", "agreement", "target", "notes")),
    "epoch": ("Epoch overhead: the training loop's epoch (train.train_epoch) against its compiled step", (
        "row", "train / test images", "batch", "steps/epoch", "step ms", "steps × step s", "epoch 2 s",
        "epoch 2 + checkpoint s", "overhead ratio", "target", "notes")),
}


@dataclasses.dataclass
class Task:
    """One row of the report: its section, and what measures it (returns the row's cells)."""

    name: str
    family: str
    section: str
    run: Callable[[Context], dict[str, str]]
    order: tuple = ()  # display order within the section


@dataclasses.dataclass
class Context:
    """Options and state shared by the rows of a run."""

    small: bool
    repeats: int
    min_repeat_seconds: float
    num_images: int  # synthetic images on the device for the step rows
    epoch_images: int  # training images of the epoch row
    epoch_batch: int
    sklearn_max_s: float
    torch_device: object | None  # a torch.device, or None
    torch_note: str  # why there is no PyTorch reference ('' if there is)
    torch_compile: bool
    compile_note: str  # why torch.compile is not timed ('' if it is)
    start: float
    budget_s: float
    deadline: float = math.inf  # the current family's share of the budget ends here
    compile_estimate_s: float = 60.0  # the last torch.compile's first step, to decide whether one more fits
    targets: dict[str, list[tuple[str, str, str]]] = dataclasses.field(default_factory=dict)
    estimates_ok: bool = True
    sklearn_seconds: dict[str, tuple[int, float]] = dataclasses.field(default_factory=dict)

    def remaining(self) -> float:
        """Seconds left of the current family's share."""
        return self.deadline - time.perf_counter()

    def target(self, key: str, row: str, measured: str, met: bool | None) -> str:
        status = "n/a" if met is None else ("met" if met else "not met")
        self.targets.setdefault(key, []).append((row, measured, status))
        return status


def _log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def _error_text(error: BaseException) -> str:
    text = f"{type(error).__name__}: {error}".replace("\n", " ").replace("|", "/")
    return text if len(text) < 300 else text[:297] + "..."


# --------------------------------------------------------------------------
# PyTorch on the device
# --------------------------------------------------------------------------


def _torch_runner(row: Row, ctx: Context, compiled: bool) -> tuple[Runner | None, str]:
    """``harness.prepare_torch`` of ``row`` on ``ctx.torch_device``: ``(runner, '')``, or ``(None, why)``."""
    try:
        runner = harness.prepare_torch(row, device=ctx.torch_device, compiled=compiled, num_images=ctx.num_images)
    except Exception as error:  # noqa: BLE001 - an unsupported torch.compile must not end the run
        return None, f"n/a: {'torch.compile' if compiled else 'eager'} failed: {_error_text(error)}"
    if compiled:
        ctx.compile_estimate_s = runner.setup_seconds
    return runner, ""


def _torch_runners(row: Row, ctx: Context) -> tuple[list[Runner | None], list[str]]:
    """The eager and the compiled PyTorch runner of ``row`` (None where not timed) and their notes."""
    if ctx.torch_device is None:
        return [None, None], [ctx.torch_note, ctx.torch_note]
    eager, eager_note = _torch_runner(row, ctx, compiled=False)
    if not ctx.torch_compile:
        return [eager, None], [eager_note, ctx.compile_note]
    if ctx.remaining() < ctx.compile_estimate_s:
        return [eager, None], [eager_note, f"skipped: time budget (torch.compile est. {ctx.compile_estimate_s:.0f} s)"]
    compiled, compiled_note = _torch_runner(row, ctx, compiled=True)
    return [eager, compiled], [eager_note, compiled_note]


def _release_memory(ctx: Context) -> None:
    gc.collect()
    if ctx.torch_device is not None and getattr(ctx.torch_device, "type", "") == "cuda":
        import torch

        torch.cuda.empty_cache()


# --------------------------------------------------------------------------
# Rows 1-2: single-model training steps
# --------------------------------------------------------------------------


def _short_dtype(dtype: str) -> str:
    return "bf16" if dtype == "bfloat16" else "f32"


def _step_cells(timing: Timing, dtype: str) -> dict[str, str]:
    """The compile time, the achieved TFLOP/s (XLA's cost analysis) and the MFU of a compiled step."""
    rate = harness.flop_rate(timing)
    return {"compile s": f"{timing.setup_seconds:.1f}", "TFLOP/s": fmt(None if rate is None else rate / 1e12, ".3g"),
            "MFU": fmt(harness.mfu(timing, dtype), ".1%", "n/a (no peak for this device)")}


def training_task(family: str, batch: int, dtype: str, order: tuple) -> Task:
    description, config_file, image_shape = MODELS[family]
    name = f"{family}_b{batch}_{_short_dtype(dtype)}"

    def run(ctx: Context) -> dict[str, str]:
        row = Row(name, description, config_file, image_shape, batch_size=batch, dtype=dtype)
        runners = [harness.prepare_ibjax(row, num_images=ctx.num_images)]
        torch_runners, notes = _torch_runners(row, ctx)
        # Their checks run after measure(), which would let a raising one discard the whole row.
        timed = [dataclasses.replace(r, check=lambda: None) for r in torch_runners if r is not None]
        timings = measure(runners + timed, steps=None, repeats=ctx.repeats,
                          min_repeat_seconds=ctx.min_repeat_seconds)
        ours, rest = timings[0], iter(timings[1:])
        torch_timings = [next(rest) if r is not None else None for r in torch_runners]
        for k, runner in enumerate(torch_runners):
            try:
                if runner is not None:
                    runner.check()
            except FloatingPointError:
                torch_timings[k], notes[k] = None, "n/a: non-finite PyTorch loss"
        cells = {"batch": str(batch), "dtype": dtype, "ibjax ex/s": f"{ours.examples_per_sec:,.1f}",
                 "ms/step": f"{ours.step_seconds * 1e3:.2f}", **_step_cells(ours, dtype)}
        for column, t, note in zip(("torch eager ex/s", "torch.compile ex/s"), torch_timings, notes):
            cells[column] = f"{t.examples_per_sec:,.1f}" if t is not None else (note or "n/a")
        measured = [t for t in torch_timings if t is not None]
        fastest = max(measured, key=lambda t: t.examples_per_sec) if measured else None
        if fastest is not None:
            which = "eager" if fastest is torch_timings[0] else "torch.compile"
            cells["ibjax / faster torch"] = f"{ratio_cell(ours, fastest)} vs {which}"
        else:
            cells["ibjax / faster torch"] = "n/a (no PyTorch timing)"
        if family == "resnet18" and dtype == "bfloat16" and batch >= 512:
            mfu = harness.mfu(ours, dtype)
            met_mfu = None if mfu is None else mfu >= 0.40
            met_torch = None if fastest is None else ratio(ours, fastest) >= 1.5
            status = [ctx.target("resnet18_mfu", name, fmt(mfu, ".1%"), met_mfu),
                      ctx.target("resnet18_torch", name,
                                 "n/a" if fastest is None else f"{ratio(ours, fastest):.2f}×", met_torch)]
            cells["target"] = f"MFU ≥ 40%: {status[0]}; ≥ 1.5× torch: {status[1]}"
        del runners, torch_runners, timed
        _release_memory(ctx)
        return cells

    return Task(name, family, "training", run, order)


def training_tasks(family: str, small: bool) -> list[Task]:
    if small:
        settings = [(32, "float32"), (32, "bfloat16")]
    elif family == "resnet18":
        # The target rows first, so they are timed whatever the budget leaves for the others.
        settings = [(512, "bfloat16"), (1024, "bfloat16"), (512, "float32"), (1024, "float32"),
                    (256, "bfloat16"), (256, "float32")]
    else:
        settings = [(128, "float32"), (128, "bfloat16")]
    return [training_task(family, batch, dtype, order=(dtype == "bfloat16", batch))
            for batch, dtype in settings]


# --------------------------------------------------------------------------
# Row 3: γ-populations
# --------------------------------------------------------------------------


def population_task(model: str, batch: int, members: int, order: tuple) -> Task:
    description, config_file, image_shape = MODELS[model]
    name = f"population_{model}_g{members}"

    def run(ctx: Context) -> dict[str, str]:
        row = Row(name, description, config_file, image_shape, batch_size=batch, members=members)
        runners = [harness.prepare_ibjax(row, num_images=ctx.num_images),
                   harness.prepare_sequential(row, num_images=ctx.num_images)]
        vmapped, sequential = measure(runners, steps=None, repeats=ctx.repeats,
                                      min_repeat_seconds=ctx.min_repeat_seconds)
        speedup = ratio(vmapped, sequential)
        cells = {"G": str(members), "batch": str(batch),
                 "vmapped ex/s (all members)": f"{vmapped.examples_per_sec:,.1f}", **_step_cells(vmapped, "float32"),
                 "sequential ex/s": f"{sequential.examples_per_sec:,.1f}",
                 "vmapped / sequential": ratio_cell(vmapped, sequential)}
        if model == "mlp" and members == 16:
            cells["target"] = "≥ 8×: " + ctx.target("population", name, f"{speedup:.2f}×", speedup >= 8)
        del runners
        _release_memory(ctx)
        return cells

    return Task(name, "population", "population", run, order)


def population_tasks(small: bool) -> list[Task]:
    if small:
        settings = [("mlp", 32, 1), ("mlp", 32, 4), ("resnet18", 8, 1), ("resnet18", 8, 2)]
    else:
        settings = [(m, 128, g) for m in ("mlp", "resnet18") for g in (1, 4, 16, 64)]
    return [population_task(m, b, g, order=(m != "mlp", g)) for m, b, g in settings]


# --------------------------------------------------------------------------
# Row 4: k-NN estimators and their references
# --------------------------------------------------------------------------


def _estimator_functions(name: str, d: int, ctx: Context):
    """``(ibjax, torch or None, sklearn)`` functions of ``(z, labels) -> float`` for estimator ``name``."""
    device = ctx.torch_device
    half = d // 2
    if name == "knn_entropy":
        functions = (lambda z, y: float(estimators.knn_entropy(z, K)),
                     lambda z, y: knn.torch_knn_entropy(z, K, device),
                     lambda z, y: knn.sklearn_knn_entropy(z, K))
    elif name == "knn_conditional_entropy":
        functions = (lambda z, y: float(estimators.knn_conditional_entropy(z, y, K)),
                     lambda z, y: knn.conditional_from_classes(lambda p: knn.torch_knn_entropy(p, K, device), z, y),
                     lambda z, y: knn.conditional_from_classes(lambda p: knn.sklearn_knn_entropy(p, K), z, y))
    else:
        functions = (lambda z, y: float(estimators.ksg_mutual_information(z[:, :half], z[:, half:], K)),
                     lambda z, y: knn.torch_ksg(z[:, :half], z[:, half:], K, device),
                     lambda z, y: knn.sklearn_ksg(z[:, :half], z[:, half:], K))
    return functions[0], None if device is None else functions[1], functions[2]


def _call_runner(fn: Callable[[], float], first_seconds: float, values: list[float]) -> Runner:
    def run(n: int) -> None:
        for _ in range(n):
            values.append(fn())

    return Runner(run, 1, first_seconds)


def _timed(fn: Callable[[], float]) -> tuple[float, float]:
    start = time.perf_counter()
    value = fn()
    return time.perf_counter() - start, value


def _sklearn_reference(ctx: Context, name: str, z: np.ndarray, labels: np.ndarray, fn) -> tuple[float | None,
                                                                                             float | None, str]:
    """``(seconds, estimate, note)`` of the scikit-learn reference, or None and why it was skipped.

    Its cost is projected from the last size timed for the same estimator (or a
    5,000-point subsample) as quadratic in N; over ``--sklearn_max_s`` or the
    time left, it is skipped.
    """
    if importlib.util.find_spec("sklearn") is None:
        return None, None, "sklearn n/a: not installed"
    n = len(z)
    basis = ctx.sklearn_seconds.get(name)
    if basis is None and n > 20_000:
        sub = 5_000
        seconds, _ = _timed(lambda: fn(z[:sub], labels[:sub]))
        basis = (sub, seconds)
    projected = None if basis is None else basis[1] * (n / basis[0]) ** 2
    if projected is not None and projected > min(ctx.sklearn_max_s, ctx.remaining()):
        why = "time budget" if projected <= ctx.sklearn_max_s else f"> {ctx.sklearn_max_s:.0f} s"
        return None, None, (f"sklearn skipped: est. {projected:.0f} s {why} "
                            f"(N = {basis[0]:,}: {basis[1]:.1f} s × (N ratio)²)")
    seconds, value = _timed(lambda: fn(z, labels))
    times = [seconds]
    while seconds * (len(times) + 1) < 2.0 and len(times) < ctx.repeats:  # fast: repeat for a median
        times.append(_timed(lambda: fn(z, labels))[0])
    ctx.sklearn_seconds[name] = (n, statistics.median(times))
    return statistics.median(times), value, ""


def estimator_task(name: str, n: int, d: int, order: tuple) -> Task:
    row_name = f"{name}_n{n}_d{d}"
    if name == "ksg":
        row_name = f"ksg_mutual_information_n{n}_d{d}"

    def run(ctx: Context) -> dict[str, str]:
        z = knn.gaussian_pairs(n, d)
        labels = np.random.default_rng(1).integers(0, 10, n).astype(np.int32)
        ours_fn, torch_fn, sklearn_fn = _estimator_functions(name, d, ctx)
        ours_values, torch_values = [], []
        first, value = _timed(lambda: ours_fn(z, labels))  # compiles
        ours_values.append(value)
        runners = [_call_runner(lambda: ours_fn(z, labels), first, ours_values)]
        notes = []
        if torch_fn:
            try:
                torch_first, value = _timed(lambda: torch_fn(z, labels))
                torch_values.append(value)
                runners.append(_call_runner(lambda: torch_fn(z, labels), torch_first, torch_values))
            except Exception as error:  # noqa: BLE001
                notes.append(f"torch failed: {_error_text(error)}")
        else:
            notes.append(f"torch {ctx.torch_note}")
        timings = measure(runners, steps=None, repeats=ctx.repeats, min_repeat_seconds=ctx.min_repeat_seconds)
        ours = timings[0]
        torch_timing = timings[1] if len(timings) > 1 else None
        sk_seconds, sk_value, sk_note = _sklearn_reference(ctx, name, z, labels, sklearn_fn)
        if sk_note:
            notes.append(sk_note)
        estimate = ours_values[-1]
        references = {"torch": torch_values[-1] if torch_values else None, "sklearn": sk_value}
        tolerance = 1e-3 * max(1.0, abs(estimate))
        differences = {k: abs(v - estimate) for k, v in references.items() if v is not None}
        if not differences:
            agreement = "n/a (no reference)"
        elif max(differences.values()) <= tolerance:
            agreement = f"agree (max abs diff {max(differences.values()):.1e} ≤ {tolerance:.1e})"
        else:
            ctx.estimates_ok = False
            bad = ", ".join(f"{k} {v:.2e}" for k, v in differences.items() if v > tolerance)
            agreement = f"**DISAGREE** ({bad} > {tolerance:.1e})"
        analytic = knn.analytic_mutual_information(d) if name == "ksg" else knn.analytic_entropy(d)
        ours_s = ours.step_seconds
        cells = {
            "N": f"{n:,}", "d": str(d) + (" (x: d/2, y: d/2)" if name == "ksg" else ""),
            "ibjax ms": f"{ours_s * 1e3:.2f}",
            "compile s": f"{max(first - ours_s, 0.0):.1f}",
            "torch ms": f"{torch_timing.step_seconds * 1e3:.2f}" if torch_timing else "n/a",
            "sklearn ms": fmt(None if sk_seconds is None else sk_seconds * 1e3, ".0f"),
            "torch / ibjax": f"{torch_timing.step_seconds / ours_s:.2f}" if torch_timing else "n/a",
            "sklearn / ibjax": fmt(None if sk_seconds is None else sk_seconds / ours_s, ".1f"),
            "estimates, nats (ibjax / torch / sklearn; analytic)": " / ".join(
                fmt(v, ".4f") for v in (estimate, references["torch"], references["sklearn"]))
                + f"; {analytic:.2f}",
            "agreement": agreement,
            "notes": "; ".join(notes),
        }
        if n == 50_000 and d == 100 and name in ("knn_entropy", "ksg"):
            limit = 0.020 if name == "knn_entropy" else 0.050
            status = ctx.target(name, row_name, f"{ours_s * 1e3:.1f} ms", ours_s <= limit)
            cells["target"] = f"≤ {limit * 1e3:.0f} ms: {status}"
        return cells

    return Task(row_name, "estimators", "estimators", run, order)


def estimator_tasks(small: bool) -> list[Task]:
    names = ("knn_entropy", "knn_conditional_entropy", "ksg")
    sizes = [(2_000, 10, names)] if small else [(50_000, 100, names), (200_000, 100, ("knn_entropy",))]
    return [estimator_task(name, n, d, order=(n, i)) for n, d, chosen in sizes for i, name in enumerate(chosen)]


# --------------------------------------------------------------------------
# Row 5: the training loop's epoch against its step
# --------------------------------------------------------------------------


def epoch_task() -> Task:
    name = "epoch_overhead_resnet18"

    def run(ctx: Context) -> dict[str, str]:
        num_train, num_test, batch = ctx.epoch_images, min(10_000, max(ctx.epoch_images // 5, 64)), ctx.epoch_batch
        description, config_file, image_shape = MODELS["resnet18"]
        row = Row(name, description, config_file, image_shape, batch_size=batch)
        x_train, y_train = harness.synthetic_data(image_shape, num_train, seed=0)
        x_test, y_test = harness.synthetic_data(image_shape, num_test, seed=1)
        dataset = datalib.Dataset("cifar10", x_train, y_train, x_test, y_test, 10)
        with contextlib.ExitStack() as stack:
            epochs = harness.LoopEpochs(experiment.setup(harness.row_config(row), dataset=dataset), stack,
                                        checkpoint=True)
            runners = [epochs.runner(), harness.prepare_ibjax(row, num_images=num_train)]
            epoch, step = measure(runners, steps=None, repeats=ctx.repeats, min_repeat_seconds=ctx.min_repeat_seconds)
            steps, per_call = epochs.experiment.steps_per_epoch, epochs.experiment.steps_per_call
            checkpoints, compile_seconds = len(epochs.loop.managers[0].all_steps()), epochs.compile_seconds
            # The train_epoch calls of the timed repeats, without their checkpoints.
            alone = statistics.median(epochs.epoch_seconds[-epoch.steps * len(epoch.repeat_seconds):])
        del runners, epochs
        ideal = step.step_seconds * steps
        ratio_with, ratio_alone = epoch.step_seconds / ideal, alone / ideal
        # A --small epoch of a few steps is dominated by its fixed costs: the target is for full epochs.
        status = ctx.target("epoch", name, f"{ratio_with:.3f}", None if ctx.small else ratio_with <= 1.05)
        _release_memory(ctx)
        return {
            "train / test images": f"{num_train:,} / {num_test:,}", "batch": str(batch), "steps/epoch": str(steps),
            "step ms": f"{step.step_seconds * 1e3:.2f}", "steps × step s": f"{ideal:.2f}",
            "epoch 2 s": f"{alone:.2f}", "epoch 2 + checkpoint s": f"{epoch.step_seconds:.2f}",
            "overhead ratio": f"{ratio_with:.3f} (with checkpoint; {ratio_alone:.3f} without)",
            "target": f"≤ 1.05: {status}" + (f" (--small: {steps} steps an epoch)" if ctx.small else ""),
            "notes": (f"train.train_epoch, K = {per_call} steps a call: {steps * batch / alone:,.0f} ex/s; its "
                      f"compile {compile_seconds:.1f} s (the step timed alone: {step.setup_seconds:.1f} s); "
                      f"{checkpoints} checkpoints, one an epoch; evaluation and metrics records not included"),
        }

    return Task(name, "epoch", "epoch", run)


# --------------------------------------------------------------------------
# The report
# --------------------------------------------------------------------------


def all_tasks(families: Sequence[str], small: bool) -> list[Task]:
    tasks = []
    for family in families:
        if family in MODELS:
            tasks += training_tasks(family, small)
        elif family == "population":
            tasks += population_tasks(small)
        elif family == "estimators":
            tasks += estimator_tasks(small)
        else:
            tasks.append(epoch_task())
    return tasks


def _peak_line() -> str:
    device = jax.devices()[0]
    kind = device.device_kind.lower()
    key = next((k for k in harness.PEAK_FLOPS if k in kind), None)
    if key is None:
        return f"none for device_kind {device.device_kind!r} (not in PEAK_FLOPS): MFU is n/a"
    peaks = ", ".join(f"{dtype} {harness.peak_flops(device, dtype) / 1e12:.0f} TFLOP/s"
                      for dtype in ("bfloat16", "float32"))
    return (f"{key!r} from benchmarks.harness.PEAK_FLOPS, dense, per device: {peaks} "
            f"(float32: the TF32 rate XLA's default precision uses), × {jax.device_count()} device(s)")


def header(ctx: Context, command: str) -> list[str]:
    device = jax.devices()[0]
    packages = ("jax", "jaxlib", "flax", "optax", "orbax-checkpoint", "numpy", "scikit-learn", "torch")
    torch_line = ctx.torch_note or f"on {ctx.torch_device}"
    if ctx.torch_device is not None:
        torch_line += ("; eager and torch.compile (default mode, dynamic=False)" if ctx.torch_compile
                       else f"; eager only (torch.compile {ctx.compile_note})")
        if getattr(ctx.torch_device, "type", "") == "cuda":
            torch_line += "; TF32 matmuls and convolutions on, as XLA's default precision; cudnn.benchmark on"
        else:
            torch_line += f"; torch.set_num_threads({usable_cores()})"
    now = datetime.datetime.now(datetime.timezone.utc)
    return [
        "# Accelerator benchmark: every throughput target",
        "",
        f"Written by `benchmarks/accelerator.py` on {now:%Y-%m-%d %H:%M} UTC"
        + (" (--small smoke run)." if ctx.small else "."),
        "",
        f"Command: `{command}`",
        "",
        f"* Devices: {jax.devices()} (device_kind {device.device_kind!r}, backend {jax.default_backend()})",
        f"* Host: {platform.node() or 'unknown'}, {usable_cores()} usable cores, python {platform.python_version()}",
        f"* Versions: {harness.versions(packages)}",
        f"* Peak FLOP/s for MFU: {_peak_line()}",
        f"* PyTorch reference: {torch_line}",
        f"* XLA_FLAGS=`{os.environ.get('XLA_FLAGS', '')}`, XLA_PYTHON_CLIENT_PREALLOCATE="
        f"`{os.environ.get('XLA_PYTHON_CLIENT_PREALLOCATE', '')}`; budget {ctx.budget_s:.0f} s; "
        f"{ctx.repeats} repeats of ≥ {ctx.min_repeat_seconds} s each, median reported",
        "",
        "Times are after compilation and warm-up, each repeat blocking on its result; the implementations of a row "
        "alternate repeats. ex/s: examples per second (all members for a population). TFLOP/s: XLA's cost analysis "
        "of the compiled step × ex/s. Ratios are of the medians (of the best repeats in parentheses); > 1 means "
        "ibjax is faster. Estimator times include the host-side preparation of each call, for ibjax and the "
        f"references alike; k = {K}; data: paired Gaussian coordinates with ρ = {RHO}, labels of 10 classes "
        "drawn independently.",
        "",
    ]


def render(ctx: Context, command: str, tasks: Sequence[Task], cells: dict[str, dict[str, str]],
           elapsed: float) -> str:
    lines = header(ctx, command)
    for section, (title, columns) in SECTIONS.items():
        rows = sorted((t for t in tasks if t.section == section), key=lambda t: (list(FAMILIES).index(t.family),
                                                                                 t.order))
        if not rows:
            continue
        lines += [f"## {title}", "", "| " + " | ".join(columns) + " |",
                  "|" + "|".join("---" if c in ("row", "dtype", "notes", "target", "agreement") else "---:"
                                 for c in columns) + "|"]
        for task in rows:
            row = dict(cells.get(task.name, {"notes": "not run"}), row=task.name)
            lines.append("| " + " | ".join(row.get(c, "—") or "—" for c in columns) + " |")
        lines.append("")
    lines += ["## Targets", "", "| target | rows | measured | status |", "|---|---|---|---|"]
    for key, text in TARGETS.items():
        entries = ctx.targets.get(key, [])
        if not entries:
            lines.append(f"| {text} | — | — | n/a (not measured in this run{': --small' if ctx.small else ''}) |")
            continue
        statuses = {s for _, _, s in entries}
        overall = "not met" if "not met" in statuses else ("met" if statuses == {"met"} else "n/a")
        lines.append(f"| {text} | {', '.join(r for r, _, _ in entries)} | {', '.join(m for _, m, _ in entries)} "
                     f"| {overall} |")
    lines += ["", f"Estimator agreement check: {'passed' if ctx.estimates_ok else 'FAILED (see DISAGREE)'}.",
              f"Total wall time: {elapsed:.0f} s.", ""]
    return "\n".join(lines)


# --------------------------------------------------------------------------
# Command line
# --------------------------------------------------------------------------


def missing_modules(names: Sequence[str]) -> list[str]:
    missing = []
    for name in names:
        try:
            found = importlib.util.find_spec(name) is not None
        except (ImportError, ValueError):
            found = False
        if not found:
            missing.append(name)
    return missing


def _preflight_text() -> str:
    missing = missing_modules(REQUIRED_MODULES)
    lines = [f"required modules missing: {', '.join(missing) or 'none'}",
             f"optional modules missing: {', '.join(missing_modules(OPTIONAL_MODULES)) or 'none'}"]
    if _IMPORT_ERROR is not None:
        lines.append(f"import error: {_IMPORT_ERROR}")
    if missing or _IMPORT_ERROR is not None:
        lines.append("Bring pure-Python wheels from a machine with PyPI, e.g. `pip download ml-collections absl-py "
                     "--no-deps -d wheels/`, and install them with `pip install --no-index --no-deps wheels/*.whl` "
                     "(see this script's docstring; PyYAML needs the binary wheel for this Python).")
    return "\n".join(lines)


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--small", action="store_true", help="tiny sizes: a CPU smoke run in under 3 minutes")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="directory for accelerator.md")
    parser.add_argument("--rows", default=",".join(FAMILIES),
                        help=f"comma-separated row families out of: {', '.join(FAMILIES)} (default: all)")
    parser.add_argument("--repeats", type=int, default=None, help="timed repeats, median reported (5; 3 with --small)")
    parser.add_argument("--no_torch", action="store_true", help="no PyTorch references")
    parser.add_argument("--torch_compile", choices=("auto", "on", "off"), default="auto",
                        help="time torch.compile too; auto: on an accelerator, not on a CPU (slow to compile)")
    parser.add_argument("--budget_s", type=float, default=None,
                        help="skip the rows still to run after this many seconds (420; 150 with --small)")
    parser.add_argument("--epoch_images", type=int, default=None,
                        help="training images of the epoch row (50,000; 256 with --small)")
    parser.add_argument("--epoch_batch", type=int, default=None,
                        help="batch size of the epoch row (128, the config's; 32 with --small)")
    parser.add_argument("--sklearn_max_s", type=float, default=60.0,
                        help="skip a scikit-learn reference whose projected time exceeds this")
    parser.add_argument("--compile_cache", default="",
                        help="directory for JAX's persistent compilation cache (default: a temporary one, so "
                             "identical steps compile once a run); 'none' to switch it off")
    parser.add_argument("--preflight", action="store_true",
                        help="list missing modules and the devices, then exit (imports nothing heavy first)")
    args = parser.parse_args(argv)
    rows = [r.strip() for r in args.rows.split(",") if r.strip()]
    unknown = [r for r in rows if r not in FAMILIES]
    if unknown or not rows:
        parser.error(f"--rows: unknown row {', '.join(map(repr, unknown)) or '(none given)'}; "
                     f"valid rows: {', '.join(FAMILIES)}")
    args.rows = [r for r in FAMILIES if r in rows]
    if args.repeats is None:
        args.repeats = 3 if args.small else 5
    if args.repeats < 1:
        parser.error(f"--repeats must be >= 1; got {args.repeats}.")
    if args.budget_s is None:
        args.budget_s = 150.0 if args.small else 420.0
    if args.epoch_images is None:
        args.epoch_images = 256 if args.small else 50_000
    if args.epoch_batch is None:
        args.epoch_batch = 32 if args.small else 128
    if not 0 < args.epoch_batch <= args.epoch_images:
        parser.error(f"--epoch_batch must be in [1, --epoch_images]; got {args.epoch_batch}.")
    return args


def _torch_setup(args: argparse.Namespace) -> tuple[object | None, str, bool, str]:
    """``(torch device or None, why not, time torch.compile?, why not)``."""
    if args.no_torch:
        return None, "n/a: --no_torch", False, "n/a: --no_torch"
    if importlib.util.find_spec("torch") is None:
        return None, "n/a: torch not importable (not installed)", False, "n/a: no torch"
    try:
        import torch
    except Exception as error:  # noqa: BLE001
        return None, f"n/a: import torch failed: {_error_text(error)}", False, "n/a: no torch"
    backend = jax.default_backend()
    if backend == "cpu":
        device = torch.device("cpu")
        torch.set_num_threads(usable_cores())
    elif backend in ("gpu", "cuda", "rocm") and torch.cuda.is_available():
        device = torch.device("cuda", 0)
        torch.backends.cuda.matmul.allow_tf32 = True  # XLA's default float32 precision on GPUs is TF32
        torch.backends.cudnn.allow_tf32 = True
        torch.backends.cudnn.benchmark = True
    else:
        return (None, f"n/a: torch {torch.__version__} has no device for JAX's backend {backend!r}", False,
                "n/a: no torch device")
    if args.torch_compile == "off":
        return device, "", False, "skipped: --torch_compile=off"
    if args.torch_compile == "auto" and device.type == "cpu":
        return device, "", False, "skipped on CPU: slow to compile (--torch_compile=on to time it)"
    return device, "", True, ""


def main(argv: Sequence[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    args = parse_args(argv)
    if missing_modules(REQUIRED_MODULES) or _IMPORT_ERROR is not None:
        _log(_preflight_text())
        return 2
    if args.preflight:
        print(_preflight_text())
        print(f"devices: {jax.devices()} (backend {jax.default_backend()})")
        return 0
    start = time.perf_counter()
    with contextlib.ExitStack() as stack:
        cache = args.compile_cache
        if cache.lower() != "none" and not os.environ.get("JAX_COMPILATION_CACHE_DIR"):
            cache = cache or stack.enter_context(tempfile.TemporaryDirectory(prefix="ibjax_jax_cache_"))
            jax.config.update("jax_compilation_cache_dir", cache)
            jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
        device, torch_note, compile_on, compile_note = _torch_setup(args)
        ctx = Context(small=args.small, repeats=args.repeats, min_repeat_seconds=0.05 if args.small else 0.3,
                      num_images=256 if args.small else 4096, epoch_images=args.epoch_images,
                      epoch_batch=args.epoch_batch, sklearn_max_s=args.sklearn_max_s, torch_device=device,
                      torch_note=torch_note, torch_compile=compile_on, compile_note=compile_note,
                      start=start, budget_s=args.budget_s)
        command = harness.command_line("python", "benchmarks/accelerator.py", argv)
        tasks = all_tasks(args.rows, args.small)
        args.out.mkdir(parents=True, exist_ok=True)
        out_file = args.out / "accelerator.md"
        # Each family's share of the budget ends at its deadline, what it leaves passing on to
        # the next. A --small run gives every row until the end of the budget instead.
        shares = {f: FAMILIES[f] for f in args.rows}
        cumulative, deadlines = 0.0, {}
        for family in args.rows:
            cumulative += shares[family] / sum(shares.values())
            deadlines[family] = start + args.budget_s * (1.0 if args.small else cumulative)
        cells: dict[str, dict[str, str]] = {}
        errors = 0
        for task in tasks:
            ctx.deadline = deadlines[task.family]
            elapsed = time.perf_counter() - start
            if time.perf_counter() >= ctx.deadline:
                cells[task.name] = {"notes": f"skipped: time budget ({elapsed:.0f} s elapsed of {args.budget_s:.0f})"}
                _log(f"[{elapsed:6.1f} s] {task.name}: skipped (time budget)")
                continue
            _log(f"[{elapsed:6.1f} s] {task.name} ...")
            try:
                cells[task.name] = task.run(ctx)
            except Exception as error:  # noqa: BLE001 - one failing row must not lose the others
                errors += 1
                traceback.print_exc(file=sys.stderr)
                cells[task.name] = {"notes": f"error: {_error_text(error)}"}
                _release_memory(ctx)
            _log(f"[{time.perf_counter() - start:6.1f} s] {task.name}: "
                 + ", ".join(f"{k} {v}" for k, v in cells[task.name].items() if v and k != "notes"))
            out_file.write_text(render(ctx, command, tasks, cells, time.perf_counter() - start))
        report = render(ctx, command, tasks, cells, time.perf_counter() - start)
        out_file.write_text(report)
    print(report)
    _log(f"Wrote {out_file}")
    if not ctx.estimates_ok:
        _log("The estimators DISAGREE with a reference: see the table.")
    return 1 if errors or not ctx.estimates_ok else 0


if __name__ == "__main__":
    sys.exit(main())
