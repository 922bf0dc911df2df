"""Section 7.3 with the log-variance regulariser log Var[Z] (else as cifar_condvar)."""

from pathlib import Path

from ibjax.config import from_file


def get_config():
    config = from_file(Path(__file__).with_name("cifar_condvar.py"))
    config.objective.regularizer = "log_var"
    return config
