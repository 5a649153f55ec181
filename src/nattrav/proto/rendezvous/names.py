"""Who may enroll under which name, by key: the part of the rendezvous server that decides a claim.

A peer that enrolls with its identity key proves it by signing the server's per-connection challenge
(enroll_proof says what is signed: the challenge and the name, under a context string, so a
signature made for one server connection or one name is worth nothing on another). Then:

- a name that IS a peer ID (12D3KooW..., identity.py) belongs to the key it encodes; nothing to
  store, nobody else can ever hold it, and it cannot be claimed without that key;
- any other name belongs to the first key that claimed it, for good: NameBindings remembers it, and
  a `persist` callback given by the I/O layer (io/name_store.py) writes the change before the
  enrollment is answered, so a restart does not free the name for the next claimant.

Pure: no files, no clocks. The rendezvous front (server.py) asks `check()` before the registry takes
an enrollment and `claim()` once it has (the registry proves ownership of a name it holds).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

from ...errors import BadPeerId, WrongPeer
from ...identity import KEY_LEN, PeerId

CHALLENGE_BYTES = 32
SIG_BYTES = 64
_CONTEXT = b"nattrav rendezvous enroll v1\0"


def enroll_proof(challenge: bytes, name: str) -> bytes:
    """What a peer signs to enroll under `name` on the connection that got `challenge`."""
    encoded = name.encode()
    return _CONTEXT + challenge + len(encoded).to_bytes(2, "big") + encoded


def as_peer_id(name: str) -> PeerId | None:
    """The PeerId when `name` is one, None for an ordinary name."""
    if not name.startswith("12D3KooW"):
        return None
    try:
        return PeerId.parse(name)
    except BadPeerId:
        return None


def verify_enroll(challenge: bytes | None, name: str, key: bytes, sig: bytes) -> PeerId:
    """The key's PeerId when `sig` proves `key` signed this connection's challenge for `name`;
    WrongPeer (with the reason) otherwise."""
    if challenge is None:
        raise WrongPeer("enroll with a key needs a challenge first")
    if len(key) != KEY_LEN or len(sig) != SIG_BYTES:
        raise WrongPeer(f"a key is {KEY_LEN} bytes and a signature {SIG_BYTES}")
    peer = PeerId.from_public_key(key)
    peer.verify(sig, enroll_proof(challenge, name))
    return peer


class NameBindings:
    """name -> the key that first claimed it. `persist(bindings)` runs on every new binding."""

    def __init__(self, bindings: Mapping[str, bytes] | None = None,
                 persist: Callable[[dict[str, bytes]], None] | None = None) -> None:
        self._bound: dict[str, bytes] = dict(bindings or {})
        self._persist = persist

    def owner(self, name: str) -> bytes | None:
        return self._bound.get(name)

    def check(self, name: str, key: bytes | None) -> str | None:
        """What claim() would say, binding nothing: None when `key` may hold `name`, else why not.
        `key` None is a claim without a key (a secret-only client), allowed only for names no key holds."""
        pid = as_peer_id(name)
        if pid is not None:
            if key is None:
                return "that name is a peer ID: only its key can enroll under it"
            return None if pid.key_bytes == key else "that name is another key's peer ID"
        bound = self._bound.get(name)
        if bound is not None:
            return None if key == bound else "that name is bound to another key"
        return None

    def claim(self, name: str, key: bytes | None) -> str | None:
        """check(), then bind `name` to `key` on its first claim by a key."""
        why = self.check(name, key)
        if why is not None:
            return why
        if key is not None and as_peer_id(name) is None and name not in self._bound:
            self._bound[name] = bytes(key)
            if self._persist is not None:
                try:
                    self._persist(dict(self._bound))
                except BaseException:
                    del self._bound[name]  # not stored: not bound
                    raise
        return None

    def __len__(self) -> int:
        return len(self._bound)

    def items(self) -> dict[str, bytes]:
        return dict(self._bound)


__all__ = ["CHALLENGE_BYTES", "NameBindings", "SIG_BYTES", "as_peer_id", "enroll_proof", "verify_enroll"]
