"""io/trace against the lab: the low TTL measured from a host behind one or two NAT layers matches
the lab's topology (which the product never sees: it only traces the path to the STUN server)."""

from __future__ import annotations

import pytest
import trio

from nattrav.io.trace import trace_hops
from nattrav.lab.pytest_support import lab_or_skip
from tests.stun.labkit import stun_servers

pytestmark = pytest.mark.lab


def _trace(server):
    return trio.run(lambda: trace_hops(tuple(server))).to_dict()


@pytest.mark.parametrize("left", ["port-restricted", "cgnat", "symmetric-seq", "none"])
def test_the_traced_low_ttl_is_the_lab_topology(left):
    lab = lab_or_skip(left, "port-restricted")
    try:
        with stun_servers(lab, "rfc5780") as server:
            got = lab.call("a", _trace, server)
        assert got["measured"], got
        assert got["low_ttl"] == lab.low_ttl_from("a"), got
        assert got["server_ttl"] > got["low_ttl"], got
    finally:
        lab.down()


def _trace_with_hook(server):
    marks: list[str] = []

    async def main():
        made = trio.Event()
        reading = await trace_hops(tuple(server), made=made.set)
        marks.append(f"made:{made.is_set()}")
        marks.append(f"low_ttl:{reading.low_ttl}")

    trio.run(main)
    return marks


def test_the_trace_says_when_its_flow_is_made():
    """The warm path samples the punch socket once the trace's first round left, or the trace is
    over (api/udp.py): the hook has fired by the time the trace returns, and the trace still reads
    the topology."""
    lab = lab_or_skip("symmetric-seq", "port-restricted")
    try:
        with stun_servers(lab, "rfc5780") as server:
            marks = lab.call("a", _trace_with_hook, server)
        assert marks == ["made:True", f"low_ttl:{lab.low_ttl_from('a')}"], marks
    finally:
        lab.down()
