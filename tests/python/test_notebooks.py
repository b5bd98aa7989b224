"""Runs every lesson in notebooks/ top to bottom (nbclient, a python3 kernel from this
interpreter's environment) against one live local service serving SmolLM2 as
"smollm2-135m" — except 06_two_models, which runs against a service of its own serving
SmolLM2 and Gemma 3 270M ("gemma3-270m") side by side, two workers, as `glassbox up` with
two --model/--name pairs runs it. The kernel finds the service through GLASSBOX_URL and
GLASSBOX_API_KEY, as a student's would.

Lessons have exercises (notebooks/README.md, "How a lesson is built"): a code cell tagged
`exercise` that raises NotImplementedError, the markdown cell after it tagged `solution`
holding the answer in a collapsed <details> block, and later a code cell tagged `check` (a
self-check that asserts) whose metadata `glassbox.mistake` holds a typical wrong answer.
The test puts each solution in place of its exercise, and after each self-check runs the
mistake and that self-check again, which must fail with an AssertionError (then the
kernel's variables are put back). Each lesson asserts its key result in its last cell; a
failing cell fails the test with that cell's error. No progress text may stay in any
cell's output once the lesson has run."""

import copy
import json
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
SOLUTION_CODE = re.compile(r"<details>.*?```python\n(.*?)\n```.*?</details>", re.S)

# Run in the kernel after a self-check: the recorded mistake, then the self-check, which must
# fail on an assertion; the kernel's variables are put back whatever happens.
MISTAKE_PROBE = """\
def _probe_mistake(namespace, mistake, check):
    saved = dict(namespace)
    try:
        exec(compile(mistake, "<known mistake>", "exec"), namespace)
        try:
            exec(compile(check, "<self-check>", "exec"), namespace)
        except AssertionError as error:
            return str(error)
        raise RuntimeError("the self-check above passed a known mistake:\\n" + mistake)
    finally:
        for name in [name for name in namespace if name not in saved]:
            del namespace[name]
        namespace.update(saved)
print("the self-check caught the known mistake:", _probe_mistake(globals(), {mistake}, {check}))
del _probe_mistake
"""


def tags(cell):
    return cell.get("metadata", {}).get("tags", [])


def exercises(notebook):
    """(exercise cell, its solution's code, the self-checks after it) for each exercise;
    raises AssertionError naming what a malformed exercise lacks."""
    cells, found = notebook.cells, []
    starts = [i for i, cell in enumerate(cells) if "exercise" in tags(cell)]
    for n, start in enumerate(starts):
        cell = cells[start]
        where = f"exercise at cell {start}"
        assert "raise NotImplementedError" in cell.source, f"{where}: its stub must raise NotImplementedError"
        assert start + 1 < len(cells) and "solution" in tags(cells[start + 1]), \
            f"{where}: the next cell must be its solution (a markdown cell tagged 'solution')"
        solution = SOLUTION_CODE.search(cells[start + 1].source)
        assert solution, f"{where}: its solution is a ```python block inside <details>"
        end = starts[n + 1] if n + 1 < len(starts) else len(cells)
        checks = [c for c in cells[start + 2:end] if "check" in tags(c)]
        assert checks, f"{where}: no self-check (a code cell tagged 'check') follows it"
        for check in checks:
            assert "assert " in check.source, f"{where}: its self-check asserts nothing"
            assert check.metadata.get("glassbox", {}).get("mistake"), \
                f"{where}: its self-check records no known mistake (metadata glassbox.mistake)"
        found.append((cell, solution.group(1), checks))
    return found


def with_solutions(notebook):
    """The notebook with every exercise replaced by its solution, and after every self-check
    a cell that runs the recorded mistake and expects that self-check to fail."""
    notebook = copy.deepcopy(notebook)
    solved = {id(cell): code for cell, code, _ in exercises(notebook)}
    cells = []
    for cell in notebook.cells:
        if id(cell) in solved:
            cell = nbformat.v4.new_code_cell(solved[id(cell)])
        cells.append(cell)
        if "check" in tags(cell):
            probe = MISTAKE_PROBE.format(mistake=repr(cell.metadata["glassbox"]["mistake"]),
                                         check=repr(cell.source))
            cells.append(nbformat.v4.new_code_cell(probe))
    notebook.cells = cells
    return notebook


def output_text(notebook):
    """Everything the executed cells show, as text."""
    texts = []
    for cell in notebook.cells:
        for output in cell.get("outputs", []):
            texts.append(output.get("text", "") if output.output_type == "stream"
                         else json.dumps(output.get("data", {})))
    return "\n".join(texts)


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
    notebook = with_solutions(nbformat.read(path, as_version=4))
    client = NotebookClient(notebook, kernel_name="python3", timeout=CELL_TIMEOUT,
                            resources={"metadata": {"path": str(path.parent)}})
    try:
        client.execute()
    except CellExecutionError as error:
        pytest.fail(f"{path.name}: {ANSI_COLOUR.sub('', str(error))}", pytrace=False)
    shown = output_text(notebook)
    assert "glassbox: job" not in shown, f"{path.name}: a progress line stayed in a cell's output"
    assert shown.count("the self-check caught the known mistake") == \
        sum(len(checks) for _, _, checks in exercises(nbformat.read(path, as_version=4)))


@pytest.mark.parametrize("path", [p for p in NOTEBOOKS if p != TWO_MODELS],
                         ids=lambda path: path.stem)
def test_notebook_runs_and_its_checks_hold(path, smollm2_service, monkeypatch):
    run_notebook(path, smollm2_service, monkeypatch)


def test_06_two_models_notebook_runs_and_its_checks_hold(two_models_service, monkeypatch):
    """The same logit lens and induction-head search on SmolLM2 and Gemma 3 270M, served
    side by side; the last cell checks what holds on both (see the notebook)."""
    run_notebook(TWO_MODELS, two_models_service, monkeypatch)


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda path: path.stem)
def test_every_notebook_is_a_lesson(path):
    """Opens with what it teaches and why, has exercises each with a hidden solution and a
    self-check that records a known mistake, and ends with references."""
    notebook = nbformat.read(path, as_version=4)
    first = notebook.cells[0]
    assert first.cell_type == "markdown" and first.source.startswith("# "), \
        f"{path.name}: opens with a markdown title"
    for heading in ("What you will learn", "Why", "Before you start"):
        assert heading in first.source, f"{path.name}: its first cell says '{heading}'"
    assert len(exercises(notebook)) >= 1, f"{path.name}: has no exercise"
    last_markdown = [c for c in notebook.cells if c.cell_type == "markdown"][-1]
    assert last_markdown.source.startswith("## References") and "](http" in last_markdown.source, \
        f"{path.name}: its last markdown cell is '## References' with links to the papers"


def test_a_solution_is_put_in_place_and_a_probe_follows_each_self_check():
    notebook = nbformat.v4.new_notebook()
    exercise = nbformat.v4.new_code_cell("answer = None\nraise NotImplementedError('exercise')")
    exercise.metadata["tags"] = ["exercise"]
    solution = nbformat.v4.new_markdown_cell(
        "<details>\n<summary>Solution</summary>\n\n```python\nanswer = 42\n```\n\n</details>")
    solution.metadata["tags"] = ["solution"]
    check = nbformat.v4.new_code_cell("assert answer == 42, 'answer is 42'")
    check.metadata["tags"] = ["check"]
    check.metadata["glassbox"] = {"mistake": "answer = 41"}
    notebook.cells = [exercise, solution, check]
    cells = with_solutions(notebook).cells
    assert [c.source for c in cells[:3]] == ["answer = 42", solution.source, check.source]
    assert "'answer = 41'" in cells[3].source and len(cells) == 4
    namespace = {}
    exec(cells[0].source, namespace)
    exec(cells[3].source, namespace)          # the mistake is caught, the answer put back
    assert namespace["answer"] == 42 and "_probe_mistake" not in namespace
    check.metadata["glassbox"] = {"mistake": "answer = 42"}  # a mistake the check misses
    notebook.cells = [exercise, solution, check]
    cells = with_solutions(notebook).cells
    with pytest.raises(RuntimeError, match="passed a known mistake"):
        exec(cells[3].source, {"answer": 42})
    check.metadata["glassbox"] = {}
    notebook.cells = [exercise, solution, check]
    with pytest.raises(AssertionError, match="records no known mistake"):
        exercises(notebook)


def test_notebooks_are_committed_without_outputs():
    for path in NOTEBOOKS:
        notebook = nbformat.read(path, as_version=4)
        code = [cell for cell in notebook.cells if cell.cell_type == "code"]
        assert all(not cell.outputs and cell.execution_count is None for cell in code), \
            f"{path.name} has outputs: clear them before committing"
