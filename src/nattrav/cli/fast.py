"""nattrav-fast: punch a UDP path to a peer through our rendezvous and STUN servers, then pipe
stdin/stdout over it (netcat-like).

Progress goes to stderr (one line a phase, or JSON lines with --json); stdout carries only what the
peer sends, so `nattrav-fast ... > file` stores the peer's bytes.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Awaitable, Callable
from typing import Any

import trio

from ..api import connect, connect_tcp, listen, listen_tcp
from ..hostport import parse_hostport
from ..io import rendezvous_client as rv
from ..proto.planner.odds import FLOW_TABLE_CAP
from ..proto.planner.budget import CGN_FLOW_BUDGET, DEFAULT_FLOW_BUDGET, FLOW_LINGER
from .events import describe
from .version import add_version_flag
from .exits import EXIT_OK, EXIT_TIMEOUT, HANDLED, exit_code

EPILOG = """\
examples:
  nattrav-fast -s 198.51.100.1                 enroll, print our peer ID, wait for one peer
  nattrav-fast -s 198.51.100.1 -d PEER_ID      connect to that peer
  echo hi | nattrav-fast -s rv.example:7000 -H stun.example:3478 -d PEER_ID

exit codes: 0 connected and done, 2 bad usage, 3 rendezvous server trouble, 4 unknown/offline/refusing
peer, 5 no path (the message names both NAT behaviours and the odds), 6 timeout, 130 interrupted.
"""


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="nattrav-fast",
        description="Connect to a peer behind any NAT (symmetric ones included) through a nattrav "
        "rendezvous server: STUN discovery, two-server port prediction, low-TTL punching, "
        "an authenticated handshake, then stdin/stdout over the path.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("-s", "--server", required=True, metavar="SERVER[:PORT]",
                   help="rendezvous server (default port %d)" % rv.DEFAULT_PORT)
    p.add_argument("-d", "--dest", metavar="PEER_ID",
                   help="peer to connect to; without it, enroll, print our ID and wait for a peer "
                        "(an ID starting with '-', from an older server, is given as -d=ID)")
    p.add_argument("-H", "--stun", metavar="STUN[:PORT]",
                   help="STUN server (default: the rendezvous server's host, port 3478)")
    p.add_argument("-i", "--src-ip", metavar="IP", help="local IP to send from (default: any)")
    p.add_argument("-p", "--src-port", type=int, default=0, metavar="PORT",
                   help="local UDP port of the punch socket (default: any free port)")
    p.add_argument("-t", "--ttl", type=int, metavar="TTL",
                   help="TTL of the opening packets: enough to leave our NAT(s), too small to reach "
                   "the peer's (default: measured by tracing the path to the STUN server)")
    p.add_argument("--max-flows", type=int, default=None, metavar="N",
                   help=f"new flows our UDP bursts may hold open on our NAT(s), published to the peer (default "
                   f"{DEFAULT_FLOW_BUDGET}, a share of a home router's 4k-16k; {CGN_FLOW_BUDGET} when the trace "
                   f"shows a carrier-grade NAT, whose subscriber gets 1024-2048 in all; less what our bursts of "
                   f"the last {FLOW_LINGER:g} s still hold); more raises the odds of the random-port strategies "
                   f"where the NATs can hold them")
    p.add_argument("-n", "--name", help="enroll under this name instead of a random ID")
    p.add_argument("--no-cache", action="store_true",
                   help="measure the NAT's behaviour every time and keep nothing (default: kept per network "
                        "in $XDG_CACHE_HOME/nattrav/behavior.json, so a later run skips the RFC 5780 tests)")
    p.add_argument("--timeout", type=float, default=30.0, metavar="SECONDS",
                   help="give up connecting after this long (default 30)")
    p.add_argument("--linger", type=float, default=1.0, metavar="SECONDS",
                   help="after stdin ends, wait this long for the peer's data before closing (default 1)")
    p.add_argument("--json", action="store_true", help="progress as JSON lines on stderr")
    p.add_argument("--tcp", action="store_true",
                   help="TCP instead of UDP: TCP mappings, low-TTL SYN and simultaneous open; stdin EOF "
                   "half-closes the stream, and we exit when the peer has closed its side too")
    p.add_argument("-v", "--verbose", action="store_true", help="more detail in progress lines")
    add_version_flag(p)
    return p


class Reporter:
    def __init__(self, as_json: bool, verbose: bool) -> None:
        self.as_json = as_json
        self.verbose = verbose

    def __call__(self, phase: str, detail: dict[str, Any]) -> None:
        if self.as_json:
            print(json.dumps({"event": phase, **detail}, default=str), file=sys.stderr, flush=True)
            return
        line = self._human(phase, detail)
        if line:
            print(f"nattrav-fast: {line}", file=sys.stderr, flush=True)

    def _human(self, phase: str, d: dict[str, Any]) -> str | None:
        return describe(phase, d, verbose=self.verbose)


async def _read_stdin(send: Callable[[bytes], Awaitable[None]]) -> None:
    """Hand everything read from stdin to `send`, until stdin ends."""
    while True:
        data = await trio.to_thread.run_sync(os.read, 0, 65536, abandon_on_cancel=True)
        if not data:
            return
        await send(data)


def _write_stdout(data: bytes) -> None:
    out = sys.stdout.buffer
    out.write(data)
    out.flush()


async def _pipe(path: Any, linger: float) -> None:
    """stdin -> peer, peer -> stdout, until the peer closes, or stdin ends and `linger` passes."""
    async with trio.open_nursery() as nursery:

        async def from_peer() -> None:
            while data := await path.receive():
                _write_stdout(data)
            nursery.cancel_scope.cancel()  # b"": the peer closed the path

        async def to_peer() -> None:
            await _read_stdin(path.send)
            await trio.sleep(linger)
            nursery.cancel_scope.cancel()

        nursery.start_soon(from_peer)
        nursery.start_soon(to_peer)
        nursery.start_soon(path.serve_keepalives)


async def _pipe_tcp(stream: Any, linger: float) -> None:
    """stdin -> peer until EOF (then half-close), peer -> stdout until the peer's EOF; after that,
    our stdin gets `linger` seconds to finish."""
    sent = trio.Event()

    async with trio.open_nursery() as nursery:

        async def to_peer() -> None:
            await _read_stdin(stream.send_all)
            await stream.send_eof()
            sent.set()

        nursery.start_soon(to_peer)
        while data := await stream.receive_some(65536):
            _write_stdout(data)
        with trio.move_on_after(linger):
            await sent.wait()
        nursery.cancel_scope.cancel()  # the peer is done; our stdin may never end (a terminal)


async def run(args: argparse.Namespace, report: Reporter) -> int:
    server = parse_hostport(args.server, rv.DEFAULT_PORT)
    common = dict(stun=args.stun, src_ip=args.src_ip, src_port=args.src_port, ttl=args.ttl,
                  max_flows=args.max_flows, on_event=report, cache=not args.no_cache)
    if args.tcp:
        connect_, listen_, pipe = connect_tcp, listen_tcp, _pipe_tcp
    else:
        connect_, listen_, pipe = connect, listen, _pipe
    if args.dest:
        async with connect_(server, args.dest, timeout=args.timeout, **common) as path:
            await pipe(path, args.linger)
    else:
        async with listen_(server, name=args.name, **common) as listener:
            async with listener.accept() as path:
                await pipe(path, args.linger)
    return EXIT_OK


def _fail(code: int, message: str, as_json: bool) -> int:
    if as_json:
        print(json.dumps({"event": "error", "code": code, "message": message}), file=sys.stderr)
    else:
        print(f"nattrav-fast: error: {message}", file=sys.stderr)
    return code


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        parse_hostport(args.server, rv.DEFAULT_PORT)
        if args.stun:
            parse_hostport(args.stun, 3478)
    except ValueError as exc:
        parser.error(str(exc))
    if not 0 <= args.src_port <= 65535:
        parser.error("-p/--src-port must be in 0..65535")
    if args.ttl is not None and not 1 <= args.ttl <= 64:
        parser.error("-t/--ttl must be in 1..64")
    if args.timeout <= 0:
        parser.error("--timeout must be positive")
    if args.max_flows is not None and not 1 <= args.max_flows <= FLOW_TABLE_CAP:
        parser.error(f"--max-flows must be in 1..{FLOW_TABLE_CAP}")
    report = Reporter(args.json, args.verbose)
    try:
        return trio.run(run, args, report)
    except HANDLED as exc:
        code = exit_code(exc)
        if isinstance(exc, KeyboardInterrupt):
            message = "interrupted"
        elif code == EXIT_TIMEOUT:
            message = str(exc) or f"timeout: gave up after {args.timeout:g} s (see --timeout)"
        else:
            message = str(exc) or type(exc).__name__
        return _fail(code, message, args.json)


if __name__ == "__main__":
    sys.exit(main())
