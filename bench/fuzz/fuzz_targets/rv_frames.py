"""Rendezvous frames (proto/rendezvous/wire.py): decode_one, and FrameDecoder fed the same bytes in
chunks, with the client table (what the server reads) or the server table (what a client reads).

Input: byte 0 picks the table (bit 0) and the chunk size (bits 1-3); the rest is the stream.

Contract: both raise BadFrame and only that. A decoder that raised on a header is `broken` and
raises on every later call; a bad body costs that frame only. The decoder never holds more than
64 maximal frames (its flood cut-off), and after draining it holds less than one header plus one
maximal body. Every message it returns has the shape of its table (version 1, a known type).
"""

from __future__ import annotations

from nattrav.errors import BadFrame
from nattrav.proto import rendezvous as rv
from nattrav.proto.rendezvous import FrameDecoder

from fuzz_harness import Target, Violation, timed

CHUNKS = (1, 3, 7, 64, 1000, 4096, 65536, 1 << 30)
FLOOD = 64 * (rv.MAX_FRAME + rv.HEADER.size)


def _check(msg: dict, table: dict) -> None:
    if not isinstance(msg, dict) or msg.get("v") != rv.VERSION or msg.get("t") not in table:
        raise Violation(f"decoder returned {type(msg).__name__} outside its table")


def run(data: bytes) -> None:
    if not data:
        return
    table = rv.SERVER_MESSAGES if data[0] & 1 else rv.CLIENT_MESSAGES
    chunk = CHUNKS[(data[0] >> 1) & 7]
    stream = data[1:]
    try:
        with timed():
            _check(rv.decode_one(stream, table), table)
    except BadFrame:
        pass
    dec = FrameDecoder(table)
    for i in range(0, len(stream), chunk):
        try:
            with timed():
                dec.feed(stream[i:i + chunk])
        except BadFrame:
            if not dec.broken:
                raise Violation("feed() raised but the decoder is not broken") from None
        if len(dec._buf) > FLOOD:
            raise Violation(f"decoder holds {len(dec._buf)} bytes")
        while True:
            try:
                with timed():
                    msg = dec.next_message()
            except BadFrame:
                if dec.broken:
                    _still_broken(dec)
                    return
                continue
            if msg is None:
                break
            _check(msg, table)
        if len(dec._buf) >= rv.HEADER.size + rv.MAX_FRAME:
            raise Violation(f"a drained decoder holds {len(dec._buf)} bytes")


def _still_broken(dec: FrameDecoder) -> None:
    for call in (lambda: dec.feed(b"\0\0\0\x01\x80"), dec.next_message):
        try:
            call()
        except BadFrame:
            continue
        raise Violation("a broken decoder accepted more input")


def frames() -> dict[str, bytes]:
    """One valid frame of every message type (both tables), for seeds here and in rv_server."""
    info = {"report": {"mapping": "APDM", "filtering": "APDF", "allocation": "sequential", "delta": 1,
                       "one_socket": [{"port": 20000, "t": 0.0}, {"port": 20001, "t": 0.01}],
                       "public": ["203.0.113.10", 20001], "local": ["10.0.1.2", 5000]},
            "tcp": {"local": ["10.0.1.2", 40000], "filtering": "APDF", "window": 8,
                    "samples": [{"dest": ["198.51.100.1", 3478], "ip": "203.0.113.10", "port": 20010, "t": 0.0}]}}
    m = rv.make
    msgs = {
        "enroll": m("enroll", id=1, name="alice", secret="s" * 16, info=info),
        "enroll-anon": m("enroll", id=2),
        "ping": m("ping", id=3),
        "info": m("info", id=4, info={"x": [1, 2.5, None, True, b"bin", {"k": "v"}]}),
        "connect": m("connect", id=5, target="bob", timeout=2.5),
        "accept": m("accept", id=6, offer="t1"),
        "refuse": m("refuse", id=7, offer="t1"),
        "observe": m("observe", id=8, addr=["203.0.113.11", 31000], ticket=b"t" * 24),
        "s-enrolled": m("enrolled", id=1, peer="alice", secret="x" * 24, keepalive=15.0, now=1.5,
                        observed=["203.0.113.10", 5000]),
        "s-pong": m("pong", id=3, now=2.0),
        "s-ok": m("ok", id=4),
        "s-offer": m("offer", offer="t1", info=info, expires=12.0, **{"from": "bob"}),
        "s-cancel": m("cancel", offer="t1", code="timeout", message="bob did not answer"),
        "s-session": m("session", id=5, session="t1", peer="bob", info=info, key=b"k" * 32, start_at=3.0,
                       now=2.5, role="first"),
        "s-observation": m("observation", id=8, recorded=False, reason="the ticket expired"),
        "s-error": m("error", id=9, code="bad-frame", message="frame length 0 outside 1..16384"),
    }
    return {k: rv.encode(v) for k, v in msgs.items()}


def seeds() -> dict[str, bytes]:
    f = frames()
    client = b"".join(v for k, v in f.items() if not k.startswith("s-"))
    server = b"".join(v for k, v in f.items() if k.startswith("s-"))
    out = {f"one-{k}": bytes([(1 if k.startswith("s-") else 0) | 6 << 1]) + v for k, v in f.items()}
    out["client-stream-chunk7"] = bytes([2 << 1]) + client
    out["server-stream-chunk1"] = bytes([1]) + server
    out["bad-length-then-frame"] = bytes([3 << 1]) + b"\0\0\0\0" + f["ping"]
    out["bad-body-then-frame"] = bytes([3 << 1]) + b"\0\0\0\x01\xc1" + f["ping"]
    return out


TARGET = Target("rv_frames", run, (BadFrame,), seeds, max_len=40000,
                what="rendezvous decode_one and FrameDecoder (both tables, chunked)")
