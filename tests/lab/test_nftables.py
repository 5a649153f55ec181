"""The ruleset renderer is pure: check the rules each behaviour needs are (and only then are) there."""

import dataclasses
import re

import pytest

from nattrav.lab import PRESETS, NatSpec
from nattrav.lab.nftables import render, seq_ports, sysctls
from nattrav.lab.spec import SEQ_BASE


def r(spec):
    return render(spec, wan_ip="203.0.113.10", lan_net="10.0.1.0/24")


@pytest.mark.parametrize("delta", [1, 2, 7, 1000])
def test_sequential_map_steps_by_delta(delta):
    text = r(PRESETS["symmetric-seq"] if delta == 1 else dataclasses.replace(PRESETS["symmetric-seq"], delta=delta))
    line = next(ln for ln in text.splitlines() if "map seq" in ln)
    elems = [(int(k), int(v)) for k, v in re.findall(r"(\d+) : (\d+)", line.split("elements")[1])]
    assert elems[0] == (0, SEQ_BASE)
    assert all(v2 - v1 == delta for (_, v1), (_, v2) in zip(elems, elems[1:]))
    assert all(v <= 65535 for _, v in elems)
    assert f"numgen inc mod {len(elems)} map @seq" in text
    assert len(elems) == len(seq_ports(delta))


def test_preserving_cone_is_plain_snat_without_allocator():
    text = r(PRESETS["port-restricted"])
    assert "numgen inc" not in text and "fully-random" not in text and "@emap" not in text
    assert "snat ip to 203.0.113.10" in text
    # APDF: no inbound dnat from the WAN; unsolicited new flows die before conntrack confirms them
    assert 'iifname "wan" ip daddr' not in text
    assert 'iifname "wan" ct state new ct status & dnat == 0 drop' in text


def test_full_cone_dnats_through_the_public_port_map():
    text = r(PRESETS["full-cone"])
    assert (
        'iifname "wan" ip daddr 203.0.113.10 meta l4proto { tcp, udp } '
        "dnat ip addr . port to meta l4proto . th dport map @pub"
    ) in text
    assert "update @pub" in text and "@adf" not in text


def test_restricted_cone_needs_the_remote_address_to_have_been_contacted():
    text = r(PRESETS["restricted-cone"])
    assert "meta l4proto . th dport . ip saddr @adf dnat" in text
    assert "update @adf { meta l4proto . th sport . ip daddr }" in text


def test_adm_remembers_mapping_per_remote_address():
    text = r(PRESETS["adm"])
    assert "map emap { type inet_proto . ipv4_addr . inet_service . ipv4_addr : inet_service" in text
    assert "meta l4proto . ip saddr . th sport . ip daddr map @emap" in text


def test_random_allocation_is_fully_random():
    assert "fully-random" in r(PRESETS["symmetric-random"])


def test_hairpin_switch():
    on = r(PRESETS["port-restricted"])
    off = r(dataclasses.replace(PRESETS["port-restricted"], hairpin=False))
    assert 'iifname "lan*" ip daddr 203.0.113.10 meta l4proto { tcp, udp } dnat' in on
    assert 'oifname "lan*" ip saddr 10.0.1.0/24 ct status & dnat != 0 jump alloc' in on
    assert "dnat" not in off.split("chain pre_nat")[1].split("}")[0]
    assert 'iifname "lan*" ip daddr 203.0.113.10 meta l4proto { tcp, udp } drop' in off


def test_loss_and_tcp_rst_rules():
    s = dataclasses.replace(PRESETS["port-restricted"], loss_percent=12.5, tcp_unsolicited="rst")
    text = r(s)
    assert text.count("numgen random mod 10000 < 1250 drop") == 2
    assert "reject with tcp reset" in text
    assert "numgen random" not in r(PRESETS["port-restricted"])


def test_timeouts_reach_sets_and_conntrack():
    s = PRESETS["full-cone"].with_timeout(7)
    assert "timeout 7s" in r(s)
    assert sysctls(s) == {
        "net/netfilter/nf_conntrack_udp_timeout": "7",
        "net/netfilter/nf_conntrack_udp_timeout_stream": "7",
        "net/netfilter/nf_conntrack_tcp_timeout_established": "7440",
    }


def test_render_validates_first():
    from nattrav.lab import LabError

    with pytest.raises(LabError):
        r(NatSpec(mapping="APDM"))


def test_loss_extremes_render_valid_rules():
    # found by the hypothesis property in test_combinations.py: "< 10000" is out of nft's range
    all_lost = r(dataclasses.replace(PRESETS["port-restricted"], loss_percent=99.999))
    assert 'iifname "wan" drop' in all_lost and "numgen random" not in all_lost
    tiny = r(dataclasses.replace(PRESETS["port-restricted"], loss_percent=0.001))
    assert "numgen random" not in tiny and 'iifname "wan" drop' not in tiny
