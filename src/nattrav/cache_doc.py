"""The behaviour cache's file as it is read: where it lives and what counts as our own valid file.
api/behavior_cache.py owns the cache (its entries, their checks, writing); this part imports only
the standard library, so that nattrav-fast can read where a warm connect will sample before its
heavy imports (cli/launch.py, io/presample.py)."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path
from typing import Any

VERSION = 1
FILE_NAME = "behavior.json"
MAX_FILE = 64 * 1024  # bytes; a bigger file is not read
MAX_AGE = 24 * 3600.0  # seconds an entry is trusted


def default_path() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or ""
    root = Path(base) if os.path.isabs(base) else Path.home() / ".cache"
    return root / "nattrav" / FILE_NAME


def read_doc(path: str | os.PathLike) -> dict[str, Any]:
    """The file's document when it is our own valid file (a regular file, ours, writable by nobody
    else, not too big, of this version, with its entries), else {}."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | getattr(os, "O_CLOEXEC", 0))
    except OSError:
        return {}
    try:
        st = os.fstat(fd)
        if (not stat.S_ISREG(st.st_mode) or st.st_uid != os.geteuid() or st.st_mode & 0o022
                or st.st_size > MAX_FILE):
            return {}
        data = os.read(fd, MAX_FILE + 1)
    except OSError:
        return {}
    finally:
        os.close(fd)
    if len(data) > MAX_FILE:
        return {}
    try:
        doc = json.loads(data)
    except (ValueError, RecursionError):
        return {}
    if not isinstance(doc, dict) or doc.get("version") != VERSION or not isinstance(doc.get("entries"), dict):
        return {}
    return doc
