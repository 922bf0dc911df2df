"""Section 7.1 trial by trial: test accuracy at chosen epochs, the first epoch at >= 98%, the last epoch's numbers.

Reads each trial's metrics.jsonl, as ibjax's scripts/train.py and
experiments/fig3_torch.py both write it, and prints one Markdown row per trial:
the test accuracy at EPOCHS, the first epoch whose test accuracy reaches 0.98,
and at the last epoch the training accuracy (exact, whole training set, eval
mode) and the training-set decoder cross-entropy H_Θ[Y|Z], then the median row
of the trials.

Usage: python experiments/fig3_trials.py [--epochs 1,5,10,...] LABEL=DIR [LABEL=DIR ...]
  e.g. python experiments/fig3_trials.py "ibjax seed 0=runs/fig3_full/decoder_ce/seed0" \\
         "PyTorch seed 0=runs/fig3_torch/seed0"
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from ibjax.io import read_jsonl

TARGET = 0.98


def _train(record: dict, name: str) -> float:
    """The exact training-set value where the run logged one (ibjax), else the logged one (PyTorch)."""
    return record.get(f"train_exact_{name}", record[f"train_{name}"])


def row(label: str, records: list[dict], epochs: list[int]) -> tuple[str, list[float]]:
    by_epoch = {r["epoch"]: r for r in records}
    accuracies = [by_epoch[e]["test_accuracy"] if e in by_epoch else float("nan") for e in epochs]
    first = next((r["epoch"] for r in records if r["test_accuracy"] >= TARGET), None)
    last = records[-1]
    values = [*accuracies, _train(last, "accuracy"), _train(last, "decoder_cross_entropy")]
    cells = [f"{a:.3f}" if a == a else "–" for a in accuracies]
    cells += [f"epoch {first}" if first else "—", f"{last['epoch']}", f"{values[-2]:.3f}", f"{values[-1]:.3f}"]
    return f"| {label} | " + " | ".join(cells) + " |", values


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--epochs", default="1,5,10,20,30,50,70,100", help="comma-separated epochs to show")
    parser.add_argument("trials", nargs="+", help="LABEL=DIR, a trial's run directory")
    args = parser.parse_args(argv)
    epochs = [int(e) for e in args.epochs.split(",")]
    print("| trial | " + " | ".join(str(e) for e in epochs)
          + f" | first ≥ {TARGET} | last epoch | train acc. | H_Θ[Y\\|Z] |")
    print("| --- |" + " ---: |" * (len(epochs) + 4))
    values = []
    for trial in args.trials:
        label, _, directory = trial.rpartition("=")
        if not label:
            parser.error(f"expected LABEL=DIR; got {trial!r}")
        line, numbers = row(label, read_jsonl(Path(directory) / "metrics.jsonl"), epochs)
        print(line)
        values.append(numbers)
    if len(values) > 1:
        median = np.nanmedian(np.asarray(values), axis=0)
        cells = [f"{v:.3f}" for v in median[:len(epochs)]] + ["", "", f"{median[-2]:.3f}", f"{median[-1]:.3f}"]
        print("| median | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
