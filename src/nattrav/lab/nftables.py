"""NatSpec -> nftables ruleset text: one pure function, loaded with one `nft -f -` per NAT namespace.

How each behaviour is built (facts from notes/natlab.md):
- mapping EIM + preserve is Linux's own snat: it keeps the source port whenever the tuple is free.
- sequential allocation is `numgen inc` through a map of ports (base + k*delta); numgen straight into a
  port would be byte-swapped. The nat chain sees only a flow's first packet, so the counter moves once
  per new flow: that alone is APDM.
- EIM/ADM with a non-preserving allocator remember the chosen public port in a dynamic map keyed by the
  inside endpoint (plus the remote address for ADM), refreshed by every outbound packet.
- EIF/ADF and hairpinning dnat inbound packets through a dynamic map public port -> inside endpoint;
  ADF also needs the (public port, remote address) pair to have been seen outbound.
- Unsolicited inbound flows must die before conntrack confirms them (`ct status & dnat == 0`),
  otherwise they create their own entry and the later outbound packet is remapped.
- A NatSpec with its own TCP behaviour renders the allocation and filtering rules once per protocol
  (`meta l4proto udp` / `tcp`), each with its own sequence counter and mapping map; otherwise one set
  of rules serves both, as a single allocator would.
- An address pool (public_ips > 1) picks the address by a hash of the inside address (paired) or per
  mapping (arbitrary: a hash of the inside endpoint for EIM, a random pick for ADM/APDM); the maps
  then carry the public address too.
- Flow caps are `ct count`: over the whole table (max_flows) or per inside address in a dynamic set
  (flows_per_host); a flow that would exceed them is dropped before it is translated.
"""

from __future__ import annotations

from dataclasses import dataclass

from .spec import SEQ_BASE, SEQ_TOP, NatSpec

TABLE = "nattrav"
WAN_IF = "wan"
LAN_GLOB = "lan*"
COUNTERS = ("wan_in", "wan_in_udp", "wan_out", "wan_out_udp", "seq_alloc", "seq_alloc_tcp", "flows_refused")
BOTH = "meta l4proto { tcp, udp }"


def seq_ports(delta: int) -> list[int]:
    """The ports a sequential NAT hands out, in order, before it wraps."""
    n = min(4096, (SEQ_TOP - SEQ_BASE) // delta)
    return [SEQ_BASE + k * delta for k in range(n)]


@dataclass(frozen=True)
class _Group:
    """The rules of one protocol group: `l4` selects it, `b` is its behaviour, names get `sfx`."""

    l4: str
    b: NatSpec
    sfx: str
    timeout: int
    shared: bool  # one group for both protocols (no TCP override): today's single allocator

    @property
    def remembers(self) -> bool:
        return self.b.mapping in ("EIM", "ADM") and self.b.allocation != "preserve"

    @property
    def prefix(self) -> str:
        return "" if self.shared else f"{self.l4} "

    @property
    def element_timeout(self) -> str:
        # the shared maps default to the UDP lifetime; a TCP group's entries carry their own
        return "" if self.shared or self.sfx == "" else f" timeout {self.timeout}s"


def _groups(spec: NatSpec) -> list[_Group]:
    if spec.tcp is None:
        return [_Group(BOTH, spec, "", spec.udp_timeout, True)]
    return [_Group("meta l4proto udp", spec, "", spec.udp_timeout, False),
            _Group("meta l4proto tcp", spec.for_tcp(), "_tcp", spec.tcp_timeout, False)]


def render(spec: NatSpec, *, wan_ip: str, lan_net: str, wan_ips: list[str] | None = None) -> str:
    """The complete ruleset for one NAT box: WAN interface `wan`, LAN interfaces `lan*`, public
    addresses `wan_ips` (the pool; default just wan_ip)."""
    spec.validate()
    pool = list(wan_ips) if wan_ips else [wan_ip]
    if len(pool) != spec.public_ips:
        raise ValueError(f"{len(pool)} public addresses for a NAT with public_ips={spec.public_ips}")
    multi = len(pool) > 1
    ours = "{ " + ", ".join(pool) + " }" if multi else wan_ip
    t = spec.udp_timeout
    groups = _groups(spec)
    needs_pub = spec.hairpin or any(g.b.filtering in ("EIF", "ADF") for g in groups)
    needs_adf = any(g.b.filtering == "ADF" for g in groups)
    # keys of the inbound maps, as read on an inbound packet and as recorded from an outbound one
    pub_in = "meta l4proto . ip daddr . th dport" if multi else "meta l4proto . th dport"
    pub_out = "meta l4proto . ip saddr . th sport" if multi else "meta l4proto . th sport"

    def addr(g: _Group) -> str:
        """The public address expression for a new mapping of group g."""
        if not multi:
            return wan_ip
        if spec.pooling == "paired":
            return f"jhash ip saddr mod {len(pool)} map @pool"
        if g.b.mapping == "EIM":
            return f"jhash ip saddr . th sport mod {len(pool)} map @pool"
        return f"numgen random mod {len(pool)} map @pool"

    out: list[str] = [f"table ip {TABLE} {{"]
    for c in COUNTERS:
        out.append(f"  counter {c} {{ }}")
    if multi:
        elems = ", ".join(f"{k} : {ip}" for k, ip in enumerate(pool))
        out.append(f"  map pool {{ typeof numgen inc mod {len(pool)} : ip saddr; elements = {{ {elems} }} }}")
    for g in groups:
        if g.b.allocation == "sequential":
            ports = seq_ports(g.b.delta)
            elems = ", ".join(f"{k} : {p}" for k, p in enumerate(ports))
            out.append(
                f"  map seq{g.sfx} {{ typeof numgen inc mod {len(ports)} : udp sport; elements = {{ {elems} }} }}"
            )
        if g.remembers:
            ktype = "inet_proto . ipv4_addr . inet_service" + (" . ipv4_addr" if g.b.mapping == "ADM" else "")
            vtype = "ipv4_addr . inet_service" if multi else "inet_service"
            out.append(f"  map emap{g.sfx} {{ type {ktype} : {vtype}; flags dynamic, timeout; timeout {g.timeout}s; }}")
    if needs_pub:
        ktype = "inet_proto . ipv4_addr . inet_service" if multi else "inet_proto . inet_service"
        out.append(
            f"  map pub {{ type {ktype} : ipv4_addr . inet_service; flags dynamic, timeout; timeout {t}s; }}"
        )
    if needs_adf:
        ktype = "inet_proto . ipv4_addr . inet_service . ipv4_addr" if multi else "inet_proto . inet_service . ipv4_addr"
        out.append(f"  set adf {{ type {ktype}; flags dynamic, timeout; timeout {t}s; }}")
    if spec.flows_per_host is not None:
        out.append("  set subs { type ipv4_addr; flags dynamic; }")

    # counting first, before anything can drop: the tests read these to prove what arrived
    out += [
        "  chain raw_pre {",
        "    type filter hook prerouting priority raw; policy accept;",
        f'    iifname "{WAN_IF}" counter name wan_in',
        f'    iifname "{WAN_IF}" meta l4proto udp counter name wan_in_udp',
        "  }",
    ]

    out += ["  chain pre_nat {", "    type nat hook prerouting priority dstnat; policy accept;"]
    for g in groups:
        if g.b.filtering == "EIF":
            out.append(f'    iifname "{WAN_IF}" ip daddr {ours} {g.l4} dnat ip addr . port to {pub_in} map @pub')
        elif g.b.filtering == "ADF":
            out.append(
                f'    iifname "{WAN_IF}" ip daddr {ours} {g.prefix}{pub_in} . ip saddr @adf '
                f"dnat ip addr . port to {pub_in} map @pub"
            )
    if spec.hairpin:
        out.append(f'    iifname "{LAN_GLOB}" ip daddr {ours} {BOTH} dnat ip addr . port to {pub_in} map @pub')
    out.append("  }")

    out += ["  chain forward_filter {", "    type filter hook forward priority filter; policy accept;"]
    # per ten thousand, so fractional percentages are honoured; nft refuses a bound equal to the modulus
    cut = round(spec.loss_percent * 100)
    if cut >= 10000:
        out += [f'    iifname "{WAN_IF}" drop', f'    oifname "{WAN_IF}" drop']
    elif cut > 0:
        out += [
            f'    iifname "{WAN_IF}" numgen random mod 10000 < {cut} drop',
            f'    oifname "{WAN_IF}" numgen random mod 10000 < {cut} drop',
        ]
    out += [
        f'    iifname "{WAN_IF}" ct state invalid drop',
        f'    iifname "{WAN_IF}" ct state new ct status & dnat == 0 drop',
    ]
    if spec.flows_per_host is not None:
        out.append(f'    iifname "{LAN_GLOB}" ct state new add @subs {{ ip saddr ct count over '
                   f"{spec.flows_per_host} }} counter name flows_refused drop")
    if spec.max_flows is not None:
        out.append(f"    ct state new ct count over {spec.max_flows} counter name flows_refused drop")
    out.append("  }")

    out += ["  chain input_filter {", "    type filter hook input priority filter; policy accept;"]
    out += [f'    iifname "{WAN_IF}" ct state established,related accept']
    if spec.tcp_unsolicited == "rst":
        out.append(f'    iifname "{WAN_IF}" meta l4proto tcp ct state new reject with tcp reset')
    out.append(f'    iifname "{WAN_IF}" ct state new drop')
    if not spec.hairpin:
        # hairpinning off: a packet from inside to our own public address goes nowhere
        out.append(f'    iifname "{LAN_GLOB}" ip daddr {ours} {BOTH} drop')
    out.append("  }")

    out += ["  chain post_nat {", "    type nat hook postrouting priority srcnat; policy accept;"]
    out.append(f'    oifname "{WAN_IF}" ip saddr {lan_net} jump alloc')
    if spec.hairpin:
        # RFC 4787 REQ-9: a hairpinned packet carries the sender's public address and port
        out.append(f'    oifname "{LAN_GLOB}" ip saddr {lan_net} ct status & dnat != 0 jump alloc')
    out.append("  }")

    out += ["  chain alloc {"]
    for g in groups:
        key_in = "meta l4proto . ip saddr . th sport" + (" . ip daddr" if g.b.mapping == "ADM" else "")
        if g.remembers:
            target = f"{key_in} map @emap{g.sfx}" if multi else f"{wan_ip} : {key_in} map @emap{g.sfx}"
            out.append(f"    {g.l4} snat ip to {target}")
        if g.b.allocation == "sequential":
            n = len(seq_ports(g.b.delta))
            out.append(f"    {g.l4} counter name seq_alloc{g.sfx} snat ip to {addr(g)} : numgen inc mod {n} map @seq{g.sfx}")
        elif g.b.allocation == "random":
            out.append(f"    {g.l4} snat ip to {addr(g)} : 1024-65535 fully-random")
        elif multi:
            out.append(f"    {g.l4} snat ip to {addr(g)}")
    out.append(f"    snat ip to {f'jhash ip saddr mod {len(pool)} map @pool' if multi else wan_ip}")
    out.append("  }")

    # after srcnat (priority 100) the packet carries its public port: remember it
    out += [
        "  chain post_record {",
        "    type filter hook postrouting priority srcnat + 10; policy accept;",
        f'    oifname "{WAN_IF}" counter name wan_out',
        f'    oifname "{WAN_IF}" meta l4proto udp counter name wan_out_udp',
    ]
    for g in groups:
        rec = f'    oifname "{WAN_IF}" ip saddr {ours} ct direction original {g.l4}'
        tmo = g.element_timeout
        if g.remembers:
            key_after = "meta l4proto . ct original ip saddr . ct original proto-src" + (
                " . ip daddr" if g.b.mapping == "ADM" else "")
            value = "ip saddr . th sport" if multi else "th sport"
            out.append(f"{rec} update @emap{g.sfx} {{ {key_after} : {value} }}")
        if needs_pub:
            out.append(f"{rec} update @pub {{ {pub_out}{tmo} : ct original ip saddr . ct original proto-src }}")
        if needs_adf and g.b.filtering == "ADF":
            out.append(f"{rec} update @adf {{ {pub_out} . ip daddr{tmo} }}")
    out.append("  }")
    out.append("}")
    return "\n".join(out) + "\n"


def sysctls(spec: NatSpec) -> dict[str, str]:
    """Per-namespace settings that go with the ruleset (conntrack lifetimes live in the namespace)."""
    t = str(spec.udp_timeout)
    return {
        "net/netfilter/nf_conntrack_udp_timeout": t,
        "net/netfilter/nf_conntrack_udp_timeout_stream": t,
        "net/netfilter/nf_conntrack_tcp_timeout_established": str(spec.tcp_timeout),
    }
