"""Property: for any small burst, the C core and the Python fallback deliver exactly the planned
(payload, source socket, destination) multiset: nothing lost, nothing doubled, nothing altered."""

import collections
import socket
import time

from hypothesis import given, settings
from hypothesis import strategies as hs

from nattrav.core import Burst, SocketPool
from nattrav.core.fallback import PySocketPool

SENDERS = 6
RECEIVERS = 3

bursts = hs.lists(
    hs.tuples(hs.integers(0, SENDERS - 1), hs.integers(0, RECEIVERS - 1), hs.binary(min_size=4, max_size=4)),
    min_size=1, max_size=60,
)


def receivers():
    out = []
    for _ in range(RECEIVERS):
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
        s.bind(("127.0.0.1", 0))
        s.setblocking(False)
        out.append(s)
    return out


def collect(rxs, expect):
    got = collections.Counter()
    deadline = time.monotonic() + 2
    while sum(got.values()) < expect and time.monotonic() < deadline:
        for k, s in enumerate(rxs):
            while True:
                try:
                    data, src = s.recvfrom(100)
                except BlockingIOError:
                    break
                got[(data, src[1], k)] += 1
    time.sleep(0.01)  # anything extra would show up now
    for k, s in enumerate(rxs):
        try:
            data, src = s.recvfrom(100)
            got[(data, src[1], k)] += 1
        except BlockingIOError:
            pass
    return got


@settings(max_examples=40, deadline=None)
@given(spec=bursts, per_packet=hs.booleans())
def test_any_burst_arrives_exactly_as_planned(spec, per_packet):
    rxs = receivers()
    try:
        ports = [s.getsockname()[1] for s in rxs]
        for cls in (SocketPool, PySocketPool):
            with cls(SENDERS, "127.0.0.1") as pool:
                payload = [tok for _, _, tok in spec] if per_packet else b"same"
                burst = Burst([s for s, _, _ in spec], "127.0.0.1", [ports[r] for _, r, _ in spec], payload)
                st = pool.send_burst(burst)
                assert (st.planned, st.sent, st.failed) == (len(spec), len(spec), 0)
                want = collections.Counter(
                    (tok if per_packet else b"same", pool.ports[s], r) for s, r, tok in spec)
                assert collect(rxs, len(spec)) == want, cls.__name__
    finally:
        for s in rxs:
            s.close()
