"""Running nattrav-fast pairs in the NAT lab, as a user would (only the server's address and the
peer's ID on the command line), for the secure-path lab tests and bench/bench_idle_path.py."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from nattrav.lab.matrix import SERVER_PORT, wait_tcp

FAST = [sys.executable, "-m", "nattrav.cli.fast"]


@dataclass
class Side:
    """One nattrav-fast process: its JSON events (read by a thread), its exit status."""

    proc: subprocess.Popen
    events: list[dict] = field(default_factory=list)
    lines: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._changed = threading.Condition()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        for raw in self.proc.stderr:
            line = raw.decode(errors="replace").strip()
            with self._changed:
                self.lines.append(line)
                try:
                    self.events.append(json.loads(line))
                except ValueError:
                    pass
                self._changed.notify_all()
        with self._changed:
            self.events.append({"event": "<exit>"})
            self._changed.notify_all()

    def wait_event(self, kind: str, timeout: float) -> dict:
        deadline = time.monotonic() + timeout
        with self._changed:
            while True:
                for ev in self.events:
                    if ev.get("event") == kind:
                        return ev
                    if ev.get("event") == "<exit>":
                        raise AssertionError(f"exited before {kind!r}: {self.lines[-5:]}")
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError(f"no {kind!r} within {timeout:g} s: {self.lines[-5:]}")
                self._changed.wait(left)

    def event(self, kind: str) -> dict | None:
        return next((e for e in self.events if e.get("event") == kind), None)

    def finish(self, timeout: float) -> int:
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            raise AssertionError(f"still running after {timeout:g} s: {self.lines[-5:]}") from None


def start_server(lab: Any, extra: list[str] | None = None, port: int = SERVER_PORT,
                 stun: bool = True) -> str:
    stun_args = ["--stun", f"{lab.S1},{lab.S2}"] if stun else []
    lab.popen("server", [sys.executable, "-m", "nattrav.cli.server", "--listen", f"{lab.S1}:{port}",
                         *stun_args, *(extra or [])],
              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_tcp(lab, lab.S1, port, time.monotonic() + 20)
    return f"{lab.S1}:{port}"


def self_signed(tmp_path, name: str, ip: str = "127.0.0.1") -> tuple[str, str]:
    """A self-signed certificate for `ip` and its key, as PEM files in `tmp_path`."""
    import datetime as dt
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = dt.datetime.now(dt.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(subject).issuer_name(subject).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(now + dt.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address(ip))]),
                           critical=False)
            .sign(key, hashes.SHA256()))
    cert_path, key_path = tmp_path / f"{name}.crt", tmp_path / f"{name}.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return str(cert_path), str(key_path)


def start_fast(lab: Any, host: str, keys: Path, args: list[str], *, stdin: IO | int = subprocess.PIPE,
               stdout: IO | int = subprocess.DEVNULL) -> Side:
    plain = [] if "--server-cert" in args else ["--plain"]  # the lab's server has no certificate
    argv = [*FAST, "--json", *plain, "--identity", str(keys / f"{host}.pem"), *args]
    return Side(lab.popen(host, argv, stdin=stdin, stdout=stdout, stderr=subprocess.PIPE))


def start_pair(lab: Any, keys: Path, server: str, *, b_args: list[str] = (), a_args: list[str] = (),
               a_stdin: IO | int = subprocess.PIPE, b_stdout: IO | int = subprocess.DEVNULL,
               b_stdin: IO | int = subprocess.PIPE) -> tuple[Side, Side, str]:
    """b listens, a connects to b's peer ID: (a, b, b's ID)."""
    os.makedirs(keys, exist_ok=True)
    b = start_fast(lab, "b", keys, ["-s", server, *b_args], stdin=b_stdin, stdout=b_stdout)
    peer_id = b.wait_event("enrolled", 30)["peer_id"]
    a = start_fast(lab, "a", keys, ["-s", server, "-d", peer_id, *a_args], stdin=a_stdin)
    return a, b, peer_id


def idle_path_survives(tmp_path, nat_timeout: int, idle: float) -> dict:
    """Connect through NATs whose UDP mappings die after `nat_timeout` s idle, say nothing for `idle`
    s, then send a line each way: both must arrive (and both exit 0)."""
    nat = f"port-restricted,udp_timeout={nat_timeout}"
    seq = f"symmetric-seq,udp_timeout={nat_timeout}"
    from nattrav.lab.pytest_support import running_lab

    with running_lab(nat, seq) as lab:
        server = start_server(lab)
        out = tmp_path / "b.out"
        with open(out, "wb") as dst:
            a, b, _ = start_pair(lab, tmp_path / "keys", server, b_stdout=dst)
            a.wait_event("secure", 60)
            keepalive = a.event("secure")["keepalive"]
            time.sleep(idle)
            a.proc.stdin.write(b"after the idle spell\n")
            a.proc.stdin.close()
            b.proc.stdin.write(b"still here\n")
            b.proc.stdin.close()
            a_out = a.proc.stdout.read() if a.proc.stdout else b""
            codes = (a.finish(60), b.finish(60))
        return {"codes": codes, "b_got": out.read_bytes(), "keepalive": keepalive, "a_lines": a.lines[-3:],
                "b_delivered": b.event("delivered"), "a_out": a_out}


# --- what an observer on the path sees, and what it can inject --------------------------------------

PACKET_OUTGOING = 4  # sockaddr_ll pkttype of a frame this namespace sent (forwarded, for a router)
_RECORD = "!HBI"  # interface name length, pkttype, frame length


def capture_main(out_path: str) -> None:
    """Record every frame on every interface of this namespace (AF_PACKET) into `out_path` until
    SIGTERM; prints "ready" once listening."""
    import signal
    import socket
    import struct

    sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(0x0003))  # ETH_P_ALL
    sock.settimeout(0.2)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 32 * 1024 * 1024)
    stop: list[int] = []
    signal.signal(signal.SIGTERM, lambda *_: stop.append(1))
    print("ready", flush=True)
    with open(out_path, "wb") as out:
        while not stop:
            try:
                data, addr = sock.recvfrom(262144)
            except (socket.timeout, InterruptedError):
                continue
            name = addr[0].encode()
            out.write(struct.pack(_RECORD, len(name), addr[2], len(data)) + name + data)


def read_capture(path: str) -> list[tuple[str, int, bytes]]:
    import struct

    raw = Path(path).read_bytes()
    out, i = [], 0
    head = struct.calcsize(_RECORD)
    while i + head <= len(raw):
        n, pkttype, size = struct.unpack_from(_RECORD, raw, i)
        i += head
        name = raw[i:i + n].decode()
        i += n
        out.append((name, pkttype, raw[i:i + size]))
        i += size
    return out


def udp_frames_to(frames: list[tuple[str, int, bytes]], dst_ip: str, src_ip: str) -> list[tuple[str, bytes]]:
    """Ethernet/IPv4/UDP frames from `src_ip` this namespace sent on towards `dst_ip` (at most one
    MTU each)."""
    import socket

    want, src = socket.inet_aton(dst_ip), socket.inet_aton(src_ip)
    picked = []
    for name, pkttype, frame in frames:
        if pkttype != PACKET_OUTGOING or len(frame) < 42 or len(frame) > 1514 or frame[12:14] != b"\x08\x00":
            continue
        if frame[23] == 17 and frame[30:34] == want and frame[26:30] == src:
            picked.append((name, frame))
    return picked


def forge(frame: bytes, nth: int = 0) -> bytes:
    """The same frame with its `nth` last payload byte flipped (0: none, a pure replay) and no UDP
    checksum (valid for IPv4), so the kernel delivers it and only the receiver's own check can
    refuse it. (A frame captured as it crossed veths may still carry an offloaded, unfinished
    checksum, which the next hop would drop: not what is being tested.)"""
    ihl = (frame[14] & 0x0F) * 4
    udp = 14 + ihl
    body = bytearray(frame)
    body[udp + 6:udp + 8] = b"\0\0"
    if nth:
        body[-nth] ^= 0xFF
    return bytes(body)


def inject(frames: list[tuple[str, bytes]]) -> int:
    """Send `frames` as they are on their interfaces (run in the router's namespace)."""
    import socket

    sent = 0
    socks: dict[str, socket.socket] = {}
    try:
        for name, frame in frames:
            if name not in socks:
                socks[name] = socket.socket(socket.AF_PACKET, socket.SOCK_RAW)
                socks[name].bind((name, 0))
            socks[name].send(frame)
            sent += 1
            time.sleep(0.002)
    finally:
        for s in socks.values():
            s.close()
    return sent


if __name__ == "__main__":
    if sys.argv[1:2] == ["capture"]:
        capture_main(sys.argv[2])
