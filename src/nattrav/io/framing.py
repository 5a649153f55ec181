"""Rendezvous frames over a Trio byte stream (the decoding itself is sans-IO in proto.rendezvous)."""

from __future__ import annotations

import trio

from ..proto.rendezvous import CLIENT_MESSAGES, FrameDecoder, encode

READ_SIZE = 65536


class FrameStream:
    """Send and receive whole messages on a stream; receive() returns None at end of stream.

    A malformed frame raises proto.rendezvous.BadFrame (the decoder's one error type).
    """

    def __init__(self, stream: trio.abc.Stream, table: dict = CLIENT_MESSAGES):
        self.stream = stream
        self._decoder = FrameDecoder(table)
        self._send_lock = trio.Lock()  # two tasks must never interleave the bytes of two frames

    async def send(self, msg: dict) -> None:
        data = encode(msg)
        async with self._send_lock:
            await self.stream.send_all(data)

    async def receive(self) -> dict | None:
        while True:
            msg = self._decoder.next_message()
            if msg is not None:
                return msg
            data = await self.stream.receive_some(READ_SIZE)
            if not data:
                return None
            self._decoder.feed(data)

    async def aclose(self) -> None:
        await self.stream.aclose()
