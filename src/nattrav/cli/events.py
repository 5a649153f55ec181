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


def _describe(phase: str, d: dict[str, Any], verbose: bool) -> str | None:
    if phase == "discovery":
        return f"discovery: asking STUN server {d['stun'][0]}:{d['stun'][1]} how our NAT behaves"
    if phase == "discovery-done":
        delta = d.get("delta")
        words = f"{d.get('mapping')} mapping, {d.get('filtering')} filtering, {d.get('allocation')} ports"
        if delta not in (None, 0):
            words += f" (step Δ={delta})"
        return f"discovery: {words} — {d.get('classic')}" + (
            f"; findings: {'; '.join(d.get('findings') or [])}" if verbose and d.get("findings") else "")
    if phase == "mapping":
        return (f"mapping: the punch socket is {d['public'][0]}:{d['public'][1]} "
                f"(ports the two servers saw from it: {d['ports']}, Δ={d['delta']})")
    if phase == "tcp-mapping":
        return (f"TCP mapping: local port {d['local'][1]} seen by the servers as ports {d['ports']} "
                f"(steps {d['steps']})")
    if phase == "rendezvous":
        return f"rendezvous: connected to {d['server'][0]}:{d['server'][1]}"
    if phase == "enrolled":
        return f"enrolled: our peer ID is {d['peer_id']} — waiting for a peer"
    if phase == "offer":
        return f"rendezvous: peer {d['from']} asks for us"
    if phase == "refused":
        return f"rendezvous: refused peer {d['from']}: {d['reason']}"
    if phase == "peer-address":
        return (f"warning: the peer's report names {d['reported']}, but the server saw it at "
                f"{d['observed']}: aiming at {d['observed']} only")
    if phase == "rendezvous-connect":
        return f"rendezvous: asking for peer {d['peer']}"
    if phase == "plan":
        extra = f" {d['params']}" if verbose else ""
        return (f"plan: {d['strategy']} (we are {d['role']}), odds {100 * d['odds']:.6g}% — "
                f"{d['reason']}{extra}")
    if phase == "punch":
        return f"punch: firing in {d['start_in']:.2f} s (give up after {d['timeout']:.1f} s)"
    if phase == "connected":
        return (f"connected to {d['peer'][0]}:{d['peer'][1]} by {d['strategy']}, "
                f"RTT {d['rtt_ms']} ms")
    return f"{phase}: {d}" if verbose else None
