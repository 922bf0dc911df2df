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
takes the median of ``--repeats`` repeats with
``benchmarks.train_step.measure``, which interleaves the repeats of the
implementations compared so that a change in the machine's load hits all
alike. Each row's ratio is against a reference measured in the same run:

1. ``resnet18``: the ResNet18 step of ``configs/cifar_condvar.py`` (noise,
   conditional log-variance, crop+flip on the device) in float32 and bfloat16
   at batch 256/512/1024 (``--small``: 32), built with
   ``ibjax.experiment.setup`` exactly as ``train_and_evaluate`` builds it:
   examples/s, achieved TFLOP/s from XLA's cost analysis of the compiled step,
   MFU against the chip's dense peak from ``PEAK_FLOPS``, and the same model,
   loss and Adam step in PyTorch on the same device, eager and
   ``torch.compile``-d (bf16 autocast for bf16 rows, channels_last); the
   ratio is against the faster PyTorch variant.
2. ``mlp`` and ``dropout_cnn``: the §7.1 MLP with a categorical latent and the
   §7.2 Dropout CNN, the same way (batch 128; ``--small``: 32).
3. ``population``: G members of the MLP and of ResNet18 (batch 128) in one
   vmapped step against G single-model steps one after another (G = 1, 4,
   16, 64; ``--small``: MLP G = 1, 4 at batch 32, ResNet18 G = 1, 2 at batch 8).
4. ``estimators``: ``knn_entropy``, ``knn_conditional_entropy`` and
   ``ksg_mutual_information`` at N = 50,000, d = 100 (the entropy also at
   N = 200,000; ``--small``: N = 2,000, d = 10) against a brute-force PyTorch
   search on the same device and scikit-learn on the host, with every
   estimate printed and checked to agree.
5. ``epoch``: two epochs of ``ibjax.train.train_and_evaluate`` on synthetic
   CIFAR-shaped data on the device (metrics, TensorBoard, evaluation, a
   checkpoint every epoch; 50,000 / 10,000 images, batch 128; ``--small``:
   256 / 64, batch 32): the second epoch, from the first epoch's summary line
   to the second's (so with the first epoch's checkpoint save), against the
   compiled step's time × steps per epoch.

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
import importlib.metadata
import importlib.util
import math
import os
import platform
import re
import shlex
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
# spin-waiting slows PyTorch's CPU threads on a shared machine (see train_step.py).
os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

#: Modules the script cannot run without (import names).
REQUIRED_MODULES = ("scipy", "jax", "jaxlib", "flax", "optax", "orbax.checkpoint", "ml_collections", "yaml",
                    "absl", "tqdm")
#: Modules of the references; a row without one says n/a.
OPTIONAL_MODULES = ("torch", "sklearn")

try:
    import jax
    from scipy import special

    from benchmarks import train_step as harness
    from benchmarks.train_step import PEAK_FLOPS, Row, Runner, Timing, measure, peak_flops, usable_cores
    from ibjax import data as datalib
    from ibjax import estimators
except ImportError as _error:  # reported by main() with what to install
    _IMPORT_ERROR: ImportError | None = _error
else:
    _IMPORT_ERROR = None

DEFAULT_OUT = ROOT / "benchmarks" / "results"
K = 3  # neighbour order of every estimator row
RHO = 0.9  # correlation of the paired coordinates of the estimators' Gaussian data

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
    "epoch": ("Epoch overhead: train_and_evaluate against its compiled step", (
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


def _fmt(value: float | None, spec: str, none: str = "n/a") -> str:
    return none if value is None else format(value, spec)


def _ratio(a: Timing, b: Timing) -> float:
    """Throughput ratio a / b of the medians."""
    return a.examples_per_sec / b.examples_per_sec


def _ratio_cell(a: Timing, b: Timing) -> str:
    """The ratio of the medians, and of the best repeats in parentheses."""
    return f"{_ratio(a, b):.2f} ({min(b.repeat_seconds) / min(a.repeat_seconds):.2f})"


def _error_text(error: BaseException) -> str:
    text = f"{type(error).__name__}: {error}".replace("\n", " ").replace("|", "/")
    return text if len(text) < 300 else text[:297] + "..."


# --------------------------------------------------------------------------
# PyTorch on the device: a thin adapter around benchmarks/torch_reference.py
# --------------------------------------------------------------------------


def prepare_torch(row: Row, ctx: Context, *, compiled: bool, num_images: int, seed: int = 0
                  ) -> tuple[Runner | None, str]:
    """The PyTorch step of ``row`` on ``ctx.torch_device``, its first step taken: ``(runner, '')`` or ``(None, why)``.

    The runner's ``check`` returns whether every loss so far was finite
    (rather than raising, so that the other implementations' timings of the
    row survive a bad PyTorch run).

    ``torch_reference.make_train_step`` runs on the CPU only (CPU tensors and
    generator, CPU autocast) and builds its model inside, where it cannot be
    compiled; this adapter keeps its model (``build``), its loss terms and its
    augmentation, and adds what the device needs: the data, the indices and the
    random generator on the device, channels_last, autocast on the device's
    type, fused Adam on CUDA, and ``torch.compile`` of the model and loss (the
    augmentation and the noise draw stay eager).
    """
    import torch

    from benchmarks import torch_reference as reference

    device = ctx.torch_device
    config = harness.row_config(row)
    model_config, objective = config.model, config.objective
    images, labels = harness.synthetic_data(row, num_images, seed)
    torch.manual_seed(seed)
    generator = torch.Generator(device=device).manual_seed(seed)
    conv = model_config.encoder != "mlp"
    layout = torch.channels_last if conv else torch.contiguous_format
    model = reference.build(config).to(device=device, memory_format=layout).train()
    adam = {"fused": True} if device.type == "cuda" else {"foreach": True}
    optimizer = torch.optim.Adam(model.parameters(), lr=config.train.learning_rate, **adam)
    data = torch.from_numpy(np.ascontiguousarray(images)).to(device)
    targets = torch.from_numpy(labels.astype(np.int64)).to(device)
    batches = [torch.from_numpy(b.astype(np.int64)).to(device)
               for b in harness.batch_indices(num_images, config.train.batch_size, seed=seed)]
    mean, std = (torch.tensor(v, device=device) for v in datalib.NORMALIZATION[config.data.name])
    autocast = dict(device_type=device.type, dtype=torch.bfloat16, enabled=config.dtype == "bfloat16")
    # Plain Python constants, so that torch.compile sees no config object.
    categorical = model_config.latent == "categorical"
    cnn = model_config.encoder == "dropout_cnn"
    noisy = not categorical and bool(model_config.noise)
    samples = int(model_config.num_samples) if cnn else 1
    noise_shape = (samples, int(config.train.batch_size), int(model_config.latent_dim))
    if objective.regularizer not in ("none", "cond_log_var"):
        return None, f"n/a: the adapter has no regularizer {objective.regularizer!r}"
    gamma = float(objective.gamma) if objective.regularizer == "cond_log_var" else None
    eps = float(objective.eps)
    augment = bool(config.data.augment)

    def model_and_loss(x, y, noise):
        # torch_reference.training_loss after its input handling: networks under
        # autocast, loss terms in float32.
        with torch.autocast(**autocast):
            if categorical:
                return reference.categorical_decoder_cross_entropy(*model(x), y).mean()
            encoder = model["encoder"]
            z = (encoder(x, samples) if cnn else encoder(x)[None]).float()
            z = z + noise if noise is not None else z
            logits = model["decoder"](z).float()
        loss = reference.decoder_cross_entropy(logits, y).mean()
        if gamma is not None:
            loss = loss + gamma * reference.conditional_log_variance(
                z.flatten(0, 1), y.repeat(z.shape[0]), logits.shape[-1], eps)
        return loss

    loss_fn = torch.compile(model_and_loss, dynamic=False) if compiled else model_and_loss

    def step(idx):
        x = (data[idx].float() / 255.0 - mean) / std
        if augment:
            with torch.device(device):  # the reference's crop and flip make their index tensors here
                x = reference.random_crop_flip(x, generator)
        x = x.permute(0, 3, 1, 2).contiguous(memory_format=layout)
        noise = (reference.ZERO_ENTROPY_STD * torch.randn(noise_shape, generator=generator, device=device)
                 if noisy else None)
        loss = loss_fn(x, targets[idx], noise)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        return loss.detach()

    def sync():
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    losses = []
    start = time.perf_counter()
    try:
        losses.append(step(batches[0]))
        sync()
    except Exception as error:  # noqa: BLE001 - an unsupported torch.compile must not end the run
        return None, f"n/a: {'torch.compile' if compiled else 'eager'} failed: {_error_text(error)}"
    first_step = time.perf_counter() - start
    if compiled:
        ctx.compile_estimate_s = first_step
    i = 1

    def run(n: int) -> None:
        nonlocal i
        for _ in range(n):
            losses.append(step(batches[i % len(batches)]))
            i += 1
        sync()

    def check() -> bool:
        return bool(torch.isfinite(torch.stack(losses)).all())

    return Runner(run, config.train.batch_size, first_step, check=check), ""


def _torch_runners(row: Row, ctx: Context, num_images: int) -> tuple[list[Runner | None], list[str]]:
    """The eager and the compiled PyTorch runner of ``row`` (None where not timed) and their notes."""
    if ctx.torch_device is None:
        return [None, None], [ctx.torch_note, ctx.torch_note]
    eager, eager_note = prepare_torch(row, ctx, compiled=False, num_images=num_images)
    if not ctx.torch_compile:
        return [eager, None], [eager_note, ctx.compile_note]
    if ctx.remaining() < ctx.compile_estimate_s:
        return [eager, None], [eager_note, f"skipped: time budget (torch.compile est. {ctx.compile_estimate_s:.0f} s)"]
    compiled, compiled_note = prepare_torch(row, ctx, compiled=True, num_images=num_images)
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


def _mfu(timing: Timing, dtype: str) -> tuple[float | None, float | None]:
    """(achieved TFLOP/s, MFU) of a timing; MFU None where the device has no listed peak."""
    if timing.flops_per_example is None:
        return None, None
    rate = timing.flops_per_example * timing.examples_per_sec
    peak = peak_flops(jax.devices()[0], dtype)
    return rate / 1e12, None if peak is None else rate / (peak * jax.device_count())


def training_task(family: str, batch: int, dtype: str, order: tuple) -> Task:
    description, config_file, image_shape = MODELS[family]
    name = f"{family}_b{batch}_{_short_dtype(dtype)}"

    def run(ctx: Context) -> dict[str, str]:
        row = Row(name, description, config_file, image_shape, batch_size=batch, dtype=dtype)
        runners = [harness.prepare_ibjax(row, num_images=ctx.num_images)]
        torch_runners, notes = _torch_runners(row, ctx, ctx.num_images)
        # Their checks run after measure(), which would let a raising one discard the whole row.
        timed = [dataclasses.replace(r, check=lambda: None) for r in torch_runners if r is not None]
        timings = measure(runners + timed, steps=None, repeats=ctx.repeats,
                          min_repeat_seconds=ctx.min_repeat_seconds)
        ours, rest = timings[0], iter(timings[1:])
        torch_timings = [next(rest) if r is not None else None for r in torch_runners]
        for k, runner in enumerate(torch_runners):
            if runner is not None and not runner.check():
                torch_timings[k], notes[k] = None, "n/a: non-finite PyTorch loss"
        tflops, mfu = _mfu(ours, dtype)
        cells = {"batch": str(batch), "dtype": dtype, "ibjax ex/s": f"{ours.examples_per_sec:,.1f}",
                 "ms/step": f"{ours.step_seconds * 1e3:.2f}", "compile s": f"{ours.setup_seconds:.1f}",
                 "TFLOP/s": _fmt(tflops, ".3g"),
                 "MFU": _fmt(mfu, ".1%", "n/a (no peak for this device)")}
        for column, t, note in zip(("torch eager ex/s", "torch.compile ex/s"), torch_timings, notes):
            cells[column] = f"{t.examples_per_sec:,.1f}" if t is not None else (note or "n/a")
        measured = [t for t in torch_timings if t is not None]
        fastest = max(measured, key=lambda t: t.examples_per_sec) if measured else None
        if fastest is not None:
            which = "eager" if fastest is torch_timings[0] else "torch.compile"
            cells["ibjax / faster torch"] = f"{_ratio_cell(ours, fastest)} vs {which}"
        else:
            cells["ibjax / faster torch"] = "n/a (no PyTorch timing)"
        if family == "resnet18" and dtype == "bfloat16" and batch >= 512:
            met_mfu = None if mfu is None else mfu >= 0.40
            met_torch = None if fastest is None else _ratio(ours, fastest) >= 1.5
            status = [ctx.target("resnet18_mfu", name, _fmt(mfu, ".1%"), met_mfu),
                      ctx.target("resnet18_torch", name,
                                 "n/a" if fastest is None else f"{_ratio(ours, fastest):.2f}×", met_torch)]
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
        tflops, mfu = _mfu(vmapped, "float32")
        ratio = _ratio(vmapped, sequential)
        cells = {"G": str(members), "batch": str(batch),
                 "vmapped ex/s (all members)": f"{vmapped.examples_per_sec:,.1f}",
                 "compile s": f"{vmapped.setup_seconds:.1f}", "TFLOP/s": _fmt(tflops, ".3g"),
                 "MFU": _fmt(mfu, ".1%", "n/a (no peak for this device)"),
                 "sequential ex/s": f"{sequential.examples_per_sec:,.1f}",
                 "vmapped / sequential": _ratio_cell(vmapped, sequential)}
        if model == "mlp" and members == 16:
            cells["target"] = "≥ 8×: " + ctx.target("population", name, f"{ratio:.2f}×", ratio >= 8)
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


def gaussian_pairs(n: int, d: int, rho: float = RHO, seed: int = 0) -> np.ndarray:
    """float32 ``[n, d]``: d/2 standard normal coordinates, then each paired with correlation ``rho``.

    Analytic values: H[Z] = (d/2) log(2πe) + (d/4) log(1 − ρ²); with x the first
    and y the second half, I[X;Y] = −(d/4) log(1 − ρ²).
    """
    if d % 2:
        raise ValueError(f"`d` must be even; got {d}.")
    rng = np.random.default_rng(seed)
    a = rng.standard_normal((n, d // 2))
    b = rho * a + math.sqrt(1.0 - rho**2) * rng.standard_normal((n, d // 2))
    return np.concatenate([a, b], axis=1).astype(np.float32)


def analytic_entropy(d: int, rho: float = RHO) -> float:
    return 0.5 * d * math.log(2 * math.pi * math.e) + 0.25 * d * math.log(1.0 - rho**2)


def analytic_mutual_information(d: int, rho: float = RHO) -> float:
    return -0.25 * d * math.log(1.0 - rho**2)


def kl_entropy_from_distances(kth: np.ndarray, d: int, k: int) -> float:
    """Kozachenko–Leonenko in float64: ψ(N) − ψ(k) + log V_d + (d/N) Σ log ε_i, ε_i the k-th-neighbour distance."""
    kth = np.asarray(kth, np.float64)
    log_unit_ball = 0.5 * d * math.log(math.pi) - math.lgamma(0.5 * d + 1.0)
    return float(special.digamma(kth.size) - special.digamma(k) + log_unit_ball + d * np.log(kth).mean())


def ksg_from_counts(n_x: np.ndarray, n_y: np.ndarray, k: int) -> float:
    """KSG (algorithm 1) in float64: ψ(k) + ψ(N) − mean[ψ(n_x + 1) + ψ(n_y + 1)]."""
    n_x, n_y = np.asarray(n_x, np.float64), np.asarray(n_y, np.float64)
    return float(special.digamma(k) + special.digamma(n_x.size)
                 - np.mean(special.digamma(n_x + 1.0) + special.digamma(n_y + 1.0)))


def conditional_from_classes(entropy_fn: Callable[[np.ndarray], float], x: np.ndarray, labels: np.ndarray) -> float:
    """Σ_y p̂(y) H[X | Y = y] with ``entropy_fn`` on each class's points."""
    classes, counts = np.unique(labels, return_counts=True)
    return float(sum(c / len(labels) * entropy_fn(x[labels == y]) for y, c in zip(classes, counts)))


@contextlib.contextmanager
def _full_float32_matmuls():
    """Float32 matrix products without TF32 (the distances must be float32-accurate)."""
    import torch

    saved = torch.get_float32_matmul_precision()
    torch.set_float32_matmul_precision("highest")
    try:
        yield
    finally:
        torch.set_float32_matmul_precision(saved)


def torch_kth_distances(x: np.ndarray, k: int, device="cpu", block: int = 1024) -> np.ndarray:
    """Distances to the k-th nearest other point by brute force on ``device``.

    Blocks of query rows: squared distances ‖q‖² + ‖x‖² − 2 q·x as one matrix
    product each (float32, no TF32), then ``torch.topk``.
    """
    import torch

    with _full_float32_matmuls(), torch.no_grad():
        points = torch.as_tensor(np.asarray(x, np.float32), device=device)
        points = points - points.mean(dim=0)
        norms = (points * points).sum(dim=1)
        out = torch.empty(points.shape[0], device=device)
        for start in range(0, points.shape[0], block):
            q = points[start:start + block]
            squared = norms[start:start + len(q), None] + norms[None, :] - 2.0 * (q @ points.T)
            rows = torch.arange(len(q), device=device)
            squared[rows, rows + start] = math.inf  # not the point itself
            out[start:start + len(q)] = torch.topk(squared, k, dim=1, largest=False).values[:, k - 1]
        return out.clamp_min(0.0).sqrt().cpu().numpy()


def torch_ksg_counts(x: np.ndarray, y: np.ndarray, k: int, device="cpu", block: int = 1024
                     ) -> tuple[np.ndarray, np.ndarray]:
    """n_x, n_y of KSG algorithm 1 by brute force on ``device``: max-norm distances (``torch.cdist``, p = ∞)."""
    import torch

    with torch.no_grad():
        xs, ys = (torch.as_tensor(np.asarray(a, np.float32), device=device) for a in (x, y))
        xs, ys = xs - xs.mean(dim=0), ys - ys.mean(dim=0)
        n_x = torch.empty(xs.shape[0], dtype=torch.int64, device=device)
        n_y = torch.empty_like(n_x)
        for start in range(0, xs.shape[0], block):
            dx = torch.cdist(xs[start:start + block], xs, p=math.inf)
            dy = torch.cdist(ys[start:start + block], ys, p=math.inf)
            joint = torch.maximum(dx, dy)
            rows = torch.arange(len(dx), device=device)
            joint[rows, rows + start] = math.inf
            eps = torch.topk(joint, k, dim=1, largest=False).values[:, k - 1:k]
            n_x[start:start + len(dx)] = (dx < eps).sum(dim=1) - 1  # minus the point itself
            n_y[start:start + len(dx)] = (dy < eps).sum(dim=1) - 1
        return n_x.cpu().numpy(), n_y.cpu().numpy()


def torch_knn_entropy(x: np.ndarray, k: int = K, device="cpu") -> float:
    return kl_entropy_from_distances(torch_kth_distances(x, k, device), x.shape[1], k)


def torch_ksg(x: np.ndarray, y: np.ndarray, k: int = K, device="cpu") -> float:
    return ksg_from_counts(*torch_ksg_counts(x, y, k, device), k)


def sklearn_knn_entropy(x: np.ndarray, k: int = K) -> float:
    """Kozachenko–Leonenko with scikit-learn's exact neighbours on the host (float64, all cores)."""
    from sklearn.neighbors import NearestNeighbors

    x = np.asarray(x, np.float64)
    distances = NearestNeighbors(n_neighbors=k + 1, n_jobs=-1).fit(x).kneighbors(x)[0]
    return kl_entropy_from_distances(distances[:, k], x.shape[1], k)


def sklearn_ksg(x: np.ndarray, y: np.ndarray, k: int = K) -> float:
    """KSG with scikit-learn on the host: the joint k-th neighbour (Chebyshev), then KDTree radius counts."""
    from sklearn.neighbors import KDTree, NearestNeighbors

    x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
    z = np.hstack([x, y])
    eps = NearestNeighbors(n_neighbors=k + 1, metric="chebyshev", n_jobs=-1).fit(z).kneighbors(z)[0][:, k]
    radius = np.nextafter(eps, 0)  # query_radius counts distances ≤ r; KSG counts < ε
    n_x = KDTree(x, metric="chebyshev").query_radius(x, radius, count_only=True) - 1
    n_y = KDTree(y, metric="chebyshev").query_radius(y, radius, count_only=True) - 1
    return ksg_from_counts(n_x, n_y, k)


def _estimator_functions(name: str, d: int, ctx: Context):
    """``(ibjax, torch or None, sklearn)`` functions of ``(z, labels) -> float`` for estimator ``name``."""
    device = ctx.torch_device
    half = d // 2
    if name == "knn_entropy":
        functions = (lambda z, y: float(estimators.knn_entropy(z, K)),
                     lambda z, y: torch_knn_entropy(z, K, device),
                     lambda z, y: sklearn_knn_entropy(z, K))
    elif name == "knn_conditional_entropy":
        functions = (lambda z, y: float(estimators.knn_conditional_entropy(z, y, K)),
                     lambda z, y: conditional_from_classes(lambda p: torch_knn_entropy(p, K, device), z, y),
                     lambda z, y: conditional_from_classes(lambda p: sklearn_knn_entropy(p, K), z, y))
    else:
        functions = (lambda z, y: float(estimators.ksg_mutual_information(z[:, :half], z[:, half:], K)),
                     lambda z, y: torch_ksg(z[:, :half], z[:, half:], K, device),
                     lambda z, y: sklearn_ksg(z[:, :half], z[:, half:], K))
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
        z = gaussian_pairs(n, d)
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
        analytic = analytic_mutual_information(d) if name == "ksg" else analytic_entropy(d)
        ours_s = ours.step_seconds
        cells = {
            "N": f"{n:,}", "d": str(d) + (" (x: d/2, y: d/2)" if name == "ksg" else ""),
            "ibjax ms": f"{ours_s * 1e3:.2f}",
            "compile s": f"{max(first - ours_s, 0.0):.1f}",
            "torch ms": f"{torch_timing.step_seconds * 1e3:.2f}" if torch_timing else "n/a",
            "sklearn ms": _fmt(None if sk_seconds is None else sk_seconds * 1e3, ".0f"),
            "torch / ibjax": f"{torch_timing.step_seconds / ours_s:.2f}" if torch_timing else "n/a",
            "sklearn / ibjax": _fmt(None if sk_seconds is None else sk_seconds / ours_s, ".1f"),
            "estimates, nats (ibjax / torch / sklearn; analytic)": " / ".join(
                _fmt(v, ".4f") for v in (estimate, references["torch"], references["sklearn"]))
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
# Row 5: one epoch of train_and_evaluate against its step
# --------------------------------------------------------------------------


class _EpochClock:
    """A stdout that passes text on and notes when train_and_evaluate prints each epoch's summary line."""

    def __init__(self, echo):
        self.echo, self.printed, self._line = echo, {}, ""

    def write(self, text: str) -> int:
        now = time.perf_counter()
        self.echo.write(text)
        self._line += text
        while "\n" in self._line:
            line, self._line = self._line.split("\n", 1)
            match = re.match(r"\s*epoch\s+(\d+)\s", line)
            if match:
                self.printed.setdefault(int(match.group(1)), now)
        return len(text)

    def flush(self) -> None:
        self.echo.flush()


def epoch_task() -> Task:
    name = "epoch_overhead_resnet18"

    def run(ctx: Context) -> dict[str, str]:
        from ibjax import train
        from ibjax.io import read_jsonl

        num_train, num_test, batch = ctx.epoch_images, min(10_000, max(ctx.epoch_images // 5, 64)), ctx.epoch_batch
        description, config_file, image_shape = MODELS["resnet18"]
        row = Row(name, description, config_file, image_shape, batch_size=batch)
        config = harness.row_config(row)
        config.train.num_epochs = 2
        config.checkpoint.every_epochs = 1
        config.train.tensorboard = True
        if ctx.small:  # a test split smaller than the eval batch would be padded to 512 examples
            config.train.eval_batch_size = min(config.train.eval_batch_size, num_test)
        x_train, y_train = harness.synthetic_data(row, num_train, seed=0)
        x_test, y_test = harness.synthetic_data(row, num_test, seed=1)
        dataset = datalib.Dataset("cifar10", x_train, y_train, x_test, y_test, 10)
        clock = _EpochClock(sys.stderr)
        with tempfile.TemporaryDirectory(prefix="ibjax_epoch_") as workdir:
            start = time.perf_counter()
            with contextlib.redirect_stdout(clock):
                train.train_and_evaluate(config, workdir, dataset=dataset)
            total = time.perf_counter() - start
            records = read_jsonl(Path(workdir) / "metrics.jsonl")
            events = sorted(p.name for p in Path(workdir).iterdir() if "tfevents" in p.name)
            checkpoints = sorted(p.name for p in (Path(workdir) / "checkpoints").iterdir() if p.name.isdigit())
        second = next(r for r in records if r["epoch"] == 2)
        runner = harness.prepare_ibjax(row, num_images=num_train)
        (step,) = measure([runner], steps=None, repeats=ctx.repeats, min_repeat_seconds=ctx.min_repeat_seconds)
        del runner
        first = next(r for r in records if r["epoch"] == 1)
        steps = num_train // batch
        ideal = step.step_seconds * steps
        # From the first epoch's summary line to the second's: epoch 1's checkpoint
        # save, then all of epoch 2 (steps, metrics, evaluation, TensorBoard).
        cycle = clock.printed[2] - clock.printed[1] if {1, 2} <= clock.printed.keys() else None
        measured = cycle if cycle is not None else second["epoch_seconds"]
        ratio = measured / ideal
        # A --small epoch of a few steps is dominated by its fixed costs: the target is for full epochs.
        status = ctx.target("epoch", name, f"{ratio:.3f}", None if ctx.small else ratio <= 1.05)
        _release_memory(ctx)
        return {
            "train / test images": f"{num_train:,} / {num_test:,}", "batch": str(batch), "steps/epoch": str(steps),
            "step ms": f"{step.step_seconds * 1e3:.2f}", "steps × step s": f"{ideal:.2f}",
            "epoch 2 s": f"{second['epoch_seconds']:.2f}", "epoch 2 + checkpoint s": _fmt(cycle, ".2f"),
            "overhead ratio": f"{ratio:.3f} ({'with' if cycle is not None else 'without'} checkpoint; "
                              f"{second['epoch_seconds'] / ideal:.3f} without)",
            "target": f"≤ 1.05: {status}" + (f" (--small: {steps} steps an epoch)" if ctx.small else ""),
            "notes": (f"ibjax's own figure {second['examples_per_sec']:,.0f} ex/s; whole call {total:.1f} s, "
                      f"its compile {first.get('compile_seconds', math.nan):.1f} s (the step timed alone: "
                      f"{step.setup_seconds:.1f} s); {len(checkpoints)} checkpoints, {len(events)} event file(s)"),
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
    key = next((k for k in PEAK_FLOPS if k in kind), None)
    if key is None:
        return f"none for device_kind {device.device_kind!r} (not in PEAK_FLOPS): MFU is n/a"
    peaks = ", ".join(f"{dtype} {peak_flops(device, dtype) / 1e12:.0f} TFLOP/s" for dtype in ("bfloat16", "float32"))
    return (f"{key!r} from benchmarks.train_step.PEAK_FLOPS, dense, per device: {peaks} "
            f"(float32: the TF32 rate XLA's default precision uses), × {jax.device_count()} device(s)")


def _version(package: str) -> str:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


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
        "* Versions: " + ", ".join(f"{p} {_version(p)}" for p in packages),
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
        xla_flags = os.environ.get("XLA_FLAGS")
        command = ("" if xla_flags is None else f"XLA_FLAGS={shlex.quote(xla_flags)} ") + shlex.join(
            ["python", "benchmarks/accelerator.py", *argv])
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
