"""Experiment configs: validation and JSON round-trips (the defaults: :mod:`ibjax.defaults`).

A config is an ``ml_collections.ConfigDict`` (see ``configs/default.py``).
:func:`validate` checks every field a run reads before anything is compiled or
written, and names the field and its valid choices on failure. Configs are
stored beside checkpoints as JSON, never as pickles, so loading a workdir runs
no code from it.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import ml_collections

# The defaults live in ibjax.defaults, which imports nothing of ibjax, so that the models and the
# latent kinds can read them; they are re-exported here, where configs have always found them.
from ibjax.defaults import ANALYZE_EVERY, ANALYZE_EXAMPLES, STEPS_PER_CALL, default_config, value_or_default


__all__ = ["ConfigError", "LOSSES", "JOINTS", "ABSENT_MEANS", "default_config", "value_or_default", "from_file", "with_defaults", "read_stored", "load_stored", "validate", "to_dict", "to_json", "from_json", "differences"]

#: Valid ``objective.joint`` values: the p(y|z) that loss='decoder_uncertainty' uses.
JOINTS: tuple[str, ...] = ("batch", "epoch")

#: Valid ``objective.loss`` values.
LOSSES: tuple[str, ...] = ("cross_entropy", "decoder_uncertainty")


class ConfigError(ValueError):
    """A config field has an invalid value; the message names the field."""


def _choice(config, field: str, choices) -> None:
    value = _get(config, field)
    if value not in choices:
        raise ConfigError(f"config.{field} must be one of {tuple(choices)}; got {value!r}.")


def _get(config, field: str):
    node = config
    for part in field.split("."):
        if part not in node:
            raise ConfigError(f"config.{field} is missing; start from configs/default.py.")
        node = node[part]
    return node


def _positive_int(config, field: str, allow_zero: bool = False) -> None:
    value = _get(config, field)
    low = 0 if allow_zero else 1
    if not isinstance(value, int) or isinstance(value, bool) or value < low:
        raise ConfigError(f"config.{field} must be an integer >= {low}; got {value!r}.")


def _nonneg_float(config, field: str, positive: bool = False) -> None:
    value = _get(config, field)
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    if not ok or value < 0 or (positive and value == 0):
        kind = "a positive" if positive else "a non-negative"
        raise ConfigError(f"config.{field} must be {kind} finite number; got {value!r}.")


def _check_known_fields(config) -> None:
    """Every field must be one of the default config's: a typo is an error, not ignored."""
    known = default_config().to_dict()
    given = config.to_dict() if hasattr(config, "to_dict") else dict(config)

    def walk(given_node, known_node, prefix):
        for key, value in given_node.items():
            if key not in known_node:
                raise ConfigError(f"config.{prefix}{key} is not a known field; known here: {sorted(known_node)}.")
            if isinstance(known_node[key], dict):
                if not isinstance(value, dict):
                    raise ConfigError(f"config.{prefix}{key} must be a section of fields; got {value!r}.")
                walk(value, known_node[key], f"{prefix}{key}.")

    walk(given, known, "")


def validate(config: ml_collections.ConfigDict, num_devices: int = 1) -> None:
    """Checks a training config; raises :class:`ConfigError` naming the bad field.

    Args:
      config: the experiment config.
      num_devices: devices the batch is sharded over; batch sizes must divide.
    """
    _check_known_fields(config)
    _validate_data(config)
    _validate_model(config)
    _validate_training(config, num_devices)
    _validate_capping(config)


# The checks import their choices when they run: reading and comparing stored
# configs (the plots) needs no JAX.


def _validate_data(config) -> None:
    from ibjax.data import DATASET_SOURCES, DATASETS, PATH_SOURCES

    _choice(config, "data.name", DATASETS)
    _choice(config, "data.source", DATASET_SOURCES[config.data.name])
    if config.data.source in PATH_SOURCES and not config.data.path:
        raise ConfigError(f"config.data.path is required for config.data.source={config.data.source!r}.")
    table = value_or_default(config, "data.url_checksums")
    if not isinstance(table, str):
        raise ConfigError(f"config.data.url_checksums must be a file path or ''; got {table!r}.")
    if table and config.data.source != "tfds":
        raise ConfigError("config.data.url_checksums is only used with config.data.source='tfds'; "
                          f"got source={config.data.source!r}.")
    if table and not Path(table).is_file():
        raise ConfigError(f"config.data.url_checksums: {table} is not a file.")
    _positive_int(config, "data.split_at", allow_zero=True)
    _positive_int(config, "data.num_train", allow_zero=True)
    for field in ("train.progress_bar", "train.tensorboard"):
        if not isinstance(_get(config, field), bool):
            raise ConfigError(f"config.{field} must be True or False; got {_get(config, field)!r}.")
    if not isinstance(config.data.augment, bool):
        raise ConfigError(f"config.data.augment must be True or False; got {config.data.augment!r}.")
    if config.data.augment and config.data.name != "cifar10":
        raise ConfigError("config.data.augment (pad-crop-flip) is for cifar10 only; set it to False.")


def _validate_model(config) -> None:
    from ibjax import latents
    from ibjax.losses import CROSS_ENTROPIES, REGULARIZERS
    from ibjax.models import DECODERS, DTYPES, ENCODERS, PARAM_INITS

    _choice(config, "model.encoder", ENCODERS)
    _choice(config, "model.latent", latents.names())
    _choice(config, "model.decoder", DECODERS)
    _choice(config, "dtype", DTYPES)
    _choice(config, "model.init", PARAM_INITS)
    _positive_int(config, "model.latent_dim")
    _positive_int(config, "model.num_samples")
    if not isinstance(config.model.noise, bool):
        raise ConfigError(f"config.model.noise must be True or False; got {config.model.noise!r}.")
    kind = latents.of(config.model)
    if config.model.noise and kind.noise_refusal:
        raise ConfigError("config.model.noise adds zero-entropy Gaussian noise to a continuous latent; set it to "
                          f"False for config.model.latent={config.model.latent!r}.")

    _choice(config, "objective.loss", LOSSES)
    _choice(config, "objective.cross_entropy", CROSS_ENTROPIES)
    _choice(config, "objective.regularizer", REGULARIZERS)
    _nonneg_float(config, "objective.gamma")
    _nonneg_float(config, "objective.eps", positive=True)
    _choice(config, "objective.joint", JOINTS)
    if config.objective.joint != "batch" and config.objective.loss != "decoder_uncertainty":
        raise ConfigError("config.objective.joint chooses the p(y|z) of loss='decoder_uncertainty'; keep 'batch' "
                          f"with config.objective.loss={config.objective.loss!r}.")
    error = kind.config_error(config)  # the objective's fields that fit the latent (ibjax.latents)
    if error:
        raise ConfigError(error)


def _validate_training(config, num_devices: int) -> None:
    for field in ("train.num_epochs", "train.batch_size", "train.eval_batch_size", "train.plateau_patience",
                  "checkpoint.every_epochs"):
        _positive_int(config, field)
    _positive_int(config, "checkpoint.max_to_keep", allow_zero=True)
    _positive_int(config, "train.plateau_examples", allow_zero=True)
    _positive_int(config, "train.steps_per_call", allow_zero=True)
    _positive_int(config, "train.analyze_every", allow_zero=True)
    _positive_int(config, "train.analyze_examples", allow_zero=True)
    _nonneg_float(config, "train.learning_rate", positive=True)
    factor = _get(config, "train.plateau_factor")
    # optax's reduce_on_plateau rejects 1.0; a constant rate is a patience longer than the run.
    if isinstance(factor, bool) or not isinstance(factor, (int, float)) or not 0 < factor < 1:
        raise ConfigError(f"config.train.plateau_factor must be in (0, 1) (open interval); got {factor!r}.")
    for field in ("train.batch_size", "train.eval_batch_size"):
        if _get(config, field) % num_devices:
            raise ConfigError(f"config.{field}={_get(config, field)} must be divisible by the "
                              f"{num_devices} devices the batch is sharded over.")
    _positive_int(config, "seed", allow_zero=True)
    gammas = _get(config, "population.gammas")
    if not isinstance(gammas, (tuple, list)) or not all(
        isinstance(g, (int, float)) and not isinstance(g, bool) and math.isfinite(g) and g >= 0 for g in gammas
    ):
        raise ConfigError(f"config.population.gammas must be a tuple of non-negative numbers; got {gammas!r}.")
    if len(set(gammas)) != len(gammas):
        raise ConfigError(f"config.population.gammas must not repeat a value; got {gammas!r}.")
    _positive_int(config, "population.num_seeds", allow_zero=True)


def _validate_capping(config) -> None:
    from ibjax import latents
    from ibjax.models import CAPPABLE_ENCODERS

    schedule = _get(config, "capping.schedule")
    if not isinstance(schedule, (tuple, list)) or not all(
        isinstance(c, (int, float)) and not isinstance(c, bool) and math.isfinite(c) for c in schedule
    ):
        raise ConfigError(f"config.capping.schedule must be a tuple of finite numbers (nats); got {schedule!r}.")
    _positive_int(config, "capping.num_examples", allow_zero=True)
    if schedule:
        if config.model.encoder not in CAPPABLE_ENCODERS:
            raise ConfigError(f"config.capping.schedule needs config.model.encoder in {CAPPABLE_ENCODERS}; "
                              f"got {config.model.encoder!r}.")
        if not latents.of(config.model).cappable or config.model.decoder != "linear":
            raise ConfigError("config.capping.schedule needs config.model.latent='continuous' and "
                              "config.model.decoder='linear'.")


def to_dict(config: ml_collections.ConfigDict) -> dict[str, Any]:
    """Plain JSON-compatible dict (tuples become lists)."""
    return json.loads(config.to_json())


def to_json(config: ml_collections.ConfigDict) -> str:
    return json.dumps(to_dict(config), indent=2, sort_keys=True)


def from_json(text: str, origin: str = "config.json") -> ml_collections.ConfigDict:
    """Parses a stored config; a malformed file raises :class:`ConfigError` naming it."""
    try:
        data = json.loads(text)
    except json.JSONDecodeError as error:
        raise ConfigError(f"{origin} is not valid JSON ({error}); it may have been truncated.") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{origin} must hold a JSON object; got {type(data).__name__}.")
    return ml_collections.ConfigDict(data)


#: What a stored config that lacks a field was trained with, where that is not
#: today's default: the field did not exist yet, and the run behaved the old way.
ABSENT_MEANS: dict[str, Any] = {"model.init": "flax", "train.plateau_examples": 0}


def with_defaults(config_dict: dict[str, Any], defaults: dict[str, Any] | None = None) -> dict[str, Any]:
    """Fills the fields a stored config lacks (added to ibjax after it was written).

    A missing field takes the value the run was trained with: its
    :data:`ABSENT_MEANS` entry where the default has since changed, else today's default.
    """
    if defaults is None:
        defaults = to_dict(default_config())
        for dotted, value in ABSENT_MEANS.items():
            section, field = dotted.split(".")
            defaults[section][field] = value
    out = dict(config_dict)
    for key, value in defaults.items():
        if key not in out:
            out[key] = value
        elif isinstance(value, dict) and isinstance(out[key], dict):
            out[key] = with_defaults(out[key], value)
    return out


def read_stored(path) -> dict[str, Any]:
    """A run's stored ``config.json`` as written (a plain dict, not completed with defaults).

    Raises :class:`ConfigError` naming the file for malformed JSON; executes
    nothing from the file.
    """
    from pathlib import Path

    path = Path(path)
    return from_json(path.read_text(encoding="utf-8"), str(path)).to_dict()


def load_stored(path) -> ml_collections.ConfigDict:
    """A run's stored ``config.json``: parsed, completed with defaults, validated.

    Raises :class:`ConfigError` naming the file for malformed JSON, wrong
    types or unknown fields; executes nothing from the file.
    """
    config = ml_collections.ConfigDict(with_defaults(read_stored(path)))
    try:
        validate(config)
    except ConfigError as error:
        raise ConfigError(f"{path}: {error}") from None
    return config


def differences(stored: dict[str, Any], current: dict[str, Any], prefix: str = "") -> list[str]:
    """Dotted names of the fields that differ between two config dicts."""
    out = []
    for key in sorted(set(stored) | set(current)):
        a, b = stored.get(key, "<absent>"), current.get(key, "<absent>")
        if isinstance(a, dict) and isinstance(b, dict):
            out += differences(a, b, f"{prefix}{key}.")
        elif a != b:
            out.append(f"{prefix}{key}: stored {a!r}, now {b!r}")
    return out


def from_file(path) -> ml_collections.ConfigDict:
    """Loads a config file (``configs/*.py``) by path and returns its ``get_config()``.

    Lets one experiment config start from another without import-path tricks.
    """
    import importlib.util
    from pathlib import Path

    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file {path} does not exist.")
    spec = importlib.util.spec_from_file_location(f"ibjax_config_{path.stem}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config()
