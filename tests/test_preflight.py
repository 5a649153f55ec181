"""The rendezvous connect begun before nattrav-fast's imports (cli/launch.py, io/preconnect.py): the
command-line pre-parse acts only on what it understands completely, the rendezvous client adopts
the early socket over real sockets and enrolls on it, anything that does not match is closed and
the ordinary connect runs, and --help / bad arguments behave exactly as without the pre-start."""

from __future__ import annotations

import socket
import subprocess
import sys

import pytest
import trio

from nattrav.cli import launch
from nattrav.cli.fast import build_parser
from nattrav.errors import ServerUnreachable
from nattrav.identity import Identity
from nattrav.io import preconnect
from nattrav.io import rendezvous_client as rv
from nattrav.io.rendezvous_server import serve_rendezvous
from nattrav.proto.rendezvous import RendezvousServer
from tests.test_fast_cli import fresh_identity_env


@pytest.fixture(autouse=True)
def no_leftover():
    preconnect.discard()
    yield
    preconnect.discard()


# -- the pre-parse --

@pytest.mark.parametrize("argv, want", [
    (["-s", "198.51.100.1"], ("198.51.100.1", 7000)),
    (["-s", "198.51.100.1:7100", "-d", "bob", "--plain", "--json"], ("198.51.100.1", 7100)),
    (["--server=198.51.100.1:80", "-n", "me", "-v"], ("198.51.100.1", 80)),
    (["--json", "--plain", "--linger", "0.3", "--timeout", "5", "--identity", "/tmp/k.pem", "-s", "10.0.0.1",
      "-d", "peer"], ("10.0.0.1", 7000)),
    (["-s", "[2001:db8::1]:7000", "-i", "10.0.0.2", "-p", "4000", "-t", "3"], ("2001:db8::1", 7000)),
    (["-s", "2001:db8::1"], ("2001:db8::1", 7000)),
    (["-s", "198.51.100.1:"], ("198.51.100.1", 7000)),  # parse_hostport's default port, as main() reads it
])
def test_a_plain_command_line_names_its_server(argv, want):
    assert launch.early_server(argv) == want


@pytest.mark.parametrize("argv", [
    [],                                              # no server: argparse's error
    ["-d", "bob"],
    ["-s", "rv.example"],                            # a name: looking it up is the connect's job
    ["-s", "198.51.100.1,198.51.100.2"],             # a tier list
    ["--serv", "198.51.100.1"],                      # argparse would take the prefix; we do not guess
    ["--server", "198.51.100.1", "--tim", "3"],
    ["-s198.51.100.1"],                              # attached short value
    ["-vs", "198.51.100.1"],                         # a cluster
    ["-s", "198.51.100.1", "-s", "198.51.100.2"],    # repeated: argparse keeps the last
    ["-s", "198.51.100.1", "--server", "198.51.100.2"],
    ["-s", "198.51.100.1", "--help"],
    ["-s", "198.51.100.1", "-h"],
    ["-s", "198.51.100.1", "--version"],
    ["-s", "198.51.100.1", "--", "-d"],
    ["-s", "198.51.100.1", "stray"],                 # a positional: argparse refuses it
    ["-s", "198.51.100.1", "--bogus"],
    ["-s", "198.51.100.1", "-d"],                    # a value missing
    ["-s", "-d", "bob"],                             # a value that is an option
    ["-s", "198.51.100.1", "--timeout", "-1"],
    ["-s", "198.51.100.1", "--timeout", "soon"],     # argparse's type error comes first
    ["-s", "198.51.100.1", "-p", "4k"],
    ["-s", "198.51.100.1:99999"],
    ["-s", ""],
    ["--server=", "-d", "bob"],
    ["-s", "198.51.100.01"],                         # not an address literal
    ["-s", "198.51.100.1", "--plain", "--server-cert", "rv.pem"],
    ["--plain=yes", "-s", "198.51.100.1"],
])
def test_anything_doubtful_does_nothing_early(argv):
    assert launch.early_server(argv) is None


def test_the_pre_parse_knows_exactly_the_parsers_options():
    """The two tables hold every option nattrav-fast's parser has, each as taking a value or not,
    with the same long/short pairs: an option added to one and not the other fails here."""
    valued, flags, pairs = set(), set(), {}
    for action in build_parser()._actions:
        names = set(action.option_strings)
        if names & {"-h", "--version"}:
            continue
        (flags if action.nargs == 0 else valued).update(names)
        shorts = [n for n in action.option_strings if not n.startswith("--")]
        for n in action.option_strings:
            if n.startswith("--") and shorts:
                pairs[n] = shorts[0]
    assert launch._VALUED == valued and launch._FLAGS == flags and launch._SAME == pairs
    assert set(launch._NUMBERS) <= {launch._SAME.get(n, n) for n in valued}
    assert launch.RENDEZVOUS_PORT == rv.DEFAULT_PORT


def test_preflight_starts_the_connect_only_for_a_clear_command_line():
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        port = listener.getsockname()[1]
        assert not launch.preflight(["-s", f"127.0.0.1:{port}", "--bogus"])
        assert preconnect.pending() is None
        assert launch.preflight(["-s", f"127.0.0.1:{port}", "--plain"])
        assert preconnect.pending() == ("127.0.0.1", port)
        listener.settimeout(5)
        conn, _ = listener.accept()  # the SYN went to that server, and only there
        conn.close()


# -- adoption over real sockets --

async def _serve(nursery) -> tuple[RendezvousServer, tuple[str, int]]:
    state = RendezvousServer(keepalive=1.0)
    addr = await nursery.start(lambda task_status: serve_rendezvous("127.0.0.1", 0, state=state,
                                                                    task_status=task_status))
    return state, addr


async def test_the_rendezvous_client_enrolls_on_the_early_socket(nursery):
    state, (host, port) = await _serve(nursery)
    assert preconnect.begin(host, port)
    early = preconnect._slot.held
    local = early.sock.getsockname()
    me = Identity.generate()
    async with rv.open_rendezvous((host, port), identity=me) as client:
        assert client.peer_id == me.peer_id.text and client.connected
        assert client._link.stream.socket.getsockname() == local  # the very connection begun early
        assert 0 < client._setup_rtt < 1.0  # the kernel's handshake round trip, on loopback
        assert state.peers[me.peer_id.text].conn is not None
    assert preconnect.pending() is None


async def test_tls_runs_over_the_adopted_connection(nursery, tmp_path):
    from nattrav.io.rendezvous_tls import client_context, server_context
    from tests.secure_lab import self_signed

    cert, key = self_signed(tmp_path, "rv")
    state = RendezvousServer(keepalive=1.0)
    host, port = await nursery.start(lambda task_status: serve_rendezvous(
        "127.0.0.1", 0, state=state, ssl_context=server_context(cert, key), task_status=task_status))
    assert preconnect.begin(host, port)
    local = preconnect._slot.held.sock.getsockname()
    me = Identity.generate()
    async with rv.open_rendezvous((host, port), identity=me, tls=client_context(cert)) as client:
        assert client._link.stream.transport_stream.socket.getsockname() == local
        assert state.stats["timed_enrolls"] == 1  # the proof named the address the adopted connection reached


async def test_an_early_connect_to_another_server_is_closed_and_the_ordinary_one_runs(nursery):
    state, (host, port) = await _serve(nursery)
    other = trio.socket.socket()
    await other.bind(("127.0.0.1", 0))
    other.listen()
    assert preconnect.begin("127.0.0.1", other.getsockname()[1])
    early = preconnect._slot.held
    me = Identity.generate()
    async with rv.open_rendezvous((host, port), identity=me) as client:
        assert client.connected and state.peers[me.peer_id.text].conn is not None
        assert client._link.stream.socket.getsockname() != early.target
    assert early.sock.fileno() == -1  # closed, never used for anything
    conn, _ = await other.accept()
    with trio.fail_after(5):
        assert await conn.recv(10) == b""  # the other end saw only a connect and a close
    conn.close()
    other.close()


async def test_a_local_address_is_a_mismatch_too(nursery):
    state, (host, port) = await _serve(nursery)
    assert preconnect.begin(host, port)
    early = preconnect._slot.held
    me = Identity.generate()
    async with rv.open_rendezvous((host, port), identity=me, local_address="127.0.0.1") as client:
        assert client.connected
    assert early.sock.fileno() == -1


async def test_a_failed_early_connect_reports_what_the_ordinary_one_would():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed at once: nobody listens there
    errors = []
    for early in (False, True):
        if early:
            assert preconnect.begin("127.0.0.1", port)
        with pytest.raises(ServerUnreachable) as got:
            async with rv.open_rendezvous(("127.0.0.1", port), identity=Identity.generate()):
                pass
        errors.append(str(got.value))
        assert preconnect.pending() is None
    assert errors[0] == errors[1] and "cannot reach" in errors[0]


# -- the command line, with and without the pre-start --

WITHOUT = [sys.executable, "-c", "from nattrav.cli.fast import entry; entry()"]  # no pre-start
WITH = [sys.executable, "-m", "nattrav.cli.fast"]


@pytest.mark.parametrize("args", [
    ["--help"],
    ["-s", "127.0.0.1", "--help"],
    ["--version"],
    [],
    ["-s", "127.0.0.1:99999"],
    ["-s", "127.0.0.1", "--timeout", "0"],
    ["-s", "127.0.0.1", "--timeout", "soon"],
    ["-s", "127.0.0.1", "-t", "0"],
    ["-s", "127.0.0.1", "--flow-wait", "31"],
    ["-s", "127.0.0.1", "--flow-wait", "-1"],
    ["-s", "127.0.0.1", "--plain", "--server-cert", "x.pem"],
    ["-s", "127.0.0.1", "-d", "12D3KooWnotakey"],
    ["--serv", "127.0.0.1:1", "--plain", "--timeout", "2"],  # an abbreviation argparse takes
])
def test_help_and_bad_arguments_are_as_without_the_pre_start(args):
    env = fresh_identity_env()
    runs = [subprocess.run([*cmd, *args], capture_output=True, timeout=30, env=env) for cmd in (WITHOUT, WITH)]
    assert runs[0].returncode == runs[1].returncode
    assert runs[0].stdout == runs[1].stdout
    assert runs[0].stderr == runs[1].stderr
    assert b"Traceback" not in runs[1].stderr


def test_the_kernel_tells_the_handshakes_round_trip():
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        with socket.create_connection(listener.getsockname(), timeout=5) as conn:
            rtt = preconnect.handshake_rtt(conn)
    if not hasattr(socket, "TCP_INFO"):
        assert rtt is None
        return
    assert rtt is not None and 0 < rtt < 0.5  # loopback: microseconds, never a made-up number
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
        assert preconnect.handshake_rtt(udp) is None  # no TCP, nothing to say


# -- the cold connect's first discovery requests (io/prediscover.py) --

@pytest.mark.parametrize("argv, want", [
    (["-s", "198.51.100.1", "-d", "bob"], (None, ("198.51.100.1", 3478))),
    (["-s", "198.51.100.1", "--no-cache", "--tcp", "-p", "4000"], (None, ("198.51.100.1", 3478))),
    (["-s", "2001:db8::1", "-H", "203.0.113.5:3000", "-i", "10.0.0.2"], ("10.0.0.2", ("203.0.113.5", 3000))),
])
def test_where_discovery_will_run(argv, want):
    assert launch.early_stun(argv) == want


@pytest.mark.parametrize("argv", [
    ["-s", "2001:db8::1"],                       # discovery against an IPv6 server: not early
    ["-s", "198.51.100.1", "-H", "stun.example"],
    ["-s", "198.51.100.1", "-i", "2001:db8::1"],
    ["-s", "198.51.100.1", "--bogus"],
])
def test_no_early_discovery_where_the_line_is_doubtful(argv):
    assert launch.early_stun(argv) is None


def test_a_cold_command_line_sends_discoverys_first_requests(monkeypatch, tmp_path):
    from nattrav.io import prediscover, presample

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))  # no cache file: a cold connect
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as stun, socket.socket() as listener:
        stun.bind(("127.0.0.1", 0))
        stun.settimeout(2)
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        argv = ["-s", f"127.0.0.1:{listener.getsockname()[1]}", "-H", f"127.0.0.1:{stun.getsockname()[1]}"]
        try:
            assert launch.preflight(argv)
            early = prediscover.pending()
            assert early is not None and presample.pending() is None
            assert early.server == stun.getsockname() and early.src_ip is None
            got = {parse_id(stun.recvfrom(2048)[0]) for _ in range(3)}
            assert got == {r.transaction_id for r in early.requests}
        finally:
            prediscover.discard()
            preconnect.discard()
    assert launch.preflight(["-s", "127.0.0.1", "--bogus"]) is False and prediscover.pending() is None


def parse_id(data: bytes) -> bytes:
    from nattrav.proto.stun import parse

    return parse(data).transaction_id
