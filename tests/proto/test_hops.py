"""proto/hops: the low TTL read off a trace to the STUN server."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from nattrav.proto.hops import DEFAULT_LOW_TTL, inside, read_trace, shared


def test_inside_spaces():
    for ip in ("10.0.1.1", "172.16.3.4", "192.168.1.1", "100.64.0.1", "100.127.255.254", "169.254.1.1",
               "::ffff:10.1.2.3", "fd00::1"):
        assert inside(ip), ip
    # documentation ranges are the lab's Internet: outside
    for ip in ("203.0.113.1", "198.51.100.1", "192.0.2.1", "8.8.8.8", "100.128.0.1", "2001:db8::1"):
        assert not inside(ip), ip


def test_one_home_nat():
    r = read_trace({1: "10.0.1.1", 2: "203.0.113.1"}, server_ttl=3, max_ttl=8)
    assert (r.low_ttl, r.measured, r.inside_hops) == (2, True, 1)


def test_home_nat_inside_a_carrier_grade_nat():
    # the guess of 2 would die at the CGN: the TTL must count both layers
    r = read_trace({1: "192.168.1.1", 2: "100.64.0.1", 3: "203.0.113.1"}, server_ttl=4, max_ttl=8)
    assert (r.low_ttl, r.inside_hops) == (3, 2)
    # the shared-space hop says a carrier-grade NAT is ours (its subscriber's flows are few)
    assert r.cgn and r.to_dict()["cgn"] is True


def test_only_the_shared_space_says_carrier_grade_nat():
    assert shared("100.64.0.1") and shared("100.127.255.254") and shared("::ffff:100.100.1.1")
    for ip in ("100.63.255.255", "100.128.0.0", "10.0.0.1", "192.168.1.1", "203.0.113.1", "fd00::1", "junk"):
        assert not shared(ip), ip
    home = read_trace({1: "192.168.1.1", 2: "10.0.0.1", 3: "203.0.113.1"}, server_ttl=4, max_ttl=8)
    assert home.measured and not home.cgn
    # a shared-space hop past the first outside one is still ours to report: any hop of the trace
    silent = read_trace({2: "100.64.7.1"}, server_ttl=None, max_ttl=4)
    assert silent.cgn and not read_trace({}, None, 4).cgn


def test_three_layers_and_routers_inside():
    r = read_trace({1: "10.0.0.1", 2: "10.9.0.1", 3: "100.64.1.1", 4: "100.64.0.1", 5: "198.51.100.9",
                    6: "198.51.100.10"}, server_ttl=7, max_ttl=8)
    assert r.low_ttl == 5


def test_silent_hops():
    # the outermost NAT does not answer: count from the last inside hop
    assert read_trace({1: "10.0.0.1", 3: "203.0.113.1"}, server_ttl=5, max_ttl=8).low_ttl == 3
    # an outside hop answering BEFORE a later inside hop (odd paths) does not count
    assert read_trace({1: "203.0.113.5", 2: "10.0.0.1"}, server_ttl=5, max_ttl=8).low_ttl == 3
    # only the inside answered
    assert read_trace({1: "10.0.0.1", 2: "100.64.0.1"}, server_ttl=None, max_ttl=8).low_ttl == 3


def test_nothing_answered_is_the_default_and_says_so():
    r = read_trace({}, server_ttl=None, max_ttl=8)
    assert (r.low_ttl, r.measured) == (DEFAULT_LOW_TTL, False)
    assert "default" in r.describe()


def test_a_public_host_opens_at_the_first_hop():
    r = read_trace({1: "203.0.113.1"}, server_ttl=2, max_ttl=8)
    assert r.low_ttl == 1


def test_never_as_far_as_the_server():
    # the server answered at TTL 2: nothing past TTL 1 is ours to open
    assert read_trace({1: "10.0.0.1"}, server_ttl=2, max_ttl=8).low_ttl == 1


@given(st.dictionaries(st.integers(-5, 80), st.text(max_size=20) | st.ip_addresses(v=4).map(str)),
       st.none() | st.integers(1, 80), st.integers(1, 64))
def test_any_input_gives_a_sane_ttl(answers, server_ttl, max_ttl):
    r = read_trace(answers, server_ttl, max_ttl)
    assert 1 <= r.low_ttl <= 66
    r.describe()
    r.to_dict()
