"""nattrav-server: the whole server side of a deployment in one command.

Runs the rendezvous server (TCP, msgpack frames) and, with --stun, the integrated STUN server in the
same Trio nursery: on one IP (its two ports tell port-dependent NAT behaviour apart: the common cloud
VM), on two local IPs (RFC 5780), or on one IP of two hosts (--stun-peer). --external-ip serves from
behind a provider's 1:1 NAT; --turn hands each session's peers short-lived credentials for a coturn
relay (the TURN REST scheme; the secret comes from a file or the environment, never argv). Prints one
"listening" line per service on stdout (so scripts can read a port picked with :0), logs to stderr.

With --registry redis://HOST:PORT/DB (or NATTRAV_REGISTRY) several instances share one registry in
Redis (io/redis_registry.py, docs/scale-out.md): a peer enrolled at one is reachable from the others.
With --processes N (or NATTRAV_PROCESSES) one instance runs N worker processes on its ports
(cli/workers.py): more peers than one process's descriptor limit, and more cores.

Exit codes: 0 stopped by SIGINT/SIGTERM, 1 runtime failure (port in use, address not local, ...),
2 bad command line.
"""

from __future__ import annotations

import argparse
import ipaddress
import json
import logging
import math
import os
import signal
import ssl
import sys
import time

import trio

from ..errors import RegistryUnavailable, UsageError
from ..hostport import parse_hostport
from ..io.gc_policy import keep_collections_short
from ..io.logsink import LogSink
from ..io.name_store import load_bindings
from ..io.rendezvous_tls import server_context
from ..io.rendezvous_server import serve_rendezvous
from ..proto.rendezvous import RendezvousServer
from ..proto.rendezvous.held import RESAMPLE_AFTER
from ..proto.rendezvous.names import NameBindings
from ..proto.rendezvous.wire import MAX_STUN
from ..proto.stun_control import MIN_SECRET
from ..proto.stun_server import DEFAULT_CONTROL_PORT, StunServerConfig
from ..proto.turn_rest import DEFAULT_TTL, MAX_TTL, MIN_TTL, TurnRest
from . import keyfile
from .exits import EXIT_FAILURE, EXIT_OK, EXIT_USAGE
from .version import add_version_flag
from .workers import (MAX_PROCESSES, Worker, announce_ready, check_processes, fixed_port, processes_from,
                      supervise, worker_from_parent)

DEFAULT_LISTEN = "0.0.0.0:7000"
log = logging.getLogger("nattrav.rendezvous")

EPILOG = """\
examples:
  nattrav-server                                  rendezvous on 0.0.0.0:7000
  nattrav-server --stun 198.51.100.1              plus STUN on one IP, ports 3478 and 3479 (a cloud VM)
  nattrav-server --stun 10.0.0.5 --external-ip 203.0.113.7
                                                  the same behind a provider's 1:1 NAT (AWS, GCP, Azure)
  nattrav-server --stun 198.51.100.1,198.51.100.2 RFC 5780 STUN on two local IPs
  nattrav-server --stun 198.51.100.1 --stun-peer 198.51.100.3 --stun-secret-file /etc/nattrav/stun.key
                                                  two VMs, one IP each (run the mirror image on the other)
  nattrav-server --stun 198.51.100.1 --turn 198.51.100.1:3490 --turn-secret-file /etc/nattrav/turn.key
                                                  peers that cannot punch relay through coturn
  nattrav-server --listen 127.0.0.1:0             pick a free port; the first stdout line names it
  nattrav-server --registry redis://10.0.0.5:6379/0 --stun-servers stun1.example:3478,stun2.example:3478
                                                  one of several instances sharing a Redis registry;
                                                  enrolled peers are told these STUN servers

  nattrav-server --registry redis://10.0.0.5:6379/0 --processes 4
                                                  one instance, four worker processes on its ports
                                                  (each holds its own peers: descriptors and a core)

environment:
  NATTRAV_REGISTRY   the registry URL when --registry is not given (empty or "memory": in-process)
  NATTRAV_PROCESSES  worker processes when --processes is not given (default 1)

ports to open (firewall / security group):
  7000/tcp        rendezvous (--listen)
  7000/udp        the same port number on UDP: where peers' punch sockets are observed (a NAT with
                  an address pool may send them from another address than the TCP connection)
  --beacon-port/udp  accepting listeners' sample beacons (one way, never answered; default: a port the
                  system picks, so pin it with --beacon-port where a firewall must name it; closed,
                  listeners sample through STUN before they accept: one round trip slower)
  3478,3479/udp   STUN (--stun-ports), and the same /tcp: the TCP mode measures its mappings there
  3480/udp        two-host control link (--stun-control-port), between the two hosts only
  TURN            coturn's own: its listening port (udp+tcp) and its relay range (udp; tcp too for
                  TCP relays), see docs/deploy.md

The rendezvous server only exchanges node information (public endpoints, NAT behaviour, local
addresses), session keys and relay credentials between peers; it never carries payload itself.
Secrets (--stun-secret-file, --turn-secret-file, or NATTRAV_STUN_SECRET, NATTRAV_TURN_SECRET) never
come from the command line: every local user can read a process's argv.
exit codes: 0 stopped by a signal, 1 could not serve (port in use, address not on this host), 2 bad flags
"""
STUN_SECRET_ENV = "NATTRAV_STUN_SECRET"
TURN_SECRET_ENV = "NATTRAV_TURN_SECRET"
TURN_PORT = 3478


def parse_stun_servers(text: str) -> list[tuple[str, int]]:
    """HOST:PORT[,HOST:PORT...]: the STUN servers enrolled peers are told (any host, any number)."""
    out = []
    for part in (p.strip() for p in text.split(",")):
        if not part:
            continue
        try:
            host, port = parse_hostport(part, 3478)
        except UsageError as exc:
            raise UsageError(f"--stun-servers: {exc}") from None
        out.append((host, port))
    if not 1 <= len(out) <= MAX_STUN:
        raise UsageError(f"--stun-servers wants 1 to {MAX_STUN} HOST:PORT entries, got {len(out)}")
    return out


def registry_url(given: str | None) -> str | None:
    """The registry URL from --registry, else NATTRAV_REGISTRY; None for the in-process registry."""
    url = given if given is not None else os.environ.get("NATTRAV_REGISTRY", "")
    url = url.strip()
    if url in ("", "memory"):
        return None
    from ..io.redis_registry import check_url  # imports no Redis client: a bad URL is told without one
    return check_url(url)


def parse_stun(text: str) -> list[str]:
    ips = [p.strip() for p in text.split(",") if p.strip()]
    if not 1 <= len(ips) <= 2:
        raise UsageError(f"--stun wants PRIMARY_IP[,ALT_IP], got {text!r}")
    for ip in ips:
        _ipv4(ip, "--stun")
    if len(ips) == 2 and ips[0] == ips[1]:
        raise UsageError("--stun: the alternate IP must differ from the primary")
    return ips


def _ipv4(text: str, flag: str) -> str:
    try:
        return str(ipaddress.IPv4Address(text.strip()))
    except ValueError:
        raise UsageError(f"{flag}: {text!r} is not an IPv4 address") from None


def parse_external(values: list[str], local_ips: list[str]) -> dict[str, str]:
    """--external-ip PUBLIC[/LOCAL] (coturn's form), as {local: public}. A bare PUBLIC names the one
    local IP there is; with two, each needs its LOCAL."""
    out: dict[str, str] = {}
    for v in values:
        public, _, local = v.partition("/")
        public = _ipv4(public, "--external-ip")
        if local:
            local = _ipv4(local, "--external-ip")
        elif len(local_ips) == 1:
            local = local_ips[0]
        else:
            raise UsageError(f"--external-ip {v}: with two --stun IPs say which one it is for: PUBLIC/LOCAL")
        if local not in local_ips:
            raise UsageError(f"--external-ip {v}: {local} is not one of the --stun IPs ({', '.join(local_ips)})")
        if local in out:
            raise UsageError(f"--external-ip: {local} is named twice")
        out[local] = public
    return out


def stun_config(args: argparse.Namespace, ports: tuple[int, int],
                environ: dict[str, str] | None = None) -> StunServerConfig | None:
    """The STUN server's layout from the flags (None without --stun); UsageError for a bad one."""
    if args.stun is None:
        for flag in ("stun_peer", "stun_peer_link", "stun_secret_file", "external_ip"):
            if getattr(args, flag):
                raise UsageError(f"--{flag.replace('_', '-')} needs --stun")
        return None
    local = parse_stun(args.stun)
    public = parse_external(args.external_ip or [], local)
    ips = [public.get(ip, ip) for ip in local]
    bind = {public[ip]: ip for ip in public}
    peer, link, secret = None, None, None
    if args.stun_peer is not None:
        if len(local) != 1:
            raise UsageError("--stun-peer: this host serves one IP of the pair (--stun IP), the peer the other")
        peer = _ipv4(args.stun_peer, "--stun-peer")
        if peer == ips[0]:
            raise UsageError("--stun-peer: the peer's IP must differ from ours")
        link = _ipv4(args.stun_peer_link, "--stun-peer-link") if args.stun_peer_link else None
        secret = keyfile.read_secret(args.stun_secret_file, STUN_SECRET_ENV, flag="--stun-secret-file",
                                     min_len=MIN_SECRET, environ=environ, prog="nattrav-server")
        if secret is None:
            raise UsageError(f"--stun-peer needs the control-link key, the same on both hosts: "
                             f"--stun-secret-file FILE or {STUN_SECRET_ENV} (at least {MIN_SECRET} bytes)")
    elif args.stun_peer_link or args.stun_secret_file:
        raise UsageError("--stun-peer-link and --stun-secret-file go with --stun-peer")
    return StunServerConfig(ip=ips[0], alt_ip=peer if peer else (ips[1] if len(ips) > 1 else None),
                            port=ports[0], alt_port=ports[1], peer=peer is not None,
                            control_port=args.stun_control_port, secret=secret, peer_link=link, bind=bind,
                            rate_limit=args.stun_rate_limit, rate_burst=args.stun_rate_limit)


def turn_config(args: argparse.Namespace, environ: dict[str, str] | None = None) -> TurnRest | None:
    """The relay grants from --turn (None without it); UsageError for a bad one."""
    if args.turn is None:
        if args.turn_secret_file:
            raise UsageError("--turn-secret-file goes with --turn")
        return None
    host, port = parse_hostport(args.turn, TURN_PORT)
    secret = keyfile.read_secret(args.turn_secret_file, TURN_SECRET_ENV, flag="--turn-secret-file",
                                 min_len=16, environ=environ, prog="nattrav-server")
    if secret is None:
        raise UsageError(f"--turn needs coturn's static-auth-secret: --turn-secret-file FILE or "
                         f"{TURN_SECRET_ENV} (the same string as coturn's, at least 16 bytes)")
    if not (math.isfinite(args.turn_ttl) and MIN_TTL <= args.turn_ttl <= MAX_TTL):
        raise UsageError(f"--turn-ttl must be {MIN_TTL:g}..{MAX_TTL:g} seconds")
    return TurnRest(host, port, secret, args.turn_ttl)


class JsonFormatter(logging.Formatter):
    def __init__(self, worker: int | None = None):
        super().__init__()
        self.worker = worker

    def format(self, record: logging.LogRecord) -> str:
        out = {"ts": round(record.created, 3), "level": record.levelname.lower(), "logger": record.name,
               "msg": record.getMessage()}
        if self.worker is not None:
            out["worker"] = self.worker
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
    p.add_argument("--stun", metavar="IP[,ALT_IP]",
                   help="also run the STUN server on this local IP (its two ports tell port-dependent NAT "
                        "behaviour apart; clients learn the second from OTHER-PORT) or on two local IPs "
                        "(RFC 5780: CHANGE-REQUEST answered from the other IP and port)")
    p.add_argument("--stun-ports", default="3478,3479", metavar="PORT,ALT_PORT",
                   help="STUN ports on each IP (default 3478,3479)")
    p.add_argument("--stun-peer", metavar="PEER_IP",
                   help="two-host layout: a second host serves the alternate IP with its own "
                        "`nattrav-server --stun PEER_IP --stun-peer OUR_IP` (each host needs one IP only)")
    p.add_argument("--stun-peer-link", metavar="IP",
                   help="where the control link reaches the peer when not at PEER_IP (its private "
                        "address inside the provider's network)")
    p.add_argument("--stun-secret-file", metavar="FILE",
                   help=f"control-link key for --stun-peer, the same on both hosts (>= {MIN_SECRET} bytes, "
                        f"e.g. `openssl rand -hex 32`); or set {STUN_SECRET_ENV}")
    p.add_argument("--stun-control-port", type=int, default=DEFAULT_CONTROL_PORT, metavar="PORT",
                   help=f"two-host control link, UDP (default {DEFAULT_CONTROL_PORT})")
    p.add_argument("--external-ip", action="append", metavar="PUBLIC[/LOCAL]",
                   help="this host is behind a 1:1 NAT (a cloud VM): clients reach LOCAL (a --stun IP) "
                        "at PUBLIC; STUN's RESPONSE-ORIGIN and OTHER-ADDRESS name PUBLIC. Repeat for a "
                        "second IP; LOCAL may be left out with one --stun IP")
    p.add_argument("--turn", metavar="HOST[:PORT]",
                   help=f"a coturn relay (default port {TURN_PORT}) run with --use-auth-secret: each "
                        "session's peers get their own short-lived credentials for it (TURN REST)")
    p.add_argument("--turn-secret-file", metavar="FILE",
                   help=f"coturn's static-auth-secret (the file's text, whitespace stripped); or set "
                        f"{TURN_SECRET_ENV}")
    # refused with a clear message (a secret on argv is readable by every local user)
    p.add_argument("--stun-secret", help=argparse.SUPPRESS)
    p.add_argument("--turn-secret", help=argparse.SUPPRESS)
    p.add_argument("--turn-ttl", type=float, default=DEFAULT_TTL, metavar="S",
                   help=f"how long relay credentials stay valid (default {DEFAULT_TTL:g}; a relayed "
                        "session lasts at most this long)")
    p.add_argument("--stun-rate-limit", type=int, default=128 * 1024, metavar="BYTES",
                   help="STUN: bytes/s per source IP (IPv6: /64), both directions, also the burst; "
                        "replies never exceed 3x a source's request bytes (default 131072; 0: no limit)")
    p.add_argument("--stun-servers", metavar="HOST:PORT,...",
                   help="STUN servers named to peers in the enroll reply, rotated per peer (default: the "
                        "ones --stun runs, if any); STUN then scales apart from the rendezvous instances")
    p.add_argument("--registry", metavar="URL",
                   help="shared registry of peers and offers: redis://HOST:PORT/DB, rediss://... or "
                        "unix:///path/redis.sock (default: $NATTRAV_REGISTRY, else this process's memory)")
    p.add_argument("--processes", metavar="N",
                   help=f"worker processes serving this instance's ports (1..{MAX_PROCESSES}, default "
                        "$NATTRAV_PROCESSES, else 1): each holds its own peers, up to the per-process "
                        "descriptor limit, on its own core; needs --registry (each worker is a member of "
                        "the shared registry). --max-connections and --max-per-source count per process")
    p.add_argument("--instance", metavar="NAME",
                   help="this instance's name in the shared registry (default: random per start; two "
                        "live instances must never share one)")
    p.add_argument("--keepalive-timeout", type=float, default=45.0, metavar="S",
                   help="a peer silent this long is offline (default 45)")
    p.add_argument("--retain", type=float, default=300.0, metavar="S",
                   help="an offline peer (and its name) is forgotten after this long (default 300)")
    p.add_argument("--offer-timeout", type=float, default=10.0, metavar="S",
                   help="default time a target has to accept a connect (default 10)")
    p.add_argument("--start-margin", type=float, default=0.5, metavar="S",
                   help="both peers start punching this long after the accept when either did not tell its "
                        "round trip to the server (older clients; default 0.5); otherwise the larger round "
                        "trip, within 0.02..2 s")
    p.add_argument("--resample-after", type=float, default=RESAMPLE_AFTER, metavar="S",
                   help="a connect held longer than this at the accept (and than 5 round trips of both "
                        "peers) asks the initiator for fresh samples first: its predicted ports moved "
                        f"meanwhile (default {RESAMPLE_AFTER:g}; 0: never)")
    p.add_argument("--no-observe", action="store_true",
                   help="do not answer on UDP at the --listen port (the observation of peers' punch sockets; "
                        "without it a peer behind a NAT with an address pool may be unreachable)")
    p.add_argument("--beacon-port", type=int, default=0, metavar="PORT",
                   help="UDP port for accepting listeners' sample beacons (a symmetric-NAT listener then "
                        "accepts without a STUN round trip; default: one the system picks; one process only: "
                        "with --processes above 1 no beacons are taken)")
    p.add_argument("--no-beacons", action="store_true",
                   help="take no sample beacons: listeners sample through STUN before they accept")
    p.add_argument("--max-connections", type=_count, default=10_000, metavar="N",
                   help="rendezvous connections at once (default 10000); lowered, with a warning, to what "
                        "the file-descriptor limit allows once its soft value is raised to the hard one")
    p.add_argument("--max-per-source", type=_count, default=128, metavar="N",
                   help="connections from one IPv4 address or IPv6 /64 (default 128); more get a busy "
                        "error. Peers behind one carrier-grade NAT share an address: raise it for them")
    p.add_argument("--max-peers", type=_count, default=100_000, metavar="N",
                   help="peers the registry holds, online or offline (default 100000); when full, the "
                        "longest offline one is forgotten, and with none offline new peers get busy. With "
                        "--registry, the limit of the whole tier (give every instance the same)")
    p.add_argument("--stats-interval", type=float, default=60.0, metavar="S",
                   help="log peer/session counters this often at -v (default 60; 0 = never)")
    p.add_argument("--tls-cert", metavar="PEM", help="serve the rendezvous over TLS with this certificate (chain)")
    p.add_argument("--tls-key", metavar="PEM", help="the private key of --tls-cert")
    p.add_argument("--state-dir", metavar="DIR",
                   help="keep which identity key owns which name here (names.json), so a name stays its "
                   "first key's across restarts (default: in memory only; peer-ID names need no state)")
    p.add_argument("--json-log", action="store_true", help="log one JSON object a line on stderr")
    p.add_argument("-v", "--verbose", action="count", default=0, help="more logging (-v info, -vv debug)")
    add_version_flag(p)
    return p


def _setup_logging(json_log: bool, verbose: int, worker: int | None = None) -> LogSink:
    # a writer thread: a stalled or full log destination costs log lines, never the event loop
    tag = "" if worker is None else f"[worker {worker}]"
    sink = LogSink(sys.stderr, JsonFormatter(worker) if json_log else logging.Formatter(
        f"%(asctime)s %(levelname)s %(name)s{tag}: %(message)s")).start()
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


def _stun_for_peers(args: argparse.Namespace, config: StunServerConfig | None) -> list[tuple[str, int]] | None:
    """The STUN servers enrolled peers are told: --stun-servers, else our own (by its public address)."""
    if args.stun_servers is not None:
        return parse_stun_servers(args.stun_servers)
    if config is not None and config.ip != "0.0.0.0":
        return [(config.ip, config.port)]
    return None


async def run(args: argparse.Namespace, listen: tuple[str, int], config: StunServerConfig | None,
              turn: TurnRest | None = None, names: NameBindings | None = None,
              tls: ssl.SSLContext | None = None, worker: Worker | None = None) -> int:
    """Serve until a signal (returns 0) or a startup failure (prints one line, returns 1).
    `worker`: one of an instance's processes (cli/workers.py), with the secrets they share."""
    url = registry_url(args.registry)
    if url is None:
        return await _serve(args, listen, config, turn, None, names, tls)
    from ..io.redis_registry import open_redis_registry
    instance = worker.instance(args.instance) if worker is not None else args.instance
    try:
        async with open_redis_registry(url, instance=instance, retain=args.retain, max_peers=args.max_peers,
                                       lease=max(600.0, 4 * args.keepalive_timeout)) as registry:
            log.info("registry %s, instance %s", url, registry.instance)
            return await _serve(args, listen, config, turn, registry, names, tls, worker)
    except RegistryUnavailable as exc:
        return _fail(str(exc))


async def _serve(args: argparse.Namespace, listen: tuple[str, int], config: StunServerConfig | None,
                 turn: TurnRest | None, registry, names: NameBindings | None = None,
                 tls: ssl.SSLContext | None = None, worker: Worker | None = None) -> int:
    failed: list[int] = []
    shared = {} if registry is None else {"registry": registry, "instance": registry.instance}
    if worker is not None:
        shared["observe_key"] = worker.observe_key
    relay = (lambda peer: turn.grant(peer, time.time()).to_wire()) if turn is not None else None
    state = RendezvousServer(keepalive_timeout=args.keepalive_timeout, keepalive=args.keepalive_timeout / 3,
                             retain=args.retain, offer_timeout=args.offer_timeout,
                             start_margin=args.start_margin, max_conns_per_source=args.max_per_source,
                             resample_after=args.resample_after or None,
                             max_peers=args.max_peers, stun=_stun_for_peers(args, config), relay=relay,
                             names=names, **shared)
    async with trio.open_nursery() as nursery:
        # Signals end the server cleanly (exit 0), the lab and service managers send SIGTERM.
        async def on_signal():
            with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
                async for _ in signals:
                    nursery.cancel_scope.cancel()
                    return

        nursery.start_soon(on_signal)
        if worker is not None:
            nursery.start_soon(worker.watch_parent, nursery.cancel_scope)

        async def report_stats():
            # A long-lived server should say how it is doing without being asked.
            while True:
                await trio.sleep(args.stats_interval)
                counters = ", ".join(f"{k}={v}" for k, v in state.stats.items())
                if registry is None:
                    log.info("stats: %d peers online, %d known, %d pending offers, %s",
                             len(state.online()), len(state.peers), len(state.offers), counters)
                    continue
                try:
                    counts = await registry.counts()
                except RegistryUnavailable as exc:
                    counts = {"registry": str(exc)}
                log.info("stats: %d peers online here; registry %s; %s", len(state.online()),
                         ", ".join(f"{k}={v}" for k, v in counts.items()), counters)

        if args.stats_interval > 0:
            nursery.start_soon(report_stats)
        nursery.start_soon(keep_collections_short)
        what = f"rendezvous {listen[0]}:{listen[1]}"
        try:
            # the STUN server's TCP slots and sockets share the descriptor limit
            reserve = 64 + (600 if config is not None else 0)
            bound = await nursery.start(lambda task_status: serve_rendezvous(
                listen[0], listen[1], state=state, max_connections=args.max_connections, fd_reserve=reserve,
                ssl_context=tls, observe=not args.no_observe, reuse_port=worker is not None,
                beacons=not args.no_beacons, beacon_port=args.beacon_port, task_status=task_status))
        except BaseException as exc:
            err = _first_oserror(exc)
            if err is None:
                raise
            failed.append(_fail(f"cannot listen on {what}: {err.strerror or err}"))
            nursery.cancel_scope.cancel()
            return EXIT_FAILURE
        _announce("rendezvous", args.json_log, tls="yes" if tls else "no", address=f"{bound[0]}:{bound[1]}")
        if turn is not None:
            _announce("relay", args.json_log, turn=f"{turn.host}:{turn.port}", ttl=f"{turn.ttl:g}")
        if config is not None:
            from ..io.stun_server import serve_stun

            where = ",".join(config.bind_ip(ip) for ip in config.local_ips)
            try:
                srv = await nursery.start(serve_stun, config)
            except BaseException as exc:
                err = _first_oserror(exc)
                if err is None and not isinstance(exc, ValueError):
                    raise
                reason = (err.strerror or str(err)) if err is not None else str(exc)
                failed.append(_fail(f"cannot start STUN on {where} ports {config.port},{config.alt_port}: {reason}"))
                nursery.cancel_scope.cancel()
                return EXIT_FAILURE
            # the same endpoints over TCP: TCP traversal measures its own mappings (io/stun_tcp.py)
            from ..io.stun_tcp import serve_stun_tcp
            try:
                await nursery.start(serve_stun_tcp, config, list(srv.addresses))
            except OSError as exc:
                failed.append(_fail(f"cannot start STUN over TCP on {where}: {exc.strerror or exc}"))
                nursery.cancel_scope.cancel()
                return EXIT_FAILURE
            _announce("stun", args.json_log, addresses=",".join(f"{ip}:{port}" for ip, port in srv.addresses),
                      layout=config.layout)
        if worker is not None:
            announce_ready()
    return failed[0] if failed else EXIT_OK


def _fail(message: str) -> int:
    try:
        print(f"nattrav-server: {message}", file=sys.stderr, flush=True)
    except OSError:
        pass  # the exit code still says it
    return EXIT_FAILURE


def _supervise(argv: list[str], listen: tuple[str, int], processes: int) -> int:
    """The parent of `processes` workers (cli/workers.py), on a port fixed for all of them."""
    host, port = listen
    try:
        port = fixed_port(host, port)
    except OSError as exc:
        return _fail(f"cannot listen on rendezvous {host}:{port}: {exc.strerror or exc}")
    where = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    return trio.run(supervise, [*argv, "--listen", where], processes)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parser.parse_args(argv)
    worker = worker_from_parent()
    try:
        listen = parse_hostport(args.listen, default_host="0.0.0.0", port_zero=True)
        ports = [p.strip() for p in args.stun_ports.split(",")]
        if len(ports) != 2 or not all(p.isdigit() and 0 < int(p) < 65536 for p in ports) or ports[0] == ports[1]:
            raise UsageError(f"--stun-ports wants two distinct ports 1..65535, got {args.stun_ports!r}")
        if not 0 < args.stun_control_port < 65536:
            raise UsageError("--stun-control-port must be in 1..65535")
        if not 0 <= args.beacon_port < 65536:
            raise UsageError("--beacon-port must be in 0..65535 (0: one the system picks)")
        if not (args.stun_rate_limit == 0 or args.stun_rate_limit >= 1024):
            raise UsageError("--stun-rate-limit must be 0 (no limit) or at least 1024 bytes/s")
        for name in ("keepalive_timeout", "retain", "offer_timeout", "start_margin"):
            if not (math.isfinite(getattr(args, name)) and getattr(args, name) > 0):
                raise UsageError(f"--{name.replace('_', '-')} must be a finite number > 0")
        if not (math.isfinite(args.resample_after) and args.resample_after >= 0):
            raise UsageError("--resample-after must be a finite number >= 0 (0: never)")
        if args.stun_servers is not None:
            parse_stun_servers(args.stun_servers)
        registry_url(args.registry)
        if args.instance is not None and not (0 < len(args.instance) <= 64 and args.instance.isprintable()
                                              and " " not in args.instance):
            raise UsageError("--instance must be 1..64 printable characters without spaces")
        if not (math.isfinite(args.stats_interval) and args.stats_interval >= 0):
            raise UsageError("--stats-interval must be a finite number >= 0 (0 = never)")
        for flag, env in (("stun_secret", STUN_SECRET_ENV), ("turn_secret", TURN_SECRET_ENV)):
            if getattr(args, flag) is not None:
                name = "--" + flag.replace("_", "-")
                raise UsageError(keyfile.on_argv(name, name + "-file", env))
        config = stun_config(args, (int(ports[0]), int(ports[1])))
        turn = turn_config(args)
        if (args.tls_cert is None) != (args.tls_key is None):
            raise UsageError("--tls-cert and --tls-key go together")
        tls = server_context(args.tls_cert, args.tls_key) if args.tls_cert else None
        names = load_bindings(args.state_dir) if args.state_dir else None
        processes = 1 if worker is not None else processes_from(args.processes)
        check_processes(processes, registry=registry_url(args.registry), stun_peer=args.stun_peer,
                        instance=args.instance)
    except UsageError as exc:
        parser.error(str(exc))  # exits 2 with the usage line
    sink = _setup_logging(args.json_log, args.verbose, worker.index if worker is not None else None)
    started = time.monotonic()
    if worker is not None and config is not None:
        config.reuse_port = True
        config.cookie_key = worker.cookie_key  # a cookie one worker gave verifies at every other
    try:
        if processes > 1:
            code = _supervise(argv, listen, processes)
        else:
            code = trio.run(run, args, listen, config, turn, names, tls, worker)
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
