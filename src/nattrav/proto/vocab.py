"""The words nattrav uses, once: NAT behaviour (RFC 4787), the rendezvous roles, the strategies.

Every member is a StrEnum: it compares equal to its wire value ("EIM" == Mapping.EIM), prints as it
(f"{Mapping.EIM}" is "EIM"), and packs into JSON and msgpack as that string. Parsing a value that is
not one of the members is the caller's error to name (proto/report.py turns it into BadReport).
"""

from __future__ import annotations

import enum


class Mapping(enum.StrEnum):
    """How the NAT maps one socket's flows to public endpoints (RFC 4787 section 4.1)."""

    NONE = "none"  # no NAT: the host's own address is public
    EIM = "EIM"  # endpoint-independent: one public endpoint for every destination
    ADM = "ADM"  # address-dependent: a new one per destination address
    APDM = "APDM"  # address-and-port-dependent: a new one per destination address and port ("symmetric")

    @property
    def words(self) -> str:
        """The RFC 4787 words ("endpoint-independent"; "none" for no NAT)."""
        return _WORDS[self]

    @property
    def short(self) -> str:
        """The abbreviation for prose ("EIM"; "no NAT")."""
        return "no NAT" if self is Mapping.NONE else self.value

    @property
    def symmetric(self) -> bool:
        """A new mapping (so a new port) per destination: what RFC 3489 called a symmetric NAT."""
        return self in (Mapping.ADM, Mapping.APDM)


class Filtering(enum.StrEnum):
    """Which inbound packets the NAT lets through a mapping (RFC 4787 section 5)."""

    EIF = "EIF"  # endpoint-independent: anyone ("full cone")
    ADF = "ADF"  # address-dependent: addresses the socket sent to ("restricted cone")
    APDF = "APDF"  # address-and-port-dependent: endpoints it sent to ("port-restricted cone")

    @property
    def words(self) -> str:
        return _WORDS[self]

    @property
    def by_address(self) -> bool:
        """One packet to any port of an address opens the filter to every port of it."""
        return self in (Filtering.EIF, Filtering.ADF)


class Allocation(enum.StrEnum):
    """How the NAT picks the port of a new mapping (RFC 4787 section 4.2)."""

    PRESERVE = "preserve"  # the local port, when free
    SEQUENTIAL = "sequential"  # the previous one plus a step Δ
    RANDOM = "random"


class Role(enum.StrEnum):
    """The rendezvous' roles: they only break ties; both peers derive the same plan, mirrored."""

    FIRST = "first"  # sends the low-TTL packets first
    SECOND = "second"

    @property
    def other(self) -> Role:
        return Role.SECOND if self is Role.FIRST else Role.FIRST


class Strategy(enum.StrEnum):
    """The UDP punching strategies, cheapest first (their costs: proto/planner/strategies.py)."""

    LAN = "lan"  # to the peer's host candidates, inside the same network (proto/planner/lan.py)
    DIRECT = "direct"
    SIMULTANEOUS = "simultaneous"
    ADDRESS_OPEN = "address-open"
    PREDICTED = "predicted"
    BIRTHDAY = "birthday"
    RANDOM_SEQUENTIAL = "random-sequential"
    BEST_EFFORT = "best-effort"
    RELAY = "relay"  # not a punch: the ladder's last rung, through a TURN relay (io/relay_path.py)


class TcpStrategy(enum.StrEnum):
    """The TCP strategies (proto/planner/tcp.py)."""

    DIRECT = "tcp-direct"  # one side accepts unsolicited SYNs: the other just connects
    SIMULTANEOUS = "tcp-simultaneous"  # low-TTL SYN from the first side, then both connect()
    BIRTHDAY = "tcp-birthday"  # random side: many low-TTL connects; cone side: many guesses
    ADDRESS_OPEN = "tcp-address-open"  # an address-filtering side opens to the peer's IP and accepts
    NONE = "tcp-none"
    LAN = "tcp-lan"  # connect() to the peer's LAN listener, inside the same network (planner/lan.py)


_WORDS: dict[enum.Enum, str] = {
    Mapping.NONE: "none",
    Mapping.EIM: "endpoint-independent",
    Mapping.ADM: "address-dependent",
    Mapping.APDM: "address-and-port-dependent",
    Filtering.EIF: "endpoint-independent",
    Filtering.ADF: "address-dependent",
    Filtering.APDF: "address-and-port-dependent",
}

__all__ = ["Allocation", "Filtering", "Mapping", "Role", "Strategy", "TcpStrategy"]
