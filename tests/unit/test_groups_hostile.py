"""Hostile bytes for the groups service: services/groups/wire.decode never raises anything
but BadPayload, and whatever a peer sends (garbage, or well-formed payloads of any kind with
any values) leaves the core serving."""

from __future__ import annotations

from typing import Any

import msgpack
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from services.groups import wire
from shared.wire.messages import groups as gm

from .groups_sim import GroupsSim

KINDS = sorted(wire._PAYLOAD_ARGS)
ENTRY_KINDS = sorted(wire._ENTRY_ARGS)

# -- wire.decode ------------------------------------------------------------------------------

ints = st.integers(min_value=-2**63, max_value=2**64 - 1)  # what msgpack can encode
msgpack_values = st.recursive(
    st.none() | st.booleans() | ints | st.floats() | st.text(max_size=80)
    | st.binary(max_size=80),
    lambda inner: st.lists(inner, max_size=6) | st.dictionaries(
        st.text(max_size=8) | ints, inner, max_size=3),
    max_leaves=12)


def _packable(v: Any) -> bytes:
    return msgpack.packb(v, use_bin_type=True)


@settings(max_examples=500, deadline=None)
@given(st.binary(max_size=4000))
def test_decode_of_random_bytes_raises_only_bad_payload(raw: bytes) -> None:
    try:
        wire.decode(raw)
    except wire.BadPayload:
        pass


@settings(max_examples=500, deadline=None)
@given(kind=st.sampled_from(KINDS) | st.text(max_size=10),
       gid=st.sampled_from(["g1", "abc-1"]) | st.text(max_size=70) | msgpack_values,
       args=st.lists(msgpack_values, max_size=8))
def test_decode_of_arrays_with_any_values_raises_only_bad_payload(kind: str, gid: Any,
                                                                  args: list[Any]) -> None:
    try:
        p = wire.decode(_packable([kind, gid, *args]))
    except wire.BadPayload:
        return
    assert p.kind in wire._PAYLOAD_ARGS and wire.GID.match(p.group_id)


@settings(max_examples=300, deadline=None)
@given(kind=st.sampled_from(["entries", "claimed"]),
       entries=st.lists(st.lists(msgpack_values, max_size=6) | st.builds(
           lambda seq, term, ts, k, rest: [seq, term, ts, k, *rest],
           st.integers(-1, 2**64 - 1), st.integers(-1, 2**64 - 1), st.integers(-1, 2**64 - 1),
           st.sampled_from(ENTRY_KINDS) | st.text(max_size=8),
           st.lists(msgpack_values, max_size=5)), max_size=4))
def test_decode_of_entries_with_any_values_raises_only_bad_payload(
        kind: str, entries: list[Any]) -> None:
    head = [1, 2] if kind == "entries" else [1, False, 2]
    try:
        wire.decode(_packable([kind, "g1", *head, entries]))
    except wire.BadPayload:
        pass


def test_decode_refuses_oversize_and_deeply_nested_payloads() -> None:
    entry = [1, 1, 5, "msg", b"n" * 32, b"m" * 16, 1, b"c" * wire.MAX_CIPHERTEXT]
    fits = wire.MAX_PAYLOAD // wire.MAX_CIPHERTEXT
    assert wire.decode(_packable(["entries", "g1", 1, 1, [entry] * fits]))
    with pytest.raises(wire.BadPayload):  # each entry is fine; together they are too many
        wire.decode(_packable(["entries", "g1", 1, 1, [entry] * (fits + 1)]))
    deep = b"\x95" + _packable("entries") + _packable("g1") + b"\x01\x01" + b"\x91" * 5000
    with pytest.raises(wire.BadPayload):
        wire.decode(deep + b"\x90")
    with pytest.raises(wire.BadPayload):
        wire.decode(b"\xdd\xff\xff\xff\xff")  # an array header claiming 4 G elements


# -- through the core -------------------------------------------------------------------------

def _sim() -> tuple[GroupsSim, str]:
    sim = GroupsSim("a", "b", "c", "x")
    gid = sim.create("a", members=("b", "c"))
    sim.send("b", gid, b"before")
    sim.quiet()
    return sim, gid


def _value(draw: Any, t: str, sim: GroupsSim, gid: str) -> Any:
    ids = [n.id for n in sim.nodes.values()]
    small = st.integers(0, 20) | st.integers(0, 2**63 - 1)
    match t:
        case "node":
            return draw(st.sampled_from(ids) | st.binary(min_size=32, max_size=32))
        case "mid":
            return draw(st.binary(min_size=16, max_size=16))
        case "key":
            return draw(st.binary(min_size=32, max_size=32))
        case "count":
            return draw(small)
        case "ct":
            real = [e.args[3] for e in sim.nodes["a"].c.store.messages_after(gid, 0, 5)]
            return draw(st.sampled_from(real) | st.binary(max_size=200))
        case "name":
            return draw(st.text(min_size=1, max_size=64))
        case "text":
            return draw(st.text(max_size=200))
        case "bool":
            return draw(st.booleans())
        case "role":
            return draw(st.sampled_from(wire.ROLES))
        case "nodes":
            return [_value(draw, "node", sim, gid) for _ in range(draw(st.integers(0, 3)))]
        case "entries":
            out = []
            for _ in range(draw(st.integers(0, 3))):
                k = draw(st.sampled_from(ENTRY_KINDS))
                out.append([draw(st.integers(1, 30)), draw(st.integers(0, 4)), draw(small), k,
                            *(_value(draw, a, sim, gid) for a in wire._ENTRY_ARGS[k])])
            return out
        case "snapshot":
            members = [[_value(draw, "node", sim, gid), draw(st.sampled_from(wire.ROLES)),
                        draw(small)] for _ in range(draw(st.integers(0, 3)))]
            return [draw(small), draw(small), draw(st.text(min_size=1, max_size=10)),
                    draw(st.booleans()), draw(st.integers(0, 100)), draw(small), members]
    raise AssertionError(t)


@st.composite
def payloads(draw: Any, sim: GroupsSim, gid: str, senders: str) -> tuple[str, str, bytes]:
    kind = draw(st.sampled_from(KINDS))
    g = draw(st.sampled_from([gid, "gother"]))
    args = [_value(draw, t, sim, gid) for t in wire._PAYLOAD_ARGS[kind]]
    src = draw(st.sampled_from(senders))
    dst = draw(st.sampled_from("abcx"))
    return src, dst, wire.encode(kind, g, *args)


def _serving(sim: GroupsSim) -> None:
    for n in sim.nodes.values():
        assert isinstance(sim.ok(n.name, gm.ListGroups()), gm.ListReply)


@settings(max_examples=150, deadline=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(st.data())
def test_well_formed_payloads_with_any_values_from_a_stranger_change_nothing(data: Any) -> None:
    sim, gid = _sim()
    before = {n: sim.nodes[n].group(gid) for n in "abc"}
    snap = {n: (g.hub, g.term, g.seq, g.snapshot()) for n, g in before.items() if g}
    for _ in range(data.draw(st.integers(1, 6))):
        src, dst, raw = data.draw(payloads(sim, gid, "x"))
        sim.inject_raw(src, dst, raw)
        sim.run(0.5)
    for n in "abc":
        g = sim.nodes[n].group(gid)
        assert g is not None and (g.hub, g.term, g.seq, g.snapshot()) == snap[n], n
    _serving(sim)
    sim.send("c", gid, b"after")
    sim.quiet()
    for n in "abc":
        assert sim.nodes[n].texts(gid) == [b"before", b"after"], n


@settings(max_examples=150, deadline=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(st.data())
def test_well_formed_payloads_with_any_values_from_anyone_leave_every_core_serving(
        data: Any) -> None:
    sim, gid = _sim()
    for _ in range(data.draw(st.integers(1, 8))):
        src, dst, raw = data.draw(payloads(sim, gid, "abcx"))
        sim.inject_raw(src, dst, raw)
        sim.run(data.draw(st.sampled_from([0.0, 0.5, 5.0])))
    sim.run(20)  # timers run over whatever state it left
    _serving(sim)


@settings(max_examples=100, deadline=None)
@given(st.lists(st.binary(max_size=300), min_size=1, max_size=5))
def test_garbage_through_the_core_is_counted_and_the_group_goes_on(junk: list[bytes]) -> None:
    sim, gid = _sim()
    bad = 0
    for raw in junk:
        try:
            wire.decode(raw)
        except wire.BadPayload:
            bad += 1
        sim.inject_raw("x", "a", raw)
        sim.inject_raw("b", "c", raw)
    assert sim.nodes["a"].stats.get("rejected_malformed", 0) == bad
    assert sim.nodes["c"].stats.get("rejected_malformed", 0) == bad
    sim.send("c", gid, b"after")
    sim.quiet()
    assert sim.nodes["b"].texts(gid) == [b"before", b"after"]


def test_a_malformed_payload_is_counted_and_the_cursor_moves_past_it() -> None:
    sim, gid = _sim()
    c = sim.nodes["c"]
    for raw in (b"", b"\xc1", _packable(["msg", "g1"]), _packable(["nope", "g1"]),
                _packable(["entries", "G!", 1, 1, []]), b"x" * (wire.MAX_PAYLOAD + 1)):
        sim.inject_raw("b", "c", raw)
    assert c.stats["rejected_malformed"] == 6
    assert c.c._cursor == c.tail
    sim.send("a", gid, b"after")
    assert c.texts(gid) == [b"before", b"after"]


# -- strict decoding --------------------------------------------------------------------------

GOOD: dict[str, Any] = {
    "node": b"n" * 32, "mid": b"m" * 16, "key": b"k" * 32, "count": 7, "ct": b"c" * 40,
    "name": "name", "text": "why", "bool": True, "role": "admin", "nodes": [b"n" * 32],
    "entries": [[1, 1, 5, "joined", b"n" * 32]],
    "snapshot": [1, 2, "name", True, 5, 9, [[b"n" * 32, "admin", 3]]],
}
BAD: dict[str, list[Any]] = {
    "node": [b"n" * 31, b"n" * 33, "n" * 32, None],
    "mid": [b"m" * 15, b"m" * 17, 7],
    "key": [b"k" * 31, b"k" * 33, "k" * 32],
    "count": [-1, 2**63, True, 1.0, "1", None],
    "ct": [b"c" * (wire.MAX_CIPHERTEXT + 1), "c"],
    "name": ["", "n" * 65, b"name", 5],
    "text": ["t" * 201, b"t", None],
    "bool": [1, 0, None, "true"],
    "role": ["owner", "", b"admin", None],
    "nodes": [[b"n" * 31], b"n" * 32, [b"n" * 32] * (wire.MAX_INVITEES + 1)],
    "entries": [[[0, 1, 5, "joined", b"n" * 32]], [[1, 1, 5, "joined"]],
                [[1, 1, 5, "nope", b"n" * 32]], [[1, -1, 5, "joined", b"n" * 32]],
                [[1, 1, 5, "joined", b"n" * 32, b"extra"]], [[1, 1, 5, "msg", b"n" * 32]],
                [[1, 1, 5, "joined", b"n" * 32]] * (wire.MAX_ENTRIES + 1), {"a": 1}],
    "snapshot": [[1, 2, "name", True, 5, 9], [1, 2, "", True, 5, 9, []],
                 [1, 2, "name", 1, 5, 9, []], [1, 2, "name", True, 5, 9, [[b"n" * 32]]],
                 [1, 2, "name", True, 5, 9, [[b"n" * 32, "boss", 3]]],
                 [1, 2, "name", True, 5, 9, [[b"n" * 32, "admin", 3]] * 1001],
                 [-1, 2, "name", True, 5, 9, []]],
}


@pytest.mark.parametrize("kind", KINDS)
def test_each_field_of_each_payload_is_checked(kind: str) -> None:
    spec = wire._PAYLOAD_ARGS[kind]
    good = [GOOD[t] for t in spec]
    p = wire.decode(_packable([kind, "g-1", *good]))
    assert (p.kind, p.group_id, len(p.args)) == (kind, "g-1", len(spec))
    for i, t in enumerate(spec):
        for bad in BAD[t]:
            raw = _packable([kind, "g-1", *good[:i], bad, *good[i + 1:]])
            with pytest.raises(wire.BadPayload):
                wire.decode(raw)
                pytest.fail(f"{kind} field {i} ({t}) took {bad!r:.60}")
    for wrong in (good[:-1], [*good, 1]) if spec else ([1],):
        with pytest.raises(wire.BadPayload):
            wire.decode(_packable([kind, "g-1", *wrong]))
    for gid in ("", "G", "g_1", "g" * 65, 5, b"g1"):
        with pytest.raises(wire.BadPayload):
            wire.decode(_packable([kind, gid, *good]))


@pytest.mark.parametrize("kind", ENTRY_KINDS)
def test_each_field_of_each_entry_is_checked(kind: str) -> None:
    spec = wire._ENTRY_ARGS[kind]
    good = [GOOD[t] for t in spec]
    e = wire.entry_from([3, 1, 5, kind, *good])
    assert (e.seq, e.term, e.ts_ms, e.kind) == (3, 1, 5, kind)
    assert wire.entry_decode(e.encode()) == e
    for i, t in enumerate(spec):
        for bad in BAD[t]:
            with pytest.raises(wire.BadPayload):
                wire.entry_from([3, 1, 5, kind, *good[:i], bad, *good[i + 1:]])
    for head in ([0, 1, 5], [-1, 1, 5], [3, -1, 5], [3, 1, -1], [3, 1, 2**63], [3.0, 1, 5]):
        with pytest.raises(wire.BadPayload):
            wire.entry_from([*head, kind, *good])
