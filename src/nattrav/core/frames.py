"""Python face of csrc/frames.c: a recvmmsg batch's frames checked in one C call (source address,
structure, HMAC-SHA256 tag, replay window), and a burst's DATA frames sealed in one.

The replay window stays handshake.ReplayWindow (a Python int of 1024 bits): it is copied into the C
struct before a batch and back after, so the path's Handshake and the batch calls share one window
whichever of them sees a frame first.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from .._core import ffi, lib
from .errors import check
from .mmsg import Address, RecvBatch, addr_to_c

WINDOW = 1024  # the C window's size: handshake.REPLAY_WINDOW
HEADER = lib.NT_FRAME_HEADER
OVERHEAD = lib.NT_FRAME_OVERHEAD
DATA = lib.NT_FRAME_DATA
RAW = lib.NT_FRAME_RAW
DEFER = lib.NT_FRAME_DEFER
_MASK = (1 << WINDOW) - 1


def sha_ni(portable: bool = False) -> bool:
    """Tests: `portable` makes the C core hash without the SHA extensions. True when they are in use."""
    return bool(lib.nt_sha256_portable(int(portable)))


class MacKey:
    """An HMAC-SHA256 key with its inner and outer blocks hashed once."""

    def __init__(self, key: bytes) -> None:
        if not isinstance(key, (bytes, bytearray)) or not key:
            raise ValueError("MAC key must be non-empty bytes")
        self.c = ffi.new("nt_mac_key *")
        check(lib.nt_mac_key_init(self.c, bytes(key), len(key)), "MAC key")

    def digest(self, msg: bytes) -> bytes:
        out = ffi.new("uint8_t[32]")
        check(lib.nt_hmac_sha256(self.c, msg, len(msg), out), "HMAC")
        return bytes(out)


@dataclass
class Summary:
    """What one batch accepted (nt_frames_summary)."""

    data: int = 0
    keepalives: int = 0
    data_bytes: int = 0
    rejected: int = 0
    foreign: int = 0
    cut: int = 0
    first_counter: int = 0
    high_counter: int = 0
    last_counter: int = 0

    @property
    def accepted(self) -> int:
        return self.data + self.keepalives


class FrameBatch:
    """recvmmsg into reusable buffers, then the frames checked in C. With a key, only DATA frames'
    payloads come out; without one (a plain socket), every datagram from an allowed source."""

    def __init__(self, allow: list[Address], key: bytes | None = None, n: int = 64, bufsize: int = 2048) -> None:
        self.batch = RecvBatch(n, bufsize)
        self.key = MacKey(key) if key is not None else None
        self._allow = ffi.new("nt_addr[]", max(1, len(allow)))
        for i, a in enumerate(allow):
            addr_to_c(a, self._allow[i])
        self._nallow = len(allow)
        self._window = ffi.new("nt_replay_window *")
        self._kinds = ffi.new("int32_t[]", n)
        self._counters = ffi.new("uint64_t[]", n)
        self._sum = ffi.new("nt_frames_summary *")
        self._zero = bytes(ffi.sizeof("nt_frames_summary"))
        self._buf = ffi.buffer(self.batch._bufs)
        self.count = 0

    def recv(self, sock: Any) -> int:
        """One recvmmsg; BlockingIOError when nothing waits."""
        self.count = self.batch.recv(sock)
        return self.count

    def open(self, start: int, window: Any | None = None) -> tuple[int, list[bytes], Summary]:
        """Check datagrams start.. of the last recv in order; returns (stop, payloads, summary): stop is
        the count, or the index of a handshake frame (HELLO, ACK, CONFIRM, CLOSE) the caller must give
        the Handshake (`frame(stop)`) before calling again from stop + 1. `window`: the Handshake's
        ReplayWindow (required with a key), updated in place."""
        w = self._window
        if self.key is not None:
            if window is None or window.size != WINDOW:
                raise ValueError(f"a keyed batch needs a {WINDOW}-counter replay window")
            w.empty = int(window.top < 0)
            w.top = max(window.top, 0)
            ffi.memmove(w.bits, (window.bits & _MASK).to_bytes(WINDOW // 8, "little"), WINDOW // 8)
        ffi.memmove(self._sum, self._zero, ffi.sizeof("nt_frames_summary"))
        b = self.batch
        stop = check(lib.nt_frames_open(self.key.c if self.key is not None else ffi.NULL, w, b._bufs, b.bufsize,
                                        b._lens, b._addrs, start, self.count, self._allow, self._nallow,
                                        self._kinds, self._counters, self._sum), "frames")
        if self.key is not None:
            window.top = -1 if w.empty else int(w.top)
            window.bits = int.from_bytes(ffi.buffer(w.bits), "little")
        s = self._sum
        summary = Summary(s.data, s.keepalives, s.data_bytes, s.rejected, s.foreign, s.cut,
                          s.first_counter, s.high_counter, s.last_counter)
        kinds, lens, buf, size = self._kinds, b._lens, self._buf, b.bufsize
        want, cut = (DATA, OVERHEAD - HEADER) if self.key is not None else (RAW, 0)
        skip = HEADER if self.key is not None else 0
        payloads = [buf[i * size + skip : i * size + lens[i] - cut] for i in range(start, stop) if kinds[i] == want]
        return stop, payloads, summary

    def frame(self, i: int) -> bytes:
        """Datagram i of the last recv, as received."""
        n = self.batch._lens[i]
        return self._buf[i * self.batch.bufsize : i * self.batch.bufsize + max(n, 0)]


def seal(key: MacKey, first_counter: int, frames: bytearray, frame_len: int, n: int) -> None:
    """Write DATA headers (counters first_counter, +1, ...) and tags into n frames laid end to end in
    `frames`, each frame_len long with its payload already at offset HEADER."""
    if len(frames) < n * frame_len:
        raise ValueError("frames buffer shorter than n frames")
    check(lib.nt_frames_seal(key.c, first_counter, ffi.from_buffer(frames), frame_len, n), "seal frames")


__all__ = ["DATA", "DEFER", "HEADER", "OVERHEAD", "FrameBatch", "MacKey", "Summary", "WINDOW", "seal", "sha_ni"]
