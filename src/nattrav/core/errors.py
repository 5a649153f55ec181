"""The one place where a C return value becomes a Python exception."""

from __future__ import annotations

import os


def check(rc: int, what: str) -> int:
    """Return rc when it is >= 0; turn -errno into OSError(errno, "<what>: <strerror>")."""
    if rc >= 0:
        return rc
    err = -rc
    raise OSError(err, f"{what}: {os.strerror(err)}")
