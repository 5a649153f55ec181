"""nattrav-stun: `serve` the integrated STUN server, `probe` a NAT's behaviour against it."""

from __future__ import annotations

import argparse
import json
import logging
import signal
import socket
import sys

import trio

from .io.stun_server import (
    DEFAULT_ALT_PORT,
    DEFAULT_CONTROL_PORT,
    DEFAULT_PORT,
    StunServerConfig,
    serve_stun,
)
from .proto.nat_behavior import NatBehavior


def parse_endpoint(text: str, default_port: int = DEFAULT_PORT) -> tuple[str, int]:
    """"198.51.100.1", "198.51.100.1:3478", "[2001:db8::1]:3478" or "2001:db8::1"."""
    if text.startswith("["):
        host, _, rest = text[1:].partition("]")
        port = int(rest[1:]) if rest.startswith(":") else default_port
    elif text.count(":") == 1:
        host, port_s = text.split(":")
        port = int(port_s)
    else:
        host, port = text, default_port
    if not 0 < port <= 65535:
        raise argparse.ArgumentTypeError(f"port out of range in {text!r}")
    return host, port


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


async def _serve(config: StunServerConfig, stats_interval: float) -> None:
    async with trio.open_nursery() as nursery:
        srv = await nursery.start(serve_stun, config)
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
                return


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="nattrav-stun", description=__doc__)
    sub = ap.add_subparsers(dest="cmd", required=True)

    sv = sub.add_parser("serve", help="run the STUN server (RFC 5780 or two-host layout)")
    sv.add_argument("--ip", required=True, help="this host's primary IP")
    sv.add_argument("--alt-ip", help="the alternate IP (local, or the peer's with --peer)")
    sv.add_argument("--port", type=int, default=DEFAULT_PORT)
    sv.add_argument("--alt-port", type=int, default=DEFAULT_ALT_PORT, help="0: one port only")
    sv.add_argument("--peer", action="store_true",
                    help="two-host layout: --alt-ip belongs to a peer running `serve --peer` too")
    sv.add_argument("--control-port", type=int, default=DEFAULT_CONTROL_PORT)
    sv.add_argument("--secret", help="hex key authenticating the control link (both hosts)")
    sv.add_argument("--software", default="nattrav", help="SOFTWARE attribute ('' for none)")
    sv.add_argument("--no-fast-path", action="store_true", help="answer everything in Python")
    sv.add_argument("--stats-interval", type=float, default=0.0, help="print counters every N s")

    pr = sub.add_parser("probe", help="discover the NAT's behaviour against a server")
    pr.add_argument("server", help="SERVER[:PORT]")
    pr.add_argument("--json", action="store_true", help="print the report as JSON")
    pr.add_argument("--local-ip", help="bind the probing sockets to this address")
    pr.add_argument("--fresh", type=int, default=3, help="fresh sockets for the allocation test")
    pr.add_argument("--no-hairpin", action="store_true")
    pr.add_argument("--lifetime", action="store_true", help="measure mapping lifetime (slow)")
    pr.add_argument("--lifetime-max", type=float, default=120.0)
    pr.add_argument("--rto", type=float, default=0.2)
    pr.add_argument("-v", "--verbose", action="store_true")

    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if getattr(args, "verbose", False) else logging.WARNING)
    if args.cmd == "serve":
        config = StunServerConfig(
            ip=args.ip,
            alt_ip=args.alt_ip,
            port=args.port,
            alt_port=args.alt_port,
            peer=args.peer,
            control_port=args.control_port,
            secret=bytes.fromhex(args.secret) if args.secret else None,
            software=args.software or None,
            fast_path=not args.no_fast_path,
        )
        try:
            trio.run(_serve, config, args.stats_interval)
        except OSError as exc:
            print(f"nattrav-stun: cannot serve: {exc}", file=sys.stderr)
            return 1
        return 0

    from .io.stun_client import discover

    server = parse_endpoint(args.server)
    try:
        # replies are checked against the address we sent to: resolve a host name to it first
        server = (socket.getaddrinfo(server[0], server[1], type=socket.SOCK_DGRAM)[0][4][0], server[1])
    except socket.gaierror as exc:
        print(f"nattrav-stun: cannot resolve {server[0]}: {exc}", file=sys.stderr)
        return 1
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
    return 0 if report.public_ip is not None else 2


if __name__ == "__main__":
    sys.exit(main())
