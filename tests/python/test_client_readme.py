"""Runs the Python snippets of client/README.md in order, in one namespace, from the
repository root, as a reader would paste them (SmolLM2 through LocalBackend). Each snippet
is compiled under the README's name and line numbers, so node sources point into it.
Skipped when the engine binary or the model is missing.
"""

import re

import pytest

from conftest import ROOT, SMOLLM2, engine_binary

README = ROOT / "client" / "README.md"
_SNIPPET = re.compile(r"^```python\n(.*?)^```", re.S | re.M)


def snippets():
    text = README.read_text()
    for match in _SNIPPET.finditer(text):
        first_line = text.count("\n", 0, match.start(1))
        yield first_line, match.group(1)


def test_readme_snippets_run(monkeypatch, capsys):
    if not engine_binary().is_file() or not SMOLLM2.is_file():
        pytest.skip(f"needs {engine_binary()} and {SMOLLM2}")
    monkeypatch.chdir(ROOT)
    monkeypatch.setenv("GLASSBOX_ENGINE", str(engine_binary()))
    namespace = {}
    for first_line, code in snippets():
        exec(compile("\n" * first_line + code, "README.md", "exec"), namespace)
    failing_line = README.read_text().splitlines().index("        (h @ h).save()") + 1
    printed = capsys.readouterr().out
    assert re.search(rf"INVALID_ARGUMENT \d+ README\.md:{failing_line}\b", printed), printed
