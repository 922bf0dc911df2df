"""Trains one run: python scripts/train.py --config configs/X.py --workdir runs/X.

Overrides: --config.objective.gamma=0.1 (any field). Running the same command
again resumes from the latest checkpoint in --workdir, also after SIGTERM or
Ctrl-C, which save a mid-epoch checkpoint first.
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
flags.mark_flags_as_required(["config", "workdir"])

#: Exit status of a run stopped by SIGTERM/SIGINT after saving its checkpoint.
EXIT_PREEMPTED = 3


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
    logging.set_verbosity(logging.WARNING)  # Orbax logs every save at INFO
    try:
        result = train.train_and_evaluate(_CONFIG.value, _WORKDIR.value, allow_num_epochs_change=_EXTEND.value)
    except (configlib.ConfigError, train.WorkdirError, train.NonFiniteError, ValueError) as error:
        raise SystemExit(f"error: {error}") from None
    if result.get("preempted"):
        command = " ".join(shlex.quote(a) for a in [sys.executable] + sys.argv)
        print(f"Stopped by {result['signal']} at epoch {result['epoch']}, step {result['step_in_epoch']}; "
              f"checkpoint saved. Resume with:\n  {command}", file=sys.stderr, flush=True)
        sys.exit(EXIT_PREEMPTED)


if __name__ == "__main__":
    app.run(main)
