"""Thin Trio driver for one STUN transaction: `binding()` runs it, validated, on a caller's socket
(io/stun_discover.py's `discover()` runs the RFC 5780 tests with it).

The socket passed to binding() stays open and bound afterwards: the mapping it just learned belongs to
that socket, and a punch must leave from it (a new socket gets a new mapping on most NATs).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable, Sequence

import trio

from ..errors import StunErrorResponse, StunTimeout
from ..proto.stun import binding_request
from ..proto.stun_attrs import Address
from ..proto.stun_client import RC, RM, RTO, BindingResult, State, Transaction, expected_source


async def run_transaction(sock: trio.socket.SocketType, tx: Transaction) -> BindingResult:
    """Drive one sans-IO transaction on `sock`; raises StunTimeout when it fails. One already
    started left before (io/prediscover.py) and is not sent again: its schedule runs on; one its
    queued replies already answered returns at once."""
    if tx.state is State.DONE and tx.result is not None:
        return tx.result
    if tx.state is State.IDLE:
        await sock.sendto(tx.start(trio.current_time()), tx.dest)
    while True:
        assert tx.deadline is not None
        with trio.move_on_at(tx.deadline):
            try:
                data, src = await sock.recvfrom(65536)
            except OSError:
                # an ICMP error left on the socket (port unreachable, TTL exceeded): not our answer
                tx.discarded["icmp_error"] += 1
                continue
            result = tx.receive(data, src, trio.current_time())
            if result is not None:
                return result
            continue
        again = tx.timeout(trio.current_time())
        if again is None:
            raise StunTimeout(
                f"no valid STUN reply from {tx.dest[0]}:{tx.dest[1]} after {tx.sent} requests",
                tx.discarded,
                tx.unexpected_sources,
            )
        try:
            await sock.sendto(again, tx.dest)
        except OSError:
            tx.discarded["send_error"] += 1


async def run_transactions(jobs: Sequence[tuple[trio.socket.SocketType, Transaction]], *,
                           stagger: float | Sequence[float] = 0.0,
                           sent: Callable[[], None] | None = None) -> list[BindingResult | None]:
    """Run many transactions at once, on one socket or several: each (socket, transaction) pair's
    result in order, None for one that failed. First requests leave in the list's order, `stagger`
    seconds apart: a NAT numbers new flows in the order their first packets reach it, so the order
    of the list is the order of the mappings (a sequence gives each gap: gap k before job k+1). One
    reader per socket hands each reply to the
    transaction whose ID it carries; each transaction keeps its own retransmission schedule.
    `sent()` is called once every first request has left. A transaction already started left before
    (io/presample.py: sent before the process imported Trio, adopted here) and is not sent again;
    its schedule runs on from when it left."""
    for i, (sock, tx) in enumerate(jobs):
        if tx.state is not State.IDLE:
            continue
        gap = stagger if isinstance(stagger, (int, float)) else (stagger[i - 1] if i - 1 < len(stagger) else 0.0)
        if i and gap > 0:
            await trio.sleep(gap)
        try:
            await sock.sendto(tx.start(trio.current_time()), tx.dest)
        except OSError:
            tx.discarded["send_error"] += 1  # retransmitted on schedule
    if sent is not None:
        sent()
    per_socket: dict[int, tuple[trio.socket.SocketType, list[Transaction]]] = {}
    for sock, tx in jobs:
        per_socket.setdefault(id(sock), (sock, []))[1].append(tx)
    async with trio.open_nursery() as nursery:
        for sock, txs in per_socket.values():
            nursery.start_soon(_serve_socket, sock, txs)
    return [tx.result if tx.state is State.DONE else None for _, tx in jobs]


async def from_fresh_sockets(n: int, src_ip: str | None, make: Callable[[], Transaction]
                             ) -> tuple[float, list[BindingResult | None]]:
    """`n` transactions (each `make()`), each from a socket of its own on a port this process has
    not used lately (io/fresh_port.py), so each is a new flow and, on a NAT with a mapping per
    destination, a new mapping: (when their first requests left, in trio time; run_transactions'
    results, in order). The sockets are closed after. Raises OSError when they cannot be opened."""
    from .fresh_port import fresh_trio_udp

    socks: list[trio.socket.SocketType] = []
    try:
        for _ in range(n):
            socks.append(await fresh_trio_udp(src_ip))
        started = trio.current_time()
        return started, await run_transactions([(s, make()) for s in socks])
    finally:
        for s in socks:
            s.close()


def by_reply_id(txs: Iterable[Transaction]) -> dict[bytes, Transaction]:
    """Transactions by the bytes 8..20 of their replies (the ID, a classic one's last 12 bytes too)."""
    return {tx.request.transaction_id[-12:]: tx for tx in txs}


async def _serve_socket(sock: trio.socket.SocketType, txs: list[Transaction]) -> None:
    by_id = by_reply_id(txs)
    while True:
        waiting = [tx for tx in txs if tx.state is State.WAITING]
        if not waiting:
            return
        with trio.move_on_at(min(tx.deadline for tx in waiting if tx.deadline is not None)):
            while True:
                try:
                    data, src = await sock.recvfrom(65536)
                except OSError:
                    waiting[0].discarded["icmp_error"] += 1  # not an answer; the schedule goes on
                    continue
                tx = by_id.get(bytes(data[8:20]))
                if tx is not None and tx.receive(data, src, trio.current_time()) is not None:
                    break  # one fewer waiting: the next deadline may be later
        now = trio.current_time()
        for tx in waiting:
            if tx.state is State.WAITING and tx.deadline is not None and now >= tx.deadline:
                again = tx.timeout(now)
                if again is not None:
                    try:
                        await sock.sendto(again, tx.dest)
                    except OSError:
                        tx.discarded["send_error"] += 1


async def binding(
    sock: trio.socket.SocketType,
    server: Address,
    *,
    change_ip: bool = False,
    change_port: bool = False,
    timeout: float | None = None,
    expect_from: Address | Iterable[Address] | None = None,
    other_address: Address | None = None,
    response_port: int | None = None,
    classic: bool = False,
    rto: float = RTO,
    rc: int = RC,
    rm: int = RM,
    raise_on_error: bool = True,
) -> BindingResult:
    """One Binding transaction from `sock` (never closed here) to `server`.

    The reply must carry our transaction ID and come from `server`, or -- with change_ip/change_port --
    from the address the server announced (`expect_from`, or derived from `other_address`, the
    OTHER-ADDRESS of an earlier reply). `timeout` caps the whole transaction (StunTimeout).
    """
    server = (server[0], int(server[1]))
    if expect_from is None:
        if change_ip or change_port:
            exp = expected_source(server, other_address, change_ip, change_port)
            if exp is None:
                raise ValueError("a CHANGE-REQUEST needs expect_from or other_address to validate the reply")
            accept = [exp]
        else:
            accept = [server]
    elif isinstance(expect_from, tuple) and len(expect_from) == 2 and isinstance(expect_from[1], int):
        accept = [expect_from]  # type: ignore[list-item]
    else:
        accept = list(expect_from)  # type: ignore[arg-type]
    req = binding_request(
        change_ip=change_ip, change_port=change_port, response_port=response_port, classic=classic
    )
    tx = Transaction(req, server, accept_from=accept, rto=rto, rc=rc, rm=rm)
    return await run_binding(sock, tx, timeout=timeout, raise_on_error=raise_on_error)


async def run_binding(sock: trio.socket.SocketType, tx: Transaction, *, timeout: float | None = None,
                      raise_on_error: bool = True) -> BindingResult:
    """binding()'s way of running `tx` (built by it, or adopted from a request sent before Trio ran:
    io/stun_discover.py): StunTimeout when no answer came within `timeout` or the schedule,
    StunErrorResponse for an error answer unless `raise_on_error` is False."""
    try:
        with trio.fail_after(timeout if timeout is not None else math.inf):
            result = await run_transaction(sock, tx)
    except trio.TooSlowError:
        raise StunTimeout(
            f"no valid STUN reply from {tx.dest[0]}:{tx.dest[1]} within {timeout}s",
            tx.discarded,
            tx.unexpected_sources,
        ) from None
    if result.error is not None and raise_on_error:
        raise StunErrorResponse(result.error, result)
    return result



def on_trio_clock(monotonic: float) -> float:
    """A time.monotonic() reading (when an early request left, before Trio ran: io/presample.py,
    io/prediscover.py) on Trio's clock, so a transaction adopted from it runs its schedule on."""
    return trio.current_time() - (time.monotonic() - monotonic)

__all__ = ["binding", "by_reply_id", "on_trio_clock", "run_binding", "run_transaction", "run_transactions"]
