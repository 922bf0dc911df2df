r"""Runs a sweep over γ, seeds and regularisers from one config, then analyses and plots it.

  python scripts/sweep.py --config configs/cifar_condvar.py --sweep_dir runs/sweep \
      [--gammas=1e-3,1e-2,1e-1] [--seeds=0,1,2] [--regularizers=l2,log_var,cond_log_var] \
      [--population] [--config.train.num_epochs=10]

Defaults: the 13 values of γ of section 7.3 (log-spaced from 1e-4 to 10), the
config's seed and its regulariser. Each run gets its own workdir under
--sweep_dir (``cond_log_var/gamma0.001/seed0``); --population trains all γ of
a (regulariser, seed) as one vmapped population instead. ``sweep.json`` lists
every run and its status; the analysis writes each run's
``information_plane.jsonl`` and the figures go to ``--sweep_dir/figures/``.

Running the same command again resumes: finished runs are skipped, a
half-finished one resumes from its checkpoint. Exit status: 0 when every run
and analysis succeeded, 1 when any failed (the others still ran), 3 when
SIGTERM/Ctrl-C stopped the sweep (rerun to resume).
"""

import shlex
import sys

from absl import app, flags, logging
from ml_collections import config_flags

from ibjax import sweep
from ibjax import workdir as workdirlib

_CONFIG = config_flags.DEFINE_config_file("config", None, "Base experiment config (configs/*.py).", lock_config=True)
_SWEEP_DIR = flags.DEFINE_string("sweep_dir", None, "Sweep directory: one workdir per run, sweep.json, figures/.")
_GAMMAS = flags.DEFINE_list("gammas", None, "Values of γ (default: 13 log-spaced from 1e-4 to 10).")
_SEEDS = flags.DEFINE_list("seeds", None, "Seeds, one trial each (default: the config's seed).")
_REGULARIZERS = flags.DEFINE_list("regularizers", None, "Regularisers (default: the config's).")
_POPULATION = flags.DEFINE_bool("population", False, "One vmapped population run per (regulariser, seed).")
_SKIP_ANALYSIS = flags.DEFINE_bool("skip_analysis", False, "Only train: no analysis, no figures.")
_K = flags.DEFINE_integer("analysis_k", 3, "Neighbours of the k-NN entropy estimators.")
_MAX_EXAMPLES = flags.DEFINE_integer("analysis_max_examples", 0, "Analyse only the first N training examples (0: all).")
_EXTEND = flags.DEFINE_bool("allow_num_epochs_change", False, "Resume runs whose train.num_epochs differs (extend).")
flags.mark_flags_as_required(["config", "sweep_dir"])

#: Exit status of a sweep stopped by SIGTERM/SIGINT (as scripts/train.py).
EXIT_PREEMPTED = 3


def _parse(flag, convert, kind: str):
    if flag.value is None:
        return None
    try:
        return [convert(v) for v in flag.value]
    except ValueError:
        raise app.UsageError(f"--{flag.name} must be a comma-separated list of {kind}; got {','.join(flag.value)!r}.")


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
    logging.set_verbosity(logging.WARNING)  # Orbax logs every save at INFO
    base_config = _CONFIG.value
    try:
        specs = sweep.expand_grid(
            base_config,
            gammas=_parse(_GAMMAS, float, "numbers"),
            seeds=_parse(_SEEDS, int, "integers"),
            regularizers=_REGULARIZERS.value,
            population=_POPULATION.value,
        )
        manifest = sweep.run_sweep(
            base_config, _SWEEP_DIR.value, specs,
            analyze=not _SKIP_ANALYSIS.value, plot=not _SKIP_ANALYSIS.value,
            k=_K.value, analysis_max_examples=_MAX_EXAMPLES.value, allow_num_epochs_change=_EXTEND.value,
        )
    except (ValueError, workdirlib.WorkdirError) as error:  # ConfigError is a ValueError
        raise SystemExit(f"error: {error}") from None

    failed = [e for e in manifest["runs"] if e["status"] == "failed"]
    failed_analyses = [r for e in manifest["runs"] for r in [e, *e.get("members", [])] if r.get("analysis") == "failed"]
    for entry in failed:
        print(f"failed: {entry['workdir']}: {entry['error']}", file=sys.stderr)
    for record in failed_analyses:
        print(f"analysis failed: {record['workdir']}: {record['analysis_error']}", file=sys.stderr)
    done = sum(e["status"] == "done" for e in manifest["runs"])
    print(f"{done} of {len(specs)} runs done; manifest {_SWEEP_DIR.value}/{sweep.MANIFEST_NAME}", file=sys.stderr)
    if manifest["status"] == "stopped":
        command = " ".join(shlex.quote(a) for a in [sys.executable] + sys.argv)
        print(f"Sweep stopped; resume with:\n  {command}", file=sys.stderr, flush=True)
        sys.exit(EXIT_PREEMPTED)
    if failed or failed_analyses or any("error" in f for f in manifest.get("figures", {}).values()):
        sys.exit(1)


if __name__ == "__main__":
    app.run(main)
