"""Build a run from its config, or restore one from its workdir: the public way in.

:func:`setup` turns an experiment config into an :class:`Experiment`: the
validated config, its members (one, or one per γ of ``population.gammas``),
the data set, the device mesh, the model, the optimiser and the number of
steps an epoch. Training (:mod:`ibjax.train`), analysis, sweeps and the
benchmarks all build their runs through it, so the mesh → model → optimiser
→ state → step sequence is written once. :func:`restore_run` opens a trained
run's checkpoints read-only, for evaluators that never retrain.

Example:
  >>> from ibjax import config as configlib, experiment
  >>> config = configlib.default_config()
  >>> run = experiment.setup(config)
  >>> state = run.init_state()               # member axis [M] = [1]
  >>> steps = run.train_steps()              # K steps a call, compiled once per run
"""

from __future__ import annotations

import dataclasses
import functools
from pathlib import Path
from typing import Any, Callable

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from ibjax import config as configlib
from ibjax import data as datalib
from ibjax import evaluation, models, step, workdir as workdirlib

__all__ = ["Experiment", "is_population", "member_configs", "member_workdirs", "setup", "balanced_steps_per_call",
           "load_data", "put", "RunCheckpoints", "restore_run"]


def is_population(config: ml_collections.ConfigDict) -> bool:
    """Whether ``config`` asks for more than the single run it describes (γ values or seeds)."""
    return bool(tuple(config.population.gammas)) or configlib.value_or_default(config, "population.num_seeds") > 1


def member_configs(config: ml_collections.ConfigDict) -> tuple[ml_collections.ConfigDict, ...]:
    """The standalone config of every member: ``(config,)`` for a single run.

    A population's members are every (γ, seed) of ``population.gammas`` ×
    (``seed``, …, ``seed + population.num_seeds − 1``), γ-major; each is the
    same run with its own ``objective.gamma`` and ``seed`` and no population.
    """
    if not is_population(config):
        return (config,)
    gammas = tuple(float(g) for g in config.population.gammas) or (float(config.objective.gamma),)
    seeds = tuple(config.seed + i for i in range(max(configlib.value_or_default(config, "population.num_seeds"), 1)))
    members = []
    for gamma in gammas:
        for seed in seeds:
            member = ml_collections.ConfigDict(config.to_dict())
            member.objective.gamma, member.seed = gamma, seed
            member.population.gammas, member.population.num_seeds = (), 0
            members.append(member)
    return tuple(members)


def member_workdirs(config: ml_collections.ConfigDict, workdir: Path) -> list[Path]:
    """Where each member's config, metrics and checkpoints go: ``[workdir]`` for a single run."""
    if not is_population(config):
        return [Path(workdir)]
    named_gamma = bool(tuple(config.population.gammas))
    named_seed = configlib.value_or_default(config, "population.num_seeds") > 1
    return [workdirlib.member_workdir(workdir, i, m.objective.gamma if named_gamma else None,
                                      m.seed if named_seed else None)
            for i, m in enumerate(member_configs(config))]


@dataclasses.dataclass(frozen=True, eq=False)
class Experiment:
    """A run ready to train or restore: everything built from its config, nothing on disk.

    Attributes:
      config: the validated experiment config.
      members: each member's standalone config (a single run has one).
      dataset: the data set on the host.
      mesh: the 1-D ``'data'`` mesh the batch is sharded over.
      model: the :class:`ibjax.models.IBModel`.
      tx: the optimiser.
      steps_per_epoch: full batches in the training set.
    """

    config: ml_collections.ConfigDict
    members: tuple[ml_collections.ConfigDict, ...]
    dataset: datalib.Dataset
    mesh: Mesh
    model: models.IBModel
    tx: optax.GradientTransformation
    steps_per_epoch: int

    @property
    def num_members(self) -> int:
        return len(self.members)

    @property
    def num_classes(self) -> int:
        return self.dataset.num_classes

    @property
    def replicated(self) -> NamedSharding:
        return NamedSharding(self.mesh, P())

    @property
    def batch_sharding(self) -> NamedSharding:
        return NamedSharding(self.mesh, P("data"))

    def gammas(self) -> jax.Array:
        """γ of every member ``[M]``, replicated on the mesh."""
        return put(np.asarray([float(m.objective.gamma) for m in self.members], np.float32), self.replicated)

    @property
    def shared_data_order(self) -> bool:
        """Whether every member has the same seed, hence the same batches (a γ-population)."""
        return len({m.seed for m in self.members}) == 1

    def keys(self) -> dict[str, jax.Array]:
        """Each member's keys ``[M]`` from its seed: ``init``, ``train``, ``shuffle`` and ``eval``.

        A member's keys are those of a standalone run with its seed, so the
        members of a γ-population share their randomness and the members of a
        seed population are the trials of standalone runs.
        """
        return dict(self._keys)

    @functools.cached_property
    def _keys(self) -> dict[str, jax.Array]:
        seeds = tuple(int(m.seed) for m in self.members)

        def make():
            per_member = [jax.random.split(jax.random.key(seed), 4) for seed in seeds]
            return {name: jnp.stack([keys[i] for keys in per_member])
                    for i, name in enumerate(("init", "train", "shuffle", "eval"))}

        # Made by a computation on the mesh: a key array on one device cannot
        # be placed on a mesh that spans other processes' devices.
        return jax.jit(make, out_shardings=self.replicated)()

    def member_state(self, key: jax.Array | None = None) -> step.TrainState:
        """One member's freshly initialised state (no member axis), replicated; default: the first member's."""
        key = self.keys()["init"][0] if key is None else key
        init = jax.jit(lambda k: step.create_train_state(k, self.model, self.tx, self.dataset.image_shape),
                       out_shardings=self.replicated)
        return init(key)

    def init_state(self) -> step.TrainState:
        """The run's initial state ``[M]``: each member initialised from its own seed."""
        keys = self.keys()["init"]
        first = self.member_state(keys[0])
        states = [first if self.members[i].seed == self.members[0].seed else self.member_state(keys[i])
                  for i in range(self.num_members)]
        return jax.device_put(step.stack_members(states), self.replicated)

    def epoch_batches(self, epoch: int) -> jax.Array:
        """The epoch's batch indices on the device: ``[steps, B]`` shared by every member, or ``[steps, M, B]``.

        One compiled call per epoch draws every member's permutation on the device.
        """
        return self._epoch_batches(self.keys()["shuffle"], epoch)

    @functools.cached_property
    def _epoch_batches(self) -> Callable[[jax.Array, int], jax.Array]:
        n, size = self.dataset.x_train.shape[0], self.config.train.batch_size
        shared = self.shared_data_order

        def draw(shuffle, epoch):
            if shared:
                return datalib.epoch_batches(jax.random.fold_in(shuffle[0], epoch), n, size)
            return jnp.stack([datalib.epoch_batches(jax.random.fold_in(k, epoch), n, size) for k in shuffle], 1)

        spec = P(None, "data") if shared else P(None, None, "data")
        return jax.jit(draw, out_shardings=NamedSharding(self.mesh, spec))

    def state_template(self) -> step.TrainState:
        """Shapes, dtypes and shardings of one member's state, for restoring a checkpoint (nothing is computed)."""
        shapes = jax.eval_shape(
            lambda k: step.create_train_state(k, self.model, self.tx, self.dataset.image_shape), jax.random.key(0))
        return jax.tree.map(lambda s: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=self.replicated), shapes)

    def zero_totals(self) -> dict[str, jax.Array]:
        """Fresh per-epoch accumulators ``[M]`` of the train step, replicated on the mesh."""
        return self._zero_totals()

    @functools.cached_property
    def _zero_totals(self) -> Callable[[], dict[str, jax.Array]]:
        return jax.jit(lambda: step.zero_totals(self.config, self.num_members), out_shardings=self.replicated)

    def train_step(self, member_map: str = "vmap") -> Callable:
        """The jitted train step of :func:`ibjax.step.make_train_step` for this run."""
        return step.make_train_step(self.model, self.tx, self.config, self.num_classes, self.mesh,
                                    member_map=member_map)

    @property
    def steps_per_call(self) -> int:
        """K, the steps of one compiled training call: ``train.steps_per_call`` balanced over the epoch.

        ``train.steps_per_call`` (0: the whole epoch) sets how many calls an
        epoch takes, ⌈steps / K⌉; the calls then share the epoch's steps
        evenly, so the last one is not mostly masked (469 steps at K = 100:
        5 calls of 94, not 4 of 100 and one of 69 padded to 100).

        On the CPU backend an encoder with convolutions trains one step a
        call, whatever the field says: inside the loop of a K-step call
        XLA:CPU computes a convolution's weight gradient about 40× slower than
        in a single step (benchmarks/RESULTS.md), and there the step's own
        arithmetic, not its dispatch, is what an epoch costs anyway.
        """
        if jax.default_backend() == "cpu" and self.config.model.encoder in models.CONVOLUTIONAL_ENCODERS:
            return 1
        return balanced_steps_per_call(self.steps_per_epoch, configlib.value_or_default(self.config, "train.steps_per_call"))

    def train_steps(self, num_steps: int | None = None, member_map: str = "vmap") -> Callable:
        """The jitted K-step function of :func:`ibjax.step.make_train_steps` (default K: :attr:`steps_per_call`)."""
        return step.make_train_steps(self.model, self.tx, self.config, self.num_classes, self.mesh,
                                     self.steps_per_call if num_steps is None else num_steps, member_map=member_map)

    def evaluator(self) -> Callable:
        """The jitted whole-split pass of :func:`ibjax.evaluation.make_evaluator` for this run."""
        return evaluation.make_evaluator(self.model, self.config, self.num_classes, self.mesh,
                                         self.config.train.eval_batch_size)

    def device_data(self) -> tuple[jax.Array, jax.Array, jax.Array, jax.Array]:
        """``(x_train, y_train, x_test, y_test)`` replicated on the mesh."""
        d = self.dataset
        return tuple(put(x, self.replicated) for x in (d.x_train, d.y_train, d.x_test, d.y_test))


def balanced_steps_per_call(steps_per_epoch: int, requested: int) -> int:
    """K for ``requested`` steps a call (0: the whole epoch): ⌈steps / requested⌉ calls sharing the epoch evenly."""
    calls = -(-steps_per_epoch // min(requested or steps_per_epoch, steps_per_epoch))
    return -(-steps_per_epoch // calls)


def load_data(config: ml_collections.ConfigDict) -> datalib.Dataset:
    """The data set an experiment config names, as :func:`ibjax.data.load_dataset` reads it.

    Args:
      config: experiment config whose ``data`` section holds ``name``,
        ``source``, ``path`` (``""`` for none), ``url_checksums`` (``""`` for
        tfds's own table), ``split_at`` (``0`` for none),
        ``permutation_seed`` and ``num_train`` (train on the first
        ``num_train`` training examples; ``0`` for all; the test split is
        unchanged); ``augment`` is applied later, on device.

    Returns:
      The :class:`ibjax.data.Dataset` of host uint8 images and int32 labels.

    Raises:
      As :func:`ibjax.data.load_dataset`; :class:`ibjax.config.ConfigError`
      naming ``config.data.num_train`` if it exceeds the training set.
    """
    dataset = datalib.load_dataset(
        config.data.name,
        source=config.data.source,
        path=config.data.path or None,
        split_at=config.data.split_at or None,
        permutation_seed=config.data.permutation_seed,
        url_checksums=config.data.get("url_checksums") or None,
    )
    num_train = configlib.value_or_default(config, "data.num_train")
    if num_train > len(dataset.y_train):
        raise configlib.ConfigError(
            f"config.data.num_train={num_train} exceeds the {len(dataset.y_train)} training examples "
            f"of {config.data.name!r}; use 0 for all.")
    if num_train:
        dataset = dataclasses.replace(dataset, x_train=dataset.x_train[:num_train], y_train=dataset.y_train[:num_train])
    return dataset


def put(x, sharding: NamedSharding) -> jax.Array:
    """A host array placed with ``sharding``; on a mesh over several processes, each places its own shards.

    Every process must pass the same values (each process loads the same
    data set and builds the same config). Unlike ``jax.device_put``, the
    multi-process path compares nothing across processes, so placing a large
    data set costs no cross-process traffic.
    """
    if sharding.is_fully_addressable:
        return jax.device_put(x, sharding)
    x = np.asarray(x)
    return jax.make_array_from_callback(x.shape, sharding, lambda index: x[index])


def setup(config: ml_collections.ConfigDict, *, dataset: datalib.Dataset | None = None,
          mesh: Mesh | None = None) -> Experiment:
    """Validates ``config`` and builds its :class:`Experiment` (loads the data unless ``dataset`` is given).

    Every check that can fail on a config happens here, before anything is
    compiled or written: the fields (:func:`ibjax.config.validate`), the data
    set, and a batch size the training set can fill.

    Raises:
      ibjax.config.ConfigError: a bad field, named with its valid choices.
      ibjax.data.DatasetError: the data set cannot be read.
    """
    mesh = step.make_mesh() if mesh is None else mesh
    configlib.validate(config, num_devices=mesh.size)
    dataset = load_data(config) if dataset is None else dataset
    num_train = dataset.x_train.shape[0]
    steps_per_epoch = num_train // config.train.batch_size
    if steps_per_epoch < 1:
        raise configlib.ConfigError(
            f"config.train.batch_size={config.train.batch_size} exceeds the {num_train} training examples.")
    return Experiment(
        config=config,
        members=member_configs(config),
        dataset=dataset,
        mesh=mesh,
        model=models.create_model(config, dataset.num_classes),
        tx=step.make_optimizer(config, steps_per_epoch),
        steps_per_epoch=steps_per_epoch,
    )


class RunCheckpoints:
    """The checkpoints of one trained run (a single run or a population member), read-only.

    Use as a context manager; :attr:`epochs` lists the finalised checkpoints
    and :meth:`restore` gives one member's state (no member axis).
    """

    def __init__(self, workdir: str | Path, experiment: Experiment):
        self.workdir = Path(workdir).absolute()
        self.experiment = experiment
        self._manager = workdirlib.checkpoint_manager(self.workdir, read_only=True)
        self._template = experiment.state_template()

    @property
    def epochs(self) -> list[int]:
        return sorted(self._manager.all_steps())

    def restore(self, epoch: int) -> tuple[step.TrainState, dict[str, Any]]:
        """The state and metadata of ``epoch``."""
        return workdirlib.restore_state(self._manager, epoch, self._template)

    def close(self) -> None:
        self._manager.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def restore_run(workdir: str | Path, *, dataset: datalib.Dataset | None = None) -> RunCheckpoints:
    """Opens a run directory: its stored config (completed with defaults), its data and its checkpoints.

    Args:
      workdir: a run written by :func:`ibjax.train.train_and_evaluate` (or a
        population member's directory).
      dataset: the data set, if already loaded (default: the one the stored
        config names).

    Raises:
      FileNotFoundError: ``workdir`` holds no ``config.json``.
      ibjax.config.ConfigError: the stored config is malformed.
    """
    workdir = Path(workdir).absolute()
    config_path = workdir / "config.json"
    if not config_path.exists():
        raise FileNotFoundError(f"{config_path} not found: {workdir} is not a training run directory.")
    # One device of this process: restoring and evaluating need no data
    # parallelism, and the stored batch size need not divide the device count.
    one_device = step.make_mesh(jax.local_devices()[:1])
    return RunCheckpoints(workdir, setup(configlib.load_stored(config_path), dataset=dataset, mesh=one_device))
