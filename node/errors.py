"""The one line between "your request is wrong" and "sedma has a bug".

A user error (bad shapes, unknown job, unknown device, name taken) is the caller's to fix:
the CLI exits 1 with the message. Anything else that escapes a handler -- a ``KeyError`` or
``ValueError`` from a bug included -- is an internal error: logged with its traceback and
answered as ``internal error: ...`` so nobody mistakes it for their own mistake. Errors a
user should see derive from :class:`UserError`; nothing is a user error by accident of its
built-in type.
"""

from __future__ import annotations

INTERNAL_PREFIX = "internal error: "


class UserError(ValueError):
    """The request is wrong (bad shapes, unknown job...): exit status 1 for the CLI."""


def internal_message(exc: BaseException) -> str:
    """The answer for an unexpected exception: distinct from every user error."""
    return f"{INTERNAL_PREFIX}{type(exc).__name__}: {exc}"
