"""Multi-process training, executed: two JAX processes on this machine, one CPU device each.

The processes meet at a coordinator on localhost (``jax.distributed``) and
run their collectives over gloo; together they run ``scripts/train.py`` with
the global batch sharded over both. Process 0 writes the files, both take
part in each Orbax checkpoint, and a SIGTERM to either stops both at the same
step.
"""

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import jax
import numpy as np
import pytest

from ibjax import config as configlib
from ibjax import experiment, train
from ibjax.io import read_jsonl

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]
CONFIG = ROOT / "configs" / "digits_condvar.py"
TIMING_KEYS = {"examples_per_sec", "epoch_seconds", "compile_seconds"}
# Small batches and 2 steps a call: many calls per epoch (1437 // 8 = 179 steps), so a signal lands mid-epoch.
SLOW = ("--config.train.batch_size=8", "--config.train.num_epochs=3", "--config.train.steps_per_call=2")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def child_env(devices: int = 1) -> dict:
    """The test process forces 4 CPU devices (conftest); a child gets ``devices``."""
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    env["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={devices}"
    return env


def script(workdir, *overrides, progress_bar=False):
    return [sys.executable, str(ROOT / "scripts" / "train.py"), "--config", str(CONFIG), "--workdir", str(workdir),
            f"--config.train.progress_bar={progress_bar}", *overrides]


class Processes:
    """``scripts/train.py`` started as processes 0 and 1 of one run; killed on exit if still running."""

    def __init__(self, workdir: Path, logs: Path, *overrides, progress_bar=False):
        port = free_port()
        logs.mkdir(parents=True, exist_ok=True)
        self.logs = [(logs / f"process{i}.out", logs / f"process{i}.err") for i in range(2)]
        self.procs = []
        for i, (out, err) in enumerate(self.logs):
            command = script(workdir, *overrides, f"--coordinator_address=localhost:{port}", "--num_processes=2",
                             f"--process_id={i}", progress_bar=progress_bar)
            with open(out, "w") as stdout, open(err, "w") as stderr:
                self.procs.append(subprocess.Popen(command, stdout=stdout, stderr=stderr, env=child_env(),
                                                   cwd=ROOT))

    def __enter__(self):
        return self

    def wait(self, timeout: float = 300.0) -> list[int]:
        deadline = time.time() + timeout
        return [p.wait(timeout=max(deadline - time.time(), 1.0)) for p in self.procs]

    def running(self) -> bool:
        return all(p.poll() is None for p in self.procs)

    def output(self, i: int) -> tuple[str, str]:
        return tuple(path.read_text() for path in self.logs[i])

    def __exit__(self, *exc):
        for p in self.procs:
            if p.poll() is None:
                p.kill()
                p.wait()


def wait_for(predicate, timeout=240.0):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if predicate():
            return True
        time.sleep(0.05)
    return False


def without_timing(records):
    return [{k: v for k, v in r.items() if k not in TIMING_KEYS} for r in records]


def assert_same_metrics(got, want, rel):
    assert [r["epoch"] for r in got] == [r["epoch"] for r in want]
    for a, b in zip(without_timing(got), without_timing(want)):
        assert a.keys() == b.keys()
        for key in b:
            expected = pytest.approx(b[key], rel=rel, abs=rel / 10) if isinstance(b[key], float) else b[key]
            assert a[key] == expected, (b["epoch"], key)


def digits_config(**fields):
    config = configlib.from_file(CONFIG)
    config.train.progress_bar = False
    for dotted, value in fields.items():
        section, name = dotted.split("__")
        config[section][name] = value
    return config


def test_two_processes_train_like_one_and_write_one_set_of_checkpoints(tmp_path):
    workdir = tmp_path / "run"
    with Processes(workdir, tmp_path, "--config.train.num_epochs=2") as run:
        codes = run.wait()
        assert codes == [0, 0], [run.output(i)[1][-3000:] for i in range(2)]
        out0, out1 = run.output(0)[0], run.output(1)[0]
    # Process 0 alone prints and writes: one config, one metrics file, one set of event files and checkpoints.
    assert len(re.findall(r"^epoch +\d", out0, re.M)) == 2 and not re.findall(r"^epoch +\d", out1, re.M)
    files = sorted(p.name for p in workdir.iterdir())
    assert files[:2] == ["checkpoints", "config.json"] and files[-1] == "metrics.jsonl", files
    assert len([f for f in files if f.startswith("events.out.tfevents")]) == 1, files
    assert not (workdir / "lock").exists()

    # The same global batch of 128 in one process (4 devices here) gives the same metrics.
    train.train_and_evaluate(digits_config(train__num_epochs=2), tmp_path / "single")
    got, want = read_jsonl(workdir / "metrics.jsonl"), read_jsonl(tmp_path / "single" / "metrics.jsonl")
    assert_same_metrics(got, want, rel=1e-5)

    with experiment.restore_run(workdir) as ckpts, experiment.restore_run(tmp_path / "single") as reference:
        assert ckpts.epochs == [1, 2]
        state, meta = ckpts.restore(2)
        assert int(state.step) == 22 and meta["metrics"]["train_loss"] == got[-1]["train_loss"]
        expected, _ = reference.restore(2)
        for a, b in zip(jax.tree.leaves(state.params), jax.tree.leaves(expected.params)):
            np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-4, atol=1e-5)


def steps_done(text: str, epoch: int) -> int:
    """The last step count process 0's progress bar shows for ``epoch`` (0 before it starts)."""
    counts = re.findall(rf"epoch {epoch}:[^\r\n]*?\| *(\d+)/179", text)
    return int(counts[-1]) if counts else 0


def test_sigterm_to_one_process_stops_both_at_one_step_and_resume_matches(tmp_path):
    workdir = tmp_path / "run"
    metrics = workdir / "metrics.jsonl"
    # Process 0's progress bar (a metrics-neutral field) tells when epoch 2 is under way.
    with Processes(workdir, tmp_path / "first", *SLOW, progress_bar=True) as run:
        assert wait_for(lambda: not run.running() or steps_done(run.output(0)[1], 2) >= 5), "training did not start"
        assert run.running(), [run.output(i)[1][-3000:] for i in range(2)]
        run.procs[1].send_signal(signal.SIGTERM)
        codes = run.wait()
        errs = [run.output(i)[1] for i in range(2)]
    assert codes == [3, 3], [e[-3000:] for e in errs]
    stops = [re.search(r"Stopped by SIGTERM \(to process 1\) at epoch (\d+), step (\d+)", e) for e in errs]
    assert all(stops), [e[-2000:] for e in errs]
    assert stops[0].groups() == stops[1].groups()
    epoch, step = map(int, stops[0].groups())
    marker = json.loads((workdir / "preempted.json").read_text())
    assert (marker["epoch"], marker["step_in_epoch"]) == (epoch, step)
    assert epoch >= 2 and 0 < step < 179
    assert not (workdir / "lock").exists()
    with experiment.restore_run(workdir) as ckpts:
        assert ckpts.epochs == list(range(1, epoch))

    with Processes(workdir, tmp_path / "resumed", *SLOW) as resumed:
        codes = resumed.wait()
        out0 = resumed.output(0)[0]
        assert codes == [0, 0], [resumed.output(i)[1][-3000:] for i in range(2)]
    assert f"Resuming epoch {epoch} at step {step} of 179." in out0
    assert not (workdir / "preempted.json").exists() and not (workdir / "preempted").exists()
    with experiment.restore_run(workdir) as ckpts:
        assert ckpts.epochs == [1, 2, 3]

    # An uninterrupted run with the same global batch on the same two devices, in one process.
    whole = subprocess.run(script(tmp_path / "whole", *SLOW), capture_output=True, text=True, timeout=300,
                           env=child_env(devices=2), cwd=ROOT)
    assert whole.returncode == 0, whole.stderr[-3000:]
    assert_same_metrics(read_jsonl(metrics), read_jsonl(tmp_path / "whole" / "metrics.jsonl"), rel=1e-6)
