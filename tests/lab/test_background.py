"""Background traffic: a helper host behind the same NAT consumes ports at the configured rate, so a
sequential NAT's next port drifts the way Klinec & Matyas describe."""

import time

import pytest

from nattrav.lab import Lab
from nattrav.lab.probe import allocation_run, start_responder

RATE = 200.0


@pytest.mark.lab
def test_background_host_consumes_ports_at_its_rate(need_lab):
    with Lab("symmetric-seq", "port-restricted", background={"a": RATE}) as lab:
        assert "bg_a" in lab.nodes() and "bg_b" not in lab.nodes()
        start_responder(lab)
        time.sleep(0.3)  # let the sender start
        n0, t0 = lab.nat_state("nat_a")["allocations"], time.monotonic()
        time.sleep(1.0)
        n1, t1 = lab.nat_state("nat_a")["allocations"], time.monotonic()
        rate = (n1 - n0) / (t1 - t0)
        assert 0.5 * RATE <= rate <= 1.5 * RATE, rate
        # the noise shows up in what a host measures: two sockets 0.5 s apart are ~RATE/2 ports apart
        runs = lab.call("a", allocation_run, [(lab.S1, 7000), (lab.S2, 7000)], 2, 0.5)
        jump = runs[1]["seen"][0][1] - runs[0]["seen"][1][1]
        assert 0.5 * RATE * 0.5 <= jump <= 1.5 * RATE * 0.5 + 5, runs
        # the other NAT has no helper: its allocator stays still
        assert lab.counter("nat_b", "wan_out_udp") < 50
