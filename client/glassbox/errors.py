"""Errors the client raises, and where in the user's code they point.

Two kinds, both ``GlassboxError``:

- errors the service (or a backend) reports for a request: ``code`` is a status code name
  from base/status.h (``INVALID_ARGUMENT``, ``NOT_FOUND``, ...), ``node`` and ``source`` name
  the graph node that failed and the user's line that built it;
- ``TracingError``: something a graph cannot express (numpy on a traced value, ``len()``,
  an unknown method), raised at once in the user's process, naming the operation and the
  user's own file and line.

``user_source()`` finds that line: the first stack frame outside the glassbox package.
"""

from __future__ import annotations

import os
import sys
from typing import Optional

_PACKAGE_DIR = os.path.dirname(os.path.abspath(__file__))
_SKIPPED_FILES = ("contextlib.py",)


class GlassboxError(Exception):
    """A failure reported for a request: status code, message and the failing node."""

    def __init__(self, code: str, message: str, node: Optional[int] = None, source: str = "",
                 job: str = ""):
        self.code = code
        self.message = message
        self.node = node
        self.source = source
        self.job = job  # the service's job id, when the failure belongs to a job
        super().__init__(str(self))

    @classmethod
    def from_report(cls, report, job: str = "") -> "GlassboxError":
        """The error a service's error report (``wire.ErrorReport``) stands for."""
        return cls(report.code, report.message, report.node, report.source, job)

    def __str__(self) -> str:
        where = []
        if self.source:
            where.append(self.source)
        if self.node is not None:
            where.append(f"node {self.node}")
        if self.job:
            where.append(f"job {self.job}")
        prefix = f"[{', '.join(where)}] " if where else ""
        return f"{self.code}: {prefix}{self.message}"


class TracingError(GlassboxError):
    """An operation no intervention graph can express, caught while tracing."""

    def __init__(self, message: str, source: Optional[str] = None):
        super().__init__("INVALID_ARGUMENT", message, None, user_location() if source is None else source)


# Libraries whose functions call into glassbox on the user's behalf (torch.softmax(h),
# F.gelu(h), einops): the user's line is the one that called them.
_SKIPPED_MODULES = ("torch", "einops", "numpy")


def _user_frame():
    frame = sys._getframe(1)
    while frame is not None:
        filename = os.path.abspath(frame.f_code.co_filename)
        inside = filename.startswith(_PACKAGE_DIR + os.sep)
        module = str(frame.f_globals.get("__name__", "")).split(".")[0]
        if not inside and os.path.basename(filename) not in _SKIPPED_FILES and \
                module not in _SKIPPED_MODULES:
            return frame
        frame = frame.f_back
    return None


def user_source() -> str:
    """``"file.py:LINE"`` of the user's code that is calling into glassbox (node sources)."""
    frame = _user_frame()
    if frame is None:
        return ""
    return f"{os.path.basename(frame.f_code.co_filename)}:{frame.f_lineno}"


def user_location() -> str:
    """``"/full/path/file.py:LINE"``: the same frame, for errors raised in the user's process."""
    frame = _user_frame()
    if frame is None:
        return ""
    return f"{frame.f_code.co_filename}:{frame.f_lineno}"
