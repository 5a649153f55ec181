"""What the second round's fresh samples say broke a failed plan (proto/moved.py)."""

from __future__ import annotations

from types import SimpleNamespace

from hypothesis import given, strategies as st

from nattrav.proto.moved import AGREE, moved, what_broke
from nattrav.proto.report import NatReport, Sample
from nattrav.proto.vocab import Allocation, Filtering, Mapping


def _report(*ports: int, mapping: Mapping = Mapping.APDM, delta: int = 1) -> NatReport:
    return NatReport(mapping=mapping, filtering=Filtering.APDF, allocation=Allocation.SEQUENTIAL, delta=delta,
                     public=("203.0.113.5", ports[-1]), samples=tuple(Sample(p) for p in ports))


WINDOW = tuple(range(24096, 24110))  # aimed just past samples at a 4,096-port block's top


def test_a_counter_that_started_again_at_the_bottom_is_named():
    found = moved("the peer's", WINDOW, _report(24094, 24095), _report(20001, 20002), spent=1)
    assert found is not None and "started its ports again lower (24095 before, 20001 now)" in found


def test_ports_past_the_window_beyond_the_sides_own_flows_are_named():
    found = moved("the peer's", WINDOW, _report(24094, 24095), _report(24140, 24141), spent=1)
    assert found is not None and "30 port(s) past the window's end (24096-24109)" in found
    # its own punch's flows explain the same jump: nothing found
    assert moved("the peer's", WINDOW, _report(24094, 24095), _report(24140, 24141), spent=31) is None


def test_samples_inside_the_window_find_nothing():
    assert moved("our", WINDOW, _report(24094, 24095), _report(24097, 24098), spent=1) is None


def test_an_eim_mapping_never_moved():
    eim = _report(40000, 40000, mapping=Mapping.EIM, delta=0)
    assert moved("our", (40000,), eim, _report(51000, 51000, mapping=Mapping.EIM, delta=0)) is None


def test_a_step_down_smaller_than_a_wrap_is_not_a_wrap():
    # a stale sample a few hundred ports below is no port block's end
    assert moved("our", WINDOW, _report(24094, 24095), _report(23800, 24110), spent=1) is None


def _plan(at_peer, at_us, peer_flows=1, our_flows=1):
    part = lambda targets, flows: SimpleNamespace(targets=tuple(targets), flows=flows)  # noqa: E731
    return SimpleNamespace(primary=SimpleNamespace(local=part(at_peer, our_flows), remote=part(at_us, peer_flows)))


def test_what_broke_says_each_side_or_that_the_samples_agree():
    peer = (_report(24094, 24095), _report(20001, 20002))
    ours = (_report(30000, 30001), _report(30003, 30004))
    line = what_broke(_plan(WINDOW, range(30002, 30016)), peer, ours)
    assert line.startswith("the peer's NAT started its ports again") and "our NAT" not in line
    calm = (_report(24094, 24095), _report(24098, 24099))
    assert what_broke(_plan(WINDOW, range(30002, 30016)), calm, ours) == AGREE


@given(st.integers(1024, 60000), st.integers(1, 7), st.integers(1, 64))
def test_a_counter_inside_its_window_is_never_blamed(top, delta, width):
    """Fresh samples that follow the aimed window (the side's own flows and no more) find nothing."""
    aimed = [top + delta * k for k in range(1, width + 1)]
    after = _report(aimed[0] + delta, aimed[0] + 2 * delta, delta=delta)
    assert moved("our", aimed, _report(top - delta, top, delta=delta), after, spent=1) is None
