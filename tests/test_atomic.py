"""atomic.replace_file: whole or nothing, the asked permission bits, no link followed, nothing left over."""

from __future__ import annotations

import os
import stat

import pytest

from nattrav.atomic import replace_file


def test_replaces_whole_with_the_asked_bits(tmp_path):
    target = tmp_path / "state.json"
    target.write_bytes(b"old contents that are longer than the new ones")
    os.chmod(target, 0o666)
    old_umask = os.umask(0o077)
    try:
        replace_file(target, b"new", mode=0o644)
    finally:
        os.umask(old_umask)
    assert target.read_bytes() == b"new"
    assert stat.S_IMODE(target.stat().st_mode) == 0o644  # not the old file's bits, not cut by the umask
    assert os.listdir(tmp_path) == ["state.json"]  # no temporary file left


def test_durable_write_lands_too(tmp_path):
    replace_file(tmp_path / "names.json", b"{}" * 10000, durable=True)
    assert (tmp_path / "names.json").read_bytes() == b"{}" * 10000


def test_a_link_at_the_temporary_name_is_not_followed(tmp_path):
    victim = tmp_path / "victim"
    victim.write_bytes(b"keep me")
    # a stale temporary name of ours that someone made a link: it is removed, never written through
    os.symlink(victim, tmp_path / f".state.{os.getpid()}.tmp")
    replace_file(tmp_path / "state", b"ours")
    assert victim.read_bytes() == b"keep me"
    assert (tmp_path / "state").read_bytes() == b"ours"


def test_a_failed_write_leaves_the_old_file_and_no_temporary(tmp_path):
    target = tmp_path / "state"
    target.write_bytes(b"before")
    (tmp_path / "sub").mkdir()
    with pytest.raises(OSError):
        replace_file(tmp_path / "sub", b"x")  # a directory cannot be replaced by a file
    assert target.read_bytes() == b"before"
    assert sorted(os.listdir(tmp_path)) == ["state", "sub"]
