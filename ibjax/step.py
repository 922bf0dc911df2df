"""The pure training step: state, optimiser, forward pass, objective, train step.

A run is a *population* of M ≥ 1 members: every leaf of the :class:`TrainState`
and of the step's totals carries a leading member axis, and so do γ and the
step's random keys. A single run is a population of one, and the same
compiled step trains one model or a γ-population of many (section 7.3 sweeps
γ; one vmapped step advances every member on the same batch).

Throughput design (see also :mod:`ibjax.train`):

* The whole training set is on the device(s), replicated; the step gathers
  its batch by index, and the batch indices are sharded over a 1-D ``'data'``
  mesh, so batch statistics (BatchNorm, the variance regularisers) are over
  the global batch.
* The loop runs K steps a call (:func:`train_steps_fn`, a ``lax.scan``
  taking each batch from the epoch's indices on the device), jitted with
  state and totals donated. Metrics are summed on device into the totals
  and read once per epoch.
* A NaN/Inf is caught before the update, by one conditional on a scalar: the
  healthy path costs no select over the parameters.
"""

from __future__ import annotations

from typing import Any, Callable

import flax
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from ibjax import data as datalib
from ibjax import config as configlib
from ibjax import latents, models

__all__ = [
    "TrainState",
    "NonFiniteError",
    "WATCHED_TERMS",
    "MEMBER_MAPS",
    "make_mesh",
    "make_optimizer",
    "plateau_window",
    "learning_rate",
    "create_train_state",
    "stack_members",
    "member",
    "forward",
    "objective",
    "correct",
    "metric_names",
    "uses_data_joint",
    "zero_totals",
    "train_steps_fn",
    "make_train_steps",
    "train_step_fn",
    "make_train_step",
]


class TrainState(flax.struct.PyTreeNode):
    """Everything a step changes; the model and optimiser are static closures.

    In a run every leaf has a leading member axis ``[M, ...]``;
    :func:`create_train_state` makes one member and :func:`stack_members`
    stacks them.
    """

    step: jax.Array
    params: Any
    batch_stats: Any
    opt_state: Any


class NonFiniteError(FloatingPointError):
    """Training produced NaN/Inf; the update was not applied and nothing was saved."""


#: Terms watched for NaN/Inf before each update, in the order of the bits of
#: ``totals["bad_terms"]``.
WATCHED_TERMS: tuple[str, ...] = ("cross_entropy", "regularizer", "loss", "gradient_norm")

#: How the per-member gradient and update are mapped over the member axis:
#: ``'vmap'`` batches the members into one computation; ``'sequential'``
#: unrolls one copy of the member's computation per member inside the same
#: compiled step (for M = 1 exactly the unbatched step).
MEMBER_MAPS: tuple[str, ...] = ("vmap", "sequential")


def make_mesh(devices=None) -> Mesh:
    """A 1-D data-parallel mesh named ``'data'`` over ``devices`` (default: all)."""
    devices = jax.devices() if devices is None else devices
    return Mesh(np.asarray(devices), ("data",))


def make_optimizer(config: ml_collections.ConfigDict, steps_per_epoch: int) -> optax.GradientTransformation:
    """Adam with the learning rate scaled by ``plateau_factor`` on plateaus.

    The plateau test runs on the training loss averaged over a window of
    :func:`plateau_window` steps: ``train.plateau_examples`` examples (the
    paper's 60,000-image MNIST epoch by default, so a smaller training set
    does not cut the rate sooner in steps), or one epoch of the training set
    when it is 0. ``plateau_patience`` counts the windows without improvement
    that are tolerated: the rate drops on the next one, as in PyTorch's
    ``ReduceLROnPlateau(patience=3)`` stepped once per epoch, which the paper used.
    """
    return optax.chain(
        optax.adam(config.train.learning_rate),
        optax.contrib.reduce_on_plateau(
            factor=config.train.plateau_factor,
            patience=config.train.plateau_patience + 1,
            accumulation_size=plateau_window(config, steps_per_epoch),
        ),
    )


def plateau_window(config: ml_collections.ConfigDict, steps_per_epoch: int) -> int:
    """Optimiser steps per plateau test: ⌈plateau_examples / batch_size⌉, or ``steps_per_epoch`` if that is 0.

    60,000 examples at batch 128 give 469 steps, the paper's MNIST epoch
    (PyTorch's DataLoader keeps the last, partial batch).
    """
    examples = configlib.value_or_default(config, "train.plateau_examples")
    return steps_per_epoch if examples == 0 else -(-examples // config.train.batch_size)


def learning_rate(config: ml_collections.ConfigDict, state: TrainState) -> jax.Array:
    """The current learning rate, ``[M]`` for a run: the base rate times the plateau scale.

    The reduce-on-plateau state is found by its type wherever it sits in the
    optimiser state, not by its position in the chain; a lookup of the bare
    name ``scale`` would also match BatchNorm's ``scale`` parameters inside
    Adam's moments.
    """
    plateau = [node for node in jax.tree.leaves(state.opt_state, is_leaf=_is_plateau_state) if _is_plateau_state(node)]
    if len(plateau) != 1:
        raise ValueError(f"the optimiser state must hold one reduce-on-plateau state; found {len(plateau)}.")
    return config.train.learning_rate * plateau[0].scale


def _is_plateau_state(node) -> bool:
    return isinstance(node, optax.contrib.ReduceLROnPlateauState)


def create_train_state(
    rng: jax.Array, model: models.IBModel, tx: optax.GradientTransformation, image_shape
) -> TrainState:
    """One member's parameters, BatchNorm statistics and optimiser state (no member axis).

    ``model.param_init='pytorch'`` re-draws the layers as PyTorch initialises
    them (:func:`ibjax.models.pytorch_default_init`).
    """
    dummy = jnp.zeros((1, *image_shape), jnp.float32)
    variables = model.init({"params": rng, "dropout": rng, "noise": rng}, dummy, train=False, num_samples=1)
    params = variables["params"]
    if model.param_init == "pytorch":
        params = models.pytorch_default_init(jax.random.fold_in(rng, 1), params)
    return TrainState(
        step=jnp.zeros((), jnp.int32),
        params=params,
        batch_stats=variables.get("batch_stats", {}),
        opt_state=tx.init(params),
    )


def stack_members(trees) -> Any:
    """Stacks per-member pytrees on a new leading member axis."""
    return jax.tree.map(lambda *xs: jnp.stack(xs), *trees)


def member(tree: Any, index: int) -> Any:
    """Member ``index`` of a pytree with a leading member axis."""
    return jax.tree.map(lambda x: x[index], tree)


def forward(model, config, params, batch_stats, images, rng, train: bool):
    """One member's forward pass on uint8 ``images``: ``(outputs, new batch_stats)``.

    Preprocessing (and, in training, CIFAR's crop and flip) runs here, on
    the device. ``rng`` is split into the augmentation, Dropout and noise keys.
    """
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


def objective(config, num_classes: int, out, labels, gamma, data_decoder=None):
    """One member's training loss and batch-mean metrics for the configured objective.

    ``data_decoder`` ``[C, num_classes]``: log p(y|z) of the whole training
    set's joint (``objective.joint='epoch'``), held fixed. The loss
    mean_b Σ_z p_Θ(z|x_b) (−log p(y_b|z)) then has the gradient of appendix
    A.3 with the data set's p(y|z) instead of the batch's, and its value
    estimates the data-level H[Y|Z] without the batch plug-in's downward bias.
    """
    return latents.of(config.model).objective(config, num_classes, out, labels, gamma, data_decoder)


def correct(logits: jax.Array, labels: jax.Array) -> jax.Array:
    """1.0 where the sample-averaged prediction p_Θ(ŷ|x) picks the label."""
    log_prediction = jax.nn.logsumexp(jax.nn.log_softmax(logits, axis=-1), axis=0)
    return (jnp.argmax(log_prediction, axis=-1) == labels).astype(jnp.float32)


def metric_names(config) -> tuple[str, ...]:
    """Names of the batch-mean metrics a train step accumulates."""
    names = ("loss", "decoder_cross_entropy", "prediction_cross_entropy", "regularizer",
             "training_error_bound", "accuracy", "gradient_norm") + latents.of(config.model).metric_names()
    return names + (("data_decoder_uncertainty",) if uses_data_joint(config) else ())


def uses_data_joint(config) -> bool:
    """Whether the step minimises H[Y|Z] with the training set's p(y|z) (``objective.joint='epoch'``)."""
    return config.objective.loss == "decoder_uncertainty" and configlib.value_or_default(config, "objective.joint") == "epoch"


def zero_totals(config, num_members: int) -> dict[str, jax.Array]:
    """Fresh per-epoch accumulators ``[M]`` of a train step (the step donates them)."""
    totals = {k: jnp.zeros((num_members,), jnp.float32) for k in metric_names(config) + ("steps",)}
    totals["bad_step"] = jnp.full((num_members,), -1, jnp.int32)
    totals["bad_terms"] = jnp.zeros((num_members,), jnp.int32)
    return totals


def _map_members(fn: Callable, in_axes: tuple, how: str) -> Callable:
    """``fn`` mapped over the member axis of the arguments whose ``in_axes`` entry is 0."""
    if how == "vmap":
        return jax.vmap(fn, in_axes=in_axes)

    def sequential(*args):
        count = next(jax.tree.leaves(a)[0].shape[0] for a, axis in zip(args, in_axes) if axis == 0)
        outs = [fn(*(member(a, i) if axis == 0 else a for a, axis in zip(args, in_axes))) for i in range(count)]
        return stack_members(outs)

    return sequential


def _squeeze(tree):
    return jax.tree.map(lambda x: x.reshape(x.shape[1:]), tree)


def _unsqueeze(tree):
    return jax.tree.map(lambda x: x.reshape((1, *x.shape)), tree)


def _step_parts(model, tx, config, num_classes: int):
    """One member's ``gradients`` and ``update``, and ``guarded``: a step that applies them only if all is finite."""
    names = metric_names(config)
    ce_name = ("decoder_uncertainty" if config.objective.loss == "decoder_uncertainty"
               else f"{config.objective.cross_entropy}_cross_entropy")

    def gradients(state, x, y, rng, gamma, data_decoder):
        rng = jax.random.fold_in(rng, state.step)

        def loss_fn(params):
            out, new_batch_stats = forward(model, config, params, state.batch_stats, x, rng, train=True)
            loss, metrics = objective(config, num_classes, out, y, gamma, data_decoder)
            return loss, (metrics, new_batch_stats, out["logits"])

        (loss, (metrics, new_batch_stats, logits)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
        metrics = dict(metrics, accuracy=jnp.mean(correct(logits, y)), gradient_norm=optax.tree.norm(grads))
        watched = (metrics[ce_name], metrics["regularizer"], loss, metrics["gradient_norm"])
        bad_bits = sum(jnp.where(jnp.isfinite(v), 0, 1 << i) for i, v in enumerate(watched))
        return grads, loss, metrics, new_batch_stats, bad_bits

    def update(state, grads, loss, new_batch_stats):
        updates, opt_state = tx.update(grads, state.opt_state, state.params, value=loss)
        return state.replace(step=state.step + 1, params=optax.apply_updates(state.params, updates),
                             batch_stats=new_batch_stats, opt_state=opt_state)

    def guarded(state, totals, x, y, rng, gamma, data_decoder, active, member_gradients, member_update):
        grads, loss, metrics, new_batch_stats, bad_bits = member_gradients(state, x, y, rng, gamma, data_decoder)
        healthy = jnp.all(totals["bad_step"] < 0)
        # A masked step (past the epoch's end) is computed but neither applied nor counted.
        ok = jnp.all(bad_bits == 0) & healthy & active
        first_bad = (bad_bits > 0) & healthy & active
        new_state = jax.lax.cond(ok, lambda s: member_update(s, grads, loss, new_batch_stats), lambda s: s, state)
        new_totals = {k: totals[k] + jnp.where(ok, metrics[k], 0.0) for k in names}
        new_totals["steps"] = totals["steps"] + ok
        new_totals["bad_step"] = jnp.where(first_bad, state.step, totals["bad_step"])
        new_totals["bad_terms"] = jnp.where(first_bad, bad_bits, totals["bad_terms"])
        return new_state, new_totals

    return gradients, update, guarded


def train_steps_fn(model, tx, config, num_classes: int, mesh: Mesh, num_steps: int, *,
                   member_map: str = "vmap") -> Callable:
    """The pure K-step function ``(state, totals, images, labels, batches, first, rng, gamma[, data_decoder])``.

    Runs the steps ``first, first + 1, …, first + num_steps − 1`` of an epoch
    in one ``lax.scan``, each exactly the step of :func:`train_step_fn` (the
    same per-step keys ``fold_in(rng, state.step)``, metric totals and
    NaN/Inf guard), and returns ``(state, totals, first + num_steps)``.
    ``batches`` is the epoch's batch indices on the device, ``[steps, B]``
    shared by every member or ``[steps, M, B]`` one batch per member (see
    :func:`train_step_fn`); each step takes its row inside the compiled
    function. Steps at or past ``steps`` are skipped (a masked tail: the state
    and totals pass through unchanged), so one executable serves full
    epochs, resumed partial epochs and an epoch's last, shorter chunk.
    ``first`` is an int32 scalar on the device; the returned position feeds
    the next call without a transfer from the host.

    Args:
      model, tx, config, num_classes, mesh, member_map: as for :func:`train_step_fn`.
      num_steps: K, the steps of one call (static).
    """
    if member_map not in MEMBER_MAPS:
        raise ValueError(f"`member_map` must be one of {MEMBER_MAPS}; got {member_map!r}.")
    if not isinstance(num_steps, int) or isinstance(num_steps, bool) or num_steps < 1:
        raise ValueError(f"`num_steps` must be a positive int; got {num_steps!r}.")
    gradients, update, guarded = _step_parts(model, tx, config, num_classes)

    def train_steps(state, totals, images, labels, batches, first, rng, gamma, data_decoder=None):
        shared = batches.ndim == 2
        spec = P("data") if shared else P(None, "data")
        num_batches = batches.shape[0]
        # One member runs the unbatched step between two free reshapes: inside the
        # conditional update, a leading axis of 1 makes XLA copy every parameter and
        # optimiser buffer each step (2x the step time of the MLP on a CPU).
        single = state.step.shape[0] == 1
        if single:
            state, totals, rng, gamma, data_decoder = _squeeze((state, totals, rng, gamma, data_decoder))
            member_gradients, member_update = gradients, update
        else:
            data_axis = None if shared else 0
            member_gradients = _map_members(gradients, (0, data_axis, data_axis, 0, 0, 0), member_map)
            member_update = _map_members(update, (0, 0, 0, 0), member_map)

        def one_step(carry, position):
            state, totals = carry
            active = position < num_batches
            batch_idx = jax.lax.dynamic_index_in_dim(batches, jnp.minimum(position, num_batches - 1), keepdims=False)
            batch_idx = jax.lax.with_sharding_constraint(batch_idx, NamedSharding(mesh, spec))
            x, y = images[batch_idx], labels[batch_idx]
            if single and not shared:
                x, y = x[0], y[0]
            return guarded(state, totals, x, y, rng, gamma, data_decoder, active, member_gradients,
                           member_update), None

        if num_steps == 1:
            # No loop around a single step: inside a while loop XLA:CPU computes a convolution's
            # gradient about 40x slower than outside it (see Experiment.steps_per_call).
            (state, totals), _ = one_step((state, totals), first)
        else:
            positions = first + jnp.arange(num_steps, dtype=jnp.int32)
            (state, totals), _ = jax.lax.scan(one_step, (state, totals), positions)
        if single:
            state, totals = _unsqueeze((state, totals))
        return state, totals, first + num_steps

    return train_steps


def make_train_steps(model, tx, config, num_classes: int, mesh: Mesh, num_steps: int, *,
                     member_map: str = "vmap") -> Callable:
    """:func:`train_steps_fn`, jitted with state and totals donated (pass them positionally)."""
    return jax.jit(train_steps_fn(model, tx, config, num_classes, mesh, num_steps, member_map=member_map),
                   donate_argnums=(0, 1))


def train_step_fn(model, tx, config, num_classes: int, mesh: Mesh, *, member_map: str = "vmap") -> Callable:
    """The pure train step ``(state, totals, images, labels, batch_idx, rng, gamma[, data_decoder]) -> (state, totals)``.

    ``state``, ``totals``, ``rng`` (one key per member) and ``gamma`` carry a
    leading member axis; ``images``/``labels`` are the whole (replicated)
    training set on device. ``batch_idx`` picks the batch, sharded over the
    mesh: ``[B]`` is one batch every member trains on (a γ-population, whose
    members also share their keys), ``[M, B]`` one batch per member (a seed
    population, whose members are independent trials). ``data_decoder``
    ``[M, C, num_classes]`` is the log p(y|z) of the training set's joint for
    ``objective.joint='epoch'`` (see :func:`objective`); None otherwise.

    Before the update is applied, the cross-entropy, the regulariser, the
    loss and the gradient norm are checked for NaN/Inf. A bad step changes
    nothing: every member's state stays at its last good value,
    ``totals["bad_step"]`` records the step and ``totals["bad_terms"]`` a bit
    per bad term (:data:`WATCHED_TERMS`) of each member that went bad, and
    every later step is skipped, so the host can report it at the end of the
    epoch without a round-trip per step.

    It is :func:`train_steps_fn` with K = 1 on a one-row epoch (the loop runs
    K steps a call; this form serves tests and benchmarks). ``model``,
    ``tx``: the :class:`ibjax.models.IBModel` and the optimiser; ``mesh``: the
    ``'data'`` mesh the batch is sharded over; ``member_map``: one of :data:`MEMBER_MAPS`.
    """
    steps = train_steps_fn(model, tx, config, num_classes, mesh, 1, member_map=member_map)

    def step(state, totals, images, labels, batch_idx, rng, gamma, data_decoder=None):
        state, totals, _ = steps(state, totals, images, labels, batch_idx[None], jnp.zeros((), jnp.int32), rng,
                                 gamma, data_decoder)
        return state, totals

    return step


def make_train_step(model, tx, config, num_classes: int, mesh: Mesh, *, member_map: str = "vmap") -> Callable:
    """:func:`train_step_fn`, jitted with state and totals donated."""
    return jax.jit(train_step_fn(model, tx, config, num_classes, mesh, member_map=member_map), donate_argnums=(0, 1))
