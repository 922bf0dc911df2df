r"""The cost of the live information plane (``train.analyze_every``) against a training epoch.

  python benchmarks/live_plane.py                       # both rows -> printed Markdown table
  python benchmarks/live_plane.py --rows digits --repeats 5

For each row, three runners timed side by side (``benchmarks.harness.measure``,
repeats interleaved):

* **epoch**: one ``ibjax.train.train_epoch`` of the row's config, as the loop
  runs it (K steps a compiled call, progress bar off; ``harness.LoopEpochs``). Evaluation and the
  checkpoint, which a real epoch adds, are left out, so the ratio below is an
  upper bound of the real cost;
* **quantities**: what an analysed epoch adds: ``InformationPlaneMonitor.records``
  on the first ``train.analyze_examples`` training examples (the estimators of
  ``scripts/analyze.py``) and its scalars through tensorboardX;
* **figure**: the information-plane figure drawn from the run's records so
  far and written with ``add_figure``, which the loop draws at most once
  every 30 s (and at the first analysed and the last epoch).

The cost per epoch at ``analyze_every = N`` is
(quantities + figure × min(1, N × epoch / 30 s)) / (N × epoch). Rows:

* ``digits``: the embedded default (``configs/default.py``: 1,438 images, the
  MLP with a continuous latent and zero-entropy noise, mixture bounds);
* ``mnist_offline``: section 7.1's offline config
  (``configs/permuted_mnist_categorical_offline.py``: 8,000 real MNIST images,
  the categorical latent, exact quantities; skipped without ``../shared/data/mnist``).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import shlex
import sys
from collections.abc import Sequence
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.harness import LoopEpochs, Runner, measure  # noqa: E402
from ibjax import config as configlib  # noqa: E402
from ibjax import experiment, summaries  # noqa: E402

ROWS = {"digits": "default.py", "mnist_offline": "permuted_mnist_categorical_offline.py"}


def row_config(name: str):
    config = configlib.from_file(ROOT / "configs" / ROWS[name])
    config.train.progress_bar = False
    return config


def runners(run: experiment.Experiment, stack: contextlib.ExitStack) -> tuple[Runner, Runner, Runner]:
    """``train.train_epoch`` on a claimed temporary workdir, the quantities of an analysed epoch, and its figure."""
    epochs = LoopEpochs(run, stack)
    monitor = summaries.InformationPlaneMonitor(run)
    writer = stack.enter_context(contextlib.closing(summaries.open_writer(epochs.workdir / "events")))

    def analyses(n: int) -> None:
        for _ in range(n):
            epochs.epoch += 1
            record = {"epoch": epochs.epoch, "test_accuracy": 0.5}
            record["information_plane"] = monitor.records(epochs.state, epochs.epoch, [record])[0]
            with open(epochs.workdir / "metrics.jsonl", "a") as f:
                f.write(json.dumps(record) + "\n")
            summaries.write_record(writer, record)

    def figures(n: int) -> None:
        for _ in range(n):
            summaries.write_information_plane(writer, [epochs.workdir], epochs.epoch)

    return epochs.runner(), Runner(analyses, 0, 0.0), Runner(figures, 0, 0.0)


def cost(epoch_s: float, analysis_s: float, figure_s: float, every: int) -> float:
    """The added time per epoch at ``analyze_every = every``, figures at most one per 30 s (and the first)."""
    period = every * epoch_s
    figures_per_analysis = min(1.0, period / summaries.InformationPlaneMonitor.figure_interval_s)
    return (analysis_s + figure_s * figures_per_analysis) / period


def main(argv: Sequence[str] | None = None) -> str:
    argv = sys.argv[1:] if argv is None else list(argv)
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", default=",".join(ROWS), help=f"comma-separated rows out of {', '.join(ROWS)}")
    parser.add_argument("--repeats", type=int, default=5, help="timed repeats per runner, median reported")
    args = parser.parse_args(argv)
    rows = [r.strip() for r in args.rows.split(",") if r.strip()]
    if unknown := [r for r in rows if r not in ROWS]:
        parser.error(f"--rows: unknown {unknown}; choose from {', '.join(ROWS)}.")
    lines = [f"`python benchmarks/live_plane.py {shlex.join(argv)}`".replace(" `", "`"), "",
             "| row | default analyze_every | examples analysed | epoch (s) | quantities (s) | figure (s) "
             "| cost at 1 | at the default | at 10 |",
             "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for name in rows:
        config = row_config(name)
        if config.data.path and not Path(config.data.path).exists():
            lines.append(f"| {name} | skipped: {config.data.path} absent | | | | | | | |")
            continue
        with contextlib.ExitStack() as stack:
            run = experiment.setup(config)
            epoch, analysis, figure = measure(runners(run, stack), steps=1, repeats=args.repeats, warmup=1)
        times = epoch.step_seconds, analysis.step_seconds, figure.step_seconds
        every = config.train.analyze_every
        lines.append(f"| {name} | {every} | {len(summaries.InformationPlaneMonitor(run).labels)} | "
                     + " | ".join(f"{t:.3f}" for t in times) + " | "
                     + " | ".join(f"{cost(*times, n):.1%}" for n in (1, every, 10)) + " |")
    report = "\n".join(lines)
    print(report)
    return report


if __name__ == "__main__":
    main()
