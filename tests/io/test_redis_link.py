"""io/redis_link.py: RESP replies parsed in any chunking, malformed ones break the connection (never
the process), calls of many tasks share writes, a caller that gives up does not shift anyone's
reply, and the time bound is on a stalled connection, not on a call waiting behind a slow queue.
Fake servers on loopback for the timing cases; a real redis-server for the rest."""

from __future__ import annotations

import pytest
import trio

from nattrav.io.redis_link import LinkDown, ReplyError, ReplyParser, encode, open_redis_link
from tests.redisd import running_redis

REPLIES = (b"+OK\r\n:42\r\n:-7\r\n$5\r\nhe\r\no\r\n$-1\r\n*-1\r\n*0\r\n-ERR no\r\n"
           b"*3\r\n$1\r\na\r\n*2\r\n:1\r\n$0\r\n\r\n+x\r\n")
EXPECTED = [b"OK", 42, -7, b"he\r\no", None, None, [], "ERR no", [b"a", [1, b""], b"x"]]


def _parse(chunks) -> list:
    parser, out = ReplyParser(), []
    for chunk in chunks:
        parser.feed(chunk)
        while (reply := parser.next()) is not ReplyParser.NOTHING:
            out.append(str(reply) if isinstance(reply, ReplyError) else reply)
    return out


def test_replies_parse_alike_whole_and_byte_by_byte():
    assert _parse([REPLIES]) == EXPECTED
    assert _parse([REPLIES[i:i + 1] for i in range(len(REPLIES))]) == EXPECTED
    assert encode(("SET", "k", b"\x00v", 5)) == b"*4\r\n$3\r\nSET\r\n$1\r\nk\r\n$2\r\n\x00v\r\n$1\r\n5\r\n"


@pytest.mark.parametrize("bad", [b"?what\r\n", b"$abc\r\n", b"$99999999999\r\n", b"*9999999999\r\n",
                                 b"$3\r\n" + b"x" * 70000, b"*1\r\n" * 12 + b":1\r\n"])
def test_malformed_replies_are_linkdown(bad):
    with pytest.raises(LinkDown):
        _parse([bad])


async def _fake_redis(nursery, handle) -> int:
    """A loopback server that runs `handle(stream)` per connection; its port."""
    listeners = await nursery.start(trio.serve_tcp, handle, 0)
    return listeners[0].socket.getsockname()[1]


async def test_a_silent_server_fails_waiting_calls_after_the_stall_timeout():
    async def silent(stream):
        await trio.sleep_forever()

    async with trio.open_nursery() as nursery:
        port = await _fake_redis(nursery, silent)
        async with open_redis_link(f"redis://127.0.0.1:{port}/0", stall_timeout=0.4) as link:
            start = trio.current_time()
            with pytest.raises(LinkDown, match="did not answer"):
                await link.call("PING")
            assert 0.4 <= trio.current_time() - start < 2.0
        nursery.cancel_scope.cancel()


async def test_a_slow_but_steady_server_is_waited_for_past_the_stall_timeout():
    """Ten calls, one reply every 0.15 s: the last waits 1.5 s, well past the 0.5 s stall bound,
    and still gets its own reply, because replies keep coming."""
    async def slow(stream):
        parser_buf = b""
        answered = 0
        while True:
            data = await stream.receive_some(4096)
            if not data:
                return
            parser_buf += data
            while parser_buf.count(b"PING") > answered:
                await trio.sleep(0.15)
                answered += 1
                await stream.send_all(b":%d\r\n" % answered)

    async with trio.open_nursery() as nursery:
        port = await _fake_redis(nursery, slow)
        got = {}
        async with open_redis_link(f"redis://127.0.0.1:{port}/0", stall_timeout=0.5) as link:
            async with trio.open_nursery() as calls:
                for i in range(10):
                    async def one(i=i):
                        got[i] = await link.call("PING")
                    calls.start_soon(one)
                    await trio.sleep(0)  # queued in order
        assert sorted(got.values()) == list(range(1, 11))
        nursery.cancel_scope.cancel()


@pytest.fixture(scope="module")
def redisd():
    with running_redis() as server:
        yield server


async def test_many_callers_share_writes_and_a_cancelled_one_shifts_nobody(redisd):
    async with open_redis_link(redisd.url) as link:
        await link.call("PING")  # connected: the callers below queue on one connection
        writes = link.stats["writes"]
        got = {}

        async def one(i):
            got[i] = await link.call("ECHO", f"v{i}")

        async with trio.open_nursery() as nursery:
            for i in range(500):
                nursery.start_soon(one, i)
        assert got == {i: f"v{i}".encode() for i in range(500)}
        assert link.stats["writes"] - writes < 50  # batched: far fewer writes than commands
        # a caller that gives up while its command is on its way: the next caller's reply is its own
        with trio.move_on_after(0.05):
            await link.call("BLPOP", "nattrav-test-empty-list", "0.3")
        assert await link.call("ECHO", "after") == b"after"
        with pytest.raises(ReplyError, match="unknown command"):
            await link.call("NO-SUCH-COMMAND")
        assert await link.calls([("SET", "k1", "a"), ("GET", "k1"), ("INCR", "k1")]) == [
            b"OK", b"a", ReplyErrorLike()]


class ReplyErrorLike:
    def __eq__(self, other):
        return isinstance(other, ReplyError)


async def test_a_restarted_redis_is_reconnected_on_the_next_call(redisd):
    async with open_redis_link(redisd.url) as link:
        assert await link.call("PING") == b"PONG"
        redisd.stop()
        with pytest.raises(LinkDown):
            await link.call("PING")
        redisd.start().wait()
        assert await link.call("PING") == b"PONG"
        assert link.stats["connects"] == 2


async def test_an_event_loop_too_busy_to_read_is_not_a_stall():
    """A server (in a thread of its own) answers within 50 ms, but this event loop blocks for 2.5
    stall bounds before it reads: the reply waiting on the socket shows Redis answered, so the call
    gets it instead of LinkDown."""
    import socket
    import threading
    import time

    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(1)

    def prompt():
        conn, _ = server.accept()
        with conn:
            while data := conn.recv(4096):
                time.sleep(0.05)
                conn.sendall(b"+PONG\r\n" * data.count(b"PING"))

    thread = threading.Thread(target=prompt, daemon=True)
    thread.start()
    try:
        async with open_redis_link(f"redis://127.0.0.1:{server.getsockname()[1]}/0", stall_timeout=0.2) as link:
            await link.call("PING")
            for _ in range(6):  # the watchdog or the reader runs first after the block: both orders
                got = []
                async with trio.open_nursery() as calls:
                    async def one():
                        got.append(await link.call("PING"))

                    calls.start_soon(one)
                    await trio.sleep(0.01)  # the command is out; the answer comes while we block
                    time.sleep(0.5)
                assert got == [b"PONG"]
    finally:
        server.close()
