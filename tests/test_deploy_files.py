"""deploy/: the example environment file is a valid nattrav-server configuration, the systemd unit
passes systemd-analyze, and the coturn config agrees with them (ports, auth scheme)."""

import pathlib
import shlex
import shutil
import subprocess

import pytest

from nattrav.cli.server import build_parser, stun_config, turn_config

DEPLOY = pathlib.Path(__file__).resolve().parent.parent / "deploy"


def _env_file() -> dict[str, str]:
    out = {}
    for line in (DEPLOY / "nattrav-server.env").read_text().splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            key, _, value = line.partition("=")
            out[key.strip()] = value.strip()
    return out


def test_the_example_environment_is_a_working_configuration():
    env = _env_file()
    args = build_parser().parse_args(shlex.split(env["NATTRAV_SERVER_ARGS"]))
    config = stun_config(args, (3478, 3479), environ=env)
    turn = turn_config(args, environ=env)
    assert config is not None and config.layout == "single"
    # behind the 1:1 NAT: clients are told the public address, the sockets bind the private one
    assert config.ip == "203.0.113.7" and config.bind_ip(config.ip) == "10.0.0.5"
    assert turn is not None and (turn.host, turn.port) == ("203.0.113.7", 3490)
    # the secret came from the environment, never from the arguments
    assert env["NATTRAV_TURN_SECRET"] not in env["NATTRAV_SERVER_ARGS"]


def test_coturn_config_matches():
    conf = dict(line.split("=", 1) for line in (DEPLOY / "turnserver.conf").read_text().splitlines()
                if "=" in line and not line.startswith("#"))
    flags = {line.strip() for line in (DEPLOY / "turnserver.conf").read_text().splitlines()}
    assert "use-auth-secret" in flags and "static-auth-secret" in conf
    assert conf["listening-port"] == "3490"  # not our STUN ports
    assert conf["external-ip"] == "203.0.113.7/10.0.0.5"


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="needs systemd-analyze")
def test_the_unit_verifies(tmp_path):
    exe = shutil.which("nattrav-server") or str(pathlib.Path(__import__("sys").executable).parent / "nattrav-server")
    unit = (DEPLOY / "nattrav-server.service").read_text()
    assert "ExecStart=/opt/nattrav/bin/nattrav-server $NATTRAV_SERVER_ARGS" in unit
    # the same unit with this machine's binary and no env file: systemd-analyze checks every key
    unit = unit.replace("/opt/nattrav/bin/nattrav-server", exe).replace("EnvironmentFile=", "EnvironmentFile=-")
    (tmp_path / "nattrav-server.service").write_text(unit)
    r = subprocess.run(["systemd-analyze", "verify", str(tmp_path / "nattrav-server.service")],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0 and "nattrav-server.service" not in r.stderr, r.stderr
