"""The inbox quotas' arithmetic at its exact boundaries (services/router/quota.py); the
attacks themselves run in tests/unit/test_router_hostile.py and tests/hostile/."""

from __future__ import annotations

import pytest

from services.router.quota import ROW_OVERHEAD, InboxLimits, InboxQuota

S, T, H, K = b"s" * 32, b"t" * 32, b"h" * 32, b"k" * 32  # senders, a hop, a contact


def quota(**limits: float) -> InboxQuota:
    big = dict(max_bytes=10**9, max_messages=10**6, strangers_share=1.0, sender_bytes=10**9,
               sender_messages=10**6, hop_bytes=10**9, hop_messages=10**6, history_factor=2)
    return InboxQuota(InboxLimits(**{**big, **limits}), lambda node: node == K)  # type: ignore[arg-type]


@pytest.mark.parametrize("kind, limits", [
    ("full", dict(max_bytes=1000)), ("strangers", dict(strangers_share=0.5, max_bytes=2000)),
    ("sender", dict(sender_bytes=1000)), ("hop", dict(hop_bytes=1000))])
def test_bytes_fill_exactly_to_the_limit(kind: str, limits: dict[str, float]) -> None:
    q = quota(**limits)
    fits = 1000 - ROW_OVERHEAD  # one message of this payload fills the limit to the byte
    assert q.refusal(S, H, fits) is None
    assert q.refusal(S, H, fits + 1) == kind
    q.add(S, H, fits - 10)
    assert q.refusal(S, H, 10 - ROW_OVERHEAD) is None  # a stored row costs its overhead
    assert q.refusal(S, H, 11 - ROW_OVERHEAD) == kind


@pytest.mark.parametrize("kind, limits", [
    ("full", dict(max_messages=2)), ("strangers", dict(strangers_share=0.5, max_messages=4)),
    ("sender", dict(sender_messages=2)), ("hop", dict(hop_messages=2))])
def test_counts_fill_exactly_to_the_limit(kind: str, limits: dict[str, float]) -> None:
    q = quota(**limits)
    q.add(S, H, 0)
    assert q.refusal(S, H, 0) is None
    q.add(S, H, 0)
    assert q.refusal(S, H, 0) == kind


def test_history_multiplies_the_per_peer_limits_and_escapes_the_strangers_share() -> None:
    q = quota(sender_bytes=1000, hop_bytes=1000, strangers_share=1e-9)
    assert q.refusal(S, H, 0) == "strangers"  # no room for strangers at all
    assert q.refusal(K, H, 1000 - ROW_OVERHEAD) is None  # a contact through a stranger:
    assert q.refusal(K, H, 1001 - ROW_OVERHEAD) == "hop"  # the stranger hop's limit
    assert q.refusal(K, K, 2000 - ROW_OVERHEAD) is None
    assert q.refusal(K, K, 2001 - ROW_OVERHEAD) == "sender"


def test_senders_and_hops_are_charged_apart_and_purges_give_room_back() -> None:
    q = quota(sender_messages=1, hop_messages=2)
    q.add(S, H, 100)
    assert q.refusal(S, H, 0) == "sender" and q.refusal(T, H, 0) is None
    q.add(T, H, 100)
    assert q.refusal(b"u" * 32, H, 0) == "hop"
    assert q.total == [2, 200 + 2 * ROW_OVERHEAD]
    assert q.strangers == [2, 200 + 2 * ROW_OVERHEAD]
    q.remove([(S, H, 1, 100)])
    assert q.refusal(S, H, 0) is None and q.by_sender == {T: [1, 100 + ROW_OVERHEAD]}
    assert q.total == [1, 100 + ROW_OVERHEAD] == q.strangers


def test_load_counts_what_the_inbox_holds() -> None:
    q = quota()
    q.load([(S, H, 3, 300), (K, H, 1, 50)])
    assert q.total == [4, 350 + 4 * ROW_OVERHEAD]
    assert q.strangers == [3, 300 + 3 * ROW_OVERHEAD]
    assert q.by_hop[H] == [4, 350 + 4 * ROW_OVERHEAD]


def test_a_new_hop_and_a_new_sender_start_from_nothing() -> None:
    q = quota(hop_messages=1, sender_messages=1)
    assert q.refusal(S, H, 0) is None  # the first message through a new peer fits
    q.add(S, H, 0)
    assert q.refusal(T, H, 0) == "hop"


def test_a_hop_with_history_gets_the_larger_hop_limit() -> None:
    q = quota(hop_messages=2)  # history_factor=2: K as a hop may deliver 4
    for sender in (S, T, b"u" * 32):
        q.add(sender, K, 0)
        assert q.refusal(b"v" * 32, K, 0) is None
    q.add(b"v" * 32, K, 0)
    assert q.refusal(b"w" * 32, K, 0) == "hop"


def test_a_contacts_messages_take_nothing_from_the_strangers_share() -> None:
    q = quota(max_messages=6, strangers_share=0.5)  # at most 3 messages from strangers
    for sender in (K, K, S, T):
        q.add(sender, H, 0)
    assert q.refusal(b"u" * 32, H, 0) is None and q.strangers[0] == 2
    q.add(b"u" * 32, H, 0)
    assert q.refusal(b"v" * 32, H, 0) == "strangers"


def test_the_strangers_share_after_a_restart_counts_every_stranger() -> None:
    q = quota(max_messages=8, strangers_share=0.5)  # at most 4 messages from strangers
    q.load([(S, H, 1, 100), (T, H, 2, 200)])
    assert q.refusal(b"u" * 32, H, 0) is None
    q.add(b"u" * 32, H, 0)
    assert q.refusal(b"u" * 32, H, 0) == "strangers"
    q = quota(max_bytes=2 * 3 * (100 + ROW_OVERHEAD), strangers_share=0.5)
    q.load([(S, H, 1, 100), (T, H, 1, 100)])  # room for one more such message, exactly
    assert q.refusal(b"u" * 32, H, 100) is None
    assert q.refusal(b"u" * 32, H, 101) == "strangers"
