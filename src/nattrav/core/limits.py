"""File-descriptor budget: a thousand-socket burst must not die half-way on EMFILE."""

from __future__ import annotations

import errno
import os
import resource

from ..errors import FdLimitError

# descriptors a process needs besides the pool (stdio, pipes, epoll, Python's own files)
HEADROOM = 64


def open_fd_count() -> int:
    try:
        return len(os.listdir("/proc/self/fd"))
    except OSError:
        return 0


def limit_error(extra: int) -> FdLimitError:
    """The clear error for an EMFILE/ENFILE met anyway (other descriptors opened meanwhile)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    need = open_fd_count() + extra + HEADROOM
    return FdLimitError(
        errno.EMFILE,
        f"{extra} sockets need about {need} file descriptors but RLIMIT_NOFILE allows {soft} "
        f"(hard limit {hard}); raise it, e.g. `ulimit -n {need}` in the shell, LimitNOFILE={need} "
        f"in a systemd unit, or 'nofile' in /etc/security/limits.conf",
    )


def ensure_fd_capacity(extra: int) -> int:
    """Make room for `extra` more descriptors, raising RLIMIT_NOFILE's soft limit towards the hard
    limit when needed. Returns the soft limit in force; raises FdLimitError when it cannot be done."""
    if extra <= 0:
        return resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY or soft >= 2 * (extra + HEADROOM) + 4096:
        return soft  # plenty; listing /proc/self/fd costs more than opening a hundred sockets
    need = open_fd_count() + extra + HEADROOM
    if need <= soft:
        return soft
    target = need if hard == resource.RLIM_INFINITY else min(need, hard)
    if target > soft:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            soft = target
        except (ValueError, OSError):
            pass
    if need > soft:
        raise limit_error(extra)
    return soft


__all__ = ["FdLimitError", "ensure_fd_capacity", "limit_error", "open_fd_count"]
