"""Debug mode's channel accounting: which channel has a message in flight, in words."""

from __future__ import annotations

from snapline.mpi._debug import describe, unmatched_channels


def test_balanced_counts_have_no_unmatched_channel() -> None:
    sent = [{1: 3, 2: 1}, {0: 2}, {}]
    received = [{1: 2}, {0: 3}, {0: 1}]
    assert unmatched_channels(sent, received) == []


def test_an_unreceived_message_names_its_channel() -> None:
    sent = [{}, {2: 5}, {}]
    received = [{}, {}, {1: 2}]
    channels = unmatched_channels(sent, received)
    assert channels == [(1, 2, 5, 2)]
    assert describe(channels[0], 40) == (
        "rank 1 sent 3 messages to rank 2 that rank 2 has not received at checkpoint step 40"
    )


def test_a_receive_with_no_counted_send_is_reported_too() -> None:
    channels = unmatched_channels([{}, {}], [{1: 1}, {}])
    assert channels == [(1, 0, 0, 1)]
    assert "rank 0 received 1 more message(s) from rank 1" in describe(channels[0], 7)
