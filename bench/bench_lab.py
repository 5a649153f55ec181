"""How long a two-NAT lab takes to come up and go down (goal: under 2 s each), against a baseline.

    .venv/bin/python bench/bench_lab.py [--rounds 10]          # prints times and ratios (root)
    .venv/bin/python -m pytest bench/bench_lab.py --benchmark-only

The baseline builds the very same topology (namespaces, veths, addresses, routes, sysctls, rulesets) the
common way, one `ip` / `sysctl` / `nft` subprocess per step, in the same run; the ratio says what
doing it over netlink from setns'ed threads buys.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time

import pytest

from nattrav.lab import Lab
from nattrav.lab.nftables import render, sysctls
from nattrav.lab.topology import build_topology

PAIR = ("symmetric-seq", "port-restricted")


def lab_cycle(left=PAIR[0], right=PAIR[1], **kw) -> tuple[float, float]:
    lab = Lab(left, right, **kw)
    t0 = time.perf_counter()
    lab.up()
    t1 = time.perf_counter()
    lab.down()
    t2 = time.perf_counter()
    return t1 - t0, t2 - t1


def baseline_cycle(left=PAIR[0], right=PAIR[1]) -> tuple[float, float]:
    """The same topology with one subprocess per step (what a shell script would do)."""
    probe = Lab(left, right)
    topo = build_topology(probe.left, probe.right)
    prefix = f"nt-bench{os.getpid()}-"
    ns = {name: prefix + name for name in topo.nodes}

    def sh(*argv, input=None):
        subprocess.run(argv, check=True, capture_output=True, text=True, input=input)

    t0 = time.perf_counter()
    try:
        for name in topo.nodes:
            sh("ip", "netns", "add", ns[name])
            sh("ip", "-n", ns[name], "link", "set", "lo", "up")
            sh("ip", "netns", "exec", ns[name], "sysctl", "-qw", "net.ipv6.conf.all.disable_ipv6=1")
            if topo.nodes[name].forwarding:
                sh("ip", "netns", "exec", ns[name], "sysctl", "-qw", "net.ipv4.ip_forward=1")
        for k, link in enumerate(topo.links):
            sh("ip", "-n", ns[link.a], "link", "add", link.a_if, "index", str(100 + k), "type", "veth",
               "peer", "name", link.b_if, "netns", ns[link.b])
        for a in topo.addrs:
            sh("ip", "-n", ns[a.node], "addr", "add", f"{a.address}/32", "dev", a.ifname)
        for link in topo.links:
            sh("ip", "-n", ns[link.a], "link", "set", link.a_if, "up")
            sh("ip", "-n", ns[link.b], "link", "set", link.b_if, "up")
        for r in topo.routes:
            if r.blackhole:
                sh("ip", "-n", ns[r.node], "route", "add", "blackhole", r.dst)
            elif r.gateway:
                sh("ip", "-n", ns[r.node], "route", "add", r.dst, "via", r.gateway, "dev", r.ifname)
            else:
                sh("ip", "-n", ns[r.node], "route", "add", r.dst, "dev", r.ifname, "scope", "link")
        for node in topo.nats():
            sh("ip", "netns", "exec", ns[node.name], "nft", "-f", "-",
               input=render(node.spec, wan_ip=node.wan_ip, lan_net=node.lan_net))
            for key, value in sysctls(node.spec).items():
                sh("ip", "netns", "exec", ns[node.name], "sysctl", "-qw", f"{key.replace('/', '.')}={value}")
        t1 = time.perf_counter()
    finally:
        t_del = time.perf_counter()
        for name in topo.nodes:
            subprocess.run(["ip", "netns", "del", ns[name]], capture_output=True)
        t2 = time.perf_counter()
    return t1 - t0, t2 - t_del


def _need_root():
    from nattrav.lab.pytest_support import require_lab

    require_lab()


@pytest.mark.lab
@pytest.mark.benchmark(group="two-NAT lab: up + down")
def test_lab_up_down(benchmark):
    _need_root()
    benchmark.pedantic(lab_cycle, rounds=10, warmup_rounds=1)


@pytest.mark.lab
@pytest.mark.benchmark(group="two-NAT lab: up + down")
def test_baseline_ip_subprocesses_up_down(benchmark):
    _need_root()
    benchmark.pedantic(baseline_cycle, rounds=5, warmup_rounds=1)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=10)
    a = ap.parse_args(argv)
    if os.geteuid() != 0:
        print("bench_lab: needs root (network namespaces)", file=sys.stderr)
        return 2
    lab_cycle()  # warm caches (modules, pyroute2 import)
    rows = {
        "lab (netlink, setns threads)": [lab_cycle() for _ in range(a.rounds)],
        "lab, cgnat + 2 hosts/NAT": [lab_cycle("cgnat", "symmetric-seq-7", hosts_per_nat=2) for _ in range(a.rounds)],
        "baseline (one subprocess a step)": [baseline_cycle() for _ in range(max(3, a.rounds // 2))],
    }
    print(f"two-NAT lab ({PAIR[0]} | {PAIR[1]}), {a.rounds} rounds, goal < 2 s each way")
    print(f"{'':34} {'up median':>10} {'up max':>8} {'down median':>12} {'down max':>9}")
    for name, vals in rows.items():
        ups, downs = [v[0] for v in vals], [v[1] for v in vals]
        print(f"{name:34} {statistics.median(ups) * 1e3:8.0f}ms {max(ups) * 1e3:6.0f}ms "
              f"{statistics.median(downs) * 1e3:10.1f}ms {max(downs) * 1e3:7.1f}ms")
    lab_up = statistics.median(v[0] for v in rows["lab (netlink, setns threads)"])
    base_up = statistics.median(v[0] for v in rows["baseline (one subprocess a step)"])
    print(f"ratio baseline/lab (up): {base_up / lab_up:.1f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
