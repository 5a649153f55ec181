"""Independent probes of NAT behaviour beyond the UDP basics in probe.py: TCP's own mapping, filtering
and lifetime, the address pool, and the flow table's size. The first half runs inside namespaces
(Lab.call), the second drives a lab and classifies, like probe.measure.
"""

from __future__ import annotations

import select
import socket
import sys
import time

from .probe import (TCP_PORTS, _udp, classify_filtering, classify_mapping, helper_process, read_json_line,
                    start_responder, tcp_dial)
from .topology import SINK_NET


# ---------------------------------------------------------------------------------------------
# inside a namespace
# ---------------------------------------------------------------------------------------------
def _tcp(local_port: int = 0) -> socket.socket:
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    s.bind(("0.0.0.0", local_port))
    return s


def _saw(s: socket.socket, timeout: float) -> list | None:
    s.settimeout(timeout)
    buf = b""
    try:
        while b"\n" not in buf:
            chunk = s.recv(256)
            if not chunk:
                return None
            buf += chunk
    except OSError:
        return None
    words = buf.split(b"\n", 1)[0].split()
    return [words[1].decode(), int(words[2])] if len(words) == 3 and words[0] == b"saw" else None


def tcp_observe(targets: list[tuple[str, int]], timeout: float = 3.0) -> dict:
    """From ONE local port, a TCP connection to each target: which source did each see?"""
    first = _tcp()
    port = first.getsockname()[1]
    socks = [first] + [_tcp(port) for _ in targets[1:]]
    try:
        seen = []
        for s, t in zip(socks, targets):
            try:
                s.settimeout(timeout)
                s.connect(tuple(t))
                seen.append(_saw(s, timeout))
            except OSError:
                seen.append(None)
        return {"local": port, "seen": seen}
    finally:
        for s in socks:
            s.close()


def tcp_hold_main(target: tuple[str, int], hold: float) -> None:
    """Connect to target from a port we also listen on; print the source the target saw, then print
    the address of the first inbound connection the listener accepts (or null) within `hold`."""
    import json

    conn = _tcp()
    port = conn.getsockname()[1]
    listener = _tcp(port)
    listener.listen(8)
    try:
        conn.settimeout(3.0)
        conn.connect(tuple(target))
        print(json.dumps({"local": port, "public": _saw(conn, 3.0)}), flush=True)
    except OSError:
        print(json.dumps({"local": port, "public": None}), flush=True)
        return
    r, _, _ = select.select([listener], [], [], hold)
    if r:
        c, addr = listener.accept()
        c.close()
        print(json.dumps({"from": list(addr)}), flush=True)
    else:
        print(json.dumps({"from": None}), flush=True)


def tcp_lifetime_run(target: tuple[str, int], delays: list[float]) -> dict[str, bool]:
    """One TCP connection per delay, silent that long; then the target sends a line. Did it arrive?"""
    socks = []
    try:
        for d in delays:
            s = _tcp()
            s.settimeout(3.0)
            s.connect(tuple(target))
            _saw(s, 3.0)
            s.sendall(f"wait {d}\n".encode())
            socks.append((d, s))
        start = time.monotonic()
        out = {}
        for d, s in socks:
            left = start + d + 1.0 - time.monotonic()
            s.settimeout(max(0.05, left))
            try:
                out[str(d)] = s.recv(16).startswith(b"late")
            except OSError:
                out[str(d)] = False
        return out
    finally:
        for _, s in socks:
            s.close()


def open_flows(count: int, first_port: int = 1024) -> int:
    """`count` new flows (one datagram each to a new address and port in the router's blackholed
    range), as fast as the socket takes them."""
    import ipaddress

    hosts = list(ipaddress.ip_network(SINK_NET).hosts())
    with _udp() as s:
        for k in range(count):
            ip = str(hosts[k % len(hosts)])
            port = first_port + k // len(hosts)
            while True:
                try:
                    s.sendto(b"flow", (ip, port))
                    break
                except BlockingIOError:
                    time.sleep(0.001)
        time.sleep(0.2)
    return count


def pool_run(targets: list[tuple[str, int]], sockets: int) -> list[list]:
    """From `sockets` fresh sockets, each asking every target what it saw: [[ip, port] per target]."""
    from .probe import observe

    return [observe(targets)["seen"] for _ in range(sockets)]


# ---------------------------------------------------------------------------------------------
# driving a lab (outside the namespaces)
# ---------------------------------------------------------------------------------------------
def measure_tcp(lab, host: str) -> dict:
    """TCP mapping (one local port to S1:p0, S1:p1, S2:p0) and TCP filtering (the host holds a
    connection to S1:p0 and listens on its port; S1 from another port, then S2, dial its public
    endpoint) measured like the UDP ones, in RFC 4787 words."""
    start_responder(lab)
    s1p0, s1p1, s2p0 = (lab.S1, TCP_PORTS[0]), (lab.S1, TCP_PORTS[1]), (lab.S2, TCP_PORTS[0])
    obs = lab.call(host, tcp_observe, [s1p0, s1p1, s2p0])
    nat, mapping = classify_mapping(obs["local"], lab.ip(host), obs["seen"])
    opened = []
    for src_ip in (lab.S1, lab.S2):
        opened.append(_inbound_tcp(lab, host, s1p0, src_ip))
    same = opened[0] is not None
    return {"nat": nat, "mapping": mapping, "seen": obs["seen"],
            "filtering": classify_filtering(True, bool(opened[0]), bool(opened[1])) if same else "unknown"}


def _inbound_tcp(lab, host: str, target: tuple[str, int], src_ip: str) -> bool | None:
    argv = [sys.executable, "-c", "from nattrav.lab.probe_nat import tcp_hold_main as m; "
            f"m(({target[0]!r}, {target[1]}), 6.0)"]
    with helper_process(lab, host, argv) as proc:
        public = read_json_line(proc, 8.0).get("public")
        if not public:
            return None
        lab.call("server", tcp_dial, tuple(public), (src_ip, 0), 1.5)
        return read_json_line(proc, 8.0).get("from") is not None
