"""The rendezvous server's name bindings on disk (--state-dir): one small JSON file, rewritten whole
and atomically (write a temporary file, fsync, rename, fsync the directory) on every new binding, so
a crash leaves the old file or the new one, never half of either. Several writers may share the
directory (the worker processes of `nattrav-server --processes`, each with bindings of its own): a
write takes a lock, reads the file and adds to it, so no writer drops another's bindings. A few thousand names stay well
under a megabyte; a bigger deployment would put proto/rendezvous/names.py's NameBindings on a
database instead.
"""

from __future__ import annotations

import fcntl
import json
import os
from pathlib import Path

from ..atomic import replace_file
from ..errors import UsageError
from ..identity import KEY_LEN
from ..proto.rendezvous.names import NameBindings

FILE_NAME = "names.json"
VERSION = 1


def load_bindings(state_dir: str | os.PathLike[str]) -> NameBindings:
    """The bindings kept in `state_dir` (created 0700 if missing), persisting every new one there.
    UsageError when the directory or the file cannot be used (a user's mistake, said in one line)."""
    directory = Path(state_dir)
    try:
        directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    except OSError as exc:
        raise UsageError(f"--state-dir {directory}: {exc.strerror or exc}") from None
    path = directory / FILE_NAME
    try:
        bindings = _read(path)
    except OSError as exc:
        raise UsageError(f"cannot read {path}: {exc.strerror or exc}") from None
    except ValueError as exc:
        raise UsageError(f"{path} is damaged ({exc}); it holds which key owns which name, so it "
                         "is not replaced silently: restore it or move it away") from None
    return NameBindings(bindings, persist=lambda b: save_bindings(path, b))


def _read(path: Path) -> dict[str, bytes]:
    """The bindings in `path` ({} when there is no file); ValueError for a damaged one."""
    try:
        raw = path.read_text()
    except FileNotFoundError:
        return {}
    bindings: dict[str, bytes] = {}
    try:
        doc = json.loads(raw)
        if doc.get("version") != VERSION or not isinstance(doc.get("names"), dict):
            raise ValueError("not a nattrav name file")
        for name, hexkey in doc["names"].items():
            key = bytes.fromhex(hexkey)
            if not isinstance(name, str) or len(key) != KEY_LEN:
                raise ValueError(f"bad entry {name!r}")
            bindings[name] = key
    except (AttributeError, TypeError) as exc:
        raise ValueError(str(exc)) from None
    return bindings


def save_bindings(path: Path, bindings: dict[str, bytes]) -> None:
    """Add `bindings` to those in `path`, atomically; OSError when they could not be stored. A name
    already in the file keeps its key there (a name is its first key's for good)."""
    lock = os.open(path.with_name(f".{path.name}.lock"), os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            merged = {**bindings, **_read(path)}
        except ValueError:
            merged = dict(bindings)  # damaged since we loaded it: ours at least are kept
        _write(path, merged)
    finally:
        os.close(lock)  # (releases the lock)


def _write(path: Path, bindings: dict[str, bytes]) -> None:
    doc = {"version": VERSION, "names": {n: k.hex() for n, k in sorted(bindings.items())}}
    replace_file(path, json.dumps(doc, indent=1).encode(), mode=0o600, durable=True)


__all__ = ["FILE_NAME", "load_bindings", "save_bindings"]
