"""Key groups: stable hashing, contiguous ranges per rank, re-routing on a resize."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from snapline.errors import ConfigError
from snapline.protocols.base import CheckpointRecord
from snapline.runtime import keyed
from snapline.runtime.local.resize import in_transit_messages, plan_starts

keys = st.one_of(st.text(max_size=12), st.integers(-(10**12), 10**12))


def test_key_group_is_a_fixed_function_of_the_key() -> None:
    # CRC-32 of the key's text: the same in every process, run and Python version.
    assert keyed.key_group("w0", 128) == 0x077ECD62 % 128  # zlib.crc32(b"w0")
    assert keyed.key_group(17, 128) == keyed.key_group("17", 128)
    with pytest.raises(ConfigError, match="must be a str or an int"):
        keyed.key_group(1.5, 128)  # type: ignore[arg-type]


@given(groups=st.integers(1, 300), n=st.integers(1, 300))
def test_ranges_tile_the_groups_and_invert_rank_of_group(groups: int, n: int) -> None:
    if n > groups:
        with pytest.raises(ConfigError, match="at most key_groups ranks"):
            keyed.key_group_range(0, n, groups)
        return
    seen: list[int] = []
    sizes = set()
    for rank in range(n):
        owned = keyed.key_group_range(rank, n, groups)
        sizes.add(len(owned))
        for group in owned:
            assert keyed.rank_of_group(group, n, groups) == rank
        seen.extend(owned)
    assert seen == list(range(groups))  # contiguous, in rank order, each group once
    assert max(sizes) - min(sizes) <= 1


def _take_key(payload: object) -> keyed.Key:
    assert isinstance(payload, tuple)
    key = payload[0]
    assert isinstance(key, str | int)
    return key


@given(
    items=st.dictionaries(keys, st.integers(), max_size=40),
    messages=st.lists(st.tuples(st.integers(0, 7), keys, st.integers()), max_size=40),
    new_n=st.integers(1, 16),
)
def test_resize_gives_every_key_and_message_to_its_new_owner(
    items: dict[keyed.Key, int], messages: list[tuple[int, keyed.Key, int]], new_n: int
) -> None:
    in_transit = [(src, (key, i)) for i, (src, key, _) in enumerate(messages)]
    starts = plan_starts(items, in_transit, new_n=new_n, key_groups=16, message_key=_take_key)
    assert len(starts) == new_n
    placed: dict[keyed.Key, int] = {}
    for rank, start in enumerate(starts):
        for key, value in start.items:
            assert keyed.owner(key, new_n, 16) == rank
            assert key not in placed
            placed[key] = value
        for _, payload in start.inbox:
            assert keyed.owner(_take_key(payload), new_n, 16) == rank
    assert placed == items
    # Every message once, and per sender in the order it was sent (FIFO per new channel).
    delivered = sorted((payload for s in starts for _, payload in s.inbox), key=lambda p: p[1])
    assert delivered == [payload for _, payload in in_transit]
    for start in starts:
        for src in {src for src, _ in start.inbox}:
            order = [p[1] for s, p in start.inbox if s == src]
            assert order == sorted(order)


def test_more_ranks_than_key_groups_is_refused() -> None:
    with pytest.raises(ConfigError, match="at most key_groups ranks; choose -n <= 4"):
        plan_starts({"a": 1}, [], new_n=5, key_groups=4, message_key=str)


def _record(rank: int, sent: dict[int, int], received: dict[int, int]) -> CheckpointRecord:
    return CheckpointRecord(rank=rank, index=1, forced=False, sent=sent, received=received)


def test_in_transit_messages_are_collected_in_channel_order() -> None:
    records = {0: _record(0, {1: 3}, {1: 1}), 1: _record(1, {0: 1}, {0: 1})}
    at_hand = {(0, 1): {2: "b", 3: "c", 9: "sent after the cut"}}
    got = in_transit_messages(records, [[0, 1], [1, 0]], at_hand, protocol="chandy-lamport")
    assert got == [(0, "b"), (0, "c")]


def test_an_orphan_or_a_lost_in_transit_message_is_refused() -> None:
    orphan = {0: _record(0, {1: 1}, {}), 1: _record(1, {}, {0: 2})}
    with pytest.raises(ConfigError, match="received 2 messages from rank 0, which sent only 1"):
        in_transit_messages(orphan, [[0, 1]], {}, protocol="p")
    lost = {0: _record(0, {1: 2}, {}), 1: _record(1, {}, {0: 0})}
    with pytest.raises(ConfigError, match="message 2 on channel 0->1 is in transit"):
        in_transit_messages(lost, [[0, 1]], {(0, 1): {1: "a"}}, protocol="p")
