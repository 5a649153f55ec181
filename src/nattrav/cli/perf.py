"""nattrav-perf: measure what a path carries, iperf3's way — over a path punched through our servers,
or over a direct path (a plain socket to a fixed address: the baseline to compare against).

The side that connects sends, the side that listens receives. The sender prints the summary (its
own figures and the receiver's report); --json prints it as one JSON object on stdout.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

import trio

from .. import __version__
from ..errors import UsageError
from ..experiment import measure, traffic
from ..hostport import parse_hostport
from .events import describe
from .exits import EXIT_OK, HANDLED, exit_code

DIRECT_PORT = 5201  # iperf3's

EPILOG = """\
examples:
  nattrav-perf -s 198.51.100.1 -n rx                      listen (receive) as peer "rx"
  nattrav-perf -s 198.51.100.1 -d rx --rate 50M -T 5      punch to rx, send 50 Mbit/s of UDP for 5 s
  nattrav-perf -s 198.51.100.1 -d rx --tcp -T 5           TCP bulk over a punched TCP stream
  nattrav-perf --direct-listen 0.0.0.0:5201               the direct baseline's receiver
  nattrav-perf --direct 203.0.113.5:5201 --rate 50M       ... and its sender

One-way delay is exact when both ends share a clock (namespaces of one machine, as in the NAT lab);
between machines only its spread above the minimum means something.
exit codes: 0 done, 2 bad usage, 3 rendezvous server trouble, 4 peer trouble, 5 no path, 6 timeout.
"""


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="nattrav-perf", description=__doc__.splitlines()[0], epilog=EPILOG,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    where = p.add_argument_group("the path")
    where.add_argument("-s", "--server", metavar="SERVER[:PORT]", help="rendezvous server: a punched path")
    where.add_argument("-d", "--dest", metavar="PEER", help="peer ID or name to punch to (we send)")
    where.add_argument("-n", "--name", help="listen under this name (we receive)")
    where.add_argument("--direct", metavar="HOST[:PORT]", help="send over a direct path to HOST")
    where.add_argument("--direct-listen", metavar="IP[:PORT]",
                       help=f"receive over a direct path on IP (default port {DIRECT_PORT})")
    load = p.add_argument_group("the traffic")
    load.add_argument("--tcp", action="store_true", help="TCP bulk instead of paced UDP")
    load.add_argument("-b", "--rate", default="10M", help="UDP payload rate, bits/s (default 10M; k/M/G)")
    load.add_argument("-l", "--size", type=int, default=1200, help="UDP payload bytes per datagram (default 1200)")
    load.add_argument("-T", "--time", type=float, default=5.0, help="seconds of traffic (default 5)")
    load.add_argument("-i", "--interval", type=float, default=1.0, help="seconds per interval report (default 1)")
    load.add_argument("--sockbuf", type=int, default=4 << 20, metavar="BYTES",
                      help="UDP: kernel buffers of the measuring sockets, like iperf3 -w (default 4 MiB; 0: the "
                           "kernel's default)")
    knobs = p.add_argument_group("the punch (both peers must give the same planner values)")
    knobs.add_argument("-t", "--ttl", type=int, help="TTL of the opening packets (default: measured)")
    knobs.add_argument("--max-flows", type=int, help="new flows a burst may open on our NAT(s)")
    knobs.add_argument("--target", type=float, help="odds the planner sizes a strategy for")
    knobs.add_argument("--max-sockets", type=int, help="most sockets a burst opens")
    knobs.add_argument("--workers", type=int, help="burst worker processes (default: one per core)")
    knobs.add_argument("--timeout", type=float, default=30.0, help="seconds to connect (default 30)")
    p.add_argument("--json", action="store_true", help="the summary as one JSON object on stdout")
    p.add_argument("-v", "--verbose", action="store_true", help="progress lines on stderr")
    p.add_argument("--version", action="version", version=f"nattrav {__version__}")
    return p


def _check(args: argparse.Namespace) -> None:
    modes = [x for x in (args.direct, args.direct_listen, args.server) if x]
    if len(modes) != 1:
        raise UsageError("give exactly one of -s SERVER, --direct HOST or --direct-listen IP")
    if args.server and bool(args.dest) == bool(args.name):
        raise UsageError("with -s, give -d PEER (to send) or -n NAME (to listen and receive)")
    if not 0 < args.time <= 3600:
        raise UsageError(f"--time must be in (0, 3600] seconds, got {args.time}")
    if not 0.01 <= args.interval <= 60:
        raise UsageError(f"--interval must be 0.01..60 seconds, got {args.interval}")
    try:
        args.rate_bps = measure.parse_rate(args.rate)
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    if not 0 <= args.sockbuf <= 1 << 30:
        raise UsageError(f"--sockbuf must be 0..{1 << 30} bytes, got {args.sockbuf}")
    if not measure.MIN_SIZE <= args.size <= 1200:
        raise UsageError(f"--size must be {measure.MIN_SIZE}..1200 bytes (a punched path's DATA frame)")


def options(args: argparse.Namespace, on_event: Any) -> dict[str, Any]:
    out: dict[str, Any] = {"on_event": on_event}
    for key in ("ttl", "max_flows", "target", "max_sockets", "workers"):
        if getattr(args, key) is not None:
            out[key] = getattr(args, key)
    return out


def _line(d: dict[str, Any]) -> None:
    print(f"  [{d['start']:7.2f} s] {d['bps'] / 1e6:9.3f} Mbit/s" + (f"  {d['packets']} datagrams"
                                                                   if "packets" in d else ""), file=sys.stderr)


async def run(args: argparse.Namespace) -> dict[str, Any]:
    from .. import api

    def on_event(phase: str, d: dict[str, Any]) -> None:
        if args.verbose:
            line = describe(phase, d)
            if line:
                print(line, file=sys.stderr)

    show = None if args.json else _line
    if args.direct_listen or args.direct:
        return await _direct(args, show)
    server = parse_hostport(args.server, 7000)
    kw = options(args, on_event)
    if args.dest:
        opener = api.connect_tcp if args.tcp else api.connect
        async with opener(server, args.dest, timeout=args.timeout, **kw) as path:
            if args.tcp:
                res = await traffic.run_tcp_sender(path, duration=args.time)
            else:
                res = await traffic.run_udp_sender(traffic.PathChannel(path), rate_bps=args.rate_bps,
                                                   size=args.size, duration=args.time, sockbuf=args.sockbuf)
            res["path_stats"] = _stats(path)
            return res
    lis = api.listen_tcp if args.tcp else api.listen
    async with lis(server, name=args.name, **kw) as listener:
        if not args.json:
            print(f"listening as {listener.peer_id}", file=sys.stderr)
        async with listener.accept() as path:
            if args.tcp:
                res = {"receiver": await traffic.serve_tcp_receiver(path, interval=args.interval, on_interval=show)}
            else:
                res = {"receiver": await traffic.serve_udp_receiver(traffic.PathChannel(path),
                                                                    interval=args.interval, on_interval=show,
                                                                    sockbuf=args.sockbuf)}
            res["path_stats"] = _stats(path)
            return res


def _stats(path: Any) -> dict[str, Any]:
    if hasattr(path, "statistics"):
        return path.statistics()
    return {"strategy": path.strategy.value, "rtt_ms": round(path.rtt * 1e3, 4),
            "timings": getattr(path, "timings", {})}


async def _direct(args: argparse.Namespace, show: Any) -> dict[str, Any]:
    if args.direct_listen:
        ip, port = parse_hostport(args.direct_listen, DIRECT_PORT)
        if args.tcp:
            listeners = await trio.open_tcp_listeners(port, host=ip)
            try:
                stream = await listeners[0].accept()
            finally:
                for lst in listeners:
                    await lst.aclose()
            async with stream:
                return {"receiver": await traffic.serve_tcp_receiver(stream, interval=args.interval,
                                                                     on_interval=show)}
        sock = trio.socket.socket(trio.socket.AF_INET, trio.socket.SOCK_DGRAM)
        with sock:
            await sock.bind((ip, port))
            # the first datagram names the sender: the direct path's only peer
            _, peer = await sock.recvfrom(2048, trio.socket.MSG_PEEK)
            return {"receiver": await traffic.serve_udp_receiver(traffic.RawChannel(sock, tuple(peer[:2])),
                                                                 interval=args.interval, on_interval=show,
                                                                 sockbuf=args.sockbuf)}
    host, port = parse_hostport(args.direct, DIRECT_PORT)
    if args.tcp:
        stream = await trio.open_tcp_stream(host, port)
        async with stream:
            return await traffic.run_tcp_sender(stream, duration=args.time)
    sock = trio.socket.socket(trio.socket.AF_INET, trio.socket.SOCK_DGRAM)
    with sock:
        await sock.bind(("0.0.0.0", 0))
        return await traffic.run_udp_sender(traffic.RawChannel(sock, (host, port)), rate_bps=args.rate_bps,
                                            size=args.size, duration=args.time, sockbuf=args.sockbuf)


def human(res: dict[str, Any]) -> str:
    rx = res.get("receiver") or {}
    tx = res.get("sender") or {}
    out = []
    if tx:
        out.append(f"sent: {tx.get('send_bps', 0) / 1e6:.3f} Mbit/s for {tx.get('seconds')} s")
    if rx:
        gp = rx.get("goodput_bps")
        out.append(f"received: {rx.get('bytes')} bytes, goodput "
                   + (f"{gp / 1e6:.3f} Mbit/s" if gp else "-")
                   + (f", loss {rx['loss']:.4%} ({rx['lost']} of {rx['sent']})" if rx.get("loss") is not None else ""))
        if rx.get("owd_ms"):
            o = rx["owd_ms"]
            out.append(f"one-way delay ms: min {o['p0']} median {o['p50']} p99 {o['p99']} max {o['p100']}")
    elif tx:
        out.append("received: no report from the receiver")
    if res.get("rtt_ms"):
        r = res["rtt_ms"]
        out.append(f"RTT ms ({res['rtt_samples']} pings): min {r['p0']} median {r['p50']} p99 {r['p99']}")
    ps = res.get("path_stats")
    if ps:
        out.append(f"path: {ps.get('strategy')}, timings {ps.get('timings', {}).get('spans')}")
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        _check(args)
        res = trio.run(run, args)
    except HANDLED as exc:
        msg = "interrupted" if isinstance(exc, KeyboardInterrupt) else str(exc)
        print(f"nattrav-perf: {msg}", file=sys.stderr)
        return exit_code(exc)
    except OSError as exc:
        print(f"nattrav-perf: {exc.strerror or exc}", file=sys.stderr)
        return 1
    print(json.dumps(res) if args.json else human(res))
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
