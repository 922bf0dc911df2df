"""What a training epoch reports: the metrics record of each member and its summary line.

:func:`epoch_record` builds the record written to ``metrics.jsonl`` (and as
TensorBoard scalars) from the epoch's step totals and evaluations;
:func:`summary_line` is the line printed for it; :func:`member_label` names
what tells a population's members apart; :func:`nonfinite_message` is the
error of a NaN/Inf step.
"""

from __future__ import annotations

from typing import Any

import jax.numpy as jnp
import numpy as np

from ibjax import information
from ibjax.step import WATCHED_TERMS, metric_names

__all__ = ["epoch_record", "summary_line", "member_label", "nonfinite_message"]


def member_label(members, i: int) -> str:
    """``gamma=G`` and/or ``seed=S``: what tells member ``i`` apart (empty for a single run)."""
    member = members[i]
    parts = ([f"gamma={member.objective.gamma:g}"] if len({m.objective.gamma for m in members}) > 1 else []) + \
            ([f"seed={member.seed}"] if len({m.seed for m in members}) > 1 else [])
    return " and ".join(parts)


def nonfinite_message(config, bad_terms: int, step: int, epoch: int, member: str, last_epoch: int) -> str:
    """The error of a NaN/Inf step: which terms, where, what was kept, and the config values that drive it.

    ``bad_terms`` has a bit per :data:`ibjax.step.WATCHED_TERMS`; ``member``
    is ``", member i with …"`` or empty; ``last_epoch`` the last checkpoint (0: none).
    """
    terms = [name for i, name in enumerate(WATCHED_TERMS) if bad_terms >> i & 1]
    o = config.objective
    drivers = (f"objective.loss={o.loss}, objective.cross_entropy={o.cross_entropy}, "
               f"objective.regularizer={o.regularizer}, objective.gamma={o.gamma:g}, objective.eps={o.eps:g}, "
               f"train.learning_rate={config.train.learning_rate:g}, dtype={config.dtype}")
    kept = f"the checkpoint of epoch {last_epoch} is untouched" if last_epoch else "no checkpoint was written"
    return (f"non-finite {', '.join(terms)} at step {step} (epoch {epoch}{member}); the update was not applied "
            f"and {kept}. Values that drive it: {drivers}.")


def epoch_record(member, i: int, epoch: int, step, totals, train_eval, test_eval, lr) -> dict[str, Any]:
    """Member ``i``'s metrics record of an epoch, from the ``[M]`` totals and evaluations."""
    def pick(value):
        return float(np.asarray(value)[i])

    steps = pick(totals["steps"])
    record = {"epoch": epoch, "step": int(step)}
    record.update({f"train_{k}": pick(totals[k]) / steps for k in metric_names(member)})
    record["training_error_bound"] = record.pop("train_training_error_bound")
    if train_eval:
        # The step's H[Y|Z] is the batch plug-in; the record's is exact over the training set.
        record["train_batch_decoder_uncertainty"] = record["train_decoder_uncertainty"]
        record["train_decoder_uncertainty"] = float(information.conditional_entropy(
            jnp.asarray(np.asarray(train_eval["joint"])[i])))
        for name in ("decoder_cross_entropy", "prediction_cross_entropy", "accuracy"):
            record[f"train_exact_{name}"] = pick(train_eval[name])
    for name in ("accuracy", "decoder_cross_entropy", "prediction_cross_entropy"):
        record[f"test_{name}"] = pick(test_eval[name])
    record.update({"learning_rate": float(lr), "gamma": float(member.objective.gamma),
                   "regularizer": member.objective.regularizer, "seed": int(member.seed)})
    return record


def summary_line(record: dict) -> str:
    """The one-line summary of an epoch record printed during training."""
    # A categorical run also has exact train-set values (eval mode, and with
    # the optimal decoder when it minimises H[Y|Z]); show those when present.
    def train(name):
        return record.get(f"train_exact_{name}", record[f"train_{name}"])

    parts = [
        f"epoch {record['epoch']:3d}",
        f"train acc {train('accuracy'):.4f}",
        f"test acc {record['test_accuracy']:.4f}",
        f"H_Θ[Y|Z] {train('decoder_cross_entropy'):.4f}",
        f"H_Θ[Y|X] {train('prediction_cross_entropy'):.4f}",
    ]
    if "train_decoder_uncertainty" in record:
        parts.append(f"H[Y|Z] {record['train_decoder_uncertainty']:.4f}")
    if "entropy_cap" in record:
        parts.append(f"cap {record['entropy_cap']:g} nats: train err {record['capped_train_error']:.4f}")
    parts += [
        f"{record['regularizer']} {record['train_regularizer']:.4f}",
        f"err≤ {record['training_error_bound']:.3f}",
        f"lr {record['learning_rate']:.2e}",
        f"{record['examples_per_sec']:.0f} ex/s",
    ]
    return " | ".join(parts)
