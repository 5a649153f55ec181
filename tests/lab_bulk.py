"""Bulk transfers between two lab hosts through the API, shared by the lab tests that need one (TCP
punched, TCP relayed): the listener hashes what arrives and sends the hash back, the initiator sends
`size` seeded bytes and checks the echo. The functions run inside the hosts (lab.acall); a side's
failure comes back as a result with its traceback, so a test can show both sides' stories."""

from __future__ import annotations

import hashlib
import random
import traceback
from collections.abc import Awaitable, Callable
from typing import Any

import trio


def _result(main: Callable[[], Awaitable[dict]], events: list) -> dict:
    try:
        out = trio.run(main)
    except Exception as exc:  # noqa: BLE001 -- reported beside the other side's result
        out = {"error": f"{type(exc).__name__}: {exc}", "trace": traceback.format_exc()[-6000:]}
    plain = (str, int, float, bool, list, tuple, dict, type(None))  # what crosses back as a pickle
    out["events"] = [(phase, {k: v for k, v in detail.items() if isinstance(v, plain)}) for phase, detail in events]
    return out


def _describe(stream: Any) -> dict:
    """What the stream under the secure layer (punched or relayed) says about the path."""
    punched = getattr(stream, "punched", None) or stream
    return {"strategy": punched.strategy.value, "via": getattr(punched, "via", "direct"),
            "peer": list(punched.peer_addr)}


def tcp_listen(server: tuple[str, int], name: str) -> dict:
    """listen_tcp under `name`, take one peer, hash its bytes, answer the hash."""
    from nattrav.api import listen_tcp

    events: list = []

    async def main() -> dict:
        async with listen_tcp(server, name=name, on_event=lambda p, d: events.append((p, d))) as lst:
            async with lst.accept() as stream:
                h, n = hashlib.sha256(), 0
                while chunk := await stream.receive_some(1 << 16):
                    h.update(chunk)
                    n += len(chunk)
                await stream.send_all(h.hexdigest().encode())
                await stream.send_eof()
                # as nattrav-fast does: leave once the peer has read it all (a TURN relay that sees
                # a connection close with bytes still queued resets the other leg)
                await stream.wait_delivered(30)
                return {"sha256": h.hexdigest(), "bytes": n, **_describe(stream)}

    return _result(main, events)


def tcp_connect(server: tuple[str, int], name: str, size: int, seed: int, timeout: float = 30) -> dict:
    """connect_tcp to `name` (retrying until it has enrolled), send `size` seeded bytes, read the echo."""
    from nattrav.api import connect_tcp
    from nattrav.errors import UnknownPeer

    blob = random.Random(seed).randbytes(size)
    events: list = []

    async def main() -> dict:
        while True:
            try:
                async with connect_tcp(server, name, timeout=timeout,
                                       on_event=lambda p, d: events.append((p, d))) as stream:
                    t0 = trio.current_time()
                    await stream.send_all(blob)
                    await stream.send_eof()
                    echo = b""
                    while chunk := await stream.receive_some(1024):
                        echo += chunk
                    return {"sha256": hashlib.sha256(blob).hexdigest(), "echo": echo.decode(),
                            "seconds": trio.current_time() - t0, **_describe(stream)}
            except UnknownPeer:
                await trio.sleep(0.05)  # the listener has not enrolled yet

    return _result(main, events)


async def both_sides(lab: Any, listener: tuple, initiator: tuple, *, timeout: float = 120,
                     during: Callable[[], Awaitable[None]] | None = None) -> tuple[dict, dict]:
    """Run `listener` = (fn, *args) in host b and `initiator` in host a at once (and `during` beside
    them); returns (a's result, b's result)."""
    out: dict[str, dict] = {}

    async def side(node: str, call: tuple) -> None:
        out[node] = await lab.acall(node, call[0], *call[1:], timeout=timeout)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(side, "b", listener)
        nursery.start_soon(side, "a", initiator)
        if during is not None:
            nursery.start_soon(during)
    return out["a"], out["b"]
