"""Configuration: one ``node.toml`` with a section per service, plus environment overrides.

Each section is a pydantic model whose field descriptions are the comments of the sample
config that ``tom init`` writes (:func:`sample`: every section and key, with its default and
its environment variable). An environment variable ``TOM_<SECTION>__<KEY>`` (upper case)
overrides a file value, e.g. ``TOM_BUS__REQUEST_TIMEOUT_S=5``; a list takes a JSON list or
comma-separated values, e.g. ``TOM_ROUTER__BOOTSTRAP=ID@192.0.2.1:4433,ID2@192.0.2.2:4433``.
"""

from __future__ import annotations

import json
import os
import textwrap
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal, TypeVar, get_origin

from pydantic import BaseModel, ConfigDict, Field, ValidationError
from pydantic.fields import FieldInfo


class Section(BaseModel):
    """Base of config sections: unknown keys are an error (they are usually typos)."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class NodeSection(Section):
    """What every service of the node shares."""

    log_level: str = Field("info", description="Log level of every service: debug, info, "
                           "warning, error.")
    log_format: Literal["text", "json"] = Field(
        "text", description="Log lines as text, or as JSON objects, one a line (ts, level, "
        "service, pid, logger, msg), for a log collector.")
    log_stream: Literal["stderr", "stdout"] = Field(
        "stderr", description="Where the services log (docker-compose sets stdout).")
    event_loop: Literal["auto", "uvloop", "asyncio"] = Field(
        "asyncio", description="The services' event loop: asyncio (the standard library's), "
        "uvloop (libuv; 10-40 us less per bus hop, docs/benchmarks.md), or auto: uvloop when "
        "it is installed. Not uvloop by default: with it, relayed messages between nodes "
        "behind symmetric NATs were not delivered in the lab (tests/e2e/test_nat.py), not "
        "yet understood.")


class BusSection(Section):
    """The local bus between the node's services (ZeroMQ; docs/protocol.md)."""

    request_timeout_s: float = Field(2.0, gt=0, description="Seconds a service waits for "
                                     "another service's reply before failing the request.")
    max_message_bytes: int = Field(4 * 1024 * 1024, ge=4096, description="Largest bus message "
                                   "(all frames) a service accepts; larger ones are refused "
                                   "before unpacking.")
    hwm: int = Field(10_000, ge=10, description="ZeroMQ high-water mark (messages queued per "
                     "socket and peer) before sends are refused and counted as drops.")
    heartbeat_s: float = Field(5.0, gt=0, description="Interval of sys.heartbeat events.")
    max_batch: int = Field(256, ge=1, description="Messages handled per wake-up before "
                           "yielding to timers and other sockets.")
    bind_host: str = Field("", description="Address the tcp:// bus endpoints of this node's "
                           "services listen on; empty: the address their host name in the "
                           "endpoints file resolves to ('*' listens on every interface; tcp "
                           "endpoints are authenticated with CURVE either way).")


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


def is_list(info: FieldInfo) -> bool:
    return get_origin(info.annotation) in (list, tuple)


def env_value(var: str, text: str, info: FieldInfo) -> Any:
    """An environment variable's text as the field's value: lists are a JSON list or
    comma-separated values (empty: an empty list); scalars are left to pydantic, which
    reads numbers and booleans (``true``/``false``, ``1``/``0``) from text."""
    if not is_list(info):
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
    source: dict[str, str] = {}
    prefix = env_name(name, "")
    for var, text in env.items():
        if not var.startswith(prefix):
            continue
        key = var[len(prefix):].lower()
        info = model.model_fields.get(key)
        if info is None:
            raise ConfigError(f"{var}: [{name}] has no key {key!r} (keys: "
                              f"{', '.join(model.model_fields)})")
        values[key] = env_value(var, text, info)
        source[key] = var
    try:
        return model.model_validate(values)
    except ValidationError as e:
        problems = []
        for err in e.errors():
            loc = ".".join(str(p) for p in err["loc"])
            src = source.get(str(err["loc"][0])) if err["loc"] else None
            problems.append(f"{name}.{loc}: {err['msg']}" + (f" (from {src})" if src else ""))
        raise ConfigError(f"{where}: {'; '.join(problems)}") from None


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
    for name, keys in chosen.items():
        unknown = set(keys) - set(sections[name].model_fields)
        if unknown:
            raise KeyError(f"[{name}] has no key {', '.join(sorted(unknown))}")
    out = SAMPLE_HEADER.splitlines()
    for name, model in sections.items():
        out += ["", f"[{name}]"]
        if model.__doc__:
            out += _comment(" ".join(model.__doc__.split()))
        for field, info in model.model_fields.items():
            default = info.get_default(call_default_factory=True)
            out.append("")
            out += _comment(info.description or "")
            for example in info.examples or ():
                out.append(f"# e.g. {field} = {_toml_value(example)}")
            hint = " (a JSON list, or comma-separated)" if is_list(info) else ""
            out.append(f"# Environment: {env_name(name, field)}{hint}")
            if field in chosen.get(name, {}):
                value, why = chosen[name][field]
                out += _comment(why)
                out.append(f"{field} = {_toml_value(value)}")
            else:
                out.append(f"#{field} = {_toml_value(default)}")
    return "\n".join(out) + "\n"
