import os
import random
import shutil
import socket

import pytest

from nattrav.lab.coturn import Coturn, CoturnConfig
from nattrav.proto.turn_rest import TurnRest

SECRET = "relay-tests-" + "0123456789abcdef"


def _need_coturn() -> None:
    if shutil.which("turnserver") is None and not os.path.exists("/usr/bin/turnserver"):
        if os.environ.get("CI"):
            pytest.fail("coturn is missing in CI (.ci/install installs it)")
        pytest.skip("needs coturn (apt-get install coturn)")


def _free_port(ip: str) -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as u, socket.socket() as t:
        while True:
            u.bind((ip, 0))
            port = u.getsockname()[1]
            try:
                t.bind((ip, port))
                return port
            except OSError:
                u.close()
                u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)


@pytest.fixture
def coturn():
    """A real coturn on a loopback address of its own (relaying to loopback peers): yields a dict
    with the server address and a TurnRest that mints credentials it accepts."""
    _need_coturn()
    ip = f"127.{random.randrange(1, 255)}.{random.randrange(1, 255)}.1"
    port = _free_port(ip)
    lo = random.randrange(20000, 60000, 200)
    config = CoturnConfig(listen_ip=ip, port=port, secret=SECRET, min_port=lo, max_port=lo + 199,
                          allow_loopback=True)
    with Coturn(config) as turn:
        yield {"server": (ip, port), "rest": TurnRest(ip, port, SECRET.encode()), "turn": turn}
