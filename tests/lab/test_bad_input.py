"""Bad lab input for the new options: one LabError line, and nothing left behind (no namespace, no
state file, no process) when a lab fails on its way up."""

import subprocess
import sys

import pytest

from nattrav.lab import Lab, LabError, netns, registry
from nattrav.lab import lab as lab_module
from nattrav.lab.shape import LinkSpec, Shape

lab_test = pytest.mark.lab


@pytest.mark.parametrize("kwargs, words", [
    (dict(left="port-restricted+"), "empty layer"),
    (dict(left="full-cone,ports=3"), "unknown field 'ports'"),
    (dict(right="cgn,public_ips=0"), "1..8"),
    (dict(shape="moon"), "unknown shape"),
    (dict(shape=Shape(link_a=LinkSpec(delay_ms=1, jitter_ms=2))), "negative delays"),
    (dict(shape=Shape(routers_b=100)), "0..30"),
    (dict(left="none", hosts_per_nat=12), "at most 10 public hosts"),
])
def test_bad_new_options_fail_before_anything_is_built(kwargs, words):
    before = set(registry.all_states())
    with pytest.raises(LabError) as ei:
        Lab(**kwargs).up()
    msg = str(ei.value)
    assert words in msg and "\n" not in msg
    assert set(registry.all_states()) == before


@lab_test
def test_a_delay_line_that_cannot_start_leaves_nothing(need_lab, monkeypatch):
    monkeypatch.setattr(lab_module, "WIRE_MODULE", "nattrav.lab.no_such_delay_line")
    lab = Lab("port-restricted", "none", shape="wan50")
    with pytest.raises(LabError) as ei:
        lab.up()
    msg = str(ei.value)
    assert "delay line on w_a did not start" in msg and "\n" not in msg
    assert lab.id and netns.list_names(f"nt-{lab.id}-") == [] and registry.read_state(lab.id) is None
    assert not lab._procs and not lab.is_up
    # no delay-line process survived the failure
    mine = subprocess.run(["pgrep", "-f", f"nt-{lab.id}-"], capture_output=True, text=True).stdout.split()
    assert mine == [], mine


def test_cli_bad_shape_and_layer_are_one_line():
    for argv in (["up", "--shape", "moon"], ["up", "--left", "full-cone+none"]):
        p = subprocess.run([sys.executable, "-m", "nattrav.lab.cli", *argv], capture_output=True, text=True, timeout=30)
        lines = p.stderr.strip().splitlines()
        assert p.returncode == 2 and len(lines) == 1 and "Traceback" not in p.stderr, p.stderr
