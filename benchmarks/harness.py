r"""The benchmark harness: what every script in ``benchmarks/`` times with, once.

* :func:`measure`: the timing loop. Runners (:class:`Runner`) are prepared
  first and their repeats alternate, every repeat ending in
  ``jax.block_until_ready`` (or its PyTorch equivalent), so that a change in
  the machine's load hits all alike; a :class:`Timing` holds the median.
* The runners of a training step (:class:`Row`): :func:`prepare_ibjax` (the
  jitted step of a run built with ``ibjax.experiment.setup``),
  :func:`prepare_sequential` (G single-model steps one after another) and
  :func:`prepare_torch` (the same model, loss and Adam step in PyTorch,
  ``benchmarks/torch_reference.py``, eager or ``torch.compile``-d, on any
  device); :class:`LoopEpochs`, whole epochs of ``ibjax.train.train_epoch``.
* The numbers of a report: :func:`fmt`, the ratio cells (:func:`ratio_cell`:
  of the medians, and of the best repeats in parentheses), achieved FLOP/s and
  MFU against :data:`PEAK_FLOPS`, the machine's header lines, and
  :func:`write_report`, which keeps the notes below :data:`NOTES_MARKER`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import importlib.metadata
import math
import os
import platform
import shlex
import statistics
import tempfile
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
from ibjax import experiment, train
from ibjax import step as steplib
from ibjax import workdir as workdirlib

ROOT = Path(__file__).resolve().parents[1]
#: Everything after this line of an existing output file is kept on regeneration.
NOTES_MARKER = "<!-- Notes below this line are kept when the benchmark rewrites this file. -->"

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


@dataclasses.dataclass(frozen=True)
class Row:
    """One benchmarked training step.

    Attributes:
      name: the row's name.
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


# --------------------------------------------------------------------------
# The timing loop
# --------------------------------------------------------------------------


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


# --------------------------------------------------------------------------
# ibjax's training step
# --------------------------------------------------------------------------


def row_config(row: Row) -> ml_collections.ConfigDict:
    """The row's experiment config with its batch size and dtype."""
    config = configlib.from_file(ROOT / "configs" / row.config_file)
    config.dtype = row.dtype
    config.train.batch_size = row.batch_size
    config.train.progress_bar = False
    return config


def synthetic_data(image_shape: Sequence[int], num_images: int = 4096, seed: int = 0
                   ) -> tuple[np.ndarray, np.ndarray]:
    """Random uint8 images ``[N, H, W, C]`` and int32 labels ``[N]`` in [0, 10)."""
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, (num_images, *image_shape), dtype=np.uint8)
    return images, rng.integers(0, 10, num_images).astype(np.int32)


def batch_indices(num_images: int, batch_size: int, count: int = 8, seed: int = 0) -> np.ndarray:
    """``count`` batches ``[count, B]`` of distinct random indices, cycled through by the timed steps."""
    rng = np.random.default_rng(seed + 1)
    return np.stack([rng.permutation(num_images)[:batch_size] for _ in range(count)]).astype(np.int32)


def xla_flops(lowered, compiled, num_devices: int) -> float | None:
    """FLOPs of one step from XLA's cost analysis ('flops' of a dict, or summed over a list of dicts).

    On one device this is the compiled step's analysis. A step compiled for
    several devices is analysed per device, so there the analysis of the
    lowered, not yet partitioned, step gives the FLOPs of the whole batch.
    """
    analysis = (compiled if num_devices == 1 else lowered).cost_analysis()
    parts = analysis if isinstance(analysis, (list, tuple)) else [analysis]
    flops = [part.get("flops") for part in parts if part]
    return float(sum(flops)) if flops and all(f is not None and f >= 0 for f in flops) else None


def _compiled_step(row: Row, members: int, num_images: int, seed: int, member_map: str = "vmap"):
    """Builds, initialises and compiles the train step of ``members`` ≥ 1 members on the row's synthetic data.

    The run's test split is the first 256 images, unused by the step.

    Returns:
      (compiled step, state, totals, (images, labels, rng, gamma), lower + compile seconds, FLOPs per step).
    """
    config = row_config(row)
    data = synthetic_data(row.image_shape, num_images, seed)
    images, labels = data
    run = experiment.setup(config, dataset=datalib.Dataset("benchmark", images, labels, images[:256],
                                                           labels[:256], 10))
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
    return compiled, state, totals, (images, labels, rng, gamma), seconds, xla_flops(lowered, compiled, run.mesh.size)


def _device_batches(row: Row, num_images: int, seed: int) -> list[jax.Array]:
    sharding = NamedSharding(steplib.make_mesh(), P("data"))
    return [jax.device_put(b, sharding) for b in batch_indices(num_images, row.batch_size, seed=seed)]


def check_healthy(totals, name: str) -> None:
    """Raises if a step of ``name`` skipped its update: a benchmark of such steps would time nothing useful."""
    bad = np.atleast_1d(jax.device_get(totals["bad_step"]))
    if np.any(bad >= 0):
        raise FloatingPointError(f"{name}: a step produced NaN/Inf (bad_step={bad.tolist()}).")


def prepare_ibjax(row: Row, *, num_images: int = 4096, seed: int = 0) -> Runner:
    """ibjax's compiled train step on ``row`` (one vmapped step of ``row.members`` members if > 0)."""
    members = max(row.members, 1)
    compiled, state, totals, (images, labels, rng, gamma), compile_seconds, flops = _compiled_step(
        row, members, num_images, seed)
    batches = _device_batches(row, num_images, seed)
    i = 0

    def run(n: int) -> None:
        nonlocal state, totals, i
        for _ in range(n):
            state, totals = compiled(state, totals, images, labels, batches[i % len(batches)], rng, gamma)
            i += 1
        jax.block_until_ready((state, totals))

    examples = row.batch_size * members
    return Runner(run, examples, compile_seconds, None if flops is None else flops / examples,
                  lambda: check_healthy(totals, f"row {row.name}"))


def prepare_sequential(row: Row, *, num_images: int = 4096, seed: int = 0) -> Runner:
    """G = ``row.members`` single-model steps taken one after another, as G separate runs would."""
    if row.members < 1:
        raise ValueError(f"`row.members` must be >= 1 for a sequential population; got {row.members}.")
    # member_map='sequential' with one member is the unbatched single-model step: no member axis is vmapped.
    compiled, state, totals, (images, labels, rng, gamma), compile_seconds, _ = _compiled_step(
        row, 1, num_images, seed, member_map="sequential")
    # Each member owns its buffers: the step donates them.
    states = [state] + [jax.tree.map(jnp.copy, state) for _ in range(row.members - 1)]
    all_totals = [totals] + [jax.tree.map(jnp.copy, totals) for _ in range(row.members - 1)]
    batches = _device_batches(row, num_images, seed)
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
            check_healthy(member_totals, f"row {row.name}")

    return Runner(run, row.batch_size * row.members, compile_seconds, check=check)


# --------------------------------------------------------------------------
# The training loop's epoch
# --------------------------------------------------------------------------


class LoopEpochs:
    """Whole epochs of ``ibjax.train.train_epoch``, the loop's own epoch function, on a run opened as training opens it.

    The workdir is a claimed temporary directory (closed with ``stack``);
    ``train.open_run`` opens its checkpoint managers and TensorBoard writers
    and puts the data on the device; the K-step function is compiled as
    ``train_and_evaluate`` compiles it. With ``checkpoint``, every epoch is
    followed by its Orbax checkpoint, waited for, as with
    ``checkpoint.every_epochs = 1``. Evaluation and the metrics records, which
    the loop adds after an epoch, are left out.

    Attributes:
      experiment: the run.
      workdir: its temporary workdir.
      loop: what ``train.open_run`` returned.
      train_steps: the compiled K-step function.
      compile_seconds: its lower + compile time.
      state: the training state after the last epoch.
      epoch: the last epoch trained.
      epoch_seconds: each ``train_epoch`` call's seconds.
    """

    def __init__(self, run: experiment.Experiment, stack: contextlib.ExitStack, *, checkpoint: bool = False):
        self.experiment, self.checkpoint = run, checkpoint
        self.workdir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="ibjax_epochs_")))
        workdirlib.claim_workdir(self.workdir, run.config)
        self.loop = train.open_run(run, self.workdir, [self.workdir], stack.enter_context(workdirlib.StopRequests()),
                                   stack)
        self.state, self.epoch, self.epoch_seconds = run.init_state(), 0, []
        start = time.perf_counter()
        self.train_steps = run.train_steps().lower(
            self.state, run.zero_totals(), self.loop.x_train, self.loop.y_train, run.epoch_batches(1),
            experiment.put(np.int32(0), run.replicated), self.loop.train_key, self.loop.gamma, None).compile()
        self.compile_seconds = time.perf_counter() - start

    def train(self, n: int) -> None:
        """Trains ``n`` more epochs (each with its checkpoint if ``checkpoint``) and blocks on the state."""
        run = self.experiment
        for _ in range(n):
            self.epoch += 1
            start = time.perf_counter()
            self.state, _, _ = train.train_epoch(self.loop, self.train_steps, self.state, self.epoch, None, 0)
            self.epoch_seconds.append(time.perf_counter() - start)
            if self.checkpoint:
                for i, (manager, member) in enumerate(zip(self.loop.managers, run.members)):
                    workdirlib.save_checkpoint(manager, self.epoch, steplib.member(self.state, i),
                                               {"epoch": self.epoch, "config": configlib.to_dict(member)})
                    manager.wait_until_finished()
        jax.block_until_ready(self.state)

    def runner(self) -> Runner:
        """A :class:`Runner` whose step is one epoch (``train_epoch`` raises on NaN/Inf itself)."""
        run = self.experiment
        return Runner(self.train, run.steps_per_epoch * run.config.train.batch_size * run.num_members,
                      self.compile_seconds)


# --------------------------------------------------------------------------
# PyTorch
# --------------------------------------------------------------------------


def usable_cores() -> int:
    """Cores this process may run on (its CPU affinity), which XLA's CPU thread pool also sizes itself to."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def prepare_torch(row: Row, *, device="cpu", compiled: bool = False, threads: int | None = None,
                  num_images: int = 4096, seed: int = 0) -> Runner:
    """The PyTorch reference of ``row`` (``torch_reference.make_train_step``) on ``device``, its first step taken.

    ``compiled`` times the ``torch.compile``-d step (its first step is the
    compile). On a CPU, PyTorch gets ``threads`` intra-op threads (default:
    the usable cores, as XLA's thread pool). Data, indices and the random
    generator stay on ``device``; a CUDA step ends in
    ``torch.cuda.synchronize``. The runner's ``check`` raises
    ``FloatingPointError`` if a loss was not finite.

    Unless set already, ``OMP_WAIT_POLICY=PASSIVE`` before torch is first
    imported: libgomp's default spin-waiting turns every parallel op into a
    wait for a descheduled thread when other jobs share the cores (15-20×
    slower MLP steps on a loaded 2-core machine); passive waiting costs
    nothing on an idle one.
    """
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    import torch

    from benchmarks import torch_reference

    device = torch.device(device)
    if device.type == "cpu":
        torch.set_num_threads(threads or usable_cores())
    config = row_config(row)
    images, labels = synthetic_data(row.image_shape, num_images, seed)
    step = torch_reference.make_train_step(config, images, labels, seed=seed, device=device, compiled=compiled)
    batches = [torch.from_numpy(b.astype(np.int64)).to(device)
               for b in batch_indices(num_images, row.batch_size, seed=seed)]

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    losses = []
    start = time.perf_counter()
    losses.append(step(batches[0]))
    sync()
    first_step = time.perf_counter() - start
    i = 1

    def run(n: int) -> None:
        nonlocal i
        for _ in range(n):
            losses.append(step(batches[i % len(batches)]))
            i += 1
        sync()

    def check() -> None:
        if not bool(torch.isfinite(torch.stack(losses)).all()):
            raise FloatingPointError(f"row {row.name}: the PyTorch reference produced a non-finite loss.")

    return Runner(run, row.batch_size, first_step, check=check)


# --------------------------------------------------------------------------
# Report
# --------------------------------------------------------------------------


def fmt(value: float | None, spec: str, none: str = "n/a") -> str:
    """``value`` formatted with ``spec``, or ``none`` where there is no value."""
    return none if value is None else format(value, spec)


def ratio(a: Timing, b: Timing) -> float:
    """Throughput ratio a / b of the medians."""
    return a.examples_per_sec / b.examples_per_sec


def ratio_cell(a: Timing, b: Timing) -> str:
    """The throughput ratio a / b of the medians, and of the best repeats in parentheses."""
    return f"{ratio(a, b):.2f} ({min(b.repeat_seconds) / min(a.repeat_seconds):.2f})"


def peak_flops(device: jax.Device, dtype: str) -> float | None:
    """Dense peak FLOP/s of ``device`` for ``dtype`` from :data:`PEAK_FLOPS`; None if unknown (CPU)."""
    kind = device.device_kind.lower()
    for key, peaks in PEAK_FLOPS.items():
        if key in kind:
            return peaks[dtype]
    return None


def flop_rate(timing: Timing) -> float | None:
    """Achieved FLOP/s: XLA's FLOPs per example × examples per second; None without a cost analysis."""
    return None if timing.flops_per_example is None else timing.flops_per_example * timing.examples_per_sec


def mfu(timing: Timing, dtype: str) -> float | None:
    """Model FLOPs utilisation of all devices against their dense peak; None where no peak is listed (CPU)."""
    rate, peak = flop_rate(timing), peak_flops(jax.devices()[0], dtype)
    return None if rate is None or peak is None else rate / (peak * jax.device_count())


def cpu_model() -> str:
    """The CPU's model name (from /proc/cpuinfo where there is one)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def versions(packages: Sequence[str]) -> str:
    """'name version' of each installed distribution, comma-separated ('not installed' where absent)."""
    def version(package: str) -> str:
        try:
            return importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            return "not installed"

    return ", ".join(f"{package} {version(package)}" for package in packages)


def command_line(python: str, script: str, argv: Sequence[str]) -> str:
    """The command as it was run, ``XLA_FLAGS=…`` in front where set (an empty one gives one CPU device)."""
    xla_flags = os.environ.get("XLA_FLAGS")
    return ("" if xla_flags is None else f"XLA_FLAGS={shlex.quote(xla_flags)} ") + shlex.join([python, script, *argv])


def write_report(path: Path, report: str) -> None:
    """Writes ``report``, keeping whatever follows :data:`NOTES_MARKER` in an existing file."""
    notes = ""
    if path.exists():
        old = path.read_text()
        if NOTES_MARKER in old:
            notes = old.split(NOTES_MARKER, 1)[1]
    path.write_text(report.rstrip("\n") + "\n\n" + NOTES_MARKER + (notes or "\n"))
