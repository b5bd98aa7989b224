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


class Shown(list):
    shell = None


@pytest.fixture
def notebook(monkeypatch):
    """A stand-in for IPython inside a Jupyter kernel: records what is displayed and how
    each display is updated; ``shown[-1]`` is what the cell's output holds now."""
    shown = Shown()

    class Handle:
        def update(self, obj, raw):
            shown.append(("update", obj["text/plain"]))

    def display(obj, raw, display_id):
        shown.append(("display", obj["text/plain"]))
        return Handle()

    class ZMQInteractiveShell:  # what a Jupyter kernel's get_ipython() returns
        parent_header = {"header": {"msg_id": "cell-1"}}  # the cell being run

    shell = ZMQInteractiveShell()
    ipython = types.ModuleType("IPython")
    ipython.get_ipython = lambda: shell
    ipython_display = types.ModuleType("IPython.display")
    ipython_display.display = display
    monkeypatch.setitem(sys.modules, "IPython", ipython)
    monkeypatch.setitem(sys.modules, "IPython.display", ipython_display)
    monkeypatch.setattr(progress, "_cell_displays", {})
    monkeypatch.delenv("GLASSBOX_QUIET", raising=False)
    shown.shell = shell
    return shown


def test_a_notebook_gets_a_display_updated_in_place_then_emptied(notebook):
    line = ProgressLine(stream=io.StringIO())
    assert line.mode == "notebook"
    line.show("glassbox: job 1 queued")
    line.show("glassbox: job 1 running")
    line.close()
    assert notebook == [("display", ""), ("update", "glassbox: job 1 queued"),
                        ("update", "glassbox: job 1 running"), ("update", "")]


def test_the_jobs_of_one_cell_share_one_display(notebook):
    for job in ("1", "2"):
        line = ProgressLine(stream=io.StringIO())
        line.show(f"glassbox: job {job} running")
        line.close()
    notebook.shell.parent_header = {"header": {"msg_id": "cell-2"}}   # the next cell
    line = ProgressLine(stream=io.StringIO())
    line.show("glassbox: job 3 running")
    line.close()
    assert [kind for kind, _ in notebook].count("display") == 2
    assert notebook == [("display", ""), ("update", "glassbox: job 1 running"), ("update", ""),
                        ("update", "glassbox: job 2 running"), ("update", ""),
                        ("display", ""), ("update", "glassbox: job 3 running"), ("update", "")]


def test_a_notebook_line_can_leave_a_final_text_when_asked(notebook):
    line = ProgressLine(stream=io.StringIO())
    line.show("queued")
    line.close("completed in 1.0 s")
    assert notebook[-1] == ("update", "completed in 1.0 s")


def test_a_notebook_line_never_shown_displays_nothing_when_closed(notebook):
    ProgressLine(stream=io.StringIO()).close()
    assert notebook == []


def test_a_finished_job_leaves_no_progress_text_in_a_notebook(notebook, monkeypatch):
    """JobFuture._wait closes its line with no final text: once the job is over the
    notebook cell keeps nothing of it (the line is emptied; results or the error remain)."""
    from glassbox import service

    future = service.JobFuture.__new__(service.JobFuture)
    future._quiet = None

    def wait_until(deadline, progress):
        progress.show("glassbox: job 3f2a9c1e running · 0.1 s")

    monkeypatch.setattr(future, "_wait_until", wait_until)
    future._wait(timeout=None, cancel_on_timeout=True)
    assert notebook == [("display", ""), ("update", "glassbox: job 3f2a9c1e running · 0.1 s"),
                        ("update", "")]


def test_run_all_leaves_no_summary_in_a_notebook_but_keeps_it_in_a_log(notebook, monkeypatch):
    import glassbox

    assert glassbox.run_all([lambda: 1, lambda: 2]) == [1, 2]
    assert notebook[1][1].startswith("glassbox: ") and notebook[-1] == ("update", "")
    monkeypatch.setitem(sys.modules, "IPython", types.ModuleType("IPython"))  # no kernel
    log = io.StringIO()
    monkeypatch.setattr(sys, "stderr", log)
    assert glassbox.run_all([lambda: 1, lambda: 2], quiet=False) == [1, 2]
    assert log.getvalue().splitlines()[-1].startswith("glassbox: 2/2 done")


def test_a_batch_line_shows_the_time_left():
    from glassbox.batch import _summary, eta

    assert eta(0, 10, 5.0) == ""                        # nothing to go by yet
    assert eta(2, 10, 10.0) == " · about 40.0 s left"   # 5 s each, 8 to go
    assert eta(10, 10, 50.0) == ""                      # all done
    done = [types.SimpleNamespace(done=lambda: True, running=lambda: False,
                                  cancelled=lambda: False, exception=lambda: None)]
    running = [types.SimpleNamespace(done=lambda: False, running=lambda: True)]
    assert "left" in _summary(done + running * 3, started=0.0)
