import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as hs

from nattrav.errors import BadMessage
from nattrav.workers.messages import VERSION, MessageReader, encode


def test_roundtrip_in_pieces():
    data = encode("open", id=1, count=3, ip="127.0.0.1", ttl=None, ports=b"\x01\x00", base=0, reuse_port=False)
    data += encode("cancel") + encode("result", id=1, ports=b"\x00\x01")
    r = MessageReader()
    got = []
    for i in range(len(data)):  # a byte at a time: the stream may be cut anywhere
        got += r.feed(data[i : i + 1])
    assert [m["t"] for m in got] == ["open", "cancel", "result"]
    assert got[0]["count"] == 3 and got[2]["ports"] == b"\x00\x01"


@pytest.mark.parametrize(
    "msg",
    [
        {"v": VERSION + 1, "t": "drain", "id": 1},
        {"v": VERSION, "t": "nope", "id": 1},
        {"v": VERSION, "t": "drain"},
        {"v": VERSION, "t": "take", "id": 1, "index": "3"},
        {"v": VERSION, "t": "take", "id": 1, "index": True},
        {"v": VERSION, "t": "drain", "id": 1, "extra": 1},  # a field the schema does not name
        {"v": VERSION, "t": "result", "id": 1, "hit": "x"},
        [1, 2, 3],
    ],
)
def test_invalid_messages_raise_bad_message(msg):
    with pytest.raises(BadMessage):
        MessageReader().feed(msgpack.packb(msg, use_bin_type=True))


def test_encode_refuses_unknown_types_and_bad_fields():
    with pytest.raises(ValueError):
        encode("bogus")
    with pytest.raises(BadMessage):
        encode("listen", id=1, match="str-not-bytes", timeout=1.0)


def test_oversized_message_is_refused():
    r = MessageReader(max_message=1000)
    with pytest.raises(BadMessage):
        r.feed(encode("result", id=1, blob=b"x" * 5000))


@settings(max_examples=300, deadline=None)
@given(hs.binary(max_size=300))
def test_any_bytes_give_messages_or_bad_message(data):
    try:
        for m in MessageReader().feed(data):
            assert m["v"] == VERSION
    except BadMessage:
        pass


def test_the_coordinator_reads_worker_replies_with_a_small_bound():
    # a broken or hostile worker must not make the coordinator buffer hundreds of MB
    from types import SimpleNamespace

    from nattrav.workers.channel import WorkerChannel

    def reader():
        return WorkerChannel(0, SimpleNamespace(pid=1), None).reader

    big, r = encode("result", id=1, ports=b"\x00" * (5 << 20)), reader()
    with pytest.raises(BadMessage):
        for i in range(0, len(big), 1 << 16):
            r.feed(big[i:i + (1 << 16)])
    # the largest real reply (the ports of 2**20 sockets) still fits
    assert reader().feed(encode("result", id=2, ports=b"\x00" * (2 << 20)))[0]["id"] == 2
