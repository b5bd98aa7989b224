"""What the user sees while jobs wait or run: one updating line, or nothing.

``ProgressLine(quiet)`` picks where the line goes:

- in a Jupyter notebook, a display that is updated in place (plain text) and emptied when
  the line closes, so a finished job leaves nothing in the cell's output (the jobs of one
  cell share one display);
- on a terminal (stderr is a TTY), one line rewritten with ``\\r`` and cleared at the end;
- ``quiet=False`` on anything else (a log file): each new state on its own line;
- nothing when quiet: ``quiet=True``, ``GLASSBOX_QUIET=1``, or (``quiet=None``, the
  default) when stderr is not a terminal and not in a notebook — scripts stay quiet.

``waiting_quietly()`` makes the waits of the current thread quiet (``run_all`` uses it in
its worker threads, so that only its own summary line shows).
"""

from __future__ import annotations

import contextlib
import os
import sys
import threading
import time
from typing import Optional

_thread_state = threading.local()


def quiet_env() -> bool:
    """True when ``GLASSBOX_QUIET`` asks for quiet (1, true, yes)."""
    return os.environ.get("GLASSBOX_QUIET", "").strip().lower() in ("1", "true", "yes", "on")


@contextlib.contextmanager
def waiting_quietly():
    """Within the block, this thread's waits show nothing."""
    previous = getattr(_thread_state, "quiet", False)
    _thread_state.quiet = True
    try:
        yield
    finally:
        _thread_state.quiet = previous


def _in_notebook() -> bool:
    shell = sys.modules.get("IPython")
    if shell is None:
        return False
    ipython = shell.get_ipython() if hasattr(shell, "get_ipython") else None
    return ipython is not None and type(ipython).__name__ == "ZMQInteractiveShell"


def resolve_mode(quiet: Optional[bool], stream) -> str:
    """``"notebook"``, ``"tty"``, ``"lines"`` or ``"off"`` for a ``quiet`` setting and the
    stream the line would go to."""
    if quiet is True or getattr(_thread_state, "quiet", False):
        return "off"
    if quiet is None and quiet_env():
        return "off"
    if _in_notebook():
        return "notebook"
    if stream is not None and stream.isatty():
        return "tty"
    return "lines" if quiet is False else "off"


class ProgressLine:
    """One line of status text on ``stream`` (default: stderr), updated as often as ``show``
    is called (at most ~10 times a second on a terminal), finished with ``close``."""

    def __init__(self, quiet: Optional[bool] = None, stream=None):
        self.stream = sys.stderr if stream is None else stream
        self.mode = resolve_mode(quiet, self.stream)
        self._last_text = ""
        self._last_time = 0.0
        self._width = 0
        self._handle = None

    @property
    def active(self) -> bool:
        return self.mode != "off"

    def show(self, text: str, key: Optional[str] = None, force: bool = False) -> None:
        """Shows ``text``. ``key`` (e.g. the job's state without the clock) is what must
        change for a new line in "lines" mode; by default the text itself."""
        changed = (key if self.mode == "lines" and key is not None else text) != self._last_text
        if not self.active or not changed:
            return
        now = time.monotonic()
        if self.mode == "tty" and not force and now - self._last_time < 0.1:
            return
        self._last_text = key if self.mode == "lines" and key is not None else text
        self._last_time = now
        getattr(self, "_show_" + self.mode)(text)

    def close(self, final: str = "") -> None:
        """Ends the line: leaves ``final`` (if any) in its place, else clears it (in a
        notebook the display is emptied: its output holds no text)."""
        if not self.active:
            return
        if final:
            self.show(final, force=True)
        elif self.mode == "notebook" and self._handle is not None:
            self._handle.update({"text/plain": ""}, raw=True)
        if self.mode == "tty":
            if not final:
                self.stream.write("\r" + " " * self._width + "\r")
            else:
                self.stream.write("\n")
            self.stream.flush()
        self.mode = "off"

    def _show_tty(self, text: str) -> None:
        padding = " " * max(0, self._width - len(text))
        self._width = len(text)
        self.stream.write("\r" + text + padding)
        self.stream.flush()

    def _show_lines(self, text: str) -> None:
        self.stream.write(text + "\n")
        self.stream.flush()

    def _show_notebook(self, text: str) -> None:
        if self._handle is None:
            self._handle = _cell_display()
        self._handle.update({"text/plain": text}, raw=True)


# The display of the cell running now, so that the jobs of one cell share one output (each
# emptied when its job is over) instead of leaving an empty output apiece.
_cell_displays: dict = {}


def _cell_display():
    """The progress display of the notebook cell being run: made on first use in a cell
    (told apart by the kernel's parent message), reused by later jobs of the same cell."""
    import IPython
    from IPython.display import display  # present whenever a notebook runs us

    shell = IPython.get_ipython()
    header = getattr(shell, "parent_header", None) or {}
    cell = header.get("header", {}).get("msg_id") if isinstance(header, dict) else None
    if cell is None or cell not in _cell_displays:
        handle = display({"text/plain": ""}, raw=True, display_id=True)
        if cell is None:
            return handle
        _cell_displays.clear()  # only the running cell's display is ever reused
        _cell_displays[cell] = handle
    return _cell_displays[cell]


def elapsed(seconds: float) -> str:
    """``4.2 s``, ``3 min 05 s``."""
    if seconds < 60:
        return f"{seconds:.1f} s"
    minutes, rest = divmod(int(seconds), 60)
    return f"{minutes} min {rest:02d} s"
