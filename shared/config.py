"""Configuration: one ``node.toml`` with a section per service, plus environment overrides.

Each section is a frozen :class:`msgspec.Struct` whose field docstrings are the comments of
the sample config that ``tom init`` writes (:func:`sample`: every section and key, with its
default and its environment variable). An environment variable ``TOM_<SECTION>__<KEY>``
(upper case) overrides a file value, e.g. ``TOM_BUS__REQUEST_TIMEOUT_S=5``; a list takes a
JSON list or comma-separated values, e.g.
``TOM_ROUTER__BOOTSTRAP=ID@192.0.2.1:4433,ID2@192.0.2.2:4433``.
"""

from __future__ import annotations

import json
import os
import textwrap
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal, TypeVar, get_args, get_origin

import msgspec
from msgspec import Meta
from typing_extensions import dataclass_transform

from .docstrings import attribute_docs
from .wire.messages.base import Frozen


@dataclass_transform(field_specifiers=(msgspec.field,), kw_only_default=True,
                     frozen_default=True)
class Section(msgspec.Struct, metaclass=Frozen, frozen=True, kw_only=True,
              forbid_unknown_fields=True):
    """Base of config sections: unknown keys are an error (they are usually typos). A
    section checks values that need more than a type and a range in ``__post_init__``,
    raising ``ValueError("KEY: why")``."""


class NodeSection(Section):
    """What every service of the node shares."""

    log_level: str = "info"
    """Log level of every service: debug, info, warning, error."""
    log_format: Literal["text", "json"] = "text"
    """Log lines as text, or as JSON objects, one a line (ts, level, service, pid, logger, msg), for
    a log collector."""
    log_stream: Literal["stderr", "stdout"] = "stderr"
    """Where the services log (docker-compose sets stdout)."""
    event_loop: Literal["auto", "uvloop", "asyncio"] = "asyncio"
    """The services' event loop: asyncio (the standard library's), uvloop (libuv; 10-40 us less per
    bus hop in a bus benchmark, docs/benchmarks.md), or auto: uvloop when it is installed. Not
    uvloop by default: the node benchmark cannot tell the two apart within its noise, and uvloop
    costs about 2 MB more per process."""


class BusSection(Section):
    """The local bus between the node's services (ZeroMQ; docs/protocol.md)."""

    request_timeout_s: Annotated[float, Meta(gt=0)] = 2.0
    """Seconds a service waits for another service's reply before failing the request."""
    max_message_bytes: Annotated[int, Meta(ge=4096)] = 4 * 1024 * 1024
    """Largest bus message (all frames) a service accepts; larger ones are refused before unpacking.
    """
    hwm: Annotated[int, Meta(ge=10)] = 10_000
    """ZeroMQ high-water mark (messages queued per socket and peer) before sends are refused and
    counted as drops."""
    heartbeat_s: Annotated[float, Meta(gt=0)] = 5.0
    """Interval of sys.heartbeat events."""
    max_batch: Annotated[int, Meta(ge=1)] = 256
    """Messages handled per wake-up before yielding to timers and other sockets."""
    bind_host: str = ""
    """Address the tcp:// bus endpoints of this node's services listen on; empty: the address their
    host name in the endpoints file resolves to ('*' listens on every interface; tcp endpoints are
    authenticated with CURVE either way)."""


class ConfigError(ValueError):
    """The config file or an override is invalid; the message says where and why."""


S = TypeVar("S", bound=Section)


def read(path: Path | None) -> dict[str, Any]:
    if path is None or not path.exists():
        return {}
    try:
        return tomllib.loads(path.read_text())
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as e:
        raise ConfigError(f"cannot read config {path}: {e}") from None


def env_name(section_name: str, key: str) -> str:
    """The environment variable that overrides ``key`` of ``[section_name]``."""
    return f"TOM_{section_name.upper()}__{key.upper()}"


def keys(model: type[Section]) -> dict[str, msgspec.structs.FieldInfo]:
    """The section's keys, in order, with their types and defaults."""
    return {f.name: f for f in msgspec.structs.fields(model)}


def default(info: msgspec.structs.FieldInfo) -> Any:
    factory = info.default_factory
    return info.default if factory is msgspec.NODEFAULT else factory()


def description(model: type[Section], key: str) -> str:
    return attribute_docs(model).get(key, "")


def examples(info: msgspec.structs.FieldInfo) -> list[Any]:
    metas = get_args(info.type)[1:] if get_origin(info.type) is Annotated else ()
    return [x for m in metas if isinstance(m, Meta) for x in m.examples or ()]


def is_list(info: msgspec.structs.FieldInfo) -> bool:
    t = info.type
    if get_origin(t) is Annotated:
        t = get_args(t)[0]
    return get_origin(t) in (list, tuple)


def validate(model: type[S], values: Mapping[str, Any]) -> S:
    """``values`` (as TOML or text gives them) as a section: numbers and booleans
    (``true``/``false``, ``1``/``0``) may be text; raises :class:`msgspec.ValidationError`."""
    return msgspec.convert(values, model, strict=False)


_TYPE_WORDS = {"`float`": "a number", "`int`": "a whole number", "`bool`": "true or false",
               "`str`": "a string", "`array`": "a list", "`object`": "a table"}


def _readable(problem: str) -> str:
    for word, text in _TYPE_WORDS.items():
        problem = problem.replace(word, text)
    return problem


_BOOL_WORDS = {"yes": "true", "on": "true", "no": "false", "off": "false"}


def env_value(var: str, text: str, info: msgspec.structs.FieldInfo) -> Any:
    """An environment variable's text as the field's value: lists are a JSON list or
    comma-separated values (empty: an empty list); scalars stay text (without the spaces
    around it), read as numbers and booleans (``true``/``false``, ``1``/``0``, ``yes``/``no``,
    ``on``/``off``) by :func:`validate`."""
    if not is_list(info):
        text = text.strip()
        if info.type is bool:
            return _BOOL_WORDS.get(text.lower(), text)
        return text
    if text.lstrip().startswith("["):
        try:
            value = json.loads(text)
        except ValueError as e:
            raise ConfigError(f"{var}: not a JSON list ({e})") from None
        if not isinstance(value, list):
            raise ConfigError(f"{var}: not a JSON list")
        return value
    return [item.strip() for item in text.split(",") if item.strip()]


def section(data: Mapping[str, Any], name: str, model: type[S],
            env: Mapping[str, str] | None = None, where: str = "node.toml") -> S:
    """Build section ``name`` from the parsed file plus ``TOM_<NAME>__<FIELD>`` overrides."""
    env = os.environ if env is None else env
    table = data.get(name, {})
    if not isinstance(table, dict):
        raise ConfigError(f"{where}: [{name}] must be a table, not {type(table).__name__}")
    values = dict(table)
    fields = keys(model)
    unknown = sorted(set(values) - set(fields))
    if unknown:
        raise ConfigError(f"{where}: [{name}] has no key {', '.join(map(repr, unknown))} "
                          f"(keys: {', '.join(fields)})")
    source: dict[str, str] = {}
    prefix = env_name(name, "")
    for var, text in env.items():
        if not var.startswith(prefix):
            continue
        key = var[len(prefix):].lower()
        info = fields.get(key)
        if info is None:
            raise ConfigError(f"{var}: [{name}] has no key {key!r} (keys: "
                              f"{', '.join(fields)})")
        values[key] = env_value(var, text, info)
        source[key] = var
    try:
        return validate(model, values)
    except msgspec.ValidationError as e:
        problem, _, path = str(e).partition(" - at `$.")
        key = path.rstrip("`").split(".")[0].split("[")[0] or problem.partition(":")[0]
        where_key = f"{name}.{path.rstrip('`')}: " if path else f"{name}."
        src = source.get(key)
        raise ConfigError(f"{where}: {where_key}{_readable(problem)}"
                          + (f" (from {src})" if src else "")) from None


def _toml_value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return repr(v)
    if isinstance(v, str):
        return '"' + v.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(_toml_value(x) for x in v) + "]"
    raise TypeError(f"no TOML form for {v!r}")


SAMPLE_HEADER = """\
# ToM node configuration, written by `tom init`. Every key of every section is listed with
# what it does and the environment variable that overrides it, then its default commented
# out (`#key = default`): uncomment a line to change it. The lines without `#` are what
# `tom init` chose for this node; keep them.
#
# Environment: TOM_<SECTION>__<KEY> overrides the file, for every service started from that
# environment (`TOM_ROUTER__USERNAME=alice tom node up`). Numbers and booleans (true/false)
# are written as in TOML; a list takes a JSON list or comma-separated values:
#   TOM_ROUTER__BOOTSTRAP='["ID@192.0.2.1:4433", "ID2@192.0.2.2:4433"]'
#   TOM_ROUTER__BOOTSTRAP=ID@192.0.2.1:4433,ID2@192.0.2.2:4433
# `tom node up` checks this file and those variables before it starts anything.
"""
WIDTH = 92


def _comment(text: str) -> list[str]:
    return textwrap.wrap(text, WIDTH - 2, initial_indent="# ", subsequent_indent="# ",
                         break_on_hyphens=False)


def sample(sections: Mapping[str, type[Section]],
           chosen: Mapping[str, Mapping[str, tuple[Any, str]]] | None = None) -> str:
    """A fully commented config: every key of every section with its description, default
    and environment variable, commented out (written by ``tom init``). ``chosen`` gives
    section -> key -> (value, why): those are written as values, not commented out."""
    chosen = chosen or {}
    for name, picked in chosen.items():
        unknown = set(picked) - set(keys(sections[name]))
        if unknown:
            raise KeyError(f"[{name}] has no key {', '.join(sorted(unknown))}")
    out = SAMPLE_HEADER.splitlines()
    for name, model in sections.items():
        out += ["", f"[{name}]"]
        if model.__doc__:
            out += _comment(" ".join(model.__doc__.split()))
        for field, info in keys(model).items():
            out.append("")
            out += _comment(description(model, field))
            for example in examples(info):
                out.append(f"# e.g. {field} = {_toml_value(example)}")
            hint = " (a JSON list, or comma-separated)" if is_list(info) else ""
            out.append(f"# Environment: {env_name(name, field)}{hint}")
            if field in chosen.get(name, {}):
                value, why = chosen[name][field]
                out += _comment(why)
                out.append(f"{field} = {_toml_value(value)}")
            else:
                out.append(f"#{field} = {_toml_value(default(info))}")
    return "\n".join(out) + "\n"
