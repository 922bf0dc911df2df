r"""Draws the paper's figures from run workdirs; writes each as PNG and PDF.

  python scripts/plot.py --workdir runs/sweep_l2 --workdir runs/sweep_log_var \
      --figure information_plane --out figures/
  python scripts/plot.py --entropy_cap_file runs/entropy_cap.jsonl --figure entropy_cap

A ``--workdir`` holding ``metrics.jsonl`` is one run; any other directory is a
sweep whose run subdirectories are found recursively. With ``--figure all``
(the default) every figure the data supports is drawn.
"""

import pathlib

from absl import app, flags

from ibjax import plotting
from ibjax.io import find_run_dirs, read_jsonl

_WORKDIR = flags.DEFINE_multi_string("workdir", None, "Run or sweep directory; repeatable.")
_FIGURE = flags.DEFINE_enum("figure", "all", ["all", *plotting.FIGURES], "Figure to draw.")
_ENTROPY_CAP_FILE = flags.DEFINE_string(
    "entropy_cap_file", None, "JSON-lines records of the entropy-cap experiment (Fig 4)."
)
_OUT = flags.DEFINE_string("out", None, "Output directory; default <first workdir>/figures or ./figures.")
_RECORDS = flags.DEFINE_string("records", "information_plane.jsonl",
                               "Information-plane records to draw, e.g. information_plane_knn.jsonl.")
_SUFFIX = flags.DEFINE_string("suffix", "", "Appended to each figure's file name, e.g. _knn.")


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {' '.join(argv[1:])}")
    workdirs = _WORKDIR.value or []
    if not workdirs and not _ENTROPY_CAP_FILE.value:
        raise app.UsageError("Give at least one --workdir or an --entropy_cap_file.")
    runs = [plotting.load_run(d, _RECORDS.value) for d in find_run_dirs(workdirs)]
    # Fig 4 data: a file if given, else the capped epochs of the runs themselves.
    entropy_cap_records = (read_jsonl(_ENTROPY_CAP_FILE.value) if _ENTROPY_CAP_FILE.value
                           else plotting.entropy_cap_records(runs))

    if _FIGURE.value == "all":
        names = plotting.supported_figures(runs, entropy_cap_records)
        if not names:
            raise app.UsageError(f"The data supports none of the figures {', '.join(plotting.FIGURES)}.")
    else:
        names = [_FIGURE.value]
    out = pathlib.Path(_OUT.value) if _OUT.value else pathlib.Path(workdirs[0] if workdirs else ".") / "figures"
    for name, figure in plotting.make_figures(names, runs, entropy_cap_records).items():
        png, pdf = plotting.save_figure(figure, out / f"{name}{_SUFFIX.value}")
        print(f"{name}: {png} {pdf}")


if __name__ == "__main__":
    app.run(main)
