r"""Steady-state throughput of ibjax's training step, side by side with eager PyTorch.

  XLA_FLAGS= python benchmarks/train_step.py            # default rows -> benchmarks/RESULTS.md
  python benchmarks/train_step.py --rows mlp_categorical,population_g16 --repeats 5 --steps 20 --no_torch

Each row builds its run from a config in ``configs/`` with
``ibjax.experiment.setup`` and times its jitted train step
(``Experiment.train_step``, the step ``train_and_evaluate`` runs) on
synthetic uint8 images already on the device. A row's time is the median
over ``--repeats`` repeats of ``--steps`` steps each, every repeat ending in
``jax.block_until_ready``, after the ahead-of-time compile (reported apart)
and warm-up steps. Throughput is examples per second; for a population of G
members it is summed over the members (G·B per step).

The comparison of a row — eager PyTorch (``benchmarks/torch_reference.py``,
``--torch``) for a single model, G sequential single-model steps for a
population — is timed by the same harness in the same process, its repeats
alternating with ibjax's so that changes in the machine's load hit both.
A single-model step is the step with no member axis (``member_map=
'sequential'`` with one member), so ``population_g1`` measures what the
member axis every run now carries costs at M = 1.
PyTorch gets ``torch.set_num_threads`` = the cores this process may run on,
which is what XLA's CPU thread pool uses.

FLOPs per example come from XLA's cost analysis of the step; on an
accelerator listed in :data:`PEAK_FLOPS` they give the model FLOPs
utilisation (MFU).
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import importlib.util
import math
import os
import platform
import shlex
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from ibjax import config as configlib
from ibjax import data as datalib
from ibjax import experiment
from ibjax import step as steplib

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_OUTPUT = ROOT / "benchmarks" / "RESULTS.md"
#: Everything after this line of an existing output file is kept on regeneration.
NOTES_MARKER = "<!-- Notes below this line are kept when the benchmark rewrites this file. -->"


@dataclasses.dataclass(frozen=True)
class Row:
    """One benchmarked configuration.

    Attributes:
      name: the row's name for ``--rows``.
      description: the model in words.
      config_file: the experiment config in ``configs/`` that defines model and loss.
      image_shape: ``(H, W, C)`` of the synthetic images.
      batch_size: examples per step (per member).
      dtype: 'float32' or 'bfloat16' computation.
      members: population size G: 0 for a single model, G ≥ 1 for G members
        in one vmapped step, timed against G sequential single-model steps.
    """

    name: str
    description: str
    config_file: str
    image_shape: tuple[int, int, int]
    batch_size: int = 128
    dtype: str = "float32"
    members: int = 0


_MLP = ("MLP 784–1024–1024–100, categorical decoder 100–1024–1024–10", "permuted_mnist_categorical.py", (28, 28, 1))
_CNN = ("Dropout CNN, K = 128, 12 samples, noise, linear decoder", "mnist_dropout_cnn.py", (28, 28, 1))
_RESNET = ("ResNet18, K = 100, noise, linear decoder, cond_log_var, crop+flip", "cifar_condvar.py", (32, 32, 3))

#: Every row, by name.
ROWS: dict[str, Row] = {
    row.name: row
    for row in (
        Row("mlp_categorical", *_MLP),
        Row("dropout_cnn", *_CNN),
        Row("resnet18_b128_f32", *_RESNET, batch_size=128),
        Row("resnet18_b128_bf16", *_RESNET, batch_size=128, dtype="bfloat16"),
        Row("resnet18_b512_f32", *_RESNET, batch_size=512),
        Row("resnet18_b512_bf16", *_RESNET, batch_size=512, dtype="bfloat16"),
        Row("population_g1", *_MLP, members=1),
        Row("population_g4", *_MLP, members=4),
        Row("population_g16", *_MLP, members=16),
    )
}

#: Dense peak FLOP/s by ``device_kind`` substring (lower case), for MFU.
#: 'float32' is the rate XLA's default matmul precision reaches: TF32 tensor
#: cores on NVIDIA GPUs, bfloat16 passes on TPUs.
PEAK_FLOPS: dict[str, dict[str, float]] = {
    "h200": {"bfloat16": 989e12, "float32": 495e12},
    "h100 pcie": {"bfloat16": 756e12, "float32": 378e12},
    "h100": {"bfloat16": 989e12, "float32": 495e12},
    "a100": {"bfloat16": 312e12, "float32": 156e12},
    "tpu v4": {"bfloat16": 275e12, "float32": 275e12},
    "tpu v5 lite": {"bfloat16": 197e12, "float32": 197e12},
    "tpu v5e": {"bfloat16": 197e12, "float32": 197e12},
}


@dataclasses.dataclass
class Timing:
    """Throughput of one implementation on one row.

    Attributes:
      examples_per_sec: examples per second (summed over population members).
      step_seconds: median seconds per step over the repeats.
      repeat_seconds: seconds per step of each repeat.
      steps: steps per repeat.
      setup_seconds: compile time (JAX, lower + compile) or first-step time (eager).
      flops_per_example: XLA's FLOPs of one step per example, or None.
    """

    examples_per_sec: float
    step_seconds: float
    repeat_seconds: list[float]
    steps: int
    setup_seconds: float
    flops_per_example: float | None = None


@dataclasses.dataclass
class Result:
    """A row's timings: ibjax, and PyTorch or G sequential ibjax steps to compare with."""

    row: Row
    ibjax: Timing
    torch: Timing | None = None
    sequential: Timing | None = None
    mfu: float | None = None


# --------------------------------------------------------------------------
# The harness
# --------------------------------------------------------------------------


@dataclasses.dataclass
class Runner:
    """A prepared implementation of a row, ready to be timed.

    Attributes:
      run: ``run(n)`` takes n training steps and blocks until their results are ready.
      examples_per_step: examples one step trains on (summed over population members).
      setup_seconds: compile time (JAX: lower + compile) or first-step time (eager).
      flops_per_example: XLA's FLOPs of one step per example, or None.
      check: called after timing; raises if the steps went wrong (NaN/Inf).
    """

    run: Callable[[int], None]
    examples_per_step: int
    setup_seconds: float
    flops_per_example: float | None = None
    check: Callable[[], None] = lambda: None


def measure(runners: Sequence[Runner], *, steps: int | None, repeats: int, warmup: int = 2,
            min_repeat_seconds: float = 1.0, max_steps: int = 200) -> list[Timing]:
    """Times ``runners`` side by side: their repeats are interleaved, so load on the machine hits all alike.

    Each runner first takes ``warmup`` untimed steps (at least 1; just 1 if
    that one lasts ``min_repeat_seconds``). ``steps=None`` gives each runner
    enough steps for a repeat of at least ``min_repeat_seconds`` (at most
    ``max_steps``), from the time of its last warm-up step. Then ``repeats``
    rounds each time one repeat of every runner, in alternating order; a
    repeat's time is divided by its steps.

    Returns:
      One :class:`Timing` per runner, with the median seconds per step.
    """
    if repeats < 1:
        raise ValueError(f"`repeats` must be >= 1; got {repeats}.")
    if steps is not None and steps < 1:
        raise ValueError(f"`steps` must be >= 1 or None (automatic); got {steps}.")
    counts = []
    for runner in runners:
        for _ in range(max(warmup, 1)):
            start = time.perf_counter()
            runner.run(1)
            last = time.perf_counter() - start
            if last >= min_repeat_seconds:
                break  # a step this long amortises any first-call cost already
        counts.append(steps or int(min(max_steps, max(1, math.ceil(min_repeat_seconds / last)))))
    seconds: list[list[float]] = [[] for _ in runners]
    for round_ in range(repeats):
        order = range(len(runners)) if round_ % 2 == 0 else reversed(range(len(runners)))
        for k in order:
            start = time.perf_counter()
            runners[k].run(counts[k])
            seconds[k].append((time.perf_counter() - start) / counts[k])
    timings = []
    for runner, per_step, count in zip(runners, seconds, counts):
        runner.check()
        median = statistics.median(per_step)
        timings.append(Timing(runner.examples_per_step / median, median, per_step, count,
                              runner.setup_seconds, runner.flops_per_example))
    return timings


def row_config(row: Row) -> ml_collections.ConfigDict:
    """The row's experiment config with its batch size and dtype."""
    config = configlib.from_file(ROOT / "configs" / row.config_file)
    config.dtype = row.dtype
    config.train.batch_size = row.batch_size
    config.train.progress_bar = False
    return config


def synthetic_data(row: Row, num_images: int = 4096, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Random uint8 images ``[N, H, W, C]`` and int32 labels ``[N]`` in [0, 10)."""
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, (num_images, *row.image_shape), dtype=np.uint8)
    return images, rng.integers(0, 10, num_images).astype(np.int32)


def batch_indices(num_images: int, batch_size: int, count: int = 8, seed: int = 0) -> np.ndarray:
    """``count`` batches ``[count, B]`` of distinct random indices, cycled through by the timed steps."""
    rng = np.random.default_rng(seed + 1)
    return np.stack([rng.permutation(num_images)[:batch_size] for _ in range(count)]).astype(np.int32)


def _flops(lowered, compiled, num_devices: int) -> float | None:
    """FLOPs of one step from XLA's cost analysis ('flops' of a dict, or summed over a list of dicts).

    On one device this is the compiled step's analysis. A step compiled for
    several devices is analysed per device, so there the analysis of the
    lowered, not yet partitioned, step gives the FLOPs of the whole batch.
    """
    analysis = (compiled if num_devices == 1 else lowered).cost_analysis()
    parts = analysis if isinstance(analysis, (list, tuple)) else [analysis]
    flops = [part.get("flops") for part in parts if part]
    return float(sum(flops)) if flops and all(f is not None and f >= 0 for f in flops) else None


def peak_flops(device: jax.Device, dtype: str) -> float | None:
    """Dense peak FLOP/s of ``device`` for ``dtype`` from :data:`PEAK_FLOPS`; None if unknown (CPU)."""
    kind = device.device_kind.lower()
    for key, peaks in PEAK_FLOPS.items():
        if key in kind:
            return peaks[dtype]
    return None


def _experiment(config: ml_collections.ConfigDict, data) -> experiment.Experiment:
    """The row's run on synthetic data (test split: the first 256 images, unused by the step)."""
    images, labels = data
    dataset = datalib.Dataset("benchmark", images, labels, images[:256], labels[:256], 10)
    return experiment.setup(config, dataset=dataset)


def _compiled_step(config: ml_collections.ConfigDict, members: int, data, seed: int, member_map: str = "vmap"):
    """Builds, initialises and compiles the train step of ``members`` ≥ 1 members.

    Returns:
      (compiled step, state, totals, (images, labels, rng, gamma), lower + compile seconds, FLOPs per step).
    """
    run = _experiment(config, data)
    images, labels = jax.device_put(data, run.replicated)
    single = run.member_state(jax.random.key(seed))
    state = jax.device_put(steplib.stack_members([single] * members), run.replicated)
    totals = jax.device_put(steplib.zero_totals(config, members), run.replicated)
    gamma = jax.device_put(jnp.full((members,), config.objective.gamma, jnp.float32), run.replicated)
    rng = jax.device_put(jnp.stack([jax.random.key(seed + 1)] * members), run.replicated)
    example_idx = jax.device_put(jnp.zeros((config.train.batch_size,), jnp.int32), run.batch_sharding)
    start = time.perf_counter()
    lowered = run.train_step(member_map).lower(state, totals, images, labels, example_idx, rng, gamma)
    compiled = lowered.compile()
    seconds = time.perf_counter() - start
    return compiled, state, totals, (images, labels, rng, gamma), seconds, _flops(lowered, compiled, run.mesh.size)


def _device_batches(config, num_images: int, seed: int) -> list[jax.Array]:
    sharding = NamedSharding(steplib.make_mesh(), P("data"))
    return [jax.device_put(b, sharding) for b in batch_indices(num_images, config.train.batch_size, seed=seed)]


def prepare_ibjax(row: Row, *, num_images: int = 4096, seed: int = 0) -> Runner:
    """ibjax's compiled train step on ``row`` (one vmapped step of ``row.members`` members if > 0)."""
    config = row_config(row)
    data = synthetic_data(row, num_images, seed)
    compiled, state, totals, (images, labels, rng, gamma), compile_seconds, flops = _compiled_step(
        config, max(row.members, 1), data, seed)
    batches = _device_batches(config, num_images, seed)
    i = 0

    def run(n: int) -> None:
        nonlocal state, totals, i
        for _ in range(n):
            state, totals = compiled(state, totals, images, labels, batches[i % len(batches)], rng, gamma)
            i += 1
        jax.block_until_ready((state, totals))

    examples = config.train.batch_size * max(row.members, 1)
    return Runner(run, examples, compile_seconds, None if flops is None else flops / examples,
                  lambda: _check_healthy(totals, row))


def prepare_sequential(row: Row, *, num_images: int = 4096, seed: int = 0) -> Runner:
    """G = ``row.members`` single-model steps taken one after another, as G separate runs would."""
    if row.members < 1:
        raise ValueError(f"`row.members` must be >= 1 for a sequential population; got {row.members}.")
    config = row_config(row)
    data = synthetic_data(row, num_images, seed)
    # member_map='sequential' with one member is the unbatched single-model step: no member axis is vmapped.
    compiled, state, totals, (images, labels, rng, gamma), compile_seconds, _ = _compiled_step(
        config, 1, data, seed, member_map="sequential")
    # Each member owns its buffers: the step donates them.
    states = [state] + [jax.tree.map(jnp.copy, state) for _ in range(row.members - 1)]
    all_totals = [totals] + [jax.tree.map(jnp.copy, totals) for _ in range(row.members - 1)]
    batches = _device_batches(config, num_images, seed)
    i = 0

    def run(n: int) -> None:
        nonlocal i
        for _ in range(n):
            for g in range(row.members):
                states[g], all_totals[g] = compiled(states[g], all_totals[g], images, labels,
                                                    batches[i % len(batches)], rng, gamma)
            i += 1
        jax.block_until_ready((states, all_totals))

    def check() -> None:
        for member_totals in all_totals:
            _check_healthy(member_totals, row)

    return Runner(run, config.train.batch_size * row.members, compile_seconds, check=check)


def _check_healthy(totals, row: Row) -> None:
    """A benchmark of steps that skipped their updates would time nothing useful."""
    bad = np.atleast_1d(jax.device_get(totals["bad_step"]))
    if np.any(bad >= 0):
        raise FloatingPointError(f"row {row.name}: a step produced NaN/Inf (bad_step={bad.tolist()}).")


def prepare_torch(row: Row, *, num_images: int = 4096, seed: int = 0, threads: int | None = None) -> Runner:
    """The eager PyTorch reference of ``row`` with ``threads`` intra-op threads (default: usable cores).

    Unless set already, ``OMP_WAIT_POLICY=PASSIVE`` before torch is first
    imported: libgomp's default spin-waiting turns every parallel op into a
    wait for a descheduled thread when other jobs share the cores (15-20×
    slower MLP steps on a loaded 2-core machine); passive waiting costs
    nothing on an idle one.
    """
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    import torch

    from benchmarks import torch_reference

    torch.set_num_threads(threads or usable_cores())
    config = row_config(row)
    images, labels = synthetic_data(row, num_images, seed)
    step = torch_reference.make_train_step(config, images, labels, seed=seed)
    batches = batch_indices(num_images, config.train.batch_size, seed=seed)
    losses = []
    start = time.perf_counter()
    losses.append(step(batches[0]))
    first_step = time.perf_counter() - start
    i = 1

    def run(n: int) -> None:
        nonlocal i
        for _ in range(n):
            losses.append(step(batches[i % len(batches)]))
            i += 1

    def check() -> None:
        if not all(math.isfinite(float(loss)) for loss in losses):
            raise FloatingPointError(f"row {row.name}: the PyTorch reference produced a non-finite loss.")

    return Runner(run, config.train.batch_size, first_step, check=check)


def usable_cores() -> int:
    """Cores this process may run on (its CPU affinity), which XLA's CPU thread pool also sizes itself to."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def run_row(row: Row | str, *, steps: int | None = None, repeats: int = 5, with_torch: bool = False,
            num_images: int = 4096, seed: int = 0, min_repeat_seconds: float = 1.0,
            torch_threads: int | None = None) -> Result:
    """Benchmarks one row: ibjax side by side with PyTorch (``with_torch``) or, for a population, G sequential steps.

    The two implementations are prepared first and their repeats interleaved
    (see :func:`measure`).

    Args:
      row: a :class:`Row` or the name of one in :data:`ROWS`.
      steps: steps per repeat; None picks enough for ``min_repeat_seconds``.
      repeats: timed repeats; the median is reported.
      with_torch: also time the PyTorch reference (single-model rows; needs torch).
      num_images: size of the synthetic data set on the device.
      seed: seeds the data, the batches and the parameters.
      min_repeat_seconds: the shortest repeat ``steps=None`` aims for.
      torch_threads: PyTorch's intra-op threads; default the usable cores.

    Returns:
      A :class:`Result`; ``mfu`` is set on devices listed in :data:`PEAK_FLOPS`.
    """
    if isinstance(row, str):
        if row not in ROWS:
            raise ValueError(f"`row` must be one of {tuple(ROWS)}; got {row!r}.")
        row = ROWS[row]
    runners = [prepare_ibjax(row, num_images=num_images, seed=seed)]
    if row.members:
        runners.append(prepare_sequential(row, num_images=num_images, seed=seed))
    elif with_torch:
        runners.append(prepare_torch(row, num_images=num_images, seed=seed, threads=torch_threads))
    timings = measure(runners, steps=steps, repeats=repeats, min_repeat_seconds=min_repeat_seconds)
    result = Result(row, timings[0])
    if len(timings) > 1:
        if row.members:
            result.sequential = timings[1]
        else:
            result.torch = timings[1]
    peak = peak_flops(jax.devices()[0], row.dtype)
    if peak is not None and result.ibjax.flops_per_example is not None:
        result.mfu = result.ibjax.flops_per_example * result.ibjax.examples_per_sec / (peak * len(jax.devices()))
    return result


# --------------------------------------------------------------------------
# Report
# --------------------------------------------------------------------------


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _versions(with_torch: bool) -> str:
    import flax
    import jaxlib
    import optax

    parts = [f"python {platform.python_version()}", f"jax {jax.__version__}", f"jaxlib {jaxlib.__version__}",
             f"flax {flax.__version__}", f"optax {optax.__version__}", f"numpy {np.__version__}"]
    if with_torch:
        import torch

        parts.append(f"torch {torch.__version__}")
    return ", ".join(parts)


def _fmt(value: float | None, spec: str) -> str:
    return "n/a" if value is None else format(value, spec)


def _gflops(t: Timing) -> tuple[float | None, float | None]:
    """(GFLOP per example, achieved GFLOP/s) of a timing."""
    if t.flops_per_example is None:
        return None, None
    return t.flops_per_example / 1e9, t.flops_per_example * t.examples_per_sec / 1e9


def _ratio(a: Timing, b: Timing) -> str:
    """Throughput ratio a / b of the medians, and of the best repeats in parentheses."""
    return f"{a.examples_per_sec / b.examples_per_sec:.2f} ({min(b.repeat_seconds) / min(a.repeat_seconds):.2f})"


def format_report(results: Sequence[Result], command: str, with_torch: bool, torch_threads: int | None = None,
                  load: Sequence[tuple[float, float, float]] = ()) -> str:
    """The Markdown report: machine, versions, command, and one table per kind of row.

    ``load`` holds ``os.getloadavg()`` readings (e.g. at the start and the end of the run).
    """
    device = jax.devices()[0]
    now = datetime.datetime.now(datetime.timezone.utc)
    lines = [
        "# Training-step throughput",
        "",
        f"Written by `benchmarks/train_step.py` on {now:%Y-%m-%d %H:%M} UTC.",
        "",
        f"Command: `{command}`",
        "",
        f"* CPU: {_cpu_model()}, {usable_cores()} usable cores (os.cpu_count() = {os.cpu_count()})",
        f"* JAX devices: {jax.devices()} (device_kind {device.device_kind!r}, backend {jax.default_backend()})",
        f"* XLA_FLAGS: `{os.environ.get('XLA_FLAGS', '')}`",
        f"* Versions: {_versions(with_torch)}",
    ]
    if with_torch:
        lines.append(f"* PyTorch: eager, torch.set_num_threads({torch_threads or usable_cores()}), "
                     f"OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY', '')}; "
                     f"XLA's CPU thread pool uses the {usable_cores()} usable cores")
    if load:
        readings = "; ".join(" / ".join(f"{v:.2f}" for v in reading) for reading in load)
        lines.append(f"* Load average (1 / 5 / 15 min) at start; end: {readings}")
    lines += [
        "",
        "ex/s: examples per second, the batch size (times G for a population) over the median seconds per step "
        "of the repeats; every repeat ends in `jax.block_until_ready` and comes after the compile and warm-up "
        "steps, and the two implementations of a row alternate repeats. GFLOP/ex: XLA's cost analysis of the "
        "step per example; GFLOP/s = GFLOP/ex × ex/s; MFU = GFLOP/s over the device's dense peak (n/a on CPU). "
        "Ratios: of the medians, and in parentheses of the best repeats.",
        "",
    ]
    single = [r for r in results if not r.row.members]
    if single:
        lines += [
            "## Single model: ibjax vs eager PyTorch",
            "",
            "| row | model | batch | dtype | steps × repeats | ibjax ms/step | ibjax ex/s | compile s | GFLOP/ex "
            "| GFLOP/s | MFU | PyTorch ex/s | ibjax / PyTorch |",
            "|---|---|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
        ]
        for r in single:
            t = r.ibjax
            per_example, rate = _gflops(t)
            lines.append(
                f"| {r.row.name} | {r.row.description} | {r.row.batch_size} | {r.row.dtype} | "
                f"{t.steps} × {len(t.repeat_seconds)} | {t.step_seconds * 1e3:.1f} | {t.examples_per_sec:.1f} | "
                f"{t.setup_seconds:.1f} | {_fmt(per_example, '.3f')} | {_fmt(rate, '.1f')} | {_fmt(r.mfu, '.1%')} | "
                f"{_fmt(None if r.torch is None else r.torch.examples_per_sec, '.1f')} | "
                f"{'n/a' if r.torch is None else _ratio(t, r.torch)} |")
        lines += ["", "CPU target: ibjax / PyTorch ≥ 1 on every row.", ""]
    population = [r for r in results if r.row.members]
    if population:
        lines += [
            "## Population: G members of the MLP row in one vmapped step vs G sequential steps",
            "",
            "| row | G | batch | steps × repeats | vmapped ex/s (all members) | compile s | GFLOP/ex | GFLOP/s | MFU "
            "| sequential ex/s | vmapped / sequential |",
            "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
        ]
        for r in population:
            t, s = r.ibjax, r.sequential
            per_example, rate = _gflops(t)
            lines.append(
                f"| {r.row.name} | {r.row.members} | {r.row.batch_size} | {t.steps} × {len(t.repeat_seconds)} | "
                f"{t.examples_per_sec:.1f} | {t.setup_seconds:.1f} | {_fmt(per_example, '.3f')} | "
                f"{_fmt(rate, '.1f')} | {_fmt(r.mfu, '.1%')} | {s.examples_per_sec:.1f} | {_ratio(t, s)} |")
        lines += ["", "CPU target: vmapped / sequential ≥ 1.5 for G = 16.", ""]
    return "\n".join(lines)


def write_report(path: Path, report: str) -> None:
    """Writes ``report``, keeping whatever follows :data:`NOTES_MARKER` in an existing file."""
    notes = ""
    if path.exists():
        old = path.read_text()
        if NOTES_MARKER in old:
            notes = old.split(NOTES_MARKER, 1)[1]
    path.write_text(report.rstrip("\n") + "\n\n" + NOTES_MARKER + (notes or "\n"))


# --------------------------------------------------------------------------
# Command line
# --------------------------------------------------------------------------

#: Rows a CPU run does by default: the batch-512 ResNet18 rows take minutes a step on a few cores.
CPU_DEFAULT_ROWS = tuple(name for name in ROWS if "b512" not in name)


def _parse(argv: Sequence[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", default=None,
                        help=f"comma-separated rows out of {', '.join(ROWS)}, or 'all'. Default: all on an "
                             f"accelerator; on CPU all but the batch-512 ResNet18 rows.")
    parser.add_argument("--repeats", type=int, default=None,
                        help="timed repeats per row, median reported (default 5; 3 on CPU)")
    parser.add_argument("--steps", type=int, default=None,
                        help="steps per repeat (default: enough for --min_repeat_seconds, at least 1)")
    parser.add_argument("--min_repeat_seconds", type=float, default=1.0,
                        help="shortest repeat the automatic --steps aims for")
    parser.add_argument("--num_images", type=int, default=4096, help="synthetic images on the device")
    parser.add_argument("--torch", dest="torch", action="store_true", default=None,
                        help="time the PyTorch reference too (default: if torch is importable)")
    parser.add_argument("--no_torch", dest="torch", action="store_false")
    parser.add_argument("--torch_threads", type=int, default=None,
                        help="torch.set_num_threads for the reference (default: the usable cores, as XLA)")
    parser.add_argument("--output", type=Path, default=DEFAULT_OUTPUT, help="Markdown file for the results")
    args = parser.parse_args(argv)
    on_cpu = jax.default_backend() == "cpu"
    if args.rows in (None, ""):
        args.rows = list(CPU_DEFAULT_ROWS if on_cpu else ROWS)
    elif args.rows == "all":
        args.rows = list(ROWS)
    else:
        args.rows = [name.strip() for name in args.rows.split(",") if name.strip()]
    unknown = [name for name in args.rows if name not in ROWS]
    if unknown:
        parser.error(f"--rows: unknown {unknown}; choose from {', '.join(ROWS)} or 'all'.")
    if args.repeats is None:
        args.repeats = 3 if on_cpu else 5
    for name in ("repeats", "steps", "torch_threads"):
        if getattr(args, name) is not None and getattr(args, name) < 1:
            parser.error(f"--{name} must be >= 1; got {getattr(args, name)}.")
    if args.torch is None:
        # Found, not imported: the import must come after prepare_torch sets OMP_WAIT_POLICY.
        args.torch = importlib.util.find_spec("torch") is not None
    return args


def main(argv: Sequence[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else list(argv)
    args = _parse(argv)
    xla_flags = os.environ.get("XLA_FLAGS")
    command = ("" if xla_flags is None else f"XLA_FLAGS={shlex.quote(xla_flags)} ") + shlex.join(
        [Path(sys.executable).name, "benchmarks/train_step.py", *argv])
    start_load = os.getloadavg()
    results = []
    for name in args.rows:
        print(f"{name} ...", flush=True)
        result = run_row(name, steps=args.steps, repeats=args.repeats, with_torch=args.torch,
                         num_images=args.num_images, min_repeat_seconds=args.min_repeat_seconds,
                         torch_threads=args.torch_threads)
        t = result.ibjax
        per_example, rate = _gflops(t)
        print(f"  ibjax      {t.examples_per_sec:9.1f} ex/s  {t.step_seconds * 1e3:9.1f} ms/step  "
              f"compile {t.setup_seconds:.1f} s  {_fmt(per_example, '.3f')} GFLOP/ex  {_fmt(rate, '.1f')} GFLOP/s  "
              f"MFU {_fmt(result.mfu, '.1%')}", flush=True)
        for label, other in (("PyTorch", result.torch), ("sequential", result.sequential)):
            if other is not None:
                print(f"  {label:10s} {other.examples_per_sec:9.1f} ex/s  {other.step_seconds * 1e3:9.1f} ms/step  "
                      f"ratio {_ratio(t, other)}", flush=True)
        results.append(result)
        # Rewritten after every row, so an interrupted run keeps what it measured.
        report = format_report(results, command, args.torch, args.torch_threads, (start_load, os.getloadavg()))
        write_report(args.output, report)
    print(f"\nWrote {args.output}")


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))
    main()
