"""The training loop: ``train_and_evaluate(config, workdir)``.

Trains the run a config describes (:func:`ibjax.experiment.setup`) with Adam
and a reduce-on-plateau learning rate (section 7 of the paper), writes one
JSON line of metrics per epoch to ``metrics.jsonl`` and an Orbax checkpoint
per epoch to ``checkpoints/`` (and, with ``train.tensorboard``, the same
scalars as TensorBoard event files beside ``metrics.jsonl``), and resumes from the latest checkpoint when
started again on the same workdir.

A run is a population of M ≥ 1 members (:mod:`ibjax.step`): a single run is
one member in ``workdir``; ``config.population.gammas`` trains one member per
γ in the same compiled step, each a complete run of its own in
``workdir/memberNN_gammaG`` (:func:`ibjax.workdir.member_workdir`).

Throughput: the data set lives on the device(s), each epoch's batch indices
are drawn on the device, the step is compiled once ahead of time with its
state donated, and metrics stay on the device until the epoch ends.

Multi-process (``jax.distributed``, :func:`initialize_distributed`): the mesh
spans every process's devices and each process feeds its shard of the global
batch; every process runs the same loop, process 0 alone writes
``config.json``, ``metrics.jsonl``, TensorBoard files and the lock and prints,
every process takes part in each checkpoint (Orbax's multi-host protocol), and
a stop request to any process is agreed on after every step, so all stop at
the same step with one mid-epoch checkpoint.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import sys
import time
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from ibjax import capping, evaluation
from ibjax import config as configlib
from ibjax import data as datalib
from ibjax import experiment as experimentlib
from ibjax import information
from ibjax import step as steplib
from ibjax import tensorboard
from ibjax import workdir as workdirlib
from ibjax.io import append_jsonl, read_jsonl, write_jsonl
from ibjax.step import NonFiniteError
from ibjax.workdir import WorkdirError

__all__ = ["train_and_evaluate", "initialize_distributed", "NonFiniteError", "WorkdirError"]


def initialize_distributed(coordinator_address: str | None = None, num_processes: int | None = None,
                           process_id: int | None = None) -> None:
    """``jax.distributed.initialize`` once, before the first device query.

    Without arguments JAX detects them (Cloud TPU pod slices, SLURM, Open
    MPI; ``JAX_COORDINATOR_ADDRESS`` is read too); give all three to launch
    the processes yourself, e.g. several processes on one machine with CPU
    collectives over gloo. A second call does nothing.

    JAX's own preemption service is switched off: it would take SIGTERM
    over for good, while :class:`ibjax.workdir.StopRequests` handles it
    during training (stopping every process at the same step) and leaves it
    its default meaning (terminate) before and after, as in a single process.
    """
    if jax.distributed.is_initialized():
        return
    if getattr(jax.config, "jax_cpu_collectives_implementation", "gloo") is None:
        # Older jax had no cross-process CPU collectives unless asked for.
        jax.config.update("jax_cpu_collectives_implementation", "gloo")
    if hasattr(jax.config, "jax_enable_preemption_service"):
        jax.config.update("jax_enable_preemption_service", False)
    jax.distributed.initialize(coordinator_address=coordinator_address, num_processes=num_processes,
                               process_id=process_id)


def train_and_evaluate(
    config: ml_collections.ConfigDict,
    workdir: str | os.PathLike,
    *,
    stop_after_epoch: int | None = None,
    allow_num_epochs_change: bool = False,
    dataset: datalib.Dataset | None = None,
) -> dict[str, Any]:
    """Trains and evaluates the run of ``config``, checkpointing into ``workdir``.

    Running it again on the same ``workdir`` with the same config resumes from
    the latest checkpoint; a different config is refused with the differing
    fields listed, so one run never overwrites another's checkpoints. The
    workdir is claimed (``config.json`` written) only after every check that
    can fail has passed: the config's fields, the workdir, the data set and
    the batch size. A live run holds ``workdir/lock``.

    SIGTERM/SIGINT finish the current step, save a mid-epoch checkpoint and
    return ``{"preempted": True, ...}``; the same call resumes exactly there.
    In a multi-process run a signal to any process stops every process at the
    same step.
    A NaN/Inf in the loss, regulariser, cross-entropy or gradient norm raises
    :class:`NonFiniteError` before the bad update is applied or anything saved.

    Args:
      config: experiment config (see ``configs/default.py``).
      workdir: run directory for ``config.json``, ``metrics.jsonl`` and
        ``checkpoints/``.
      stop_after_epoch: stop (after checkpointing) once this epoch is done, as
        if interrupted; a later call resumes.
      allow_num_epochs_change: resume even if ``train.num_epochs`` differs from
        the stored config (to extend a finished run).
      dataset: train on these arrays instead of the data set ``config.data``
        names (benchmarks on synthetic data; the stored config still names
        ``config.data``).

    Returns:
      The metrics record of the last epoch run (for a population, of its
      first member, with ``"members"`` holding all); empty if nothing was
      left to do.
    """
    if config.get("distributed", False):
        initialize_distributed()
    configlib.validate(config, num_devices=jax.device_count())
    workdir = Path(workdir).absolute()  # Orbax needs absolute paths
    members = experimentlib.member_configs(config)
    run_dirs = experimentlib.member_workdirs(config, workdir)
    workdirlib.check_workdir(workdir, config, allow_num_epochs_change)
    if run_dirs != [workdir]:
        for member, directory in zip(members, run_dirs):
            workdirlib.check_workdir(directory, member, allow_num_epochs_change)
    experiment = experimentlib.setup(config, dataset=dataset)

    with workdirlib.WorkdirLock(workdir), workdirlib.StopRequests() as stop:
        workdirlib.claim_workdir(workdir, config)
        if run_dirs != [workdir]:
            for member, directory in zip(members, run_dirs):
                workdirlib.claim_workdir(directory, member)
        with contextlib.ExitStack() as cleanup:
            loop = _Loop(experiment, workdir, run_dirs, stop, cleanup)
            return loop.run(stop_after_epoch)


@dataclasses.dataclass
class _Loop:
    """One call of :func:`train_and_evaluate` after the workdir is claimed."""

    experiment: experimentlib.Experiment
    workdir: Path
    run_dirs: list[Path]
    stop: workdirlib.StopRequests
    cleanup: contextlib.ExitStack

    def __post_init__(self):
        exp = self.experiment
        self.config = exp.config
        self.keys = exp.keys()
        self.managers = [workdirlib.checkpoint_manager(d, self.config.checkpoint.max_to_keep) for d in self.run_dirs]
        for manager in self.managers:
            # Finish pending asynchronous saves on every exit path, errors
            # included, so the last good checkpoint is never left half-written.
            self.cleanup.callback(manager.close)
            self.cleanup.callback(manager.wait_until_finished)
        self.x_train, self.y_train, self.x_test, self.y_test = exp.device_data()
        self.gamma = exp.gammas()
        self.train_key = self.keys["train"]
        self.eval_step = exp.eval_step()
        categorical = self.config.model.latent == "categorical"
        self.eval_args = dict(batch_size=self.config.train.eval_batch_size, rng=self.keys["eval"],
                              sharding=exp.replicated, num_members=exp.num_members,
                              joint_shape=(self.config.model.latent_dim, exp.num_classes) if categorical else None)
        self.latent_fn = capping.make_latent_fn(exp.model, self.config) if self.config.capping.schedule else None
        # objective.joint='epoch': log p(y|z) of the training set, fixed for an epoch (None otherwise).
        self.data_decoder = None
        # TensorBoard event files beside each metrics.jsonl (which stays what analysis and plots read).
        self.primary = workdirlib.is_primary()
        self.writers = ([self.cleanup.enter_context(tensorboard.ScalarWriter(d)) for d in self.run_dirs]
                        if self.config.train.get("tensorboard", True) and self.primary else [])

    def restore_or_init(self) -> tuple[steplib.TrainState, int]:
        """The state to continue from and its epoch (0: a fresh run)."""
        exp = self.experiment
        start_epoch = min(m.latest_step() or 0 for m in self.managers)
        if not start_epoch:
            return exp.init_state(), 0
        template = exp.state_template()
        states = [workdirlib.restore_state(m, start_epoch, template)[0] for m in self.managers]
        self.say(f"Resuming {self.workdir} from the checkpoint of epoch {start_epoch}.")
        return jax.device_put(steplib.stack_members(states), exp.replicated), start_epoch

    def run(self, stop_after_epoch: int | None) -> dict[str, Any]:
        exp, config = self.experiment, self.config
        state, start_epoch = self.restore_or_init()
        for directory in self.run_dirs if self.primary else []:
            # Drop records of epochs after the checkpoint so a resumed run logs each epoch once.
            path = directory / "metrics.jsonl"
            write_jsonl(path, [r for r in (read_jsonl(path) if path.exists() else []) if r.get("epoch", 0) <= start_epoch])
        if steplib.uses_data_joint(config):
            # The training set's p(y|z) at the state training continues from: the epoch-start
            # decoder of an interrupted epoch too, as that epoch restarts from this state's checkpoint.
            self.data_decoder = evaluation.evaluate_train_exact(
                self.eval_step, state, self.x_train, self.y_train, optimal_decoder=True, **self.eval_args)[1]
        example_idx = exp.epoch_batches(1)[0]
        compile_start = time.perf_counter()
        self.compiled_step = exp.train_step().lower(
            state, exp.zero_totals(), self.x_train, self.y_train, example_idx, self.train_key, self.gamma,
            self.data_decoder).compile()
        self.compile_seconds = time.perf_counter() - compile_start
        self.last_saved = start_epoch
        records: list[dict] = []
        num_epochs = config.train.num_epochs
        for epoch in range(start_epoch + 1, num_epochs + 1):
            epoch_start = time.perf_counter()
            state, totals, preempted = self.train_epoch(state, epoch)
            if preempted:
                return preempted
            train_seconds = time.perf_counter() - epoch_start
            state, records = self.end_epoch(state, totals, epoch, epoch == start_epoch + 1, epoch_start, train_seconds)
            # A signal that arrived after the epoch's last step stops here, with the epoch checkpointed.
            stopping = epoch < num_epochs and self.stop.agreed() is not None
            if (epoch % config.checkpoint.every_epochs == 0 or epoch in (num_epochs, stop_after_epoch) or stopping):
                self.save(state, epoch, records)
            workdirlib.clear_preempted(self.workdir)
            if stopping:
                return self.preempted(epoch, exp.steps_per_epoch)
            if stop_after_epoch is not None and epoch >= stop_after_epoch:
                break
        if not records:
            return {}
        result = dict(records[0], members=records) if len(self.run_dirs) > 1 or self.run_dirs[0] != self.workdir \
            else dict(records[0])
        signal_name = self.stop.agreed()
        if signal_name is not None:
            result["signal"] = signal_name  # finished anyway; callers (sweeps) should still stop
        return result

    def say(self, text: str) -> None:
        """Prints ``text`` (process 0 only in a multi-process run)."""
        if self.primary:
            print(text, flush=True)

    def preempted(self, epoch: int, step_in_epoch: int) -> dict[str, Any]:
        """The result of a run stopped by a signal (to this process or, multi-process, to any)."""
        result = {"preempted": True, "epoch": epoch, "step_in_epoch": step_in_epoch, "signal": self.stop.agreed()}
        if self.stop.signalled_process is not None:
            result["signalled_process"] = self.stop.signalled_process
        return result

    def train_epoch(self, state, epoch: int):
        """The epoch's steps: ``(state, totals, None)``, or a preemption result after a mid-epoch save."""
        exp = self.experiment
        steps = exp.steps_per_epoch
        batches = exp.epoch_batches(epoch)
        totals, first_step = exp.zero_totals(), 0
        resumed = workdirlib.load_preempted(self.workdir, epoch, state, totals)
        if resumed is not None:
            state, totals, first_step = resumed
            self.say(f"Resuming epoch {epoch} at step {first_step} of {steps}.")
        # Single-process: the flag is a Python attribute read, no round trip
        # to the device. Multi-process: after each step every process starts
        # gathering every process's flag (a collective) and reads the gather
        # of the step before, so all agree, and stop after the same step,
        # while the host stays a step ahead of the devices.
        multiprocess, gathered = workdirlib.is_multiprocess(), None
        with _progress(steps, first_step, epoch, self.config.train.get("progress_bar", True) and self.primary) as bar:
            for i in range(first_step, steps):
                state, totals = self.compiled_step(state, totals, self.x_train, self.y_train, batches[i],
                                                   self.train_key, self.gamma, self.data_decoder)
                bar.update(1)
                if i + 1 == steps:
                    break  # the end of the epoch checks for a signal after its evaluation
                if multiprocess:
                    stopping = gathered is not None and self.stop.agreed(gathered) is not None
                    gathered = None if stopping else self.stop.gather()
                else:
                    stopping = self.stop.signal is not None
                if stopping:
                    workdirlib.save_preempted(self.workdir, state, totals, epoch, i + 1)
                    return state, totals, self.preempted(epoch, i + 1)
        totals = jax.device_get(totals)
        for i in np.flatnonzero(totals["bad_step"] >= 0):
            raise NonFiniteError(_nonfinite_message(self.experiment.members[i], int(totals["bad_terms"][i]),
                                                    int(totals["bad_step"][i]), epoch, self._member_name(i),
                                                    self.last_saved))
        return state, totals, None

    def _member_label(self, i: int) -> str:
        """``gamma=G`` and/or ``seed=S``: what tells member ``i`` apart (empty for a single run)."""
        members = self.experiment.members
        member = members[i]
        parts = ([f"gamma={member.objective.gamma:g}"] if len({m.objective.gamma for m in members}) > 1 else []) + \
                ([f"seed={member.seed}"] if len({m.seed for m in members}) > 1 else [])
        return " and ".join(parts)

    def _member_name(self, i: int) -> str:
        return f", member {i} with {self._member_label(i)}" if self._member_label(i) else ""

    def end_epoch(self, state, totals, epoch: int, first: bool, epoch_start: float, train_seconds: float):
        """Capping, evaluation and the epoch's records (written and printed): ``(state, records)``."""
        exp, config = self.experiment, self.config
        capped: list[dict] = [{} for _ in exp.members]
        cap = capping.entropy_cap(config.capping.schedule, epoch)
        if cap is not None:
            # Section 7.2: cap after the epoch's training, before evaluation and the checkpoint.
            state, bounds = capping.cap_state(exp.model, config, state, self.x_train, cap, self.latent_fn)
            state = jax.device_put(state, exp.replicated)  # the compiled step expects replicated state
            accuracy = evaluation.evaluate(self.eval_step, state, self.x_train, self.y_train,
                                           **self.eval_args)["accuracy"]
            capped = [{"entropy_cap": cap, "latent_entropy_bound": b, "capped_train_error": 1.0 - float(a)}
                      for b, a in zip(bounds, accuracy)]
        decoder, train_eval = None, {}
        if config.model.latent == "categorical":
            # Exact quantities over the whole training set in eval mode (Figure 3).
            train_eval, decoder = evaluation.evaluate_train_exact(
                self.eval_step, state, self.x_train, self.y_train,
                optimal_decoder=config.objective.loss == "decoder_uncertainty", **self.eval_args)
            if steplib.uses_data_joint(config):
                self.data_decoder = decoder  # the next epoch trains with this epoch's p(y|z)
        test_eval = evaluation.evaluate(self.eval_step, state, self.x_test, self.y_test, decoder=decoder,
                                        **self.eval_args)
        epoch_seconds = time.perf_counter() - epoch_start
        lr = np.asarray(jax.device_get(steplib.learning_rate(config, state)))
        steps = np.asarray(jax.device_get(state.step))
        records = []
        for i, member in enumerate(exp.members):
            record = epoch_record(member, i, epoch, steps[i], totals, train_eval, test_eval, lr[i])
            record.update(examples_per_sec=exp.num_members * exp.steps_per_epoch * config.train.batch_size
                          / train_seconds, epoch_seconds=epoch_seconds, **capped[i])
            if first:
                record["compile_seconds"] = self.compile_seconds
            if self.primary:
                append_jsonl(self.run_dirs[i] / "metrics.jsonl", record)
            if self.writers:
                tensorboard.write_record_scalars(self.writers[i], record)
            label = self._member_label(i).replace("gamma=", "γ=").replace(" and ", " ")
            prefix = f"[{label}] " if label else ""
            self.say(prefix + summary_line(record))
            records.append(record)
        return state, records

    def save(self, state, epoch: int, records: list[dict]) -> None:
        for i, (manager, member) in enumerate(zip(self.managers, self.experiment.members)):
            meta = {"epoch": epoch, "config": configlib.to_dict(member), "metrics": records[i]}
            workdirlib.save_checkpoint(manager, epoch, steplib.member(state, i), meta)
        self.last_saved = epoch


def _progress(total: int, initial: int, epoch: int, enabled: bool):
    from tqdm.auto import tqdm

    return tqdm(total=total, initial=initial, desc=f"epoch {epoch}", unit="step", leave=False,
                disable=not enabled, file=sys.stderr)


def _nonfinite_message(config, bad_terms: int, step: int, epoch: int, member: str, last_epoch: int) -> str:
    terms = [name for i, name in enumerate(steplib.WATCHED_TERMS) if bad_terms >> i & 1]
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
    record.update({f"train_{k}": pick(totals[k]) / steps for k in steplib.metric_names(member)})
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
