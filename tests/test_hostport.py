"""The one host:port parser: every form users type, and one readable UsageError for the rest."""

from __future__ import annotations

import pytest

from nattrav.errors import UsageError
from nattrav.hostport import parse_hostport


@pytest.mark.parametrize("text, kw, want", [
    ("198.51.100.1", {}, ("198.51.100.1", 7000)),
    (" 198.51.100.1:7001 ", {}, ("198.51.100.1", 7001)),
    ("rv.example:80", {}, ("rv.example", 80)),
    ("::1", {}, ("::1", 7000)),
    ("[::1]:7002", {}, ("::1", 7002)),
    ("[::1]", {}, ("::1", 7000)),
    ("fe80::1%eth0", {}, ("fe80::1%eth0", 7000)),
    ("7000", {"default_host": "0.0.0.0"}, ("0.0.0.0", 7000)),
    (":0", {"default_host": "0.0.0.0", "port_zero": True}, ("0.0.0.0", 0)),
    ("127.0.0.1:0", {"port_zero": True}, ("127.0.0.1", 0)),
])
def test_the_forms_users_type(text, kw, want):
    assert parse_hostport(text, 7000, **kw) == want


@pytest.mark.parametrize("text, default, kw, message", [
    ("host:99999", 7000, {}, "bad port"),
    ("host:abc", 7000, {}, "bad port"),
    ("127.0.0.1:0", 7000, {}, "bad port"),
    ("host", None, {}, "no port"),
    (":7000", 7000, {}, "no host"),
    ("", 7000, {}, "empty"),
    ("[::1", 7000, {}, "bad address"),
    ("[::1]x", 7000, {}, "bad address"),
    ("[not-v6]:1", 7000, {}, "bad IPv6"),
    ("1:2:zz", 7000, {}, "bad IPv6"),
    ("two words:80", 7000, {}, "bad host"),
])
def test_mistakes_are_one_usage_error(text, default, kw, message):
    with pytest.raises(UsageError, match=message):
        parse_hostport(text, default, **kw)
    with pytest.raises(ValueError):  # what argparse and older callers catch
        parse_hostport(text, default, **kw)
