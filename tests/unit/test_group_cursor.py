"""tom.client.GroupCursor: what an app is given of a group's messages, from events that can
be missed or come out of order and history that leaves out what cannot be decrypted yet:
each message once, in group order (late only when its gap was given up on)."""

from __future__ import annotations

import os

from shared.primitives import SigningKey
from shared.wire.messages import groups as gm
from tom.client import GAP_GRACE_S, HOLD_S, GroupCursor, GroupMessage

SENDER = SigningKey(b"\x02" * 32).public
GID = "g" + "00" * 12


def msg(seq: int) -> GroupMessage:
    return GroupMessage(gm.GroupMessage(group_id=GID, seq=seq, id=os.urandom(16),
                                        sender=SENDER, timestamp_ms=0), f"m{seq}".encode())


def seqs(out: list[GroupMessage]) -> list[int]:
    return [m.seq for m in out]


def test_in_order_and_each_once() -> None:
    c = GroupCursor(3)
    assert seqs(c.add(msg(4), 0)) == [4]
    assert seqs(c.add(msg(5), 0)) == [5]
    assert c.add(msg(5), 0) == [] and c.add(msg(2), 0) == []  # again, or before the start
    assert c.done == 5 and not c.gap


def test_a_message_after_a_gap_waits_for_the_missing_one() -> None:
    c = GroupCursor(0)
    assert c.add(msg(3), 0) == [] and c.gap  # 1 and 2 missing
    assert c.add(msg(2), 0.5) == []
    assert seqs(c.add(msg(1), 1.0)) == [1, 2, 3]
    assert not c.gap and c.add(msg(2), 1.1) == []


def test_a_membership_entry_closes_its_gap_at_once() -> None:
    c = GroupCursor(1)
    assert c.add(msg(3), 0) == []
    assert seqs(c.not_message(2, 0.1)) == [3]
    assert c.not_message(7, 0.2) == [] and seqs(c.add(msg(4), 0.3)) == [4]
    assert c.add(msg(6), 0.3) == []
    assert seqs(c.add(msg(5), 0.3)) == [5, 6]  # 7 known not to be a message
    assert c.done == 7


def test_a_gap_waits_while_keys_are_awaited_and_its_message_still_comes_once() -> None:
    c = GroupCursor(0)
    c.not_message(1, 0)
    assert c.add(msg(4), 10.0) == [] and not c.stalled(10.0)
    assert c.release(10.0 + GAP_GRACE_S - 0.01, keys_awaited=False) == []  # the grace
    assert c.stalled(10.0 + GAP_GRACE_S)
    assert c.release(10.0 + HOLD_S - 0.01, keys_awaited=True) == []  # a key may come
    assert seqs(c.release(10.0 + HOLD_S, keys_awaited=True)) == [4]  # not forever
    assert seqs(c.add(msg(3), 80.0)) == [3]  # late after all: yielded, once
    assert c.add(msg(3), 80.1) == []
    assert seqs(c.add(msg(2), 80.2)) == [2] and c.add(msg(2), 80.3) == []
    assert seqs(c.add(msg(5), 81.0)) == [5]


def test_with_no_key_awaited_a_gap_is_given_up_after_the_grace() -> None:
    c = GroupCursor(0)
    assert c.add(msg(2), 0) == []  # 1: a new hub's entry (its event carries no seq)
    assert seqs(c.release(GAP_GRACE_S, keys_awaited=False)) == [2]
    assert not c.gap and seqs(c.add(msg(3), GAP_GRACE_S)) == [3]


def test_a_new_gap_waits_its_own_time() -> None:
    c = GroupCursor(0)
    c.add(msg(2), 0)
    assert seqs(c.add(msg(1), GAP_GRACE_S - 0.5)) == [1, 2]
    assert c.add(msg(4), GAP_GRACE_S) == []  # 3 missing: a new wait from here
    assert c.release(2 * GAP_GRACE_S - 0.01, keys_awaited=False) == []
    assert seqs(c.release(2 * GAP_GRACE_S, keys_awaited=False)) == [4]


def test_a_group_first_seen_starts_at_its_first_message_once_no_key_is_awaited() -> None:
    c = GroupCursor(0)  # a group just joined: its log starts after the join (seq 7 here)
    assert c.add(msg(9), 0) == [] and c.add(msg(8), 0.1) == []
    assert c.release(GAP_GRACE_S, keys_awaited=True) == []  # 8 may wait for its key
    assert seqs(c.release(GAP_GRACE_S + 0.5, keys_awaited=False)) == [8, 9]
    assert c.late == [(1, 7)] and c.add(msg(8), 2) == []
