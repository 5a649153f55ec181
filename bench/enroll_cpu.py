"""Server CPU per enrollment by key, sans-IO (no sockets): the challenge flow (challenge request,
then an enroll over its nonce) against one timed-proof enroll (proto/rendezvous/timed_proof.py).
The clients' signing is made beforehand or subtracted: only the server's work is timed (process
CPU time). Prints µs per enrollment for each, and their ratio, per round.

    .venv/bin/python bench/enroll_cpu.py [--peers 2000] [--rounds 3]
"""

from __future__ import annotations

import argparse
import secrets
import time

from nattrav.identity import Identity
from nattrav.proto.rendezvous import RendezvousServer, encode, make
from nattrav.proto.rendezvous.names import enroll_proof
from nattrav.proto.rendezvous.timed_proof import NONCE_BYTES, audience, make_proof

LOCAL = ("198.51.100.1", 7000)


def _server(n: int, wall: float) -> RendezvousServer:
    return RendezvousServer(wall_clock=lambda: wall, max_conns_per_source=n + 1)


def _open(s: RendezvousServer, conn: int) -> None:
    s.connection_made(conn, (f"203.0.113.{conn % 250}", 1000 + conn), 1.0, local=LOCAL)


def challenge_flow(ids: list[Identity]) -> float:
    s = _server(len(ids), time.time())
    cpu = 0.0
    for conn, ident in enumerate(ids, 1):
        name = ident.peer_id.text
        t = time.process_time()
        _open(s, conn)
        s.receive_data(conn, encode(make("challenge", id=1)), 1.0)
        nonce = s.actions()[-1].msg["nonce"]
        cpu += time.process_time() - t
        sig = ident.sign(enroll_proof(nonce, name))  # the client's part: not timed
        t = time.process_time()
        s.receive_data(conn, encode(make("enroll", id=2, name=name, key=ident.peer_id.key_bytes, sig=sig)), 1.0)
        s.actions()
        cpu += time.process_time() - t
    assert s.stats["enrolled"] == len(ids), s.stats
    return cpu / len(ids)


def timed(ids: list[Identity]) -> float:
    wall = time.time()
    s = _server(len(ids), wall)
    frames = [encode(make("enroll", id=1, name=i.peer_id.text, **make_proof(
        i.sign, i.peer_id.key_bytes, secrets.token_bytes(NONCE_BYTES), wall, audience(*LOCAL), i.peer_id.text).fields()))
        for i in ids]
    t = time.process_time()
    for conn, frame in enumerate(frames, 1):
        _open(s, conn)
        s.receive_data(conn, frame, 1.0)
        s.actions()
    cpu = time.process_time() - t
    assert s.stats["enrolled"] == len(ids) and s.stats["timed_enrolls"] == len(ids), s.stats
    return cpu / len(ids)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--peers", type=int, default=2000)
    p.add_argument("--rounds", type=int, default=3)
    args = p.parse_args()
    ids = [Identity.generate() for _ in range(args.peers)]
    for r in range(args.rounds):
        old, new = challenge_flow(ids), timed(ids)
        print(f"round {r}: challenge flow {old * 1e6:.1f} µs/enroll, timed proof {new * 1e6:.1f} µs/enroll, "
              f"ratio {new / old:.2f}")


if __name__ == "__main__":
    main()
