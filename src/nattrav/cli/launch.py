"""How nattrav-fast starts: its console script enters here, before the command's modules are imported.

Start-up imports ~400 modules (Trio, the API, the crypto stack): millions of allocations that make the
cyclic garbage collector run over and over through objects that will live as long as the process, to
find almost nothing. With the collector off for the imports and the survivors frozen (moved out of
its reach) after them, a warm connect costs ~8 % less CPU (issue 13, bench/warm_cpu.py). The collector
is back on before the command does anything else, so a long-running listener collects as usual.

Before those imports, `preflight()` reads just the rendezvous server from the command line and starts
the TCP connect to it (io/preconnect.py): the handshake's round trip runs while Trio and the crypto
stack load, and the rendezvous client adopts the connected socket. Beside it go a warm connect's
first samples (io/presample.py) or a cold one's first discovery requests (io/prediscover.py). It
acts only on a command line it understands completely; anything else (a name to look up, an option
it does not know, --help, a repeated or abbreviated option) does nothing early, and argparse in
cli/fast.py stays the one judge of arguments, their errors and their exit codes.

The imports themselves compile the methods dataclasses and attrs generate; startup_begin() installs
codecache.py first, so those come from the last run's bytecode instead (~35 ms of CPU, issue 13).
"""

from __future__ import annotations

import gc

_paused = False  # did startup_begin() turn the collector off (and so may startup_done() turn it on)?


def startup_begin() -> None:
    """The collector off for the imports that follow (if it was on), and the generated methods'
    bytecode from the last run (codecache.py)."""
    global _paused
    if gc.isenabled():
        gc.disable()
        _paused = True
    try:
        from .. import codecache

        codecache.install()
    except Exception:  # a cache that fails costs nothing but itself
        pass


def startup_done() -> None:
    """Imports are done: what they made is frozen out of the collector's way, the collector is back
    on. Does nothing unless startup_begin() paused it (an embedding program's choice is its own)."""
    global _paused
    if _paused:
        _paused = False
        gc.freeze()
        gc.enable()


RENDEZVOUS_PORT = 7000  # io/rendezvous_client.DEFAULT_PORT (a test holds them equal): that module is heavy
STUN_PORT = 3478  # api/endpoint.STUN_PORT, likewise

# nattrav-fast's options as cli/fast.py's parser has them (a test holds the two equal): which take a
# value, which are flags; the server is the one option read here
_VALUED = frozenset({"-s", "--server", "-d", "--dest", "-H", "--stun", "-i", "--src-ip", "-p", "--src-port",
                     "-t", "--ttl", "--max-flows", "-n", "--name", "--identity", "--server-cert", "--timeout",
                     "--linger", "--idle-timeout", "--flow-wait"})
_FLAGS = frozenset({"--plain", "--raw", "--no-cache", "--json", "--tcp", "-v", "--verbose"})
_NUMBERS = {"-p": int, "-t": int, "--max-flows": int, "--timeout": float, "--linger": float, "--idle-timeout": float,
            "--flow-wait": float}
_SAME = {"--server": "-s", "--dest": "-d", "--stun": "-H", "--src-ip": "-i", "--src-port": "-p", "--ttl": "-t",
         "--name": "-n", "--verbose": "-v"}


def _read_argv(argv: list[str]) -> dict[str, str | None] | None:
    """The options of `argv` by short name (or long where there is none) with their values (None
    for a flag), when nothing in it is doubtful, else None. Doubtful is anything argparse might
    read otherwise or reject: an option not spelled out in full (argparse takes prefixes: --serv),
    a short option with its value attached (-sX) or in a cluster (-vs), a value that starts with
    "-", a repeated option, "--", a positional, help or version, a number argparse will refuse."""
    seen: dict[str, str | None] = {}
    i = 0
    while i < len(argv):
        arg, value = argv[i], None
        if arg.startswith("--") and "=" in arg:
            arg, value = arg.split("=", 1)
            if arg not in _VALUED:
                return None
        if arg in _VALUED:
            if value is None:
                if i + 1 >= len(argv):
                    return None
                i += 1
                value = argv[i]
            if not value or value.startswith("-"):
                return None
        elif arg not in _FLAGS:
            return None
        key = _SAME.get(arg, arg)
        if key in seen:
            return None
        if key in _NUMBERS:
            try:  # a value argparse will refuse: its error, and nothing sent before it
                _NUMBERS[key](value)
            except ValueError:
                return None
        seen[key] = value
        i += 1
    return seen


def _literal(text: str | None, default_port: int) -> tuple[str, int] | None:
    """(address literal, port) from HOST[:PORT] as parse_hostport reads it; None for a name (looking
    it up is the connect's job), a list, or anything parse_hostport refuses."""
    if not text or "," in text:
        return None
    from ..hostport import parse_hostport  # light: the standard library's ipaddress and re

    try:
        host, port = parse_hostport(text, default_port)
    except ValueError:
        return None
    import ipaddress

    try:
        ipaddress.ip_address(host)
    except ValueError:
        return None
    return host, port


def early_server(argv: list[str]) -> tuple[str, int] | None:
    """The rendezvous server's (address literal, port) when `argv` is a nattrav-fast command line
    with nothing doubtful in it (_read_argv), a single server given as an address literal, and no
    --plain beside --server-cert; else None. The host is returned as written: the rendezvous client
    adopts the connect only when it dials exactly that (io/preconnect.py)."""
    seen = _read_argv(argv)
    if seen is None or ("--plain" in seen and "--server-cert" in seen):
        return None
    return _literal(seen.get("-s"), RENDEZVOUS_PORT)


def early_stun(argv: list[str]) -> tuple[str | None, tuple[str, int]] | None:
    """(local IP or None, STUN server) where discovery will run, when early_server() reads the
    command line and both are IPv4 literals (-H, else the rendezvous host's STUN port; -i). None
    otherwise."""
    server = early_server(argv)
    seen = _read_argv(argv)
    if server is None or seen is None:
        return None
    stun = _literal(seen["-H"], STUN_PORT) if "-H" in seen else (server[0], STUN_PORT)
    src_ip = seen.get("-i")
    if stun is None or ":" in stun[0] or (src_ip is not None and not _ipv4(src_ip)):
        return None
    return src_ip, stun


def early_punch(argv: list[str]) -> tuple[str | None, tuple[str, int], tuple[str, int]] | None:
    """(local IP or None, STUN server, rendezvous server) where a UDP connect's punch socket will
    sample, when early_stun() reads the command line and nothing rules the warm path's sampling
    out: a TCP connect (--tcp), no cache (--no-cache), a fixed local port (-p), a rendezvous server
    that is not an IPv4 literal (the punch socket is IPv4). None otherwise."""
    found, server, seen = early_stun(argv), early_server(argv), _read_argv(argv)
    if found is None or server is None or seen is None or "--tcp" in seen or "--no-cache" in seen:
        return None
    if int(seen.get("-p") or 0) != 0 or ":" in server[0]:
        return None
    return found[0], found[1], server


def _ipv4(text: str) -> bool:
    import ipaddress

    try:
        ipaddress.IPv4Address(text)
    except ValueError:
        return False
    return True


def preflight(argv: list[str]) -> bool:
    """Before the imports: start the TCP connect to the rendezvous server named in `argv` (see
    early_server, io/preconnect.py) and, when the behaviour cache says where a warm connect will
    sample, send its first STUN requests (early_punch, io/presample.py); else the cold connect's
    first discovery requests (early_stun, io/prediscover.py). True when the connect is in flight.
    Never raises: any trouble leaves the ordinary path alone."""
    try:
        target = early_server(argv)
        if target is None:
            return False
        from ..io import preconnect

        started = preconnect.begin(*target)
    except Exception:  # a pre-start that fails must cost nothing but itself
        return False
    try:
        punch = early_punch(argv)
        if punch is not None:
            src_ip, stun, observe = punch
            from ..cache_doc import default_path, read_doc
            from ..io import presample

            local = src_ip or presample.local_ip(stun)
            other = presample.cached_second_address(read_doc(default_path()), local, stun) if local else None
            if other is not None:
                presample.begin(src_ip, stun, observe, other)
                return started
        # no warm sampling: the connect discovers (a cache entry without its hop trace may still
        # spare it that; then discover() never takes the early requests and they are closed)
        cold = early_stun(argv)
        if cold is not None:
            from ..io import prediscover

            prediscover.begin(*cold)
    except Exception:
        pass
    return started


def fast() -> None:
    """The nattrav-fast console script."""
    startup_begin()
    import sys

    preflight(sys.argv[1:])
    from .fast import entry

    entry()


__all__ = ["early_punch", "early_server", "early_stun", "fast", "preflight", "startup_begin", "startup_done"]
