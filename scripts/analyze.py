"""Information-plane analysis of trained runs, from their checkpoints (never retrains).

python scripts/analyze.py --workdir runs/a [--workdir runs/b | --workdir sweep_dir]

Writes DIR/information_plane.jsonl per run; a second call only computes the
epochs it has not done yet.
"""

from absl import app, flags, logging

from ibjax import analysis
from ibjax.io import find_run_dirs

_WORKDIRS = flags.DEFINE_multi_string("workdir", None, "Run or sweep directory (repeatable).")
_K = flags.DEFINE_integer("k", 3, "Neighbours of the k-NN entropy estimators.")
_MAX_EXAMPLES = flags.DEFINE_integer("max_examples", 0, "Use only the first N training examples (0: all).")
_ESTIMATOR = flags.DEFINE_enum("estimator", "mixture", list(analysis.ESTIMATORS),
                               "H[Z], H[Z|Y] of noisy deterministic latents: Gaussian-mixture bounds or k-NN.")
_RECORDS = flags.DEFINE_string("records", "information_plane.jsonl",
                               "File name of the records in each run directory (keep several analyses side by side).")
flags.mark_flags_as_required(["workdir"])


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
    logging.set_verbosity(logging.WARNING)
    try:
        run_dirs = find_run_dirs(_WORKDIRS.value)
    except (FileNotFoundError, ValueError) as error:
        raise SystemExit(f"error: {error}") from None
    for run_dir in run_dirs:
        records = analysis.analyze_run(run_dir, k=_K.value, max_examples=_MAX_EXAMPLES.value,
                                       estimator=_ESTIMATOR.value, records_name=_RECORDS.value)
        flagged = sum(bool(r["flags"]) for r in records)
        print(f"{run_dir}: {len(records)} new epoch(s) -> {run_dir / _RECORDS.value}"
              + (f"; {flagged} with impossible values (see their 'flags')" if flagged else ""))


if __name__ == "__main__":
    app.run(main)
