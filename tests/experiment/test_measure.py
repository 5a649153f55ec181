"""The traffic measurement's wire and bookkeeping (experiment/measure.py), without sockets."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from nattrav.errors import RemoteProtocolError
from nattrav.experiment import measure as m


def test_a_probe_round_trips_at_the_size_asked():
    raw = m.encode(m.DATA, 7, 123_456_789, 1200)
    assert len(raw) == 1200
    p = m.decode(raw)
    assert (p.kind, p.seq, p.stamp) == (m.DATA, 7, 123_456_789)


@given(st.binary(max_size=64))
@settings(max_examples=300)
def test_any_bytes_decode_or_raise_bad_probe(data):
    try:
        p = m.decode(data)
    except m.BadProbe:
        return
    assert p.kind in m.KINDS


def test_bad_probe_is_a_remote_protocol_error():
    with pytest.raises(RemoteProtocolError):
        m.decode(b"NTpf" + bytes(30))  # kind 0


def _feed(acct, seqs, size=100, gap=1_000_000):
    for i, s in enumerate(seqs):
        acct.data(m.decode(m.encode(m.DATA, s, i * gap, size)), size, i * gap + 500_000)


def test_the_account_counts_loss_duplicates_and_reordering():
    acct = m.ReceiverAccount(interval_ns=2_000_000)
    _feed(acct, [0, 1, 3, 2, 2, 5])  # 4 lost, 2 late, 2 again
    acct.sent_total = 6
    s = acct.summary()
    assert (s["received"], s["duplicates"], s["reordered"], s["lost"]) == (5, 1, 1, 1)
    assert s["loss"] == pytest.approx(1 / 6, abs=1e-6)
    assert s["bytes"] == 500
    assert s["owd_ms"]["p50"] == pytest.approx(0.5)  # every probe arrived 0.5 ms after its intended time
    # five unique arrivals 1 ms apart, except the duplicate's slot: span 5 ms over 4 gaps -> 6.25 ms
    assert s["goodput_bps"] == pytest.approx(500 * 8 / 0.00625)
    assert [i["packets"] for i in s["intervals"]] == [2, 2, 1]


def test_a_sequence_number_past_the_bitmap_is_refused():
    acct = m.ReceiverAccount()
    with pytest.raises(m.BadProbe):
        acct.data(m.Probe(m.DATA, 2**40, 0), 100, 1)


def test_the_report_travels_in_parts_and_comes_back_whole():
    report = {"intervals": [{"start": i, "bps": i * 1.5} for i in range(300)], "goodput_bps": 1.0}
    parts = m.report_parts(report)
    assert len(parts) > 1 and all(len(p) <= m.REPORT_PART for p in parts)
    asm = m.ReportAssembly()
    for i in reversed(range(len(parts))):
        assert asm.result() is None
        asm.add(m.decode(m.encode(m.REPORT, i, len(parts), body=parts[i])))
    assert asm.result() == report


def test_report_parts_that_disagree_are_refused():
    asm = m.ReportAssembly()
    asm.add(m.Probe(m.REPORT, 0, 2, b"{"))
    with pytest.raises(m.BadProbe):
        asm.add(m.Probe(m.REPORT, 1, 3, b"}"))
    with pytest.raises(m.BadProbe):
        m.ReportAssembly().add(m.Probe(m.REPORT, 5, 2, b""))


@pytest.mark.parametrize("text,bps", [("50M", 50e6), ("800k", 800e3), ("1.5G", 1.5e9), ("20000", 20000.0)])
def test_rates_parse_as_iperf_writes_them(text, bps):
    assert m.parse_rate(text) == bps


@pytest.mark.parametrize("text", ["fast", "-5M", "0", "nanM", ""])
def test_a_bad_rate_says_why(text):
    with pytest.raises(ValueError, match="rate"):
        m.parse_rate(text)


def test_quantiles_are_nearest_rank():
    q = m.quantiles([float(x) for x in range(1, 101)])
    assert (q["p0"], q["p50"], q["p99"], q["p100"]) == (1.0, 50.0, 99.0, 100.0)
