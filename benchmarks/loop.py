r"""Chunked training (K steps per compiled call) against the per-step loop, on the loop's real path.

  python benchmarks/loop.py                          # every row -> printed Markdown table
  python benchmarks/loop.py --rows digits --steps_per_call 1,11 --repeats 3

A repeat trains whole epochs the way the training loop does: the epoch's
batch indices drawn on the device (``Experiment.epoch_batches``), then

* per step: the loop before K-step calls -- for each step an eager slice
  ``batches[i]`` of the epoch's indices and one call of the compiled step
  (``Experiment.train_step``);
* chunked, K: ⌈steps / K⌉ calls of the compiled K-step function
  (``Experiment.train_steps``), each taking its batches inside the call.

Rows (each ratio is of two timings interleaved in the same process, see
``benchmarks.harness.measure``):

* ``digits``: the embedded default (configs/digits_condvar.py, 11 steps an epoch);
* ``mlp_categorical``: the section 7.1 MLP with its categorical decoder
  (configs/permuted_mnist_categorical.py) on 4,096 synthetic images (32 steps);
* ``mlp_categorical_seeds8``: the same as an 8-member seed population;
* ``epoch_overhead``: a whole ``ibjax.train.train_epoch`` of the section 7.1
  setup on the 60,000 real MNIST images (``--mnist_full``; skipped when absent)
  against the same number of steps in bare compiled calls, pre-drawn batches:
  the loop's own cost per epoch (progress bar, signal checks, the
  permutation, reading the totals).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shlex
import sys
from collections.abc import Sequence
from pathlib import Path

import jax
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks import harness  # noqa: E402
from benchmarks.harness import Runner, Timing, measure, ratio_cell  # noqa: E402
from ibjax import config as configlib  # noqa: E402
from ibjax import data as datalib  # noqa: E402
from ibjax import experiment  # noqa: E402

ROWS = ("digits", "mlp_categorical", "mlp_categorical_seeds8", "epoch_overhead")
MNIST_FULL = ROOT.parent / "shared" / "data" / "mnist_full"


def row_run(name: str, mnist_full: Path, num_images: int) -> experiment.Experiment:
    """The row's run, built through ``experiment.setup`` as training builds it."""
    if name == "digits":
        config = configlib.from_file(ROOT / "configs" / "digits_condvar.py")
        return experiment.setup(config)
    config = configlib.from_file(ROOT / "configs" / "permuted_mnist_categorical.py")
    if name == "epoch_overhead":
        config.data.source, config.data.path = "idx", str(mnist_full)
        return experiment.setup(config)
    if name == "mlp_categorical_seeds8":
        config.population.num_seeds = 8
    images, labels = harness.synthetic_data((28, 28, 1), num_images)
    dataset = datalib.Dataset("permuted_mnist", images, labels, images[:512], labels[:512], 10)
    return experiment.setup(config, dataset=dataset)


class _Epochs:
    """A run's training state advanced epoch by epoch (the state is donated call by call)."""

    def __init__(self, run: experiment.Experiment):
        self.run = run
        self.state = run.init_state()
        self.totals = run.zero_totals()
        self.images, self.labels = run.device_data()[:2]
        self.key, self.gamma = run.keys()["train"], run.gammas()
        self.epoch = 0

    def first(self, position: int = 0) -> jax.Array:
        return experiment.put(np.int32(position), self.run.replicated)

    def done(self) -> None:
        harness.check_healthy(self.totals, "loop benchmark")


def per_step_runner(run: experiment.Experiment) -> Runner:
    """Epochs as the loop ran them before K-step calls: an eager slice and a step call per step."""
    e = _Epochs(run)
    batches = run.epoch_batches(1)
    step = run.train_step().lower(e.state, e.totals, e.images, e.labels, batches[0], e.key, e.gamma).compile()

    def go(n: int) -> None:
        for _ in range(n):
            e.epoch += 1
            batches = run.epoch_batches(e.epoch)
            for i in range(run.steps_per_epoch):
                e.state, e.totals = step(e.state, e.totals, e.images, e.labels, batches[i], e.key, e.gamma)
        jax.block_until_ready((e.state, e.totals))

    return Runner(go, run.steps_per_epoch * run.config.train.batch_size * run.num_members, 0.0, check=e.done)


def chunked_runner(run: experiment.Experiment, per_call: int) -> Runner:
    """Epochs in ⌈steps / K⌉ calls of the compiled K-step function (``per_call`` = K, balanced as the loop does)."""
    e = _Epochs(run)
    steps_fn = run.train_steps(per_call).lower(e.state, e.totals, e.images, e.labels, run.epoch_batches(1),
                                               e.first(), e.key, e.gamma).compile()
    calls = -(-run.steps_per_epoch // per_call)

    def go(n: int) -> None:
        for _ in range(n):
            e.epoch += 1
            batches, first = run.epoch_batches(e.epoch), e.first()
            for _ in range(calls):
                e.state, e.totals, first = steps_fn(e.state, e.totals, e.images, e.labels, batches, first, e.key,
                                                    e.gamma)
        jax.block_until_ready((e.state, e.totals))

    return Runner(go, run.steps_per_epoch * run.config.train.batch_size * run.num_members, 0.0, check=e.done)


def epoch_overhead_runners(run: experiment.Experiment, stack: contextlib.ExitStack) -> tuple[Runner, Runner]:
    """``train.train_epoch`` on a claimed temporary workdir (``harness.LoopEpochs``) against its bare compiled calls."""
    run.config.train.progress_bar = True  # the loop as a user runs it (tqdm to stderr, refreshed per call)
    epochs = harness.LoopEpochs(run, stack)
    steps_fn = epochs.train_steps
    calls = -(-run.steps_per_epoch // run.steps_per_call)
    bare = _Epochs(run)
    batches = run.epoch_batches(1)

    def bare_calls(n: int) -> None:
        for _ in range(n):
            first = bare.first()
            for _ in range(calls):
                bare.state, bare.totals, first = steps_fn(bare.state, bare.totals, bare.images, bare.labels, batches,
                                                          first, bare.key, bare.gamma, None)
        jax.block_until_ready((bare.state, bare.totals))

    return epochs.runner(), Runner(bare_calls, run.steps_per_epoch * run.config.train.batch_size, 0.0,
                                   check=bare.done)


def main(argv: Sequence[str] | None = None) -> str:
    argv = sys.argv[1:] if argv is None else list(argv)
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", default=",".join(ROWS), help=f"comma-separated rows out of {', '.join(ROWS)}")
    parser.add_argument("--steps_per_call", default="0,10",
                        help="comma-separated K of the chunked runners (0: the whole epoch), each against per step")
    parser.add_argument("--repeats", type=int, default=3, help="timed repeats per runner, median reported")
    parser.add_argument("--num_images", type=int, default=4096, help="synthetic images of the mlp rows")
    parser.add_argument("--mnist_full", type=Path, default=MNIST_FULL, help="the 60,000-image MNIST IDX folder")
    args = parser.parse_args(argv)
    rows = [r.strip() for r in args.rows.split(",") if r.strip()]
    if unknown := [r for r in rows if r not in ROWS]:
        parser.error(f"--rows: unknown {unknown}; choose from {', '.join(ROWS)}.")
    try:
        requested = [int(k) for k in args.steps_per_call.split(",")]
    except ValueError:
        parser.error(f"--steps_per_call must be comma-separated integers >= 0; got {args.steps_per_call!r}.")
    if any(k < 0 for k in requested) or args.repeats < 1:
        parser.error("--steps_per_call must be >= 0 and --repeats >= 1.")

    command = shlex.join([Path(sys.executable).name, "benchmarks/loop.py", *argv])
    lines = [f"Command: `{command}` (JAX {jax.__version__}, {jax.devices()[0].device_kind}, "
             f"{len(jax.devices())} device(s), load average at start {os.getloadavg()[0]:.2f})", "",
             "| row | steps/epoch | members | runner | epochs × repeats | ms/epoch (median) | ratio against the reference |",
             "|---|---:|---:|---|---:|---:|---:|"]
    for name in rows:
        if name == "epoch_overhead" and not (args.mnist_full / "train-images-idx3-ubyte.gz").exists():
            print(f"{name}: skipped, no {args.mnist_full}", flush=True)
            continue
        print(f"{name} ...", flush=True)
        run = row_run(name, args.mnist_full, args.num_images)
        with contextlib.ExitStack() as stack:
            if name == "epoch_overhead":
                runners = list(epoch_overhead_runners(run, stack))
                labels = [f"train_epoch, K = {run.steps_per_call} (default)", "bare compiled calls (reference)"]
            else:
                ks = list(dict.fromkeys(experiment.balanced_steps_per_call(run.steps_per_epoch, k) for k in requested))
                runners = [per_step_runner(run)] + [chunked_runner(run, k) for k in ks]
                labels = ["per step (reference)"] + [f"chunked, K = {k}" for k in ks]
            timings = measure(runners, steps=None, repeats=args.repeats, warmup=1)
        reference: Timing = timings[-1] if name == "epoch_overhead" else timings[0]
        for label, timing in zip(labels, timings):
            ratio = ("–" if timing is reference else
                     f"{timing.step_seconds / reference.step_seconds:.3f} time" if name == "epoch_overhead"
                     else f"{ratio_cell(timing, reference)} speed")
            line = (f"| {name} | {run.steps_per_epoch} | {run.num_members} | {label} | "
                    f"{timing.steps} × {len(timing.repeat_seconds)} | {timing.step_seconds * 1e3:.1f} | {ratio} |")
            print(line, flush=True)
            lines.append(line)
    report = "\n".join(lines)
    print("\n" + report)
    return report


if __name__ == "__main__":
    main()
