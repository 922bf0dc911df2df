"""Section 7.1 in plain PyTorch: the decoder cross-entropy on full Permutation-MNIST, a cross-check of ibjax.

An independent reimplementation of the paper's setup for the decoder
cross-entropy H_Θ[Y|Z] (Kirsch, Lyle & Gal, "Unpacking Information
Bottlenecks", section 7.1, Figure 3), trained on the real 60,000-image MNIST
training set with ibjax's pixel permutation and tested on the 10,000 test
images: encoder 784-1024-1024-C (C = 100 categories of Z), decoder
C-1024-1024-10 on the C one-hot codes (``benchmarks/torch_reference.py``),
PyTorch's default initialisation, Adam (lr 1e-4), batch 128 with a fresh
shuffle every epoch and the last partial batch kept (469 steps an epoch),
ReduceLROnPlateau(factor=0.8, patience=3) on the epoch's mean training loss,
100 epochs. Only torch computes; ibjax only loads the data.

After every epoch it evaluates on the whole training and test sets and
appends one JSON line to OUT/metrics.jsonl, then saves OUT/checkpoint.pt.
Rerunning the same command resumes after the last saved epoch; a larger
--epochs extends a run. OUT/args.json holds the flags that define the run,
and a run directory refuses flags that differ from them.

Usage (from the repository root; needs ``pip install torch``):
  python experiments/fig3_torch.py --out runs/fig3_torch/seed0 --seed 0 --epochs 100
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # `benchmarks` lives at the repository root.

from benchmarks.torch_reference import MLPCategorical, categorical_decoder_cross_entropy  # noqa: E402
from ibjax.config import default_config  # noqa: E402
from ibjax.data import NORMALIZATION, Dataset, load_dataset  # noqa: E402

#: Flags that define a run: a run directory refuses others. --epochs only says
#: where to stop (the schedule does not depend on it), so a run can be extended.
RUN_FLAGS = ("seed", "lr", "batch_size", "data", "permutation_seed")
EVAL_BATCH = 1000


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", required=True, type=Path, help="run directory (created; resumed if it holds a run)")
    p.add_argument("--seed", type=int, default=0, help="seeds the initialisation and the shuffling")
    p.add_argument("--epochs", type=int, default=100)
    p.add_argument("--lr", type=float, default=1e-4, help="Adam's initial learning rate")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--data", default="../shared/data/mnist_full", help="directory of the MNIST IDX files")
    p.add_argument("--permutation-seed", type=int, default=default_config().data.permutation_seed,
                   help="pixel permutation (ibjax's default: the one ibjax's runs use)")
    p.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's)")
    p.add_argument("--progress", action="store_true", help="a progress bar over each epoch's steps")
    return p.parse_args(argv)


def load(args: argparse.Namespace) -> Dataset:
    return load_dataset("permuted_mnist", source="idx", path=args.data, permutation_seed=args.permutation_seed)


def _inputs(images: np.ndarray, name: str) -> torch.Tensor:
    """uint8 ``[N, H, W, C]`` -> normalised float32 ``[N, H·W·C]``, as ibjax normalises (one channel)."""
    (mean,), (std,) = NORMALIZATION[name]
    x = torch.from_numpy(images.reshape(len(images), -1)).float()
    return (x / 255.0 - mean) / std


def _atomic_write(path: Path, write) -> None:
    """Writes through ``write(tmp_path)`` then renames, so a kill never leaves a half-written file."""
    tmp = path.with_name(path.name + ".tmp")
    write(tmp)
    os.replace(tmp, path)


def _check_run_flags(out: Path, args: argparse.Namespace) -> None:
    """Stores the run's flags in OUT/args.json, or refuses flags that differ from the stored ones."""
    given = {k: getattr(args, k) for k in RUN_FLAGS}
    path = out / "args.json"
    if path.exists():
        stored = json.loads(path.read_text())
        diff = [f"--{k.replace('_', '-')}: stored {stored.get(k)!r}, given {v!r}"
                for k, v in given.items() if stored.get(k) != v]
        if diff:
            raise SystemExit(f"{out} holds a run made with different flags ({'; '.join(diff)}). "
                             "Use another --out, or the stored flags to resume it.")
    else:
        _atomic_write(path, lambda p: p.write_text(json.dumps(given, indent=1) + "\n"))


@torch.no_grad()
def evaluate(model: MLPCategorical, x: torch.Tensor, y: torch.Tensor) -> dict[str, Any]:
    """Accuracy of argmax_y log Σ_z p(z|x) p(y|z), the mean H_Θ[Y|Z] and the classes apart, over (x, y)."""
    model.eval()
    correct, ce, counts = 0, 0.0, torch.zeros(model.decoder[-1].out_features, model.categories, dtype=torch.long)
    for start in range(0, len(x), EVAL_BATCH):
        xb, yb = x[start:start + EVAL_BATCH], y[start:start + EVAL_BATCH]
        z_log_probs, decoder_log_probs = model(xb)
        # log p(ŷ|x) = logsumexp_z (log p(z|x) + log p(ŷ|z)): ibjax.models.prediction_log_probs.
        pred = torch.logsumexp(z_log_probs[:, :, None] + decoder_log_probs[None], dim=1)
        correct += int((pred.argmax(-1) == yb).sum())
        ce += float(categorical_decoder_cross_entropy(z_log_probs, decoder_log_probs, yb).sum())
        # Per class, how often each category is the example's most likely one.
        counts.view(-1).index_add_(0, yb * model.categories + z_log_probs.argmax(-1), torch.ones_like(yb))
    model.train()
    present = counts.sum(1) > 0
    majority = counts.argmax(1)[present]
    # Classes apart: distinct majority categories of the classes (num_classes: each class has its own).
    return {"accuracy": correct / len(x), "decoder_cross_entropy": ce / len(x),
            "classes_apart": int(torch.unique(majority).numel())}


def _batches(n: int, batch_size: int, generator: torch.Generator) -> Iterator[torch.Tensor]:
    """A fresh shuffle of ``range(n)`` in batches, the last partial one kept (DataLoader's drop_last=False)."""
    order = torch.randperm(n, generator=generator)
    return iter(order.split(batch_size))


def _read_metrics(path: Path, last_epoch: int) -> list[str]:
    """The lines of metrics.jsonl up to ``last_epoch``: later ones were written after the last checkpoint."""
    if not path.exists():
        return []
    return [line for line in path.read_text().splitlines() if line and json.loads(line)["epoch"] <= last_epoch]


def train(args: argparse.Namespace, dataset: Dataset | None = None) -> list[dict[str, Any]]:
    """Trains (or resumes) the run in ``args.out`` up to ``args.epochs``; returns all epochs' records.

    ``dataset`` defaults to Permutation-MNIST from ``args.data``; tests pass a small one.
    """
    if args.threads:
        torch.set_num_threads(args.threads)
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    _check_run_flags(out, args)  # before loading the data, so a refusal is immediate
    if dataset is None:
        dataset = load(args)

    x_train, x_test = _inputs(dataset.x_train, dataset.name), _inputs(dataset.x_test, dataset.name)
    y_train, y_test = (torch.from_numpy(y.astype(np.int64)) for y in (dataset.y_train, dataset.y_test))
    torch.manual_seed(args.seed)
    model = MLPCategorical(x_train.shape[1], num_classes=dataset.num_classes)
    optimizer = torch.optim.Adam(model.parameters(), lr=args.lr)
    scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(optimizer, factor=0.8, patience=3)
    generator = torch.Generator().manual_seed(args.seed)

    epoch, step = 0, 0
    ckpt_path, metrics_path = out / "checkpoint.pt", out / "metrics.jsonl"
    if ckpt_path.exists():
        ckpt = torch.load(ckpt_path, weights_only=False)
        model.load_state_dict(ckpt["model"])
        optimizer.load_state_dict(ckpt["optimizer"])
        scheduler.load_state_dict(ckpt["scheduler"])
        generator.set_state(ckpt["generator"])
        torch.set_rng_state(ckpt["torch_rng"])
        epoch, step = ckpt["epoch"], ckpt["step"]
        print(f"resuming {out} after epoch {epoch}", flush=True)
    lines = _read_metrics(metrics_path, epoch)
    _atomic_write(metrics_path, lambda p: p.write_text("".join(line + "\n" for line in lines)))

    model.train()
    while epoch < args.epochs:
        epoch += 1
        start = time.perf_counter()
        lr = optimizer.param_groups[0]["lr"]  # the rate this epoch trains with
        batches = _batches(len(x_train), args.batch_size, generator)
        if args.progress:
            from tqdm import tqdm
            batches = tqdm(batches, total=math.ceil(len(x_train) / args.batch_size), desc=f"epoch {epoch}",
                           leave=False)
        losses = []
        for idx in batches:
            z_log_probs, decoder_log_probs = model(x_train[idx])
            loss = categorical_decoder_cross_entropy(z_log_probs, decoder_log_probs, y_train[idx]).mean()
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            losses.append(loss.item())
            step += 1
        train_loss = float(np.mean(losses))
        scheduler.step(train_loss)
        train_seconds = time.perf_counter() - start
        tr, te = evaluate(model, x_train, y_train), evaluate(model, x_test, y_test)
        record = {"epoch": epoch, "step": step, "train_loss": train_loss,
                  "train_accuracy": tr["accuracy"], "train_decoder_cross_entropy": tr["decoder_cross_entropy"],
                  "test_accuracy": te["accuracy"], "test_decoder_cross_entropy": te["decoder_cross_entropy"],
                  "classes_apart": tr["classes_apart"], "learning_rate": lr,
                  "train_seconds": train_seconds, "epoch_seconds": time.perf_counter() - start, "seed": args.seed}
        # The record first, then the checkpoint: a kill in between only repeats this epoch on resume.
        with metrics_path.open("a") as f:
            f.write(json.dumps(record) + "\n")
        state = {"model": model.state_dict(), "optimizer": optimizer.state_dict(),
                 "scheduler": scheduler.state_dict(), "generator": generator.get_state(),
                 "torch_rng": torch.get_rng_state(), "epoch": epoch, "step": step}
        _atomic_write(ckpt_path, lambda p: torch.save(state, p))
        print(f"epoch {epoch:3d}  step {step:6d}  loss {train_loss:.4f}  train acc {tr['accuracy']:.4f}  "
              f"H[Y|Z] {tr['decoder_cross_entropy']:.4f}  test acc {te['accuracy']:.4f}  "
              f"apart {tr['classes_apart']}  lr {lr:.3g}  {record['epoch_seconds']:.1f}s", flush=True)
    return [json.loads(line) for line in metrics_path.read_text().splitlines()]


def main(argv: Sequence[str] | None = None) -> None:
    train(parse_args(argv))


if __name__ == "__main__":
    main()
