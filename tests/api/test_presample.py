"""A warm connect's first STUN requests sent before nattrav-fast's imports (io/presample.py): where
the cache says the warm path samples, the early socket's requests are adopted (same transaction
IDs, none sent again, the punch socket is that socket); anything that does not match closes it and
the punch socket is made as always. Real sockets, through a nattrav-server on loopback."""

from __future__ import annotations

import json
import time

import pytest

from nattrav.api import udp
from nattrav.api.behavior_cache import BehaviorCache
from nattrav.cache_doc import read_doc
from nattrav.cli import launch
from nattrav.io import presample
from nattrav.proto.stun_client import State
from tests.api.test_cache_api import _session


@pytest.fixture(autouse=True)
def no_leftover():
    presample.discard()
    yield
    presample.discard()


async def _warm_file(servers, tmp_path):
    """A cache file as a connect leaves it on a network whose trace it kept (loopback has no hops
    to trace: the entry gets the trace of a host one hop from the server)."""
    path = tmp_path / "behavior.json"
    await _session(servers, str(path))
    doc = json.loads(path.read_text())
    for entry in doc["entries"].values():
        entry["trace"] = {"answers": {}, "server_ttl": 1}
    path.write_text(json.dumps(doc))
    return path


async def test_the_warm_path_adopts_the_early_requests(servers, tmp_path, monkeypatch):
    path = await _warm_file(servers, tmp_path)
    stun, server = servers["stun"], servers["server"]
    other = presample.cached_second_address(read_doc(path), "127.0.0.1", stun)
    assert other is not None and other != stun  # the server's second address, as the entry keeps it
    assert presample.begin(None, stun, server, other)
    early = presample.pending()
    local = early.sock.getsockname()
    early_ids = [msg.transaction_id for msg, _, _ in early.sent]
    assert [dest for _, dest, _ in early.sent] == [server, stun, other]
    seen = []
    real = udp.run_transactions

    async def watch(jobs, **kw):
        seen.append([(tx.request.transaction_id, tx.state) for _, tx in jobs])
        return await real(jobs, **kw)

    monkeypatch.setattr(udp, "run_transactions", watch)
    events = []
    ep = await udp.open_endpoint(stun, cache=BehaviorCache(path), observe=server,
                                 on_event=lambda ph, d: events.append(ph))
    try:
        assert ep.sock.getsockname() == local  # the early socket is the punch socket
        assert "behavior-cached" in events and "discovery" not in events
        ((ids_states),) = seen  # one volley, made of the early requests, none sent afresh
        assert [i for i, _ in ids_states] == early_ids
        assert all(state is not State.IDLE for _, state in ids_states)
        assert ep.report.samples and ep.t0 <= udp.trio.current_time()
    finally:
        ep.sock.close()
    assert presample.pending() is None


async def test_requests_aimed_elsewhere_are_closed_and_a_fresh_socket_samples(servers, tmp_path):
    path = await _warm_file(servers, tmp_path)
    stun, server = servers["stun"], servers["server"]
    assert presample.begin(None, stun, server, ("127.0.0.9", 3478))  # not the entry's second address
    early = presample.pending()
    local = early.sock.getsockname()
    events = []
    ep = await udp.open_endpoint(stun, cache=BehaviorCache(path), observe=server,
                                 on_event=lambda ph, d: events.append(ph))
    try:
        assert early.sock.fileno() == -1 and ep.sock.getsockname() != local
        assert "behavior-cached" in events  # the warm path as always, from a fresh socket
    finally:
        ep.sock.close()


@pytest.mark.parametrize("change", ["port", "stun", "observe", "no cache", "src_ip"])
async def test_a_socket_bound_or_aimed_otherwise_is_never_used(servers, tmp_path, change):
    path = await _warm_file(servers, tmp_path)
    stun, server = servers["stun"], servers["server"]
    other = presample.cached_second_address(read_doc(path), "127.0.0.1", stun)
    assert presample.begin("127.0.0.1" if change == "src_ip" else None, stun, server, other)
    early = presample.pending()
    kw = {"cache": None if change == "no cache" else BehaviorCache(path), "observe": server}
    if change == "port":
        kw["src_port"] = 0  # set below to a free port
        import socket
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.bind(("127.0.0.1", 0))
            kw["src_port"] = s.getsockname()[1]
    if change == "observe":
        kw["observe"] = None
    ep = await udp.open_endpoint(("127.0.0.2", stun[1]) if change == "stun" else stun, **kw)
    try:
        assert early.sock.fileno() == -1
    finally:
        ep.sock.close()


def _doc(entries):
    return {"version": 1, "entries": entries}


def _entry(saved, other=("127.0.0.2", 3479), trace=True):
    e = {"saved": saved, "behavior": {"other_address": list(other) if other else None}}
    if trace:
        e["trace"] = {"answers": {}}
    return e


def test_the_hint_is_the_newest_fresh_entry_with_a_trace():
    now = time.time()
    stun = ("127.0.0.1", 3478)
    doc = _doc({
        "10.0.0.5|198.51.100.1|127.0.0.1:3478": _entry(now - 50, ("127.0.0.2", 1)),
        "10.0.0.5|198.51.100.2|127.0.0.1:3478": _entry(now - 10, ("127.0.0.2", 2)),
        "10.0.0.5|198.51.100.3|127.0.0.9:3478": _entry(now - 1, ("127.0.0.2", 3)),   # another server
        "10.0.0.6|198.51.100.3|127.0.0.1:3478": _entry(now - 1, ("127.0.0.2", 4)),   # another local IP
    })
    assert presample.cached_second_address(doc, "10.0.0.5", stun, now) == ("127.0.0.2", 2)
    assert presample.cached_second_address(doc, "10.0.0.7", stun, now) is None


@pytest.mark.parametrize("entry", [
    _entry(time.time() - 2 * 86400),            # too old
    _entry(time.time(), trace=False),           # the connect will trace first: nothing goes early
    _entry(time.time(), other=None),            # a one-address server: no second sample known
    {"saved": True, "behavior": {}, "trace": {}},
    {"saved": time.time(), "behavior": {"other_address": ["::1", 5]}, "trace": {}},
    {"saved": time.time(), "behavior": {"other_address": ["127.0.0.2", 70000]}, "trace": {}},
    {"saved": time.time(), "behavior": {"other_address": "127.0.0.2:5"}, "trace": {}},
    {"saved": time.time(), "behavior": [], "trace": {}},
    "junk",
])
def test_no_hint_from_anything_doubtful(entry):
    doc = _doc({"10.0.0.5|198.51.100.1|127.0.0.1:3478": entry})
    assert presample.cached_second_address(doc, "10.0.0.5", ("127.0.0.1", 3478)) is None
    assert presample.cached_second_address({}, "10.0.0.5", ("127.0.0.1", 3478)) is None


@pytest.mark.parametrize("argv, want", [
    (["-s", "198.51.100.1", "-d", "bob"], (None, ("198.51.100.1", 3478), ("198.51.100.1", 7000))),
    (["-s", "198.51.100.1:7100", "-H", "203.0.113.5:3000", "-i", "10.0.0.2", "-p", "0"],
     ("10.0.0.2", ("203.0.113.5", 3000), ("198.51.100.1", 7100))),
    (["-s", "198.51.100.1", "-H", "203.0.113.5"], (None, ("203.0.113.5", 3478), ("198.51.100.1", 7000))),
])
def test_where_the_punch_socket_will_sample(argv, want):
    assert launch.early_punch(argv) == want


@pytest.mark.parametrize("argv", [
    ["-s", "198.51.100.1", "--tcp"],
    ["-s", "198.51.100.1", "--no-cache"],
    ["-s", "198.51.100.1", "-p", "4000"],
    ["-s", "198.51.100.1", "-H", "stun.example"],
    ["-s", "198.51.100.1", "-i", "2001:db8::1"],
    ["-s", "2001:db8::1"],
    ["-s", "198.51.100.1", "--serv"],
    ["-s", "rv.example"],
])
def test_no_early_samples_where_the_warm_path_does_not_sample_first(argv):
    assert launch.early_punch(argv) is None


def test_the_early_requests_are_the_wire_format_of_the_sampling(tmp_path):
    """The observation request and the Bindings encode as the sampling's own (one encoder)."""
    import socket

    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as rx:
        rx.bind(("127.0.0.1", 0))
        rx.settimeout(2)
        dest = rx.getsockname()
        assert presample.begin("127.0.0.1", dest, dest, dest)
        got = [rx.recvfrom(2048)[0] for _ in range(3)]
    sent = presample.pending().sent
    assert got == [msg.encode() for msg, _, _ in sent]
    assert len(got[0]) > len(got[1]) == len(got[2]) == 20  # the padded observation, then bare Bindings
    assert sent[0][2] <= sent[1][2] < sent[2][2]
    json.dumps([d for _, d, _ in sent])
