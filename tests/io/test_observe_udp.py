"""The rendezvous port's UDP observation on loopback: a punch socket's volley gets its ticket, the
client hands it back, and the peer's session names the punch socket's address; the wildcard socket
answers from the address asked; a server without the port, or whose port is taken, breaks nothing."""

from __future__ import annotations

import logging
import socket

import trio

from nattrav.api.endpoint import peer_udp_ips
from nattrav.api.udp import _sample
from nattrav.io.observe_udp import serve_observer
from nattrav.io.rendezvous_client import open_rendezvous
from nattrav.io.rendezvous_server import serve_rendezvous
from nattrav.io.stun_client import run_transactions
from nattrav.io.stun_server import serve_stun
from nattrav.proto.rendezvous import RendezvousServer
from nattrav.proto.rendezvous.observe import check_ticket, observe_request, ticket_of
from nattrav.proto.stun_client import Transaction
from nattrav.proto.stun_server import StunServerConfig
from tests.conftest import free_port_pair

KEY = bytes(range(32))


async def _servers(nursery):
    state = RendezvousServer()
    rv = await nursery.start(lambda task_status: serve_rendezvous("127.0.0.1", 0, state=state,
                                                                  task_status=task_status))
    port, alt = free_port_pair()
    await nursery.start(serve_stun, StunServerConfig(ip="127.0.0.1", port=port, alt_port=alt))
    return rv, state, ("127.0.0.1", port)


async def _udp_socket():
    sock = trio.socket.socket(trio.socket.AF_INET, trio.socket.SOCK_DGRAM)
    await sock.bind(("127.0.0.1", 0))
    return sock


async def test_the_peer_learns_where_the_server_saw_our_punch_socket(nursery):
    rv, state, stun = await _servers(nursery)
    with await _udp_socket() as sock:
        await trio.sleep(0.05)  # the observer starts right after the listener
        got = await _sample(sock, [stun], trio.current_time(), observe=rv)
        assert got.observed is not None and got.samples
        addr, ticket = got.observed
        assert addr == sock.getsockname()[:2]
        check_ticket(state.observe_key, list(addr), ticket, trio.current_time())
        async with open_rendezvous(rv) as a, open_rendezvous(rv, name="bob") as b:
            sessions = {}

            async def listener():
                offer = await b.next_offer()
                sessions["b"] = await b.accept(offer, info={"x": 1})

            async with trio.open_nursery() as n:
                n.start_soon(listener)
                sessions["a"] = await a.connect("bob", info={"report": "r"}, observed=[got.observed], timeout=5)
        seen = sessions["b"].peer_info["observed_udp"]
        assert seen == [[addr[0], addr[1]]] and peer_udp_ips(sessions["b"]) == ["127.0.0.1"]
        assert "observed_udp" not in sessions["a"].peer_info  # bob presented nothing
        assert state.stats["observed"] == 1


async def test_a_ticket_from_another_server_is_reported_not_raised(nursery, caplog):
    caplog.set_level(logging.INFO)
    rv, state, _ = await _servers(nursery)
    from nattrav.proto.rendezvous.observe import make_ticket

    foreign = (("127.0.0.1", 4000), make_ticket(bytes(32), ("127.0.0.1", 4000), trio.current_time()))
    async with open_rendezvous(rv) as a:
        await a.update_info({"report": "r"}, observed=[foreign])  # the info still goes out
    assert state.stats["observed"] == 0
    assert "did not record" in caplog.text


async def test_a_wildcard_socket_answers_from_the_address_it_was_asked_at(nursery):
    probe = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    probe.bind(("0.0.0.0", 0))
    port = probe.getsockname()[1]
    probe.close()
    responder = await nursery.start(serve_observer, None, port, KEY)
    with await _udp_socket() as sock:
        for there in ("127.0.0.1", "127.0.0.2"):
            tx = Transaction(observe_request(), (there, port), rto=0.2, rc=3)
            (result,) = await run_transactions([(sock, tx)])
            # a Transaction takes an answer only from the address it asked
            assert result is not None and result.source == (there, port)
            assert ticket_of(result.message, result.mapped) is not None
    assert responder.stats["answered"] == 2


async def test_without_an_observation_port_the_samples_still_come(nursery):
    _, _, stun = await _servers(nursery)
    closed = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    closed.bind(("127.0.0.1", 0))  # bound, never read: requests vanish as at an old server
    with await _udp_socket() as sock:
        got = await _sample(sock, [stun], trio.current_time(), observe=closed.getsockname())
    closed.close()
    assert got.observed is None and len(got.samples) == 1


async def test_a_taken_udp_port_leaves_the_rendezvous_serving(nursery, caplog):
    taken = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    taken.bind(("127.0.0.1", 0))
    port = taken.getsockname()[1]
    try:
        rv = await nursery.start(lambda task_status: serve_rendezvous("127.0.0.1", port, task_status=task_status))
        await trio.sleep(0.05)
        async with open_rendezvous(rv) as a:
            assert a.peer_id
        assert "cannot answer observation requests" in caplog.text
    finally:
        taken.close()


async def test_a_pool_survey_hands_back_a_ticket_per_new_address(nursery):
    # loopback is a "pool" of one address: the survey's 32 fresh sockets all show 127.0.0.1, so it
    # brings one new address, with the server's ticket for it, and none that is already known
    from nattrav.api.pool_survey import SOCKETS, survey_pool

    port = free_port_pair()[0]
    responder = await nursery.start(serve_observer, "127.0.0.1", port, KEY)
    survey = await survey_pool(("127.0.0.1", port), "127.0.0.1", [])
    assert [addr[0] for addr, _ in survey.new] == ["127.0.0.1"]
    (addr, ticket), = survey.new
    assert check_ticket(KEY, list(addr), ticket, trio.current_time()) == addr
    # every socket's endpoint comes back too (a sequential NAT's counter reading: report.counter_sample)
    assert len(survey.mapped) == SOCKETS and len({p for _, p in survey.mapped}) == SOCKETS
    assert (await survey_pool(("127.0.0.1", port), "127.0.0.1", ["127.0.0.1"])).new == []
    assert responder.stats["answered"] == 2 * SOCKETS
