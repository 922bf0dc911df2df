"""The training loop: data on device, one compiled step, sharded over every device.

``train_and_evaluate(config, workdir)`` trains the model a config describes
with Adam and a reduce-on-plateau learning rate (section 7 of the paper),
writes one JSON line of metrics per epoch to ``workdir/metrics.jsonl`` and an
Orbax checkpoint per epoch to ``workdir/checkpoints``, and resumes from the
latest checkpoint when started again on the same workdir.

Throughput design:

* The whole data set lives on the device(s) as uint8, replicated; each epoch
  draws a permutation with ``jax.random.permutation`` and the step gathers its
  batch by index, so no host pipeline feeds the accelerator.
* One ``jax.jit`` train step, compiled ahead of time once per run, with its
  state buffers donated. The batch is sharded on its leading axis over a 1-D
  mesh of all devices and the parameters are replicated, so batch statistics
  (BatchNorm, the variance regularisers) are over the global batch.
* Metrics are summed on device inside the step and read once per epoch: no
  host round-trip inside an epoch.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import sys
import threading
import time
from pathlib import Path
from typing import Any, Callable

import flax
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import orbax.checkpoint as ocp
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from ibjax import config as configlib
from ibjax import data as datalib
from ibjax import capping, information, losses, models
from ibjax.io import append_jsonl, atomic_write_text, read_jsonl, write_jsonl

__all__ = [
    "TrainState",
    "WorkdirError",
    "NonFiniteError",
    "WorkdirLock",
    "StopRequests",
    "train_step_fn",
    "make_mesh",
    "make_optimizer",
    "create_train_state",
    "make_train_step",
    "make_eval_step",
    "train_and_evaluate",
]

_IGNORED_ON_RESUME = ("train.progress_bar",)


class WorkdirError(RuntimeError):
    """The workdir belongs to another run (different config) or is unusable."""


class TrainState(flax.struct.PyTreeNode):
    """Everything a step changes; the model and optimiser are static closures."""

    step: jax.Array
    params: Any
    batch_stats: Any
    opt_state: Any


# --------------------------------------------------------------------------
# Building blocks
# --------------------------------------------------------------------------


def make_mesh(devices=None) -> Mesh:
    """A 1-D data-parallel mesh named ``'data'`` over ``devices`` (default: all)."""
    devices = jax.devices() if devices is None else devices
    return Mesh(np.asarray(devices), ("data",))


def make_optimizer(config: ml_collections.ConfigDict, steps_per_epoch: int) -> optax.GradientTransformation:
    """Adam with the learning rate scaled by ``plateau_factor`` on plateaus.

    The plateau test runs on the training loss averaged over an epoch
    (``accumulation_size=steps_per_epoch``). ``plateau_patience`` counts the
    epochs without improvement that are tolerated: the rate drops on the next
    one, as in PyTorch's ``ReduceLROnPlateau(patience=3)`` that the paper used.
    """
    return optax.chain(
        optax.adam(config.train.learning_rate),
        optax.contrib.reduce_on_plateau(
            factor=config.train.plateau_factor,
            patience=config.train.plateau_patience + 1,
            accumulation_size=steps_per_epoch,
        ),
    )


def learning_rate(config: ml_collections.ConfigDict, state: TrainState) -> jax.Array:
    """The current learning rate: the base rate times the plateau scale."""
    return config.train.learning_rate * state.opt_state[1].scale


def create_train_state(
    rng: jax.Array, model: models.IBModel, tx: optax.GradientTransformation, image_shape
) -> TrainState:
    """Initialises parameters, BatchNorm statistics and optimiser state."""
    dummy = jnp.zeros((1, *image_shape), jnp.float32)
    variables = model.init({"params": rng, "dropout": rng, "noise": rng}, dummy, train=False, num_samples=1)
    params = variables["params"]
    return TrainState(
        step=jnp.zeros((), jnp.int32),
        params=params,
        batch_stats=variables.get("batch_stats", {}),
        opt_state=tx.init(params),
    )


def _forward(model, config, params, batch_stats, images, rng, train: bool):
    augment_rng, dropout_rng, noise_rng = jax.random.split(rng, 3)
    x = datalib.preprocess(images, config.data.name)
    if train and config.data.augment:
        x = datalib.random_crop_flip(augment_rng, x)
    variables = {"params": params}
    if batch_stats:
        variables["batch_stats"] = batch_stats
    kwargs = dict(train=train, num_samples=config.model.num_samples, rngs={"dropout": dropout_rng, "noise": noise_rng})
    if train and batch_stats:
        out, updates = model.apply(variables, x, mutable=["batch_stats"], **kwargs)
        return out, updates["batch_stats"]
    return model.apply(variables, x, **kwargs), batch_stats


def _categorical_terms(out, labels, num_classes, where=None):
    """The three metrics of Figure 3 for a categorical latent, per batch."""
    dce = information.categorical_decoder_cross_entropy(out["z_log_probs"], out["decoder_log_probs"], labels, where)
    pce = losses.prediction_cross_entropy(out["logits"], labels, where)
    z_probs = jnp.mean(jnp.exp(out["z_log_probs"]), axis=0)
    return dce, pce, z_probs


def _objective(config, num_classes: int, out, labels, gamma):
    """Training loss and batch-mean metrics for the configured objective."""
    objective = config.objective
    if config.model.latent in ("continuous", "vib"):
        return losses.surrogate_loss(
            out["logits"], out["z"], labels,
            regularizer=objective.regularizer, gamma=gamma, num_classes=num_classes,
            cross_entropy=objective.cross_entropy, eps=objective.eps,
            z_mean=out.get("z_mean"), z_scale=out.get("z_scale"),
        )
    dce, pce, z_probs = _categorical_terms(out, labels, num_classes)
    metrics = {
        "decoder_cross_entropy": jnp.mean(dce),
        "prediction_cross_entropy": jnp.mean(pce),
        "decoder_uncertainty": information.decoder_uncertainty(z_probs, labels, num_classes),
        "regularizer": jnp.zeros(()),
    }
    if objective.loss == "decoder_uncertainty":
        loss = metrics["decoder_uncertainty"]
    else:
        loss = metrics[f"{objective.cross_entropy}_cross_entropy"]
    metrics["loss"] = loss
    metrics["training_error_bound"] = losses.training_error_bound(loss)
    return loss, metrics


def entropy_cap(config, epoch: int) -> float | None:
    """The entropy cap (nats) applied after ``epoch`` (1-based); None when capping is off."""
    schedule = tuple(config.capping.schedule)
    return float(schedule[min(epoch, len(schedule)) - 1]) if schedule else None


def make_noise_free_latent_fn(model, config) -> Callable:
    """Jitted ``(params, batch_stats, images_uint8) -> Ẑ [B, K]``: the latent before its noise, eval mode."""

    @jax.jit
    def latent_fn(params, batch_stats, images):
        variables = {"params": params, **({"batch_stats": batch_stats} if batch_stats else {})}
        return capping.noise_free_latent(model, variables, datalib.preprocess(images, config.data.name))

    return latent_fn


def cap_entropy(latent_fn, model, config, state: TrainState, images, cap: float) -> tuple[TrainState, float]:
    """Section 7.2: rescales the latent to an entropy bound of ``cap`` nats, predictions unchanged.

    The moments come from the first ``config.capping.num_examples`` training
    images; returns the new state and the bound of the new latent on them.
    """
    n = min(config.capping.num_examples or images.shape[0], images.shape[0])
    size = config.train.eval_batch_size
    z = jnp.concatenate([latent_fn(state.params, state.batch_stats, images[i:min(i + size, n)])
                         for i in range(0, n, size)])
    mean, std = capping.latent_moments(z)
    params = capping.cap_latent_entropy(state.params, mean, std, cap, model=model)
    z_new = jnp.concatenate([latent_fn(params, state.batch_stats, images[i:min(i + size, n)])
                             for i in range(0, n, size)])
    return state.replace(params=params), float(capping.entropy_bound(z_new))


def _correct(logits: jax.Array, labels: jax.Array) -> jax.Array:
    """1.0 where the sample-averaged prediction p_Θ(ŷ|x) picks the label."""
    log_prediction = jax.nn.logsumexp(jax.nn.log_softmax(logits, axis=-1), axis=0)
    return (jnp.argmax(log_prediction, axis=-1) == labels).astype(jnp.float32)


#: Terms watched for NaN/Inf before each update, in the order of the bits of
#: ``totals["bad_terms"]``.
WATCHED_TERMS: tuple[str, ...] = ("cross_entropy", "regularizer", "loss", "gradient_norm")


def metric_names(config) -> tuple[str, ...]:
    """Names of the batch-mean metrics a train step accumulates."""
    names = ("loss", "decoder_cross_entropy", "prediction_cross_entropy", "regularizer",
             "training_error_bound", "accuracy", "gradient_norm")
    return names + (("decoder_uncertainty",) if config.model.latent == "categorical" else ())


def zero_totals(config) -> dict[str, jax.Array]:
    """Fresh per-epoch accumulators of a train step (the step donates them)."""
    totals = {k: jnp.zeros((), jnp.float32) for k in metric_names(config) + ("steps",)}
    totals["bad_step"] = jnp.full((), -1, jnp.int32)
    totals["bad_terms"] = jnp.zeros((), jnp.int32)
    return totals


def train_step_fn(model, tx, config, num_classes: int, mesh: Mesh, *, population: bool = False) -> Callable:
    """The pure train step ``(state, totals, images, labels, batch_idx, rng, gamma) -> (state, totals)``.

    ``images``/``labels`` are the whole (replicated) training set on device;
    ``batch_idx`` ``[B]`` picks the batch, sharded over the mesh; ``gamma`` is
    the regularisation weight. ``totals`` accumulates the batch-mean metrics
    on device. With ``population=True``, state, totals and ``gamma`` carry a
    leading member axis and the gradients and updates are vmapped over it:
    every member takes the same batch and the same randomness.

    Before the update is applied, the cross-entropy, the regulariser, the
    loss and the gradient norm are checked for NaN/Inf. A bad step changes
    nothing: the state stays at its last good value (in a population, every
    member's), ``totals["bad_step"]`` records the step and
    ``totals["bad_terms"]`` a bit per bad term (:data:`WATCHED_TERMS`), and
    every later step is skipped, so the host can report it at the end of the
    epoch without a round-trip per step. The skip is one conditional on a
    scalar, so the healthy path costs no select over the parameters.
    """
    batch_sharding = NamedSharding(mesh, P("data"))
    names = metric_names(config)
    ce_name = ("decoder_uncertainty" if config.objective.loss == "decoder_uncertainty"
               else f"{config.objective.cross_entropy}_cross_entropy")

    def gradients(state, x, y, rng, gamma):
        rng = jax.random.fold_in(rng, state.step)

        def loss_fn(params):
            out, new_batch_stats = _forward(model, config, params, state.batch_stats, x, rng, train=True)
            loss, metrics = _objective(config, num_classes, out, y, gamma)
            return loss, (metrics, new_batch_stats, out["logits"])

        (loss, (metrics, new_batch_stats, logits)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
        metrics = dict(metrics, accuracy=jnp.mean(_correct(logits, y)), gradient_norm=optax.tree.norm(grads))
        watched = (metrics[ce_name], metrics["regularizer"], loss, metrics["gradient_norm"])
        bad_bits = sum(jnp.where(jnp.isfinite(v), 0, 1 << i) for i, v in enumerate(watched))
        return grads, loss, metrics, new_batch_stats, bad_bits

    def update(state, grads, loss, new_batch_stats):
        updates, opt_state = tx.update(grads, state.opt_state, state.params, value=loss)
        return state.replace(step=state.step + 1, params=optax.apply_updates(state.params, updates),
                             batch_stats=new_batch_stats, opt_state=opt_state)

    if population:
        gradients = jax.vmap(gradients, in_axes=(0, None, None, None, 0))
        update = jax.vmap(update)

    def step(state, totals, images, labels, batch_idx, rng, gamma):
        batch_idx = jax.lax.with_sharding_constraint(batch_idx, batch_sharding)
        x, y = images[batch_idx], labels[batch_idx]
        grads, loss, metrics, new_batch_stats, bad_bits = gradients(state, x, y, rng, gamma)
        healthy = jnp.all(totals["bad_step"] < 0)
        ok = jnp.all(bad_bits == 0) & healthy
        first_bad = (bad_bits > 0) & healthy
        new_state = jax.lax.cond(ok, lambda s: update(s, grads, loss, new_batch_stats), lambda s: s, state)
        new_totals = {k: totals[k] + jnp.where(ok, metrics[k], 0.0) for k in names}
        new_totals["steps"] = totals["steps"] + ok
        new_totals["bad_step"] = jnp.where(first_bad, state.step, totals["bad_step"])
        new_totals["bad_terms"] = jnp.where(first_bad, bad_bits, totals["bad_terms"])
        return new_state, new_totals

    return step


def make_train_step(model, tx, config, num_classes: int, mesh: Mesh, *, population: bool = False) -> Callable:
    """:func:`train_step_fn`, jitted with state and totals donated.

    With ``population=True`` one compiled step advances every member of a
    population (state, totals and ``gamma`` stacked on a leading axis) on the
    same batch with the same randomness.
    """
    return jax.jit(train_step_fn(model, tx, config, num_classes, mesh, population=population), donate_argnums=(0, 1))


def make_eval_step(model, config, num_classes: int, mesh: Mesh, *, population: bool = False) -> Callable:
    """The jitted eval step ``(state, totals, images, labels, batch_idx, mask, rng, decoder) -> totals``.

    Sums over the real (``mask``) examples: correct predictions, decoder and
    prediction cross-entropies, the count, and for a categorical latent the
    joint p(z, y) (unnormalised). ``decoder`` ``[C, num_classes]``, if not
    None, replaces the learnt decoder matrix log p_Θ(ŷ|z) (the optimal decoder
    of a run that minimises H[Y|Z] directly, section 5.4). With
    ``population=True`` state, totals and decoder carry a member axis.
    """
    batch_sharding = NamedSharding(mesh, P("data"))
    categorical = config.model.latent == "categorical"

    def eval_step(state, totals, images, labels, batch_idx, mask, rng, decoder):
        batch_idx = jax.lax.with_sharding_constraint(batch_idx, batch_sharding)
        x, y = images[batch_idx], labels[batch_idx]
        out, _ = _forward(model, config, state.params, state.batch_stats, x, rng, train=False)
        w = mask.astype(jnp.float32)
        sums = {"count": jnp.sum(w)}
        if categorical:
            if decoder is not None:
                out = dict(out, decoder_log_probs=decoder, logits=models.prediction_log_probs(out["z_log_probs"], decoder))
            dce, pce, z_probs = _categorical_terms(out, y, num_classes, mask)
            sums["joint"] = information.categorical_joint(z_probs, y, num_classes, mask) * sums["count"]
        else:
            dce = losses.decoder_cross_entropy(out["logits"], y, mask)
            pce = losses.prediction_cross_entropy(out["logits"], y, mask)
        sums["decoder_cross_entropy"] = jnp.sum(dce)
        sums["prediction_cross_entropy"] = jnp.sum(pce)
        sums["correct"] = jnp.sum(_correct(out["logits"], y) * w)
        return jax.tree.map(jnp.add, totals, sums)

    if population:
        eval_step = jax.vmap(eval_step, in_axes=(0, 0, None, None, None, None, None, 0))
    return jax.jit(eval_step, donate_argnums=(1,))


# --------------------------------------------------------------------------
# Workdir handling: lock, config, metrics and checkpoints
# --------------------------------------------------------------------------


class NonFiniteError(FloatingPointError):
    """Training produced NaN/Inf; the update was not applied and nothing was saved."""


def _comparable(config_dict: dict, allow_num_epochs_change: bool) -> dict:
    out = configlib.with_defaults(json.loads(json.dumps(config_dict)))
    ignored = _IGNORED_ON_RESUME + (("train.num_epochs",) if allow_num_epochs_change else ())
    for dotted in ignored:
        section, field = dotted.split(".")
        out.get(section, {}).pop(field, None)
    return out


def _check_workdir(workdir: Path, config, allow_num_epochs_change: bool) -> None:
    """Refuses a workdir that holds a different run; touches nothing."""
    config_path = workdir / "config.json"
    if config_path.exists():
        stored = configlib.from_json(config_path.read_text(), str(config_path)).to_dict()
        diffs = configlib.differences(
            _comparable(stored, allow_num_epochs_change), _comparable(configlib.to_dict(config), allow_num_epochs_change)
        )
        if diffs:
            hint = (" Pass --allow_num_epochs_change to extend a run."
                    if any(d.startswith("train.num_epochs") for d in diffs) else "")
            raise WorkdirError(
                f"{workdir} holds a run with a different config; refusing to touch its checkpoints. "
                "Use another --workdir. Differing fields:\n  " + "\n  ".join(diffs) + hint
            )
    elif (workdir / "checkpoints").exists():
        raise WorkdirError(f"{workdir} has checkpoints but no config.json; refusing to overwrite them.")


def _claim_workdir(workdir: Path, config) -> None:
    workdir.mkdir(parents=True, exist_ok=True)
    atomic_write_text(workdir / "config.json", configlib.to_json(config))


class WorkdirLock:
    """One live run per workdir: ``workdir/lock`` holds the owner's host and pid.

    A lock whose process no longer exists on this host (a killed run) is
    stale and taken over. Created with O_EXCL, so two starts cannot both win.
    """

    def __init__(self, workdir: Path):
        self.path = Path(workdir) / "lock"
        self.owner = f"{socket.gethostname()} {os.getpid()}"

    def _holder(self) -> tuple[str, int] | None:
        try:
            host, pid = self.path.read_text().split()
            return host, int(pid)
        except (FileNotFoundError, ValueError):
            return None

    def __enter__(self):
        self.path.parent.mkdir(parents=True, exist_ok=True)
        for _ in range(2):
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                holder = self._holder()
                if holder and holder[0] == socket.gethostname() and _process_alive(holder[1]):
                    raise WorkdirError(
                        f"{self.path.parent} is in use by a live run (host {holder[0]}, pid {holder[1]}); "
                        "wait for it or use another --workdir."
                    ) from None
                if holder and holder[0] != socket.gethostname():
                    raise WorkdirError(
                        f"{self.path.parent} is locked by host {holder[0]} (pid {holder[1]}); if that run is dead, "
                        f"delete {self.path}."
                    ) from None
                print(f"Taking over the stale lock {self.path} ({holder}).", flush=True)
                self.path.unlink(missing_ok=True)
                continue
            with os.fdopen(fd, "w") as f:
                f.write(self.owner)
            return self
        raise WorkdirError(f"could not lock {self.path}.")

    def __exit__(self, *exc):
        if self._holder() == (socket.gethostname(), os.getpid()):
            self.path.unlink(missing_ok=True)


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class StopRequests:
    """Turns SIGTERM/SIGINT into a flag checked between steps or runs (a second SIGINT aborts).

    Args:
      message: printed when the first signal arrives.
    """

    def __init__(self, message: str = "finishing the current step and saving a checkpoint."):
        self.signal = None
        self.message = message

    def __enter__(self):
        self._previous = {}
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGTERM, signal.SIGINT):
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum, frame):
        if self.signal is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.signal = signal.Signals(signum).name
        print(f"\n{self.signal} received: {self.message}", file=sys.stderr, flush=True)

    def __exit__(self, *exc):
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)


def _checkpoint_manager(workdir: Path, config) -> ocp.CheckpointManager:
    keep = config.checkpoint.max_to_keep or None
    options = ocp.CheckpointManagerOptions(max_to_keep=keep, create=True)
    return ocp.CheckpointManager(workdir / "checkpoints", options=options, item_names=("state", "meta"))


def restore_state(manager: ocp.CheckpointManager, epoch: int, like: TrainState) -> tuple[TrainState, dict]:
    """Restores the train state (with ``like``'s shardings) and metadata of an epoch."""
    abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, like)
    restored = manager.restore(
        epoch, args=ocp.args.Composite(state=ocp.args.StandardRestore(abstract), meta=ocp.args.JsonRestore())
    )
    return restored.state, restored.meta


_PREEMPTED = "preempted"


def _save_preempted(workdir: Path, state, totals, epoch: int, step_in_epoch: int) -> None:
    """Mid-epoch checkpoint; its JSON marker is written last, so a torn save is never read."""
    marker = workdir / f"{_PREEMPTED}.json"
    marker.unlink(missing_ok=True)
    directory = (workdir / _PREEMPTED).absolute()
    if directory.exists():
        shutil.rmtree(directory)
    with ocp.StandardCheckpointer() as checkpointer:
        checkpointer.save(directory, {"state": state, "totals": totals})
        checkpointer.wait_until_finished()
    atomic_write_text(marker, json.dumps({"epoch": epoch, "step_in_epoch": step_in_epoch}))


def _load_preempted(workdir: Path, epoch: int, state, totals):
    """The mid-epoch checkpoint of ``epoch``, if there is one: (state, totals, step_in_epoch)."""
    marker = workdir / f"{_PREEMPTED}.json"
    if not marker.exists():
        return None
    meta = json.loads(marker.read_text())
    if meta.get("epoch") != epoch:
        return None
    abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, {"state": state, "totals": totals})
    with ocp.StandardCheckpointer() as checkpointer:
        restored = checkpointer.restore((workdir / _PREEMPTED).absolute(), abstract)
    return restored["state"], restored["totals"], int(meta["step_in_epoch"])


def _clear_preempted(workdir: Path) -> None:
    (workdir / f"{_PREEMPTED}.json").unlink(missing_ok=True)
    shutil.rmtree(workdir / _PREEMPTED, ignore_errors=True)


# --------------------------------------------------------------------------
# The run
# --------------------------------------------------------------------------


def _progress(total: int, initial: int, epoch: int, enabled: bool):
    from tqdm.auto import tqdm

    return tqdm(total=total, initial=initial, desc=f"epoch {epoch}", unit="step", leave=False,
                disable=not enabled, file=sys.stderr)


def load_data(config) -> datalib.Dataset:
    """The data set a config names (host uint8 arrays)."""
    return datalib.load_dataset(
        config.data.name,
        source=config.data.source,
        path=config.data.path or None,
        split_at=config.data.split_at or None,
        permutation_seed=config.data.permutation_seed,
    )


def _evaluate(eval_step, state, images, labels, args, decoder=None):
    """Means of the eval step over every example of a split, each counted once (per member)."""
    idx, mask = datalib.eval_batches(int(images.shape[0]), args["batch_size"])
    idx, mask = jax.device_put((idx, mask), args["sharding"])
    lead = args["lead"]
    totals = {k: jnp.zeros(lead, jnp.float32) for k in ("count", "decoder_cross_entropy", "prediction_cross_entropy", "correct")}
    if args["joint_shape"] is not None:
        totals["joint"] = jnp.zeros(lead + args["joint_shape"], jnp.float32)
    totals = jax.device_put(totals, args["sharding"])
    for i in range(idx.shape[0]):
        totals = eval_step(state, totals, images, labels, idx[i], mask[i], jax.random.fold_in(args["rng"], i), decoder)
    totals = jax.device_get(totals)
    n = totals.pop("count")
    summary = {k: v / n for k, v in totals.items() if k != "joint"}
    summary["accuracy"] = summary.pop("correct")
    if "joint" in totals:
        summary["joint"] = totals["joint"] / (n[..., None, None] if lead else n)
    return summary


def member_config(config: ml_collections.ConfigDict, gamma: float) -> ml_collections.ConfigDict:
    """The standalone config of one population member: the same run with its own γ."""
    member = ml_collections.ConfigDict(config.to_dict())
    member.objective.gamma = float(gamma)
    member.population.gammas = ()
    return member


def member_workdir(workdir: Path, index: int, gamma: float) -> Path:
    return Path(workdir) / f"member{index:02d}_gamma{gamma:g}"


def _nonfinite_message(config, bad_terms: int, step: int, epoch: int, member: str, last_epoch: int) -> str:
    terms = [name for i, name in enumerate(WATCHED_TERMS) if bad_terms >> i & 1]
    o = config.objective
    drivers = (f"objective.loss={o.loss}, objective.cross_entropy={o.cross_entropy}, "
               f"objective.regularizer={o.regularizer}, objective.gamma={o.gamma:g}, objective.eps={o.eps:g}, "
               f"train.learning_rate={config.train.learning_rate:g}, dtype={config.dtype}")
    kept = f"the checkpoint of epoch {last_epoch} is untouched" if last_epoch else "no checkpoint was written"
    return (f"non-finite {', '.join(terms)} at step {step} (epoch {epoch}{member}); the update was not applied "
            f"and {kept}. Values that drive it: {drivers}.")


def train_and_evaluate(
    config: ml_collections.ConfigDict,
    workdir: str | os.PathLike,
    *,
    stop_after_epoch: int | None = None,
    allow_num_epochs_change: bool = False,
) -> dict[str, Any]:
    """Trains and evaluates the model of ``config``, checkpointing into ``workdir``.

    Running it again on the same ``workdir`` with the same config resumes from
    the latest checkpoint; a different config is refused with the differing
    fields listed, so one run never overwrites another's checkpoints. A live
    run holds ``workdir/lock``.

    With ``config.population.gammas`` set, one compiled step trains a member
    per γ (the same config otherwise, the same data order and randomness);
    each member is a complete run of its own in ``workdir/memberNN_gammaG``.

    SIGTERM/SIGINT finish the current step, save a mid-epoch checkpoint and
    return ``{"preempted": True, ...}``; the same call resumes exactly there.
    A NaN/Inf in the loss, regulariser, cross-entropy or gradient norm raises
    :class:`NonFiniteError` before the bad update is applied or anything saved.

    Args:
      config: experiment config (see ``configs/default.py``); validated first.
      workdir: run directory for ``config.json``, ``metrics.jsonl`` and
        ``checkpoints/``.
      stop_after_epoch: stop (after checkpointing) once this epoch is done, as
        if interrupted; a later call resumes.
      allow_num_epochs_change: resume even if ``train.num_epochs`` differs from
        the stored config (to extend a finished run).

    Returns:
      The metrics record of the last epoch run (for a population, of its
      first member, with ``"members"`` holding all); empty if nothing was
      left to do.
    """
    if config.get("distributed", False):
        jax.distributed.initialize()
    mesh = make_mesh()
    configlib.validate(config, num_devices=mesh.size)
    workdir = Path(workdir).absolute()  # Orbax needs absolute paths
    gammas = tuple(float(g) for g in config.population.gammas)
    population = bool(gammas)
    members = [member_config(config, g) for g in gammas] if population else [config]
    member_dirs = [member_workdir(workdir, i, g) for i, g in enumerate(gammas)] if population else [workdir]
    _check_workdir(workdir, config, allow_num_epochs_change)
    for member, directory in zip(members, member_dirs):
        if population:
            _check_workdir(directory, member, allow_num_epochs_change)
    dataset = load_data(config)

    with WorkdirLock(workdir), StopRequests() as stop:
        _claim_workdir(workdir, config)
        for member, directory in zip(members, member_dirs):
            _claim_workdir(directory, member)
        return _run(config, workdir, mesh, dataset, gammas, members, member_dirs, stop, stop_after_epoch)


def _run(config, workdir, mesh, dataset, gammas, members, member_dirs, stop, stop_after_epoch):
    population = bool(gammas)
    num_members = len(members)
    num_classes = dataset.num_classes
    model = models.create_model(ml_collections.ConfigDict({**config.model.to_dict(), "dtype": config.dtype}), num_classes)
    batch_size = config.train.batch_size
    steps_per_epoch = dataset.x_train.shape[0] // batch_size
    if steps_per_epoch < 1:
        raise configlib.ConfigError(
            f"config.train.batch_size={batch_size} exceeds the {dataset.x_train.shape[0]} training examples."
        )
    tx = make_optimizer(config, steps_per_epoch)

    init_rng, train_rng, shuffle_rng, eval_rng = jax.random.split(jax.random.key(config.seed), 4)
    replicated = NamedSharding(mesh, P())
    batch_sharding = NamedSharding(mesh, P("data"))
    rows_sharding = NamedSharding(mesh, P(None, "data"))
    x_train, y_train, x_test, y_test = jax.device_put(
        (dataset.x_train, dataset.y_train, dataset.x_test, dataset.y_test), replicated
    )

    def stack(trees):
        return jax.tree.map(lambda *xs: jnp.stack(xs), *trees) if population else trees[0]

    def member_of(tree, i):
        return jax.tree.map(lambda x: x[i], tree) if population else tree

    with contextlib.ExitStack() as cleanup:
        managers = [_checkpoint_manager(d, m) for d, m in zip(member_dirs, members)]
        for manager in managers:
            # Finish pending asynchronous saves on every exit path, errors
            # included, so the last good checkpoint is never left half-written.
            cleanup.callback(manager.close)
            cleanup.callback(manager.wait_until_finished)
        single = create_train_state(init_rng, model, tx, dataset.image_shape)
        start_epoch = min(m.latest_step() or 0 for m in managers)
        if start_epoch:
            like = jax.device_put(single, replicated)
            state = stack([restore_state(m, start_epoch, like)[0] for m in managers])
            print(f"Resuming {workdir} from the checkpoint of epoch {start_epoch}.", flush=True)
        else:
            state = stack([single] * num_members)
        state = jax.device_put(state, replicated)
        gamma = jax.device_put(jnp.asarray(gammas if population else config.objective.gamma, jnp.float32), replicated)

        def fresh_totals():
            return jax.device_put(stack([zero_totals(config)] * num_members), replicated)

        metrics_paths = [d / "metrics.jsonl" for d in member_dirs]
        for path in metrics_paths:
            # Drop records of epochs after the checkpoint so a resumed run logs each epoch once.
            kept = [r for r in (read_jsonl(path) if path.exists() else []) if r.get("epoch", 0) <= start_epoch]
            write_jsonl(path, kept)

        categorical = config.model.latent == "categorical"
        optimal_decoder = config.objective.loss == "decoder_uncertainty"
        train_step = make_train_step(model, tx, config, num_classes, mesh, population=population)
        eval_step = make_eval_step(model, config, num_classes, mesh, population=population)
        example_idx = jax.device_put(jnp.zeros((batch_size,), jnp.int32), batch_sharding)
        compile_start = time.perf_counter()
        compiled_step = train_step.lower(state, fresh_totals(), x_train, y_train, example_idx, train_rng, gamma).compile()
        compile_seconds = time.perf_counter() - compile_start
        noise_free_latent_fn = make_noise_free_latent_fn(model, config) if config.capping.schedule else None
        eval_args = dict(batch_size=config.train.eval_batch_size, rng=eval_rng, sharding=replicated,
                         lead=(num_members,) if population else (),
                         joint_shape=(config.model.latent_dim, num_classes) if categorical else None)

        records: list[dict] = []
        last_saved = start_epoch
        num_epochs = config.train.num_epochs
        for epoch in range(start_epoch + 1, num_epochs + 1):
            epoch_start = time.perf_counter()
            batches = jax.device_put(
                datalib.epoch_batches(jax.random.fold_in(shuffle_rng, epoch), dataset.x_train.shape[0], batch_size),
                rows_sharding,
            )
            totals, first_step = fresh_totals(), 0
            resumed = _load_preempted(workdir, epoch, state, totals)
            if resumed is not None:
                state, totals, first_step = resumed
                print(f"Resuming epoch {epoch} at step {first_step} of {steps_per_epoch}.", flush=True)
            with _progress(steps_per_epoch, first_step, epoch, config.train.get("progress_bar", True)) as bar:
                for i in range(first_step, steps_per_epoch):
                    state, totals = compiled_step(state, totals, x_train, y_train, batches[i], train_rng, gamma)
                    bar.update(1)
                    if stop.signal is not None and i + 1 < steps_per_epoch:
                        _save_preempted(workdir, state, totals, epoch, i + 1)
                        return {"preempted": True, "epoch": epoch, "step_in_epoch": i + 1, "signal": stop.signal}
            totals = jax.device_get(totals)
            train_seconds = time.perf_counter() - epoch_start
            bad = np.atleast_1d(totals["bad_step"])
            for i in np.flatnonzero(bad >= 0):
                member = f", member {i} with gamma={gammas[i]:g}" if population else ""
                raise NonFiniteError(_nonfinite_message(members[i], int(np.atleast_1d(totals["bad_terms"])[i]),
                                                        int(bad[i]), epoch, member, last_saved))

            cap = entropy_cap(config, epoch)
            capped = {}
            if cap is not None:
                # Section 7.2: cap after the epoch's training, before evaluation and the checkpoint.
                state, bound = cap_entropy(noise_free_latent_fn, model, config, state, x_train, cap)
                state = jax.device_put(state, replicated)  # the compiled step expects replicated state
                accuracy = _evaluate(eval_step, state, x_train, y_train, eval_args)["accuracy"]
                capped = {"entropy_cap": cap, "latent_entropy_bound": bound,
                          "capped_train_error": 1.0 - float(accuracy)}

            decoder = None
            train_eval = {}
            if categorical:
                # Exact quantities over the whole training set in eval mode (Figure 3).
                train_eval = _evaluate(eval_step, state, x_train, y_train, eval_args)
                joint = jnp.asarray(train_eval["joint"])
                if optimal_decoder:
                    # Section 5.4: fix p_Θ(ŷ|z) := p(y|z) after each epoch, then evaluate with it.
                    optimal = jax.vmap(information.optimal_decoder) if population else information.optimal_decoder
                    decoder = jax.device_put(jnp.log(optimal(joint)), replicated)
                    train_eval = dict(_evaluate(eval_step, state, x_train, y_train, eval_args, decoder), joint=train_eval["joint"])
            test_eval = _evaluate(eval_step, state, x_test, y_test, eval_args, decoder)
            epoch_seconds = time.perf_counter() - epoch_start
            lr = np.atleast_1d(jax.device_get(learning_rate(config, state)))
            records = []
            for i, member in enumerate(members):
                record = _epoch_record(config, member, i, population, epoch, np.atleast_1d(jax.device_get(state.step))[i],
                                       totals, train_eval, test_eval, lr[i])
                record.update({
                    "examples_per_sec": num_members * steps_per_epoch * batch_size / train_seconds,
                    "epoch_seconds": epoch_seconds,
                    **capped,
                })
                if epoch == start_epoch + 1:
                    record["compile_seconds"] = compile_seconds
                append_jsonl(metrics_paths[i], record)
                print(("" if not population else f"[γ={gammas[i]:g}] ") + _summary_line(record), flush=True)
                records.append(record)

            # A signal that arrived after the epoch's last step stops here, with
            # the epoch checkpointed.
            stopping = stop.signal is not None and epoch < num_epochs
            if (epoch % config.checkpoint.every_epochs == 0 or epoch == num_epochs or epoch == stop_after_epoch
                    or stopping):
                for i, (manager, member) in enumerate(zip(managers, members)):
                    meta = {"epoch": epoch, "config": configlib.to_dict(member), "metrics": records[i]}
                    manager.save(epoch, args=ocp.args.Composite(
                        state=ocp.args.StandardSave(member_of(state, i)), meta=ocp.args.JsonSave(meta)))
                last_saved = epoch
            _clear_preempted(workdir)
            if stopping:
                return {"preempted": True, "epoch": epoch, "step_in_epoch": steps_per_epoch, "signal": stop.signal}
            if stop_after_epoch is not None and epoch >= stop_after_epoch:
                break
        if not records:
            return {}
        result = dict(records[0], members=records) if population else dict(records[0])
        if stop.signal is not None:
            result["signal"] = stop.signal  # finished anyway; callers (sweeps) should still stop
        return result



def _epoch_record(config, member, i, population, epoch, step, totals, train_eval, test_eval, lr) -> dict:
    """One member's metrics record of an epoch (``i`` indexes the member axis of a population)."""
    def pick(value):
        return float(np.asarray(value)[i]) if population else float(value)

    steps = pick(totals["steps"])
    record = {"epoch": epoch, "step": int(step)}
    record.update({f"train_{k}": pick(totals[k]) / steps for k in metric_names(config)})
    record["training_error_bound"] = record.pop("train_training_error_bound")
    if train_eval:
        joint = np.asarray(train_eval["joint"])[i] if population else np.asarray(train_eval["joint"])
        record["train_decoder_uncertainty"] = float(information.conditional_entropy(jnp.asarray(joint)))
        for name in ("decoder_cross_entropy", "prediction_cross_entropy", "accuracy"):
            record[f"train_exact_{name}"] = pick(train_eval[name])
    for name in ("accuracy", "decoder_cross_entropy", "prediction_cross_entropy"):
        record[f"test_{name}"] = pick(test_eval[name])
    record.update({"learning_rate": float(lr), "gamma": float(member.objective.gamma),
                   "regularizer": member.objective.regularizer})
    return record


def _summary_line(record: dict) -> str:
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
