"""The delay line's process: run inside a wire namespace, it forwards frames between two interfaces
through the C loop (csrc/wire.c) as a LinkSpec says, until SIGTERM; then it prints its counters.

    python -m nattrav.lab.wire --left l --right r --link '{"delay_ms": 50, "jitter_ms": 10}'

Prints "ready" once both sockets are bound, and one JSON line of per-direction counters on exit.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import sys

from .errors import LabError
from .shape import LinkSpec

SOCKET_BUFFER = 32 << 20  # ~40 k small frames: rides out a few scheduler stalls on a loaded machine
STAT_FIELDS = ("received", "forwarded", "lost", "overflow", "send_errors", "passed", "held_max", "late_max_ns",
               "last_errno")


def dir_config(link: LinkSpec) -> dict:
    """A LinkSpec in the C loop's units (pure: the unit test checks the arithmetic)."""
    link.validate()
    return {
        "delay_ns": round(link.delay_ms * 1e6),
        "jitter_ns": round(link.jitter_ms * 1e6),
        "rate_bps": round(link.rate_mbit * 1e6),
        "distribution": 0 if link.distribution == "uniform" else 1,
        "loss_ppm": round(link.loss_percent * 1e4),
        "reorder": int(link.reorder),
        "limit": link.limit,
    }


def run(left: str, right: str, ab: LinkSpec, ba: LinkSpec, *, seed: int = 0, ready=None) -> dict:
    """Forward between the two interfaces until a signal arrives; return the counters."""
    from ..core.errors import check
    from .._core import ffi, lib

    fds = []
    try:
        for ifname in (left, right):
            try:
                index = socket.if_nametoindex(ifname)
            except OSError:
                raise LabError(f"delay line: no interface {ifname!r} in this namespace") from None
            fds.append(check(lib.nt_wire_open(index, SOCKET_BUFFER), f"delay line socket on {ifname}"))
        cfg = [ffi.new("nt_wire_dir *", dir_config(x)) for x in (ab, ba)]
        stats = [ffi.new("nt_wire_stats *") for _ in range(2)]
        # a signal only writes a byte to this pipe; the C loop polls it and returns
        stop_r, stop_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            signal.signal(sig, lambda *_: None)
        signal.set_wakeup_fd(stop_w, warn_on_full_buffer=False)
        if ready is not None:
            ready()
        check(lib.nt_wire_run(fds[0], fds[1], cfg[0], cfg[1], seed, stop_r, stats[0], stats[1]), "delay line")
        return {name: {f: int(getattr(st, f)) for f in STAT_FIELDS} for name, st in zip(("ab", "ba"), stats)}
    finally:
        for fd in fds:
            os.close(fd)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="the NAT lab's delay line (run inside a wire namespace)")
    ap.add_argument("--left", required=True, help="interface towards the first node")
    ap.add_argument("--right", required=True, help="interface towards the second node")
    ap.add_argument("--link", required=True, help="LinkSpec as JSON, both directions")
    ap.add_argument("--back", help="LinkSpec as JSON for right -> left (default: the same as --link)")
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args(argv)
    try:
        ab = LinkSpec(**json.loads(a.link)).validate()
        ba = LinkSpec(**json.loads(a.back)).validate() if a.back else ab
        counters = run(a.left, a.right, ab, ba, seed=a.seed, ready=lambda: print("ready", flush=True))
    except (LabError, OSError, TypeError, ValueError) as exc:
        print(f"delay line: {exc}", file=sys.stderr)
        return 2
    print(json.dumps(counters), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
