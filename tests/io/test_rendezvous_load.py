"""A short slice of bench/bench_rendezvous_load.py in CI: nattrav-server as its own process with
hundreds of enrolled peers in other processes, under slowloris, garbage and abrupt disconnects at
once. Checks what must hold on any machine (every legitimate connect succeeds, no peer is dropped,
the server survives without a traceback); the timings are the bench's business."""

from __future__ import annotations

import json
import pathlib
import subprocess
import sys

BENCH = pathlib.Path(__file__).resolve().parents[2] / "bench" / "bench_rendezvous_load.py"


def test_legitimate_peers_all_connect_under_the_attack_mix(tmp_path):
    out = tmp_path / "load.json"
    cp = subprocess.run(
        [sys.executable, str(BENCH), "--peers", "400", "--connects", "50", "--holders", "1",
         "--slowloris", "60", "--garbage", "100", "--abrupt", "40", "--attack-warmup", "1.5",
         "--paced", "1", "--json", str(out)],
        capture_output=True, text=True, timeout=300)
    assert cp.returncode == 0, cp.stderr[-3000:]
    r = json.loads(out.read_text())
    assert r["enrolled"] == 400 and not r["enroll_failures"]
    for phase in ("burst", "paced"):
        assert r[phase]["ok"] == 50 and not r[phase]["errors"], r[phase]
    assert r["dropped_peers"] == 0
    assert r["server_alive"] and r["server_tracebacks"] == 0
    a = r["attack"]
    assert a["slowloris_opened"] >= 60 and a["garbage"] > 50 and a["abrupt"] > 10, a  # the attack ran
    assert 0 < r["rss_per_peer_kb"]
    print(cp.stdout)
