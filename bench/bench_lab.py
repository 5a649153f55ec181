"""How long a two-NAT lab takes to come up and go down (goal: under 2 s each), against a baseline;
and how many packets a second the delay line carries (goal: >= 200 k/s), against a plain veth.

    .venv/bin/python bench/bench_lab.py [--rounds 10]          # prints times and ratios (root)
    .venv/bin/python bench/bench_lab.py --delay-line           # the delay line vs a plain veth
    .venv/bin/python -m pytest bench/bench_lab.py --benchmark-only

Delay line: host a (a public host) fires UDP bursts with the C core (sendmmsg, 28-byte payloads) at
an address the router would blackhole; a netdev ingress rule on the router counts and drops them on
arrival. The same lab without the line (a plain veth from a to the router) is the baseline, in the
same run: bursts paced at 100-400 k packets/s and one unpaced, each packet counted where it lands. The
sender runs on CPU 0 and the line on CPU 1 (--no-pin leaves it to the scheduler).

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
from nattrav.lab.probe_path import c_burst
from nattrav.lab.shape import LinkSpec, Shape
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


SINK = "198.51.100.200"  # in the router's blackholed range: never leaves the router
COUNT_RULES = """table netdev bench {
  counter arrived { }
  chain ingress {
    type filter hook ingress device "to_a" priority 0; policy accept;
    ether type ip udp dport 9 counter name arrived drop
  }
}
"""


def _arrived(lab: Lab) -> int:
    out = lab.run("router", ["nft", "list", "counter", "netdev", "bench", "arrived"]).stdout
    return int(out.split("packets")[1].split()[0])


def _cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime + stime


def delay_line_runs(link: LinkSpec | None, bursts: list[tuple[int, float | None]], pin: bool) -> list[dict]:
    shape = Shape(link_a=link, name="bench") if link is not None else None
    with Lab("none", "none", shape=shape) as lab:
        lab.run("router", ["nft", "-f", "-"], input=COUNT_RULES, check=True)
        line = lab.delay_lines.get("w_a")
        if line is not None and pin:
            os.sched_setaffinity(line.pid, {1})  # the line on one core, the sender on the other
        out = []
        for count, rate in bursts:
            before = _arrived(lab)
            cpu0 = _cpu_seconds(line.pid) if line else 0.0
            got = lab.call("a", c_burst, SINK, count, rate, 0 if pin else None, timeout=120)
            time.sleep(0.3 + (link.delay_ms / 1e3 if link else 0))  # let the line drain
            got["arrived"] = _arrived(lab) - before
            got["line_cpu"] = _cpu_seconds(line.pid) - cpu0 if line else None
            got["rate"] = rate
            out.append(got)
        return out


def delay_line_main(rounds: int, pin: bool = True) -> int:
    bursts = [(100_000, 100e3), (200_000, 200e3), (300_000, 300e3), (400_000, 400e3), (400_000, None)]
    setups = {
        "plain veth (baseline)": None,
        "delay line, no delay": LinkSpec(),
        "delay line, 10 ms ±2 ms": LinkSpec(delay_ms=10, jitter_ms=2, limit=50_000),
    }
    results: dict[str, list[list[dict]]] = {name: [] for name in setups}
    for _ in range(rounds):  # interleaved, so load from others hits every setup alike
        for name, link in setups.items():
            results[name].append(delay_line_runs(link, bursts, pin))
    print(f"delay line vs plain veth: C bursts of 28-byte UDP payloads from host a, counted on arrival "
          f"at the router; median of {rounds} rounds" + ("; sender on CPU 0, line on CPU 1" if pin else ""))
    head = "".join(f"{'%dk/s' % (r / 1e3) if r else 'unpaced':>17}" for _, r in bursts)
    print(f"{'':26}{head}")
    delivered = {}
    for name, runs in results.items():
        cells = []
        for k in range(len(bursts)):
            frac = statistics.median(run[k]["arrived"] / run[k]["sent"] for run in runs)
            pps = statistics.median(run[k]["arrived"] / max(run[k]["span"], 1e-9) for run in runs)
            cells.append(f"{100 * frac:6.2f}% {pps / 1e3:5.0f}k/s ")
            delivered[(name, k)] = pps
        print(f"{name:26}" + "".join(f"{c:>17}" for c in cells))
    last = len(bursts) - 1
    base = delivered[("plain veth (baseline)", last)]
    print("(percent: packets counted at the router / packets sent; k/s: those packets over the sender's span)")
    for name in list(setups)[1:]:
        print(f"ratio {name} / plain veth (unpaced, delivered packets/s): {delivered[(name, last)] / base:.2f}")
    # the sender and the line share 2 loaded cores: the line's own CPU per packet says what it could
    # carry with a core to itself
    for name in list(setups)[1:]:
        runs = results[name]
        cost = statistics.median(run[k]["line_cpu"] / run[k]["arrived"] for run in runs for k in range(len(bursts))
                                 if run[k]["arrived"] and run[k]["line_cpu"])
        print(f"{name}: {cost * 1e6:.2f} us of CPU a packet (receive + schedule + send) -> "
              f"{1 / cost / 1e3:.0f}k packets/s on one core")
    return 0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=10)
    ap.add_argument("--delay-line", action="store_true", help="the delay line's throughput vs a plain veth")
    ap.add_argument("--no-pin", action="store_true", help="let the scheduler place sender and line (default: "
                    "sender on CPU 0, line on CPU 1)")
    a = ap.parse_args(argv)
    if os.geteuid() != 0:
        print("bench_lab: needs root (network namespaces)", file=sys.stderr)
        return 2
    if a.delay_line:
        return delay_line_main(max(1, min(a.rounds, 5)) if a.rounds != 10 else 3, pin=not a.no_pin)
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
