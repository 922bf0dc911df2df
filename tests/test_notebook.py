"""notebooks/colab_tpu.ipynb runs top to bottom in its QUICK mode (digits, 2 epochs, 3 γ) on the CPU.

The kernel is this interpreter (``sys.executable``) through a kernelspec written
into the test's temporary folder, so the test needs no installed kernelspec and
no network: it works in a fresh ``pip install -e ".[dev]"`` virtualenv.
"""

import json
import re
import sys
from pathlib import Path

import pytest

nbformat = pytest.importorskip("nbformat")
pytest.importorskip("nbclient")
pytest.importorskip("ipykernel")

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOK = ROOT / "notebooks" / "colab_tpu.ipynb"
KERNEL_NAME = "ibjax-test-python"


def _read_notebook():
    return nbformat.read(NOTEBOOK, as_version=4)


def _cell(nb, tag):
    tagged = [cell for cell in nb.cells if tag in cell.metadata.get("tags", [])]
    assert len(tagged) == 1, f"expected one cell tagged {tag!r}; found {len(tagged)}"
    return tagged[0]


def test_notebook_is_valid_nbformat_and_uses_no_private_ibjax_name():
    nb = _read_notebook()
    nbformat.validate(nb)
    code = "\n".join(cell.source for cell in nb.cells if cell.cell_type == "code")
    # Public API only: no `module._name` of ibjax reached into (dunders such as __version__ are fine).
    private = re.findall(r"\b(?:ibjax|configlib|experiment|train|analysis|plotting|workdirlib)\._(?!_)\w*", code)
    assert not private, private
    assert all(not cell.get("outputs") for cell in nb.cells if cell.cell_type == "code"), "commit it without outputs"
    # No download code of its own: data sets come through ibjax (tfds, or tfds's original files).
    assert "urllib" not in code and "urlretrieve" not in code and "requests." not in code
    for tag in ("settings", "install", "devices", "simulate-disconnect", "train", "analysis", "plots", "tensorboard"):
        _cell(nb, tag)


def _kernel_manager(tmp_path):
    """A kernel manager whose kernel is ``sys.executable -m ipykernel_launcher``."""
    from jupyter_client.kernelspec import KernelSpecManager
    from jupyter_client.manager import KernelManager

    spec_dir = tmp_path / "kernels" / KERNEL_NAME
    spec_dir.mkdir(parents=True)
    (spec_dir / "kernel.json").write_text(json.dumps({
        "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": "ibjax test (this interpreter)",
        "language": "python",
    }))
    specs = KernelSpecManager(kernel_dirs=[str(tmp_path / "kernels")])
    return KernelManager(kernel_name=KERNEL_NAME, kernel_spec_manager=specs)


@pytest.mark.slow
def test_notebook_runs_quick_mode_end_to_end(tmp_path, monkeypatch):
    from nbclient import NotebookClient

    runs_root = tmp_path / "runs"
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    # The kernel inherits this environment, including conftest's XLA_FLAGS (4 CPU devices).
    monkeypatch.setenv("IBJAX_NOTEBOOK_QUICK", "1")
    monkeypatch.setenv("IBJAX_REPO", str(ROOT))
    monkeypatch.setenv("IBJAX_NOTEBOOK_WORKDIR", str(runs_root))
    monkeypatch.setenv("JAX_PLATFORMS", "cpu")

    nb = _read_notebook()
    client = NotebookClient(nb, km=_kernel_manager(tmp_path), timeout=600,
                            resources={"metadata": {"path": str(cwd)}})
    client.execute()  # raises CellExecutionError on the first failing cell

    for cell in nb.cells:
        if cell.cell_type == "code":
            errors = [o for o in cell.outputs if o.output_type == "error"]
            assert not errors, (cell.source, errors)

    members = sorted(runs_root.glob("*/member*"))
    assert len(members) == 3, members
    for member in members:
        epochs = [json.loads(line)["epoch"] for line in (member / "metrics.jsonl").read_text().splitlines()]
        assert epochs == [1, 2], (member, epochs)  # the resumed run logs each epoch once
        plane = [json.loads(line)["epoch"] for line in (member / "information_plane.jsonl").read_text().splitlines()]
        assert sorted(plane) == [1, 2], (member, plane)
        live = [json.loads(line).get("information_plane") for line in (member / "metrics.jsonl").read_text().splitlines()]
        assert [r["epoch"] for r in live] == [1, 2], member  # the live information plane (ANALYZE_EVERY = 1)
    # The population's information-plane figure, beside its members, for %tensorboard.
    assert list((runs_root / "digits_condvar_quick_3gammas").glob("events.out.tfevents*"))

    def text(tag):
        return "".join(o.get("text", "") for o in _cell(nb, tag).outputs if o.output_type == "stream")

    assert "stopped after epoch 1" in text("simulate-disconnect")
    assert "Resuming" in text("train")
    plots = _cell(nb, "plots")
    assert any("image/png" in o.get("data", {}) for o in plots.outputs), [o.output_type for o in plots.outputs]
    assert (runs_root / "digits_condvar_quick_3gammas" / "figures" / "information_plane.png").is_file()
    assert not list(cwd.iterdir()), "the notebook wrote outside its workdir"
