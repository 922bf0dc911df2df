"""Trains one run: python scripts/train.py --config configs/X.py --workdir runs/X.

Overrides: --config.objective.gamma=0.1 (any field). Running the same command
again resumes from the latest checkpoint in --workdir.
"""

from absl import app, flags, logging
from ml_collections import config_flags

from ibjax import config as configlib
from ibjax import train

_CONFIG = config_flags.DEFINE_config_file("config", None, "Experiment config file (configs/*.py).", lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Run directory: config.json, metrics.jsonl, checkpoints/.")
_EXTEND = flags.DEFINE_bool("allow_num_epochs_change", False, "Resume even if train.num_epochs differs (extend a run).")
flags.mark_flags_as_required(["config", "workdir"])


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
    logging.set_verbosity(logging.WARNING)  # Orbax logs every save at INFO
    try:
        train.train_and_evaluate(_CONFIG.value, _WORKDIR.value, allow_num_epochs_change=_EXTEND.value)
    except (configlib.ConfigError, train.WorkdirError, ValueError) as error:
        raise SystemExit(f"error: {error}") from None


if __name__ == "__main__":
    app.run(main)
