"""NAT classification from raw test outcomes (pure): RFC 4787 words, Δ, RFC 3489 names, findings."""

from __future__ import annotations

import json

import msgpack
import pytest

from nattrav.proto.nat_behavior import (
    BindingSample,
    NatBehavior,
    classic_name,
    classify,
    classify_allocation,
    classify_filtering,
    classify_mapping,
)

LOCAL = ("10.0.1.2", 40000)
S1 = ("198.51.100.1", 3478)
S2 = ("198.51.100.2", 3478)
S3 = ("198.51.100.2", 3479)
S4 = ("198.51.100.1", 3479)
PUB = "203.0.113.10"


def test_mapping():
    a = (PUB, 40000)
    assert classify_mapping(a, a, a) == "EIM"
    assert classify_mapping(a, (PUB, 40001), (PUB, 40001)) == "ADM"
    assert classify_mapping(a, (PUB, 40001), (PUB, 40002)) == "APDM"
    assert classify_mapping(a, None, None) is None


def test_filtering():
    assert classify_filtering(True, None) == "EIF"
    assert classify_filtering(False, True) == "ADF"
    assert classify_filtering(False, False) == "APDF"
    assert classify_filtering(None, None) is None


@pytest.mark.parametrize(
    "mapping, one, fresh, expect",
    [
        ("EIM", [40000], [(41000, 41000), (42000, 42000), (43000, 43000)], ("preserve", 0)),
        ("APDM", [20000, 20001, 20002, 20003], [(1, 20005), (2, 20006), (3, 20007)], ("sequential", 1)),
        ("APDM", [20000, 20002, 20004, 20006], [(1, 20010), (2, 20012), (3, 20014)], ("sequential", 2)),
        ("APDM", [20000, 20007, 20014, 20021], [(1, 20035), (2, 20042), (3, 20049)], ("sequential", 7)),
        ("ADM", [20000, 20001], [(1, 20003), (2, 20004), (3, 20005)], ("sequential", 1)),
        ("APDM", [51234, 1299, 33333, 60001], [(1, 4242), (2, 17000), (3, 9000)], ("random", None)),
        # one stray step (another host took a port) is tolerated
        ("APDM", [20000, 20002, 20003, 20004], [(1, 20006), (2, 20007), (3, 20008)], ("sequential", 1)),
        ("EIM", [30000], [(1, 30001), (2, 30002), (3, 30003)], ("sequential", 0)),
        # a one-IP server: a random NAT's two mappings 927 apart (as seen in CI), fresh sockets scattered
        ("APDM", [20260, 19333], [(38196, 17537), (44964, 25844), (54401, 63287)], ("random", None)),
        # ...while a busy sequential NAT's fresh sockets stay close even when their steps differ
        ("APDM", [20260, 20262], [(1, 20270), (2, 20276), (3, 20278)], ("sequential", 2)),
        # a busy sequential NAT (Δ=1, 50-800 flows/s of background): other hosts' ports sit in every
        # gap, so no gap agrees with the next (once read as random) or the common one is a multiple of
        # Δ (once read as Δ=3); the gcd of the gaps is the step
        ("APDM", [30000, 30004, 30006, 30013], [(1, 30016), (2, 30021), (3, 30022)], ("sequential", 1)),
        ("APDM", [30000, 30003, 30006, 30007], [(1, 30010), (2, 30013), (3, 30016)], ("sequential", 1)),
        ("APDM", [30000, 30014, 30035, 30042], [(1, 30063), (2, 30070), (3, 30091)], ("sequential", 7)),
        # ...while ports that jump backwards are no counter
        ("APDM", [30000, 30004, 29006, 30013], [(1, 30016), (2, 20021), (3, 30022)], ("random", None)),
    ],
)
def test_allocation(mapping, one, fresh, expect):
    assert classify_allocation(mapping, one, fresh) == expect


def test_classic_names():
    assert classic_name(False, "EIM", "EIF") == "open internet"
    assert classic_name(False, "EIM", "APDF") == "symmetric UDP firewall"
    assert classic_name(True, "EIM", "EIF") == "full cone"
    assert classic_name(True, "EIM", "ADF") == "restricted cone"
    assert classic_name(True, "EIM", "APDF") == "port restricted cone"
    assert classic_name(True, "APDM", "APDF") == "symmetric"
    assert classic_name(True, "ADM", "ADF") == "symmetric"
    assert classic_name(None, None, None, blocked=True) == "UDP blocked"


def _samples(ports: list[int], fresh: list[tuple[int, int]]) -> list[BindingSample]:
    out = [BindingSample(0, LOCAL, S1, (PUB, ports[0]), 0.0)]
    out.append(BindingSample(0, LOCAL, S1, (PUB, ports[0]), 0.01))  # the repeat to S1
    for i, (dest, p) in enumerate(zip([S2, S3, S4], ports[1:])):
        out.append(BindingSample(0, LOCAL, dest, (PUB, p), 0.02 + i / 100))
    for i, (lp, mp) in enumerate(fresh):
        out.append(BindingSample(2 + i, ("10.0.1.2", lp), S1, (PUB, mp), 0.1 + i / 100))
    return out


def test_classify_symmetric_sequential_report_and_findings():
    ports = [20000, 20002, 20004, 20006]
    samples = _samples(ports, [(41000, 20010), (41001, 20012), (41002, 20014)])
    b = classify(local=LOCAL, server=S1, other_address=S3, samples=samples,
                 test1=(PUB, 20000), test2=(PUB, 20002), test3=(PUB, 20004),
                 filter_change_both=False, filter_change_port=False, hairpin=False,
                 repeat_same_port=True)
    assert (b.mapping, b.filtering, b.allocation, b.delta) == ("APDM", "APDF", "sequential", 2)
    assert b.classic == "symmetric" and b.nat is True and b.public_ip == PUB
    assert b.one_socket_ports == ports
    assert b.fresh_ports == [(41000, 20010), (41001, 20012), (41002, 20014)]
    assert any("mapping reuse" in f for f in b.findings)
    assert any("very socket" in f for f in b.findings)


def test_classify_adm_counts_distinct_mappings_only():
    # ADM: (B, P) and (B, P') share a mapping, (A, P') shares A's
    samples = _samples([20000, 20001, 20001, 20000], [(1, 20003), (2, 20004), (3, 20005)])
    b = classify(local=LOCAL, server=S1, other_address=S3, samples=samples,
                 test1=(PUB, 20000), test2=(PUB, 20001), test3=(PUB, 20001),
                 filter_change_both=False, filter_change_port=True)
    assert (b.mapping, b.filtering, b.allocation, b.delta) == ("ADM", "ADF", "sequential", 1)


def test_classify_blocked_and_ignoring_server():
    b = classify(local=LOCAL, server=S1, other_address=None, samples=[], test1=None, test2=None,
                 test3=None, filter_change_both=None, filter_change_port=None)
    assert b.classic == "UDP blocked" and b.mapping is None
    samples = _samples([40000, 40000, 40000, 40000], [(1, 1), (2, 2), (3, 3)])
    b = classify(local=LOCAL, server=S1, other_address=S3, samples=samples,
                 test1=(PUB, 40000), test2=(PUB, 40000), test3=None,
                 filter_change_both=None, filter_change_port=None, server_ignored_change=True)
    assert b.filtering is None
    assert any("ignores" in f and "full cone" in f for f in b.findings)


def test_report_round_trips_through_json_and_msgpack():
    samples = _samples([20000, 20001, 20002, 20003], [(41000, 20005), (41001, 20006), (41002, 20007)])
    b = classify(local=LOCAL, server=S1, other_address=S3, samples=samples,
                 test1=(PUB, 20000), test2=(PUB, 20001), test3=(PUB, 20002),
                 filter_change_both=False, filter_change_port=False, hairpin=False,
                 discarded={"wrong_source": 2})
    d = b.to_dict()
    assert NatBehavior.from_dict(json.loads(json.dumps(d))) == b
    assert NatBehavior.from_dict(msgpack.unpackb(msgpack.packb(d))) == b
    # the predictor's input: the one-socket series, one entry per server address, in order
    assert [s["port"] for s in d["one_socket"]] == [20000, 20001, 20002, 20003]


def test_one_ip_server_tells_apdm_and_port_filtering_by_port():
    """A server with one IP and two ports (S1 and S4): the second port is a second destination."""
    samples = [BindingSample(0, LOCAL, S1, (PUB, 20000)), BindingSample(0, LOCAL, S4, (PUB, 20003)),
               *[BindingSample(2 + i, (LOCAL[0], 41000 + i), S1, (PUB, 20006 + 3 * i)) for i in range(3)]]
    b = classify(local=LOCAL, server=S1, other_address=S4, samples=samples, test1=(PUB, 20000), test2=None,
                 test3=(PUB, 20003), filter_change_both=None, filter_change_port=False, one_ip=True)
    assert (b.mapping, b.filtering, b.allocation, b.delta) == ("APDM", "APDF", "sequential", 3)
    assert any("one IP and two ports" in f for f in b.findings)
    # a cone: the same port to both ports, and the other port's answer came in: EIM and ADF, with
    # the finding that a second IP could still show ADM and EIF
    samples = [BindingSample(0, LOCAL, S1, (PUB, 40000)), BindingSample(0, LOCAL, S4, (PUB, 40000))]
    b = classify(local=LOCAL, server=S1, other_address=S4, samples=samples, test1=(PUB, 40000), test2=None,
                 test3=(PUB, 40000), filter_change_both=None, filter_change_port=True, one_ip=True)
    assert (b.mapping, b.filtering, b.classic) == ("EIM", "ADF", "restricted cone")
    note = next(f for f in b.findings if "one IP and two ports" in f)
    assert "EIM may be ADM" in note and "ADF may be EIF" in note
    # no answer at all from the second port's test: unknown, not a guess
    b = classify(local=LOCAL, server=S1, other_address=S4, samples=samples[:1], test1=(PUB, 40000), test2=None,
                 test3=None, filter_change_both=None, filter_change_port=None, one_ip=True)
    assert b.mapping is None and b.filtering is None
