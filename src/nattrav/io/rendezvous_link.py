"""One connection of the rendezvous client: the TCP stream to the server, the requests waiting for
their replies on it, why it ended, and the error each server error code becomes."""

from __future__ import annotations

import trio

from ..errors import (
    BadRequest,
    NameTaken,
    OfferGone,
    PeerOffline,
    ProtocolViolation,
    Refused,
    RendezvousError,
    RendezvousTimeout,
    ServerBusy,
    UnknownPeer,
)
from .framing import FrameStream

ERRORS: dict[str, type[RendezvousError]] = {
    cls.code: cls
    for cls in (UnknownPeer, PeerOffline, Refused, RendezvousTimeout, NameTaken, BadRequest, OfferGone,
                ServerBusy, ProtocolViolation)
}


def error_from(msg: dict) -> RendezvousError:
    cls = ERRORS.get(msg["code"], RendezvousError)
    return cls(f"{msg['code']}: {msg['message']}")


class Reply:
    __slots__ = ("event", "msg")

    def __init__(self):
        self.event = trio.Event()
        self.msg: dict | None = None


class Link:
    """One TCP connection to the server and the requests waiting for replies on it."""

    def __init__(self, stream: trio.SocketStream, frames: FrameStream):
        self.stream = stream
        self.frames = frames
        self.pending: dict[int, Reply] = {}
        self.gone: RendezvousError | None = None
        self.final = False  # the server ended us for good: enrolling again would fight the new owner
        self.lost = trio.Event()

    def fail(self, exc: RendezvousError, *, final: bool = False) -> None:
        if self.gone is not None:
            return
        self.gone, self.final = exc, final
        for reply in self.pending.values():
            reply.event.set()
        self.lost.set()
