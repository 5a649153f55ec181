"""The README's main job: two peers behind sequential symmetric NATs connect through our servers."""

import pytest

from nattrav.lab.demo import run_demo
from nattrav.lab.pytest_support import require_lab


@pytest.mark.lab
def test_demo_connects_two_peers_behind_symmetric_nats():
    require_lab()
    lines = []
    assert run_demo("symmetric-seq", "symmetric-seq", timeout=60, out=lines.append), "\n".join(lines)
    text = "\n".join(lines)
    # every phase is shown for both peers
    for tag in ("[a]", "[b]"):
        for phase in ("discovery: APDM mapping", "mapping: the punch socket", "plan: predicted", "connected to"):
            assert f"{tag} {phase}" in text, (tag, phase, text)
    assert "[a] received: b'hello from b\\n'" in text and "[b] received: b'hello from a\\n'" in text


@pytest.mark.lab
def test_demo_over_tcp_random_nat_meets_a_cone_by_birthday():
    require_lab()
    lines = []
    assert run_demo("symmetric-random", "port-restricted", timeout=60, out=lines.append, tcp=True), \
        "\n".join(lines)
    text = "\n".join(lines)
    for tag in ("[a]", "[b]"):
        for phase in ("TCP mapping: local port", "plan: tcp-birthday", "connected to"):
            assert f"{tag} {phase}" in text, (tag, phase, text)
    assert "[a] received: b'hello from b\\n'" in text and "[b] received: b'hello from a\\n'" in text
    assert "connected directly (TCP)" in text
