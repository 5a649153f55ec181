"""Every error nattrav raises on purpose, in one family (h11's split of protocol errors, PyNaCl's one base).

    NattravError
    ├── ProtocolError
    │   ├── LocalProtocolError      we misused a sans-IO object (also a ValueError: a bad argument)
    │   │   └── PlanError           bad planner arguments (role, target, window)
    │   └── RemoteProtocolError     the other side's bytes are malformed or not authentic
    │       ├── BadPacket           a datagram: STUN message, punch/handshake frame, STUN control frame
    │       ├── BadFrame            a rendezvous frame
    │       ├── BadReport           a peer's NAT report
    │       ├── BadMessage          a coordinator <-> worker message
    │       ├── WrongPeer           a key or signature is another peer's than the one expected
    │       └── PeerAuthError       a peer's certificate proves no expected identity (also a HandshakeFailed)
    ├── UsageError                  a mistake in what a user typed (also a ValueError)
    │   ├── ControlKeyError         the STUN control link's secret is missing or short
    │   └── BadPeerId               text that is not a peer ID
    ├── IdentityError               our identity key file cannot be used (missing, unsafe, not Ed25519)
    ├── NattravTimeout              gave up waiting (also a TimeoutError)
    ├── ConnectError                no path to the peer, for a reason the user can act on
    │   ├── PunchFailed             the plan's attempts found no authenticated path
    │   │   └── TcpPunchFailed
    │   ├── RelayError              the TURN relay could not carry the path (refused, silent, none offered)
    │   └── HandshakeFailed         TLS (over TCP) or QUIC (over UDP) gave no authenticated session
    │       └── PeerAuthError       (also a RemoteProtocolError)
    ├── PathError                   a path that was made broke afterwards
    │   └── PathDead                the QUIC path ended: silence, a close with an error, a reset
    │                               (also a trio.BrokenResourceError; lives in io/quic_stream.py)
    ├── RendezvousError             the rendezvous server said no, or went away (`code`: its error code)
    │   ├── PeerError               the peer cannot be had: unknown, offline, refusing, ... name taken
    │   └── RendezvousTimeout       (also a NattravTimeout)
    ├── StunError                   a STUN exchange gave no mapped address
    │   ├── StunTimeout             (also a NattravTimeout)
    │   ├── StunErrorResponse       the server answered with an error code
    │   └── StunTcpError            over TCP (also an OSError: it carries an errno)
    ├── WorkerError                 a burst worker process hung, broke the protocol or could not start
    │   └── WorkerDied
    ├── RegistryUnavailable         the server's shared registry (Redis) is unreachable or answered nonsense
    └── FdLimitError                too few file descriptors (also an OSError, EMFILE)

Parsers of untrusted bytes raise one RemoteProtocolError subclass and nothing else; the CLIs map the
families to exit codes in one table (nattrav.cli.exits). The lab keeps its own LabError: it is a
test bench, not the product.

Importing the family loads nothing else (no trio): `import nattrav` and the sans-IO layer stay
light. PathDead is the one member with a trio base, so it is defined beside the stream it breaks
(io/quic_stream.py) and `nattrav.errors.PathDead` loads it on first use.
"""

from __future__ import annotations

from collections import Counter
from typing import Any


class NattravError(Exception):
    """Base of every error nattrav raises on purpose."""


# --- protocols (sans-IO objects and the parsers of untrusted input) ------------------------------


class ProtocolError(NattravError):
    """A protocol was not followed, by us (Local...) or by the other side (Remote...)."""


class LocalProtocolError(ProtocolError, ValueError):
    """We misused a protocol object: encoding an invalid message, a bad key, misuse of a state
    machine. A bug on this side, never the network's doing."""


class PlanError(LocalProtocolError):
    """Local misuse of a planner (bad role, bad parameters)."""


class RemoteProtocolError(ProtocolError):
    """Bytes from the other side that are malformed or fail authentication: drop them and go on."""


class BadPacket(RemoteProtocolError):
    """A datagram that is not a well-formed STUN message, punch frame or STUN control frame, or
    that fails authentication. The one error those parsers raise."""


class BadFrame(RemoteProtocolError):
    """A malformed rendezvous frame (or stream): the one error of the rendezvous parsers."""


class BadReport(RemoteProtocolError):
    """A peer's NAT report that does not fit the schema (proto/report.py) or cannot be planned on."""


class BadMessage(RemoteProtocolError):
    """A malformed, unknown or mis-versioned coordinator <-> worker message (the other process is
    broken, not the caller)."""


class WrongPeer(RemoteProtocolError):
    """A key or signature belongs to another peer than the one expected: what the other side
    showed is not authentic for the peer ID we hold."""


# --- what a user typed ---------------------------------------------------------------------------


class UsageError(NattravError, ValueError):
    """A mistake in user input (an option, a host:port): str() is the one line that says what to fix."""


class ControlKeyError(UsageError):
    """The shared secret is missing or too short to authenticate the STUN control link."""


class BadPeerId(UsageError):
    """Text that is not a peer ID. Typed by a user, it is their mistake; a peer ID a peer sends is
    checked where it arrives (a certificate's issuer: PeerAuthError)."""


class IdentityError(NattravError):
    """Our identity key file cannot be used: missing, unsafe (readable by others, owned by another
    user), or not an Ed25519 key. str() names the file and says how to fix it."""


# --- waiting, connecting, the rendezvous ---------------------------------------------------------


class NattravTimeout(NattravError, TimeoutError):
    """Gave up waiting for an answer."""


class ConnectError(NattravError):
    """A connection attempt failed for a reason a user can act on; str() is the one-line reason."""


class PunchFailed(ConnectError):
    """No authenticated path within the plan's time. str() names both NAT behaviours and the odds."""

    def __init__(self, message: str, plan: Any = None) -> None:
        super().__init__(message)
        self.plan = plan


class TcpPunchFailed(PunchFailed):
    """No authenticated TCP connection within the time; str() says why (with the probe errors)."""


class RelayError(ConnectError):
    """The relay (TURN) could not carry the path: the server offered none, refused our credentials,
    did not answer, or the peer never came through it. str() says which."""


class HandshakeFailed(ConnectError):
    """A secure handshake (TLS over TCP, QUIC over UDP) did not give an authenticated session: no
    answer in time, the peer refused us, no common protocol. str() is the one-line reason."""


class PeerAuthError(HandshakeFailed, RemoteProtocolError):
    """The peer's certificate does not prove the identity we expected: forged, another peer's,
    expired, malformed. The one error type for whatever a peer's certificate holds, so a remote
    protocol error (certificate checks are a parser of untrusted bytes); and the handshake it ends
    failed, so a HandshakeFailed for whoever waits on the connection. `expected` and `got` are the
    peer IDs involved, where known (`got` only once its signature checked)."""

    def __init__(self, message: str, *, expected: Any = None, got: Any = None) -> None:
        super().__init__(message)
        self.expected = expected
        self.got = got


# --- an established path -------------------------------------------------------------------------


class PathError(NattravError):
    """A path to the peer that was made (punched, authenticated) broke afterwards."""


class RendezvousError(NattravError):
    """Base of every error the rendezvous client raises; ``code`` is the server's error code."""

    code = "error"

    def __init_subclass__(cls, code: str | None = None, **kw: Any) -> None:
        super().__init_subclass__(**kw)
        if code is not None:
            cls.code = code


class PeerError(RendezvousError):
    """The peer cannot be had: unknown, offline, refusing, its offer ended, or our name is taken."""


class UnknownPeer(PeerError, code="unknown-peer"):
    """No peer is enrolled under that ID or name."""


class PeerOffline(PeerError, code="offline"):
    """The peer is enrolled but its connection to the server is gone (the server keeps it for a
    while, so that it can come back under the same ID)."""


class Refused(PeerError, code="refused"):
    """The peer said no: its listener's policy (api.AcceptPolicy) did not admit us."""


class OfferGone(PeerError, code="unknown-offer"):
    """The offer we answer ended before our answer did (it timed out, or the initiator left)."""


class NameTaken(PeerError, code="name-taken"):
    """Another peer holds that name (and we cannot prove with its secret that it is ours), or our
    own name enrolled again elsewhere and took over."""


class RendezvousTimeout(RendezvousError, NattravTimeout, code="timeout"):
    """The server did not answer in time, or says the other side did not."""


class BadRequest(RendezvousError, code="bad-request"):
    """Well formed but not allowed now (a connect before enrolling, a short secret, ...)."""


class ServerBusy(RendezvousError, code="busy"):
    """A server limit was reached: too many peers, connections or pending offers (from one source)."""


class ProtocolViolation(RendezvousError, code="bad-frame"):
    """A malformed frame, from the server (or the server says ours was)."""


class ServerUnreachable(RendezvousError, code="unreachable"):
    """No connection to the server could be made."""


class ServerGone(RendezvousError, code="gone"):
    """The connection to the server ended; every pending request fails with this."""


# --- STUN ----------------------------------------------------------------------------------------


class StunError(NattravError):
    """A STUN exchange gave no mapped address."""


class StunTimeout(StunError, NattravTimeout):
    """No valid reply before the transaction gave up. `discarded` says what arrived instead."""

    def __init__(self, msg: str, discarded: Counter, unexpected_sources: list[tuple[str, int]]) -> None:
        super().__init__(msg)
        self.discarded = discarded
        self.unexpected_sources = unexpected_sources


class StunErrorResponse(StunError):
    """The server answered with an ERROR-CODE (`error`: proto.stun.ErrorCode, `result`: the reply)."""

    def __init__(self, error: Any, result: Any) -> None:
        super().__init__(f"STUN error {error.code} {error.reason}")
        self.error = error
        self.result = result


class StunTcpError(StunError, OSError):
    """A TCP Binding did not produce a mapped address (refused, timed out, malformed answer)."""


# --- local resources -----------------------------------------------------------------------------


class WorkerError(NattravError, RuntimeError):
    """A worker failed the attempt: it hung, broke the protocol, or could not start."""

    def __init__(self, worker: int, pid: int | None, reason: str) -> None:
        super().__init__(f"worker {worker} (pid {pid}): {reason}")
        self.worker, self.pid, self.reason = worker, pid, reason


class WorkerDied(WorkerError):
    """A worker process exited (crash, kill) while the coordinator needed it."""


class RegistryUnavailable(NattravError):
    """The rendezvous server's shared registry (Redis) cannot be reached, timed out or answered
    something malformed. The server answers its peers `busy` meanwhile and retries; never a crash."""


class FdLimitError(NattravError, OSError):
    """Too few file descriptors even after raising the soft limit to the hard one."""


def __getattr__(name: str) -> Any:
    if name == "PathDead":  # see the module docstring: its trio base stays out of this import
        from .io.quic_stream import PathDead

        return PathDead
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "BadFrame", "BadMessage", "BadPacket", "BadPeerId", "BadReport", "BadRequest", "ConnectError",
    "ControlKeyError", "FdLimitError", "HandshakeFailed", "IdentityError", "LocalProtocolError", "NameTaken",
    "NattravError", "NattravTimeout", "OfferGone", "PathDead", "PathError", "PeerAuthError", "PeerError",
    "PeerOffline", "PlanError", "ProtocolError", "ProtocolViolation", "PunchFailed", "Refused", "RegistryUnavailable",
    "RelayError",
    "RemoteProtocolError", "RendezvousError", "RendezvousTimeout", "ServerBusy", "ServerGone",
    "ServerUnreachable", "StunError", "StunErrorResponse", "StunTcpError", "StunTimeout", "TcpPunchFailed",
    "UnknownPeer", "UsageError", "WorkerDied", "WorkerError", "WrongPeer",
]
