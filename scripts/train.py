"""Trains one run: python scripts/train.py --config configs/X.py --workdir runs/X.

Overrides: --config.objective.gamma=0.1 (any field). Running the same command
again resumes from the latest checkpoint in --workdir, also after SIGTERM or
Ctrl-C, which save a mid-epoch checkpoint first.

Multi-process (data parallel over every process's devices, see README
"Multi-host"): on a Cloud TPU pod slice or under SLURM/Open MPI run the same
command on every host with --config.distributed=True; elsewhere start one
process per host with --coordinator_address=HOST0:PORT --num_processes=N
--process_id=I (I = 0 .. N-1; process 0 hosts the coordinator).
"""

import shlex
import sys

from absl import app, flags, logging
from ml_collections import config_flags

from ibjax import config as configlib
from ibjax import train

_CONFIG = config_flags.DEFINE_config_file("config", None, "Experiment config file (configs/*.py).", lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Run directory: config.json, metrics.jsonl, checkpoints/.")
_EXTEND = flags.DEFINE_bool("allow_num_epochs_change", False, "Resume even if train.num_epochs differs (extend a run).")
_COORDINATOR = flags.DEFINE_string(
    "coordinator_address", None,
    "Multi-process run: HOST:PORT of process 0's coordinator (jax.distributed.initialize). Without it, "
    "--config.distributed=True detects it on TPU pod slices, SLURM and Open MPI.")
_NUM_PROCESSES = flags.DEFINE_integer("num_processes", None, "Multi-process run: the number of processes.")
_PROCESS_ID = flags.DEFINE_integer("process_id", None, "Multi-process run: this process's index, 0 .. num_processes-1.")
flags.mark_flags_as_required(["config", "workdir"])

#: Exit status of a run stopped by SIGTERM/SIGINT after saving its checkpoint.
EXIT_PREEMPTED = 3


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
    logging.set_verbosity(logging.WARNING)  # Orbax logs every save at INFO
    launch = (_COORDINATOR.value, _NUM_PROCESSES.value, _PROCESS_ID.value)
    if any(value is not None for value in launch):
        # Before anything asks JAX for its devices.
        train.initialize_distributed(*launch)
    try:
        result = train.train_and_evaluate(_CONFIG.value, _WORKDIR.value, allow_num_epochs_change=_EXTEND.value)
    except (configlib.ConfigError, train.WorkdirError, train.NonFiniteError, ValueError) as error:
        raise SystemExit(f"error: {error}") from None
    if result.get("preempted"):
        command = " ".join(shlex.quote(a) for a in [sys.executable] + sys.argv)
        source = f" (to process {result['signalled_process']})" if "signalled_process" in result else ""
        print(f"Stopped by {result['signal']}{source} at epoch {result['epoch']}, step {result['step_in_epoch']}; "
              f"checkpoint saved. Resume with:\n  {command}", file=sys.stderr, flush=True)
        sys.exit(EXIT_PREEMPTED)


if __name__ == "__main__":
    app.run(main)
