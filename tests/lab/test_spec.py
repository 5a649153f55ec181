"""NatSpec, presets and their checks: pure, no root needed."""

import dataclasses

import pytest

from nattrav.lab import PRESETS, LabError, NatSpec, effective, resolve
from nattrav.lab.spec import from_dict

REQUIRED = [
    "none", "full-cone", "restricted-cone", "port-restricted", "symmetric-seq", "symmetric-seq-2",
    "symmetric-seq-7", "symmetric-random", "adm", "cgnat",
]


@pytest.mark.parametrize("name", REQUIRED)
def test_required_presets_exist_and_validate(name):
    assert name in PRESETS
    spec = resolve(name)
    if name == "none":
        assert spec is None
    else:
        assert spec.validate() is spec
        assert spec.name == name


def test_preset_behaviours_match_their_names():
    assert (PRESETS["full-cone"].mapping, PRESETS["full-cone"].filtering) == ("EIM", "EIF")
    assert PRESETS["restricted-cone"].filtering == "ADF"
    assert PRESETS["port-restricted"].filtering == "APDF"
    for n, d in (("symmetric-seq", 1), ("symmetric-seq-2", 2), ("symmetric-seq-7", 7)):
        s = PRESETS[n]
        assert (s.mapping, s.allocation, s.delta) == ("APDM", "sequential", d)
    assert PRESETS["symmetric-random"].allocation == "random"
    assert PRESETS["adm"].mapping == "ADM"
    assert PRESETS["cgnat"].outer is not None and PRESETS["cgnat"].layers == 2


@pytest.mark.parametrize("n", [1, 3, 13, 100, 1000])
def test_symmetric_seq_n_parses_any_delta_in_range(n):
    s = resolve(f"symmetric-seq-{n}")
    assert s.delta == n and s.allocation == "sequential" and s.mapping == "APDM"


@pytest.mark.parametrize("bad", ["symmetric-seq-0", "symmetric-seq-1001", "symmetric-seq-99999"])
def test_delta_out_of_range_is_one_clear_line(bad):
    with pytest.raises(LabError) as ei:
        resolve(bad)
    msg = str(ei.value)
    assert "out of range" in msg and "1..1000" in msg and "\n" not in msg


def test_unknown_preset_lists_the_choices():
    with pytest.raises(LabError) as ei:
        resolve("fullcone")
    msg = str(ei.value)
    assert "unknown NAT preset 'fullcone'" in msg and "full-cone" in msg and "\n" not in msg


@pytest.mark.parametrize(
    "kw, words",
    [
        (dict(mapping="APDM", allocation="preserve"), "allocation='sequential'"),
        (dict(mapping="ADM", allocation="preserve"), "allocation='sequential'"),
        (dict(mapping="APDM", allocation="sequential", filtering="EIF"), "filtering='APDF'"),
        (dict(mapping="ADM", allocation="random", filtering="EIF"), "filtering='ADF'"),
        (dict(allocation="random", delta=3), "allocation='sequential'"),
        (dict(mapping="XIM"), "EIM, ADM, APDM"),
        (dict(filtering="open"), "EIF, ADF, APDF"),
        (dict(allocation="next"), "preserve, sequential, random"),
        (dict(tcp_unsolicited="icmp"), "'drop' or 'rst'"),
        (dict(loss_percent=120.0), "0..100"),
        (dict(udp_timeout=0), "1..3600"),
        (dict(allocation="sequential", delta=0), "1..1000"),
    ],
)
def test_contradictions_raise_one_line_with_a_fix(kw, words):
    with pytest.raises(LabError) as ei:
        NatSpec(**kw).validate()
    assert words in str(ei.value)
    assert "\n" not in str(ei.value)


def test_four_layers_are_refused():
    assert NatSpec(outer=NatSpec(outer=NatSpec())).validate().layers == 3
    inner = NatSpec(outer=NatSpec(outer=NatSpec(outer=NatSpec())))
    with pytest.raises(LabError, match="at most 3 NAT layers"):
        inner.validate()


def test_with_timeout_reaches_the_outer_layer_too():
    s = PRESETS["cgnat"].with_timeout(3)
    assert s.udp_timeout == 3 and s.outer.udp_timeout == 3
    assert PRESETS["cgnat"].udp_timeout == 30  # presets are frozen, untouched


@pytest.mark.parametrize("name", [n for n in REQUIRED if n != "none"])
def test_describe_from_dict_round_trip(name):
    s = PRESETS[name]
    back = from_dict(s.describe())
    assert back == s and back.name == s.name


def test_from_dict_rejects_unknown_fields():
    with pytest.raises(LabError, match="unknown NAT field"):
        from_dict({"mapping": "EIM", "colour": "red"})


def test_effective_behaviour_of_double_nat():
    e = effective(PRESETS["cgnat"])
    assert e["mapping"] == "EIM" and e["filtering"] == "APDF" and e["allocation"] == "preserve"
    assert e["hairpin"] is False
    mixed = NatSpec(outer=dataclasses.replace(PRESETS["symmetric-seq"], loss_percent=10.0), loss_percent=10.0)
    e = effective(mixed.validate())
    assert e["mapping"] == "APDM" and e["allocation"] == "sequential" and e["delta"] == 1
    assert e["loss_percent"] == pytest.approx(19.0)
    assert effective(None) is None
