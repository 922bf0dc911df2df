"""Section 7.1: why does the decoder cross-entropy stall? One factor at a time.

Each cell trains the decoder cross-entropy H_Θ[Y|Z] on the offline
Permutation-MNIST split (configs/permuted_mnist_categorical_offline.py) as one
seed population of TRIALS members, and reports the final epoch's test
accuracy, training accuracy and training-set H_Θ[Y|Z] as median [25%, 75%]
over the trials, the final learning rate (median), and each trial's number
of jumps: epochs in which the training accuracy rose by 5 points or more,
a class pulled apart from one it shared categories of Z with. Every cell sees the same number of training examples (the
8,000-image cells' EPOCHS epochs), so the data-size cells differ in data, not
in compute, and the batch-size cell in steps and gradient noise. Cells resume like any run; a finished cell is only read, and a
larger --epochs extends a cell in place (its earlier epochs stay readable).

Usage (from the repository root):
  python experiments/fig3_ablation.py [--trials 4] [--epochs 50] [--cells shipped,pytorch_init,...]
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

import numpy as np

from ibjax import config as configlib
from ibjax import train
from ibjax.io import read_jsonl

CONFIG = Path(__file__).resolve().parent.parent / "configs" / "permuted_mnist_categorical_offline.py"

# (name, factor, what changes against the paper setup), overrides. "shipped" is
# the offline config as it was before this ablation (Flax's initialisation, a
# plateau test per 8,000-image epoch); "paper" is PyTorch's initialisation and
# a plateau test per 60,000 examples, the paper's epoch.
_SHIPPED = {"model.init": "flax", "train.plateau_examples": 0, "train.learning_rate": 1e-4}
_PAPER = {"model.init": "pytorch", "train.plateau_examples": 60000, "train.learning_rate": 1e-4}
CELLS: dict[str, tuple[str, str, dict]] = {
    "shipped": ("baseline", "Flax init, plateau per 8k-image epoch (as shipped)", _SHIPPED),
    "pytorch_init": ("initialisation", "shipped + PyTorch init", {**_SHIPPED, "model.init": "pytorch"}),
    "plateau_60k": ("plateau unit", "shipped + plateau per 60k examples", {**_SHIPPED, "train.plateau_examples": 60000}),
    "paper": ("both", "PyTorch init + plateau per 60k examples", _PAPER),
    "paper_lr3e-4": ("learning rate", "paper setup, lr 3e-4", {**_PAPER, "train.learning_rate": 3e-4}),
    "paper_lr1e-3": ("learning rate", "paper setup, lr 1e-3", {**_PAPER, "train.learning_rate": 1e-3}),
    "paper_batch32": ("batch size", "paper setup, batch 32", {**_PAPER, "train.batch_size": 32}),
    "paper_4k": ("training images", "paper setup, 4,000 images", {**_PAPER, "data.num_train": 4000}),
    "paper_2k": ("training images", "paper setup, 2,000 images", {**_PAPER, "data.num_train": 2000}),
}
_FULL_TRAIN = 8000


def cell_config(overrides: dict, trials: int, epochs: int, objective: str = "decoder"):
    config = configlib.from_file(CONFIG)
    for dotted, value in overrides.items():
        section, field = dotted.split(".")
        config[section][field] = value
    config.train.num_epochs = math.ceil(epochs * _FULL_TRAIN / (config.data.num_train or _FULL_TRAIN))
    config.train.progress_bar = False
    config.train.tensorboard = False
    config.checkpoint.max_to_keep = 1   # 37 MB a member an epoch: keep what resuming needs
    config.objective.cross_entropy = objective
    config.population.num_seeds = trials
    return config


def trial_logs(workdir: Path, epoch: int) -> list[list[dict]]:
    """Each trial's records up to ``epoch`` (a cell extended to more epochs keeps its earlier records)."""
    return [[r for r in read_jsonl(path) if r["epoch"] <= epoch] for path in sorted(workdir.glob("member*/metrics.jsonl"))]


def jumps(log: list[dict], threshold: float = 0.05) -> int:
    """Epochs whose exact training accuracy rose by at least ``threshold``: a class pulled apart from another."""
    accuracy = [r["train_exact_accuracy"] for r in log]
    return sum(b - a >= threshold for a, b in zip(accuracy, accuracy[1:]))


def quartiles(values) -> str:
    low, mid, high = np.percentile(np.asarray(values, np.float64), [25, 50, 75])
    return f"{mid:.3f} [{low:.3f}, {high:.3f}]"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--trials", type=int, default=4)
    parser.add_argument("--epochs", type=int, default=50, help="epochs of the 8,000-image cells")
    parser.add_argument("--cells", default=",".join(CELLS), help=f"comma-separated, of {list(CELLS)}")
    parser.add_argument("--workdir", default="runs/fig3_ablation")
    args = parser.parse_args()
    names = [name for name in args.cells.split(",") if name]
    unknown = [name for name in names if name not in CELLS]
    if unknown:
        parser.error(f"--cells: unknown {unknown}; valid: {list(CELLS)}")

    rows = []
    for name in names:
        factor, label, overrides = CELLS[name]
        workdir = Path(args.workdir) / name
        config = cell_config(overrides, args.trials, args.epochs)
        print(f"== {name}: {label} ({config.train.num_epochs} epochs, {args.trials} trials)", flush=True)
        if train.train_and_evaluate(config, workdir, allow_num_epochs_change=True).get("preempted"):
            raise SystemExit(f"stopped in cell {name}; the same command resumes it")
        logs = trial_logs(workdir, config.train.num_epochs)
        finals = [log[-1] for log in logs]
        rows.append({"cell": name, "factor": factor, "setup": label, "epochs": config.train.num_epochs,
                     "test_accuracy": [r["test_accuracy"] for r in finals],
                     "train_accuracy": [r["train_exact_accuracy"] for r in finals],
                     "decoder_cross_entropy": [r["train_exact_decoder_cross_entropy"] for r in finals],
                     "learning_rate": [r["learning_rate"] for r in finals],
                     "jumps": [jumps(log) for log in logs]})
    (Path(args.workdir) / "ablation.json").write_text(json.dumps(rows, indent=1))
    print("\n| factor | setup | epochs | test acc. | train acc. | train H_Θ[Y\\|Z] (nats) | final lr | jumps |")
    print("| --- | --- | ---: | --- | --- | --- | ---: | ---: |")
    for row in rows:
        print(f"| {row['factor']} | {row['setup']} | {row['epochs']} | {quartiles(row['test_accuracy'])} | "
              f"{quartiles(row['train_accuracy'])} | {quartiles(row['decoder_cross_entropy'])} | "
              f"{np.median(row['learning_rate']):.1e} | {' '.join(map(str, row['jumps']))} |")


if __name__ == "__main__":
    main()
