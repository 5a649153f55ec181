"""Identity: the key file (created 0600 on first use, refused when others can read it), where it is
looked for, and peer IDs derived from the public key the way libp2p derives them."""

from __future__ import annotations

import os
import stat

import pytest
from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from cryptography.hazmat.primitives import serialization
from hypothesis import given, settings
from hypothesis import strategies as st

from nattrav import identity as idm
from nattrav.errors import BadPeerId, IdentityError, WrongPeer
from nattrav.identity import (Identity, PeerId, check_peer_id, create_identity, identity_path, load_identity,
                              load_or_create_identity)
from nattrav.proto.rendezvous import NAME_RE

# From the libp2p TLS spec's test vector 1: the Ed25519 key in the certificate and its peer ID.
LIBP2P_KEY = bytes.fromhex("a77f1d92fedb59dddaea5a1c4abd1ac2fbde7d7b879ed364501809923d7c11b9")
LIBP2P_ID = "12D3KooWM6CgA9iBFZmcYAHA6A2qvbAxqfkmrYiRQuz3XEsk4Ksv"


# --- peer IDs ---

def test_peer_id_is_the_libp2p_peer_id_of_the_same_key():
    assert PeerId.from_public_key(LIBP2P_KEY).text == LIBP2P_ID
    assert PeerId.parse(LIBP2P_ID).key_bytes == LIBP2P_KEY


def test_peer_id_fits_the_rendezvous_name_rule():
    for _ in range(50):
        text = Identity.generate().peer_id.text
        assert NAME_RE.match(text), text
        assert len(text) == 52 and text.startswith("12D3KooW") and not text.startswith("-")


def test_peer_id_round_trips_and_matches_only_its_key():
    a, b = Identity.generate(), Identity.generate()
    assert PeerId.parse(a.peer_id.text) == a.peer_id
    assert a.peer_id.matches(a.public_key)
    assert not a.peer_id.matches(b.public_key)
    assert not a.peer_id.matches(b"short")
    assert check_peer_id(a.peer_id.text, a.public_key) == a.peer_id
    with pytest.raises(WrongPeer, match=a.peer_id.text):
        check_peer_id(a.peer_id, b.public_key)


def test_signatures_check_against_the_id_alone():
    a, b = Identity.generate(), Identity.generate()
    sig = a.sign(b"hello")
    a.peer_id.verify(sig, b"hello")
    with pytest.raises(WrongPeer):
        b.peer_id.verify(sig, b"hello")
    with pytest.raises(WrongPeer):
        a.peer_id.verify(sig, b"hellO")
    with pytest.raises(WrongPeer):
        a.peer_id.verify(b"\0" * 64, b"hello")


@pytest.mark.parametrize("text", [
    "", "alice", "-12D3KooW", "12D3KooW" + "0" * 44,  # '0' is not base58
    LIBP2P_ID[:-1], LIBP2P_ID + "1",
    "QmfXbAwNjJLXfesgztEHe8HwgVDCMMpZ9Eax1HYq6hn9uE",  # a real libp2p ID, but of an ECDSA key (hashed)
    "1" + LIBP2P_ID,  # a leading zero byte: another value, not another spelling
    "x" * 65,
])
def test_parse_refuses_what_is_not_an_ed25519_peer_id(text):
    with pytest.raises(BadPeerId):
        PeerId.parse(text)


def test_parse_refuses_non_strings():
    with pytest.raises(BadPeerId):
        PeerId.parse(b"12D3KooW")  # type: ignore[arg-type]


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=80))
def test_parse_raises_only_bad_peer_id(text):
    try:
        peer = PeerId.parse(text)
    except BadPeerId:
        return
    assert peer.text == text and len(peer.key_bytes) == 32


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=60))
def test_base58_round_trip(data):
    assert idm.b58decode(idm.b58encode(data)) == data


# --- where the key lives ---

def test_path_argument_beats_environment():
    env = {"NATTRAV_IDENTITY": "/env/key", "XDG_CONFIG_HOME": "/xdg", "HOME": "/home/u"}
    assert str(identity_path("/arg/key", env)) == "/arg/key"
    assert str(identity_path(None, env)) == "/env/key"
    assert str(identity_path(None, {"XDG_CONFIG_HOME": "/xdg", "HOME": "/home/u"})) == \
        "/xdg/nattrav/identity.pem"
    assert str(identity_path(None, {"HOME": "/home/u"})) == "/home/u/.config/nattrav/identity.pem"
    # the XDG spec: a relative XDG_CONFIG_HOME is invalid and ignored
    assert str(identity_path(None, {"XDG_CONFIG_HOME": "rel", "HOME": "/home/u"})) == \
        "/home/u/.config/nattrav/identity.pem"
    assert str(identity_path(None, {"NATTRAV_IDENTITY": "", "HOME": "/h"})) == \
        "/h/.config/nattrav/identity.pem"


# --- the key file ---

def test_created_on_first_use_with_0600_then_reused(tmp_path):
    env = {"XDG_CONFIG_HOME": str(tmp_path / "cfg")}
    first, created = load_or_create_identity(environ=env)
    assert created
    path = tmp_path / "cfg" / "nattrav" / "identity.pem"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    again, created = load_or_create_identity(environ=env)
    assert not created and again.peer_id == first.peer_id
    assert [p.name for p in path.parent.iterdir()] == ["identity.pem"]  # no temporary file left


def test_created_0600_even_with_a_permissive_umask(tmp_path):
    old = os.umask(0)
    try:
        create_identity(tmp_path / "k.pem")
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "k.pem").stat().st_mode) == 0o600


def test_key_file_is_readable_by_openssl_tools_as_pkcs8(tmp_path):
    ident = create_identity(tmp_path / "k.pem")
    key = serialization.load_pem_private_key((tmp_path / "k.pem").read_bytes(), None)
    assert isinstance(key, ed25519.Ed25519PrivateKey)
    assert PeerId.from_public_key(key.public_key()) == ident.peer_id
    assert (tmp_path / "k.pem").read_bytes().startswith(b"-----BEGIN PRIVATE KEY-----")


def test_create_never_replaces_an_existing_key(tmp_path):
    first = create_identity(tmp_path / "k.pem")
    with pytest.raises(IdentityError, match="already exists"):
        create_identity(tmp_path / "k.pem")
    assert load_identity(tmp_path / "k.pem").peer_id == first.peer_id


@pytest.mark.parametrize("mode", [0o640, 0o604, 0o644, 0o660, 0o666, 0o602])
def test_key_others_can_read_or_write_is_refused_with_the_fix(tmp_path, mode):
    path = tmp_path / "k.pem"
    create_identity(path)
    os.chmod(path, mode)
    with pytest.raises(IdentityError) as err:
        load_or_create_identity(path)
    msg = str(err.value)
    assert f"chmod 600 {path}" in msg and f"{mode:04o}" in msg
    os.chmod(path, 0o600)
    assert load_identity(path)  # after the fix it loads
    os.chmod(path, 0o400)
    assert load_identity(path)  # read-only for the owner is fine too


def test_key_owned_by_another_user_is_refused(tmp_path):
    if os.geteuid() != 0:
        pytest.skip("changing a file's owner needs root")
    path = tmp_path / "k.pem"
    create_identity(path)
    os.chown(path, 12345, -1)
    with pytest.raises(IdentityError, match="belongs to uid 12345"):
        load_identity(path)


def test_symlink_is_judged_by_the_file_it_points_to(tmp_path):
    real = tmp_path / "real.pem"
    create_identity(real)
    link = tmp_path / "link.pem"
    link.symlink_to(real)
    assert load_identity(link).peer_id == load_identity(real).peer_id
    os.chmod(real, 0o644)
    with pytest.raises(IdentityError, match="mode 0644"):
        load_identity(link)


def test_not_a_key_or_wrong_key_type_is_a_clear_error(tmp_path):
    garbage = tmp_path / "garbage.pem"
    garbage.write_bytes(b"not a key at all\n")
    garbage.chmod(0o600)
    with pytest.raises(IdentityError, match="not a usable identity key"):
        load_identity(garbage)

    ec_key = tmp_path / "ec.pem"
    ec_key.write_bytes(ec.generate_private_key(ec.SECP256R1()).private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
    ec_key.chmod(0o600)
    with pytest.raises(IdentityError, match="Ed25519 key is needed"):
        load_identity(ec_key)

    enc = tmp_path / "enc.pem"
    enc.write_bytes(ed25519.Ed25519PrivateKey.generate().private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.BestAvailableEncryption(b"pw")))
    enc.chmod(0o600)
    with pytest.raises(IdentityError, match="encrypted"):
        load_identity(enc)


def test_directory_or_unwritable_place_is_a_clear_error(tmp_path):
    (tmp_path / "dir.pem").mkdir(mode=0o700)
    with pytest.raises(IdentityError, match="not a regular file"):
        load_identity(tmp_path / "dir.pem")
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(IdentityError, match="cannot create"):
        load_or_create_identity(blocker / "sub" / "identity.pem")
    with pytest.raises(IdentityError, match="no identity key"):
        load_identity(tmp_path / "missing.pem")
