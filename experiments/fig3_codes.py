"""Section 7.1: how a trained encoder uses the C = 100 categories of Z, and why merged classes stay merged.

For the latest checkpoint of every trial under each WORKDIR (a run or a
population), restores the encoder and decoder through
ibjax.experiment.restore_run and computes on the whole training set, with
ibjax.analysis.categorical_code_usage:

* classes apart: how many classes are the majority class of at least one
  category (holding at least 0.5% of the data); a class that is not shares
  its categories with another class, and the decoder can only guess between them;
* best accuracy: Σ_z max_y p(z, y), the training accuracy that the optimal
  decoder reaches with this encoder;
* exp H[Z]: the effective number of categories used;
* merged: the fraction of training examples whose class is not apart;
  their median decoder cross-entropy where they are ("pays"), and the
  median cross-entropy of the cheapest empty category for them ("move").
  "move" > "pays": every step towards a category of their own raises their
  loss under the current decoder.

Usage: python experiments/fig3_codes.py WORKDIR [WORKDIR ...]
"""

from __future__ import annotations

import sys
from pathlib import Path

import jax.numpy as jnp

from ibjax import analysis, data as datalib, experiment


def code_usage(workdir: Path) -> dict:
    with experiment.restore_run(workdir) as run:
        if not run.epochs:
            raise SystemExit(f"{workdir} has no finished epoch's checkpoint.")
        epoch = run.epochs[-1]
        state, _ = run.restore(epoch)
        exp = run.experiment
        data = exp.dataset
        z_probs = analysis.compute_latents(analysis.make_latent_fn(exp.model, exp.config), state, data.x_train)[0]
        x = datalib.preprocess(jnp.asarray(data.x_train[:1]), exp.config.data.name)
        decoder_log_probs = exp.model.apply({"params": state.params}, x, train=False,
                                            num_samples=1)["decoder_log_probs"]
    return dict(analysis.categorical_code_usage(z_probs, data.y_train, decoder_log_probs, data.num_classes),
                epoch=epoch)


def main(workdirs: list[str]) -> None:
    print("| run | trial | epoch | classes apart | best accuracy | exp H[Z] | merged | merged pay (nats) "
          "| cheapest move (nats) |")
    print("| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for workdir in map(Path, workdirs):
        trials = sorted(p.parent for p in workdir.glob("member*/config.json")) or [workdir]
        for trial in trials:
            u = code_usage(trial)
            print(f"| {workdir.name} | {trial.name} | {u['epoch']} | {u['classes_apart']} | "
                  f"{u['best_accuracy']:.3f} | {u['effective_categories']:.1f} | {u['merged_fraction']:.2f} | "
                  f"{u['merged_cross_entropy']:.2f} | {u['cheapest_move']:.2f} |", flush=True)


if __name__ == "__main__":
    if len(sys.argv) < 2:
        sys.exit(__doc__)
    main(sys.argv[1:])
