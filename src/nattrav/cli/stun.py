"""nattrav-stun: `serve` the integrated STUN server, `probe` a NAT's behaviour against it."""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import socket
import sys

import trio

from ..errors import UsageError
from ..hostport import parse_hostport
from ..io.stun_server import serve_stun
from ..proto.nat_behavior import FRESH_SOCKETS, NatBehavior
from ..proto.stun_control import MIN_SECRET
from ..proto.stun_server import (
    DEFAULT_ALT_PORT,
    DEFAULT_CONTROL_PORT,
    DEFAULT_MAX_AMPLIFICATION,
    DEFAULT_PORT,
    DEFAULT_RATE_LIMIT,
    StunServerConfig,
)
from . import keyfile
from .exits import EXIT_FAILURE, EXIT_OK, EXIT_USAGE
from .version import add_version_flag

SECRET_ENV = "NATTRAV_STUN_SECRET"
SECRET_ON_ARGV = keyfile.on_argv("--secret", "--secret-file", SECRET_ENV)


def parse_size(text: str) -> int:
    """Bytes: "131072", "128k", "1M" (k = 1024). For the rate-limit options."""
    t = text.strip().lower()
    mult = {"k": 1024, "m": 1024 * 1024, "g": 1024**3}.get(t[-1:], 1)
    digits = t[:-1] if mult > 1 else t
    if not digits.isdigit():
        raise argparse.ArgumentTypeError(f"not a byte count: {text!r} (e.g. 131072, 128k, 1M)")
    return int(digits) * mult


def read_secret(path: str | None, environ: dict[str, str] | None = None) -> bytes | None:
    """The control-link key: the file's bytes, else the environment variable, else None. Never argv."""
    return keyfile.read_secret(path, SECRET_ENV, flag="--secret-file", min_len=MIN_SECRET, environ=environ,
                               prog="nattrav-stun")


def format_table(b: NatBehavior) -> str:
    def fmt(v: object) -> str:
        if v is None:
            return "unknown"
        if isinstance(v, bool):
            return "yes" if v else "no"
        if isinstance(v, tuple):
            return f"{v[0]}:{v[1]}"
        return str(v)

    rows = [
        ("NAT present", fmt(b.nat)),
        ("public IP", fmt(b.public_ip)),
        ("local", fmt(b.local)),
        ("mapping", fmt(b.mapping)),
        ("filtering", fmt(b.filtering)),
        ("allocation", fmt(b.allocation)),
        ("delta", fmt(b.delta)),
        ("hairpinning", fmt(b.hairpin)),
        ("mapping lifetime", "not measured" if b.lifetime is None else f">= {b.lifetime:g} s"),
        ("RFC 3489 name", b.classic),
        ("server", fmt(b.server)),
        ("server other address", fmt(b.other_address)),
        ("ports, one socket", " ".join(str(p) for p in b.one_socket_ports) or "-"),
        ("ports, fresh sockets", " ".join(f"{lp}->{mp}" for lp, mp in b.fresh_ports) or "-"),
    ]
    if b.discarded:
        rows.append(("discarded replies", ", ".join(f"{k}={v}" for k, v in sorted(b.discarded.items()))))
    width = max(len(k) for k, _ in rows)
    lines = [f"{k:<{width}}  {v}" for k, v in rows]
    for f in b.findings:
        lines.append(f"* {f}")
    return "\n".join(lines)


async def _serve(config: StunServerConfig, stats_interval: float) -> int:
    """Serve until SIGINT/SIGTERM (0), or say in one line why it cannot start (1)."""
    async with trio.open_nursery() as nursery:
        try:
            srv = await nursery.start(serve_stun, config)
        except (OSError, ValueError) as exc:  # address not local, port in use, bad ports
            print(f"nattrav-stun: cannot serve: {exc}", file=sys.stderr)
            return EXIT_FAILURE
        addrs = ", ".join(f"{ip}:{port}" for ip, port in srv.addresses)
        print(f"nattrav-stun: serving ({config.layout}) on {addrs}", flush=True)
        with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
            if stats_interval > 0:

                async def report() -> None:
                    while True:
                        await trio.sleep(stats_interval)
                        print(json.dumps(srv.counters()), flush=True)

                nursery.start_soon(report)
            async for _ in signals:
                print(json.dumps(srv.counters()), flush=True)
                nursery.cancel_scope.cancel()
                return EXIT_OK
    return EXIT_OK


def _serve_config(args: argparse.Namespace) -> StunServerConfig:
    if args.secret is not None:
        raise UsageError(SECRET_ON_ARGV)
    secret = read_secret(args.secret_file)
    if args.peer and secret is None:
        raise UsageError(f"--peer needs the control-link key: --secret-file FILE or {SECRET_ENV} "
                         f"(at least {MIN_SECRET} bytes, the same on both hosts)")
    if args.max_amplification < 1:
        raise UsageError("--max-amplification must be >= 1")
    burst = args.rate_limit if args.rate_burst is None else args.rate_burst
    if args.rate_limit and burst < 1024:
        raise UsageError("--rate-burst must be at least 1k (one large request and its answer)")
    return StunServerConfig(
        ip=args.ip,
        alt_ip=args.alt_ip,
        port=args.port,
        alt_port=args.alt_port,
        peer=args.peer,
        control_port=args.control_port,
        secret=secret,
        software=args.software or None,
        fast_path=not args.no_fast_path,
        rate_limit=args.rate_limit,
        rate_burst=burst,
        max_amplification=args.max_amplification,
    )


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="nattrav-stun", description=__doc__)
    add_version_flag(ap)
    sub = ap.add_subparsers(dest="cmd", required=True)

    sv = sub.add_parser("serve", help="run the STUN server (RFC 5780 or two-host layout)")
    sv.add_argument("--ip", required=True, help="this host's primary IP")
    sv.add_argument("--alt-ip", help="the alternate IP (local, or the peer's with --peer)")
    sv.add_argument("--port", type=int, default=DEFAULT_PORT)
    sv.add_argument("--alt-port", type=int, default=DEFAULT_ALT_PORT, help="0: one port only")
    sv.add_argument("--peer", action="store_true",
                    help="two-host layout: --alt-ip belongs to a peer running `serve --peer` too")
    sv.add_argument("--control-port", type=int, default=DEFAULT_CONTROL_PORT)
    sv.add_argument("--secret-file", metavar="FILE",
                    help=f"key authenticating the control link, the same on both hosts (required with "
                         f"--peer; >= {MIN_SECRET} bytes, e.g. `openssl rand -hex 32`); or set {SECRET_ENV}")
    sv.add_argument("--secret", help=argparse.SUPPRESS)  # refused with a clear message, see SECRET_ON_ARGV
    sv.add_argument("--rate-limit", type=parse_size, default=DEFAULT_RATE_LIMIT, metavar="BYTES",
                    help="per source IP (IPv6: per /64): bytes per second in both directions, headers "
                         f"included (default {DEFAULT_RATE_LIMIT // 1024}k, ~900 Binding exchanges/s; 0: no limit)")
    sv.add_argument("--rate-burst", type=parse_size, default=None, metavar="BYTES",
                    help="bytes a source may use at once (default: the --rate-limit value)")
    sv.add_argument("--max-amplification", type=float, default=DEFAULT_MAX_AMPLIFICATION, metavar="X",
                    help="reply bytes a source receives never exceed X times the request bytes it sent "
                         f"(default {DEFAULT_MAX_AMPLIFICATION:g}; >= 1)")
    sv.add_argument("--software", default="nattrav", help="SOFTWARE attribute ('' for none)")
    sv.add_argument("--no-fast-path", action="store_true", help="answer everything in Python")
    sv.add_argument("--stats-interval", type=float, default=0.0, help="print counters every N s")

    pr = sub.add_parser("probe", help="discover the NAT's behaviour against a server")
    pr.add_argument("server", help="SERVER[:PORT]")
    pr.add_argument("--json", action="store_true", help="print the report as JSON")
    pr.add_argument("--local-ip", help="bind the probing sockets to this address")
    pr.add_argument("--fresh", type=int, default=FRESH_SOCKETS,
                    help=f"fresh sockets for the allocation test (default {FRESH_SOCKETS})")
    pr.add_argument("--no-hairpin", action="store_true")
    pr.add_argument("--lifetime", action="store_true", help="measure mapping lifetime (slow)")
    pr.add_argument("--lifetime-max", type=float, default=120.0)
    pr.add_argument("--rto", type=float, default=None,
                    help="fixed retransmission timeout in seconds (default: 0.2 s for the first test, then "
                         "from the RTT it measured; a test that may get no answer waits a few RTTs)")
    pr.add_argument("-v", "--verbose", action="store_true")

    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if getattr(args, "verbose", False) else logging.WARNING)
    if args.cmd == "serve":
        try:
            config = _serve_config(args)
        except UsageError as exc:
            print(f"nattrav-stun: error: {exc}", file=sys.stderr)
            return EXIT_USAGE
        return trio.run(_serve, config, args.stats_interval)

    from ..io.stun_discover import discover

    try:
        server = parse_hostport(args.server, DEFAULT_PORT)
    except UsageError as exc:
        print(f"nattrav-stun: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    try:
        # replies are checked against the address we sent to: resolve a host name to it first
        server = (socket.getaddrinfo(server[0], server[1], type=socket.SOCK_DGRAM)[0][4][0], server[1])
    except socket.gaierror as exc:
        print(f"nattrav-stun: cannot resolve {server[0]}: {exc}", file=sys.stderr)
        return EXIT_FAILURE
    report = trio.run(
        lambda: discover(
            server,
            args.local_ip,
            fresh_sockets=args.fresh,
            hairpin=not args.no_hairpin,
            lifetime=args.lifetime,
            lifetime_max=args.lifetime_max,
            rto=args.rto,
        )
    )
    if args.json:
        print(json.dumps(report.to_dict(), indent=2))
    else:
        print(format_table(report))
    # no STUN answer at all: 2, as before the exit-code table (scripts test for it)
    return EXIT_OK if report.public_ip is not None else 2


if __name__ == "__main__":
    sys.exit(main())
