"""A plain ICE agent (aioice, RFC 8445; STUN only, no TURN) as the baseline beside nattrav.

It meets its peer through OUR rendezvous server (the ICE credentials and candidates travel in the
node info, as SDP lines would through a signalling server) and uses OUR STUN server for its
server-reflexive candidates, so the only difference from a nattrav trial is how the path is found.
Runs where a nattrav matrix agent would (inside a lab host) and prints the same JSON lines:
{"event": "ready"} for the listener, {"event": "connected"} once ICE's checks chose a pair, then
one {"event": "trial", ...} per trial. bench/cold.py starts one connecting agent per trial (a cold
process, like `nattrav-fast -d`) and times it from its start to the "connected" line.

aioice runs on asyncio in a thread of its own; the rendezvous client runs on Trio in the main
thread. Time per trial: from the start of the trial (candidate gathering) to ICE's connect() done and
one authenticated data round trip, the same "cold" span a nattrav trial measures.

    python bench/ice_agent.py --server 198.51.100.1:7000 --role listen --name n1 --trials 3
    python bench/ice_agent.py --server 198.51.100.1:7000 --role connect --name n1 --trials 3
    python bench/ice_agent.py --server 198.51.100.1:7000 --role connect --name n1 --first 2   # trial 2 only

It needs aioice (`.venv/bin/python -m pip install aioice`), which nattrav itself does not.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import threading
import time
from typing import Any

import trio

import aioice
from nattrav.errors import RendezvousError, UnknownPeer, UsageError
from nattrav.hostport import parse_hostport
from nattrav.io import rendezvous_client as rv

STUN_PORT = 3478  # the server default; --stun-port for a test server
ECHO_TRIES, ECHO_WAIT = 10, 0.5  # pings and seconds to wait for each pong


class AsyncioThread:
    """An asyncio loop in a daemon thread; `run(coro)` awaits a coroutine on it from Trio."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        threading.Thread(target=self.loop.run_forever, daemon=True).start()

    async def run(self, coro) -> Any:
        fut = asyncio.run_coroutine_threadsafe(coro, self.loop)
        try:
            return await trio.to_thread.run_sync(fut.result, abandon_on_cancel=True)
        except trio.Cancelled:
            fut.cancel()
            raise


def _describe(conn: aioice.Connection) -> dict[str, Any]:
    return {"ufrag": conn.local_username, "pwd": conn.local_password,
            "candidates": [c.to_sdp() for c in conn.local_candidates]}


async def _remote(conn: aioice.Connection, info: dict[str, Any]) -> None:
    conn.remote_username = info["ufrag"]
    conn.remote_password = info["pwd"]
    for line in info["candidates"]:
        await conn.add_remote_candidate(aioice.Candidate.from_sdp(line))
    await conn.add_remote_candidate(None)  # end of candidates


async def _gather(conn: aioice.Connection) -> None:
    await conn.gather_candidates()


async def _connect_and_echo(conn: aioice.Connection, info: dict[str, Any], controlling: bool,
                            connected: Any) -> str:
    await _remote(conn, info)
    await conn.connect()
    connected()
    # one data round trip over the chosen pair: ICE's connectivity checks are authenticated
    # (MESSAGE-INTEGRITY with the peer's password), the data path is what a user gets. Datagrams get
    # lost on a lossy path: the ping is sent again until the pong comes, and the other side answers
    # every ping for a while (as the nattrav trial's listener and echo do)
    if controlling:
        for _ in range(ECHO_TRIES):
            await conn.send(b"ping")
            try:
                got = await asyncio.wait_for(conn.recv(), ECHO_WAIT)
                break
            except asyncio.TimeoutError:
                continue
        else:
            raise asyncio.TimeoutError(f"no pong after {ECHO_TRIES} pings")
    else:
        got = await asyncio.wait_for(conn.recv(), ECHO_TRIES * ECHO_WAIT)
        await conn.send(b"pong")
        try:
            while True:
                await asyncio.wait_for(conn.recv(), 2 * ECHO_WAIT)
                await conn.send(b"pong")
        except asyncio.TimeoutError:
            pass
    pair = conn._nominated.get(1) if hasattr(conn, "_nominated") else None
    kind = getattr(getattr(pair, "remote_candidate", None), "type", None)
    return f"{got.decode(errors='replace')}:{kind or 'unknown'}"


async def _close(conn: aioice.Connection) -> None:
    await conn.close()


async def agent(args: argparse.Namespace) -> None:
    aio = AsyncioThread()
    server = args.server
    stun = (server[0], args.stun_port)

    def line(d: dict[str, Any]) -> None:
        print(json.dumps(d, default=str), flush=True)

    for i in range(args.first, args.first + args.trials):
        name = f"{args.name}-{i}"
        row: dict[str, Any] = {"event": "trial", "trial": i, "ok": False, "strategy": "ice"}
        conn = aioice.Connection(ice_controlling=args.role == "connect", stun_server=stun, use_ipv6=False)
        t0 = time.monotonic()

        def connected(trial: int = i) -> None:  # called on the asyncio thread, the Trio one waits meanwhile
            line({"event": "connected", "trial": trial})
        try:
            with trio.fail_after(args.trial_timeout + (args.wait if args.role == "listen" else 0.0)):
                if args.role == "listen":
                    async with rv.open_rendezvous(server, name=name) as client:
                        line({"event": "ready", "trial": i})
                        offer = await client.next_offer()
                        t0 = time.monotonic()  # the trial starts when the peer asks
                        await aio.run(_gather(conn))
                        await client.update_info({"ice": _describe(conn)})
                        await client.accept(offer)
                        got = await aio.run(_connect_and_echo(conn, offer.peer_info["ice"], False, connected))
                else:
                    await aio.run(_gather(conn))
                    async with rv.open_rendezvous(server, info={"ice": _describe(conn)}) as client:
                        while True:
                            asked = time.monotonic()
                            try:
                                session = await client.connect(name, timeout=args.trial_timeout)
                                break
                            except UnknownPeer:  # the listener has not enrolled this trial yet
                                await trio.sleep(0.05)
                                t0 += time.monotonic() - asked  # waiting for it is not ICE's time
                        got = await aio.run(_connect_and_echo(conn, session.peer_info["ice"], True, connected))
            row.update(ok=True, seconds=round(time.monotonic() - t0, 4), pair=got.split(":", 1)[1])
        except (trio.TooSlowError, RendezvousError, ConnectionError, asyncio.TimeoutError, KeyError,
                TypeError, ValueError) as exc:
            row["reason"] = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
            row["seconds"] = round(time.monotonic() - t0, 4)
        finally:
            try:
                await aio.run(_close(conn))
            except Exception:  # a connection that never came up may fail to close; the trial is over
                pass
        line(row)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--server", required=True,
                   help=f"rendezvous server HOST[:PORT] (default port {rv.DEFAULT_PORT}); STUN on the same host")
    p.add_argument("--role", choices=("listen", "connect"), required=True)
    p.add_argument("--name", required=True, help="the listener's name prefix (trial i uses NAME-i)")
    p.add_argument("--stun-port", type=int, default=STUN_PORT)
    p.add_argument("--trials", type=int, default=1)
    p.add_argument("--first", type=int, default=0, help="number of the first trial (default 0)")
    p.add_argument("--trial-timeout", type=float, default=15.0)
    p.add_argument("--wait", type=float, default=0.0, metavar="S",
                   help="a listener waits this much longer for its peer than a trial may take (default 0)")
    args = p.parse_args(argv)
    try:
        args.server = parse_hostport(args.server, rv.DEFAULT_PORT)
    except UsageError as exc:
        p.error(f"--server: {exc}")
    trio.run(agent, args)


if __name__ == "__main__":
    main()
