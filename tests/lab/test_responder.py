"""The tests' responder reads untrusted datagrams: one error type, never a crash."""

import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from nattrav.lab.responder import MAX_DELAY, BadRequest, parse_request

HOME = ("198.51.100.1", 7000)

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=6), inner, max_size=4),
    max_leaves=12,
)


@given(st.binary(max_size=1100))
def test_random_bytes_parse_or_raise_bad_request(data):
    try:
        req = parse_request(data, HOME)
    except BadRequest:
        return
    assert req["op"] in ("echo", "reply", "count", "stats")


@given(st.dictionaries(st.sampled_from(["op", "id", "from", "delay", "tag"]), json_values, max_size=5))
def test_random_requests_parse_or_raise_bad_request(req):
    req.setdefault("op", "reply")
    try:
        out = parse_request(json.dumps(req).encode(), HOME)
    except BadRequest:
        return
    assert 0.0 <= out["delay"] <= MAX_DELAY and isinstance(out["from"][1], int)


@pytest.mark.parametrize("data", [b"[" * 100000, b"[" * 1000 + b"]" * 1000,
                                  b'{"op": "reply", "delay": ' + b"9" * 400 + b"}",
                                  b'{"op": "reply", "from": ["x"]}', b'{"op": "nope"}', b"\xff\xfe"])
def test_hostile_inputs(data):
    with pytest.raises(BadRequest):
        parse_request(data, HOME)


def test_good_requests():
    assert parse_request(b'{"op": "reply", "delay": 1e999}', HOME)["delay"] == MAX_DELAY
    assert parse_request(b'{"op": "echo", "id": "x"}', HOME)["from"] == HOME
    r = parse_request(b'{"op": "reply", "from": ["198.51.100.2", 7001], "delay": 2.5}', HOME)
    assert r["from"] == ("198.51.100.2", 7001) and r["delay"] == 2.5
