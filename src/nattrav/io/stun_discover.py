"""The RFC 5780 behaviour tests on Trio: `discover()` runs them (mapping, filtering, allocation,
hairpinning, optionally the mapping lifetime) against one STUN server, each from fresh sockets so no
test pollutes another, and hands the raw outcomes to proto/nat_behavior.classify()."""

from __future__ import annotations

from collections import Counter

import trio

from ..errors import BadPacket, StunErrorResponse, StunTimeout
from ..proto.nat_behavior import BindingSample, NatBehavior, classify
from ..proto.stun import binding_request, parse
from ..proto.stun_attrs import Address, Attr, Class
from .stun_client import binding


async def _open(local_ip: str | None, server: Address) -> trio.socket.SocketType:
    family = trio.socket.AF_INET6 if ":" in server[0] else trio.socket.AF_INET
    s = trio.socket.socket(family, trio.socket.SOCK_DGRAM)
    await s.bind((local_ip or ("::" if family == trio.socket.AF_INET6 else "0.0.0.0"), 0))
    return s


async def _local_address(sock: trio.socket.SocketType, server: Address) -> Address:
    # the bound address is 0.0.0.0; the address the kernel would use towards the server is what a
    # "no NAT" comparison needs. A connect()ed twin socket tells it without sending anything.
    ip, port = sock.getsockname()[:2]
    if ip in ("0.0.0.0", "::"):
        probe = trio.socket.socket(sock.family, trio.socket.SOCK_DGRAM)
        try:
            await probe.connect(server)
            ip = probe.getsockname()[0]
        finally:
            probe.close()
    return (ip, port)


async def discover(
    server: Address,
    local_ip: str | None = None,
    *,
    fresh_sockets: int = 3,
    hairpin: bool = True,
    lifetime: bool = False,
    lifetime_max: float = 120.0,
    rto: float = 0.2,
    rc: int = 4,
    rm: int = 4,
) -> NatBehavior:
    """Find the NAT's mapping, filtering, port allocation (Δ), hairpinning (and optionally lifetime)
    with the RFC 5780 tests against `server`, whose OTHER-ADDRESS names the second IP and port.

    Retransmission defaults are shorter than RFC 8489's (rto 0.2 s, 4 sends): a negative filtering
    test costs one whole transaction, and the lab and real servers answer in milliseconds.
    """
    server = (server[0], int(server[1]))
    t0 = trio.current_time()
    samples: list[BindingSample] = []
    discarded: Counter[str] = Counter()
    kw = dict(rto=rto, rc=rc, rm=rm)

    async def sample(sock, idx: int, dest: Address) -> Address | None:
        try:
            r = await binding(sock, dest, **kw)
        except StunTimeout as exc:
            discarded.update(exc.discarded)
            return None
        except StunErrorResponse:
            discarded["error_response"] += 1
            return None
        local = await _local_address(sock, dest)
        samples.append(BindingSample(idx, local, dest, r.mapped, trio.current_time() - t0))
        return r.mapped

    main = await _open(local_ip, server)
    try:
        # test I, and the server's second address
        try:
            r1 = await binding(main, server, **kw)
        except (StunTimeout, StunErrorResponse) as exc:
            discarded.update(getattr(exc, "discarded", {}))
            return classify(local=await _local_address(main, server), server=server, other_address=None,
                            samples=[], test1=None, test2=None, test3=None,
                            filter_change_both=None, filter_change_port=None, discarded=discarded)
        local = await _local_address(main, server)
        samples.append(BindingSample(0, local, server, r1.mapped, trio.current_time() - t0))
        other = r1.other_address
        # a server with one IP names its second port instead (OTHER-PORT): a second port is a
        # second destination too, enough to see APDM and port-dependent filtering
        one_ip = other is None and r1.other_port is not None and r1.other_port != server[1]
        if one_ip:
            other = (server[0], r1.other_port)
        # the same socket, the same destination, again: a NAT always reuses the mapping here, which
        # is why one server address can never reveal APDM
        m_repeat = await sample(main, 0, server)
        repeat_same_port = None if m_repeat is None else m_repeat == r1.mapped
        m2 = m3 = None
        if one_ip:
            m3 = await sample(main, 0, other)  # same IP, other port
        elif other is not None:
            m2 = await sample(main, 0, (other[0], server[1]))  # test II: other IP, same port
            m3 = await sample(main, 0, other)  # test III: other IP, other port
            await sample(main, 0, (server[0], other[1]))  # one more sample: same IP, other port

        # filtering: two sockets that have talked only to (A, P) -- one asks for change IP+port, the
        # other for change port (one IP: only the latter). Their mappings are made now, before the
        # fresh-socket series, so the allocation sample stays a clean run of back-to-back new mappings.
        fsocks: list = []
        try:
            if other is not None:
                for _ in range(1 if one_ip else 2):
                    fsocks.append(await _open(local_ip, server))
                    await sample(fsocks[-1], 1, server)

            # port allocation from fresh sockets, each to (A, P)
            for i in range(fresh_sockets):
                s = await _open(local_ip, server)
                try:
                    await sample(s, 2 + i, server)
                finally:
                    s.close()

            # the slow, mostly negative tests run at once: each costs a whole transaction timeout
            outcome: dict[str, object] = {}

            async def run_filter(name: str, sock, change_ip: bool) -> None:
                outcome[name] = await _filter_test(sock, server, other, change_ip, True, kw, discarded)

            async def run_hairpin() -> None:
                outcome["hairpin"] = await _hairpin_test(main, r1.mapped, server, local_ip, kw)

            async with trio.open_nursery() as nursery:
                if len(fsocks) == 2:
                    nursery.start_soon(run_filter, "both", fsocks[0], True)
                    nursery.start_soon(run_filter, "port", fsocks[1], False)
                elif len(fsocks) == 1:
                    nursery.start_soon(run_filter, "port", fsocks[0], False)
                if hairpin:
                    nursery.start_soon(run_hairpin)
        finally:
            for fs in fsocks:
                fs.close()
        f_both, ign1 = outcome.get("both", (None, False))  # type: ignore[misc]
        f_port, ign2 = outcome.get("port", (None, False))  # type: ignore[misc]
        ignored_change = bool(ign1 or ign2)
        if ignored_change:
            f_both = f_port = None
        elif f_both:
            f_port = None  # EIF already; the change-port answer adds nothing
        hp = outcome.get("hairpin")
        life = await _lifetime_test(server, local_ip, lifetime_max, kw) if lifetime else None
        # the filtering socket's sample is not a fresh-socket allocation sample for Δ purposes
        alloc_samples = [s for s in samples if s.socket != 1]
        report = classify(
            local=local, server=server, other_address=other, samples=alloc_samples,
            test1=r1.mapped, test2=m2, test3=m3,
            filter_change_both=f_both, filter_change_port=f_port,
            hairpin=hp, lifetime=None if life is None else life[0], server_ignored_change=ignored_change,
            repeat_same_port=repeat_same_port, discarded=discarded, one_ip=one_ip,
        )
        if life is not None:
            alive, expired = life
            report.findings.append(
                f"an idle mapping lived at least {alive:g} s"
                + (f" and was gone after {expired:g} s" if expired is not None else f" (tested up to {lifetime_max:g} s)")
            )
        if other is None:
            report.findings.append("the server sent no OTHER-ADDRESS (nor OTHER-PORT): mapping and "
                                   "filtering need a server with a second port, or a second IP and port "
                                   "(RFC 5780)")
        return report
    finally:
        main.close()


async def _filter_test(sock, server, other, change_ip, change_port, kw, discarded) -> tuple[bool, bool]:
    """(answer arrived from the changed address, server answered from the unchanged one instead)."""
    try:
        await binding(sock, server, change_ip=change_ip, change_port=change_port,
                      other_address=other, **kw)
        return True, False
    except StunTimeout as exc:
        discarded.update(exc.discarded)
        ignored = any(src == server for src in exc.unexpected_sources)
        return False, ignored
    except StunErrorResponse:
        discarded["error_response"] += 1
        return False, True


async def _hairpin_test(main, mapped: Address, server: Address, local_ip, kw) -> bool | None:
    """Send from a second socket to the main socket's public address; hairpinning works when the
    main socket receives it. The main socket first sends to the second socket's public address so
    an address-and-port-dependent filter lets the hairpinned packet in."""
    helper = await _open(local_ip, server)
    try:
        try:
            rh = await binding(helper, server, **kw)
        except (StunTimeout, StunErrorResponse):
            return None
        probe = binding_request().encode()
        opener = binding_request().encode()
        got = False
        with trio.move_on_after(kw["rto"] * 8):
            for _ in range(3):
                try:
                    await main.sendto(opener, rh.mapped)
                    await helper.sendto(probe, mapped)
                except OSError:
                    pass
                with trio.move_on_after(kw["rto"] * 2):
                    while True:
                        try:
                            data, _src = await main.recvfrom(2048)
                        except OSError:
                            continue
                        if data == probe:
                            got = True
                            break
                if got:
                    break
        return got
    finally:
        helper.close()


async def _response_port_reaches(x, helper, server: Address, port: int, kw) -> bool:
    """Ask `server`, from `helper`, to answer at `port` (RESPONSE-PORT); True when the answer reaches
    `x`. A server that wants proof that we receive at our IP answers `helper` with 438 and a cookie
    in NONCE (ours does, io/stun_server.py); the request is then repeated with it."""
    cookie: str | None = None
    for _ in range(kw["rc"]):
        extra = [(Attr.NONCE, cookie)] if cookie else []
        req = binding_request(response_port=port, extra=extra)
        try:
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
            cookie = str(outcome[0])
    return False


async def _lifetime_test(server: Address, local_ip: str | None, limit: float, kw) -> tuple[float, float | None] | None:
    """Idle mapping lifetime (RFC 5780 §4.6), as (alive, expired): the longest idle time after which
    a mapping still let the server's answer in, and the first one after which it did not (None if it
    never expired within `limit`). Each trial uses a new socket X: X learns its mapping M from S1, stays
    idle for t seconds, then a helper socket asks S1 to answer to M's port (RESPONSE-PORT). The answer
    reaches X only if M is still alive; nothing X sends refreshes M meanwhile. Waits 1, 2, 4, ... s."""
    alive, wait = 0.0, 1.0
    while wait <= limit:
        x = await _open(local_ip, server)
        helper = await _open(local_ip, server)
        try:
            try:
                m = (await binding(x, server, **kw)).mapped
            except (StunTimeout, StunErrorResponse):
                return None
            await trio.sleep(wait)
            got = await _response_port_reaches(x, helper, server, m[1], kw)
        finally:
            x.close()
            helper.close()
        if not got:
            return alive, wait
        alive = wait
        wait *= 2
    return alive, None


__all__ = ["discover"]
