"""Figure 4's table: the training error right after each entropy cap, with and without zero-entropy noise.

Reads every run under WORKDIR (as experiments/fig4_entropy_cap.sh writes them,
through ibjax.plotting.entropy_cap_records, the records Figure 4 is drawn from)
and prints one column per cap: the median error over the seeds of each noise
setting, and the latent's entropy bound measured after the cap (which should
equal the cap). Caps a run has not reached yet are left empty.

Usage: python experiments/fig4_table.py runs/fig4_entropy_cap
"""

from __future__ import annotations

import sys
from collections import defaultdict

import numpy as np

from ibjax import plotting
from ibjax.io import find_run_dirs


def main(workdir: str) -> None:
    runs = [plotting.load_run(d) for d in find_run_dirs([workdir])]
    records = plotting.entropy_cap_records(runs)
    bounds = {(bool(run.config["model"]["noise"]), m["entropy_cap"]): m["latent_entropy_bound"]
              for run in runs for m in run.metrics if "entropy_cap" in m}
    caps = sorted({r["entropy_cap"] for r in records}, reverse=True)
    errors: dict[tuple[bool, float], list[float]] = defaultdict(list)
    for r in records:
        errors[(r["noise"], r["entropy_cap"])].append(r["error_rate"])
    print("| cap (nats) | " + " | ".join(f"{c:,g}" for c in caps) + " |")
    print("| --- |" + " ---: |" * len(caps))
    for noise, label in ((True, "error, with noise"), (False, "error, without noise")):
        cells = [f"{100 * np.median(errors[(noise, c)]):.1f}%" if errors[(noise, c)] else "" for c in caps]
        print(f"| {label} | " + " | ".join(cells) + " |")
    for noise, label in ((True, "bound after the cap, with noise"), (False, "bound after the cap, without noise")):
        cells = [f"{bounds[(noise, c)]:,.2f}" if (noise, c) in bounds else "" for c in caps]
        print(f"| {label} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main(*sys.argv[1:])
