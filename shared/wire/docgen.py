"""Generate the tables of ``docs/protocol.md`` from the contract's code.

The prose of the document is written by hand; the socket table, the error codes and the
message tables are generated between ``<!-- BEGIN generated:NAME -->`` and
``<!-- END generated:NAME -->`` markers, from :data:`shared.endpoints.SPECS`,
:data:`ERROR_TEXT` and the registered models (their docstrings and the docstrings under
their fields). ``python -m shared.wire.docgen FILE`` rewrites FILE; ``--check`` only reports
whether it is current (exit 1 if stale); a test runs the check.
"""

from __future__ import annotations

import argparse
import re
import sys
import types
import typing
from collections import defaultdict
from pathlib import Path

import msgspec

from ..docstrings import attribute_docs
from ..endpoints import ROLES, SPECS, ipc
from .errors import ERROR_TEXT
from .messages import REGISTRY, Message

NAMESPACE_TITLES = {
    "sys": "`sys.*` — handled by every service's base",
    "crypto": "`crypto.*`",
    "router": "`router.*`",
    "groups": "`groups.*`",
    "backup": "`backup.*`",
    "transport": "`transport.*`",
}


def type_name(t: object) -> str:
    origin, args = typing.get_origin(t), typing.get_args(t)
    if origin is typing.Annotated:
        return type_name(args[0])
    if origin in (typing.Union, types.UnionType):
        return " | ".join(type_name(a) for a in args)
    if origin is not None:
        return f"{getattr(origin, '__name__', origin)}[{', '.join(type_name(a) for a in args)}]"
    if t is type(None):
        return "None"
    return getattr(t, "__name__", str(t))


def type_description(t: object) -> str | None:
    """The description a named type carries (``Annotated[str, Meta(description=...)]``)."""
    for meta in typing.get_args(t)[1:] if typing.get_origin(t) is typing.Annotated else ():
        if isinstance(meta, msgspec.Meta) and meta.description:
            return meta.description
    return None


def first_paragraph(doc: str | None) -> str:
    return " ".join((doc or "").strip().split("\n\n")[0].split())


def sockets() -> str:
    sample = ipc(Path("/RUN"))
    rows = ["| service | socket | pattern | bound / connected | default endpoint | purpose |",
            "|---|---|---|---|---|---|"]
    for role in ROLES:
        spec = SPECS[role]
        rows.append(f"| {role} | `{role}.rpc` | ROUTER | bound | `{sample[role].rpc}` | "
                    f"requests: {spec.purpose} |")
        rows.append(f"| {role} | `{role}.events` | PUB | bound | `{sample[role].events}` | "
                    f"events (topic = msg_type) |")
        for peer in spec.calls:
            rows.append(f"| {role} | to `{peer}.rpc` | DEALER | connected | — | requests to "
                        f"{peer} |")
        for peer in spec.subscribes:
            rows.append(f"| {role} | to `{peer}.events` | SUB | connected | — | events of "
                        f"{peer} |")
    return "\n".join(rows)


def errors() -> str:
    rows = ["| code | name | meaning |", "|---|---|---|"]
    for code, text in sorted(ERROR_TEXT.items()):
        rows.append(f"| {int(code)} | `{code.name.lower()}` | {text} |")
    return "\n".join(rows)


def message_table(cls: type[Message]) -> str:
    kind = cls.kind + (f" → `{cls.reply_type.msg_type}`" if cls.reply_type else "")
    out = [f"#### `{cls.msg_type}` ({kind})", "", first_paragraph(cls.__doc__), ""]
    if cls.blobs:
        out += [f"Blob frames: {cls.blobs}", ""]
    fields = msgspec.structs.fields(cls)
    if fields:
        docs = attribute_docs(cls)
        out += ["| field | type | description |", "|---|---|---|"]
        for info in fields:
            out.append(f"| `{info.name}` | `{type_name(info.type)}` | "
                       f"{docs.get(info.name) or type_description(info.type)} |")
    else:
        out.append("Body: an empty map.")
    return "\n".join(out)


def messages() -> str:
    by_ns: dict[str, list[type[Message]]] = defaultdict(list)
    for msg_type, cls in sorted(REGISTRY.items()):
        by_ns[msg_type.split(".")[0]].append(cls)
    out = []
    for ns in sorted(by_ns, key=lambda n: (n != "sys", n)):
        out += [f"### {NAMESPACE_TITLES.get(ns, f'`{ns}.*`')}", ""]
        out += [message_table(cls) + "\n" for cls in by_ns[ns]]
    return "\n".join(out).rstrip()


SECTIONS = {"sockets": sockets, "errors": errors, "messages": messages}


def render(text: str) -> str:
    for name, make in SECTIONS.items():
        pattern = re.compile(
            rf"(<!-- BEGIN generated:{name} -->\n).*?(<!-- END generated:{name} -->)", re.S)
        if not pattern.search(text):
            raise ValueError(f"markers for generated:{name} are missing")
        body = make()

        def fill(m: re.Match[str], body: str = body) -> str:
            return m.group(1) + body + "\n" + m.group(2)

        text = pattern.sub(fill, text)
    return text


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m shared.wire.docgen")
    p.add_argument("file", type=Path)
    p.add_argument("--check", action="store_true", help="exit 1 if FILE is stale")
    args = p.parse_args(argv)
    text = args.file.read_text()
    new = render(text)
    if args.check:
        if new != text:
            print(f"{args.file} is stale: run `make docs`", file=sys.stderr)
            return 1
        return 0
    args.file.write_text(new)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
