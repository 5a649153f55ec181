"""Which relayed address a listener accepts from the asking peer's node info (api/relay.py): only
one at the relay its own grant names, well-formed; anything else is refused with a note, and then
this side never relays."""

from __future__ import annotations

import time

import pytest

from nattrav.api import relay
from nattrav.io.session import Session
from nattrav.proto.turn_rest import TurnRest
from nattrav.proto.vocab import Role

GRANT = TurnRest("127.0.0.1", 3490, b"s" * 32).grant("listener", time.time())


def session(info):
    return Session(key=bytes(32), role=Role.SECOND, peer_id="asker", peer_info=info)


@pytest.mark.parametrize("raw, note", [
    (["192.0.2.9", 49200], "is not at our relay"),  # a third party, not our relay
    (["127.0.0.1", 0], "malformed"),
    (["127.0.0.1", 70000], "malformed"),
    (["127.0.0.1", "49200"], "malformed"),
    (["not-an-ip", 49200], "malformed"),
    (["127.0.0.1"], "malformed"),
    (["127.0.0.1", 49200, 1], "malformed"),
    ({"ip": "127.0.0.1"}, "malformed"),
    ("127.0.0.1:49200", "malformed"),
])
async def test_a_relay_address_elsewhere_or_malformed_is_refused(raw, note):
    notes = []
    got = await relay.peer_rung(session({"relay": raw}), GRANT, lambda p, d: notes.append((p, d)))
    assert got is None
    assert notes and notes[0][0] == "relay-note" and note in notes[0][1]["note"]


async def test_the_address_at_our_relay_is_taken():
    got = await relay.peer_rung(session({"relay": ["127.0.0.1", 49200]}), GRANT, lambda p, d: None)
    assert got is not None and got.peer_relayed == ("127.0.0.1", 49200) and got.link is None


async def test_no_offer_or_no_grant_means_no_relay():
    notes = []
    assert await relay.peer_rung(session({}), GRANT, lambda p, d: notes.append(d)) is None
    assert not notes  # a peer that offers nothing is not worth a note
    assert await relay.peer_rung(session({"relay": ["127.0.0.1", 49200]}), None,
                                 lambda p, d: notes.append(d)) is None
    assert "granted us none" in notes[0]["note"]


def test_info_names_the_allocation_only_when_there_is_one():
    assert relay.info(None) == {} and relay.info(relay.RelayRung()) == {}
