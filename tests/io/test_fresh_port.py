"""io/fresh_port.py: a sampling socket never gets a port one of our recent sockets had, because the
NAT still holds that flow's mapping and would answer with it (a stale sample)."""

from __future__ import annotations

import socket

import pytest

from nattrav.io import fresh_port


@pytest.fixture(autouse=True)
def clean_slate():
    fresh_port.forget_all()
    yield
    fresh_port.forget_all()


def test_a_closed_port_is_not_handed_out_again():
    # the kernel alone picks at random from ~28k ports: 1,500 binds would repeat ~40 of them
    seen = []
    for _ in range(1500):
        with fresh_port.fresh_udp("127.0.0.1") as s:
            seen.append(s.getsockname()[1])
    assert len(set(seen)) == len(seen)


def test_a_recent_port_is_held_while_the_kernel_picks_again(monkeypatch):
    picks = []

    def recently_used(port, now=None):
        picks.append(port)
        return len(picks) <= 3  # the first three picks count as recent

    monkeypatch.setattr(fresh_port, "recently_used", recently_used)
    with fresh_port.fresh_udp("127.0.0.1") as s:
        assert s.getsockname()[1] == picks[-1]
        assert len(picks) == 4 and len(set(picks)) == 4  # a held port is not offered twice
    for port in picks[:3]:  # and the held ones were let go
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as again:
            again.bind(("127.0.0.1", port))


def test_after_max_tries_the_kernel_pick_stands(monkeypatch):
    monkeypatch.setattr(fresh_port, "recently_used", lambda port, now=None: True)
    with fresh_port.fresh_udp("127.0.0.1") as s:
        assert s.getsockname()[1] > 0


def test_a_port_is_recent_for_linger_seconds():
    fresh_port.note(40000, now=100.0)
    assert fresh_port.recently_used(40000, now=100.0 + fresh_port.LINGER - 1)
    assert not fresh_port.recently_used(40000, now=100.0 + fresh_port.LINGER + 1)
    assert not fresh_port.recently_used(40001, now=100.0)


def test_the_memory_stays_bounded(monkeypatch):
    monkeypatch.setattr(fresh_port, "MAX_KEPT", 100)
    for port in range(1000, 1300):
        fresh_port.note(port, now=5.0)
    assert len(fresh_port._used) == 100
    assert fresh_port.recently_used(1299, now=5.0) and not fresh_port.recently_used(1000, now=5.0)
    fresh_port.note(2000, now=5.0 + fresh_port.LINGER + 1)  # the old ones expire on the next note
    assert list(fresh_port._used) == [2000]


def test_a_bad_address_raises_oserror():
    with pytest.raises(OSError):
        fresh_port.fresh_udp("256.0.0.1")  # not an address at all


async def test_the_trio_twin_keeps_the_same_memory():
    seen = []
    for _ in range(300):
        with await fresh_port.fresh_trio_udp("127.0.0.1") as s:
            seen.append(s.getsockname()[1])
    with fresh_port.fresh_udp("127.0.0.1") as s:
        seen.append(s.getsockname()[1])
    assert len(set(seen)) == len(seen)
