"""What a run shows while it trains: TensorBoard summaries (through tensorboardX) and the live information plane.

``metrics.jsonl`` stays the record that analysis, plots and resumption read;
the TensorBoard event files mirror it for TensorBoard's UI (``%tensorboard
--logdir runs`` in Colab), written by tensorboardX beside each run's
``metrics.jsonl``:

* every real-number field of an epoch's record as a scalar, step = epoch,
  under the tag :func:`scalar_tag` maps it to (``train/accuracy``,
  ``test/accuracy``, ``train_exact/...``, ``run/...``), the same tags as the
  event files of earlier ibjax versions, which TensorBoard still reads;
* every ``train.analyze_every`` epochs, the information-plane quantities of
  the current state (:class:`InformationPlaneMonitor`) under
  ``information_plane/<quantity>``, and the trajectory so far as a figure
  (``information_plane``; a population's in one figure coloured by γ,
  written beside the members), at most one figure every 30 s after the
  first, and at the last epoch.

A resumed run opens a new event file whose first event asks TensorBoard to
drop every event at or after the first epoch it will write again
(tensorboardX's ``purge_step``), so each scalar stays one series, each step
once, in order.
"""

from __future__ import annotations

import numbers
import os
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ibjax import config as configlib

__all__ = ["scalar_tag", "record_scalars", "open_writer", "write_record", "write_information_plane",
           "InformationPlaneMonitor"]

#: The key of the information-plane record inside an epoch's record, and its tag prefix.
INFORMATION_PLANE = "information_plane"
# Fields of an information-plane record that the epoch's own scalars already show.
_NOT_PLANE_SCALARS = ("epoch", "gamma", "train_cross_entropy", "train_accuracy", "test_accuracy")


def scalar_tag(key: str) -> str:
    """The TensorBoard tag of a metrics-record key.

    ``train_exact_x`` -> ``train_exact/x``, ``train_x`` -> ``train/x``,
    ``test_x`` -> ``test/x``, anything else -> ``run/<key>``.
    """
    for prefix in ("train_exact", "train", "test"):
        if key.startswith(prefix + "_") and len(key) > len(prefix) + 1:
            return f"{prefix}/{key[len(prefix) + 1:]}"
    return f"run/{key}"


def _is_real(value: Any) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def record_scalars(record: Mapping[str, Any]) -> dict[str, float]:
    """tag -> value of every real-number field of an epoch's record (``epoch`` and ``step`` excepted).

    Strings, ``None``, booleans and lists are skipped; the nested
    information-plane record's quantities become ``information_plane/<key>``
    (its copies of the epoch's accuracies and cross-entropy are not repeated).
    """
    scalars = {scalar_tag(key): float(value) for key, value in record.items()
               if key not in ("epoch", "step") and _is_real(value)}
    plane = record.get(INFORMATION_PLANE) or {}
    scalars.update({f"{INFORMATION_PLANE}/{key}": float(value) for key, value in plane.items()
                    if key not in _NOT_PLANE_SCALARS and _is_real(value)})
    return scalars


def open_writer(logdir: str | os.PathLike, resume_epoch: int = 0):
    """A tensorboardX ``SummaryWriter`` with a file of its own in ``logdir``.

    ``resume_epoch`` > 0: the run resumes after that epoch, and TensorBoard
    drops what earlier files hold from epoch ``resume_epoch + 1`` on.
    """
    from tensorboardX import SummaryWriter

    # A name of its own even for a run resumed in the same second by the same process.
    suffix = f".{os.getpid()}.{time.time_ns()}.ibjax"
    return SummaryWriter(logdir=str(logdir), purge_step=resume_epoch + 1 if resume_epoch else None,
                         filename_suffix=suffix, flush_secs=30)


def write_record(writer, record: Mapping[str, Any]) -> dict[str, float]:
    """Writes :func:`record_scalars` of ``record`` at step ``record['epoch']`` and flushes; returns them."""
    scalars = record_scalars(record)
    for tag, value in scalars.items():
        writer.add_scalar(tag, value, global_step=int(record["epoch"]))
    writer.flush()
    return scalars


def write_information_plane(writer, run_dirs: Sequence[Path], epoch: int) -> None:
    """Draws the information plane so far of ``run_dirs`` (their in-loop records) into ``writer`` at ``epoch``."""
    import matplotlib.pyplot as plt

    from ibjax import plotting

    figure = plotting.plot_information_plane([plotting.load_run(directory) for directory in run_dirs])
    writer.add_figure(INFORMATION_PLANE, figure, global_step=epoch, close=True)
    writer.flush()
    plt.close(figure)


class InformationPlaneMonitor:
    """The information-plane quantities of a training state, every ``train.analyze_every`` epochs.

    The same estimator per latent kind as ``scripts/analyze.py``
    (:func:`ibjax.analysis.make_analyzer`), on the first
    ``train.analyze_examples`` training examples (0: all), for every member.
    """

    #: The least time between two figures, after the first (seconds).
    figure_interval_s: float = 30.0

    def __init__(self, experiment):
        from ibjax import analysis

        config = experiment.config
        self.every = int(configlib.value_or_default(config, "train.analyze_every"))
        self.num_epochs = int(config.train.num_epochs)
        self._last_figure: float | None = None
        self.members = experiment.members
        count = int(configlib.value_or_default(config, "train.analyze_examples")) or len(experiment.dataset.y_train)
        self.images = experiment.dataset.x_train[:count]
        self.labels = np.asarray(experiment.dataset.y_train[:count])
        self.num_classes = experiment.dataset.num_classes
        self._analyze = analysis.make_analyzer(experiment.model, self.members[0])
        self._record = analysis.information_plane_record

    def due(self, epoch: int) -> bool:
        """Whether ``epoch`` is analysed: every ``analyze_every``-th epoch."""
        return bool(self.every) and epoch % self.every == 0

    def figure_due(self, epoch: int) -> bool:
        """Whether the analysed ``epoch`` also draws the figure.

        The first analysed epoch of this process, the run's last epoch, and
        otherwise at most one every :attr:`figure_interval_s` seconds: TensorBoard
        reloads every 30 s, and a figure costs ~0.2 s, far more than the
        quantities on a small model (``benchmarks/live_plane.py``).
        """
        now = time.monotonic()
        if self._last_figure is None or epoch == self.num_epochs or now - self._last_figure >= self.figure_interval_s:
            self._last_figure = now
            return True
        return False

    def records(self, state, epoch: int, metrics: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
        """One information-plane record per member of the (stacked) ``state``, with the epoch's accuracies."""
        from ibjax import step as steplib

        out = []
        for i, member in enumerate(self.members):
            quantities = self._analyze(steplib.member(state, i), self.images, self.labels, self.num_classes)
            out.append(self._record(member, epoch, quantities, metrics[i], len(self.labels)))
        return out
