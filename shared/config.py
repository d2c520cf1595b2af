"""Configuration: one ``node.toml`` with a section per service, plus environment overrides.

Each section is a pydantic model whose field descriptions are the comments of the sample
config that ``tom init`` writes. An environment variable ``TOM_<SECTION>__<FIELD>`` (upper
case) overrides a file value, e.g. ``TOM_BUS__REQUEST_TIMEOUT_S=5``.
"""

from __future__ import annotations

import os
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any, TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError


class Section(BaseModel):
    """Base of config sections: unknown keys are an error (they are usually typos)."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class NodeSection(Section):
    log_level: str = Field("info", description="Log level of every service: debug, info, "
                           "warning, error.")


class BusSection(Section):
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


def section(data: Mapping[str, Any], name: str, model: type[S],
            env: Mapping[str, str] | None = None, where: str = "node.toml") -> S:
    """Build section ``name`` from the parsed file plus ``TOM_<NAME>__<FIELD>`` overrides."""
    env = os.environ if env is None else env
    table = data.get(name, {})
    if not isinstance(table, dict):
        raise ConfigError(f"{where}: [{name}] must be a table, not {type(table).__name__}")
    values = dict(table)
    prefix = f"TOM_{name.upper()}__"
    for key, value in env.items():
        if key.startswith(prefix):
            values[key[len(prefix):].lower()] = value
    try:
        return model.model_validate(values)
    except ValidationError as e:
        problems = "; ".join(
            f"{name}.{'.'.join(str(p) for p in err['loc'])}: {err['msg']}" for err in e.errors()
        )
        raise ConfigError(f"{where}: {problems}") from None


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


def sample(sections: Mapping[str, type[Section]]) -> str:
    """A fully commented config with every default (written by ``tom init``)."""
    out = [
        "# ToM node configuration. Every key is shown commented out with its default;",
        "# uncomment to change it. TOM_<SECTION>__<KEY> environment variables override it.",
    ]
    for name, model in sections.items():
        out += ["", f"[{name}]"]
        for field, info in model.model_fields.items():
            out.append(f"# {info.description}")
            out.append(f"#{field} = {_toml_value(info.default)}")
    return "\n".join(out) + "\n"
