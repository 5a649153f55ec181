"""The rendezvous protocol, sans-IO.

    wire.py     frames and message schemas (encode, FrameDecoder, check_info, ...)
    clock.py    the client's clock mapping and re-enroll backoff, the server's start margin
    server.py   one instance's front (RendezvousServer): connections, frames, keepalives, offer deadlines
    registry.py what the front asks of the registry of peers and offers (shared by instances, or not)
    memory.py   the in-memory registry (the default), with offers.py; records.py the records and actions
    notices.py  what one instance tells a peer connected to another (relayed through the registry)
    names.py    who may enroll under which name, by key; timed_proof.py the enroll proof with no challenge

This package's public names are re-exported here: `from nattrav.proto.rendezvous import encode`.
"""

# Each name is imported from its module on first use (PEP 562): a client that needs only the wire
# format and the clock does not pay for the server and the registry at start-up (issue 13).
_WHERE = {
    **dict.fromkeys(['ClockMap', 'reconnect_delay', 'reported_rtt', 'start_margin'], 'clock'),
    **dict.fromkeys(['MemoryRegistry'], 'memory'),
    **dict.fromkeys(['notice', 'pack_notice', 'unpack_notice'], 'notices'),
    **dict.fromkeys(['Close', 'Relay', 'Send', 'hash_secret', 'source_key'], 'records'),
    **dict.fromkeys(['Answered', 'Ended', 'Enrolled', 'Home', 'Offered', 'Refusal', 'Registry'], 'registry'),
    **dict.fromkeys(['RendezvousServer'], 'server'),
    **dict.fromkeys(['CLIENT_MESSAGES', 'HEADER', 'KEY_BYTES', 'MAX_DEPTH', 'MAX_FRAME', 'MAX_INFO',
                     'MAX_INFO_OBJECTS', 'MAX_MESSAGE', 'NAME_RE', 'SECRET_MAX', 'SECRET_MIN', 'SERVER_MESSAGES',
                     'VERSION', 'ErrorCode', 'FrameDecoder', 'Packed', 'check_info', 'decode_one', 'encode',
                     'make'], 'wire'),
}


__all__ = [
    "CLIENT_MESSAGES", "HEADER", "KEY_BYTES", "MAX_DEPTH", "MAX_FRAME", "MAX_INFO", "MAX_INFO_OBJECTS",
    "MAX_MESSAGE", "NAME_RE", "SECRET_MAX", "SECRET_MIN", "SERVER_MESSAGES", "VERSION", "ClockMap", "Close",
    "ErrorCode", "FrameDecoder", "Packed", "RendezvousServer", "Send", "check_info", "decode_one", "encode",
    "make", "reconnect_delay", "reported_rtt", "source_key", "start_margin",
    "Answered", "Ended", "Enrolled", "Home", "MemoryRegistry", "Offered", "Refusal", "Registry", "Relay",
    "hash_secret", "notice", "pack_notice", "unpack_notice",
]


def __getattr__(name: str):
    module = _WHERE.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    from importlib import import_module
    value = getattr(import_module(f".{module}", __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_WHERE))
