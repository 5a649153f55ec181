"""Per-frame cost of the raw punched path's framing, before and after csrc/frames.c, in one run (issue 17).

Receive: 1200-byte DATA frames already in a recvmmsg batch's buffers (64 per batch), checked
  - before: one Handshake.receive per frame (what io/path.py and nattrav-perf did until then),
  - after: one FrameBatch.open per batch (C: source, structure, HMAC-SHA256 tag, replay window) and
    the payloads sliced out, with the SHA extensions and with the portable SHA-256,
  - baseline: the same batch call without a key (what the direct path's receiver does).
Send: building 64 frames: Handshake.data per frame vs one C seal of the batch.
Timings are medians of --repeats; they are noisy on the shared machine, so the ratios (same run) and
the load average are printed beside them.

    .venv/bin/python bench/frame_cost.py
"""

from __future__ import annotations

import argparse
import os
import socket
import statistics
import time

from nattrav.core.frames import OVERHEAD, FrameBatch, MacKey, seal, sha_ni
from nattrav.proto.handshake import Handshake, ReplayWindow

SIZE = 1200
BATCH = 64


def fill(fb: FrameBatch, frames: list[bytes]) -> None:
    """Put frames into the batch's buffers as recvmmsg would (source: the allowed address)."""
    b = fb.batch
    for i, f in enumerate(frames):
        fb._buf[i * b.bufsize : i * b.bufsize + len(f)] = f
        b._lens[i] = len(f)
        b._addrs[i] = fb._allow[0]
    fb.count = len(frames)


def timed(fn, rounds: int) -> float:
    t = time.perf_counter()
    for _ in range(rounds):
        fn()
    return (time.perf_counter() - t) / rounds


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rounds", type=int, default=300, help="batches of 64 frames per measurement")
    p.add_argument("--repeats", type=int, default=5)
    args = p.parse_args(argv)
    key = os.urandom(32)
    peer = ("192.0.2.1", 4000)
    results: dict[str, list[float]] = {}

    def record(name: str, seconds_per_batch: float) -> None:
        results.setdefault(name, []).append(seconds_per_batch / BATCH * 1e6)

    for _ in range(args.repeats):
        a = Handshake(key, "first", os.urandom(8))
        batches = [[a.data(os.urandom(SIZE)) for _ in range(BATCH)] for _ in range(args.rounds)]
        flat = [f for b in batches for f in b]

        b = Handshake(key, "second", os.urandom(8))
        it = iter(flat)
        record("receive: Python Handshake.receive a frame (before)",
               timed(lambda: [b.receive(next(it), 0) for _ in range(BATCH)], args.rounds))

        for portable in (False, True):
            sha_ni(portable=portable)
            fb = FrameBatch([peer], key=b._recv_key, n=BATCH)
            w = ReplayWindow()
            bit = iter(batches)

            def one() -> None:
                fill(fb, next(bit))
                fb.open(0, w)
            label = "portable SHA-256" if portable else ("SHA-NI" if sha_ni() else "no SHA-NI here")
            record(f"receive: C batch of 64 ({label}) + payload slices (after)", timed(one, args.rounds))
        sha_ni(portable=False)

        raw = FrameBatch([peer], n=BATCH)
        bit = iter(batches)

        def plain() -> None:
            fill(raw, next(bit))
            raw.open(0)
        record("receive: keyless batch (the direct path's receiver)", timed(plain, args.rounds))

        # the fill() above is part of every batch measurement; measure it alone to subtract it
        bit = iter(batches)
        record("(filling the buffers, included above)", timed(lambda: fill(raw, next(bit)), args.rounds))

        record("send: Python Handshake.data a frame (before)",
               timed(lambda: [a.data(bytes(SIZE)) for _ in range(BATCH)], args.rounds))
        mk = MacKey(a._send_key)
        flen = SIZE + OVERHEAD
        buf = bytearray(BATCH * flen)
        record("send: C seal of 64 frames (after)", timed(lambda: seal(mk, 1, buf, flen, BATCH), args.rounds))

    print(f"1-minute load average: {os.getloadavg()[0]:.2f} on {os.cpu_count()} CPUs; {socket.gethostname()}")
    print(f"{'us per 1200-byte frame (median of ' + str(args.repeats) + ')':<72} {'us':>7}")
    med = {k: statistics.median(v) for k, v in results.items()}
    for k, v in med.items():
        print(f"{k:<72} {v:7.3f}")
    fill_us = med["(filling the buffers, included above)"]
    before = med["receive: Python Handshake.receive a frame (before)"]
    after = [v for k, v in med.items() if k.startswith("receive: C batch")][0]
    raw_us = med["receive: keyless batch (the direct path's receiver)"]
    print(f"receive, before/after (buffer filling subtracted): {before / max(after - fill_us, 1e-9):.1f}x; "
          f"the frames' own cost over a keyless batch: {after - raw_us:.3f} us a frame")
    print(f"send, before/after: {med['send: Python Handshake.data a frame (before)'] / med['send: C seal of 64 frames (after)']:.1f}x")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
