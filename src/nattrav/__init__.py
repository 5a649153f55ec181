"""nattrav: NAT traversal through symmetric NATs (two-server port prediction, low-TTL punching).

    import trio, nattrav

    async def main():
        async with nattrav.connect("198.51.100.1:7000", "PEER_ID") as path:   # an authenticated UDP path
            await path.send(b"hello")
    trio.run(main)

The public API is re-exported here: connect/listen (UDP) and connect_tcp/listen_tcp (TCP) with
AcceptPolicy and Listener (nattrav.api), the report peers exchange (NatReport, TcpReport), the NAT
behaviour words (Mapping, Filtering, Allocation, Strategy, TcpStrategy, Role), the measured behaviour
(NatBehavior) and the error family (nattrav.errors). The API is imported on first use: a worker
process or a command that needs none of it does not pay for loading it.
"""

from __future__ import annotations

import importlib
from typing import Any

from ._version import __version__
from .errors import (
    BadFrame,
    BadMessage,
    BadPacket,
    BadPeerId,
    BadReport,
    BadRequest,
    ConnectError,
    ControlKeyError,
    FdLimitError,
    HandshakeFailed,
    IdentityError,
    LocalProtocolError,
    NameTaken,
    NattravError,
    NattravTimeout,
    OfferGone,
    PathError,
    RegistryUnavailable,
    PeerAuthError,
    PeerError,
    PeerOffline,
    PlanError,
    ProtocolError,
    ProtocolViolation,
    PunchFailed,
    Refused,
    RelayError,
    RemoteProtocolError,
    RendezvousError,
    RendezvousTimeout,
    ServerBusy,
    ServerGone,
    ServerUnreachable,
    StunError,
    StunErrorResponse,
    StunTcpError,
    StunTimeout,
    TcpPunchFailed,
    UnknownPeer,
    UsageError,
    WorkerDied,
    WorkerError,
    WrongPeer,
)

_LAZY = {
    **dict.fromkeys(["AcceptPolicy", "Listener", "connect", "connect_tcp", "listen", "listen_tcp"], "nattrav.api"),
    **dict.fromkeys(["NatReport", "TcpReport"], "nattrav.proto.report"),
    **dict.fromkeys(["Allocation", "Filtering", "Mapping", "Role", "Strategy", "TcpStrategy"], "nattrav.proto.vocab"),
    "NatBehavior": "nattrav.proto.nat_behavior",
    **dict.fromkeys(["Identity", "PeerId", "load_or_create_identity"], "nattrav.identity"),
    "PathDead": "nattrav.errors",  # its trio base loads on first use (see nattrav.errors)
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'nattrav' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # once loaded, a plain attribute
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))


__all__ = [
    "AcceptPolicy", "Allocation", "BadFrame", "BadMessage", "BadPacket", "BadPeerId", "BadReport",
    "BadRequest", "ConnectError", "ControlKeyError", "FdLimitError", "Filtering", "HandshakeFailed",
    "Identity", "IdentityError", "Listener", "LocalProtocolError", "Mapping", "NameTaken", "NatBehavior", "NatReport",
    "NattravError", "NattravTimeout", "OfferGone", "PathDead", "PathError", "PeerAuthError", "PeerError",
    "PeerId", "PeerOffline", "PlanError", "ProtocolError", "ProtocolViolation", "PunchFailed", "Refused",
    "RelayError",
    "RegistryUnavailable", "RemoteProtocolError", "RendezvousError", "RendezvousTimeout", "Role", "ServerBusy",
    "ServerGone",
    "ServerUnreachable", "Strategy", "StunError", "StunErrorResponse", "StunTcpError", "StunTimeout",
    "TcpPunchFailed", "TcpReport", "TcpStrategy", "UnknownPeer", "UsageError", "WorkerDied", "WorkerError",
    "WrongPeer", "__version__", "connect", "connect_tcp", "listen", "listen_tcp",
    "load_or_create_identity",
]
