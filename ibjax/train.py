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
are drawn on the device in one call, and the training runs K steps a call
(``train.steps_per_call``; :func:`ibjax.step.train_steps_fn`: a ``lax.scan``
that takes each batch from the epoch's indices inside the compiled function),
compiled once ahead of time with its state donated. Metrics stay on the
device until the epoch ends; evaluation is one compiled pass per split. The
host decides when (epochs, checkpoints, signals, the progress bar, once per
call), the device what.

The loop reads top to bottom: :func:`train_and_evaluate` checks and claims
the workdir, then restores or initialises the state, and for every epoch
:func:`train_epoch`, :func:`end_epoch` (capping and evaluation),
:func:`write_records` and a checkpoint. What one epoch hands to the next
(the state, and the training set's p(y|z) of ``objective.joint='epoch'``) is
passed and returned.

Multi-process (``jax.distributed``, :func:`initialize_distributed`): the mesh
spans every process's devices and each process feeds its shard of the global
batch; every process runs the same loop, process 0 alone writes
``config.json``, ``metrics.jsonl``, TensorBoard files and the lock and prints,
every process takes part in each checkpoint (Orbax's multi-host protocol), and
a stop request to any process is agreed on once per call, so all stop at
the same step with one mid-epoch checkpoint.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import sys
import time
from pathlib import Path
from typing import Any, Callable

import jax
import ml_collections
import numpy as np

from ibjax import capping, evaluation, latents
from ibjax import config as configlib
from ibjax import data as datalib
from ibjax import experiment as experimentlib
from ibjax import records as recordslib
from ibjax import step as steplib
from ibjax import summaries
from ibjax import workdir as workdirlib
from ibjax.io import append_jsonl, read_jsonl, write_jsonl
from ibjax.step import NonFiniteError
from ibjax.workdir import WorkdirError

__all__ = ["train_and_evaluate", "initialize_distributed", "train_epoch", "end_epoch", "write_records",
           "NonFiniteError", "WorkdirError"]


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
    stop_after_step: int | None = None,
    allow_num_epochs_change: bool = False,
    dataset: datalib.Dataset | None = None,
) -> dict[str, Any]:
    """Trains and evaluates the run of ``config``, checkpointing into ``workdir``.

    Running it again on the same ``workdir`` with the same config resumes from
    the latest checkpoint; a different config is refused with the differing
    fields listed, so one run never overwrites another's checkpoints. The
    workdir is claimed (``config.json`` written) only after every check that
    can fail has passed: the config's fields, the data set, the batch size
    and the workdir. A live run holds ``workdir/lock``.

    SIGTERM/SIGINT finish the current call of K steps, save a mid-epoch
    checkpoint and return ``{"preempted": True, ...}``; the same call resumes
    exactly there (with any ``train.steps_per_call``). In a multi-process run
    a signal to any process stops every process at the same step.
    A NaN/Inf in the loss, regulariser, cross-entropy or gradient norm raises
    :class:`NonFiniteError` before the bad update is applied or anything saved.

    Args:
      config: experiment config (see ``configs/default.py``).
      workdir: run directory for ``config.json``, ``metrics.jsonl`` and
        ``checkpoints/``.
      stop_after_epoch: stop (after checkpointing) once this epoch is done, as
        if interrupted; a later call resumes.
      stop_after_step: stop with a mid-epoch checkpoint at the first boundary
        between two calls at or after this optimiser step of the run, as a
        signal would; a later call resumes there.
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
    if configlib.value_or_default(config, "distributed"):
        initialize_distributed()
    experiment = experimentlib.setup(config, dataset=dataset)  # validates the config, loads the data
    workdir = Path(workdir).absolute()  # Orbax needs absolute paths
    run_dirs = experimentlib.member_workdirs(config, workdir)
    claims = [(workdir, config)] + ([] if run_dirs == [workdir] else list(zip(run_dirs, experiment.members)))
    for directory, member in claims:
        workdirlib.check_workdir(directory, member, allow_num_epochs_change)

    with workdirlib.WorkdirLock(workdir), workdirlib.StopRequests() as stop, contextlib.ExitStack() as cleanup:
        for directory, member in claims:
            workdirlib.claim_workdir(directory, member)
        run = open_run(experiment, workdir, run_dirs, stop, cleanup)
        state, start_epoch = restore_or_init(run)
        drop_records_after(run, start_epoch)
        # objective.joint='epoch': the training set's p(y|z) at the state training continues
        # from (an interrupted epoch restarts from this state's checkpoint too); None otherwise.
        data_decoder = epoch_decoder(run, state) if steplib.uses_data_joint(config) else None
        compile_start = time.perf_counter()
        train_steps = experiment.train_steps().lower(
            state, experiment.zero_totals(), run.x_train, run.y_train, experiment.epoch_batches(1),
            experimentlib.put(np.int32(0), experiment.replicated), run.train_key, run.gamma, data_decoder).compile()
        compile_seconds = time.perf_counter() - compile_start

        num_epochs, last_saved, records = config.train.num_epochs, start_epoch, []
        for epoch in range(start_epoch + 1, num_epochs + 1):
            epoch_start = time.perf_counter()
            state, totals, preempted = train_epoch(run, train_steps, state, epoch, data_decoder, last_saved,
                                                   stop_after_step)
            if preempted:
                return preempted
            train_seconds = time.perf_counter() - epoch_start
            state, evaluations, data_decoder = end_epoch(run, state, epoch, data_decoder)
            timing = dict(examples_per_sec=experiment.num_members * experiment.steps_per_epoch
                          * config.train.batch_size / train_seconds,
                          epoch_seconds=time.perf_counter() - epoch_start)
            if epoch == start_epoch + 1:
                timing["compile_seconds"] = compile_seconds
            records = write_records(run, state, totals, epoch, evaluations, timing)
            # A signal that arrived after the epoch's last step stops here, with the epoch checkpointed.
            stopping = epoch < num_epochs and stop.agreed() is not None
            if epoch % config.checkpoint.every_epochs == 0 or epoch in (num_epochs, stop_after_epoch) or stopping:
                save(run, state, epoch, records)
                last_saved = epoch
            workdirlib.clear_preempted(workdir)
            if stopping:
                return preempted_result(run, epoch, experiment.steps_per_epoch)
            if stop_after_epoch is not None and epoch >= stop_after_epoch:
                break
        return final_result(run, records)


@dataclasses.dataclass(frozen=True)
class Run:
    """What stays fixed while a claimed run trains: the experiment, its directories, data and functions."""

    experiment: experimentlib.Experiment
    workdir: Path
    run_dirs: list[Path]
    stop: workdirlib.StopRequests
    managers: list
    writers: list
    figure_writer: Any
    monitor: summaries.InformationPlaneMonitor | None
    primary: bool
    x_train: jax.Array
    y_train: jax.Array
    x_test: jax.Array
    y_test: jax.Array
    train_key: jax.Array
    eval_key: jax.Array
    gamma: jax.Array
    evaluator: Callable
    latent_fn: Callable | None

    @property
    def config(self) -> ml_collections.ConfigDict:
        return self.experiment.config

    def say(self, text: str) -> None:
        """Prints ``text`` (process 0 only in a multi-process run)."""
        if self.primary:
            print(text, flush=True)


def open_run(experiment: experimentlib.Experiment, workdir: Path, run_dirs: list[Path],
             stop: workdirlib.StopRequests, cleanup: contextlib.ExitStack) -> Run:
    """Opens the checkpoint managers and TensorBoard writers (closed by ``cleanup``) and puts the data on the device."""
    config = experiment.config
    managers = [workdirlib.checkpoint_manager(d, config.checkpoint.max_to_keep) for d in run_dirs]
    for manager in managers:
        # Finish pending asynchronous saves on every exit path, errors
        # included, so the last good checkpoint is never left half-written.
        cleanup.callback(manager.close)
        cleanup.callback(manager.wait_until_finished)
    primary = workdirlib.is_primary()
    # TensorBoard event files beside each metrics.jsonl (which stays what analysis and plots read).
    tensorboard = configlib.value_or_default(config, "train.tensorboard") and primary
    writers = [summaries.open_writer(d, latest_epoch(managers)) for d in run_dirs] if tensorboard else []
    # A population's information plane is one figure, beside its members.
    figure_writer = (writers[0] if run_dirs == [workdir] else summaries.open_writer(workdir, latest_epoch(managers))
                     ) if tensorboard else None
    for writer in writers + ([figure_writer] if figure_writer not in writers + [None] else []):
        cleanup.callback(writer.close)
    # In-loop information plane (single-process: its estimators read the latents on the host).
    monitor = summaries.InformationPlaneMonitor(experiment) if configlib.value_or_default(config, "train.analyze_every") else None
    if monitor is not None and workdirlib.is_multiprocess():
        print("train.analyze_every is ignored in a multi-process run; run scripts/analyze.py on its checkpoints.")
        monitor = None
    keys = experiment.keys()
    return Run(experiment=experiment, workdir=workdir, run_dirs=run_dirs, stop=stop, managers=managers,
               writers=writers, figure_writer=figure_writer, monitor=monitor, primary=primary,
               **dict(zip(("x_train", "y_train", "x_test", "y_test"),
                                                            experiment.device_data())),
               train_key=keys["train"], eval_key=keys["eval"], gamma=experiment.gammas(),
               evaluator=experiment.evaluator(),
               latent_fn=capping.make_latent_fn(experiment.model, config) if config.capping.schedule else None)


def restore_or_init(run: Run) -> tuple[steplib.TrainState, int]:
    """The state to continue from and its epoch (0: a fresh run)."""
    exp = run.experiment
    start_epoch = latest_epoch(run.managers)
    if not start_epoch:
        return exp.init_state(), 0
    template = exp.state_template()
    states = [workdirlib.restore_state(m, start_epoch, template)[0] for m in run.managers]
    run.say(f"Resuming {run.workdir} from the checkpoint of epoch {start_epoch}.")
    return jax.device_put(steplib.stack_members(states), exp.replicated), start_epoch


def latest_epoch(managers) -> int:
    """The epoch every member has a checkpoint of, that a run resumes from (0: none)."""
    return min(m.latest_step() or 0 for m in managers)


def drop_records_after(run: Run, epoch: int) -> None:
    """Drops the records of epochs after the checkpoint, so a resumed run logs each epoch once."""
    for directory in run.run_dirs if run.primary else []:
        path = directory / "metrics.jsonl"
        write_jsonl(path, [r for r in (read_jsonl(path) if path.exists() else []) if r.get("epoch", 0) <= epoch])


def epoch_decoder(run: Run, state) -> jax.Array:
    """log p(y|z) of the whole training set at ``state`` ``[M, C, num_classes]`` (``objective.joint='epoch'``)."""
    return evaluation.evaluate_train_exact(run.evaluator, state, run.x_train, run.y_train, rng=run.eval_key,
                                           optimal_decoder=True)[1]


def train_epoch(run: Run, train_steps: Callable, state, epoch: int, data_decoder, last_saved: int,
                stop_after_step: int | None = None):
    """The epoch's steps, K a call: ``(state, host totals, None)``, or a preemption result after a mid-epoch save.

    A signal (or, with ``stop_after_step``, that step of the run) stops it at
    the next boundary between two calls.

    Raises:
      NonFiniteError: a step went NaN/Inf (its update was not applied);
        ``last_saved`` is the epoch of the last checkpoint, named in the message.
    """
    exp = run.experiment
    steps, per_call = exp.steps_per_epoch, exp.steps_per_call
    batches = exp.epoch_batches(epoch)
    totals, position = exp.zero_totals(), 0
    resumed = workdirlib.load_preempted(run.workdir, epoch, state, totals)
    if resumed is not None:
        state, totals, position = resumed
        run.say(f"Resuming epoch {epoch} at step {position} of {steps}.")
    first = experimentlib.put(np.int32(position), exp.replicated)
    # Single-process: the flag is a Python attribute read, no round trip to the
    # device. Multi-process: after each call every process starts gathering
    # every process's flag (a collective) and reads the gather of the call
    # before, so all agree and stop after the same call, while the host stays
    # a call ahead of the devices.
    multiprocess, gathered = workdirlib.is_multiprocess(), None
    with _progress(steps, position, epoch, configlib.value_or_default(run.config, "train.progress_bar") and run.primary) as bar:
        while position < steps:
            state, totals, first = train_steps(state, totals, run.x_train, run.y_train, batches, first,
                                               run.train_key, run.gamma, data_decoder)
            bar.update(min(per_call, steps - position))
            position = min(position + per_call, steps)
            if position == steps:
                break  # the end of the epoch checks for a signal after its evaluation
            if multiprocess:
                stopping = gathered is not None and run.stop.agreed(gathered) is not None
                gathered = None if stopping else run.stop.gather()
            else:
                stopping = run.stop.signal is not None
            stopping |= stop_after_step is not None and (epoch - 1) * steps + position >= stop_after_step
            if stopping:
                workdirlib.save_preempted(run.workdir, state, totals, epoch, position)
                return state, totals, preempted_result(run, epoch, position)
    totals = jax.device_get(totals)
    for i in np.flatnonzero(totals["bad_step"] >= 0):
        label = recordslib.member_label(exp.members, i)
        raise NonFiniteError(recordslib.nonfinite_message(
            exp.members[i], int(totals["bad_terms"][i]), int(totals["bad_step"][i]), epoch,
            f", member {i} with {label}" if label else "", last_saved))
    return state, totals, None


def end_epoch(run: Run, state, epoch: int, data_decoder):
    """Capping and evaluation after an epoch's training: ``(state, evaluations, data_decoder)``.

    ``evaluations`` holds ``"capped"`` (a dict per member, empty without
    capping), ``"train"`` (the exact categorical train-set evaluation, empty
    for other latents) and ``"test"``; ``data_decoder`` is the next epoch's
    (``objective.joint='epoch'``: this epoch's p(y|z); else unchanged).
    """
    exp, config = run.experiment, run.config
    capped: list[dict] = [{} for _ in exp.members]
    cap = capping.entropy_cap(config.capping.schedule, epoch)
    if cap is not None:
        # Section 7.2: cap after the epoch's training, before evaluation and the checkpoint.
        state, bounds = capping.cap_state(exp.model, config, state, run.x_train, cap, run.latent_fn)
        state = jax.device_put(state, exp.replicated)  # the compiled step expects replicated state
        accuracy = evaluation.evaluate(run.evaluator, state, run.x_train, run.y_train, rng=run.eval_key)["accuracy"]
        capped = [{"entropy_cap": cap, "latent_entropy_bound": b, "capped_train_error": 1.0 - float(a)}
                  for b, a in zip(bounds, accuracy)]
    decoder, train_eval = None, {}
    if latents.of(config.model).discrete:
        # Exact quantities over the whole training set in eval mode (Figure 3).
        train_eval, decoder = evaluation.evaluate_train_exact(
            run.evaluator, state, run.x_train, run.y_train, rng=run.eval_key,
            optimal_decoder=config.objective.loss == "decoder_uncertainty")
        if steplib.uses_data_joint(config):
            data_decoder = decoder  # the next epoch trains with this epoch's p(y|z)
    test_eval = evaluation.evaluate(run.evaluator, state, run.x_test, run.y_test, rng=run.eval_key, decoder=decoder)
    return state, {"capped": capped, "train": train_eval, "test": test_eval}, data_decoder


def write_records(run: Run, state, totals, epoch: int, evaluations: dict, timing: dict) -> list[dict]:
    """Every member's record of the epoch, appended to its ``metrics.jsonl`` and TensorBoard, and printed."""
    exp = run.experiment
    lr = np.asarray(jax.device_get(steplib.learning_rate(run.config, state)))
    steps = np.asarray(jax.device_get(state.step))
    records = [dict(recordslib.epoch_record(member, i, epoch, steps[i], totals, evaluations["train"],
                                            evaluations["test"], lr[i]), **timing, **evaluations["capped"][i])
               for i, member in enumerate(exp.members)]
    analysed = run.monitor is not None and run.monitor.due(epoch)
    if analysed:
        for record, plane in zip(records, run.monitor.records(state, epoch, records)):
            record[summaries.INFORMATION_PLANE] = plane
    for i, record in enumerate(records):
        if run.writers:  # TensorBoard first: the metrics.jsonl line is what marks the epoch as written
            summaries.write_record(run.writers[i], record)
        if run.primary:
            append_jsonl(run.run_dirs[i] / "metrics.jsonl", record)
        label = recordslib.member_label(exp.members, i).replace("gamma=", "γ=").replace(" and ", " ")
        run.say((f"[{label}] " if label else "") + recordslib.summary_line(record))
    if run.figure_writer is not None and analysed and run.monitor.figure_due(epoch):
        summaries.write_information_plane(run.figure_writer, run.run_dirs, epoch)
    return records


def save(run: Run, state, epoch: int, records: list[dict]) -> None:
    """Every member's checkpoint of ``epoch``, with its config and record as metadata."""
    for i, (manager, member) in enumerate(zip(run.managers, run.experiment.members)):
        meta = {"epoch": epoch, "config": configlib.to_dict(member), "metrics": records[i]}
        workdirlib.save_checkpoint(manager, epoch, steplib.member(state, i), meta)


def preempted_result(run: Run, epoch: int, step_in_epoch: int) -> dict[str, Any]:
    """The result of a run stopped by a signal (to this process or, multi-process, to any)."""
    result = {"preempted": True, "epoch": epoch, "step_in_epoch": step_in_epoch, "signal": run.stop.agreed()}
    if run.stop.signalled_process is not None:
        result["signalled_process"] = run.stop.signalled_process
    return result


def final_result(run: Run, records: list[dict]) -> dict[str, Any]:
    """The last epoch's record (a population's first member's, with all under ``"members"``); {} if none ran."""
    if not records:
        return {}
    result = dict(records[0], members=records) if run.run_dirs != [run.workdir] else dict(records[0])
    signal_name = run.stop.agreed()
    if signal_name is not None:
        result["signal"] = signal_name  # finished anyway; callers (sweeps) should still stop
    return result


def _progress(total: int, initial: int, epoch: int, enabled: bool):
    from tqdm.auto import tqdm

    return tqdm(total=total, initial=initial, desc=f"epoch {epoch}", unit="step", leave=False,
                disable=not enabled, file=sys.stderr)
