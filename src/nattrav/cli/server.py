"""nattrav-server: the whole server side of a deployment in one command.

Runs the rendezvous server (TCP, msgpack frames) and, with --stun, the integrated two-address STUN
server in the same Trio nursery. Prints one "listening" line per service on stdout (so scripts can
read a port picked with :0), logs to stderr.

Exit codes: 0 stopped by SIGINT/SIGTERM, 1 runtime failure (port in use, address not local, ...),
2 bad command line.
"""

from __future__ import annotations

import argparse
import ipaddress
import json
import logging
import math
import signal
import sys
import time

import trio

from ..errors import UsageError
from ..hostport import parse_hostport
from ..io.gc_policy import keep_collections_short
from ..io.logsink import LogSink
from ..io.rendezvous_server import serve_rendezvous
from ..proto.rendezvous import RendezvousServer
from .exits import EXIT_FAILURE, EXIT_OK, EXIT_USAGE
from .version import add_version_flag

DEFAULT_LISTEN = "0.0.0.0:7000"
log = logging.getLogger("nattrav.rendezvous")

EPILOG = """\
examples:
  nattrav-server                                  rendezvous on 0.0.0.0:7000
  nattrav-server --listen 198.51.100.1:7000 --stun 198.51.100.1,198.51.100.2
                                                  rendezvous plus RFC 5780 STUN on both IPs
                                                  (ports 3478 and 3479 on each)
  nattrav-server --listen 127.0.0.1:0             pick a free port; the first stdout line names it

The rendezvous server only exchanges node information (public endpoints, NAT behaviour, local
addresses) and session keys between peers; it never relays payload.
exit codes: 0 stopped by a signal, 1 could not serve (port in use, address not on this host), 2 bad flags
"""


def parse_stun(text: str) -> list[str]:
    ips = [p.strip() for p in text.split(",") if p.strip()]
    if not 1 <= len(ips) <= 2:
        raise UsageError(f"--stun wants PRIMARY_IP[,ALT_IP], got {text!r}")
    for ip in ips:
        try:
            ipaddress.IPv4Address(ip)
        except ValueError:
            raise UsageError(f"--stun: {ip!r} is not an IPv4 address") from None
    if len(ips) == 2 and ips[0] == ips[1]:
        raise UsageError("--stun: the alternate IP must differ from the primary")
    return ips


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        out = {"ts": round(record.created, 3), "level": record.levelname.lower(), "logger": record.name,
               "msg": record.getMessage()}
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        elif record.exc_text:  # formatted already where it was logged (io.logsink)
            out["exc"] = record.exc_text
        return json.dumps(out)


def _count(text: str) -> int:
    # argparse names the option in its message; the one line says what is wanted
    if not text.strip().isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError("must be an integer >= 1")
    return int(text)


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # one line, not the whole usage block
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message} (see --help)\n")


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(
        prog="nattrav-server",
        description="Rendezvous server for nattrav peers (enroll, node info, connect/accept, session keys "
                    "and a common start time), optionally with the integrated two-address STUN server.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--listen", default=DEFAULT_LISTEN, metavar="HOST:PORT",
                   help=f"rendezvous TCP address (default {DEFAULT_LISTEN}; port 0 picks a free one)")
    p.add_argument("--stun", metavar="PRIMARY_IP,ALT_IP",
                   help="also run the STUN server on these two local IPs (RFC 5780 layout: CHANGE-REQUEST "
                        "answered from the other IP/port); one IP alone answers change-IP with 420")
    p.add_argument("--stun-ports", default="3478,3479", metavar="PORT,ALT_PORT",
                   help="STUN ports on each IP (default 3478,3479)")
    p.add_argument("--stun-rate-limit", type=int, default=128 * 1024, metavar="BYTES",
                   help="STUN: bytes/s per source IP (IPv6: /64), both directions, also the burst; "
                        "replies never exceed 3x a source's request bytes (default 131072; 0: no limit)")
    p.add_argument("--keepalive-timeout", type=float, default=45.0, metavar="S",
                   help="a peer silent this long is offline (default 45)")
    p.add_argument("--retain", type=float, default=300.0, metavar="S",
                   help="an offline peer (and its name) is forgotten after this long (default 300)")
    p.add_argument("--offer-timeout", type=float, default=10.0, metavar="S",
                   help="default time a target has to accept a connect (default 10)")
    p.add_argument("--start-margin", type=float, default=0.5, metavar="S",
                   help="both peers start punching this long after the accept (default 0.5)")
    p.add_argument("--max-connections", type=_count, default=10_000, metavar="N",
                   help="rendezvous connections at once (default 10000); lowered, with a warning, to what "
                        "the file-descriptor limit allows once its soft value is raised to the hard one")
    p.add_argument("--max-per-source", type=_count, default=128, metavar="N",
                   help="connections from one IPv4 address or IPv6 /64 (default 128); more get a busy "
                        "error. Peers behind one carrier-grade NAT share an address: raise it for them")
    p.add_argument("--stats-interval", type=float, default=60.0, metavar="S",
                   help="log peer/session counters this often at -v (default 60; 0 = never)")
    p.add_argument("--json-log", action="store_true", help="log one JSON object a line on stderr")
    p.add_argument("-v", "--verbose", action="count", default=0, help="more logging (-v info, -vv debug)")
    add_version_flag(p)
    return p


def _setup_logging(json_log: bool, verbose: int) -> LogSink:
    # a writer thread: a stalled or full log destination costs log lines, never the event loop
    sink = LogSink(sys.stderr, JsonFormatter() if json_log else logging.Formatter(
        "%(asctime)s %(levelname)s %(name)s: %(message)s")).start()
    root = logging.getLogger("nattrav")
    root.handlers[:] = [sink]
    root.setLevel([logging.WARNING, logging.INFO, logging.DEBUG][min(verbose, 2)])
    root.propagate = False
    return sink


def _first_oserror(exc: BaseException) -> OSError | None:
    if isinstance(exc, OSError):
        return exc
    if isinstance(exc, BaseExceptionGroup):
        for sub in exc.exceptions:
            found = _first_oserror(sub)
            if found is not None:
                return found
    return None


def _announce(what: str, json_log: bool, **fields) -> None:
    if json_log:
        line = json.dumps({"event": "listening", "service": what, **fields})
    else:
        line = f"{what} listening " + " ".join(f"{k}={v}" for k, v in fields.items())
    try:
        print(line, flush=True)
    except OSError as exc:  # stdout on a full disk or a closed pipe: the service still runs
        log.warning("could not print %r: %s", line, exc.strerror or exc)


async def run(args: argparse.Namespace, listen: tuple[str, int], stun_ips: list[str] | None,
              stun_ports: tuple[int, int]) -> int:
    """Serve until a signal (returns 0) or a startup failure (prints one line, returns 1)."""
    failed: list[int] = []
    state = RendezvousServer(keepalive_timeout=args.keepalive_timeout, keepalive=args.keepalive_timeout / 3,
                             retain=args.retain, offer_timeout=args.offer_timeout,
                             start_margin=args.start_margin, max_conns_per_source=args.max_per_source)
    async with trio.open_nursery() as nursery:
        # Signals end the server cleanly (exit 0), the lab and service managers send SIGTERM.
        async def on_signal():
            with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
                async for _ in signals:
                    nursery.cancel_scope.cancel()
                    return

        nursery.start_soon(on_signal)

        async def report_stats():
            # A long-lived server should say how it is doing without being asked.
            while True:
                await trio.sleep(args.stats_interval)
                log.info("stats: %d peers online, %d known, %d pending offers, %s",
                         len(state.online()), len(state.peers), len(state.offers),
                         ", ".join(f"{k}={v}" for k, v in state.stats.items()))

        if args.stats_interval > 0:
            nursery.start_soon(report_stats)
        nursery.start_soon(keep_collections_short)
        what = f"rendezvous {listen[0]}:{listen[1]}"
        try:
            # the STUN server's TCP slots and sockets share the descriptor limit
            reserve = 64 + (600 if stun_ips is not None else 0)
            bound = await nursery.start(lambda task_status: serve_rendezvous(
                listen[0], listen[1], state=state, max_connections=args.max_connections, fd_reserve=reserve,
                task_status=task_status))
        except BaseException as exc:
            err = _first_oserror(exc)
            if err is None:
                raise
            failed.append(_fail(f"cannot listen on {what}: {err.strerror or err}"))
            nursery.cancel_scope.cancel()
            return EXIT_FAILURE
        _announce("rendezvous", args.json_log, address=f"{bound[0]}:{bound[1]}")
        if stun_ips is not None:
            try:
                from ..io.stun_server import serve_stun
                from ..proto.stun_server import StunServerConfig
            except ImportError as exc:  # the STUN server is a separate module; say so if it is missing
                failed.append(_fail(f"--stun: the integrated STUN server is not available: {exc}"))
                nursery.cancel_scope.cancel()
                return EXIT_FAILURE
            config = StunServerConfig(ip=stun_ips[0], alt_ip=stun_ips[1] if len(stun_ips) > 1 else None,
                                      port=stun_ports[0], alt_port=stun_ports[1],
                                      rate_limit=args.stun_rate_limit, rate_burst=args.stun_rate_limit)
            try:
                srv = await nursery.start(serve_stun, config)
            except BaseException as exc:
                err = _first_oserror(exc)
                if err is None and not isinstance(exc, ValueError):
                    raise
                reason = (err.strerror or str(err)) if err is not None else str(exc)
                failed.append(_fail(f"cannot start STUN on {','.join(stun_ips)} ports "
                                    f"{stun_ports[0]},{stun_ports[1]}: {reason}"))
                nursery.cancel_scope.cancel()
                return EXIT_FAILURE
            # the same endpoints over TCP: TCP traversal measures its own mappings (io/stun_tcp.py)
            from ..io.stun_tcp import serve_stun_tcp
            try:
                await nursery.start(serve_stun_tcp, config, list(srv.addresses))
            except OSError as exc:
                failed.append(_fail(f"cannot start STUN over TCP on {','.join(stun_ips)}: {exc.strerror or exc}"))
                nursery.cancel_scope.cancel()
                return EXIT_FAILURE
            _announce("stun", args.json_log,
                      addresses=",".join(f"{ip}:{port}" for ip, port in srv.addresses))
    return failed[0] if failed else EXIT_OK


def _fail(message: str) -> int:
    try:
        print(f"nattrav-server: {message}", file=sys.stderr, flush=True)
    except OSError:
        pass  # the exit code still says it
    return EXIT_FAILURE


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        listen = parse_hostport(args.listen, default_host="0.0.0.0", port_zero=True)
        stun_ips = parse_stun(args.stun) if args.stun is not None else None
        ports = [p.strip() for p in args.stun_ports.split(",")]
        if len(ports) != 2 or not all(p.isdigit() and 0 < int(p) < 65536 for p in ports) or ports[0] == ports[1]:
            raise UsageError(f"--stun-ports wants two distinct ports 1..65535, got {args.stun_ports!r}")
        if not (args.stun_rate_limit == 0 or args.stun_rate_limit >= 1024):
            raise UsageError("--stun-rate-limit must be 0 (no limit) or at least 1024 bytes/s")
        for name in ("keepalive_timeout", "retain", "offer_timeout", "start_margin"):
            if not (math.isfinite(getattr(args, name)) and getattr(args, name) > 0):
                raise UsageError(f"--{name.replace('_', '-')} must be a finite number > 0")
        if not (math.isfinite(args.stats_interval) and args.stats_interval >= 0):
            raise UsageError("--stats-interval must be a finite number >= 0 (0 = never)")
    except UsageError as exc:
        parser.error(str(exc))  # exits 2 with the usage line
    sink = _setup_logging(args.json_log, args.verbose)
    started = time.monotonic()
    try:
        code = trio.run(run, args, listen, stun_ips, (int(ports[0]), int(ports[1])))
    except KeyboardInterrupt:
        code = EXIT_OK
    if code == 0:
        log.info("stopped after %.1f s", time.monotonic() - started)
    if sink.dropped:
        log.warning("%d log records were dropped (the log destination was full, failing or not read)",
                    sink.dropped)
    sink.stop()
    return code


if __name__ == "__main__":
    sys.exit(main())
