"""Section 7.1: how a trained encoder uses the C = 100 categories of Z.

For the latest checkpoint of every trial under each WORKDIR (a run or a
population), restores the encoder through ibjax.experiment.restore_run and
computes on the whole training set, from p(z, y) = mean_n p(z|x_n) 1[y = y_n]:

* classes apart: how many classes are the majority class of at least one
  category (holding at least 0.5% of the data); a class that is not shares
  its categories with another class, and the decoder can only guess between them;
* best accuracy: Σ_z max_y p(z, y), the training accuracy that the optimal
  decoder reaches with this encoder;
* exp H[Z]: the effective number of categories used.

Usage: python experiments/fig3_codes.py WORKDIR [WORKDIR ...]
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

from ibjax import analysis, experiment, information


def code_usage(workdir: Path) -> dict:
    with experiment.restore_run(workdir) as run:
        epoch = run.epochs[-1]
        state, _ = run.restore(epoch)
        data = run.experiment.dataset
        z_probs = analysis.compute_latents(analysis.make_latent_fn(run.experiment.model, run.experiment.config),
                                           state, data.x_train)[0]
        joint = np.asarray(information.categorical_joint(z_probs, data.y_train, data.num_classes), np.float64)
    p_z = joint.sum(axis=1)
    used = p_z >= 0.005
    h_z = -np.sum(p_z[p_z > 0] * np.log(p_z[p_z > 0]))
    return {"epoch": epoch, "classes_apart": len(set(np.argmax(joint[used], axis=1))),
            "best_accuracy": float(joint.max(axis=1).sum()), "effective_categories": float(np.exp(h_z))}


def main(workdirs: list[str]) -> None:
    print("| run | trial | epoch | classes apart | best accuracy | exp H[Z] |")
    print("| --- | --- | ---: | ---: | ---: | ---: |")
    for workdir in map(Path, workdirs):
        trials = sorted(p.parent for p in workdir.glob("member*/config.json")) or [workdir]
        for trial in trials:
            usage = code_usage(trial)
            print(f"| {workdir.name} | {trial.name} | {usage['epoch']} | {usage['classes_apart']} | "
                  f"{usage['best_accuracy']:.3f} | {usage['effective_categories']:.1f} |", flush=True)


if __name__ == "__main__":
    if len(sys.argv) < 2:
        sys.exit(__doc__)
    main(sys.argv[1:])
