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
population — is timed by the same harness (``benchmarks/harness.py``) in the
same process, its repeats alternating with ibjax's so that changes in the
machine's load hit both. A single-model step is the step with no member axis
(``member_map='sequential'`` with one member), so ``population_g1`` measures
what the member axis every run now carries costs at M = 1.
PyTorch gets ``torch.set_num_threads`` = the cores this process may run on,
which is what XLA's CPU thread pool uses.

FLOPs per example come from XLA's cost analysis of the step; on an
accelerator listed in ``harness.PEAK_FLOPS`` they give the model FLOPs
utilisation (MFU).
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import importlib.util
import os
import platform
import sys
from collections.abc import Sequence
from pathlib import Path

import jax

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from benchmarks import harness  # noqa: E402
from benchmarks.harness import Row, Timing, fmt, ratio_cell, usable_cores  # noqa: E402

DEFAULT_OUTPUT = ROOT / "benchmarks" / "RESULTS.md"

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


@dataclasses.dataclass
class Result:
    """A row's timings: ibjax, and PyTorch or G sequential ibjax steps to compare with."""

    row: Row
    ibjax: Timing
    torch: Timing | None = None
    sequential: Timing | None = None
    mfu: float | None = None


def run_row(row: Row | str, *, steps: int | None = None, repeats: int = 5, with_torch: bool = False,
            num_images: int = 4096, seed: int = 0, min_repeat_seconds: float = 1.0,
            torch_threads: int | None = None) -> Result:
    """Benchmarks one row: ibjax side by side with PyTorch (``with_torch``) or, for a population, G sequential steps.

    The two implementations are prepared first and their repeats interleaved
    (see ``harness.measure``).

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
      A :class:`Result`; ``mfu`` is set on devices listed in ``harness.PEAK_FLOPS``.
    """
    if isinstance(row, str):
        if row not in ROWS:
            raise ValueError(f"`row` must be one of {tuple(ROWS)}; got {row!r}.")
        row = ROWS[row]
    runners = [harness.prepare_ibjax(row, num_images=num_images, seed=seed)]
    if row.members:
        runners.append(harness.prepare_sequential(row, num_images=num_images, seed=seed))
    elif with_torch:
        runners.append(harness.prepare_torch(row, num_images=num_images, seed=seed, threads=torch_threads))
    timings = harness.measure(runners, steps=steps, repeats=repeats, min_repeat_seconds=min_repeat_seconds)
    result = Result(row, timings[0], mfu=harness.mfu(timings[0], row.dtype))
    if len(timings) > 1:
        if row.members:
            result.sequential = timings[1]
        else:
            result.torch = timings[1]
    return result


def _gflops(t: Timing) -> tuple[float | None, float | None]:
    """(GFLOP per example, achieved GFLOP/s) of a timing."""
    rate = harness.flop_rate(t)
    return (None, None) if rate is None else (t.flops_per_example / 1e9, rate / 1e9)


# --------------------------------------------------------------------------
# Report
# --------------------------------------------------------------------------


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
        f"* CPU: {harness.cpu_model()}, {usable_cores()} usable cores (os.cpu_count() = {os.cpu_count()})",
        f"* JAX devices: {jax.devices()} (device_kind {device.device_kind!r}, backend {jax.default_backend()})",
        f"* XLA_FLAGS: `{os.environ.get('XLA_FLAGS', '')}`",
        f"* Versions: python {platform.python_version()}, "
        + harness.versions(("jax", "jaxlib", "flax", "optax", "numpy") + (("torch",) if with_torch else ())),
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
                f"{t.setup_seconds:.1f} | {fmt(per_example, '.3f')} | {fmt(rate, '.1f')} | {fmt(r.mfu, '.1%')} | "
                f"{fmt(None if r.torch is None else r.torch.examples_per_sec, '.1f')} | "
                f"{'n/a' if r.torch is None else ratio_cell(t, r.torch)} |")
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
                f"{t.examples_per_sec:.1f} | {t.setup_seconds:.1f} | {fmt(per_example, '.3f')} | "
                f"{fmt(rate, '.1f')} | {fmt(r.mfu, '.1%')} | {s.examples_per_sec:.1f} | {ratio_cell(t, s)} |")
        lines += ["", "CPU target: vmapped / sequential ≥ 1.5 for G = 16.", ""]
    return "\n".join(lines)


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
    parser.add_argument("--num_images", type=int, default=4096, help="synthetic images on the device")
    parser.add_argument("--steps", type=int, default=None,
                        help="steps per repeat (default: enough for --min_repeat_seconds, at least 1)")
    parser.add_argument("--min_repeat_seconds", type=float, default=1.0,
                        help="shortest repeat the automatic --steps aims for")
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
        # Found, not imported: the import must come after harness.prepare_torch sets OMP_WAIT_POLICY.
        args.torch = importlib.util.find_spec("torch") is not None
    return args


def main(argv: Sequence[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else list(argv)
    args = _parse(argv)
    command = harness.command_line(Path(sys.executable).name, "benchmarks/train_step.py", argv)
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
              f"compile {t.setup_seconds:.1f} s  {fmt(per_example, '.3f')} GFLOP/ex  {fmt(rate, '.1f')} GFLOP/s  "
              f"MFU {fmt(result.mfu, '.1%')}", flush=True)
        for label, other in (("PyTorch", result.torch), ("sequential", result.sequential)):
            if other is not None:
                print(f"  {label:10s} {other.examples_per_sec:9.1f} ex/s  {other.step_seconds * 1e3:9.1f} ms/step  "
                      f"ratio {ratio_cell(t, other)}", flush=True)
        results.append(result)
        # Rewritten after every row, so an interrupted run keeps what it measured.
        report = format_report(results, command, args.torch, args.torch_threads, (start_load, os.getloadavg()))
        harness.write_report(args.output, report)
    print(f"\nWrote {args.output}")


if __name__ == "__main__":
    main()
