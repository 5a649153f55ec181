"""The tests' own "what did you see" server (deliberately not nattrav's STUN code).

It listens on every (address, port) given and answers small JSON datagrams:
  {"op": "echo", "id": X}                      -> {"id": X, "saw": [ip, port], "at": [ip, port]}
  {"op": "reply", "id": X, "from": [ip, port], "delay": s}
                                               -> the same answer, sent from another of its sockets
                                                  (filtering tests) and/or later (mapping lifetime)
  {"op": "count", "tag": T}                    -> nothing; counts the datagram under T (loss tests)
  {"op": "stats", "id": X, "tag": T}           -> {"id": X, "count": n, "bytes": b, "first": t0,
                                                   "last": t1} (arrival times, for rate tests)
Anything else is ignored: it is a test fixture on a private network, but it still never crashes on
odd input. Prints "ready" on stdout once every socket is bound.

With --tcp ip:port it also accepts TCP connections there: each gets one line "saw IP PORT" (the
source it saw), then every line "wait D" is answered with "late" D seconds later (mapping lifetime
over TCP) and every other line is echoed.
"""

from __future__ import annotations

import argparse
import heapq
import json
import selectors
import socket
import sys
import threading
import time
from collections import Counter

MAX_DELAY = 60.0
OPS = ("echo", "reply", "count", "stats")


class BadRequest(ValueError):
    """Any datagram the responder cannot act on."""


def parse_request(data: bytes, default_from: tuple[str, int]) -> dict:
    """Untrusted bytes -> {"op", "id", "tag", "from": (ip, port), "delay"}; BadRequest on anything else."""
    if len(data) > 1024:
        raise BadRequest("too long")
    try:
        req = json.loads(data)
    except (ValueError, RecursionError) as exc:
        raise BadRequest(f"not JSON: {exc}") from None
    if not isinstance(req, dict) or req.get("op") not in OPS:
        raise BadRequest("not a request")
    src = req.get("from") or default_from
    if not isinstance(src, (list, tuple)) or len(src) != 2 or not isinstance(src[0], str) \
            or not isinstance(src[1], int) or isinstance(src[1], bool):
        raise BadRequest("bad 'from'")
    delay = req.get("delay", 0.0)
    if not isinstance(delay, (int, float)) or isinstance(delay, bool):
        raise BadRequest("bad 'delay'")
    try:
        delay = float(delay)
    except OverflowError:
        raise BadRequest("bad 'delay'") from None
    if delay != delay:
        raise BadRequest("bad 'delay'")
    rid = req.get("id")
    if rid is not None and not isinstance(rid, str):
        raise BadRequest("bad 'id'")
    return {
        "op": req["op"],
        "id": rid,
        "tag": str(req.get("tag"))[:64],
        "from": (src[0], src[1]),
        "delay": min(MAX_DELAY, max(0.0, delay)),
    }


def parse_endpoint(text: str) -> tuple[str, int]:
    host, _, port = text.rpartition(":")
    return host, int(port)


def serve(endpoints: list[tuple[str, int]]) -> None:
    sel = selectors.DefaultSelector()
    socks: dict[tuple[str, int], socket.socket] = {}
    for ep in endpoints:
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
        s.bind(ep)
        s.setblocking(False)
        socks[ep] = s
        sel.register(s, selectors.EVENT_READ, ep)
    counts: Counter = Counter()
    sizes: Counter = Counter()
    seen_at: dict[str, list[float]] = {}
    later: list[tuple[float, int, tuple[str, int], bytes, tuple[str, int]]] = []
    seq = 0
    print("ready", flush=True)
    while True:
        timeout = None
        if later:
            timeout = max(0.0, later[0][0] - time.monotonic())
        for key, _ in sel.select(timeout):
            s = key.fileobj
            for _ in range(256):
                try:
                    data, addr = s.recvfrom(2048)
                except (BlockingIOError, InterruptedError):
                    break
                except OSError:
                    break  # ICMP errors surfacing on the socket: not ours to handle
                try:
                    req = parse_request(data, key.data)
                except BadRequest:
                    continue
                op = req["op"]
                if op == "count":
                    counts[req["tag"]] += 1
                    sizes[req["tag"]] += len(data)
                    span = seen_at.setdefault(req["tag"], [time.monotonic(), 0.0])
                    span[1] = time.monotonic()
                    continue
                answer = {"id": req["id"], "saw": list(addr), "at": list(key.data)}
                try:
                    if op == "stats":
                        answer["count"] = counts[req["tag"]]
                        answer["bytes"] = sizes[req["tag"]]
                        answer["first"], answer["last"] = seen_at.get(req["tag"], [None, None])
                        s.sendto(json.dumps(answer).encode(), addr)
                    elif op == "echo":
                        s.sendto(json.dumps(answer).encode(), addr)
                    elif op == "reply" and req["from"] in socks:
                        answer["at"] = list(req["from"])
                        seq += 1
                        heapq.heappush(
                            later,
                            (time.monotonic() + req["delay"], seq, req["from"], json.dumps(answer).encode(), addr),
                        )
                except OSError:
                    continue
        now = time.monotonic()
        while later and later[0][0] <= now:
            _, _, src, payload, addr = heapq.heappop(later)
            try:
                socks[src].sendto(payload, addr)
            except OSError:
                pass


def _tcp_client(conn: socket.socket, addr: tuple[str, int]) -> None:
    with conn:
        conn.settimeout(MAX_DELAY + 5)
        try:
            conn.sendall(f"saw {addr[0]} {addr[1]}\n".encode())
            buf = b""
            while True:
                chunk = conn.recv(1024)
                if not chunk or len(buf) > 4096:
                    return
                buf += chunk
                while b"\n" in buf:
                    line, _, buf = buf.partition(b"\n")
                    words = line.split()
                    if len(words) == 2 and words[0] == b"wait":
                        try:
                            delay = min(MAX_DELAY, max(0.0, float(words[1])))
                        except ValueError:
                            continue
                        time.sleep(delay)
                        conn.sendall(b"late\n")
                    else:
                        conn.sendall(line + b"\n")
        except OSError:
            return


def serve_tcp(endpoints: list[tuple[str, int]]) -> None:
    """Accept TCP connections on each endpoint (threads: a fixture, a handful of connections)."""
    for ep in endpoints:
        srv = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        srv.bind(ep)
        srv.listen(64)

        def accept_loop(srv: socket.socket = srv) -> None:
            while True:
                conn, addr = srv.accept()
                threading.Thread(target=_tcp_client, args=(conn, addr), daemon=True).start()

        threading.Thread(target=accept_loop, daemon=True).start()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="UDP 'what did you see' responder for the NAT lab tests")
    ap.add_argument("endpoints", nargs="+", help="ip:port to listen on")
    ap.add_argument("--tcp", action="append", default=[], help="ip:port to accept TCP connections on")
    a = ap.parse_args(argv)
    serve_tcp([parse_endpoint(e) for e in a.tcp])
    serve([parse_endpoint(e) for e in a.endpoints])
    return 0


if __name__ == "__main__":
    sys.exit(main())
