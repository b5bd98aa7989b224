"""Glassbox: run intervention graphs on language models that live on a shared service.

Only the wire format is here so far (``glassbox.wire``, protocol/SPEC.md); the client API
comes next.
"""

from . import _wire as wire

__version__ = "0.1.0"
PROTOCOL_VERSION = wire.PROTOCOL_VERSION

__all__ = ["wire", "PROTOCOL_VERSION", "__version__"]
