"""The progress line (client/glassbox/progress.py): where it goes and when it stays quiet."""

import io
import sys
import threading
import types

import pytest

from glassbox import progress
from glassbox.progress import ProgressLine


class FakeTerminal(io.StringIO):
    def isatty(self):
        return True


@pytest.fixture
def terminal(monkeypatch):
    monkeypatch.delenv("GLASSBOX_QUIET", raising=False)
    return FakeTerminal()


def test_a_terminal_gets_one_line_rewritten_then_cleared(terminal):
    line = ProgressLine(stream=terminal)
    assert line.mode == "tty"
    line.show("glassbox: job 1 queued (position 3) · 0.1 s", force=True)
    line.show("glassbox: job 1 running · 2.0 s", force=True)
    line.close()
    out = terminal.getvalue()
    assert out.count("\n") == 0 and out.endswith("\r")
    assert "\rglassbox: job 1 running · 2.0 s" in out


def test_quiet_settings(terminal, monkeypatch):
    assert ProgressLine(quiet=True, stream=terminal).mode == "off"
    monkeypatch.setenv("GLASSBOX_QUIET", "1")
    assert ProgressLine(stream=terminal).mode == "off"
    assert ProgressLine(quiet=False, stream=terminal).mode == "tty"  # asked for explicitly
    monkeypatch.delenv("GLASSBOX_QUIET")
    with progress.waiting_quietly():
        assert ProgressLine(quiet=False, stream=terminal).mode == "off"
    assert ProgressLine(stream=terminal).mode == "tty"


def test_scripts_stay_quiet_unless_asked_then_get_a_line_per_state(monkeypatch):
    log = io.StringIO()
    monkeypatch.delenv("GLASSBOX_QUIET", raising=False)
    assert ProgressLine(stream=log).mode == "off"
    line = ProgressLine(quiet=False, stream=log)
    for seconds in (0.1, 0.2):
        line.show(f"job queued · {seconds} s", key="queued")
    line.show("job running · 0.3 s", key="running")
    line.close()
    assert log.getvalue().splitlines() == ["job queued · 0.1 s", "job running · 0.3 s"]


def test_waiting_quietly_is_per_thread(terminal):
    seen = []
    with progress.waiting_quietly():
        thread = threading.Thread(target=lambda: seen.append(ProgressLine(stream=terminal).mode))
        thread.start()
        thread.join()
    assert seen == ["tty"]


def test_elapsed():
    assert progress.elapsed(4.25) == "4.2 s"
    assert progress.elapsed(185) == "3 min 05 s"


def test_a_notebook_gets_a_display_updated_in_place(monkeypatch):
    shown = []

    class Handle:
        def update(self, obj, raw):
            shown.append(("update", obj["text/plain"]))

    def display(obj, raw, display_id):
        shown.append(("display", obj["text/plain"]))
        return Handle()

    class ZMQInteractiveShell:  # what a Jupyter kernel's get_ipython() returns
        pass

    ipython = types.ModuleType("IPython")
    ipython.get_ipython = ZMQInteractiveShell
    ipython_display = types.ModuleType("IPython.display")
    ipython_display.display = display
    monkeypatch.setitem(sys.modules, "IPython", ipython)
    monkeypatch.setitem(sys.modules, "IPython.display", ipython_display)
    monkeypatch.delenv("GLASSBOX_QUIET", raising=False)
    line = ProgressLine(stream=io.StringIO())
    assert line.mode == "notebook"
    line.show("queued")
    line.show("running")
    line.close("completed in 1.0 s")
    assert shown == [("display", "queued"), ("update", "running"),
                     ("update", "completed in 1.0 s")]
