"""nattrav-fast: punch a UDP path to a peer through our rendezvous and STUN servers, then pipe
stdin/stdout over it (netcat-like): over a QUIC stream on the punched socket by default (reliable,
encrypted, both keys verified), TLS 1.3 on the punched stream with --tcp, the raw path with --raw.

Progress goes to stderr (one line a phase, or JSON lines with --json); stdout carries only what the
peer sends, so `nattrav-fast ... > file` stores the peer's bytes.
"""

from __future__ import annotations

if __name__ == "__main__":  # python -m nattrav.cli.fast: what follows is start-up (cli/launch.py)
    import sys as _sys

    from .launch import preflight, startup_begin

    startup_begin()
    preflight(_sys.argv[1:])

import argparse
import json
import math
import os
import sys
from collections.abc import Awaitable, Callable
from typing import Any

import trio

from ..api import connect, connect_tcp, listen, listen_tcp
from ..api.session import CONNECT_RESERVE
from ..api.secure import IDLE_TIMEOUT, MIN_KEEPALIVE
from ..errors import BadPeerId
from ..hostport import parse_hostport
from ..identity import PeerId, identity_path, load_or_create_identity
from ..io import preconnect, prediscover, presample
from ..io import rendezvous_client as rv
from ..io.rendezvous_tls import client_context
from ..proto.planner.odds import FLOW_TABLE_CAP
from ..proto.planner.budget import CGN_FLOW_BUDGET, DEFAULT_FLOW_BUDGET, FLOW_LINGER, PACE_CAP
from .events import describe
from .version import add_version_flag
from .exits import EXIT_OK, EXIT_TIMEOUT, HANDLED, exit_code, exit_now
from .launch import startup_done

EPILOG = """\
examples:
  nattrav-fast -s rv.example                   enroll (TLS to the server), print our peer ID, wait
  nattrav-fast -s rv.example -d PEER_ID        connect to that peer
  nattrav-fast -s 198.51.100.1 --server-cert rv.pem -d PEER_ID   a server with a self-signed cert
  nattrav-fast -s 198.51.100.1 --plain         a lab's plain server
  echo hi | nattrav-fast -s rv.example:7000 -H stun.example:3478 -d PEER_ID

  NATTRAV_IDENTITY=~/bob.pem nattrav-fast -s 198.51.100.1 -n bob   a second identity, a bound name

identity: our Ed25519 key lives in --identity FILE, else $NATTRAV_IDENTITY, else
$XDG_CONFIG_HOME/nattrav/identity.pem (made on first use, mode 0600). Our peer ID is derived from it
(12D3KooW...); -d with a peer ID connects only to the holder of that key, whatever the server says.

exit codes: 0 connected, all data delivered and confirmed, 2 bad usage, 3 rendezvous server trouble,
4 unknown/offline/refusing peer, or a peer whose key is not the one asked for, 5 no path (the message
names both NAT behaviours and the odds), 6 timeout, 7 the path broke or our data could not be
confirmed delivered, 130 interrupted.
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
                   help="peer to connect to: its peer ID (12D3KooW..., the key it must prove) or a name "
                        "the server binds to a key; without -d, enroll, print our ID and wait for a peer")
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
    p.add_argument("--flow-wait", type=float, default=PACE_CAP, metavar="S",
                   help=f"seconds we may first wait for the NAT entries of our own bursts of the last "
                   f"{FLOW_LINGER:g} s to expire when they leave too little of the flow budget for a burst like "
                   f"the last one (a quick reconnect), or when a run of connects outpaces what the budget "
                   f"sustains (half of it per {FLOW_LINGER:g} s, after a first half at once); never more than --timeout less {CONNECT_RESERVE:g} s. "
                   f"0 never waits: the plan then states its odds at what is left (default {PACE_CAP:g})")
    p.add_argument("-n", "--name", help="also enroll under this name (the server binds it to our key on "
                   "first claim; later claims need the same key)")
    p.add_argument("--identity", metavar="FILE",
                   help="our identity key (default: $NATTRAV_IDENTITY, else ~/.config/nattrav/identity.pem; "
                   "created on first use, mode 0600)")
    p.add_argument("--server-cert", metavar="PEM",
                   help="talk TLS to the rendezvous server and trust exactly this certificate (a pin; "
                   "default: TLS checked against the system's CAs and the server's name)")
    p.add_argument("--plain", action="store_true",
                   help="a plain (unencrypted) rendezvous link: anyone on the way can read and rewrite "
                   "the introductions (peer keys are still checked end to end); for labs and tests")
    p.add_argument("--raw", action="store_true",
                   help="no QUIC/TLS: the raw punched path (UDP: datagrams authenticated with the "
                   "punch key the two peers agreed (the server never learns it), not encrypted, not retransmitted; "
                   "TCP: the plain stream)")
    p.add_argument("--no-cache", action="store_true",
                   help="measure the NAT's behaviour every time and keep nothing (default: kept per network "
                        "in $XDG_CACHE_HOME/nattrav/behavior.json, so a later run skips the RFC 5780 tests)")
    p.add_argument("--timeout", type=float, default=30.0, metavar="SECONDS",
                   help="give up connecting after this long (default 30)")
    p.add_argument("--linger", type=float, default=1.0, metavar="SECONDS",
                   help="raw UDP path: after stdin ends, wait this long for the peer's data before closing; "
                   "QUIC/TLS: once the peer has ended, how long a terminal stdin may go on (a file or a "
                   "pipe is always sent whole) (default 1)")
    p.add_argument("--idle-timeout", type=float, default=IDLE_TIMEOUT, metavar="SECONDS",
                   help="UDP: declare the path dead (exit 7) after this long without a packet from the peer; "
                   "keepalives keep a live but quiet path well inside it (default %(default)g)")
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


async def _pipe_secure(stream: Any, linger: float, report: Reporter, path: Any = None) -> None:
    """stdin -> peer then our end of data, peer -> stdout until its end; leaving the block confirms
    delivery (QUIC: every byte acknowledged; TLS: the peer's DONE). PathDead when it cannot."""
    counts = {"sent": 0, "received": 0}

    async def send(data: bytes) -> None:
        await stream.send_all(data)
        counts["sent"] += len(data)

    sent = trio.Event()
    async with trio.open_nursery() as nursery:

        async def to_peer() -> None:
            await _read_stdin(send)
            await stream.send_eof()
            sent.set()

        nursery.start_soon(to_peer)
        while data := await stream.receive_some(65536):
            counts["received"] += len(data)
            _write_stdout(data)
        # the peer is done; a terminal may never end our stdin, so it gets `linger` seconds, but a
        # file or a pipe is sent to its end: cutting it would lose data without saying so
        with trio.move_on_after(linger if os.isatty(0) else math.inf):
            await sent.wait()
        nursery.cancel_scope.cancel()
    if sent.is_set() and hasattr(stream, "wait_delivered"):
        await stream.wait_delivered(DELIVERY_TIMEOUT)  # TLS; QUIC confirms as the path closes
    stats = getattr(path, "stats", None)  # QUIC: what reached the socket and what was dropped
    report("delivered", {**counts, **({"stats": stats} if stats is not None else {})})


DELIVERY_TIMEOUT = 10.0


async def run(args: argparse.Namespace, report: Reporter) -> int:
    server = parse_hostport(args.server, rv.DEFAULT_PORT)
    identity, created = load_or_create_identity(args.identity)
    report("identity", {"peer_id": identity.peer_id.text, "path": str(identity_path(args.identity)),
                        "created": ", new" if created else ""})
    common = dict(stun=args.stun, src_ip=args.src_ip, src_port=args.src_port, ttl=args.ttl,
                  max_flows=args.max_flows, flow_wait=args.flow_wait, on_event=report, cache=not args.no_cache, identity=identity,
                  secure=not args.raw, server_tls=None if args.plain else client_context(args.server_cert))
    if args.tcp:
        connect_, listen_ = connect_tcp, listen_tcp
        pipe = _pipe_tcp if args.raw else _pipe_secure
    else:
        connect_, listen_ = connect, listen
        pipe = _pipe if args.raw else _pipe_secure
        common["quic"] = {"idle_timeout": args.idle_timeout}

    async def use(path: Any) -> None:
        if args.raw:
            await pipe(path, args.linger)
        else:
            await pipe(path.stream if hasattr(path, "stream") else path, args.linger, report, path)

    if args.dest:
        async with connect_(server, args.dest, timeout=args.timeout, **common) as path:
            await use(path)
    else:
        async with listen_(server, name=args.name, **common) as listener:
            async with listener.accept() as path:
                await use(path)
    return EXIT_OK


def _first_handled(group: BaseExceptionGroup) -> BaseException | None:
    for exc in group.exceptions:
        found = _first_handled(exc) if isinstance(exc, BaseExceptionGroup) else exc
        if isinstance(found, HANDLED):
            return found
    return None


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
    if not 2 * MIN_KEEPALIVE < args.idle_timeout <= 3600:
        parser.error(f"--idle-timeout must be in {2 * MIN_KEEPALIVE:g}..3600 seconds")
    if args.max_flows is not None and not 1 <= args.max_flows <= FLOW_TABLE_CAP:
        parser.error(f"--max-flows must be in 1..{FLOW_TABLE_CAP}")
    if not 0 <= args.flow_wait <= FLOW_LINGER:
        parser.error(f"--flow-wait must be in 0..{FLOW_LINGER:g} seconds")
    if args.plain and args.server_cert:
        parser.error("--plain and --server-cert contradict each other")
    if args.dest and args.dest.startswith("12D3KooW"):
        try:
            PeerId.parse(args.dest)
        except BadPeerId as exc:
            parser.error(f"-d: {exc}")
    report = Reporter(args.json, args.verbose)
    startup_done()
    try:
        try:
            return trio.run(run, args, report)
        except BaseExceptionGroup as group:
            # both pipe directions meet the same broken path: one line for the first of them
            raise _first_handled(group) or group from None
    except HANDLED as exc:
        code = exit_code(exc)
        if isinstance(exc, KeyboardInterrupt):
            message = "interrupted"
        elif code == EXIT_TIMEOUT:
            message = str(exc) or f"timeout: gave up after {args.timeout:g} s (see --timeout)"
        else:
            message = str(exc) or type(exc).__name__
        return _fail(code, message, args.json)
    finally:
        preconnect.discard()  # what cli/launch.py began early and the run never took
        presample.discard()
        prediscover.discard()


def entry() -> None:
    """The nattrav-fast command: main(), then out without the interpreter's teardown (exit_now)."""
    exit_now(main())


if __name__ == "__main__":
    entry()
