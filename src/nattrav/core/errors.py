"""The one place where a C return value becomes a Python exception, and the errno knowledge the C
core and the Python sockets share."""

from __future__ import annotations

import errno
import os

# What a socket reports once after an ICMP error came back for one of its earlier packets (port or
# host unreachable, time exceeded of our own low-TTL packets...): not a failure of the call that
# met it. The same set as csrc/burst.c's is_icmp_errno().
ICMP_ERRNOS = frozenset({errno.ECONNREFUSED, errno.EHOSTUNREACH, errno.ENETUNREACH, errno.EHOSTDOWN,
                         errno.ENONET, errno.EPROTO})


def check(rc: int, what: str) -> int:
    """Return rc when it is >= 0; turn -errno into OSError(errno, "<what>: <strerror>")."""
    if rc >= 0:
        return rc
    err = -rc
    raise OSError(err, f"{what}: {os.strerror(err)}")
