"""Two hosts behind lab NATs punch each other with the predictor, the planner and the executor.

Observations are hand-fed: each host asks the lab's own echo responder (not nattrav's STUN code) on
S1 and S2 which public port it saw, from ONE socket, and builds the behaviour report from that. The
test process plays the rendezvous: it swaps the reports and hands both a session key and a start
delay over the hosts' stdin.
"""

import json
import os
import select
import subprocess
import sys
import time

import pytest

from nattrav.lab.probe import PORTS, start_responder
from nattrav.lab.pytest_support import lab_or_skip

pytestmark = pytest.mark.lab

HOST = r'''
import json, socket, sys, trio
from nattrav.io.punch import PunchFailed, Session, punch
from nattrav.proto.plan import plan

async def main():
    cfg = json.loads(sys.stdin.readline())
    sock = trio.socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    await sock.bind(("0.0.0.0", 0))
    t0 = trio.current_time()
    samples, ip = [], None
    for n, server in enumerate(cfg["servers"]):
        ans = None
        for _ in range(5):
            await sock.sendto(json.dumps({"op": "echo", "id": n}).encode(), tuple(server))
            with trio.move_on_after(0.3):
                while True:
                    data, _ = await sock.recvfrom(2048)
                    msg = json.loads(data)
                    if msg.get("id") == n:
                        ans = msg
                        break
            if ans:
                break
        ip = ans["saw"][0]
        samples.append({"port": ans["saw"][1], "t": trio.current_time() - t0})
    delta = samples[-1]["port"] - samples[0]["port"]
    report = dict(cfg["words"], public_ip=ip, one_socket=samples, delta=delta,
                  allocation="sequential" if delta else "preserve")
    print(json.dumps(report), flush=True)
    peer = json.loads(await trio.to_thread.run_sync(sys.stdin.readline))
    pl = plan(report, peer["report"], cfg["role"])
    session = Session(bytes.fromhex(peer["key"]), cfg["role"], trio.current_time() + peer["delay"])
    out = {"plan": pl.params, "local_targets": list(pl.primary.local.targets),
           "remote_targets": list(pl.primary.remote.targets), "reason": pl.reason}
    t1 = trio.current_time()
    try:
        path = await punch(sock, pl, session, low_ttl=cfg["low_ttl"])
    except PunchFailed as exc:
        out.update(ok=False, error=str(exc))
        print(json.dumps(out), flush=True)
        return
    out.update(ok=True, peer=list(path.peer_addr), rtt=path.rtt, strategy=path.strategy.value,
               connect_s=trio.current_time() - t1, local_port=sock.getsockname()[1])
    with trio.fail_after(5):
        if cfg["role"] == "first":
            await path.send(b"hello from a")
            out["got"] = (await path.receive()).decode()
        else:
            out["got"] = (await path.receive()).decode()
            await path.send(b"hello from b")
    print(json.dumps(out), flush=True)
    await trio.sleep(0.2)
    await path.aclose()

trio.run(main)
'''

WORDS = {
    "symmetric-seq": {"mapping": "APDM", "filtering": "APDF"},
    "symmetric-seq-7": {"mapping": "APDM", "filtering": "APDF"},
    "port-restricted": {"mapping": "EIM", "filtering": "APDF"},
}


def _line(proc, timeout):
    r, _, _ = select.select([proc.stdout], [], [], timeout)
    if not r:
        raise AssertionError(f"host said nothing in {timeout} s; stderr: {_err(proc)}")
    line = proc.stdout.readline()
    if not line:
        raise AssertionError(f"host exited: {_err(proc)}")
    return json.loads(line)


def _err(proc):
    if proc.poll() is None:
        proc.kill()
    return proc.stderr.read().decode(errors="replace")[-2000:]


def punch_once(lab, left, right):
    servers = [[lab.S1, PORTS[0]], [lab.S2, PORTS[0]]]
    procs = {}
    for host, role, preset in (("a", "first", left), ("b", "second", right)):
        p = lab.popen(host, [sys.executable, "-c", HOST], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                      stderr=subprocess.PIPE)
        cfg = {"servers": servers, "words": WORDS[preset], "role": role, "low_ttl": lab.low_ttl_from(host)}
        p.stdin.write((json.dumps(cfg) + "\n").encode())
        p.stdin.flush()
        procs[host] = p
    reports = {h: _line(p, 10) for h, p in procs.items()}
    key = os.urandom(32).hex()
    for h, other in (("a", "b"), ("b", "a")):
        procs[h].stdin.write((json.dumps({"report": reports[other], "key": key, "delay": 0.3}) + "\n").encode())
        procs[h].stdin.flush()
    results = {h: _line(p, 15) for h, p in procs.items()}
    for p in procs.values():
        p.wait(5)
    return reports, results


@pytest.fixture(scope="module", params=[("symmetric-seq", "symmetric-seq"), ("port-restricted", "symmetric-seq-7")],
                ids=lambda p: f"{p[0]}~{p[1]}")
def lab(request):
    left, right = request.param
    lab = lab_or_skip(left, right)
    try:
        start_responder(lab)
        yield left, right, lab
    finally:
        lab.down()


def test_predicted_punch_through_lab_nats(lab):
    left, right, lab = lab
    for trial in range(3):
        if trial:
            lab.flush_conntrack()
        t0 = time.monotonic()
        reports, res = punch_once(lab, left, right)
        a, b = res["a"], res["b"]
        assert a["ok"] and b["ok"], (a, b)
        assert a["strategy"] == b["strategy"] == "predicted"
        assert a["got"] == "hello from b" and b["got"] == "hello from a"
        # each side's peer is the other's public NAT address, at a port the plan predicted
        assert a["peer"][0] == lab.wan_ip(lab.nats("b")[0]) and b["peer"][0] == lab.wan_ip(lab.nats("a")[0])
        opener, other = (a, b) if a["plan"]["local_opens"] else (b, a)
        assert opener["peer"][1] in opener["local_targets"] or opener["peer"][1] in other["remote_targets"]
        assert a["connect_s"] < 1.5 and b["connect_s"] < 1.5, (a["connect_s"], b["connect_s"])
        assert 0 < a["rtt"] < 0.5
        assert time.monotonic() - t0 < 20
