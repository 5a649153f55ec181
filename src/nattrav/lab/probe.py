"""Independent probes: measure what a lab NAT really does, with plain sockets and responder.py.

The functions in the first half run *inside* a host namespace (through Lab.call); measure() in the
second half drives them and classifies the answers in RFC 4787 words, so tests and `nattrav-lab probe`
compare the same measured table against the NatSpec.
"""

from __future__ import annotations

import json
import math
import os
import select
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

PORTS = (7000, 7001)
MAX_SEQUENTIAL_GAP = 1000  # a bigger forward jump between our own back-to-back flows is no counter's step
TCP_PORTS = (7100, 7101)  # the responder's TCP side (probe_nat.py)


# ---------------------------------------------------------------------------------------------
# inside a namespace
# ---------------------------------------------------------------------------------------------
def _udp(local_port: int = 0, ttl: int | None = None) -> socket.socket:
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind(("0.0.0.0", local_port))
    if ttl is not None:
        s.setsockopt(socket.IPPROTO_IP, socket.IP_TTL, ttl)
    return s


def _wait(s: socket.socket, want_id: str | None, timeout: float) -> dict | None:
    deadline = time.monotonic() + timeout
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            return None
        r, _, _ = select.select([s], [], [], left)
        if not r:
            return None
        try:
            data, addr = s.recvfrom(2048)
        except OSError:
            continue  # ICMP errors (e.g. time exceeded) surface here: ignore them
        try:
            msg = json.loads(data)
        except ValueError:
            continue
        if isinstance(msg, dict) and (want_id is None or msg.get("id") == want_id):
            msg["src"] = list(addr)
            return msg


def _rpc(s: socket.socket, dst: tuple[str, int], req: dict, timeout: float, tries: int) -> dict | None:
    for _ in range(tries):
        req["id"] = os.urandom(6).hex()
        s.sendto(json.dumps(req).encode(), dst)
        got = _wait(s, req["id"], timeout)
        if got is not None:
            return got
    return None


def observe(targets: list[tuple[str, int]], timeout: float = 0.5, tries: int = 4) -> dict:
    """From ONE socket, ask each target which source it saw. {"local": port, "seen": [[ip, port]|None]}"""
    with _udp() as s:
        seen = []
        for t in targets:
            got = _rpc(s, tuple(t), {"op": "echo"}, timeout, tries)
            seen.append(None if got is None else got["saw"])
        return {"local": s.getsockname()[1], "seen": seen}


def allocation_run(targets: list[tuple[str, int]], sockets: int, gap: float = 0.0) -> list[dict]:
    """observe() from `sockets` fresh sockets one after another (the two-server method, repeated)."""
    out = []
    for _ in range(sockets):
        out.append(observe(targets))
        if gap:
            time.sleep(gap)
    return out


def filtering_run(target: tuple[str, int], reply_froms: list[tuple[str, int]], timeout: float = 1.0) -> list[bool]:
    """For each source, a fresh socket asks `target` to answer from that source: did the answer arrive?"""
    socks = []
    try:
        for src in reply_froms:
            s = _udp()
            socks.append((s, os.urandom(6).hex()))
            req = {"op": "reply", "from": list(src), "id": socks[-1][1]}
            for _ in range(2):  # a lost request would look like filtering
                s.sendto(json.dumps(req).encode(), tuple(target))
        return [_wait(s, rid, timeout) is not None for s, rid in socks]
    finally:
        for s, _ in socks:
            s.close()


def lifetime_run(target: tuple[str, int], delays: list[float]) -> dict[str, bool]:
    """One fresh mapping per delay; the responder answers once, after the delay, with no traffic in
    between (an inbound packet would refresh the mapping). Did each answer get through?"""
    socks = []
    try:
        for d in delays:
            s = _udp()
            rid = os.urandom(6).hex()
            s.sendto(json.dumps({"op": "reply", "delay": d, "id": rid}).encode(), tuple(target))
            socks.append((d, s, rid))
        results = {}
        start = time.monotonic()
        for d, s, rid in socks:
            left = (start + d + 0.4) - time.monotonic()
            results[str(d)] = _wait(s, rid, max(0.05, left)) is not None
        return results
    finally:
        for _, s, _ in socks:
            s.close()


def loss_run(target: tuple[str, int], count: int) -> dict:
    """Send `count` datagrams one way, then ask (reliably, with retries) how many arrived."""
    tag = os.urandom(6).hex()
    with _udp() as s:
        msg = json.dumps({"op": "count", "tag": tag}).encode()
        for k in range(count):
            s.sendto(msg, tuple(target))
            if k % 100 == 99:
                time.sleep(0.003)
        time.sleep(0.1)
        got = _rpc(s, tuple(target), {"op": "stats", "tag": tag}, 0.3, 40)
    return {"sent": count, "received": None if got is None else got["count"]}


def send_ttl(dst: tuple[str, int], ttl: int | None, count: int) -> int:
    """Send `count` datagrams with the given TTL; return the local port used."""
    with _udp(ttl=ttl) as s:
        for _ in range(count):
            s.sendto(b"ttl-probe", tuple(dst))
        time.sleep(0.05)
        return s.getsockname()[1]


def tcp_dial(dst: tuple[str, int], src: tuple[str, int] | None = None, timeout: float = 1.0) -> str:
    """Connect to dst (from src, if given): "open", "rst" (refused), "drop" (silence) or "error:N"."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.settimeout(timeout)
        try:
            if src is not None:
                s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                s.bind(tuple(src))
            s.connect(tuple(dst))
        except ConnectionRefusedError:
            return "rst"
        except (socket.timeout, TimeoutError):
            return "drop"
        except OSError as exc:
            return f"error:{exc.errno}"
        return "open"


def tcp_unsolicited_run(dst: tuple[str, int], timeout: float = 1.0) -> str:
    """Connect to a public address with no mapping: 'rst' (refused), 'drop' (silence) or 'open'."""
    return tcp_dial(dst, None, timeout)


def hairpin_send(dst: tuple[str, int], count: int = 3) -> int:
    with _udp() as s:
        for _ in range(count):
            s.sendto(json.dumps({"op": "hairpin"}).encode(), tuple(dst))
            time.sleep(0.01)
        return s.getsockname()[1]


def hairpin_listen_main(server: tuple[str, int], wait: float) -> None:
    """Learn our public endpoint from the responder, print it, then print who reached it (or null)."""
    with _udp() as s:
        got = _rpc(s, tuple(server), {"op": "echo"}, 0.5, 4)
        print(json.dumps({"public": None if got is None else got["saw"]}), flush=True)
        deadline = time.monotonic() + wait
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                print(json.dumps({"from": None}), flush=True)
                return
            r, _, _ = select.select([s], [], [], left)
            if not r:
                continue
            try:
                data, addr = s.recvfrom(2048)
            except OSError:
                continue
            if b"hairpin" in data:
                print(json.dumps({"from": list(addr)}), flush=True)
                return


# ---------------------------------------------------------------------------------------------
# driving a lab (outside the namespaces)
# ---------------------------------------------------------------------------------------------
def start_responder(lab, ports: tuple[int, ...] = PORTS, timeout: float = 5.0) -> list[tuple[str, int]]:
    """Start responder.py on the server namespace (both public IPs x ports); return its endpoints."""
    if getattr(lab, "_responder", None):
        return lab._responder
    ips = list(lab.topology.nodes["server"].ips)
    endpoints = [(ip, p) for ip in ips for p in ports]
    tcp = [f"--tcp={ip}:{p}" for ip in ips for p in TCP_PORTS]
    proc = lab.popen(
        "server",
        [sys.executable, "-m", "nattrav.lab.responder", *[f"{ip}:{p}" for ip, p in endpoints], *tcp],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, bufsize=0,
    )
    line = _readline(proc.stdout, timeout)
    if line.strip() != b"ready":
        err = proc.stderr.read(4000) if proc.poll() is not None else b""
        from .errors import LabError

        raise LabError(f"the probe responder did not start: {line!r} {err.decode(errors='replace')}")
    lab._responder = endpoints
    return endpoints


def _readline(stream, timeout: float) -> bytes:
    r, _, _ = select.select([stream], [], [], timeout)
    return stream.readline() if r else b""


@contextmanager
def helper_process(lab, host: str, argv: list[str]) -> Iterator[subprocess.Popen]:
    """A helper that prints JSON lines, run in `host`; killed and reaped on the way out. Unbuffered:
    select() must see every line that is not yet read."""
    proc = lab.popen(host, argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, bufsize=0)
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait()
        proc.stdout.close()
        proc.stderr.close()


def read_json_line(proc: subprocess.Popen, timeout: float) -> dict:
    """The helper's next JSON line, or {} when none came within `timeout`."""
    return json.loads(_readline(proc.stdout, timeout) or b"{}")


@dataclass
class Measured:
    """One side's measured behaviour; None where a check was not run or cannot apply."""

    host: str
    public_ip: str | None = None
    nat: bool | None = None
    mapping: str | None = None
    filtering: str | None = None
    allocation: str | None = None
    delta: int | None = None
    ports: list | None = None
    hairpin: bool | None = None
    hairpin_source: list | None = None
    udp_timeout: tuple | None = None  # (longest delay that got through, shortest that did not)
    loss_percent: float | None = None
    tcp_unsolicited: str | None = None

    def as_dict(self) -> dict:
        return dict(self.__dict__)


def classify_mapping(local: int, own_ip: str, seen: list) -> tuple[bool, str]:
    """seen = public endpoints reported by S1:p0, S1:p1, S2:p0 for one socket -> (nat?, mapping)."""
    if any(x is None for x in seen):
        return True, "unknown"
    if all(x[0] == own_ip and x[1] == local for x in seen):
        return False, "none"
    p1, p2, p3 = (x[1] for x in seen)
    if p1 == p2 == p3:
        return True, "EIM"
    if p1 == p2:
        return True, "ADM"
    return True, "APDM"


def classify_filtering(same: bool, port_changed: bool, ip_changed: bool) -> str:
    if not same:
        return "unknown"
    if ip_changed:
        return "EIF"
    if port_changed:
        return "ADF"
    return "APDF"


def classify_allocation(runs: list[dict]) -> tuple[str, int]:
    """From repeated two-server observations: ('preserve', 0) | ('sequential', delta) | ('random', 0)."""
    if any(None in r["seen"] for r in runs):
        return "unknown", 0
    if all(all(x[1] == r["local"] for x in r["seen"]) for r in runs):
        return "preserve", 0
    ports: list[int] = []
    for r in runs:
        for x in r["seen"]:
            if not ports or ports[-1] != x[1]:
                ports.append(x[1])
    diffs = [b - a for a, b in zip(ports, ports[1:])]
    # A sequential counter moves by Δ for each of our flows and for any other flow through the NAT
    # in between (the kernel's, another host's), so every gap is a positive multiple of Δ: Δ is their
    # gcd. Seven small forward gaps from a random allocator do not happen by chance.
    if diffs and all(0 < d <= MAX_SEQUENTIAL_GAP for d in diffs):
        return "sequential", math.gcd(*diffs)
    return "random", 0


def measure(
    lab,
    host: str = "a",
    *,
    checks: tuple[str, ...] = ("mapping", "filtering", "allocation", "hairpin", "tcp", "loss"),
    lifetime_delays: list[float] | None = None,
    loss_count: int = 1000,
) -> Measured:
    """Run the chosen checks for one host and classify; `lifetime` runs when lifetime_delays is given."""
    start_responder(lab)
    s1p0, s1p1, s2p0 = (lab.S1, PORTS[0]), (lab.S1, PORTS[1]), (lab.S2, PORTS[0])
    m = Measured(host=host)
    own_ip = lab.ip(host)
    if "mapping" in checks:
        obs = lab.call(host, observe, [s1p0, s1p1, s2p0])
        m.nat, m.mapping = classify_mapping(obs["local"], own_ip, obs["seen"])
        m.public_ip = obs["seen"][0][0] if obs["seen"][0] else None
    if "filtering" in checks:
        same, port_changed, ip_changed = lab.call(host, filtering_run, s1p0, [s1p0, s1p1, s2p0])
        m.filtering = classify_filtering(same, port_changed, ip_changed)
    if "allocation" in checks:
        runs = lab.call(host, allocation_run, [s1p0, s2p0], 4)
        m.allocation, m.delta = classify_allocation(runs)
        m.ports = [[x[1] for x in r["seen"]] for r in runs]
    if "hairpin" in checks:
        m.hairpin, m.hairpin_source = measure_hairpin(lab, host)
    if "tcp" in checks:
        m.tcp_unsolicited = lab.call("server", tcp_unsolicited_run, (lab.wan_ip(host), 9))
    if "loss" in checks:
        res = lab.call(host, loss_run, s1p0, loss_count)
        if res["received"] is not None:
            m.loss_percent = round(100.0 * (1 - res["received"] / res["sent"]), 2)
    if lifetime_delays:
        got = lab.call(host, lifetime_run, s1p0, lifetime_delays)
        alive = [float(d) for d, ok in got.items() if ok]
        dead = [float(d) for d, ok in got.items() if not ok]
        m.udp_timeout = (max(alive) if alive else 0.0, min(dead) if dead else float("inf"))
    return m


def measure_hairpin(lab, host: str, wait: float = 1.0) -> tuple[bool | None, list | None]:
    """host sends to the public endpoint of a second host behind the same NAT: does it arrive, and
    from which source? (None, None) when the lab has no second host there."""
    side = lab.topology.nodes[host].side
    peer = next(
        (n.name for n in lab.topology.hosts() if n.side == side and n.name != host and not n.name.startswith("bg_")),
        None,
    )
    if peer is None:
        return None, None
    argv = [sys.executable, "-c",
            "import sys; from nattrav.lab.probe import hairpin_listen_main as m; "
            f"m(({lab.S1!r}, {PORTS[0]}), {wait + 1.0})"]
    with helper_process(lab, peer, argv) as proc:
        public = read_json_line(proc, 5.0).get("public")
        if not public:
            return None, None
        lab.call(host, hairpin_send, tuple(public))
        src = read_json_line(proc, wait + 3.0).get("from")
        return src is not None, src
