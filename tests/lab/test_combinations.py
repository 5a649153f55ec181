"""Beyond the presets: every valid NatSpec renders to a ruleset nft accepts, and a sample of
non-preset combinations (sequential/random allocators under EIM and ADM, hairpinning on a symmetric
NAT, RST for unsolicited SYNs) measures as described."""

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from nattrav.lab import LabError, NatSpec, effective
from nattrav.lab.nftables import render
from nattrav.lab.spec import TcpSpec
from nattrav.lab.probe import measure
from nattrav.lab.pytest_support import running_lab

pytestmark = pytest.mark.lab


def _valid(**kw):
    try:
        return NatSpec(**kw).validate()
    except LabError:
        return None


tcp_specs = st.builds(
    TcpSpec,
    mapping=st.sampled_from(["EIM", "ADM", "APDM"]),
    filtering=st.sampled_from(["EIF", "ADF", "APDF"]),
    allocation=st.sampled_from(["preserve", "sequential", "random"]),
    delta=st.integers(1, 1000),
)

specs = st.builds(
    lambda **kw: _valid(**kw),
    mapping=st.sampled_from(["EIM", "ADM", "APDM"]),
    filtering=st.sampled_from(["EIF", "ADF", "APDF"]),
    allocation=st.sampled_from(["preserve", "sequential", "random"]),
    delta=st.integers(1, 1000),
    hairpin=st.booleans(),
    udp_timeout=st.integers(1, 3600),
    tcp_unsolicited=st.sampled_from(["drop", "rst"]),
    loss_percent=st.floats(0, 100, allow_nan=False),
    tcp=st.none() | tcp_specs,
    tcp_timeout=st.integers(1, 432_000),
    public_ips=st.integers(1, 8),
    pooling=st.sampled_from(["paired", "arbitrary"]),
    max_flows=st.none() | st.integers(16, 262_144),
    flows_per_host=st.none() | st.integers(16, 262_144),
).filter(lambda s: s is not None)


@pytest.fixture(scope="module")
def checker():
    with running_lab("none", "none") as lab:
        yield lab


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                                 HealthCheck.filter_too_much])
@given(spec=specs)
@example(spec=NatSpec(loss_percent=100.0))
@example(spec=NatSpec(loss_percent=0.001))
@example(spec=NatSpec("ADM", "ADF", "sequential", delta=1000, udp_timeout=3600))
@example(spec=NatSpec("ADM", "ADF", "random", public_ips=8, pooling="arbitrary", hairpin=True,
                      tcp=TcpSpec("APDM", "APDF", "sequential", 7), max_flows=16, flows_per_host=16))
def test_every_valid_spec_renders_to_a_ruleset_nft_accepts(checker, spec):
    pool = [f"203.0.113.{10 + k}" for k in range(spec.public_ips)]
    text = render(spec, wan_ip=pool[0], lan_net="10.0.1.0/24", wan_ips=pool)
    cp = checker.run("router", ["nft", "-c", "-f", "-"], input=text)
    assert cp.returncode == 0, cp.stderr


COMBOS = {
    "eim-seq3-eif": NatSpec("EIM", "EIF", "sequential", delta=3, name="eim-seq3-eif"),
    "eim-random-adf": NatSpec("EIM", "ADF", "random", name="eim-random-adf"),
    "adm-random-apdf": NatSpec("ADM", "APDF", "random", name="adm-random-apdf"),
    "apdm-seq2-hairpin-rst": NatSpec("APDM", "APDF", "sequential", delta=2, hairpin=True,
                                     tcp_unsolicited="rst", name="apdm-seq2-hairpin-rst"),
}
PAIRS = [("eim-seq3-eif", "eim-random-adf"), ("adm-random-apdf", "apdm-seq2-hairpin-rst")]


@pytest.fixture(scope="module", params=PAIRS, ids=["-vs-".join(p) for p in PAIRS])
def combo_lab(request):
    left, right = request.param
    with running_lab(COMBOS[left], COMBOS[right], hosts_per_nat=2, responder=True) as lab:
        yield lab


@pytest.mark.parametrize("side", ["a", "b"])
def test_combination_measures_as_described(combo_lab, side):
    lab = combo_lab
    exp = effective(lab.spec(side))
    m = measure(lab, side, checks=("mapping", "filtering", "allocation", "hairpin", "tcp"))
    got = {k: getattr(m, k) for k in ("mapping", "filtering", "allocation", "hairpin", "tcp_unsolicited")}
    want = {k: exp[k] for k in got}
    assert got == want, (lab.spec(side).name, m)
    if exp["allocation"] == "sequential":
        assert m.delta == exp["delta"], m
