"""Small network-namespace testbeds for the burst core: a routed pair (sender - router - receiver) for
TTL checks and a sink pair (sender - veth - a namespace that drops at ingress) for send-rate runs.

The namespaces themselves are made, entered and removed with the lab's primitives (lab/netns.py:
unshare + bind mount, setns in a thread); links, addresses and routes are `ip` commands. Both ends
always live in namespaces made here (never the root namespace's addresses or routes), names start
with `nt-`, and the context managers delete them on the way out, also on error."""

from __future__ import annotations

import contextlib
import os
import subprocess
from collections.abc import Callable, Iterator
from typing import TypeVar

from ..lab import netns as _ns

T = TypeVar("T")


def ip(*args: str, ns: str | None = None) -> str:
    cmd = ["ip", *(["-n", ns] if ns else []), *args]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=30)
    if out.returncode:
        raise OSError(f"{' '.join(cmd)}: {out.stderr.strip()}")
    return out.stdout


def enter_named(name: str) -> None:
    """Move the calling thread (the whole process, while it has one thread) into /run/netns/<name>."""
    if "/" in name or name in ("", ".", ".."):
        raise ValueError(f"bad namespace name {name!r}")
    fd = os.open(_ns.path(name), os.O_RDONLY | os.O_CLOEXEC)
    try:
        _ns.enter(fd)
    finally:
        os.close(fd)


def run_in(name: str, fn: Callable[[], T]) -> T:
    """Call fn in a thread that entered namespace `name` (setns moves only the calling thread), so a
    socket made there stays in that namespace while the rest of the process stays where it was."""
    def inside() -> T:
        enter_named(name)
        return fn()

    return _ns.in_thread(inside)


def sysctl(ns: str, key: str, value: str) -> None:
    def write() -> None:
        with open("/proc/sys/" + key.replace(".", "/"), "w") as f:  # the namespace of the writing thread
            f.write(value)

    run_in(ns, write)


def remove(name: str) -> None:
    _ns.remove(name)


@contextlib.contextmanager
def _namespaces(names: list[str]) -> Iterator[None]:
    _ns.prepare()
    try:
        for n in names:
            _ns.in_thread(lambda n=n: _ns.create_here(n))
            ip("link", "set", "lo", "up", ns=n)
        yield
    finally:
        for n in names:
            _ns.remove(n)


def _veth(ns1: str, if1: str, ns2: str, if2: str) -> None:
    ip("link", "add", if1, "netns", ns1, "type", "veth", "peer", "name", if2, "netns", ns2)
    ip("link", "set", if1, "up", ns=ns1)
    ip("link", "set", if2, "up", ns=ns2)


@contextlib.contextmanager
def routed_pair(prefix: str) -> Iterator[dict]:
    """<prefix>-a (192.0.2.2) -- <prefix>-r (router) -- <prefix>-b (198.51.100.2): a packet from a
    with TTL 1 dies at the router, with TTL n arrives at b with TTL n-1."""
    a, r, b = f"{prefix}-a", f"{prefix}-r", f"{prefix}-b"
    with _namespaces([a, r, b]):
        _veth(a, "a0", r, "r0")
        _veth(r, "r1", b, "b0")
        ip("addr", "add", "192.0.2.2/24", "dev", "a0", ns=a)
        ip("addr", "add", "192.0.2.1/24", "dev", "r0", ns=r)
        ip("addr", "add", "198.51.100.1/24", "dev", "r1", ns=r)
        ip("addr", "add", "198.51.100.2/24", "dev", "b0", ns=b)
        ip("route", "add", "default", "via", "192.0.2.1", ns=a)
        ip("route", "add", "default", "via", "198.51.100.1", ns=b)
        sysctl(r, "net.ipv4.ip_forward", "1")
        yield {"a": a, "r": r, "b": b, "a_ip": "192.0.2.2", "router_ip": "192.0.2.1", "b_ip": "198.51.100.2"}


@contextlib.contextmanager
def sink_pair(prefix: str) -> Iterator[dict]:
    """<prefix>-src (198.51.100.1) -- veth -- <prefix>-sink (198.51.100.2), where an nftables netdev
    ingress hook drops every frame: the cheapest possible receiver for send-rate measurements."""
    src, sink = f"{prefix}-src", f"{prefix}-sink"
    with _namespaces([src, sink]):
        _veth(src, "s0", sink, "k0")
        ip("addr", "add", "198.51.100.1/24", "dev", "s0", ns=src)
        mac = ip("-br", "link", "show", "k0", ns=sink).split()[2]
        # no ARP needed: the sink never answers anything
        ip("neigh", "add", "198.51.100.2", "lladdr", mac, "dev", "s0", "nud", "permanent", ns=src)
        ip("link", "set", "s0", "txqueuelen", "10000", ns=src)
        rules = ("table netdev sink {\n chain drop_all {\n"
                 "  type filter hook ingress device k0 priority -500; policy drop;\n }\n}\n")
        subprocess.run(["ip", "netns", "exec", sink, "nft", "-f", "-"], input=rules, text=True, check=True,
                       timeout=30)
        yield {"src": src, "sink": sink, "src_ip": "198.51.100.1", "sink_ip": "198.51.100.2"}


__all__ = ["enter_named", "ip", "remove", "routed_pair", "run_in", "sink_pair", "sysctl"]
