"""One line of human text for each progress event that connect()/listen() report (nattrav-fast and
the lab demo both print them)."""

from __future__ import annotations

from typing import Any


def describe(phase: str, d: dict[str, Any], *, verbose: bool = False) -> str | None:
    """The line for event `phase` with details `d`, or None for events shown only with verbose."""
    try:
        return _describe(phase, d, verbose)
    except (KeyError, IndexError, TypeError, ValueError):
        # an event with fields this table does not know yet is shown raw, never a crash mid-connect
        return f"{phase}: {d}"


# The line of each plain event: str.format fields name the event's details.
_LINES = {
    "discovery": "discovery: asking STUN server {stun[0]}:{stun[1]} how our NAT behaves",
    "behavior-cached": ("discovery: this network ({public_ip}) was measured {age_s:.0f} s ago: {mapping} mapping, "
                        "{filtering} filtering, {allocation} ports — {classic} (--no-cache measures again)"),
    "mapping": ("mapping: the punch socket is {public[0]}:{public[1]} "
                "(ports the two servers saw from it: {ports}, Δ={delta})"),
    "port-block": ("mapping: our NAT counts its ports through {range[0]}-{range[1]} and starts again at the "
                   "bottom (seen on our earlier mappings): the peer aims there"),
    "tcp-port-block": ("TCP mapping: our NAT counts its TCP ports through {range[0]}-{range[1]} and starts again "
                       "at the bottom (seen on our earlier TCP mappings): the peer aims there"),
    "tcp-mapping": "TCP mapping: local port {local[1]} seen by the servers as ports {ports} (steps {steps})",
    "tcp-mapping-retry": "TCP mapping: the server reset a probe ({error}); probing again in {pause:g} s",
    "flow-wait": ("flows: waiting {seconds:.1f} s for our NAT(s) to let go of {held} entries of our last bursts, "
                  "so that the budget holds a burst like the last one (--flow-wait 0 does not wait)"),
    "rendezvous": "rendezvous: connected to {server[0]}:{server[1]}",
    "enrolled": "enrolled: our peer ID is {peer_id} — waiting for a peer",
    "offer": "rendezvous: peer {from} asks for us",
    "refused": "rendezvous: refused peer {from}: {reason}",
    "peer-address": ("warning: the peer's report names {reported}, but the server saw it at {observed}: "
                     "aiming at {observed} only"),
    "rendezvous-connect": "rendezvous: asking for peer {peer}",
    "punch": "punch: firing in {start_in:.2f} s (give up after {timeout:.1f} s)",
    "rung": "punch: next rung, {strategy} — {reason} (after: {after})",
    "ttl": "punch: {strategy}: opening TTL now {ttl} ({why})",
    "again-found": "punch: what the fresh samples say of the first round: {found}",
    "secure": "secure: {protocol} with {peer_id}, its key verified",
    "identity": "identity: {peer_id} (key {path}{created})",
    "delivered": "closed: {sent} bytes sent and acknowledged, {received} received",
    "relay-ready": "relay: our allocation is {relayed[0]}:{relayed[1]} (offered to the peer, used only if punching cannot work)",
    "relay-note": "relay: {note}",
    "relay-connected": "relay: the peer answered through the relay {relay[0]}:{relay[1]}, RTT {rtt_ms} ms",
    "keepalive": "liveness: keepalives now every {interval:g} s (our NAT's idle mappings live {lifetime:g} s or more)",
    "upgrade": "upgrade: a direct path to {peer[0]}:{peer[1]} answers, moved off the relay (RTT {rtt_ms} ms)",
}
_RELAY_WHY = {"infeasible": "the planner says punching cannot work", "punch-failed": "the punch failed"}


def _describe(phase: str, d: dict[str, Any], verbose: bool) -> str | None:
    if phase in _LINES:
        return _LINES[phase].format_map(d)
    if phase == "connected":
        # a QUIC client's path is the first answered HELLO (io/punch.py, early): QUIC measures its RTT
        rtt = "RTT measured by the handshake next" if d.get("rtt_ms") is None else f"RTT {d['rtt_ms']} ms"
        return f"connected to {d['peer'][0]}:{d['peer'][1]} by {d['strategy']}, {rtt}"
    if phase == "discovery-done":
        delta = d.get("delta")
        words = f"{d.get('mapping')} mapping, {d.get('filtering')} filtering, {d.get('allocation')} ports"
        if delta not in (None, 0):
            words += f" (step Δ={delta})"
        return f"discovery: {words} — {d.get('classic')}" + (
            f"; findings: {'; '.join(d.get('findings') or [])}" if verbose and d.get("findings") else "")
    if phase == "hops":
        if not d["measured"]:
            return f"hops: no hop on the way to the STUN server answered; opening TTL {d['low_ttl']} (a guess)"
        inside = [ip for _, ip in d["hops"][:d["low_ttl"] - 1]]
        return (f"hops: {d['inside_hops']} hop(s) inside our NAT(s) ({', '.join(ip or '*' for ip in inside)}); "
                f"opening TTL {d['low_ttl']}")
    if phase == "lifetime":
        if d.get("keepalive") is None:
            return f"liveness: could not measure how long our NAT keeps an idle mapping ({d['requests']} STUN requests)"
        upto = f"between {d['alive']:g} and {d['expired']:g} s" if d.get("expired") is not None else f"over {d['alive']:g} s"
        return (f"liveness: our NAT keeps an idle UDP mapping {upto} ({d['requests']} STUN requests); "
                f"keepalives every {d['keepalive']:g} s suffice")
    if phase == "relay":
        why = _RELAY_WHY.get(d["why"], d["why"])
        return f"relay: {why} ({d['reason']}); going through the relay {d['relay'][0]}:{d['relay'][1]}"
    if phase == "again":
        # a plan that stated high odds failed: something it assumed moved (api/session.py again_after)
        what = f"{d['strategy']} at {100 * d['odds']:.6g}% odds found no path"
        if "left" in d:
            return f"punch: {what}; sampling again on a fresh socket for a second round ({d['left']:.1f} s left)"
        return f"punch: {what}; waiting {d['wait']:g} s for the peer's second round"
    if phase == "plan":
        extra = f" {d['params']}" if verbose else ""
        floor = "at least " if d.get("odds_floor") else ""  # the LAN attempts' chance is not counted
        return (f"plan: {d['strategy']} (we are {d['role']}), odds {floor}{100 * d['odds']:.6g}% — "
                f"{d['reason']}{extra}")
    return f"{phase}: {d}" if verbose else None
