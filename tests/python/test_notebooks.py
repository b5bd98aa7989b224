"""Runs every classroom notebook in notebooks/ top to bottom (nbclient, a python3 kernel
from this interpreter's environment) against one live local service serving SmolLM2 as
"smollm2-135m" — except 06_two_models, which runs against a service of its own serving
SmolLM2 and Gemma 3 270M ("gemma3-270m") side by side, two workers, as `glassbox up` with
two --model/--name pairs runs it. The kernel finds the service through GLASSBOX_URL and
GLASSBOX_API_KEY, as a student's would. Each notebook asserts its key result in its last
cell; a failing cell fails the test with that cell's error."""

import re
import tempfile

import nbformat
import pytest
from nbclient import NotebookClient
from nbclient.exceptions import CellExecutionError

import glassbox
from glassbox import launcher
from glassbox.service import ServiceBackend

from conftest import ROOT, SMOLLM2, Service

NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))
TWO_MODELS = ROOT / "notebooks" / "06_two_models.ipynb"
GEMMA3 = ROOT / "models" / "gemma-3-270m-q4_k_m.gguf"
CELL_TIMEOUT = 120  # seconds
ANSI_COLOUR = re.compile(r"\x1b\[[0-9;]*m")


@pytest.fixture(scope="session")
def two_models_service():
    """A local service of its own — Redis, the broker, a SmolLM2 worker ("smollm2-135m")
    and a Gemma 3 270M worker ("gemma3-270m"), API keys on — for 06_two_models only, so the
    other notebooks' service stays one model. A missing model or binary fails, saying which."""
    if not GEMMA3.is_file():
        pytest.fail(f"no model at {GEMMA3}: run scripts/fetch_model.sh gemma3-270m (./setup.sh does)")
    with tempfile.TemporaryDirectory(prefix="glassbox-two-models-") as data_dir:
        params = launcher.ServiceParams(
            model_path=str(SMOLLM2), more_models=((str(GEMMA3), "gemma3-270m"),),
            port=launcher.free_port(), worker_port=launcher.free_port(), data_dir=data_dir,
            bind="127.0.0.1")
        service = launcher.LocalService(params)
        try:
            service.check()
        except glassbox.GlassboxError as e:
            pytest.fail(f"needs a built service and the models (./setup.sh): {e.message}")
        with service:
            running = Service(params.url, service.create_key("tests"))
            backend = ServiceBackend(running.url, running.api_key, quiet=True)
            try:
                for name in ("smollm2-135m", "gemma3-270m"):
                    service.wait_until_serving(backend, name)
            finally:
                backend.close()
            yield running


def run_notebook(path, service, monkeypatch):
    monkeypatch.setenv("GLASSBOX_URL", service.url)
    monkeypatch.setenv("GLASSBOX_API_KEY", service.api_key)
    monkeypatch.setenv("PYTHONPATH", str(ROOT / "client"))  # this checkout's client
    notebook = nbformat.read(path, as_version=4)
    client = NotebookClient(notebook, kernel_name="python3", timeout=CELL_TIMEOUT,
                            resources={"metadata": {"path": str(path.parent)}})
    try:
        client.execute()
    except CellExecutionError as error:
        pytest.fail(f"{path.name}: {ANSI_COLOUR.sub('', str(error))}", pytrace=False)


@pytest.mark.parametrize("path", [p for p in NOTEBOOKS if p != TWO_MODELS],
                         ids=lambda path: path.stem)
def test_notebook_runs_and_its_checks_hold(path, smollm2_service, monkeypatch):
    run_notebook(path, smollm2_service, monkeypatch)


def test_06_two_models_notebook_runs_and_its_checks_hold(two_models_service, monkeypatch):
    """The same logit lens and induction-head search on SmolLM2 and Gemma 3 270M, served
    side by side; the last cell checks what holds on both (see the notebook)."""
    run_notebook(TWO_MODELS, two_models_service, monkeypatch)


def test_notebooks_are_committed_without_outputs():
    for path in NOTEBOOKS:
        notebook = nbformat.read(path, as_version=4)
        code = [cell for cell in notebook.cells if cell.cell_type == "code"]
        assert all(not cell.outputs and cell.execution_count is None for cell in code), \
            f"{path.name} has outputs: clear them before committing"
