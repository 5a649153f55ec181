"""A cold connect's first discovery requests sent before nattrav-fast's imports (io/prediscover.py):
discover() adopts them only when it would send exactly those requests to exactly that server from
such sockets (their transaction IDs, none sent again, the replies that came meanwhile read with
their real arrival times); anything else closes them and discovery runs as always. Real sockets,
through our STUN server on loopback."""

from __future__ import annotations

import socket

import pytest
import trio

from nattrav.io import prediscover
from nattrav.io import stun_discover
from nattrav.io.early_slot import Slot, drain
from nattrav.io.stun_client import run_binding
from nattrav.io.stun_discover import discover
from nattrav.io.stun_server import serve_stun
from nattrav.proto.stun import binding_request, parse
from nattrav.proto.stun_attrs import Attr
from nattrav.proto.stun_client import Transaction
from nattrav.proto.stun_server import StunServerConfig
from tests.stun.test_server import PALT, P, loopback_pair


@pytest.fixture(autouse=True)
def no_leftover():
    prediscover.discard()
    yield
    prediscover.discard()


@pytest.fixture
async def stun(nursery):
    a, b = loopback_pair()
    srv = await nursery.start(serve_stun, StunServerConfig(ip=a, alt_ip=b, port=P, alt_port=PALT))
    return srv, (a, P), (b, PALT)


def _closed(early: prediscover.EarlyDiscovery) -> bool:
    return all(s.fileno() == -1 for s in early.sockets)


def test_the_duplicate_gap_is_discovers():
    assert prediscover.DUPLICATE_GAP == stun_discover.DUPLICATE_GAP


async def test_discover_adopts_the_early_requests_and_measures_the_same(stun):
    srv, server, other = stun
    plain = await discover(server, "127.0.0.1", hairpin=False)
    asked = srv.counters()["received"]

    assert prediscover.begin("127.0.0.1", server)
    early = prediscover.pending()
    main_port = early.main.getsockname()[1]
    await trio.sleep(0.1)  # the imports: the answers wait on the early sockets
    rep = await discover(server, "127.0.0.1", hairpin=False)
    assert rep.local == ("127.0.0.1", main_port)  # test I's socket is the early main socket
    assert (rep.mapping, rep.filtering, rep.allocation, rep.other_address) == (
        plain.mapping, plain.filtering, plain.allocation, plain.other_address) == ("EIM", "EIF", "preserve", other)
    # the same number of requests as the ordinary run: the early ones were adopted, none sent
    # again (the filtering tests' answers were waiting, so no second copy went either)
    assert srv.counters()["received"] - asked == asked
    assert not rep.discarded
    assert prediscover.pending() is None and _closed(early)  # discover() owned and closed them


async def test_replies_that_came_during_the_imports_keep_their_arrival_time(stun):
    srv, server, _ = stun
    assert prediscover.begin(None, server)
    await trio.sleep(0.2)
    early = prediscover.take(None, server)
    assert early is not None
    try:
        for i, request in enumerate(early.requests):
            ((data, src, at),) = early.queued(i)
            assert parse(data).transaction_id == request.transaction_id
            # the kernel's arrival time, not when it was read 0.2 s later
            assert early.sent[i][0] <= at < early.sent[i][0] + 0.1
        assert all(len(sent) == 1 for sent in early.sent)  # answered before the copy was due
    finally:
        early.close()


async def test_test_i_counts_its_round_trip_from_the_kernel_time(stun, monkeypatch):
    """Test I's RTT sizes every later timeout: read 0.2 s late, it must still be a loopback RTT."""
    srv, server, _ = stun
    seen = []
    real = stun_discover.schedules_for
    monkeypatch.setattr(stun_discover, "schedules_for", lambda rtt: seen.append(rtt) or real(rtt))
    assert prediscover.begin(None, server)
    await trio.sleep(0.2)
    await discover(server, None, hairpin=False)
    assert len(seen) == 1 and 0 <= seen[0] < 0.1


async def test_unanswered_filtering_tests_get_their_second_copy_on_time():
    """A server that answers nothing: each filtering test's request goes twice, DUPLICATE_GAP
    apart, from the timer thread (the main thread is importing); test I's once."""
    sink = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sink.bind(("127.0.0.1", 0))
    sink.settimeout(1.0)
    try:
        assert prediscover.begin("127.0.0.1", sink.getsockname())
        early = prediscover.pending()
        got = [sink.recvfrom(2048) for _ in range(5)]
        ids = [parse(data).transaction_id for data, _ in got]
        want = [r.transaction_id for r in early.requests]
        assert ids == [want[0], want[1], want[2], want[0], want[1]]
        assert [src[1] for _, src in got] == [s.getsockname()[1] for s in early.sockets] + [
            s.getsockname()[1] for s in early.filters]
        changes = [parse(data).get(Attr.CHANGE_REQUEST) for data, _ in got[:3]]
        assert changes[2] is None and changes[0] != changes[1]
        early.stop()
        assert all(b - a >= prediscover.DUPLICATE_GAP * 0.9 for a, b in early.sent[:2])
    finally:
        sink.close()


@pytest.mark.parametrize("change", ["server", "src_ip", "rto", "none bound"])
async def test_requests_sent_otherwise_are_closed_and_discovery_runs_as_always(stun, change):
    srv, server, other = stun
    aimed = other if change == "server" else server
    assert prediscover.begin(None if change == "none bound" else "127.0.0.1", aimed)
    early = prediscover.pending()
    ports = {s.getsockname()[1] for s in early.sockets}
    kw = {"rto": 0.2} if change == "rto" else {}
    local_ip = "127.0.0.2" if change == "src_ip" else "127.0.0.1"
    rep = await discover(server, local_ip, hairpin=False, **kw)
    assert _closed(early) and prediscover.pending() is None
    assert rep.local[1] not in ports and rep.mapping == "EIM" and rep.filtering == "EIF"


def test_a_slot_keeps_one_and_closes_what_does_not_fit():
    class Thing:
        def __init__(self, n):
            self.n, self.closed = n, False

        def close(self):
            self.closed = True

    slot: Slot[Thing] = Slot()
    first, second = Thing(1), Thing(2)
    slot.put(first)
    slot.put(second)
    assert first.closed and slot.held is second
    assert slot.take(lambda t: t.n == 3) is None and second.closed and slot.held is None
    third = Thing(3)
    slot.put(third)
    assert slot.take(lambda t: t.n == 3) is third and not third.closed and slot.held is None
    slot.put(Thing(4))
    held = slot.held
    slot.discard()
    assert held.closed and slot.held is None


def test_drain_skips_icmp_errors_and_stops_when_nothing_waits():
    events = iter([b"a", ConnectionRefusedError(), b"b", BlockingIOError(), b"never"])

    def read():
        got = next(events)
        if isinstance(got, BaseException):
            raise got
        return got

    assert drain(read) == [b"a", b"b"]
    assert drain(iter([b"x"] * 5).__next__, most=3) == [b"x"] * 3


async def test_an_adopted_transaction_already_answered_is_not_sent_again(stun):
    """run_binding returns a transaction its queued reply answered, without another request."""
    _srv, server, _alt = stun
    sock = trio.socket.socket(trio.socket.AF_INET, trio.socket.SOCK_DGRAM)
    await sock.bind(("127.0.0.1", 0))
    tx = Transaction(binding_request(), server, accept_from=[server])
    await sock.sendto(tx.start(trio.current_time()), server)
    data, src = await sock.recvfrom(65536)
    tx.receive(data, src, trio.current_time())
    result = await run_binding(sock, tx)
    assert result.mapped[1] == sock.getsockname()[1] and tx.sent == 1
    sock.close()
