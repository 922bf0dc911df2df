"""Section 7.3 with the activation L2 regulariser E||Z||^2 (else as cifar_condvar)."""

from pathlib import Path

from ibjax.config import from_file


def get_config():
    config = from_file(Path(__file__).with_name("cifar_condvar.py"))
    config.objective.regularizer = "l2"
    return config
