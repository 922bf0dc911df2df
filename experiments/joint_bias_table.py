"""Prints the bias table of experiments/decoder_uncertainty_joint.sh from its runs' metrics.jsonl."""

import sys
from pathlib import Path

from ibjax.io import read_jsonl


def main(out: str) -> None:
    runs = {joint: read_jsonl(Path(out) / joint / "metrics.jsonl") for joint in ("batch", "epoch")}
    print("| epoch | joint=batch: exact H[Y|Z] | batch plug-in (bias) | test acc | joint=epoch: exact H[Y|Z] "
          "| data-level estimate (bias) | batch plug-in (bias) | test acc |")
    print("|---:|---:|---:|---:|---:|---:|---:|---:|")
    for a, b in zip(runs["batch"], runs["epoch"]):
        exact_a, exact_b = a["train_decoder_uncertainty"], b["train_decoder_uncertainty"]
        print(f"| {a['epoch']} | {exact_a:.3f} | {a['train_batch_decoder_uncertainty']:.3f} "
              f"({a['train_batch_decoder_uncertainty'] - exact_a:+.3f}) | {a['test_accuracy']:.3f} | {exact_b:.3f} "
              f"| {b['train_data_decoder_uncertainty']:.3f} ({b['train_data_decoder_uncertainty'] - exact_b:+.3f}) "
              f"| {b['train_batch_decoder_uncertainty']:.3f} ({b['train_batch_decoder_uncertainty'] - exact_b:+.3f}) "
              f"| {b['test_accuracy']:.3f} |")


if __name__ == "__main__":
    main(sys.argv[1])
