"""proto/report.py: the peer report's one encoding and its strict schema."""

from __future__ import annotations

import json
from dataclasses import replace

import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from nattrav.errors import BadReport
from nattrav.proto.nat_behavior import BindingSample
from nattrav.proto.planner.budget import DEFAULT_FLOW_BUDGET, FLOW_TABLE_CAP
from nattrav.proto.report import MAX_HOSTS, MAX_SAMPLES, VERSION, History, NatReport, Sample, samples_from_bindings
from nattrav.proto.vocab import Mapping
from tests.reports import tcp, udp

SEQ = udp("APDM", "APDF", [20000, 20001, 20003], times=[0.0, 0.01, 0.5], allocation="sequential", delta=1,
          host=[("10.0.1.2", 40000), ("192.168.7.3", 40000)])
WITH_TCP = replace(SEQ, tcp=tcp([20010, 20011, 20012], times=[0.0, 0.002, 0.004], window=12, horizon=0.5,
                                history=(3, 9.5), host=[("10.0.1.2", 41000)]))


@pytest.mark.parametrize("report", [SEQ, WITH_TCP, NatReport(), udp(None, None, [4000], nat=False)])
def test_the_wire_form_round_trips_through_json_and_msgpack(report):
    w = report.to_wire()
    assert NatReport.from_wire(json.loads(json.dumps(w))) == report
    assert NatReport.from_wire(msgpack.unpackb(msgpack.packb(w))) == report
    # plain types only: the enums travel as their words
    assert type(json.loads(json.dumps(w))["mapping"]) in (str, type(None))


def test_exact_keys_and_version():
    w = SEQ.to_wire()
    with pytest.raises(BadReport, match="unknown key"):
        NatReport.from_wire({**w, "one_socket": []})
    with pytest.raises(BadReport, match="missing"):
        NatReport.from_wire({k: v for k, v in w.items() if k != "tcp"})
    for v in (5, 0, "1", 1.0, True, None):
        with pytest.raises(BadReport, match="version"):
            NatReport.from_wire({**w, "v": v})
    with pytest.raises(BadReport, match="newer nattrav"):
        NatReport.from_wire({**w, "v": 5})
    tw = WITH_TCP.to_wire()
    with pytest.raises(BadReport, match="unknown key"):
        NatReport.from_wire({**tw, "tcp": {**tw["tcp"], "public": ["203.0.113.10", 1]}})


def test_version_three_only_with_pool_draws():
    # pool_draws came with version 3, written only by a report that carries it: every other report
    # stays a 2, which older peers read
    assert VERSION == 4 and SEQ.to_wire()["v"] == 2
    pooled = replace(SEQ, pool=4, pool_draws=35)
    w = pooled.to_wire()
    assert w["v"] == 3 and w["pool_draws"] == 35 and NatReport.from_wire(w) == pooled
    with pytest.raises(BadReport, match="pool_draws in a version 2"):
        NatReport.from_wire({**w, "v": 2})
    for bad in (0, -1, 4097, True, 3.0, None):
        with pytest.raises(BadReport):
            NatReport.from_wire({**w, "pool_draws": bad})


def test_version_four_only_with_the_backgrounds_gaps():
    # the gaps discovery counted its background over came with version 4 (predict's divisor grids
    # read the background on another step with them), written only by a report that carries them
    counted = replace(SEQ, background=History(3, 0.05, 6))
    w = counted.to_wire()
    assert w["v"] == 4 and w["background"] == [3, 0.05, 6] and NatReport.from_wire(w) == counted
    assert replace(SEQ, background=History(3, 0.05)).to_wire()["v"] == 2
    assert replace(counted, pool=4, pool_draws=35).to_wire()["v"] == 4
    # an older format has no third item; a version 4 may still leave it out
    with pytest.raises(BadReport, match="background: 3 items, at most 2"):
        NatReport.from_wire({**w, "v": 3})
    assert NatReport.from_wire({**w, "background": [3, 0.05]}).background == History(3, 0.05)
    for bad in ([3, 0.05, 0], [3, 0.05, -1], [3, 0.05, 1.0], [3, 0.05, True], [3, 0.05, 65536], [3, 0.05, 6, 1]):
        with pytest.raises(BadReport):
            NatReport.from_wire({**w, "background": bad})


def test_version_two_is_written_and_a_version_one_report_still_reads():
    # the optional keys came with version 2: a reader of 1 says "version", not "unknown key pool"
    assert SEQ.to_wire()["v"] == 2
    old = {k: v for k, v in SEQ.to_wire().items() if k not in ("flows", "pool", "delta_doubt", "background")}
    assert NatReport.from_wire({**old, "v": 1}) == replace(SEQ, flows=DEFAULT_FLOW_BUDGET)


@pytest.mark.parametrize("field, value", [
    ("mapping", "symmetric"), ("mapping", "eim"), ("filtering", "none"), ("allocation", "preservation"),
    ("delta", 70000), ("delta", True), ("delta", 1.0),
    ("public", ["localhost", 4000]), ("public", ["203.0.113.10", 0]), ("public", ["203.0.113.10"]),
    ("public", "203.0.113.10:4000"),
    ("samples", [[70000, 0.0, 0]]), ("samples", [[100, -0.5, 0]]), ("samples", [[100, float("inf"), 0]]),
    ("samples", [[100, None, -1]]), ("samples", [[100, None]]), ("samples", [{"port": 100, "t": 0.0}]),
    ("samples", [100]), ("samples", [[100, None, 0]] * (MAX_SAMPLES + 1)),
    ("port_range", [5000, 4000]), ("port_range", [0, 10]), ("port_range", (1, 2)), ("tcp", {}),
    ("host", None), ("host", [["10.0.1.2", 0]]), ("host", [["10.0.1.2"]]), ("host", ["10.0.1.2:4000"]),
    ("host", [["lan.example", 4000]]), ("host", [["2001:db8::1", 4000]]), ("host", [["127.0.0.1", 4000]]),
    ("host", [["0.0.0.0", 4000]]), ("host", [["224.0.0.251", 5353]]), ("host", [["255.255.255.255", 4000]]),
    ("host", [["10.0.1.2", 4000], ["10.0.1.2", 4000]]),
    ("host", [[f"10.0.1.{k}", 4000] for k in range(1, MAX_HOSTS + 2)]),
    ("flows", 0), ("flows", -1), ("flows", FLOW_TABLE_CAP + 1), ("flows", True), ("flows", 512.0),
    ("flows", "512"), ("flows", None), ("flows", [512]),
])
def test_every_field_is_bounded(field, value):
    with pytest.raises(BadReport):
        NatReport.from_wire({**SEQ.to_wire(), field: value})


def test_the_flow_budget_is_published_and_an_older_report_without_it_reads_as_the_default():
    # a side's budget crosses as an integer 1..FLOW_TABLE_CAP (the planner sizes that side's part by it)
    for flows in (1, 512, FLOW_TABLE_CAP):
        w = replace(SEQ, flows=flows).to_wire()
        assert w["flows"] == flows and NatReport.from_wire(w).flows == flows
    # a peer from before the field: every side then used the one default, so that is what it meant
    old = {k: v for k, v in SEQ.to_wire().items() if k != "flows"}
    assert NatReport.from_wire(old).flows == DEFAULT_FLOW_BUDGET == NatReport().flows
    # optional is not free-form: every other key is still required, nothing unknown is let in
    with pytest.raises(BadReport, match="missing"):
        NatReport.from_wire({k: v for k, v in old.items() if k != "host"})
    with pytest.raises(BadReport, match="unknown key"):
        NatReport.from_wire({**old, "flow": 512})


def test_ip_literals_are_normalised_and_names_refused():
    r = NatReport.from_wire({**SEQ.to_wire(), "public": ["2001:db8:0::1", 4000]})
    assert r.public == ("2001:db8::1", 4000)
    with pytest.raises(BadReport, match="not an IP"):
        NatReport.from_wire({**SEQ.to_wire(), "public": ["victim.example", 4000]})


def test_binding_samples_count_our_other_sockets_as_known_steps():
    b = [BindingSample(0, ("10.0.1.2", 5000), ("198.51.100.1", 3478), ("203.0.113.10", 41000), 0.0),
         BindingSample(1, ("10.0.1.2", 5001), ("198.51.100.1", 3478), ("203.0.113.10", 41001), 0.01),
         BindingSample(2, ("10.0.1.2", 5002), ("198.51.100.1", 3478), ("203.0.113.10", 41002), 0.015),
         BindingSample(0, ("10.0.1.2", 5000), ("198.51.100.1", 3478), ("203.0.113.10", 41000), 0.018),
         BindingSample(0, ("10.0.1.2", 5000), ("198.51.100.2", 3478), ("203.0.113.10", 41003), 0.02)]
    # the repeated server is mapping reuse, not a new sample
    assert samples_from_bindings(b) == (Sample(41000, 0.0, 0), Sample(41003, 0.02, 2))


def test_no_nat_is_the_none_mapping():
    assert udp("EIM", "EIF", [4000], nat=False).mapping is Mapping.NONE
    assert NatReport.from_wire({**SEQ.to_wire(), "mapping": "none"}).mapping is Mapping.NONE


_ANY = st.recursive(
    st.none() | st.booleans() | st.integers(-2, 70000) | st.floats() | st.text(max_size=6)
    | st.sampled_from(["EIM", "APDM", "EIF", "sequential", "203.0.113.9", "::1"]),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(
        st.sampled_from(["v", "mapping", "samples", "public", "port_range", "tcp", "local", "window",
                         "history", "host", "x"]), inner, max_size=4),
    max_leaves=16)


@settings(max_examples=400, deadline=None)
@given(_ANY, st.sampled_from([SEQ, WITH_TCP]))
def test_anything_from_the_network_parses_or_raises_bad_report_only(data, base):
    for candidate in (data, {**base.to_wire(), **data} if isinstance(data, dict) else data):
        try:
            report = NatReport.from_wire(candidate)
        except BadReport:
            continue
        assert NatReport.from_wire(report.to_wire()) == report


def test_host_candidates_are_bounded_ip_literals_in_both_parts():
    w = WITH_TCP.to_wire()
    assert w["host"] == [["10.0.1.2", 40000], ["192.168.7.3", 40000]] and w["tcp"]["host"] == [["10.0.1.2", 41000]]
    full = [[f"10.0.1.{k}", 4000] for k in range(1, MAX_HOSTS + 1)]
    assert len(NatReport.from_wire({**w, "host": full}).host) == MAX_HOSTS
    # a public interface address may be published (whether it is aimed at is the planner's call)
    assert NatReport.from_wire({**w, "host": [["198.51.100.7", 4000]]}).host == (("198.51.100.7", 4000),)
    for bad in ([["10.0.1.2", 4000]] * 2, [["::1", 4000]], [["victim.example", 4000]],
                [[f"10.0.1.{k}", 4000] for k in range(1, MAX_HOSTS + 2)]):
        with pytest.raises(BadReport):
            NatReport.from_wire({**w, "tcp": {**w["tcp"], "host": bad}})
    with pytest.raises(BadReport, match="missing"):
        NatReport.from_wire({**w, "tcp": {k: v for k, v in w["tcp"].items() if k != "host"}})
