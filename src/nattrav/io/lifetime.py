"""How long our NAT keeps an idle UDP mapping, measured cheaply (RFC 5780 §4.6) so that keepalives can
be sized from it instead of from a guess.

One trial per idle time t: a socket X learns its mapping M from our STUN server, sends nothing for t
seconds, then a second socket asks the server (RESPONSE-PORT, with the server's return-routability
cookie) to answer at M's port. The answer reaches X only while M is alive, and nothing X does in
between refreshes it. The trials run side by side, not one after another, so the whole measurement
lasts as long as its longest surviving trial; the first trial that finds its mapping gone cancels
every longer one (a mapping that died after t is dead after any longer idle too). A cookie is asked
for once and shared. Packets are bounded: per trial at most `rc` Binding requests and `rc`
RESPONSE-PORT requests, ~3 requests when nothing is lost (the reading counts them).

The result is a bracket (alive, expired): the mapping survived `alive` seconds idle and was gone
after `expired`. The lower end is what keepalives may rely on (api/secure.py sizes them from it);
api/ runs this in the background once a session is up and keeps the result in the behaviour cache.
"""

from __future__ import annotations

from dataclasses import dataclass

import trio

from ..errors import BadPacket, StunErrorResponse, StunTimeout
from ..proto.stun import binding_request, parse
from ..proto.stun_attrs import Address, Attr, Class
from .fresh_port import fresh_trio_udp
from .stun_client import binding

# idle times tried, ~1.5x apart: a lifetime is bracketed within a factor of 1.5 at most, and one
# of 20 s (the lab's, a CGN's) or 30 s is found within 30 s; RFC 4787's 120 s minimum passes the last
WAITS = (2.0, 3.0, 4.5, 7.0, 10.0, 15.0, 22.0, 33.0, 50.0, 75.0, 110.0)
RTO = 0.25
RC = 3
START_GAP = 0.01  # seconds between the trials' first packets: no burst of new mappings at once


@dataclass(frozen=True)
class LifetimeReading:
    alive: float  # the longest idle time a mapping survived (0.0: none tried survived)
    expired: float | None  # the shortest idle time after which it was gone (None: none was)
    requests: int  # STUN requests this measurement sent
    trials: int  # trials that reached an answer either way

    @property
    def lifetime(self) -> float | None:
        """Seconds an idle mapping is known to live (the bracket's lower end), or None when no trial
        survived (then nothing is known: under heavy loss a trial can fail for that reason alone)."""
        return self.alive if self.alive > 0 else None

    def to_dict(self) -> dict:
        return {"alive": self.alive, "expired": self.expired, "requests": self.requests, "trials": self.trials}


async def open_udp(local_ip: str | None, server: Address) -> trio.socket.SocketType:
    family = trio.socket.AF_INET6 if ":" in server[0] else trio.socket.AF_INET
    # a port no recent socket of ours had: its samples are the NAT's now, not an old flow's (fresh_port)
    return await fresh_trio_udp(local_ip, family)


class Cookie:
    """The server's RESPONSE-PORT cookie for our IP, shared by every trial; `sent` counts requests."""

    def __init__(self) -> None:
        self.value: str | None = None
        self.sent = 0


async def response_port_reaches(x, helper, server: Address, port: int, kw, cookie: Cookie | None = None) -> bool:
    """Ask `server`, from `helper`, to answer at `port` (RESPONSE-PORT); True when the answer reaches
    `x`. A server that wants proof that we receive at our IP answers `helper` with 438 and a cookie
    in NONCE (ours does, io/stun_server.py); the request is then repeated with it, and `cookie`
    keeps it for the next call."""
    cookie = cookie if cookie is not None else Cookie()
    for _ in range(kw["rc"]):
        extra = [(Attr.NONCE, cookie.value)] if cookie.value else []
        req = binding_request(response_port=port, extra=extra)
        try:
            cookie.sent += 1
            await helper.sendto(req.encode(), server)
        except OSError:
            pass
        outcome: list[object] = []
        async with trio.open_nursery() as nursery:

            async def answer_at_x() -> None:
                while True:
                    try:
                        data, src = await x.recvfrom(2048)
                    except OSError:
                        continue
                    if (src[0], src[1]) == server and data[8:20] == req.transaction_id:
                        outcome.append(True)
                        nursery.cancel_scope.cancel()

            async def cookie_at_helper() -> None:
                while True:
                    try:
                        data, src = await helper.recvfrom(2048)
                        m = parse(data)
                    except (OSError, BadPacket):
                        continue
                    err = m.get(Attr.ERROR_CODE)
                    nonce = m.get(Attr.NONCE)
                    if (m.transaction_id == req.transaction_id and m.cls == Class.ERROR
                            and err is not None and err.code == 438 and isinstance(nonce, str)):
                        outcome.append(nonce)
                        nursery.cancel_scope.cancel()

            nursery.start_soon(answer_at_x)
            nursery.start_soon(cookie_at_helper)
            await trio.sleep(kw["rto"] * 2)
            nursery.cancel_scope.cancel()
        if True in outcome:
            return True
        if outcome:
            cookie.value = str(outcome[0])
    return False


async def _trial(server: Address, local_ip: str | None, wait: float, kw, cookie: Cookie) -> bool | None:
    """True: a mapping idle for `wait` s still let the answer in; False: it was gone; None: the
    server did not answer the first Binding (nothing learned)."""
    x = await open_udp(local_ip, server)
    try:
        try:
            result = await binding(x, server, **kw)
        except (StunTimeout, StunErrorResponse):
            cookie.sent += kw["rc"]
            return None
        cookie.sent += result.attempts
        await trio.sleep(wait)
        helper = await open_udp(local_ip, server)
        try:
            return await response_port_reaches(x, helper, server, result.mapped[1], kw, cookie)
        finally:
            helper.close()
    finally:
        x.close()


async def _numeric(server: Address) -> Address:
    """`server` with its host resolved: answers are matched by their source address."""
    host, port = server[0], int(server[1])
    infos = await trio.socket.getaddrinfo(host, port, type=trio.socket.SOCK_DGRAM)
    return (str(infos[0][4][0]), port)


async def measure_lifetime(server: Address, local_ip: str | None = None, *, waits: tuple[float, ...] = WAITS,
                           rto: float = RTO, rc: int = RC) -> LifetimeReading:
    """The idle lifetime of our NAT's UDP mappings towards `server` (a STUN server that honours
    RESPONSE-PORT, as ours does), from `local_ip`. Lasts about as long as the longest surviving
    trial plus a round trip; cancel it any time (nothing is left open)."""
    server = await _numeric(server)
    waits = tuple(sorted(set(float(w) for w in waits if w > 0)))
    kw = {"rto": rto, "rc": rc, "rm": rc}
    cookie = Cookie()
    survived: list[float] = []
    gone: list[float] = []
    scopes: dict[float, trio.CancelScope] = {}

    async def run(wait: float, delay: float) -> None:
        with scopes[wait]:
            await trio.sleep(delay)
            got = await _trial(server, local_ip, wait, kw, cookie)
            if got is True:
                survived.append(wait)
            elif got is False:
                gone.append(wait)
                for longer, scope in scopes.items():
                    if longer > wait:
                        scope.cancel()

    async with trio.open_nursery() as nursery:
        for i, wait in enumerate(waits):
            scopes[wait] = trio.CancelScope()
            nursery.start_soon(run, wait, i * START_GAP)
    expired = min(gone) if gone else None
    # a trial that survived longer than one that did not is the noise of a lost answer: the bracket
    # keeps to what is consistent, the lower end below the first death
    alive = max((w for w in survived if expired is None or w < expired), default=0.0)
    return LifetimeReading(alive, expired, cookie.sent, len(survived) + len(gone))


__all__ = ["WAITS", "LifetimeReading", "measure_lifetime", "response_port_reaches"]
