"""Keepalives sized from our NAT's measured mapping lifetime: while a UDP session is up and the
behaviour does not say how long an idle mapping lives, io/lifetime.py measures it in the background
(a few dozen STUN requests, about as long as the mapping lives); the result goes into the behaviour
the endpoint shares (a listener's next sessions), into the behaviour cache (the next process's), and
shortens the running QUIC path's keepalives when they were longer than the mapping allows."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from ..io.lifetime import LifetimeReading, measure_lifetime
from .endpoint import EventHook
from .secure import keepalive_interval


def wants_lifetime(ep: Any) -> bool:
    """A UDP endpoint behind a NAT whose mapping lifetime nobody measured yet."""
    behavior = getattr(ep, "behavior", None)
    return (hasattr(ep, "sock") and behavior is not None and behavior.lifetime is None
            and behavior.nat is not False)


class LifetimeWatch:
    """Measures once and tells whoever asked: the endpoint's behaviour, the cache, the QUIC paths
    `follow()`ed (their keepalives shorten, never lengthen; a caller's own keepalive stays)."""

    def __init__(self, ep: Any, stun: tuple[str, int], src_ip: str | None, emit: EventHook,
                 fixed_keepalive: bool = False) -> None:
        self.ep, self.stun, self.src_ip, self.emit = ep, stun, src_ip, emit
        self.fixed_keepalive = fixed_keepalive
        self.paths: list[Any] = []
        self.reading: LifetimeReading | None = None

    def follow(self, path: Any) -> None:
        self.paths.append(path)
        if self.reading is not None:
            self._retune(path)

    async def run(self) -> None:
        try:
            reading = await measure_lifetime(self.stun, self.src_ip)
        except OSError:
            return
        self.reading = reading
        lifetime = reading.lifetime
        detail = reading.to_dict()
        if lifetime is not None:
            self.ep.behavior.lifetime = lifetime
            cached = getattr(self.ep, "cached", None)
            if cached is not None:
                detail["cached"] = cached.cache.set_lifetime(cached.key, lifetime)
            detail["keepalive"] = keepalive_interval(lifetime)
        self.emit("lifetime", detail)
        for path in self.paths:
            self._retune(path)

    def _retune(self, path: Any) -> None:
        settings = getattr(path, "settings", None)
        lifetime = self.reading.lifetime if self.reading is not None else None
        if settings is None or lifetime is None or self.fixed_keepalive or settings.keepalive_interval is None:
            return
        wanted = keepalive_interval(lifetime)
        if wanted < settings.keepalive_interval:
            path.settings = replace(settings, keepalive_interval=wanted)
            self.emit("keepalive", {"interval": wanted, "lifetime": lifetime})


__all__ = ["LifetimeWatch", "wants_lifetime"]
