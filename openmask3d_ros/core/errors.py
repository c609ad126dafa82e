"""The project's one error type for bad input: a file, a field or a message that cannot be used.

Every reader (scene folder, cloud, map, masks, config, checkpoints, ROS messages) raises
``InputError`` naming what it read and what is wrong. It subclasses ``ValueError`` so that
callers which already catch ``ValueError`` keep working. The CLI prints it without a traceback
and exits 2; the node answers a failed service response with its text and keeps running.
"""
from __future__ import annotations

from pathlib import Path


class InputError(ValueError):
    """Unusable input. ``path``: the offending file (or folder); ``field``: the offending key,
    array or message field. ``str(err)`` always names them."""

    def __init__(self, message: str, path: str | Path | None = None, field: str | None = None):
        self.path = Path(path) if path is not None else None
        self.field = field
        self.message = message
        text = message
        if field and field not in text:
            text = f"{field}: {text}"
        if self.path is not None and str(self.path) not in text:
            text = f"{self.path}: {text}"
        super().__init__(text)


def input_error_from(exc: BaseException, path: str | Path, what: str = "") -> InputError:
    """Wrap any failure while reading ``path`` into an ``InputError`` that says what happened."""
    if isinstance(exc, InputError):
        return exc
    detail = str(exc) or type(exc).__name__
    prefix = f"cannot read {what}" if what else "cannot read"
    return InputError(f"{prefix} {path}: {detail} ({type(exc).__name__})", path)


class BuildCancelled(Exception):
    """A map build stopped at the caller's request (``run_pipeline(cancel=...)``): no generation
    was written and the current map stays; what the build had computed stays in the cache."""
