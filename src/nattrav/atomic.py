"""Replace a file whole or not at all: the one way nattrav writes the files it keeps between runs
(the behaviour cache, the server's name bindings, the generated-method bytecode table).

A reader (another nattrav process, the next run) must never see half a file, and a crash must not
leave a damaged one behind: the bytes go to a temporary file in the same directory, which then
takes the file's name in one rename. The temporary name carries our PID, so two processes writing
at once each rename a whole file of their own and the last one wins. O_NOFOLLOW and O_EXCL keep a
link planted at the temporary name from redirecting the write. Standard library only: the bytecode
table is written by a process that may not have imported anything else.
"""

from __future__ import annotations

import os


def replace_file(path: str | os.PathLike, data: bytes, *, mode: int = 0o600, durable: bool = False) -> None:
    """Make `path` hold exactly `data` (with permission bits `mode`), atomically. `durable`: on
    disk before returning (fsync of the file and of its directory), for state that must survive a
    power cut, not just a crash. Raises OSError; the temporary file is gone either way."""
    path = os.fspath(path)
    folder, name = os.path.split(path)
    tmp = os.path.join(folder, f".{name}.{os.getpid()}.tmp")
    try:
        os.unlink(tmp)  # our own leftover from a crash (the PID came round again)
    except FileNotFoundError:
        pass
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, mode)
    try:
        try:
            os.fchmod(fd, mode)  # the umask may have taken bits `mode` asks for
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view):]
            if durable:
                os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    if durable:
        dfd = os.open(folder or ".", os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)


__all__ = ["replace_file"]
