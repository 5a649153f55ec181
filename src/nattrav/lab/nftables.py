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
"""

from __future__ import annotations

from .spec import SEQ_BASE, SEQ_TOP, NatSpec

TABLE = "nattrav"
WAN_IF = "wan"
LAN_GLOB = "lan*"
COUNTERS = ("wan_in", "wan_in_udp", "wan_out", "wan_out_udp", "seq_alloc")


def seq_ports(delta: int) -> list[int]:
    """The ports a sequential NAT hands out, in order, before it wraps."""
    n = min(4096, (SEQ_TOP - SEQ_BASE) // delta)
    return [SEQ_BASE + k * delta for k in range(n)]


def render(spec: NatSpec, *, wan_ip: str, lan_net: str) -> str:
    """The complete ruleset for one NAT box: WAN interface `wan`, LAN interfaces `lan*`."""
    spec.validate()
    t = spec.udp_timeout
    l4 = "meta l4proto { tcp, udp }"
    key_in = "meta l4proto . ip saddr . th sport"
    if spec.mapping == "ADM":
        key_in += " . ip daddr"
    # the same key, read after snat rewrote the packet
    key_after = "meta l4proto . ct original ip saddr . ct original proto-src"
    if spec.mapping == "ADM":
        key_after += " . ip daddr"
    remembers_mapping = spec.mapping in ("EIM", "ADM") and spec.allocation != "preserve"
    needs_pub = spec.filtering in ("EIF", "ADF") or spec.hairpin
    needs_adf = spec.filtering == "ADF"

    out: list[str] = [f"table ip {TABLE} {{"]
    for c in COUNTERS:
        out.append(f"  counter {c} {{ }}")

    if spec.allocation == "sequential":
        ports = seq_ports(spec.delta)
        elems = ", ".join(f"{k} : {p}" for k, p in enumerate(ports))
        out.append(
            f"  map seq {{ typeof numgen inc mod {len(ports)} : udp sport; elements = {{ {elems} }} }}"
        )
    if remembers_mapping:
        ktype = "inet_proto . ipv4_addr . inet_service"
        if spec.mapping == "ADM":
            ktype += " . ipv4_addr"
        out.append(f"  map emap {{ type {ktype} : inet_service; flags dynamic, timeout; timeout {t}s; }}")
    if needs_pub:
        out.append(
            "  map pub { type inet_proto . inet_service : ipv4_addr . inet_service; "
            f"flags dynamic, timeout; timeout {t}s; }}"
        )
    if needs_adf:
        out.append(
            "  set adf { type inet_proto . inet_service . ipv4_addr; "
            f"flags dynamic, timeout; timeout {t}s; }}"
        )

    # counting first, before anything can drop: the tests read these to prove what arrived
    out += [
        "  chain raw_pre {",
        "    type filter hook prerouting priority raw; policy accept;",
        f'    iifname "{WAN_IF}" counter name wan_in',
        f'    iifname "{WAN_IF}" meta l4proto udp counter name wan_in_udp',
        "  }",
    ]

    out += ["  chain pre_nat {", "    type nat hook prerouting priority dstnat; policy accept;"]
    if spec.filtering == "EIF":
        out.append(
            f'    iifname "{WAN_IF}" ip daddr {wan_ip} {l4} '
            "dnat ip addr . port to meta l4proto . th dport map @pub"
        )
    elif spec.filtering == "ADF":
        out.append(
            f'    iifname "{WAN_IF}" ip daddr {wan_ip} meta l4proto . th dport . ip saddr @adf '
            "dnat ip addr . port to meta l4proto . th dport map @pub"
        )
    if spec.hairpin:
        out.append(
            f'    iifname "{LAN_GLOB}" ip daddr {wan_ip} {l4} '
            "dnat ip addr . port to meta l4proto . th dport map @pub"
        )
    out.append("  }")

    loss = []
    # per ten thousand, so fractional percentages are honoured; nft refuses a bound equal to the modulus
    cut = round(spec.loss_percent * 100)
    if cut >= 10000:
        loss = [f'    iifname "{WAN_IF}" drop', f'    oifname "{WAN_IF}" drop']
    elif cut > 0:
        loss = [
            f'    iifname "{WAN_IF}" numgen random mod 10000 < {cut} drop',
            f'    oifname "{WAN_IF}" numgen random mod 10000 < {cut} drop',
        ]
    out += ["  chain forward_filter {", "    type filter hook forward priority filter; policy accept;"]
    out += loss
    out += [
        f'    iifname "{WAN_IF}" ct state invalid drop',
        f'    iifname "{WAN_IF}" ct state new ct status & dnat == 0 drop',
    ]
    out.append("  }")

    out += ["  chain input_filter {", "    type filter hook input priority filter; policy accept;"]
    out += [f'    iifname "{WAN_IF}" ct state established,related accept']
    if spec.tcp_unsolicited == "rst":
        out.append(f'    iifname "{WAN_IF}" meta l4proto tcp ct state new reject with tcp reset')
    out.append(f'    iifname "{WAN_IF}" ct state new drop')
    if not spec.hairpin:
        # hairpinning off: a packet from inside to our own public address goes nowhere
        out.append(f'    iifname "{LAN_GLOB}" ip daddr {wan_ip} {l4} drop')
    out.append("  }")

    out += ["  chain post_nat {", "    type nat hook postrouting priority srcnat; policy accept;"]
    out.append(f'    oifname "{WAN_IF}" ip saddr {lan_net} jump alloc')
    if spec.hairpin:
        # RFC 4787 REQ-9: a hairpinned packet carries the sender's public address and port
        out.append(f'    oifname "{LAN_GLOB}" ip saddr {lan_net} ct status & dnat != 0 jump alloc')
    out.append("  }")

    out += ["  chain alloc {"]
    if remembers_mapping:
        out.append(f"    {l4} snat ip to {wan_ip} : {key_in} map @emap")
    if spec.allocation == "sequential":
        n = len(seq_ports(spec.delta))
        out.append(f"    {l4} counter name seq_alloc snat ip to {wan_ip} : numgen inc mod {n} map @seq")
    elif spec.allocation == "random":
        out.append(f"    {l4} snat ip to {wan_ip} : 1024-65535 fully-random")
    out.append(f"    snat ip to {wan_ip}")
    out.append("  }")

    # after srcnat (priority 100) the packet carries its public port: remember it
    out += [
        "  chain post_record {",
        "    type filter hook postrouting priority srcnat + 10; policy accept;",
        f'    oifname "{WAN_IF}" counter name wan_out',
        f'    oifname "{WAN_IF}" meta l4proto udp counter name wan_out_udp',
    ]
    rec = f'    oifname "{WAN_IF}" ip saddr {wan_ip} ct direction original {l4}'
    if remembers_mapping:
        out.append(f"{rec} update @emap {{ {key_after} : th sport }}")
    if needs_pub:
        out.append(
            f"{rec} update @pub {{ meta l4proto . th sport : ct original ip saddr . ct original proto-src }}"
        )
    if needs_adf:
        out.append(f"{rec} update @adf {{ meta l4proto . th sport . ip daddr }}")
    out.append("  }")
    out.append("}")
    return "\n".join(out) + "\n"


def sysctls(spec: NatSpec) -> dict[str, str]:
    """Per-namespace settings that go with the ruleset (conntrack lifetimes live in the namespace)."""
    t = str(spec.udp_timeout)
    return {
        "net/netfilter/nf_conntrack_udp_timeout": t,
        "net/netfilter/nf_conntrack_udp_timeout_stream": t,
    }
