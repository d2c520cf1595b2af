"""The bus codec: round-trips, golden bytes, and garbage that must raise DecodeError only."""

from __future__ import annotations

import json
import types
import typing
from pathlib import Path
from typing import Any

import msgpack
import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from shared.wire import (
    REGISTRY,
    TAG,
    DecodeError,
    ErrorCode,
    Header,
    Message,
    decode,
    encode,
    split_routing,
)
from shared.wire.frame import (
    MAX_BLOBS,
    MAX_HEADER_BYTES,
    _header_problem,
    decode_header,
    pack_header,
)
from shared.wire.messages.sys import ErrorReply, Ping, StatusReply

GOLDEN = Path(__file__).parent / "golden" / "frames.json"
HEADER = Header("sys.ping", bytes(range(16)), None, "tom-cli", 1_700_000_000.5)


def strategy(annotation: object, metas: tuple[msgspec.Meta, ...] = ()) -> st.SearchStrategy[object]:
    """Values for one model field, honouring its length and range constraints."""

    def bound(name: str, default: Any) -> Any:
        return next((getattr(m, name) for m in metas if getattr(m, name) is not None), default)

    lo, hi = bound("min_length", 0), bound("max_length", 64)
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin is typing.Annotated:  # constraints sit in msgspec.Meta objects
        return strategy(args[0], (*metas, *(a for a in args[1:] if isinstance(a, msgspec.Meta))))
    if origin in (typing.Union, types.UnionType):
        return st.one_of(*(strategy(a, metas) for a in args))
    if annotation is type(None):
        return st.none()
    if origin is typing.Literal:
        return st.sampled_from(args)
    if origin is list:
        return st.lists(strategy(args[0]), min_size=lo, max_size=min(hi, 4))
    if origin is dict:
        return st.dictionaries(st.text(max_size=8), strategy(args[1]), max_size=4)
    if annotation is bytes:
        return st.binary(min_size=lo, max_size=hi)
    if annotation is str:
        return st.text(min_size=max(lo, 1), max_size=min(hi, 32))
    if annotation is bool:
        return st.booleans()
    if annotation is int:
        return st.integers(bound("ge", 0), bound("le", 2**64 - 1))
    if annotation is float:
        gt = bound("gt", None)
        return st.floats(min_value=0 if gt is None else gt, exclude_min=gt is not None,
                         max_value=bound("le", 1e12))
    if isinstance(annotation, type) and issubclass(annotation, Message):
        return bodies(annotation)
    raise TypeError(f"no strategy for {annotation!r}")


def bodies(cls: type[Message]) -> st.SearchStrategy[Message]:
    fields = {f.name: strategy(f.type) for f in msgspec.structs.fields(cls)}
    return st.fixed_dictionaries(fields).map(lambda d: msgspec.convert(d, cls))


@pytest.mark.parametrize("cls", sorted(REGISTRY.values(), key=lambda c: c.msg_type),
                         ids=lambda c: c.msg_type)
@settings(max_examples=25, deadline=None)
@given(data=st.data())
def test_every_model_round_trips(cls, data) -> None:  # type: ignore[no-untyped-def]
    body = data.draw(bodies(cls))
    blobs = tuple(data.draw(st.lists(st.binary(max_size=64), max_size=3)))
    parent = data.draw(st.none() | st.binary(min_size=1, max_size=32))
    header = Header(cls.msg_type, b"\x01" * 16, parent, "test", 1.5)
    out = decode(encode(body, header, blobs))
    assert out.header == header and out.body == body and out.blobs == blobs


def golden_cases() -> dict[str, tuple[list[bytes], object]]:
    return {
        "ping": (encode(Ping(), HEADER), None),
        "error_reply": (encode(
            ErrorReply(code=404, name="unsupported", message="unknown msg_type 'x.y'"),
            Header("sys.error", b"\xaa" * 16, bytes(range(16)), "router", 1_700_000_000.25)),
            None),
        "status_reply_with_blob": (encode(
            StatusReply(service="crypto", impl="x/1", pid=42, uptime_s=1.25, frames_in=3,
                        frames_out=2, decode_errors=1, drops=0, errors={"malformed": 1},
                        queues={"pending_calls": 0}, counters={}),
            Header("sys.status_reply", b"\x01" * 8, None, "crypto", 0.0), (b"\x00\xff",)),
            None),
    }


def test_golden_frames() -> None:
    """Committed bytes that another implementation can check its encoder against."""
    golden = json.loads(GOLDEN.read_text())
    cases = golden_cases()
    assert set(golden) == set(cases)
    for name, (frames, _) in cases.items():
        assert [f.hex() for f in frames] == golden[name], name
        decode([bytes.fromhex(h) for h in golden[name]])


@settings(max_examples=500, deadline=None)
@given(st.lists(st.binary(max_size=200), max_size=6))
def test_garbage_raises_decode_error_only(frames: list[bytes]) -> None:
    try:
        decode(frames)
    except DecodeError as e:
        assert isinstance(e.code, ErrorCode)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=300))
def test_garbage_header_and_body_raise_decode_error_only(raw: bytes) -> None:
    for frames in ([TAG, raw, b"\x80"], [TAG, pack_header(HEADER), raw]):
        try:
            decode(frames)
        except DecodeError:
            pass


def code_of(frames: list[bytes], **kw: int) -> ErrorCode:
    with pytest.raises(DecodeError) as info:
        decode(frames, **kw)
    return info.value.code


def test_error_codes() -> None:
    h = pack_header(HEADER)
    assert code_of([TAG, h]) is ErrorCode.MALFORMED
    assert code_of([b"ZMTP", h, b"\x80"]) is ErrorCode.BAD_TAG
    assert code_of([b"tom/2", h, b"\x80"]) is ErrorCode.VERSION_MISMATCH
    assert code_of([TAG, h, b"\x80", b"x" * 5000], max_message_bytes=4096) is ErrorCode.TOO_LARGE
    assert code_of([TAG, h, b"\x80", *[b""] * 17]) is ErrorCode.TOO_LARGE
    assert code_of([TAG, b"\xc1" * (MAX_HEADER_BYTES + 1), b"\x80"]) is ErrorCode.TOO_LARGE
    assert code_of([TAG, h, b"\x92\x01\x02"]) is ErrorCode.MALFORMED
    bad = msgpack.packb({"msg_type": "nope.nothing", "msg_id": b"1", "src": "", "ts": 0})
    assert code_of([TAG, bad, b"\x80"]) is ErrorCode.UNSUPPORTED
    status = pack_header(Header("sys.ping_reply", b"1", None, "", 0))
    assert code_of([TAG, status, msgpack.packb({"service": 1})]) is ErrorCode.INVALID
    beat = pack_header(Header("sys.heartbeat", b"1", None, "", 0))
    for uptime in (float("inf"), float("nan"), -1.0):
        assert code_of([TAG, beat, msgpack.packb({"service": "x", "uptime_s": uptime})]) \
            is ErrorCode.INVALID
    for broken in ({"msg_type": "sys.ping"}, {"msg_type": 5, "msg_id": b"1"},
                   {"msg_type": "sys.ping", "msg_id": b"1", "ts": "now"},
                   {"msg_type": "sys.ping", "msg_id": b"1", "parent_id": 3}, [1, 2]):
        assert code_of([TAG, msgpack.packb(broken), b"\x80"]) is ErrorCode.MALFORMED


ANY_VALUE = st.one_of(st.none(), st.booleans(), st.integers(-2, 2**40),
                      st.floats(allow_nan=False), st.binary(max_size=40), st.text(max_size=70))
EDGES = st.sampled_from([0, 1, 8, 16, 32, 33, 64, 65])
TEXTS = EDGES.flatmap(lambda n: st.text(st.characters(max_codepoint=127), min_size=n,
                                        max_size=n))
BINARIES = EDGES.flatmap(lambda n: st.binary(min_size=n, max_size=n))
NEAR_VALID = {  # each key's valid values and its edges (empty, one too long)
    "msg_type": TEXTS, "msg_id": BINARIES, "parent_id": st.none() | BINARIES, "src": TEXTS,
    "ts": st.floats(allow_nan=False) | st.integers(0, 2**40) | st.booleans() | st.just("1"),
    "deadline": st.none() | st.floats(allow_nan=False) | st.booleans() | st.just("1"),
}


@st.composite
def headers(draw: st.DrawFn) -> dict[str, object]:
    """Header maps close to valid: every key drawn near its valid range, then up to two
    keys dropped or replaced by a value of any type."""
    h: dict[str, object] = {k: draw(v) for k, v in NEAR_VALID.items()}
    for key in draw(st.lists(st.sampled_from([*NEAR_VALID, "other"]), max_size=2)):
        if draw(st.booleans()):
            h.pop(key, None)
        else:
            h[key] = draw(ANY_VALUE)
    return h


@settings(max_examples=1000, deadline=None)
@given(headers())
def test_the_fast_header_decoder_accepts_exactly_what_the_checks_accept(h: dict) -> None:
    """msgspec decodes headers; only a refused one goes through the checks that name the
    bad part. Both must agree on every header: the same result, or the same error."""

    def outcome(fn: typing.Callable[[bytes], Header], raw: bytes) -> object:
        try:
            return fn(raw)
        except DecodeError as e:
            return (e.code, str(e), e.parent_id)

    raw = msgpack.packb(h, use_bin_type=True)
    assert outcome(decode_header, raw) == outcome(_header_problem, raw)


def test_values_nested_too_deeply_are_malformed_not_a_crash() -> None:
    """msgspec raises RecursionError for ~1,000 levels; the codec answers `malformed`."""
    deep = b"\x91" * 3000 + b"\x00"  # [[[...0...]]]
    body = b"\x81\xa5other" + deep  # {"other": [[[...]]]}: an unknown field
    with pytest.raises(DecodeError) as info:
        decode([TAG, pack_header(HEADER), body])
    assert info.value.code is ErrorCode.MALFORMED and info.value.parent_id == HEADER.msg_id
    header = b"\x81\xa5other" + b"\x91" * 1010 + b"\x00"
    assert code_of([TAG, header, b"\x80"]) is ErrorCode.MALFORMED


def test_parent_id_survives_body_errors() -> None:
    with pytest.raises(DecodeError) as info:
        decode([TAG, pack_header(HEADER), b"\x93"])
    assert info.value.parent_id == HEADER.msg_id


def test_too_many_blobs_is_refused_naming_the_request() -> None:
    """The caller gets `too_large` for its request at once, not a timeout."""
    frames = encode(Ping(), HEADER, (b"x",) * (MAX_BLOBS + 1))
    with pytest.raises(DecodeError) as info:
        decode(frames)
    assert info.value.code is ErrorCode.TOO_LARGE and info.value.parent_id == HEADER.msg_id
    assert decode(encode(Ping(), HEADER, (b"x",) * MAX_BLOBS)).blobs == (b"x",) * MAX_BLOBS


def test_split_routing() -> None:
    assert split_routing([b"id", b"", b"t", b"h"]) == ([b"id", b""], [b"t", b"h"])
    assert split_routing([b"a", b"b", b"", b"t"]) == ([b"a", b"b", b""], [b"t"])
    assert split_routing([b"id", b"t", b"h"]) == ([b"id", b""], [])


if __name__ == "__main__":  # regenerate the golden file after a deliberate format change
    GOLDEN.write_text(json.dumps({k: [f.hex() for f in v[0]] for k, v in golden_cases().items()},
                                 indent=1) + "\n")
