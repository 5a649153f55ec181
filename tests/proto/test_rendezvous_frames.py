"""Rendezvous frame parser at the untrusted-input boundary: one error type, bounded memory, no crash."""

from __future__ import annotations

import struct

import msgpack
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from nattrav.errors import BadFrame
from nattrav.proto.rendezvous import (
    CLIENT_MESSAGES,
    MAX_FRAME,
    MAX_INFO,
    SERVER_MESSAGES,
    Close,
    FrameDecoder,
    RendezvousServer,
    decode_one,
    encode,
    make,
)

FUZZ = settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])

msgpack_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**63), 2**64 - 1) | st.floats() | st.text(max_size=20)
    | st.binary(max_size=20),
    lambda inner: st.lists(inner, max_size=5) | st.dictionaries(st.text(max_size=8), inner, max_size=5),
    max_leaves=20,
)


def frame(body: bytes) -> bytes:
    return struct.pack("!I", len(body)) + body


@FUZZ
@given(st.binary(max_size=300), st.sampled_from([CLIENT_MESSAGES, SERVER_MESSAGES]))
def test_random_bytes_raise_only_badframe(data, table):
    dec = FrameDecoder(table)
    try:
        dec.feed(data)
        for _ in dec:
            pass
    except BadFrame:
        pass


@FUZZ
@given(st.binary(max_size=300), st.sampled_from([CLIENT_MESSAGES, SERVER_MESSAGES]))
def test_random_bodies_raise_only_badframe(body, table):
    try:
        decode_one(frame(body), table)
    except BadFrame:
        pass


@FUZZ
@given(st.dictionaries(st.sampled_from(["v", "t", "id", "name", "secret", "info", "target", "offer",
                                        "timeout", "x"]), msgpack_values, max_size=6),
       st.sampled_from(sorted(CLIENT_MESSAGES)))
def test_shaped_but_wrong_maps_raise_only_badframe(fields, kind):
    # Mostly-valid maps (right version and type, fields of any type) reach the schema checks.
    msg = {"v": 1, "t": kind, **{k: v for k, v in fields.items() if k not in ("v", "t")}}
    body = msgpack.packb(msg, use_bin_type=True)
    try:
        out = decode_one(frame(body))
    except BadFrame:
        return
    # Whatever passes must match the schema exactly.
    spec = CLIENT_MESSAGES[kind]
    assert set(out) - {"v", "t"} <= set(spec)
    for key, (types, required) in spec.items():
        assert (key in out) or not required
        if key in out:
            assert isinstance(out[key], types) and not isinstance(out[key], bool)


@FUZZ
@given(st.lists(st.binary(max_size=64), max_size=30))
def test_server_survives_any_byte_sequence_and_stays_bounded(chunks):
    server = RendezvousServer()
    server.connection_made(1, ("192.0.2.1", 1), 0.0)
    server.connection_made(2, ("192.0.2.2", 2), 0.0)
    server.receive_data(2, encode(make("enroll", id=1, name="bob")), 0.0)
    for chunk in chunks:
        if 1 not in server.conns:
            break
        server.receive_data(1, chunk, 0.0)
        assert len(server.conns[1].decoder._buf) <= MAX_FRAME + 4 if 1 in server.conns else True
    for act in server.actions():
        if getattr(act, "msg", None) is not None:
            decode_one(encode(act.msg), SERVER_MESSAGES)  # everything sent back is well-formed
    # the other connection still works
    server.receive_data(2, encode(make("ping", id=5)), 1.0)
    assert [a.msg["t"] for a in server.actions()] == ["pong"]


@FUZZ
@given(st.sampled_from(sorted(CLIENT_MESSAGES)), st.integers(0, 2**63 - 1))
def test_valid_frames_round_trip(kind, rid):
    fields = {"id": rid}
    # fields whose values have a shape beyond their type
    shaped = {("observe", "addr"): ["198.51.100.7", 4000], ("observe", "ticket"): bytes(24)}
    for key, (types, required) in CLIENT_MESSAGES[kind].items():
        if required:
            fields[key] = shaped.get((kind, key)) or {str: "x", dict: {"a": 1}, float: 1.5, int: 1}[types[0]]
    msg = make(kind, **fields)
    assert decode_one(encode(msg)) == msg


def test_truncated_and_split_frames_wait_instead_of_failing():
    data = encode(make("ping", id=1))
    dec = FrameDecoder()
    dec.feed(data[:-1])
    assert dec.next_message() is None
    dec.feed(data[-1:])
    assert dec.next_message()["t"] == "ping"


@pytest.mark.parametrize(
    "body, why",
    [
        (msgpack.packb([1, 2]), "not a map"),
        (msgpack.packb({"v": 2, "t": "ping"}), "version"),
        (msgpack.packb({"v": True, "t": "ping"}), "version"),
        (msgpack.packb({"v": 1}), "unknown frame type"),
        (msgpack.packb({"v": 1, "t": "ping", "id": -1}), "out of range"),
        (msgpack.packb({"v": 1, "t": "ping", "id": True}), "type bool"),
        (msgpack.packb({"v": 1, "t": "connect"}), "missing field"),
        (msgpack.packb({"v": 1, "t": "ping", "extra": 1}), "unexpected field"),
        (msgpack.packb({"v": 1, "t": "info", "info": {1: 2}}, strict_types=False), "undecodable"),
        (msgpack.packb({"v": 1, "t": "info", "info": {"a": [[[[[[[[1]]]]]]]]}}), "deeper"),
        (msgpack.packb({"v": 1, "t": "info", "info": {"a": "x" * (MAX_INFO + 1)}}), "bytes, at most"),
        (msgpack.packb({"v": 1, "t": "ping"}) + b"\x00", "undecodable"),
        (b"\xc1", "undecodable"),
        (msgpack.packb({"v": 1, "t": "ping", "id": msgpack.ExtType(1, b"x")}), "undecodable"),
    ],
)
def test_malformed_frames_say_why(body, why):
    with pytest.raises(BadFrame, match=why):
        decode_one(frame(body))


def test_oversized_length_breaks_the_stream_without_buffering_it():
    dec = FrameDecoder()
    dec.feed(struct.pack("!I", MAX_FRAME + 1))
    with pytest.raises(BadFrame, match="length"):
        dec.next_message()
    assert dec.broken
    with pytest.raises(BadFrame):
        dec.feed(b"more")


def test_flood_without_reading_is_cut_off():
    dec = FrameDecoder()
    with pytest.raises(BadFrame, match="too much"):
        for _ in range(200):
            dec.feed(b"\x00" * MAX_FRAME)
    assert dec.broken and len(dec._buf) == 0


def test_deeply_nested_msgpack_is_rejected_not_recursed():
    body = b"\x91" * 100_00 + b"\x01"  # 10k nested one-element arrays
    with pytest.raises(BadFrame):
        decode_one(frame(body))


@pytest.mark.parametrize(
    "msg",
    [
        make("session", session="s", peer="p", info={}, key=b"k" * 31, start_at=1.0, now=0.0, role="first"),
        make("session", session="s", peer="p", info={}, key=b"k" * 32, start_at=1.0, now=0.0, role="third"),
        make("session", session="s", peer="p", info={}, key=b"k" * 32, start_at=float("nan"), now=0.0,
             role="first"),
        make("enrolled", peer="p", secret="s", keepalive=0, now=0.0, observed=["1.2.3.4", 5]),
        make("enrolled", peer="p", secret="s", keepalive=5, now=0.0, observed=["1.2.3.4"]),
        make("pong", now=float("inf")),
    ],
)
def test_server_frames_with_values_a_client_relies_on_out_of_range(msg):
    with pytest.raises(BadFrame, match="out of range"):
        decode_one(encode(msg), SERVER_MESSAGES)


@pytest.mark.parametrize("body", [
    {"v": "\x00" * 5000, "t": "ping"},
    {"v": 1, "t": "\x01" * 5000},
    {"v": 1, "t": "ping", "\x02" * 5000: 1},
])
def test_errors_echo_only_a_short_cut_of_attacker_data(body):
    server = RendezvousServer()
    server.connection_made(1, ("192.0.2.1", 1), 0.0)
    packed = msgpack.packb(body, use_bin_type=True)
    server.receive_data(1, struct.pack("!I", len(packed)) + packed, 0.0)
    act, close = server.actions()  # (a connection that sends garbage before enrolling is closed)
    assert act.msg["t"] == "error" and len(act.msg["message"]) <= 200
    assert isinstance(close, Close) and close.conn == 1
    encode(act.msg)  # fits a frame


@given(st.dictionaries(st.text(min_size=1, max_size=8), msgpack_values, max_size=20),
       st.dictionaries(st.text(min_size=1, max_size=8), msgpack_values, min_size=1, max_size=3))
@FUZZ
def test_packed_fields_are_spliced_into_the_same_map_the_plain_encoding_gives(plain, packed):
    # encode() packs the plain fields in one call and splices the Packed ones after them: whatever
    # the field count (a fixmap or a map16 header), the frame decodes to the message itself
    from nattrav.proto.rendezvous.wire import Packed

    msg = {**plain, **{k: Packed(msgpack.packb(v, use_bin_type=True)) for k, v in packed.items()}}
    want = {**plain, **packed}
    frame = encode(msg)
    assert struct.unpack("!I", frame[:4])[0] == len(frame) - 4
    got = msgpack.unpackb(frame[4:], raw=False, strict_map_key=False)
    assert {k: repr(v) for k, v in got.items()} == {k: repr(v) for k, v in want.items()}  # (repr: NaN)
