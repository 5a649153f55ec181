"""In the NAT lab: a process behind a sequential symmetric NAT learns the NAT's port block from its
own endpoints' samples, two ports each while other flows of its own (standing in for bursts) move
the counter on between them, so the block it publishes runs from the lowest to the highest port a
sample met: inside the NAT's. The endpoint whose samples land within reach of that top takes the
counter through it before its report leaves (api/block_edge.py): its report's last sample is past
the NAT's own wrap, and its block is the NAT's own, bottom and top. Only the NAT lab's real
nftables counter decides the ports."""

from __future__ import annotations

import json
import sys

import pytest

from nattrav.lab.nftables import seq_ports
from nattrav.lab.pytest_support import running_lab
from nattrav.proto.port_block import TOP_REACH
from tests.stun.labkit import stun_servers

pytestmark = pytest.mark.lab

# entries of a flow the NAT forgets after 5 s: the walk goes round the block in ~15 s, and a port
# still held by the last cycle's flow to the same server would clash (the NAT drops the packet)
NAT = "symmetric-seq,udp_timeout=5"
# steps of our own flows between two endpoints: more than a sample's 2, fewer than the reach, so
# one endpoint a cycle lands within reach of the top
STEP = TOP_REACH - 12

WALK = r"""
import json, sys, trio
from nattrav.api import port_blocks, udp
from nattrav.api.block_edge import new_flows
stun, step = (sys.argv[1], 3478), int(sys.argv[2])
async def main():
    out = []
    emit = lambda phase, detail: out[-1]["events"].append([phase, detail]) if out else None
    out.append({"events": []})
    ep = await udp.open_endpoint(stun, on_event=emit)
    behavior, public = ep.behavior, ep.report.public[0]
    ep.sock.close()
    for _ in range(400):  # ~2.5 cycles of the lab's 4,096 ports at most
        # our other flows (a burst's would be): they move the counter, no sample of ours sees them
        await new_flows(stun, None, public, step)
        out.append({"events": []})
        ep = await udp.open_endpoint(stun, behavior=behavior, on_event=emit)
        ep.sock.close()
        out[-1].update(samples=[s.port for s in ep.report.samples], block=list(ep.report.port_range),
                       delta=behavior.delta)
        if any(p == "block-top" for p, _ in out[-1]["events"]):
            break
    print(json.dumps(out))
trio.run(main)
"""


def test_a_counter_near_the_top_it_learned_is_taken_through_the_nats_own_wrap():
    ports = seq_ports(1)
    bottom, top = ports[0], ports[-1]
    with running_lab(NAT, "port-restricted") as lab, stun_servers(lab, "rfc5780") as stun:
        r = lab.run("a", [sys.executable, "-c", WALK, stun[0], str(STEP)], timeout=240)
    assert r.returncode == 0, r.stderr[-3000:]
    opens = json.loads(r.stdout)
    assert opens[1]["delta"] == 1
    crossed = [o for o in opens if any(p == "block-top" for p, _ in o["events"])]
    assert len(crossed) == 1, [o.get("block") for o in opens]
    o = crossed[0]
    top_event = next(d for p, d in o["events"] if p == "block-top")
    assert top_event["wrapped"] and top_event["flows"] >= 1
    # before it, the samples published a block inside the NAT's
    before = [x["block"] for x in opens[1:-1] if x["block"] != [1024, 65535]]
    assert before and all(bottom <= b[0] and b[1] <= top for b in before), before
    # the crossing saw the NAT's own top and bottom; the report's last sample is after the wrap,
    # within the flows the crossing spent
    assert o["block"] == [bottom, top], o["block"]
    assert bottom <= o["samples"][-1] < bottom + top_event["flows"], o["samples"][-3:]
