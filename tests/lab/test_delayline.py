"""The delay line, measured against its LinkSpec: round-trip time, its spread and order, loss, rate.

Each lab puts the line on host a's access link (a public host, so nothing but the line and one router
sits between a and the responder on S1): every echo crosses it twice, every counted datagram once.
Tolerances follow the issue: mean RTT and loss within 10 % of the configuration.
"""

import json

import pytest

from nattrav.lab.probe import loss_run
from nattrav.lab.probe_path import burst_run, rtt_run, rtt_summary
from nattrav.lab.pytest_support import running_lab
from nattrav.lab.shape import SHAPES, LinkSpec, Shape

pytestmark = pytest.mark.lab
S1P = ("198.51.100.1", 7000)


def _lab(link: LinkSpec):
    return running_lab("none", "none", shape=Shape(link_a=link, name="test"), responder=True)


@pytest.fixture(scope="module")
def profile_lab():
    """The CI profile (wan50) on a NAT'ed side: 50 ms ±10 ms one way, 1 % loss, 12 routers."""
    with running_lab("port-restricted", "none", shape="wan50", responder=True) as lab:
        yield lab


def test_profile_rtt_matches_its_description(profile_lab):
    link = SHAPES["wan50"].link_a
    # 25 ms apart, more than the jitter's whole range: in-order delivery never holds a reply back
    s = rtt_summary(profile_lab.call("a", rtt_run, S1P, 240, 0.025, timeout=60))
    want = 2 * link.delay_ms
    assert abs(s["mean_ms"] - want) <= 0.10 * want, s
    assert s["min_ms"] >= 2 * (link.delay_ms - link.jitter_ms) - 0.5, s
    assert s["inversions"] == 0, s


def test_profile_loss_matches_its_description(profile_lab):
    # one way through the line: 1 % of 150 000 (sd 0.026 %), so 10 % relative is ~4 sd
    res = profile_lab.call("a", loss_run, S1P, 150_000, timeout=120)
    loss = 100.0 * (1 - res["received"] / res["sent"])
    assert abs(loss - 1.0) <= 0.10, (loss, res)


@pytest.mark.parametrize("dist", ["uniform", "normal"])
def test_jitter_distribution_with_reordering(dist):
    link = LinkSpec(delay_ms=40, jitter_ms=8, distribution=dist, reorder=True)
    with _lab(link) as lab:
        s = rtt_summary(lab.call("a", rtt_run, S1P, 1000, 0.002, timeout=60))
    assert abs(s["mean_ms"] - 80) <= 8, s
    # two independent draws per round trip; their sum's interquartile range: triangular on ±2j for
    # uniform draws (2·2j·(1 - 1/√2)), normal with sd √2·j (1.349·√2·j)
    iqr = 4 * 8 * (1 - 2 ** -0.5) if dist == "uniform" else 1.349 * 2 ** 0.5 * 8
    assert abs(s["iqr_ms"] - iqr) <= 0.15 * iqr, s
    if dist == "uniform":
        assert s["min_ms"] >= 64 - 0.5, s
    assert s["inversions"] > 50, "jitter far wider than the 2 ms spacing must reorder replies"
    assert s["loss"] == 0.0, s


def test_in_order_line_never_reorders_and_stays_within_its_bounds():
    with _lab(LinkSpec(delay_ms=30, jitter_ms=10)) as lab:
        s = rtt_summary(lab.call("a", rtt_run, S1P, 800, 0.002, timeout=60))
    assert s["inversions"] == 0 and s["loss"] == 0.0, s
    # a frame waits for the one before it, never below delay - jitter each way
    assert s["min_ms"] >= 40 - 0.5 and s["mean_ms"] >= 60, s


def test_loss_rate_matches_within_ten_percent():
    with _lab(LinkSpec(loss_percent=5.0)) as lab:
        res = lab.call("a", loss_run, S1P, 40_000, timeout=120)
    loss = 100.0 * (1 - res["received"] / res["sent"])
    assert abs(loss - 5.0) <= 0.5, (loss, res)


def test_rate_limit_paces_a_burst():
    link = LinkSpec(rate_mbit=20, limit=5000)
    with _lab(link) as lab:
        # ~9x faster than the line lets out (~2,300 frames/s), so it must queue ~2,600 frames; not
        # flat out: a 250k/s burst overflows the kernel's 1,000-packet input backlog on a busy box
        # before the line ever sees it
        res = lab.call("a", burst_run, S1P, 3000, 1000, 20_000, timeout=60)
    st = res["stats"]
    assert st["count"] == 3000, res  # the queue held the whole burst: nothing dropped
    frame_bits = (res["size"] + 8 + 20 + 14 + 24) * 8  # UDP, IP, Ethernet and the line's framing
    pps = (st["count"] - 1) / (st["last"] - st["first"])
    want = link.rate_mbit * 1e6 / frame_bits
    assert abs(pps - want) <= 0.10 * want, (pps, want, res)
    assert res["send_seconds"] < 0.5 * (st["last"] - st["first"]), "the sender, not the line, was slow"


def test_a_full_line_drops_the_excess():
    with _lab(LinkSpec(rate_mbit=5, limit=200)) as lab:
        res = lab.call("a", burst_run, S1P, 2000, 1000, timeout=60)
    got = res["stats"]["count"]
    # the line holds 200 frames and lets ~590 frames/s out while the burst lasts (milliseconds)
    assert 200 <= got <= 400, res


def test_counters_of_the_line_agree_with_what_crossed():
    """The line's own accounting (printed on exit) against the responder's count."""
    with _lab(LinkSpec(loss_percent=10.0)) as lab:
        res = lab.call("a", loss_run, S1P, 5000, timeout=60)
        wire = lab.delay_lines["w_a"]
        wire.terminate()
        out, _ = wire.communicate(timeout=10)
    ab = json.loads(out.decode().strip().splitlines()[-1])["ab"]
    impaired = ab["received"] - ab["passed"]  # IPv4 frames: the datagrams and the stats requests
    assert impaired >= res["sent"] and ab["forwarded"] - ab["passed"] >= res["received"]
    assert ab["lost"] / impaired == pytest.approx(0.10, abs=0.015), ab
    assert ab["overflow"] == 0 and ab["send_errors"] == 0, ab
