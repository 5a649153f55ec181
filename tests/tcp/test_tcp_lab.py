"""TCP traversal through the NAT lab: the low-TTL SYN opens our NAT without reaching the peer's, and a
5 MB bulk transfer over a punched TCP stream between two symmetric (sequential) NATs arrives intact."""

from __future__ import annotations

import re
import sys
import time

import pytest
import trio

from nattrav.lab.pytest_support import lab_fixture
from nattrav.lab.matrix import SERVER_PORT, _wait_tcp
from tests.lab_bulk import both_sides, tcp_connect, tcp_listen

BULK = 5 * 1024 * 1024
SEED = 8

seq_lab = lab_fixture("symmetric-seq", "symmetric-seq-7")


# --- run inside the lab hosts (lab.acall) -----------------------------------------------------


def _low_ttl_syn(dest: tuple[str, int], ttl: int) -> tuple[int, int, int]:
    import socket

    from nattrav.io.tcp_punch import low_ttl_connect, open_listener

    holder = open_listener(("0.0.0.0", 0))
    port = holder.getsockname()[1]
    try:
        s = low_ttl_connect(("0.0.0.0", port), dest, ttl)
        time.sleep(0.3)  # the ICMP time-exceeded comes back meanwhile (< 1 s: no retransmission yet)
        err = s.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
        state = s.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 8)[0]  # tcpi_state
        s.close()
    finally:
        holder.close()
    return port, err, state


def _tcp_probes(servers: list[tuple[str, int]]) -> tuple[list[int], float]:
    import trio

    from nattrav.io.stun_tcp import tcp_mappings
    from nattrav.io.tcp_punch import open_listener

    holder = open_listener(("0.0.0.0", 0))
    try:
        t0 = time.monotonic()
        samples = trio.run(tcp_mappings, holder.getsockname()[:2], servers)  # the default wait
        return [s["port"] for s in samples], time.monotonic() - t0
    finally:
        holder.close()


# --- tests -------------------------------------------------------------------------------------


@pytest.mark.lab
def test_low_ttl_syn_opens_our_nat_and_never_reaches_the_peers(seq_lab):
    lab = seq_lab
    dest = (lab.wan_ip("b"), 20777)
    before = lab.counter("nat_b", "wan_in")
    port, err, state = lab.call("a", _low_ttl_syn, dest, lab.low_ttl_from("a"))
    # the ICMP time-exceeded did not kill the socket: still SYN_SENT (2), no pending error
    assert (err, state) == (0, 2)
    tcp = [m for m in lab.mappings("nat_a", "tcp") if m.inside[1] == port]
    assert tcp, f"no TCP mapping for local port {port} on nat_a: {lab.mappings('nat_a')}"
    assert tuple(tcp[0].remote) == dest
    assert lab.counter("nat_b", "wan_in") == before, "the low-TTL SYN reached the peer's NAT"


@pytest.mark.lab
def test_simultaneous_open_between_nats_that_reset_unsolicited_syns():
    """NATs answering an early SYN with a RST (instead of dropping it) are what the low-TTL SYN is
    for: the peer's NAT must see nothing from us before its own host's SYN went out."""
    from nattrav.lab import NatSpec
    from nattrav.lab.matrix import run_pair

    rst = NatSpec("APDM", "APDF", "sequential", delta=3, hairpin=False, tcp_unsolicited="rst", name="seq-rst")
    cone = NatSpec("EIM", "APDF", "preserve", tcp_unsolicited="rst", name="cone-rst")
    for left, right in ((rst, rst), (cone, rst)):
        results = run_pair(left, right, 2, trial_timeout=15, tcp=True)
        summary = [(r.ok, r.strategy, r.reason) for r in results]
        assert all(r.ok and r.strategy == "tcp-simultaneous" for r in results), summary


@pytest.mark.lab
def test_birthday_between_a_random_nat_and_a_cone_that_both_reset_unsolicited_syns():
    """The TCP birthday against NATs that answer a SYN they have no mapping for with a RST: the
    random side's thousand SYNs must die before the cone's NAT (a RST would close those very flows),
    and the cone side's hundreds of wrong guesses come back as RSTs it shrugs off."""
    from nattrav.lab import NatSpec
    from nattrav.lab.matrix import run_pair

    rnd = NatSpec("APDM", "APDF", "random", hairpin=False, tcp_unsolicited="rst", name="random-rst")
    cone = NatSpec("EIM", "APDF", "preserve", tcp_unsolicited="rst", name="cone-rst")
    for left, right in ((rnd, cone), (cone, rnd)):
        results = run_pair(left, right, 2, trial_timeout=15, tcp=True)
        summary = [(r.ok, r.strategy, r.seconds, r.reason) for r in results]
        assert all(r.ok and r.strategy == "tcp-birthday" for r in results), summary
        assert all(r.odds >= 0.99999 and r.seconds is not None for r in results), summary


@pytest.mark.lab
def test_an_address_dependent_nat_opens_its_filter_to_a_random_nat():
    """The lab's "adm" preset (address-dependent mapping and filtering, sequential) against a random
    NAT: no SYN can be aimed at the random side, but the ADM side's one low-TTL SYN to its address
    opens the filter for every port of it, and the random side's connect() to the ADM side's
    predicted window is accepted."""
    from nattrav.lab.matrix import run_pair

    for left, right in (("adm", "symmetric-random"), ("symmetric-random", "adm")):
        results = run_pair(left, right, 2, trial_timeout=15, tcp=True)
        summary = [(r.ok, r.strategy, r.seconds, r.reason) for r in results]
        assert all(r.ok and r.strategy == "tcp-address-open" for r in results), summary
        # the random side's window held the port the ADM NAT really gave the opener's flow
        side = "prediction_b" if left == "adm" else "prediction_a"
        assert all(r.extra[side] and r.extra[side]["hit"] for r in results), summary


@pytest.mark.lab
async def test_bulk_transfer_over_punched_tcp_stream_arrives_intact(seq_lab):
    lab = seq_lab
    lab.flush_conntrack()
    py = sys.executable
    server = lab.popen("server", [py, "-m", "nattrav.cli.server", "--listen", f"{lab.S1}:{SERVER_PORT}",
                                  "--stun", f"{lab.S1},{lab.S2}"])
    try:
        await trio.to_thread.run_sync(_wait_tcp, lab, lab.S1, SERVER_PORT, time.monotonic() + 10)
        rv = (lab.S1, SERVER_PORT)
        name = f"bulk{time.monotonic_ns() % 10**6}"
        a, b = await both_sides(lab, (tcp_listen, rv, name), (tcp_connect, rv, name, BULK, SEED, 20), timeout=60)
    finally:
        server.terminate()
        server.wait(10)
    assert "error" not in a and "error" not in b, (a, b)
    assert b["bytes"] == BULK
    assert b["sha256"] == a["sha256"] == a["echo"]
    # both NATs are symmetric: only a predicted simultaneous open gets through, and each side talks
    # to the other's public (NAT) address
    assert a["strategy"] == b["strategy"] == "tcp-simultaneous"
    assert a["peer"][0] == lab.wan_ip("b") and b["peer"][0] == lab.wan_ip("a")
    print(f"5 MB over the punched TCP stream in {a['seconds']:.3f} s "
          f"({BULK / a['seconds'] / 1e6:.1f} MB/s)")


@pytest.mark.lab
async def test_tcp_probes_outlast_three_lost_syns(seq_lab):
    """A probe waits out the kernel's SYN resends: here its first three SYNs to one server endpoint
    die at our NAT and the fourth is answered (Linux resends after 1, 2, 3 s with linear timeouts,
    else after 1, 3, 7 s). A probe that gave up at 3 s failed 14 TCP trials in 12,000 over wan50's
    1 % loss (bench/results/reliability.md, session 15)."""
    lab = seq_lab
    lab.flush_conntrack()
    py = sys.executable
    server = lab.popen("server", [py, "-m", "nattrav.cli.server", "--listen", f"{lab.S1}:{SERVER_PORT}",
                                  "--stun", f"{lab.S1},{lab.S2}"])
    table = f"ntdrop{time.monotonic_ns() % 10**6}"
    syn = "tcp flags & (syn | ack) == syn"
    try:
        await trio.to_thread.run_sync(_wait_tcp, lab, lab.S1, SERVER_PORT, time.monotonic() + 10)
        # a's NAT drops the first three SYNs towards S1:3478 (a SYN of a's is 60 bytes)
        lab.run("nat_a", ["nft", "-f", "-"], check=True, input=f"""
            table inet {table} {{
                chain hold {{
                    type filter hook forward priority -10;
                    ip daddr {lab.S1} tcp dport 3478 {syn} quota until 180 bytes counter drop
                    ip daddr {lab.S1} tcp dport 3478 {syn} counter accept
                }}
            }}""")
        ports, seconds = await lab.acall("a", _tcp_probes, [(lab.S1, 3478), (lab.S2, 3478), (lab.S1, 3479)],
                                         timeout=30)
        rules = lab.run("nat_a", ["nft", "list", "table", "inet", table], check=True).stdout
    finally:
        lab.run("nat_a", ["nft", "delete", "table", "inet", table])
        server.terminate()
        server.wait(10)
    dropped, passed = [int(n) for n in re.findall(r"counter packets (\d+)", rules)]
    assert (dropped, passed) == (3, 1), rules
    assert len(ports) == 3 and seconds >= 3.0
