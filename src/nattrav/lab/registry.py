"""Who owns which namespaces: one small JSON file per lab run, the sweep of dead runs, exit hooks.

A run writes /run/nattrav-lab/<id>.json (owner pid + its start time) *before* creating any namespace,
so a crash at any point leaves something sweep() can attribute. Namespaces named nt-* without such a
file belong to somebody else and are left alone.
"""

from __future__ import annotations

import atexit
import json
import os
import shutil
import signal
import threading
import time
import weakref
from typing import TYPE_CHECKING

from . import netns

if TYPE_CHECKING:
    from .lab import Lab

STATE_DIR = "/run/nattrav-lab"
PREFIX = "nt-"

_live: weakref.WeakSet = weakref.WeakSet()
_hooks_lock = threading.Lock()
_atexit_installed = False
_signal_installed = False


def _start_time(pid: int) -> float | None:
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            fields = f.read().rsplit(b")", 1)[1].split()
        return float(fields[19])  # starttime in clock ticks since boot
    except (FileNotFoundError, ProcessLookupError, IndexError, ValueError):
        return None


def owner_stamp() -> dict:
    pid = os.getpid()
    return {"pid": pid, "start": _start_time(pid)}


def owner_alive(state: dict) -> bool:
    pid = state.get("pid")
    if not isinstance(pid, int):
        return False
    start = _start_time(pid)
    return start is not None and (state.get("start") is None or start == state.get("start"))


def state_path(lab_id: str) -> str:
    return os.path.join(STATE_DIR, f"{lab_id}.json")


def claim(lab_id: str, state: dict) -> bool:
    """Create the state file for a new id; False if another run already holds that id."""
    os.makedirs(STATE_DIR, exist_ok=True)
    try:
        fd = os.open(state_path(lab_id), os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    except FileExistsError:
        return False
    with os.fdopen(fd, "w") as f:
        json.dump(state, f)
    return True


def write_state(lab_id: str, state: dict) -> None:
    os.makedirs(STATE_DIR, exist_ok=True)
    tmp = state_path(lab_id) + ".tmp"
    with open(tmp, "w") as f:
        json.dump(state, f)
    os.replace(tmp, state_path(lab_id))


def read_state(lab_id: str) -> dict | None:
    try:
        with open(state_path(lab_id)) as f:
            return json.load(f)
    except (FileNotFoundError, ValueError):
        return None


def cache_home(ns_name: str) -> str:
    """XDG_CACHE_HOME of whatever runs in namespace `ns_name`: each lab host is a machine of its own,
    so what the product keeps per network (its NAT behaviour cache) never crosses from one lab (or
    host) to another that happens to use the same addresses."""
    return os.path.join(STATE_DIR, "homes", ns_name, "cache")


def drop_state(lab_id: str) -> None:
    try:
        os.unlink(state_path(lab_id))
    except FileNotFoundError:
        pass
    homes = os.path.join(STATE_DIR, "homes")
    try:
        names = os.listdir(homes)
    except FileNotFoundError:
        return
    for name in names:
        if lab_id_of(name) == lab_id:
            shutil.rmtree(os.path.join(homes, name), ignore_errors=True)


def all_states() -> dict[str, dict]:
    out = {}
    try:
        names = os.listdir(STATE_DIR)
    except FileNotFoundError:
        return out
    for n in names:
        if n.endswith(".json"):
            st = read_state(n[:-5])
            if st is not None:
                out[n[:-5]] = st
    return out


def lab_id_of(ns_name: str) -> str | None:
    if not ns_name.startswith(PREFIX):
        return None
    rest = ns_name[len(PREFIX):]
    return rest.split("-", 1)[0] if "-" in rest else None


def namespaces_of(lab_id: str) -> list[str]:
    return netns.list_names(f"{PREFIX}{lab_id}-")


def destroy(names: list[str], *, grace: float = 0.0) -> None:
    """Stop every process inside the namespaces, then unpin them."""
    inodes = {i for i in (netns.inode(n) for n in names) if i is not None}
    if inodes:
        pids = netns.pids_in(inodes)
        for sig in ((signal.SIGTERM, signal.SIGKILL) if grace > 0 else (signal.SIGKILL,)):
            for pid in pids:
                try:
                    os.kill(pid, sig)
                except ProcessLookupError:
                    pass
            if sig == signal.SIGTERM:
                deadline = time.monotonic() + grace
                while time.monotonic() < deadline and netns.pids_in(inodes):
                    time.sleep(0.02)
                pids = netns.pids_in(inodes)
    for n in names:
        netns.remove(n)


def sweep(*, include_persistent: bool = False) -> list[str]:
    """Remove every nt-* namespace (and state file) of lab runs whose owner process is gone.

    Labs started by `nattrav-lab up` outlive their CLI process on purpose (persistent); they are
    removed only with include_persistent=True (or `nattrav-lab down`)."""
    removed: list[str] = []
    states = all_states()
    by_id: dict[str, list[str]] = {}
    for name in netns.list_names(PREFIX):
        lid = lab_id_of(name)
        if lid is not None:
            by_id.setdefault(lid, []).append(name)
    for lid in set(by_id) | set(states):
        st = states.get(lid)
        if st is None:
            continue  # not ours: some other tool's nt-* namespace
        if st.get("persistent") and not include_persistent:
            continue
        if not st.get("persistent") and owner_alive(st):
            continue
        names = by_id.get(lid, [])
        destroy(names)
        removed += names
        drop_state(lid)
    return sorted(removed)


def register(lab: Lab) -> None:
    _live.add(lab)
    install_hooks()


def install_hooks() -> None:
    """Take the live labs down at exit and on SIGTERM. register() does it for every lab; a program
    that brings labs up in worker threads calls it from its main thread first, since only that
    thread may set a signal handler (bench/matrix.py: a SIGTERM left 8 labs' namespaces behind)."""
    global _atexit_installed, _signal_installed
    with _hooks_lock:
        if not _atexit_installed:
            _atexit_installed = True
            atexit.register(_down_all)
        if _signal_installed or threading.current_thread() is not threading.main_thread():
            return
        _signal_installed = True
        # SIGTERM ends Python without unwinding; turn it into a cleanup first. Only when nobody else
        # handles it.
        try:
            if signal.getsignal(signal.SIGTERM) in (signal.SIG_DFL, None):
                signal.signal(signal.SIGTERM, _on_sigterm)
        except ValueError:
            pass


def unregister(lab: Lab) -> None:
    _live.discard(lab)


def _down_all() -> None:
    for lab in list(_live):
        if getattr(lab, "owner_pid", None) != os.getpid():
            continue  # a forked child must not tear down its parent's lab
        try:
            lab.down()
        except Exception:
            pass


def _on_sigterm(signum, frame) -> None:
    _down_all()
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    os.kill(os.getpid(), signal.SIGTERM)
