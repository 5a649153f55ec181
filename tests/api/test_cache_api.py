"""The API's cache knob on loopback, through a real nattrav-server: `cache=` a path keeps what the
first connect measured for the next one, `cache=False` measures every time and writes nothing, and
a file whose entry no longer holds is measured again and replaced."""

from __future__ import annotations

import json

import trio

from nattrav.api import connect, listen
from nattrav.api.behavior_cache import BehaviorCache


async def _session(servers, cache) -> tuple[list[str], list[str]]:
    """One listen() + connect() pair on loopback; the (connector's, listener's) event names."""
    a_events: list[str] = []
    b_events: list[str] = []
    with trio.fail_after(30):
        async with listen(servers["server"], stun=servers["stun"], cache=cache,
                          on_event=lambda ph, d: b_events.append(ph)) as lst:
            async with trio.open_nursery() as nursery:

                async def listener_side():
                    async with lst.accept() as path:  # QUIC, the default
                        assert await path.stream.receive_some() == b"hi"

                nursery.start_soon(listener_side)
                async with connect(servers["server"], lst.peer_id, stun=servers["stun"], cache=cache,
                                   on_event=lambda ph, d: a_events.append(ph)) as path:
                    await path.stream.send_all(b"hi")
    return a_events, b_events


async def test_a_cache_path_keeps_the_behaviour_for_the_next_connect(servers, tmp_path):
    path = tmp_path / "behavior.json"
    a, b = await _session(servers, str(path))
    assert "discovery-done" in b and "behavior-cached" in a  # the listener measured, the connector reused
    entries = json.loads(path.read_text())["entries"]
    assert len(entries) == 1 and next(iter(entries)).startswith("127.0.0.1|127.0.0.1|")
    a, b = await _session(servers, BehaviorCache(path))
    assert "behavior-cached" in a and "behavior-cached" in b
    assert "discovery" not in a + b


async def test_no_cache_measures_every_time_and_keeps_nothing(servers, tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    for _ in range(2):
        a, b = await _session(servers, False)
        assert "discovery-done" in a and "discovery-done" in b and "behavior-cached" not in a + b
    assert not (tmp_path / "nattrav").exists()


async def test_the_default_cache_lives_under_xdg_cache_home(servers, tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    await _session(servers, True)
    assert (tmp_path / "nattrav" / "behavior.json").is_file()


async def test_an_entry_that_names_another_server_is_not_used(servers, tmp_path):
    path = tmp_path / "behavior.json"
    await _session(servers, str(path))
    doc = json.loads(path.read_text())
    ((key, entry),) = doc["entries"].items()
    # the same network measured against another STUN server: not this one's answer
    doc["entries"] = {key.rsplit("|", 1)[0] + "|127.0.0.9:3478": entry}
    path.write_text(json.dumps(doc))
    a, b = await _session(servers, str(path))
    assert "discovery-done" in b and "behavior-cached" in a
    assert len(json.loads(path.read_text())["entries"]) == 2


async def test_a_warm_connect_runs_no_discovery_binding_at_all(servers, tmp_path, monkeypatch):
    """The punch socket's own samples name the network (one round trip): discovery's separate
    binding, the second round trip of the old warm path, is never made."""
    path = tmp_path / "behavior.json"
    await _session(servers, str(path))

    async def no_discovery(*args, **kwargs):
        raise AssertionError("a warm connect ran discovery")

    monkeypatch.setattr("nattrav.api.endpoint.discover", no_discovery)
    a, b = await _session(servers, str(path))
    assert "behavior-cached" in a and "behavior-cached" in b
    assert a.index("behavior-cached") < a.index("mapping")


async def test_a_guess_under_another_public_address_is_measured_again(servers, tmp_path):
    """An entry for our local address but another public one (another network with the same LAN
    address): sampled with, found wrong by the public address, measured from scratch."""
    path = tmp_path / "behavior.json"
    await _session(servers, str(path))
    doc = json.loads(path.read_text())
    ((key, entry),) = doc["entries"].items()
    local, _public, stun = key.split("|")
    doc["entries"] = {f"{local}|192.0.2.1|{stun}": entry}
    path.write_text(json.dumps(doc))
    a, b = await _session(servers, str(path))
    assert "behavior-cache-miss" in b and "discovery-done" in b  # the listener goes first
    assert "behavior-cached" in a  # then the connector finds what the listener measured
    assert key in json.loads(path.read_text())["entries"]
