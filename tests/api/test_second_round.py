"""A punch that failed at high odds gets a second round inside the same connect (api/session.py
again_after): the initiator samples again on a fresh socket and asks the server for a new session,
the listener waits for that offer instead of giving up. On loopback through a real nattrav-server;
the failure is made by the test (io/punch.punch raises for the first session of each side), the
rest is the product's own path."""

from __future__ import annotations

from collections import Counter
from types import SimpleNamespace

import pytest
import trio

from nattrav.api import connect, listen, session as api_session, udp
from nattrav.errors import PunchFailed
from nattrav.proto import moved
from nattrav.proto.vocab import Strategy, TcpStrategy


def _failing_first(monkeypatch, rounds: int = 1) -> Counter:
    """io/punch.punch fails the first `rounds` sessions of each role, as a lost window would."""
    real, calls = udp.punch, Counter()

    async def punch(sock, p, session, **kw):
        calls[session.role] += 1
        if calls[session.role] <= rounds:
            raise PunchFailed(f"round {calls[session.role]} lost by the test", p)
        return await real(sock, p, session, **kw)

    monkeypatch.setattr(udp, "punch", punch)
    return calls


async def _pair(servers, *, timeout: float = 20.0, accept_raises: bool = False):
    """listen + connect; (initiator's events, listener's events, what the connect raised)."""
    ev_a: list[tuple[str, dict]] = []
    ev_b: list[tuple[str, dict]] = []
    raised: dict[str, BaseException] = {}
    with trio.fail_after(60):
        async with listen(servers["server"], stun=servers["stun"], cache=False, secure=False,
                          on_event=lambda ph, d: ev_b.append((ph, d))) as lst:
            async with trio.open_nursery() as nursery:

                async def listener_side():
                    try:
                        async with lst.accept() as path:
                            assert await path.receive() == b"hi"
                    except PunchFailed as exc:
                        raised["listener"] = exc

                nursery.start_soon(listener_side)
                try:
                    async with connect(servers["server"], lst.peer_id, stun=servers["stun"], cache=False,
                                       secure=False, timeout=timeout,
                                       on_event=lambda ph, d: ev_a.append((ph, d))) as path:
                        await path.send(b"hi")
                except PunchFailed as exc:
                    raised["initiator"] = exc
    return ev_a, ev_b, raised


def _names(events):
    return [ph for ph, _ in events]


async def test_a_failed_punch_connects_in_a_second_round(servers, monkeypatch):
    calls = _failing_first(monkeypatch)
    ev_a, ev_b, raised = await _pair(servers)
    assert not raised
    assert sum(calls.values()) == 4  # each side punched twice
    # the initiator said why it went again, sampled on a fresh socket and asked again
    again = [d for ph, d in ev_a if ph == "again"]
    assert len(again) == 1 and again[0]["odds"] >= api_session.AGAIN_ODDS
    asks = [d for ph, d in ev_a if ph == "rendezvous-connect"]
    assert [bool(d.get("again")) for d in asks] == [False, True]
    mappings = [d["public"] for ph, d in ev_a if ph == "mapping"]
    assert len(mappings) >= 2 and mappings[-1] != mappings[0]  # another socket, another mapping
    # on loopback nothing moved: the fresh samples say so, on both sides
    assert [d for ph, d in ev_a if ph == "again-found"] == [{"found": moved.AGREE}]
    assert [d for ph, d in ev_b if ph == "again-found"] == [{"found": moved.AGREE}]
    # the listener waited for that second offer rather than raising
    assert _names(ev_b).count("again") == 1 and _names(ev_b).count("offer") == 2
    assert "connected" in _names(ev_a) and "connected" in _names(ev_b)


async def test_two_failed_rounds_say_both(servers, monkeypatch):
    _failing_first(monkeypatch, rounds=2)
    _, ev_b, raised = await _pair(servers)
    for side in ("initiator", "listener"):
        msg = str(raised[side])
        assert "round 1 lost by the test" in msg and "round 2 lost by the test" in msg, msg
        assert msg.index("round 1") < msg.index("second round") < msg.index("round 2")
        assert moved.AGREE in msg  # what the fresh samples said of the first round
    assert _names(ev_b).count("again") == 1  # one second round, never a third


async def test_no_second_round_without_the_time_for_it(servers, monkeypatch):
    """A connect whose timeout leaves less than AGAIN_LEFT after its first punch fails with it;
    the listener then gives up once AGAIN_WAIT has passed without a second offer."""
    monkeypatch.setattr(api_session, "AGAIN_LEFT", 1000.0)
    monkeypatch.setattr(api_session, "AGAIN_WAIT", 0.5)
    calls = _failing_first(monkeypatch)
    ev_a, ev_b, raised = await _pair(servers)
    assert "again" not in _names(ev_a)
    assert str(raised["initiator"]) == "round 1 lost by the test"
    assert str(raised["listener"]) == "round 1 lost by the test"  # its wait ended with no offer
    assert sum(calls.values()) == 2


def _failure(**plan) -> PunchFailed:
    return PunchFailed("x", SimpleNamespace(**{"feasible": True, "odds": 0.9999, **plan}))


@pytest.mark.parametrize("exc, left, port, want", [
    (_failure(), 10.0, 0, True),
    (_failure(), None, 0, True),  # a listener: it only waits
    (_failure(odds=0.76), 10.0, 0, False),  # failed as it said it might; its flows are spent
    (_failure(odds=0.76, strategy=Strategy.BIRTHDAY), 10.0, 0, False),  # thousands of flows
    (_failure(odds=0.76, strategy=Strategy.PREDICTED), 10.0, 0, True),  # a window: tens of flows
    (_failure(odds=0.76, strategy=Strategy.PREDICTED), None, 0, True),  # its listener waits alike
    (_failure(odds=0.3, strategy=Strategy.PREDICTED), 10.0, 0, False),  # a spent budget, mostly
    (_failure(odds=0.76, strategy=TcpStrategy.SIMULTANEOUS), 10.0, 0, False),  # TCP: high odds only
    (_failure(feasible=False), 10.0, 0, False),
    (_failure(), 1.0, 0, False),  # no time for another punch
    (_failure(), 10.0, 40000, False),  # a fixed port would sample its old mappings again
    (PunchFailed("x"), 10.0, 0, False),  # no plan known (TCP's failures)
])
def test_when_a_second_round_is_worth_it(exc, left, port, want):
    assert api_session.again_after(exc, left, port) is want


def test_the_cli_says_why_it_goes_again():
    from nattrav.cli.events import describe

    line = describe("again", {"left": 11.2, "odds": 0.9999, "strategy": "predicted"})
    assert "predicted at 99.99% odds found no path" in line and "11.2 s left" in line
    line = describe("again", {"wait": 10.0, "odds": 1.0, "strategy": "direct"})
    assert "waiting 10 s for the peer's second round" in line
    line = describe("again-found", {"found": moved.AGREE})
    assert line.endswith(moved.AGREE)


def test_a_cached_behaviour_is_measured_again():
    ep = SimpleNamespace(cached=SimpleNamespace(age=3.0), behavior=object())
    assert api_session._trusted_behavior(ep) is None
    fresh = SimpleNamespace(cached=None, behavior=object())
    assert api_session._trusted_behavior(fresh) is fresh.behavior


def test_the_lab_agent_times_a_second_round_from_the_first_start_and_states_the_first_odds():
    """A trial that went a second round counts its time from the first round's agreed start and is
    judged by the odds its first plan stated (lab/agent.py, the matrix's rows)."""
    from nattrav.lab.agent import marking, note_plan

    async def main():
        marks, on_event = marking()
        on_event("plan", {"odds": 0.9999, "strategy": "predicted"})
        on_event("punch", {"start_in": 0.0, "timeout": 3.0})
        first = marks["start"]
        await trio.sleep(0.05)
        on_event("again", {"left": 11.0, "odds": 0.9999, "strategy": "predicted"})
        on_event("plan", {"odds": 0.95, "strategy": "predicted"})
        on_event("punch", {"start_in": 0.0, "timeout": 3.0})
        return marks, first

    marks, first = trio.run(main)
    assert marks["start"] == first
    row: dict = {}
    note_plan(row, marks)
    assert row["odds"] == 0.9999 and row["again"] == 1


async def test_a_tcp_connect_goes_a_second_round_too(servers, monkeypatch):
    """TCP: once the whole ladder failed, the same second round (the ladder's own time left)."""
    from nattrav.api import connect_tcp, listen_tcp, tcp as api_tcp
    from nattrav.errors import TcpPunchFailed

    real, calls = api_tcp.tcp_punch, Counter()

    async def tcp_punch(listener, p, *a, **kw):
        calls[p.role] += 1
        if calls[p.role] == 1:
            listener.close()
            raise TcpPunchFailed(f"{p.role}: lost by the test")
        return await real(listener, p, *a, **kw)

    monkeypatch.setattr(api_tcp, "tcp_punch", tcp_punch)
    ev_a: list[tuple[str, dict]] = []
    ev_b: list[tuple[str, dict]] = []
    with trio.fail_after(60):
        async with listen_tcp(servers["server"], stun=servers["stun"], cache=False, secure=False,
                              punch_timeout=3.0, on_event=lambda ph, d: ev_b.append((ph, d))) as lst:
            async with trio.open_nursery() as nursery:

                async def listener_side():
                    async with lst.accept() as stream:
                        assert await stream.receive_some(2) == b"hi"

                nursery.start_soon(listener_side)
                async with connect_tcp(servers["server"], lst.peer_id, stun=servers["stun"], cache=False,
                                       secure=False, timeout=20.0, punch_timeout=3.0,
                                       on_event=lambda ph, d: ev_a.append((ph, d))) as stream:
                    await stream.send_all(b"hi")
    assert _names(ev_a).count("again") == 1 and _names(ev_b).count("again") == 1
    assert sum(calls.values()) == 4
    # no reading of what moved for TCP (its reports are not the UDP samples proto/moved.py reads)
    assert "again-found" not in _names(ev_a)


@pytest.mark.parametrize("left, needs, want", [(12.0, 10.0, True), (10.5, 10.0, False), (4.0, 3.0, True),
                                                (3.9, 0.0, False)])
def test_the_time_a_second_round_needs_is_the_punchs_own(left, needs, want):
    assert api_session.again_after(_failure(), left, 0, needs) is want


async def test_a_second_round_out_of_time_answers_with_the_first_rounds_evidence(servers, monkeypatch):
    """The second round's sampling hangs past the connect's deadline: the connect raises the first
    round's failure (not a bare timeout), the listener its own after AGAIN_WAIT."""
    monkeypatch.setattr(api_session, "AGAIN_WAIT", 1.0)
    _failing_first(monkeypatch)
    real_open, opened = udp.UdpTransport.open, []

    async def open_(self, *a, **kw):
        opened.append(a)
        if len(opened) > 2:  # the listener's and the initiator's first endpoints open as always
            await trio.sleep(100)
        return await real_open(self, *a, **kw)

    monkeypatch.setattr(udp.UdpTransport, "open", open_)
    t0 = trio.current_time()
    ev_a, _, raised = await _pair(servers, timeout=6.0)
    assert "again" in _names(ev_a)
    assert str(raised["initiator"]).startswith("round 1 lost by the test; then a second round")
    assert "ran out of time" in str(raised["initiator"])
    assert trio.current_time() - t0 < 15
    assert str(raised["listener"]) == "round 1 lost by the test"


async def test_a_listeners_second_round_waits_for_no_flows(servers, monkeypatch):
    """The listener's second endpoint opens and accepts at once: a wait for its first round's burst
    there ran inside the initiator's connect timeout (behind a CGN over wan50 it waited its whole
    10 s cap, and the initiator's 15 s ran out)."""
    _failing_first(monkeypatch)
    caps: list[float] = []

    async def wait_for_flows(ledger, emit, *a, cap, **kw):
        caps.append(cap)
        emit("test-flow-wait", {"cap": cap})
        return 0.0

    monkeypatch.setattr(udp, "wait_for_flows", wait_for_flows)
    _, ev_b, raised = await _pair(servers)
    assert not raised
    names = _names(ev_b)
    assert "test-flow-wait" in names[:names.index("again")]  # the first round's endpoint may wait
    assert "test-flow-wait" not in names[names.index("again"):]  # the second round's does not
    assert caps and all(c > 0 for c in caps)
