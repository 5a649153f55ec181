"""Named network namespaces without `ip netns add` subprocesses.

A namespace is made by unshare(CLONE_NEWNET) in a short-lived thread (the change is per thread) and kept
alive by bind-mounting /proc/thread-self/ns/net onto /run/netns/NAME, exactly what iproute2 does, so
`ip netns exec NAME ...` and every other tool see it. Anything that must happen *inside* a namespace
(netlink sockets, /proc/sys/net writes, an `nft -f -` child) is done by a thread that setns()'ed there;
the caller's own threads never change namespace.
"""

from __future__ import annotations

import ctypes
import errno
import os
import threading
from typing import Callable, TypeVar

NETNS_DIR = "/run/netns"
CLONE_NEWNET = 0x40000000
MS_REC = 0x4000
MS_BIND = 0x1000
MS_SHARED = 1 << 20
MNT_DETACH = 2

_libc = ctypes.CDLL(None, use_errno=True)
T = TypeVar("T")


def _oserror(what: str, path: str = "") -> OSError:
    err = ctypes.get_errno()
    return OSError(err, f"{what}: {os.strerror(err)}", path or None)


def path(name: str) -> str:
    return os.path.join(NETNS_DIR, name)


def exists(name: str) -> bool:
    return os.path.exists(path(name))


def list_names(prefix: str = "") -> list[str]:
    try:
        return sorted(n for n in os.listdir(NETNS_DIR) if n.startswith(prefix))
    except FileNotFoundError:
        return []


def _prepare_dir() -> None:
    # iproute2 makes /run/netns a shared mount point so that namespaces mounted later propagate into
    # mount namespaces created by `ip netns exec`; do the same so both tools interoperate.
    os.makedirs(NETNS_DIR, exist_ok=True)
    if _libc.mount(b"", NETNS_DIR.encode(), b"none", MS_SHARED | MS_REC, None) == 0:
        return
    if _libc.mount(NETNS_DIR.encode(), NETNS_DIR.encode(), b"none", MS_BIND | MS_REC, None) != 0:
        raise _oserror("bind-mount " + NETNS_DIR)
    if _libc.mount(b"", NETNS_DIR.encode(), b"none", MS_SHARED | MS_REC, None) != 0:
        raise _oserror("make-shared " + NETNS_DIR)


def create_here(name: str) -> None:
    """Move the *calling thread* into a fresh namespace and pin it as NAME. Run in a throwaway thread."""
    target = path(name)
    fd = os.open(target, os.O_RDONLY | os.O_CREAT | os.O_EXCL, 0)
    os.close(fd)
    try:
        if _libc.unshare(CLONE_NEWNET) != 0:
            raise _oserror("unshare(CLONE_NEWNET)", name)
        if _libc.mount(b"/proc/thread-self/ns/net", target.encode(), b"none", MS_BIND, None) != 0:
            raise _oserror("bind-mount namespace", target)
    except BaseException:
        os.unlink(target)
        raise


def enter(fd: int) -> None:
    """setns() the calling thread into the namespace behind fd."""
    if _libc.setns(fd, CLONE_NEWNET) != 0:
        raise _oserror("setns")


def remove(name: str) -> bool:
    """Unpin a namespace (the kernel frees it once no process or socket holds it). True if it existed."""
    target = path(name)
    if not os.path.exists(target):
        return False
    if _libc.umount2(target.encode(), MNT_DETACH) != 0 and ctypes.get_errno() not in (errno.EINVAL, errno.ENOENT):
        raise _oserror("umount", target)
    try:
        os.unlink(target)
    except FileNotFoundError:
        pass
    return True


def inode(name: str) -> int | None:
    try:
        return os.stat(path(name)).st_ino
    except FileNotFoundError:
        return None


def pids_in(inodes: set[int]) -> list[int]:
    """Processes whose network namespace is one of the given ones (to stop them before unpinning)."""
    found = []
    me = os.getpid()
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == me:
            continue
        try:
            if os.stat(f"/proc/{entry}/ns/net").st_ino in inodes:
                found.append(int(entry))
        except (FileNotFoundError, PermissionError, ProcessLookupError):
            continue
    return found


def in_thread(fn: Callable[[], T], started: Callable[[threading.Thread], None] | None = None) -> T:
    """Run fn in a fresh thread (which may unshare/setns freely) and return its result or raise.
    `started` receives the thread, so a cleanup that interrupts the wait can still join it."""
    box: dict = {}

    def runner() -> None:
        try:
            box["value"] = fn()
        except BaseException as exc:  # handed to the caller's thread
            box["error"] = exc

    t = threading.Thread(target=runner, name="nattrav-lab-netns", daemon=True)
    t.start()
    if started is not None:
        started(t)
    t.join()
    if "error" in box:
        raise box["error"]
    return box["value"]


def prepare() -> None:
    _prepare_dir()
