"""TURN REST credentials (what coturn's --use-auth-secret checks) and the grant's wire form."""

import base64
import hashlib
import hmac

import pytest
from hypothesis import given
from hypothesis import strategies as st

from nattrav.errors import BadFrame
from nattrav.proto.turn_rest import RelayGrant, TurnRest, rest_password


def test_a_grant_names_its_peer_and_expiry_and_signs_them():
    g = TurnRest("relay.example", 3490, b"0123456789abcdef", ttl=600).grant("peer-1", 1_700_000_000.4)
    assert g.username == "1700000600:peer-1" and g.expires == 1_700_000_600
    want = base64.b64encode(hmac.new(b"0123456789abcdef", b"1700000600:peer-1", hashlib.sha1).digest()).decode()
    assert g.password == want == rest_password(b"0123456789abcdef", g.username)
    assert RelayGrant.from_wire(g.to_wire()) == g


def test_bad_configuration_and_peer_ids_are_refused():
    with pytest.raises(ValueError):
        TurnRest("h", 1, b"k" * 16, ttl=1)
    with pytest.raises(ValueError):
        TurnRest("h", 1, b"")
    with pytest.raises(ValueError):  # a ':' would let a name forge another peer's username
        TurnRest("h", 1, b"k" * 16).grant("a:b", 0)


@pytest.mark.parametrize("wire", [
    None, [], {}, {"host": "h", "port": 1, "username": "u", "password": "p"},
    {"host": "h", "port": 0, "username": "u", "password": "p", "expires": 1},
    {"host": "h", "port": True, "username": "u", "password": "p", "expires": 1},
    {"host": "", "port": 1, "username": "u", "password": "p", "expires": 1},
    {"host": "h" * 256, "port": 1, "username": "u", "password": "p", "expires": 1},
    {"host": "h", "port": 1, "username": "u", "password": "p", "expires": float("nan")},
    {"host": "h", "port": 1, "username": b"u", "password": "p", "expires": 1},
    {"host": "h", "port": 1, "username": "u", "password": "p", "expires": 1, "more": 1},
])
def test_malformed_grants_are_bad_frames(wire):
    with pytest.raises(BadFrame):
        RelayGrant.from_wire(wire)


@given(st.dictionaries(st.sampled_from(["host", "port", "username", "password", "expires", "x"]),
                       st.one_of(st.none(), st.integers(), st.floats(), st.text(), st.binary())))
def test_any_map_is_a_grant_or_a_bad_frame(wire):
    try:
        RelayGrant.from_wire(wire)
    except BadFrame:
        pass
