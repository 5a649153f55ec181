"""The predictor against the lab's ground truth: a sequential NAT shared with a host that opens new
flows at a steady rate. One socket samples its mapping a few times (the lab's echo responder), waits,
then opens one more flow; conntrack on the NAT says which port that flow really got."""

import json
import socket
import time

import pytest

from nattrav.lab.probe import PORTS, start_responder
from nattrav.lab.pytest_support import lab_or_skip
from nattrav.proto.predict import Kind, predict
from tests.reports import udp

pytestmark = pytest.mark.lab

BACKGROUND = 50.0  # new flows per second from the other host behind NAT a
SPACING = 0.2
HORIZON = 0.3
TRIALS = 8


def observe_then_map(servers, spacing, horizon, new_dst):
    """Runs inside host a: samples from ONE socket, then one new flow after `horizon` seconds."""
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind(("0.0.0.0", 0))
    s.settimeout(0.3)
    samples, t0 = [], time.monotonic()
    for i, server in enumerate(servers):
        if i % 2 == 0 and i:
            # pairs back-to-back measure Δ (a steady background would make every spaced gap the same
            # multiple of it, and the gcd would read that as the step); the spacing between pairs
            # measures the background rate
            time.sleep(spacing)
        msg = None
        for _ in range(5):
            s.sendto(json.dumps({"op": "echo", "id": f"s{i}"}).encode(), tuple(server))
            try:
                got = json.loads(s.recvfrom(2048)[0])
            except (socket.timeout, ValueError):
                continue
            if got.get("id") == f"s{i}":
                msg = got
                break
        samples.append({"port": msg["saw"][1], "t": time.monotonic() - t0})
    time.sleep(horizon)
    s.sendto(b"x", tuple(new_dst))
    elapsed = time.monotonic() - t0 - samples[-1]["t"]
    return {"samples": samples, "local_port": s.getsockname()[1], "elapsed": elapsed}


def test_predicted_window_holds_the_port_the_nat_really_gives():
    lab = lab_or_skip("symmetric-seq-2", "none", background={"a": BACKGROUND})
    try:
        start_responder(lab)
        nat = lab.nats("a")[0]
        servers = [[lab.S1, PORTS[0]], [lab.S2, PORTS[0]], [lab.S1, PORTS[1]], [lab.S2, PORTS[1]]]
        hits, sizes, covered, rates, deltas = 0, [], [], [], []
        time.sleep(0.3)  # let the background host reach its rate
        for trial in range(TRIALS):
            dst = ["198.51.100.200", 40000 + trial]  # blackholed by the router: goes nowhere
            obs = lab.call("a", observe_then_map, servers, SPACING, HORIZON, dst)
            truth = [m.outside[1] for m in lab.mappings(nat, "udp")
                     if m.inside[1] == obs["local_port"] and list(m.remote) == dst]
            assert len(truth) == 1, truth
            report = udp("APDM", None, [x["port"] for x in obs["samples"]], times=[x["t"] for x in obs["samples"]],
                         allocation="sequential")
            p = predict(report, elapsed=obs["elapsed"], target=0.999)
            assert p.kind is Kind.SEQUENTIAL, p
            deltas.append(p.model.delta)
            if p.model.delta == 2:  # the fitted rate sees the background host (about 50 ports/s)
                assert 25 < p.model.rate < 100, p.model
                rates.append(p.model.rate)
            hits += truth[0] in p.ports
            sizes.append(len(p.ports))
            covered.append(p.covered)
        print(f"\npredictor vs conntrack: {hits}/{TRIALS} hits, windows {min(sizes)}-{max(sizes)} ports, "
              f"claimed >= {min(covered):.4f}, fitted rate {min(rates, default=0):.0f}-{max(rates, default=0):.0f}/s, Δ {deltas}")
        # a loaded machine can stretch a back-to-back pair enough that the background lands inside
        # both pairs (gaps 4 and 4 read as Δ 4): a real misreading, which the hit count absorbs once
        assert deltas.count(2) >= TRIALS - 1, deltas
        assert hits >= TRIALS - 1
    finally:
        lab.down()
