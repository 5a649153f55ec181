"""The per-source limiter of the STUN server (csrc/mmsg.c through core/mmsg.SourceLimiter): a token
bucket in bytes per source IP (IPv6: per /64) over a bounded table, and a cap on how many reply bytes
a source may receive for the request bytes it sent (reflection/amplification, issue 14 items 4 and 7).
Time is passed in explicitly: every count here is exact."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from nattrav.core.mmsg import SourceLimiter, wire_bytes

BARE_REQ, BARE_REPLY = 20, 68  # a bare Binding request and our answer to it (UDP payload bytes)
EXCHANGE = wire_bytes(BARE_REQ, 4) + wire_bytes(BARE_REPLY, 4)  # both directions, IPv4 headers included


def exchange(lim: SourceLimiter, src, now_ms: int) -> bool:
    """What the C fast path does for a bare request: request and reply admitted together or not at all."""
    return lim.exchange(src, BARE_REQ, BARE_REPLY, now_ms=now_ms)


def test_wire_bytes_count_the_ip_and_udp_headers():
    assert wire_bytes(20, 4) == 48 and wire_bytes(20, 6) == 68
    assert EXCHANGE == 144


def test_a_source_gets_its_burst_then_its_rate():
    # 10 at once, then 1 per second; a fixed hash key: with a random one, the two sources below
    # share one of the 64 slots 1 time in 64 (seen once in CI-like runs)
    lim = SourceLimiter(rate=EXCHANGE, burst=10 * EXCHANGE, slots=64, key=bytes(range(16)))
    src = ("192.0.2.7", 5000)
    assert sum(exchange(lim, src, 1000) for _ in range(50)) == 10
    assert sum(exchange(lim, src, 2000) for _ in range(50)) == 1
    assert sum(exchange(lim, src, 2500) for _ in range(50)) == 0  # half an exchange's worth so far
    assert sum(exchange(lim, src, 3000) for _ in range(50)) == 1
    # another source, another bucket; the port does not matter, the IP does
    assert sum(exchange(lim, ("192.0.2.8", 5000), 3000) for _ in range(50)) == 10
    assert not exchange(lim, ("192.0.2.7", 6000), 3000)
    assert lim.stats["rate_limited"] == 40 + 49 + 50 + 49 + 40 + 1  # every refusal counted


def test_ipv6_sources_are_limited_per_64_prefix():
    lim = SourceLimiter(rate=1, burst=2 * (wire_bytes(20, 6) + wire_bytes(88, 6)), slots=64,
                        key=bytes(range(16)))  # the two /64s in separate slots (a random key: 1 in 64 not)
    got = [lim.exchange((f"2001:db8:0:1::{i:x}", 1), 20, 88, now_ms=0) for i in range(1, 10)]
    assert got.count(True) == 2  # one host's whole /64 shares one bucket
    assert lim.request(("2001:db8:0:2::1", 1), 20, now_ms=0)


def test_replies_never_exceed_the_amplification_factor():
    lim = SourceLimiter(rate=10**9, burst=10**9, max_amplification=3.0, bank=4096, slots=64)
    src = ("198.51.100.9", 7)
    # a bare request (48 wire bytes) earns 144 bytes of reply: our 96-byte answer fits
    assert exchange(lim, src, 0)
    # a 700-byte reply to a 20-byte request is refused until the source has sent enough
    answered = 0
    for _ in range(20):
        assert lim.request(src, 20, now_ms=0)
        answered += lim.reply(src, 700, now_ms=0)
    sent_in, sent_out = 21 * wire_bytes(20, 4), wire_bytes(68, 4) + answered * wire_bytes(700, 4)
    assert 0 < answered < 20 and sent_out <= 3 * sent_in
    assert lim.stats["amplification_limited"] == 20 - answered


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.integers(20, 2048), st.integers(20, 1500), st.integers(0, 50)), max_size=60),
       st.sampled_from([1.0, 2.0, 3.0]))
def test_amplification_bound_holds_for_any_traffic(exchanges, factor):
    lim = SourceLimiter(rate=1000, burst=20000, max_amplification=factor, bank=4096, slots=16)
    src, now = ("203.0.113.1", 9), 0
    total_in = total_out = 0
    for req, rep, dt in exchanges:
        now += dt
        if lim.request(src, req, now_ms=now):
            total_in += wire_bytes(req, 4)
            if lim.reply(src, rep, now_ms=now):
                total_out += wire_bytes(rep, 4)
    assert total_out <= factor * total_in
    assert total_in + total_out <= 20000 + 1000 * now / 1000  # and the byte budget itself


def test_the_table_is_bounded_and_a_flood_of_sources_cannot_reset_a_drained_one():
    lim = SourceLimiter(rate=1, burst=3 * EXCHANGE, slots=8)
    size = lim.nbytes
    victim = ("192.0.2.1", 53)
    while exchange(lim, victim, 0):
        pass
    # 20,000 other (spoofed) sources in the same millisecond: the 8 slots cannot hold them; the ones
    # landing on the victim's slot share its empty bucket instead of evicting it
    for i in range(20000):
        lim.request((f"10.{i >> 16 & 255}.{i >> 8 & 255}.{i & 255}", 1), 20, now_ms=0)
    assert not lim.request(victim, 20, now_ms=0)
    assert lim.stats["shared"] > 0
    assert lim.nbytes == size


def test_a_slot_is_taken_over_only_once_its_source_is_back_to_a_full_bucket():
    lim = SourceLimiter(rate=EXCHANGE, burst=2 * EXCHANGE, slots=1)  # one slot: everyone collides
    a, b = ("192.0.2.1", 1), ("192.0.2.2", 1)
    assert exchange(lim, a, 0) and exchange(lim, a, 0) and not exchange(lim, a, 0)
    assert not exchange(lim, b, 0)  # b shares a's empty bucket rather than evicting a
    assert exchange(lim, b, 1000) and not exchange(lim, a, 1000)  # ... and its refill, with a
    # two seconds later the bucket is full again, as good as new: b takes the slot over
    assert sum(exchange(lim, b, 3000) for _ in range(5)) == 2
    assert not exchange(lim, a, 3000)


def test_bad_arguments_are_refused():
    with pytest.raises(ValueError):
        SourceLimiter(rate=0, burst=100)
    with pytest.raises(ValueError):
        SourceLimiter(rate=10, burst=100, slots=1000)  # not a power of two
    with pytest.raises(ValueError):
        SourceLimiter(rate=10, burst=100, max_amplification=0.5)
    with pytest.raises(ValueError):
        SourceLimiter(rate=10, burst=100, key=b"short")
