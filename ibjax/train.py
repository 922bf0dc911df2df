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

import json
import os
import sys
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
from ibjax import information, losses, models
from ibjax.io import append_jsonl, atomic_write_text, read_jsonl, write_jsonl

__all__ = [
    "TrainState",
    "WorkdirError",
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


def _objective(config, num_classes: int, out, labels):
    """Training loss and batch-mean metrics for the configured objective."""
    objective = config.objective
    if config.model.latent == "continuous":
        return losses.surrogate_loss(
            out["logits"], out["z"], labels,
            regularizer=objective.regularizer, gamma=objective.gamma, num_classes=num_classes,
            cross_entropy=objective.cross_entropy, eps=objective.eps,
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


def _correct(logits: jax.Array, labels: jax.Array) -> jax.Array:
    """1.0 where the sample-averaged prediction p_Θ(ŷ|x) picks the label."""
    log_prediction = jax.nn.logsumexp(jax.nn.log_softmax(logits, axis=-1), axis=0)
    return (jnp.argmax(log_prediction, axis=-1) == labels).astype(jnp.float32)


def make_train_step(model, tx, config, num_classes: int, mesh: Mesh) -> Callable:
    """The jitted train step ``(state, totals, images, labels, batch_idx, rng) -> (state, totals)``.

    ``images``/``labels`` are the whole (replicated) training set on device;
    ``batch_idx`` ``[B]`` picks the batch, sharded over the mesh. ``totals``
    accumulates the batch-mean metrics and the step count on device.
    """
    batch_sharding = NamedSharding(mesh, P("data"))

    def step(state, totals, images, labels, batch_idx, rng):
        rng = jax.random.fold_in(rng, state.step)
        batch_idx = jax.lax.with_sharding_constraint(batch_idx, batch_sharding)
        x, y = images[batch_idx], labels[batch_idx]

        def loss_fn(params):
            out, new_batch_stats = _forward(model, config, params, state.batch_stats, x, rng, train=True)
            loss, metrics = _objective(config, num_classes, out, y)
            return loss, (metrics, new_batch_stats, out["logits"])

        (loss, (metrics, new_batch_stats, logits)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
        updates, opt_state = tx.update(grads, state.opt_state, state.params, value=loss)
        params = optax.apply_updates(state.params, updates)
        metrics = dict(metrics, accuracy=jnp.mean(_correct(logits, y)), steps=jnp.ones(()))
        totals = jax.tree.map(jnp.add, totals, metrics)
        new_state = state.replace(step=state.step + 1, params=params, batch_stats=new_batch_stats, opt_state=opt_state)
        return new_state, totals

    return jax.jit(step, donate_argnums=(0, 1))


def make_eval_step(model, config, num_classes: int, mesh: Mesh) -> Callable:
    """The jitted eval step ``(state, totals, images, labels, batch_idx, mask, rng, decoder) -> totals``.

    Sums over the real (``mask``) examples: correct predictions, decoder and
    prediction cross-entropies, the count, and for a categorical latent the
    joint p(z, y) (unnormalised). ``decoder`` ``[C, num_classes]``, if not
    None, replaces the learnt decoder matrix log p_Θ(ŷ|z) (the optimal decoder
    of a run that minimises H[Y|Z] directly, section 5.4).
    """
    batch_sharding = NamedSharding(mesh, P("data"))
    categorical = config.model.latent == "categorical"

    def step(state, totals, images, labels, batch_idx, mask, rng, decoder):
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

    return jax.jit(step, donate_argnums=(1,))


# --------------------------------------------------------------------------
# Workdir handling: config, metrics and checkpoints
# --------------------------------------------------------------------------


def _comparable(config_dict: dict, allow_num_epochs_change: bool) -> dict:
    out = json.loads(json.dumps(config_dict))
    ignored = _IGNORED_ON_RESUME + (("train.num_epochs",) if allow_num_epochs_change else ())
    for dotted in ignored:
        section, field = dotted.split(".")
        out.get(section, {}).pop(field, None)
    return out


def _claim_workdir(workdir: Path, config, allow_num_epochs_change: bool) -> None:
    """Writes config.json for a new run; refuses a workdir of a different run."""
    config_path = workdir / "config.json"
    current = configlib.to_dict(config)
    if config_path.exists():
        stored = configlib.from_json(config_path.read_text(), str(config_path)).to_dict()
        diffs = configlib.differences(
            _comparable(stored, allow_num_epochs_change), _comparable(current, allow_num_epochs_change)
        )
        if diffs:
            hint = (" Pass --allow_num_epochs_change to extend a run." if any(d.startswith("train.num_epochs") for d in diffs) else "")
            raise WorkdirError(
                f"{workdir} holds a run with a different config; refusing to touch its checkpoints. "
                "Use another --workdir. Differing fields:\n  " + "\n  ".join(diffs) + hint
            )
    elif (workdir / "checkpoints").exists():
        raise WorkdirError(f"{workdir} has checkpoints but no config.json; refusing to overwrite them.")
    workdir.mkdir(parents=True, exist_ok=True)
    atomic_write_text(config_path, configlib.to_json(config))


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


# --------------------------------------------------------------------------
# The run
# --------------------------------------------------------------------------


def _progress(total: int, epoch: int, enabled: bool):
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=f"epoch {epoch}", unit="step", leave=False, disable=not enabled, file=sys.stderr)


def load_data(config) -> datalib.Dataset:
    return datalib.load_dataset(
        config.data.name,
        source=config.data.source,
        path=config.data.path or None,
        split_at=config.data.split_at or None,
        permutation_seed=config.data.permutation_seed,
    )


def _evaluate(eval_step, state, images, labels, args, decoder=None):
    """Means of the eval step over every example of a split, each counted once."""
    idx, mask = datalib.eval_batches(int(images.shape[0]), args["batch_size"])
    idx, mask = jax.device_put((idx, mask), args["sharding"])
    totals = {k: jnp.zeros((), jnp.float32) for k in ("count", "decoder_cross_entropy", "prediction_cross_entropy", "correct")}
    if args["joint_shape"] is not None:
        totals["joint"] = jnp.zeros(args["joint_shape"], jnp.float32)
    totals = jax.device_put(totals, args["sharding"])
    for i in range(idx.shape[0]):
        totals = eval_step(state, totals, images, labels, idx[i], mask[i], jax.random.fold_in(args["rng"], i), decoder)
    totals = jax.device_get(totals)
    n = float(totals.pop("count"))
    summary = {k: float(v) / n for k, v in totals.items() if k != "joint"}
    summary["accuracy"] = summary.pop("correct")
    if "joint" in totals:
        summary["joint"] = totals["joint"] / n
    return summary


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
    fields listed, so one run never overwrites another's checkpoints.

    Args:
      config: experiment config (see ``configs/default.py``); validated first.
      workdir: run directory for ``config.json``, ``metrics.jsonl`` and
        ``checkpoints/``.
      stop_after_epoch: stop (after checkpointing) once this epoch is done, as
        if interrupted; a later call resumes.
      allow_num_epochs_change: resume even if ``train.num_epochs`` differs from
        the stored config (to extend a finished run).

    Returns:
      The metrics record of the last epoch run (empty if nothing was left to do).
    """
    if config.get("distributed", False):
        jax.distributed.initialize()
    mesh = make_mesh()
    configlib.validate(config, num_devices=mesh.size)
    workdir = Path(workdir)
    _claim_workdir(workdir, config, allow_num_epochs_change)

    dataset = load_data(config)
    num_classes = dataset.num_classes
    model = models.create_model(ml_collections.ConfigDict({**config.model.to_dict(), "dtype": config.dtype}), num_classes)
    batch_size = config.train.batch_size
    steps_per_epoch = dataset.x_train.shape[0] // batch_size
    if steps_per_epoch < 1:
        raise configlib.ConfigError(
            f"config.train.batch_size={batch_size} exceeds the {dataset.x_train.shape[0]} training examples."
        )
    tx = make_optimizer(config, steps_per_epoch)

    replicated = NamedSharding(mesh, P())
    batch_sharding = NamedSharding(mesh, P("data"))
    rows_sharding = NamedSharding(mesh, P(None, "data"))
    x_train, y_train, x_test, y_test = jax.device_put(
        (dataset.x_train, dataset.y_train, dataset.x_test, dataset.y_test), replicated
    )

    root = jax.random.key(config.seed)
    init_rng, train_rng, shuffle_rng, eval_rng = jax.random.split(root, 4)
    state = jax.device_put(create_train_state(init_rng, model, tx, dataset.image_shape), replicated)

    manager = _checkpoint_manager(workdir, config)
    start_epoch = manager.latest_step() or 0
    if start_epoch:
        state, _ = restore_state(manager, start_epoch, state)
        print(f"Resuming {workdir} from the checkpoint of epoch {start_epoch}.", flush=True)
    metrics_path = workdir / "metrics.jsonl"
    # Drop records of epochs after the checkpoint so a resumed run logs each epoch once.
    kept = [r for r in (read_jsonl(metrics_path) if metrics_path.exists() else []) if r.get("epoch", 0) <= start_epoch]
    write_jsonl(metrics_path, kept)

    categorical = config.model.latent == "categorical"
    optimal_decoder = config.objective.loss == "decoder_uncertainty"
    total_names = ("loss", "decoder_cross_entropy", "prediction_cross_entropy", "regularizer",
                   "training_error_bound", "accuracy", "steps") + (("decoder_uncertainty",) if categorical else ())

    def zero_totals():  # fresh buffers each epoch: the step donates them
        return jax.device_put({k: jnp.zeros((), jnp.float32) for k in total_names}, replicated)

    train_step = make_train_step(model, tx, config, num_classes, mesh)
    eval_step = make_eval_step(model, config, num_classes, mesh)
    example_idx = jax.device_put(jnp.zeros((batch_size,), jnp.int32), batch_sharding)
    compile_start = time.perf_counter()
    compiled_train_step = train_step.lower(
        state, zero_totals(), x_train, y_train, example_idx, train_rng
    ).compile()
    compile_seconds = time.perf_counter() - compile_start
    eval_args = dict(batch_size=config.train.eval_batch_size, rng=eval_rng, sharding=replicated,
                     joint_shape=(config.model.latent_dim, num_classes) if categorical else None)

    record: dict[str, Any] = {}
    num_epochs = config.train.num_epochs
    for epoch in range(start_epoch + 1, num_epochs + 1):
        epoch_start = time.perf_counter()
        batches = jax.device_put(
            datalib.epoch_batches(jax.random.fold_in(shuffle_rng, epoch), dataset.x_train.shape[0], batch_size),
            rows_sharding,
        )
        totals = zero_totals()
        with _progress(steps_per_epoch, epoch, config.train.get("progress_bar", True)) as bar:
            for i in range(steps_per_epoch):
                state, totals = compiled_train_step(state, totals, x_train, y_train, batches[i], train_rng)
                bar.update(1)
        totals = jax.device_get(totals)
        train_seconds = time.perf_counter() - epoch_start
        steps = float(totals.pop("steps"))
        record = {"epoch": epoch, "step": int(jax.device_get(state.step))}
        record.update({f"train_{k}": float(v) / steps for k, v in totals.items()})
        record["training_error_bound"] = record.pop("train_training_error_bound")

        decoder = None
        if categorical:
            # Exact quantities over the whole training set in eval mode (Figure 3).
            train_eval = _evaluate(eval_step, state, x_train, y_train, eval_args)
            joint = jnp.asarray(train_eval["joint"])
            if optimal_decoder:
                # Section 5.4: fix p_Θ(ŷ|z) := p(y|z) after each epoch, then evaluate with it.
                decoder = jax.device_put(jnp.log(information.optimal_decoder(joint)), replicated)
                train_eval = _evaluate(eval_step, state, x_train, y_train, eval_args, decoder)
            record["train_decoder_uncertainty"] = float(information.conditional_entropy(joint))
            record["train_exact_decoder_cross_entropy"] = train_eval["decoder_cross_entropy"]
            record["train_exact_prediction_cross_entropy"] = train_eval["prediction_cross_entropy"]
            record["train_exact_accuracy"] = train_eval["accuracy"]
        test_eval = _evaluate(eval_step, state, x_test, y_test, eval_args, decoder)
        record.update({
            "test_accuracy": test_eval["accuracy"],
            "test_decoder_cross_entropy": test_eval["decoder_cross_entropy"],
            "test_prediction_cross_entropy": test_eval["prediction_cross_entropy"],
            "learning_rate": float(learning_rate(config, state)),
            "examples_per_sec": steps_per_epoch * batch_size / train_seconds,
            "epoch_seconds": time.perf_counter() - epoch_start,
            "gamma": float(config.objective.gamma),
            "regularizer": config.objective.regularizer,
        })
        if epoch == start_epoch + 1:
            record["compile_seconds"] = compile_seconds
        append_jsonl(metrics_path, record)
        print(_summary_line(record), flush=True)

        if epoch % config.checkpoint.every_epochs == 0 or epoch == num_epochs or epoch == stop_after_epoch:
            meta = {"epoch": epoch, "config": configlib.to_dict(config), "metrics": record}
            manager.save(epoch, args=ocp.args.Composite(state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(meta)))
        if stop_after_epoch is not None and epoch >= stop_after_epoch:
            break
    manager.wait_until_finished()
    manager.close()
    return record


def _summary_line(record: dict) -> str:
    parts = [
        f"epoch {record['epoch']:3d}",
        f"train acc {record['train_accuracy']:.4f}",
        f"test acc {record['test_accuracy']:.4f}",
        f"H_Θ[Y|Z] {record['train_decoder_cross_entropy']:.4f}",
        f"H_Θ[Y|X] {record['train_prediction_cross_entropy']:.4f}",
    ]
    if "train_decoder_uncertainty" in record:
        parts.append(f"H[Y|Z] {record['train_decoder_uncertainty']:.4f}")
    parts += [
        f"{record['regularizer']} {record['train_regularizer']:.4f}",
        f"err≤ {record['training_error_bound']:.3f}",
        f"lr {record['learning_rate']:.2e}",
        f"{record['examples_per_sec']:.0f} ex/s",
    ]
    return " | ".join(parts)
