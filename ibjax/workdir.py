"""A run's directory: lock, stop requests, config identity, checkpoints.

A workdir holds ``config.json``, ``metrics.jsonl`` and ``checkpoints/`` (one
Orbax checkpoint per epoch, items ``state`` and ``meta``). A population keeps
one member workdir per member below its own (:func:`member_workdir`), each a
complete run. Nothing here touches a workdir that belongs to another run:
:func:`check_workdir` only reads, and :func:`claim_workdir`, which writes
``config.json``, is called once every check that can fail has passed.

Multi-process runs (``jax.distributed``; one workdir on a file system every
process sees): every process makes the same checks, process 0 alone holds the
lock and writes files, the checkpoint functions are called by every process
(Orbax's multi-host protocol: each process writes its shards, process 0
finalises), and :meth:`StopRequests.agreed` tells every process whether any
of them was signalled.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import signal
import socket
import sys
import threading
from pathlib import Path
from typing import Any

import jax
import ml_collections
import numpy as np
import orbax.checkpoint as ocp
from jax.experimental import multihost_utils
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

import ibjax
from ibjax import config as configlib
from ibjax.io import atomic_write_text

__all__ = [
    "WorkdirError",
    "is_multiprocess",
    "is_primary",
    "sync_processes",
    "IGNORED_ON_RESUME",
    "run_differences",
    "check_workdir",
    "claim_workdir",
    "member_workdir",
    "WorkdirLock",
    "StopRequests",
    "checkpoint_manager",
    "save_checkpoint",
    "restore_state",
    "save_preempted",
    "load_preempted",
    "clear_preempted",
]

#: Fields that may differ from a workdir's stored config without making it another run.
# How a run is launched, shown or fed (one process may resume a multi-host run), not what it computes.
IGNORED_ON_RESUME: tuple[str, ...] = ("train.progress_bar", "train.tensorboard", "train.steps_per_call", "distributed",
                                      "data.url_checksums", "train.analyze_every", "train.analyze_examples")


class WorkdirError(RuntimeError):
    """The workdir belongs to another run (different config) or is unusable."""


# --------------------------------------------------------------------------
# Processes (jax.distributed)
# --------------------------------------------------------------------------


def is_multiprocess() -> bool:
    """Whether this is one of several JAX processes (``jax.distributed`` initialised with more than one)."""
    return jax.distributed.is_initialized() and jax.process_count() > 1


def is_primary() -> bool:
    """Whether this process writes the run's files: process 0 (always true in a single-process run)."""
    return not is_multiprocess() or jax.process_index() == 0


def sync_processes(name: str) -> None:
    """A barrier across all processes (nothing in a single-process run)."""
    if is_multiprocess():
        multihost_utils.sync_global_devices(name)


def _all_processes(ok: bool) -> bool:
    """Whether ``ok`` holds on every process (the same answer everywhere; a collective)."""
    if not is_multiprocess():
        return ok
    return bool(np.all(multihost_utils.process_allgather(np.int32(ok))))


def run_differences(stored: dict[str, Any], current: dict[str, Any], *,
                    allow_num_epochs_change: bool = False) -> list[str]:
    """The fields in which two config dicts describe different runs (empty: the same run).

    The one place that decides whether a stored config and a new one are the
    same run: both are completed with today's defaults (fields added to ibjax
    after a run was written take their defaults), and the fields of
    :data:`IGNORED_ON_RESUME` (and ``train.num_epochs`` when extending a run)
    do not count.
    """
    ignored = IGNORED_ON_RESUME + (("train.num_epochs",) if allow_num_epochs_change else ())

    def comparable(config_dict):
        out = configlib.with_defaults(json.loads(json.dumps(config_dict)))
        for dotted in ignored:
            *sections, field = dotted.split(".")
            node = out
            for section in sections:
                node = node.get(section, {})
            node.pop(field, None)
        return out

    return configlib.differences(comparable(stored), comparable(current))


def check_workdir(workdir: Path, config: ml_collections.ConfigDict, allow_num_epochs_change: bool = False) -> None:
    """Refuses a workdir that holds a different run; touches nothing."""
    config_path = Path(workdir) / "config.json"
    if config_path.exists():
        stored = configlib.read_stored(config_path)
        diffs = run_differences(stored, configlib.to_dict(config), allow_num_epochs_change=allow_num_epochs_change)
        if diffs:
            hint = (" Pass --allow_num_epochs_change to extend a run."
                    if any(d.startswith("train.num_epochs") for d in diffs) else "")
            raise WorkdirError(
                f"{workdir} holds a run with a different config; refusing to touch its checkpoints. "
                "Use another --workdir. Differing fields:\n  " + "\n  ".join(diffs) + hint
            )
    elif (Path(workdir) / "checkpoints").exists():
        raise WorkdirError(f"{workdir} has checkpoints but no config.json; refusing to overwrite them.")


def claim_workdir(workdir: Path, config: ml_collections.ConfigDict) -> None:
    """Creates the workdir and writes its ``config.json``: from here on it belongs to this run.

    Multi-process: process 0 writes, every process returns once it has.
    """
    if is_primary():
        workdir.mkdir(parents=True, exist_ok=True)
        atomic_write_text(workdir / "config.json", configlib.to_json(config))
    sync_processes("ibjax_claim_workdir")


def member_workdir(workdir: Path, index: int, gamma: float | None = None, seed: int | None = None) -> Path:
    """The workdir of member ``index`` of a population run in ``workdir``, named by its γ and seed when they vary.

    Example:
      >>> member_workdir(Path("runs/pop"), 3, 0.01).as_posix(), member_workdir(Path("p"), 1, seed=7).as_posix()
      ('runs/pop/member03_gamma0.01', 'p/member01_seed7')
    """
    name = f"member{index:02d}" + (f"_gamma{gamma:g}" if gamma is not None else "")
    return Path(workdir) / (name + (f"_seed{seed}" if seed is not None else ""))


class WorkdirLock:
    """One live run per workdir: ``workdir/lock`` holds the owner's host and pid.

    A lock whose process no longer exists on this host (a killed run) is
    stale and taken over. Created with O_EXCL, so two starts cannot both win.
    In a multi-process run process 0 holds it, and every process raises
    :class:`WorkdirError` if process 0 could not take it.
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
        if not is_multiprocess():
            return self._acquire()
        error = None
        if is_primary():
            try:
                self._acquire()
            except WorkdirError as e:
                error = e
        if not _all_processes(error is None):
            raise error or WorkdirError(f"process 0 could not lock {self.path}; see its error.")
        return self

    def _acquire(self):
        self.path.parent.mkdir(parents=True, exist_ok=True)
        for _ in range(2):
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                self._refuse_or_take_over()
                continue
            with os.fdopen(fd, "w") as f:
                f.write(self.owner)
            return self
        raise WorkdirError(f"could not lock {self.path}.")

    def _refuse_or_take_over(self) -> None:
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

    :attr:`signal` is this process's flag (a Python attribute read);
    :meth:`agreed` is the flag every process of a multi-process run agrees on.

    Args:
      message: printed when the first signal arrives.
    """

    def __init__(self, message: str = "finishing the current step and saving a checkpoint."):
        self.signal = None
        self.message = message
        self.agreed_signal: str | None = None
        self.signalled_process: int | None = None
        self._gather = None

    def gather(self) -> jax.Array | None:
        """Starts gathering every process's flag and returns at once (None in a single-process run).

        A collective: every process must call it at the same point of the
        run. Pass the result to :meth:`agreed` later, e.g. one step later, so
        that the host does not wait for the device in between.
        """
        if not is_multiprocess():
            return None
        if self._gather is None:
            devices = np.asarray(jax.devices())
            self._flags_sharding = NamedSharding(Mesh(devices, ("devices",)), P("devices"))
            self._device_process = np.asarray([d.process_index for d in devices])
            self._gather = jax.jit(lambda flags: flags, out_shardings=NamedSharding(self._flags_sharding.mesh, P()))
        code = np.full((1,), signal.Signals[self.signal].value if self.signal is not None else 0, np.int32)
        flags = jax.make_array_from_callback((len(self._device_process),), self._flags_sharding, lambda _: code)
        return self._gather(flags)

    def agreed(self, gathered: jax.Array | None = None) -> str | None:
        """The signal any process received, or None: the same answer on every process.

        Single-process: :attr:`signal`. Multi-process: every process's flag
        as gathered by ``gathered`` (from :meth:`gather`), or, without it, by
        a collective now (every process must call it at the same point of the
        run). Once a signal is agreed it stays agreed (and is returned without
        a collective), and :attr:`signalled_process` names the first process
        that had one.
        """
        if not is_multiprocess():
            return self.signal
        if self.agreed_signal is not None:
            return self.agreed_signal  # the same on every process: no need to ask again
        codes = np.asarray(self.gather() if gathered is None else gathered)
        if np.any(codes):
            first = int(np.flatnonzero(codes)[0])
            self.signalled_process = int(self._device_process[first])
            self.agreed_signal = signal.Signals(int(codes[first])).name
        return self.agreed_signal

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


# --------------------------------------------------------------------------
# Checkpoints
# --------------------------------------------------------------------------


def checkpoint_manager(workdir: Path, max_to_keep: int = 0, *, read_only: bool = False) -> ocp.CheckpointManager:
    """The Orbax manager of ``workdir/checkpoints`` (``max_to_keep`` 0 keeps all).

    Multi-process: every process must create it and call its ``save``; the
    managers of a population's members save concurrently, so each gets its
    own barrier names (from the workdir's name, the same on every host).
    """
    multiprocessing = ({"multiprocessing_options": ocp.options.MultiprocessingOptions(
        barrier_sync_key_prefix=f"ibjax_{Path(workdir).absolute().name}")} if is_multiprocess() else {})
    options = (ocp.CheckpointManagerOptions(read_only=True, **multiprocessing) if read_only
               else ocp.CheckpointManagerOptions(max_to_keep=max_to_keep or None, create=True, **multiprocessing))
    return ocp.CheckpointManager(Path(workdir).absolute() / "checkpoints", options=options,
                                 item_names=("state", "meta"))


def save_checkpoint(manager: ocp.CheckpointManager, epoch: int, state, meta: dict[str, Any]) -> None:
    """Saves one member's state (no member axis) and its metadata, stamped with the ibjax version."""
    meta = dict(meta, ibjax_version=ibjax.__version__)
    manager.save(epoch, args=ocp.args.Composite(state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(meta)))


def restore_state(manager: ocp.CheckpointManager, epoch: int, like) -> tuple[Any, dict]:
    """Restores one member's train state (with ``like``'s shapes and shardings) and metadata of an epoch.

    The stored tree is compared with ``like`` first: a checkpoint whose state
    does not fit this version's train state raises :class:`WorkdirError`
    naming the ibjax version that wrote it and the first leaves that differ.
    """
    directory = Path(manager.directory) / str(epoch)
    with ocp.StandardCheckpointer() as checkpointer:
        # Orbax warns that an item of a composite checkpoint has no step metadata of its own: expected here.
        with _quiet_absl():
            stored = _leaf_shapes(checkpointer.metadata(directory / "state").item_metadata.tree)
    expected = _leaf_shapes(like)
    if stored != expected:
        meta = manager.restore(epoch, args=ocp.args.Composite(meta=ocp.args.JsonRestore())).meta
        written_by = meta.get("ibjax_version", "0.1.0 or earlier")
        differing = sorted(k for k in set(stored) | set(expected) if stored.get(k) != expected.get(k))[:3]
        detail = "; ".join(f"{k}: stored {stored.get(k, 'absent')}, expected {expected.get(k, 'absent')}"
                           for k in differing)
        raise WorkdirError(
            f"the checkpoint of epoch {epoch} in {manager.directory} was written by ibjax {written_by} and does not "
            f"fit the train state of ibjax {ibjax.__version__} ({detail}). Resume it with that version, or train "
            "into another --workdir.")
    abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, like)
    restored = manager.restore(
        epoch, args=ocp.args.Composite(state=ocp.args.StandardRestore(abstract), meta=ocp.args.JsonRestore()))
    return restored.state, restored.meta


@contextlib.contextmanager
def _quiet_absl():
    """Only errors from absl's logger (Orbax's) inside the block."""
    logger = logging.getLogger("absl")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)


def _leaf_shapes(tree) -> dict[str, tuple[int, ...]]:
    """``{"params/encoder/output/kernel": shape, ...}`` of a state or of a checkpoint's stored tree."""
    def name(key):
        for attribute in ("name", "key", "idx"):
            if hasattr(key, attribute):
                return str(getattr(key, attribute))
        return str(key)

    leaves, _ = jax.tree_util.tree_flatten_with_path(tree)
    return {"/".join(name(k) for k in path): tuple(leaf.shape) for path, leaf in leaves}


_PREEMPTED = "preempted"


def save_preempted(workdir: Path, state, totals, epoch: int, step_in_epoch: int) -> None:
    """Mid-epoch checkpoint of the whole run; its JSON marker is written last, so a torn save is never read.

    Multi-process: every process calls it; process 0 removes the old save and
    writes the marker, each process writes its shards.
    """
    marker = workdir / f"{_PREEMPTED}.json"
    directory = (workdir / _PREEMPTED).absolute()
    if is_primary():
        marker.unlink(missing_ok=True)
        if directory.exists():
            shutil.rmtree(directory)
    sync_processes("ibjax_save_preempted_cleared")
    with ocp.StandardCheckpointer() as checkpointer:
        checkpointer.save(directory, {"state": state, "totals": totals})
        checkpointer.wait_until_finished()
    if is_primary():
        atomic_write_text(marker, json.dumps({"epoch": epoch, "step_in_epoch": step_in_epoch,
                                              "ibjax_version": ibjax.__version__}))
    sync_processes("ibjax_save_preempted_done")


def load_preempted(workdir: Path, epoch: int, state, totals):
    """The mid-epoch checkpoint of ``epoch``, if there is one: (state, totals, step_in_epoch).

    ``state`` and ``totals`` give the shapes and shardings. One that does not
    fit them (written by another version or another population size) is
    ignored with a message: the epoch restarts from its beginning.
    """
    marker = workdir / f"{_PREEMPTED}.json"
    try:
        meta = json.loads(marker.read_text())
    except FileNotFoundError:
        return None
    if meta.get("epoch") != epoch:
        return None
    abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, {"state": state, "totals": totals})
    try:
        with ocp.StandardCheckpointer() as checkpointer:
            restored = checkpointer.restore((workdir / _PREEMPTED).absolute(), abstract)
    except (ValueError, KeyError, TypeError) as error:
        print(f"The mid-epoch checkpoint in {workdir / _PREEMPTED} (ibjax {meta.get('ibjax_version', '0.1.0')}) "
              f"does not fit this run ({type(error).__name__}); epoch {epoch} restarts from its beginning.",
              flush=True)
        return None
    return restored["state"], restored["totals"], int(meta["step_in_epoch"])


def clear_preempted(workdir: Path) -> None:
    """Removes the mid-epoch checkpoint once its epoch is complete (process 0 of a multi-process run)."""
    if is_primary():
        (workdir / f"{_PREEMPTED}.json").unlink(missing_ok=True)
        shutil.rmtree(workdir / _PREEMPTED, ignore_errors=True)
