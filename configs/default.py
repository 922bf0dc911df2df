"""Default config (ibjax.config.default_config): digits, MLP encoder, no regulariser."""

from ibjax.config import default_config


def get_config():
    return default_config()
