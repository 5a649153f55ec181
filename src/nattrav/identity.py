"""A peer's long-term identity: an Ed25519 key pair in a private file, and the peer ID derived from it.

The peer ID is the public key itself, written the way libp2p writes Ed25519 peer IDs: the protobuf
PublicKey {Type = Ed25519, Data = 32 key bytes} inside an identity multihash (the key is short enough
that libp2p does not hash it), in base58btc. So an ID is 52 characters starting "12D3KooW", it fits
the rendezvous server's name rule, and the key can be read back from the ID alone: whoever is told
an ID can check a signature or a certificate against it with no lookup, and nobody can claim an ID
without the private key. The same bytes give the same ID in libp2p (tests check the spec's vector).

The key file is PKCS#8 PEM (readable with `openssl pkey`). Like ssh with its keys, a key file that
other users can read, or that another user owns, is refused: it is no longer a secret.
"""

from __future__ import annotations

import os
import re
import stat
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519

from .errors import BadPeerId, IdentityError, WrongPeer

ENV_VAR = "NATTRAV_IDENTITY"
DEFAULT_FILE = "identity.pem"
KEY_LEN = 32

# identity multihash (code 0x00, length 36) of protobuf PublicKey: field 1 varint Ed25519 (1),
# field 2 bytes of length 32
_ID_PREFIX = bytes([0x00, 0x24, 0x08, 0x01, 0x12, 0x20])
_ID_BYTES = len(_ID_PREFIX) + KEY_LEN
_B58 = "123456789ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz"
_B58_INDEX = {c: i for i, c in enumerate(_B58)}
_ID_TEXT_RE = re.compile(r"[1-9A-HJ-NP-Za-km-z]{1,64}\Z")


# --- base58btc (Bitcoin alphabet), as multibase 'z' without the prefix --------------------------

def b58encode(data: bytes) -> str:
    zeros = len(data) - len(data.lstrip(b"\0"))
    n = int.from_bytes(data, "big")
    out = []
    while n:
        n, r = divmod(n, 58)
        out.append(_B58[r])
    return "1" * zeros + "".join(reversed(out))


def b58decode(text: str) -> bytes:
    """Raises ValueError on a character outside the alphabet."""
    n = 0
    for c in text:
        try:
            n = n * 58 + _B58_INDEX[c]
        except KeyError:
            raise ValueError(f"{c!r} is not a base58 character") from None
    zeros = len(text) - len(text.lstrip("1"))
    body = n.to_bytes((n.bit_length() + 7) // 8, "big") if n else b""
    return b"\0" * zeros + body


# --- peer IDs ------------------------------------------------------------------------------------

@dataclass(frozen=True)
class PeerId:
    """A peer's ID: `text` as users see it, `key_bytes` the raw Ed25519 public key it encodes."""

    text: str
    key_bytes: bytes

    @classmethod
    def from_public_key(cls, key: ed25519.Ed25519PublicKey | bytes) -> PeerId:
        raw = key if isinstance(key, bytes) else key.public_bytes(
            serialization.Encoding.Raw, serialization.PublicFormat.Raw)
        if len(raw) != KEY_LEN:
            raise ValueError(f"an Ed25519 public key is {KEY_LEN} bytes, not {len(raw)}")
        return cls(b58encode(_ID_PREFIX + raw), bytes(raw))

    @classmethod
    def parse(cls, text: str) -> PeerId:
        """A peer ID from its text; BadPeerId (with a readable reason) for anything else."""
        if not isinstance(text, str) or not _ID_TEXT_RE.match(text):
            raise BadPeerId(f"{_show(text)} is not a peer ID (52 base58 characters starting 12D3KooW)")
        raw = b58decode(text)
        if len(raw) != _ID_BYTES or not raw.startswith(_ID_PREFIX):
            raise BadPeerId(f"{_show(text)} is not a peer ID of an Ed25519 key (they start 12D3KooW)")
        peer = cls.from_public_key(raw[len(_ID_PREFIX):])
        if peer.text != text:  # base58 has one spelling per value; refuse any other
            raise BadPeerId(f"{_show(text)} is not in canonical form")
        return peer

    def public_key(self) -> ed25519.Ed25519PublicKey:
        return ed25519.Ed25519PublicKey.from_public_bytes(self.key_bytes)

    def matches(self, key: ed25519.Ed25519PublicKey | bytes) -> bool:
        """True when `key` is the key this ID was derived from."""
        try:
            return PeerId.from_public_key(key) == self
        except (ValueError, TypeError):
            return False

    def verify(self, signature: bytes, data: bytes) -> None:
        """WrongPeer unless `signature` is this peer's Ed25519 signature of `data`."""
        try:
            self.public_key().verify(signature, data)
        except (InvalidSignature, ValueError):
            raise WrongPeer(f"the signature was not made by {self.text}") from None

    def __str__(self) -> str:
        return self.text


def _show(text: object) -> str:
    s = repr(text)
    return s if len(s) <= 80 else s[:77] + "..."


def check_peer_id(expected: PeerId | str, key: ed25519.Ed25519PublicKey | bytes) -> PeerId:
    """The peer ID of `key` when it is `expected`; WrongPeer naming both IDs otherwise."""
    want = expected if isinstance(expected, PeerId) else PeerId.parse(expected)
    got = PeerId.from_public_key(key)
    if got != want:
        raise WrongPeer(f"expected peer {want.text}, but the key is {got.text}'s")
    return got


# --- the long-term key pair ----------------------------------------------------------------------

class Identity:
    """This peer's key pair. The private key never leaves the object except through `to_pem()`."""

    def __init__(self, private_key: ed25519.Ed25519PrivateKey) -> None:
        self.private_key = private_key
        self.public_key = private_key.public_key()
        self.peer_id = PeerId.from_public_key(self.public_key)

    @classmethod
    def generate(cls) -> Identity:
        return cls(ed25519.Ed25519PrivateKey.generate())

    def sign(self, data: bytes) -> bytes:
        return self.private_key.sign(data)

    def to_pem(self) -> bytes:
        return self.private_key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())

    @classmethod
    def from_pem(cls, data: bytes) -> Identity:
        """ValueError when `data` is not an unencrypted PEM Ed25519 private key."""
        try:
            key = serialization.load_pem_private_key(data, password=None)
        except TypeError:
            raise ValueError("the key is encrypted (nattrav keys are protected by file permissions)") from None
        except (ValueError, UnsupportedAlgorithm) as exc:
            raise ValueError(f"not a PEM private key ({exc})") from None
        if not isinstance(key, ed25519.Ed25519PrivateKey):
            raise ValueError(f"an Ed25519 key is needed, this is a {type(key).__name__.lstrip('_')}")
        return cls(key)

    def __repr__(self) -> str:
        return f"Identity({self.peer_id.text})"


def identity_path(path: str | os.PathLike[str] | None = None,
                  environ: Mapping[str, str] | None = None) -> Path:
    """Where the identity lives: `path` if given, else $NATTRAV_IDENTITY, else
    $XDG_CONFIG_HOME/nattrav/identity.pem (an absolute XDG_CONFIG_HOME only, as the XDG spec says),
    else ~/.config/nattrav/identity.pem."""
    env = os.environ if environ is None else environ
    if path is not None and str(path) != "":
        return Path(path).expanduser()
    if env.get(ENV_VAR):
        return Path(env[ENV_VAR]).expanduser()
    xdg = env.get("XDG_CONFIG_HOME", "")
    base = Path(xdg) if xdg and os.path.isabs(xdg) else Path(env.get("HOME") or Path.home()) / ".config"
    return base / "nattrav" / DEFAULT_FILE


def load_identity(path: str | os.PathLike[str]) -> Identity:
    """The identity in `path`; IdentityError when it is missing, unsafe or not an Ed25519 key."""
    path = Path(path)
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        raise IdentityError(f"no identity key at {path}") from None
    except OSError as exc:
        raise IdentityError(f"cannot open the identity key {path}: {exc.strerror}") from None
    try:
        # fstat the open file, not the path: what we check is what we read
        st = os.fstat(fd)
        _check_private(path, st)
        data = os.read(fd, 64 * 1024)
    finally:
        os.close(fd)
    try:
        return Identity.from_pem(data)
    except ValueError as exc:
        raise IdentityError(f"{path} is not a usable identity key: {exc}; move it away and a new "
                            "one is created (a new key is a new peer ID)") from None


def _check_private(path: Path, st: os.stat_result) -> None:
    if not stat.S_ISREG(st.st_mode):
        raise IdentityError(f"the identity key {path} is not a regular file")
    if st.st_uid != os.geteuid():
        raise IdentityError(
            f"the identity key {path} belongs to uid {st.st_uid}, not to this user (uid {os.geteuid()}); "
            f"use your own key file, or fix it with: chown {os.geteuid()} {path}")
    mode = stat.S_IMODE(st.st_mode)
    if mode & 0o077:
        raise IdentityError(
            f"the identity key {path} is readable or writable by others (mode {mode:04o}), so it is "
            f"not secret; fix it with: chmod 600 {path} (and make a new key if others may have read it)")


def create_identity(path: str | os.PathLike[str]) -> Identity:
    """A new identity written to `path` (mode 0600, parent directories 0700); IdentityError if the
    file exists or cannot be written. The file appears whole or not at all."""
    path = Path(path)
    ident = Identity.generate()
    try:
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.{os.urandom(4).hex()}.tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        try:
            os.fchmod(fd, 0o600)  # the umask could only have narrowed it; be explicit anyway
            os.write(fd, ident.to_pem())
            os.fsync(fd)
        finally:
            os.close(fd)
        try:
            os.link(tmp, path)  # unlike rename, never replaces a key another process just made
        finally:
            os.unlink(tmp)
    except FileExistsError:
        raise IdentityError(f"{path} already exists") from None
    except OSError as exc:
        raise IdentityError(f"cannot create the identity key {path}: {exc.strerror or exc}") from None
    return ident


def load_or_create_identity(path: str | os.PathLike[str] | None = None,
                            environ: Mapping[str, str] | None = None) -> tuple[Identity, bool]:
    """(identity, created): the key at identity_path(path, environ), made there on first use."""
    where = identity_path(path, environ)
    if not os.path.lexists(where):
        try:
            return create_identity(where), True
        except IdentityError:
            if not os.path.lexists(where):
                raise
            # another process created it between our look and our link: use theirs
    return load_identity(where), False
