"""The rendezvous protocol, sans-IO.

    wire.py     frames and message schemas (encode, FrameDecoder, check_info, ...)
    clock.py    the client's clock mapping and re-enroll backoff, the server's start margin
    server.py   the server state machine (RendezvousServer), with offers.py and records.py

This package's public names are re-exported here: `from nattrav.proto.rendezvous import encode`.
"""

from .clock import ClockMap, reconnect_delay, reported_rtt, start_margin
from .records import Close, Send, source_key
from .server import RendezvousServer
from .wire import (
    CLIENT_MESSAGES,
    HEADER,
    KEY_BYTES,
    MAX_DEPTH,
    MAX_FRAME,
    MAX_INFO,
    MAX_INFO_OBJECTS,
    MAX_MESSAGE,
    NAME_RE,
    SECRET_MAX,
    SECRET_MIN,
    SERVER_MESSAGES,
    VERSION,
    ErrorCode,
    FrameDecoder,
    Packed,
    check_info,
    decode_one,
    encode,
    make,
)

__all__ = [
    "CLIENT_MESSAGES", "HEADER", "KEY_BYTES", "MAX_DEPTH", "MAX_FRAME", "MAX_INFO", "MAX_INFO_OBJECTS",
    "MAX_MESSAGE", "NAME_RE", "SECRET_MAX", "SECRET_MIN", "SERVER_MESSAGES", "VERSION", "ClockMap", "Close",
    "ErrorCode", "FrameDecoder", "Packed", "RendezvousServer", "Send", "check_info", "decode_one", "encode",
    "make", "reconnect_delay", "reported_rtt", "source_key", "start_margin",
]
