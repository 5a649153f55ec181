"""The lab probe's allocation reading, pure (no lab): the ground truth the presets are checked by."""

from nattrav.lab.probe import classify_allocation


def _runs(*pairs, local=40000):
    return [{"local": local + k, "seen": [["203.0.113.10", a], ["203.0.113.10", b]]} for k, (a, b) in enumerate(pairs)]


def test_a_counter_with_step_two_reads_sequential_two():
    assert classify_allocation(_runs((1000, 1002), (1004, 1006), (1008, 1010))) == ("sequential", 2)


def test_another_flow_in_between_moves_the_counter_once_more_and_the_step_stays():
    # one foreign allocation between our flows (the kernel's, another host's) makes one gap 2 x Δ
    assert classify_allocation(_runs((1000, 1002), (1006, 1008), (1010, 1012))) == ("sequential", 2)


def test_scattered_or_backward_ports_read_random():
    assert classify_allocation(_runs((31000, 5022), (48111, 1200), (9000, 60000))) == ("random", 0)
    assert classify_allocation(_runs((1000, 1002), (998, 1004))) == ("random", 0)
    assert classify_allocation(_runs((1000, 3002), (5004, 7006))) == ("random", 0)  # jumps of 2,002


def test_preserved_and_unanswered():
    assert classify_allocation([{"local": 4000, "seen": [["203.0.113.10", 4000]] * 2}]) == ("preserve", 0)
    assert classify_allocation([{"local": 4000, "seen": [None, ["203.0.113.10", 4000]]}]) == ("unknown", 0)
