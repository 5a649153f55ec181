"""One checker for the msgpack maps nattrav exchanges: {"v": VERSION, "t": <type>, <fields>...}
(rendezvous frames, coordinator <-> worker messages).

A table maps each type to its fields, a field to (allowed Python types, required). A field the table
does not name is refused, not ignored: a newer peer's extra field carries something this side cannot
honour, and an attacker's is padding; accepting it silently lets two sides disagree about what was
said. A schema grows by its version number instead. bool is an int in Python, so a field takes a
bool only where its types name bool.
"""

from __future__ import annotations

from typing import Any

Spec = dict[str, tuple[tuple[type, ...], bool]]


def cut(value: Any, limit: int = 40) -> str:
    """repr() of an untrusted value, at most ``limit`` characters: errors may quote, never echo."""
    if isinstance(value, (str, bytes)):
        value = value[:limit]
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 1] + "…"


def check_map(msg: Any, tables: dict[str, Spec], *, version: int, error: type[Exception],
              what: str = "message") -> dict:
    """`msg` when it is a map of a known type with exactly its fields, else `error` saying why."""
    if type(msg) is not dict:
        raise error(f"{what} is not a map")
    if type(msg.get("v")) is not int or msg["v"] != version:
        raise error(f"unsupported version {cut(msg.get('v'))}, this side speaks {version}")
    kind = msg.get("t")
    if not isinstance(kind, str) or kind not in tables:
        raise error(f"unknown {what} type {cut(kind)}")
    spec = tables[kind]
    for key, value in msg.items():
        if key in ("v", "t"):
            continue
        if key not in spec:
            raise error(f"{kind}: unexpected field {cut(key)}")
        types, _ = spec[key]
        if (isinstance(value, bool) and bool not in types) or not isinstance(value, types):
            raise error(f"{kind}: field {cut(key)} has type {type(value).__name__}")
    for key, (_, required) in spec.items():
        if required and key not in msg:
            raise error(f"{kind}: missing field {cut(key)}")
    return msg


__all__ = ["Spec", "check_map", "cut"]
