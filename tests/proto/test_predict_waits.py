"""A sequential NAT under a busy background, read from samples taken a wait apart (a listener's
first samples, then the accept's): the wait is background, not randomness (predict._waits)."""

import pytest

from nattrav.proto.predict import Kind, Observation, fit, predict
from tests.reports import udp

# Recorded in the lab (symmetric-seq, Δ = 1, a helper host taking 800 new flows/s behind the same
# NAT): a listener's punch socket sampled S1 and S2 at listen time, then (S2, P1) and (S1, P2) at the
# accept's refresh one second later (api.udp.open_endpoint, refresh_mappings); (port, seconds).
# Discovery read the NAT as sequential, Δ = 1; main's predictor read these reports as random.
RECORDED_800 = [
    [(20282, 2.9e-05), (20284, 0.001506), (21093, 1.011443), (21095, 1.012851)],
    [(21118, 3.8e-05), (21120, 0.002104), (21930, 1.013087), (21933, 1.015035)],
]


def _listener(ports, times, **kw):
    return udp("APDM", "APDF", ports, times=times, **kw)


def test_a_long_wait_on_a_busy_sequential_nat_keeps_its_step():
    # two samples at listen time, two at the accept 1.2 s later; ~800 flows/s passed in between
    ports, times = [40000, 40002, 40963, 40965], [0.0, 0.001, 1.2, 1.201]
    p = predict(_listener(ports, times, allocation="sequential", delta=1), elapsed=0.05)
    assert p.kind is Kind.SEQUENTIAL and p.model.delta == 1
    # the wait counts as background: hundreds of flows a second, not the prior's few
    assert p.model.extra >= 900 and p.model.rate > 500
    assert p.ports[0] > 40965 and p.covered >= 0.999


def test_without_discoverys_word_a_long_gap_is_still_random():
    ports, times = [40000, 40002, 40963, 40965], [0.0, 0.001, 1.2, 1.201]
    assert fit(Observation.from_report(_listener(ports, times))).kind is Kind.RANDOM
    assert fit(Observation.from_report(_listener(ports, times, allocation="random"))).kind is Kind.RANDOM


def test_a_big_gap_between_back_to_back_samples_is_not_a_wait():
    # 900 steps in a millisecond, where the other gaps took longer: no background does that
    ports, times = [40000, 40002, 40902, 40904], [0.0, 0.002, 0.003, 0.005]
    assert fit(Observation.from_report(_listener(ports, times, allocation="sequential", delta=1))).kind is Kind.RANDOM


def test_the_samples_after_the_wait_must_show_the_step_again():
    # the wait is the last gap: nothing shows the NAT's step since, so nothing is predicted from it
    ports, times = [40000, 40002, 40004, 40965], [0.0, 0.001, 0.002, 1.2]
    assert fit(Observation.from_report(_listener(ports, times, allocation="sequential", delta=1))).kind is Kind.RANDOM


def test_a_wait_off_the_grid_is_not_the_nats_counter():
    ports, times = [40000, 40004, 41001, 41005], [0.0, 0.001, 1.2, 1.201]
    assert fit(Observation.from_report(_listener(ports, times, allocation="sequential", delta=2))).kind is Kind.RANDOM


@pytest.mark.parametrize("samples", RECORDED_800)
def test_recorded_listener_at_800_flows_a_second_reads_sequential(samples):
    ports, times = [p for p, _ in samples], [t for _, t in samples]
    p = predict(_listener(ports, times, allocation="sequential", delta=1), elapsed=0.05)
    assert p.kind is Kind.SEQUENTIAL and p.model.delta == 1
    # the rate the wait shows is the helper's (800/s), not the prior's few a second
    assert 600 < p.model.rate < 1000
    # 50 ms on: ~40 foreign flows, the window around them
    assert p.covered >= 0.999 and all(ports[-1] < q <= ports[-1] + 80 for q in p.ports)
