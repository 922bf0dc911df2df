"""experiments/fig3_torch.py, the PyTorch cross-check of section 7.1: training, resuming, refusing other flags."""

import importlib.util
import math
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("torch")

from ibjax.data import Dataset  # noqa: E402

SCRIPT = Path(__file__).resolve().parents[1] / "experiments" / "fig3_torch.py"
TIMINGS = ("train_seconds", "epoch_seconds")


@pytest.fixture(scope="module")
def fig3_torch():
    spec = importlib.util.spec_from_file_location("fig3_torch", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def dataset() -> Dataset:
    """300 training and 100 test images of Permutation-MNIST's shape, 3 classes."""
    rng = np.random.default_rng(0)
    images = lambda n: rng.integers(0, 256, (n, 28, 28, 1), dtype=np.uint8)  # noqa: E731
    labels = lambda n: rng.integers(0, 3, n).astype(np.int32)  # noqa: E731
    return Dataset("permuted_mnist", images(300), labels(300), images(100), labels(100), num_classes=3)


def _run(module, dataset, out: Path, *flags: str) -> list[dict]:
    args = module.parse_args(["--out", str(out), "--batch-size", "64", "--threads", "1", *flags])
    return module.train(args, dataset)


def _without_timings(records: list[dict]) -> list[dict]:
    return [{k: v for k, v in r.items() if k not in TIMINGS} for r in records]


def test_trains_resumes_and_refuses_other_flags(fig3_torch, dataset, tmp_path):
    straight = _run(fig3_torch, dataset, tmp_path / "straight", "--epochs", "2")
    assert [r["epoch"] for r in straight] == [1, 2]
    assert [r["step"] for r in straight] == [5, 10]  # 300 / 64: the last partial batch is kept
    for record in straight:
        assert all(math.isfinite(v) for v in record.values())
        assert 0.0 <= record["test_accuracy"] <= 1.0 and 1 <= record["classes_apart"] <= 3

    # One epoch, a record written after the checkpoint (a kill in between), then resumed to two.
    run = tmp_path / "resumed"
    _run(fig3_torch, dataset, run, "--epochs", "1")
    with (run / "metrics.jsonl").open("a") as f:
        f.write('{"epoch": 2, "left": "by a killed run"}\n')
    resumed = _run(fig3_torch, dataset, run, "--epochs", "2")
    assert _without_timings(resumed) == _without_timings(straight)  # resuming is exact
    assert len(_run(fig3_torch, dataset, run, "--epochs", "2")) == 2  # a finished run only reads

    with pytest.raises(SystemExit, match=r"--seed: stored 0, given 1"):
        _run(fig3_torch, dataset, run, "--epochs", "2", "--seed", "1")
