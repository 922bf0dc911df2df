r"""Section 7.1's trials: one seed population against the same trials run one after another.

  XLA_FLAGS= python benchmarks/seed_population.py                 # 8 trials, 3 epochs, offline MNIST if present
  python benchmarks/seed_population.py --trials 4 --epochs 2 --data synthetic

Trains the §7.1 run (``configs/permuted_mnist_categorical_offline.py``: MLP
784–1024–1024–100, categorical latent, decoder 100–1024–1024–10, H_Θ[Y|Z]) as
TRIALS standalone runs with seeds 0 … TRIALS−1, one after another, and as one
seed population (``population.num_seeds=TRIALS``: one compiled step for all
trials), each through ``ibjax.train.train_and_evaluate`` into its own
workdir: everything a user waits for — compilation, the per-epoch exact
training-set evaluation, the test set, checkpoints, metrics files. Both are
timed in this process, one after the other, and the ratio is printed:

* wall: the whole call, compilation included;
* epochs: the sum of the logged ``epoch_seconds`` after the first epoch
  (steady state: steps, evaluation and checkpoints, no compilation).

It then prints, for each epoch, the largest absolute difference between a
member's logged metrics and those of the standalone run with its seed. The
two compute the same thing (tests/test_population.py: equal to 1e-5 on small
models) but not bit for bit: the batched matrix products of the population
round differently, and on the full §7.1 model these rounding differences
grow until whole trajectories drift apart within an epoch or two. (Our
reading, not measured apart: Adam turns even rounding-sized gradients of
nearly unused categories into steps of the learning rate, and training with
H_Θ[Y|Z] breaks symmetries between categories, so which classes separate
first is sensitive to them.) Each member is still a trial of the same setup.

``--data synthetic`` trains on random 28×28 images (for machines without
``../shared/data/mnist``); ``offline`` on the 8,000 real MNIST images.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import jax
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from benchmarks import harness  # noqa: E402
from ibjax import config as configlib  # noqa: E402
from ibjax import data as datalib  # noqa: E402
from ibjax import train  # noqa: E402
from ibjax.io import read_jsonl  # noqa: E402

CONFIG = ROOT / "configs" / "permuted_mnist_categorical_offline.py"


def base_config(epochs: int):
    config = configlib.from_file(CONFIG)
    config.data.path = str((ROOT / config.data.path).resolve())
    config.train.num_epochs = epochs
    config.train.progress_bar = False
    config.train.tensorboard = False
    config.checkpoint.max_to_keep = 1
    return config


def synthetic_dataset(num_train: int = 2048, num_test: int = 512, seed: int = 0) -> datalib.Dataset:
    images, labels = harness.synthetic_data((28, 28, 1), num_train + num_test, seed)
    return datalib.Dataset("permuted_mnist", images[:num_train], labels[:num_train], images[num_train:],
                           labels[num_train:], 10)


def timed_run(config, workdir: Path, dataset) -> tuple[float, float]:
    """(wall seconds of the call, summed epoch_seconds after the first epoch)."""
    start = time.perf_counter()
    train.train_and_evaluate(config, workdir, dataset=dataset)
    wall = time.perf_counter() - start
    logs = sorted(workdir.glob("member*/metrics.jsonl")) or [workdir / "metrics.jsonl"]
    return wall, sum(r["epoch_seconds"] for r in read_jsonl(logs[0])[1:])


def largest_differences(a: list[dict], b: list[dict]) -> list[float]:
    """Per epoch, max |a − b| over the numbers two metrics logs share, timings aside."""
    out = []
    for ra, rb in zip(a, b, strict=True):
        out.append(max((abs(value - rb[key]) for key, value in ra.items()
                        if isinstance(value, float) and "seconds" not in key and "per_sec" not in key and key in rb),
                       default=0.0))
    return out


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--trials", type=int, default=8)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--data", choices=("auto", "offline", "synthetic"), default="auto",
                        help="auto: offline when ../shared/data/mnist exists, else synthetic")
    args = parser.parse_args(argv)
    if args.trials < 2 or args.epochs < 2:
        parser.error(f"--trials and --epochs must be >= 2; got {args.trials} and {args.epochs}.")
    config = base_config(args.epochs)
    kind = args.data
    if kind == "auto":
        kind = "offline" if Path(config.data.path).is_dir() else "synthetic"
    dataset = synthetic_dataset() if kind == "synthetic" else None

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        sequential_wall, sequential_epochs = 0.0, 0.0
        for seed in range(args.trials):
            config.seed = seed
            wall, epochs = timed_run(config, tmp / "sequential" / f"seed{seed}", dataset)
            sequential_wall, sequential_epochs = sequential_wall + wall, sequential_epochs + epochs
            print(f"standalone seed {seed}: {wall:.1f} s", flush=True)
        config.seed = 0
        config.population.num_seeds = args.trials
        population_wall, population_epochs = timed_run(config, tmp / "population", dataset)
        print(f"seed population of {args.trials}: {population_wall:.1f} s", flush=True)
        differences = [
            largest_differences(read_jsonl(member / "metrics.jsonl"),
                                read_jsonl(tmp / "sequential" / f"seed{i}" / "metrics.jsonl"))
            for i, member in enumerate(sorted((tmp / "population").glob("member*")))]
        by_epoch = np.max(np.asarray(differences), axis=0)

    device = jax.devices()[0]
    print(f"\n{args.trials} trials of §7.1 (MLP 784-1024-1024-100, categorical Z, H_Θ[Y|Z]), {args.epochs} epochs, "
          f"{kind} data; {device.platform} ({device.device_kind}, {jax.device_count()} device(s)), "
          f"{harness.cpu_model()}\n")
    print("| timed | sequential (s) | seed population (s) | speed-up |")
    print("| --- | ---: | ---: | ---: |")
    print(f"| wall, compile included | {sequential_wall:.2f} | {population_wall:.2f} | "
          f"{sequential_wall / population_wall:.2f}× |")
    print(f"| epochs 2–{args.epochs} (steady state) | {sequential_epochs:.2f} | {population_epochs:.2f} | "
          f"{sequential_epochs / population_epochs:.2f}× |")
    print("\nlargest |member − standalone run with its seed| over the logged metrics, by epoch: "
          + ", ".join(f"{d:.1e}" for d in by_epoch))
    if not np.all(np.isfinite(by_epoch)):
        raise SystemExit("a member's metrics are not finite")


if __name__ == "__main__":
    main()
