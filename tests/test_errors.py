"""The error family: one base, protocol errors split by whose fault they are, one exit-code table."""

from __future__ import annotations

import trio

from nattrav import errors
from nattrav.cli import exits


def test_every_error_is_a_nattrav_error_and_parsers_raise_remote_protocol_errors():
    for name in errors.__all__:
        assert issubclass(getattr(errors, name), errors.NattravError), name
    for cls in (errors.BadPacket, errors.BadFrame, errors.BadReport, errors.BadMessage):
        assert issubclass(cls, errors.RemoteProtocolError) and not issubclass(cls, errors.LocalProtocolError)
    # local misuse stays a ValueError (a bad argument), as it was before the family
    assert issubclass(errors.PlanError, errors.LocalProtocolError) and issubclass(errors.PlanError, ValueError)
    # the ones that carry an errno or mean "gave up waiting" keep the standard base
    assert issubclass(errors.StunTcpError, OSError) and issubclass(errors.FdLimitError, OSError)
    assert issubclass(errors.StunTimeout, TimeoutError) and issubclass(errors.RendezvousTimeout, TimeoutError)


def test_exit_codes_follow_the_families_most_specific_first():
    cases = {
        errors.UnknownPeer("x"): exits.EXIT_PEER,
        errors.NameTaken("x"): exits.EXIT_PEER,
        errors.RendezvousTimeout("x"): exits.EXIT_TIMEOUT,
        trio.TooSlowError(): exits.EXIT_TIMEOUT,
        errors.ServerGone("x"): exits.EXIT_SERVER,
        errors.ProtocolViolation("x"): exits.EXIT_SERVER,
        errors.TcpPunchFailed("no path"): exits.EXIT_PUNCH,
        errors.ConnectError("x"): exits.EXIT_PUNCH,
        errors.UsageError("bad port"): exits.EXIT_USAGE,
        errors.WorkerDied(0, 1, "killed"): exits.EXIT_FAILURE,
        KeyboardInterrupt(): exits.EXIT_INTERRUPTED,
    }
    for exc, code in cases.items():
        assert exits.exit_code(exc) == code, exc
        assert isinstance(exc, exits.HANDLED)
    assert not isinstance(RuntimeError("a bug"), exits.HANDLED)  # bugs still show their traceback


def test_identity_and_secure_path_errors_join_the_family_where_their_callers_look():
    # a peer ID typed wrong is the user's mistake (exit 2); a foreign key or signature is the peer's
    assert issubclass(errors.BadPeerId, errors.UsageError) and issubclass(errors.BadPeerId, ValueError)
    assert issubclass(errors.WrongPeer, errors.RemoteProtocolError)
    # a certificate that proves no expected peer: the one error of a parser of peer bytes, and the
    # reason the connection failed
    assert issubclass(errors.PeerAuthError, errors.RemoteProtocolError)
    assert issubclass(errors.PeerAuthError, errors.HandshakeFailed) and issubclass(errors.HandshakeFailed, errors.ConnectError)
    # a dead QUIC path keeps trio's Stream contract (BrokenResourceError) and is found from nattrav.errors,
    # which loads its trio base only then
    from nattrav.io.quic_path import PathDead
    assert errors.PathDead is PathDead and issubclass(PathDead, errors.PathError)
    assert issubclass(PathDead, trio.BrokenResourceError)
    assert exits.exit_code(errors.BadPeerId("x")) == exits.EXIT_USAGE
    # not the peer asked for (its certificate, or the server's word about its key): a peer problem
    assert exits.exit_code(errors.PeerAuthError("forged")) == exits.EXIT_PEER
    assert exits.exit_code(errors.WrongPeer("swapped")) == exits.EXIT_PEER
    assert exits.exit_code(errors.HandshakeFailed("no answer")) == exits.EXIT_PUNCH
    assert exits.exit_code(errors.IdentityError("mode 0644")) == exits.EXIT_FAILURE
    # data that may not have arrived has its own code
    assert exits.exit_code(PathDead("idle timeout")) == exits.EXIT_UNDELIVERED
    assert exits.exit_code(trio.BrokenResourceError("reset")) == exits.EXIT_UNDELIVERED
