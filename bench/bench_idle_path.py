"""Does an idle secure path stay usable? (issue 15: "with the NAT's UDP mapping timeout at 20 s, an
idle path stays usable for 5 minutes")

Brings up the NAT lab with both NATs' UDP mapping timeout at --nat-timeout seconds, connects two
nattrav-fast peers (QUIC, as a user runs them), keeps the path idle for --idle seconds, then sends a
line each way. Prints whether both arrived, the keepalive interval the path chose, and the
receiver's counters. Needs root (the lab). The CI test runs the short form (8 s timeout, 30 s idle:
tests/io/test_secure_lab.py).

    .venv/bin/python bench/bench_idle_path.py                  # 20 s timeout, 300 s idle
    .venv/bin/python bench/bench_idle_path.py --idle 60 --nat-timeout 8
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # for tests.secure_lab

from tests.secure_lab import idle_path_survives  # noqa: E402


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--nat-timeout", type=int, default=20, help="NAT UDP mapping timeout, seconds (default 20)")
    p.add_argument("--idle", type=float, default=300.0, help="seconds the path stays idle (default 300)")
    a = p.parse_args()
    if os.geteuid() != 0:
        print("bench_idle_path: needs root (the NAT lab)", file=sys.stderr)
        return 2
    t0 = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="nattrav-idle-") as tmp:
        r = idle_path_survives(Path(tmp), a.nat_timeout, a.idle)
    ok = r["codes"] == (0, 0) and r["b_got"] == b"after the idle spell\n"
    print(json.dumps({"ok": ok, "nat_timeout": a.nat_timeout, "idle": a.idle, "keepalive": r["keepalive"],
                      "exit_codes": r["codes"], "b_delivered": r["b_delivered"],
                      "seconds": round(time.monotonic() - t0, 1)}, default=str))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
