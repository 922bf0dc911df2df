"""Figure 3's table: the final epoch of each objective's trials, median [25%, 75%].

Reads WORKDIR/{decoder_ce,prediction_ce,decoder_uncertainty}/*/metrics.jsonl
(as experiments/fig3_permuted_mnist.sh writes them) and prints, for each
training objective, the training-set H_Θ[Y|Z], H_Θ[Y|X] and H[Y|Z] (exact, whole
training set), the training and test accuracy, and whether H_Θ[Y|Z] upper-bounded
the other two at every epoch of every trial.

Usage: python experiments/fig3_summary.py runs/fig3_permuted_mnist
"""

from __future__ import annotations

import sys
from pathlib import Path

from fig3_ablation import quartiles

from ibjax.io import read_jsonl

OBJECTIVES = (("decoder_ce", "H_Θ[Y\\|Z] (decoder CE)"), ("prediction_ce", "H_Θ[Y\\|X] (prediction CE)"),
              ("decoder_uncertainty", "H[Y\\|Z] (decoder uncertainty)"))
COLUMNS = ("train_exact_decoder_cross_entropy", "train_exact_prediction_cross_entropy", "train_decoder_uncertainty",
           "train_exact_accuracy", "test_accuracy")


def main(workdir: str) -> None:
    print("| trained with | trials | epochs | H_Θ[Y\\|Z] | H_Θ[Y\\|X] | H[Y\\|Z] | train acc. | test acc. "
          "| bound violations |")
    print("| --- | ---: | ---: | --- | --- | --- | --- | --- | ---: |")
    for name, label in OBJECTIVES:
        logs = [read_jsonl(path) for path in sorted(Path(workdir, name).glob("*/metrics.jsonl"))]
        if not logs:
            continue
        epochs = min(len(log) for log in logs)
        finals = [log[epochs - 1] for log in logs]
        # Section 5: H_Θ[Y|Z] >= H[Y|Z] and >= H_Θ[Y|X], to float32 rounding.
        violations = sum(r[COLUMNS[0]] < max(r[COLUMNS[1]], r[COLUMNS[2]]) - 1e-4 for log in logs for r in log)
        cells = " | ".join(quartiles([r[c] for r in finals]) for c in COLUMNS)
        print(f"| {label} | {len(logs)} | {epochs} | {cells} | {violations} of {sum(map(len, logs))} |")


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    main(sys.argv[1])
