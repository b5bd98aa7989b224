"""Runs every classroom notebook in notebooks/ top to bottom (nbclient, a python3 kernel
from this interpreter's environment) against one live local service serving SmolLM2 as
"smollm2-135m". The kernel finds the service through GLASSBOX_URL and GLASSBOX_API_KEY,
as a student's would. Each notebook asserts its key result in its last cell; a failing
cell fails the test with that cell's error."""

import re

import nbformat
import pytest
from nbclient import NotebookClient
from nbclient.exceptions import CellExecutionError

from conftest import ROOT

NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))
CELL_TIMEOUT = 120  # seconds
ANSI_COLOUR = re.compile(r"\x1b\[[0-9;]*m")


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda path: path.stem)
def test_notebook_runs_and_its_checks_hold(path, smollm2_service, monkeypatch):
    monkeypatch.setenv("GLASSBOX_URL", smollm2_service.url)
    monkeypatch.setenv("GLASSBOX_API_KEY", smollm2_service.api_key)
    monkeypatch.setenv("PYTHONPATH", str(ROOT / "client"))  # this checkout's client
    notebook = nbformat.read(path, as_version=4)
    client = NotebookClient(notebook, kernel_name="python3", timeout=CELL_TIMEOUT,
                            resources={"metadata": {"path": str(path.parent)}})
    try:
        client.execute()
    except CellExecutionError as error:
        pytest.fail(f"{path.name}: {ANSI_COLOUR.sub('', str(error))}", pytrace=False)


def test_notebooks_are_committed_without_outputs():
    for path in NOTEBOOKS:
        notebook = nbformat.read(path, as_version=4)
        code = [cell for cell in notebook.cells if cell.cell_type == "code"]
        assert all(not cell.outputs and cell.execution_count is None for cell in code), \
            f"{path.name} has outputs: clear them before committing"
