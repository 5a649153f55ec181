"""The tests' own "what did you see" server (deliberately not nattrav's STUN code).

It listens on every (address, port) given and answers small JSON datagrams:
  {"op": "echo", "id": X}                      -> {"id": X, "saw": [ip, port], "at": [ip, port]}
  {"op": "reply", "id": X, "from": [ip, port], "delay": s}
                                               -> the same answer, sent from another of its sockets
                                                  (filtering tests) and/or later (mapping lifetime)
  {"op": "count", "tag": T}                    -> nothing; counts the datagram under T (loss tests)
  {"op": "stats", "id": X, "tag": T}           -> {"id": X, "count": n}
Anything else is ignored: it is a test fixture on a private network, but it still never crashes on
odd input. Prints "ready" on stdout once every socket is bound.
"""

from __future__ import annotations

import argparse
import heapq
import json
import selectors
import socket
import sys
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
                    continue
                answer = {"id": req["id"], "saw": list(addr), "at": list(key.data)}
                try:
                    if op == "stats":
                        answer["count"] = counts[req["tag"]]
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


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="UDP 'what did you see' responder for the NAT lab tests")
    ap.add_argument("endpoints", nargs="+", help="ip:port to listen on")
    a = ap.parse_args(argv)
    serve([parse_endpoint(e) for e in a.endpoints])
    return 0


if __name__ == "__main__":
    sys.exit(main())
