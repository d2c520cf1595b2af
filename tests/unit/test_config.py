"""node.toml (issue 17): the file `tom init` writes documents every section and key, each
key is settable by an environment variable (lists too), and a new node gets a UDP port of its
own, written to the file, which `tom node up` checks before starting anything."""

from __future__ import annotations

import importlib
import json
import re
import socket
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from shared import config as cfg
from shared.paths import DataDir
from tom import node

ROOT = Path(__file__).resolve().parents[2]
BOOT_A = "aa" * 32 + "@192.0.2.1:4433"
BOOT_B = "bb" * 32 + "@[2001:db8::1]:4434"


def sections_of(text: str) -> dict[str, str]:
    """The text of each ``[section]`` of a generated file."""
    parts = re.split(r"^\[(\w+)\]$", text, flags=re.M)
    return dict(zip(parts[1::2], parts[2::2], strict=True))


def uncommented(text: str) -> str:
    """The file with every ``#key = default`` line uncommented."""
    return re.sub(r"^#(\w+ = )", r"\1", text, flags=re.M)


def all_section_models() -> Iterator[type[cfg.Section]]:
    for path in sorted(ROOT.glob("services/*/config.py")):
        importlib.import_module(f"services.{path.parent.name}.config")
    todo = list(cfg.Section.__subclasses__())
    while todo:
        model = todo.pop()
        todo += model.__subclasses__()
        yield model


# -- the generated file ---------------------------------------------------------------------

def test_every_config_model_is_a_section_of_node_toml_under_the_name_its_service_reads() -> None:
    """A new section model (or a service reading a section under another name) cannot be
    left out of node.toml: every Section subclass is in CONFIG_SECTIONS, and every
    ``context.section("NAME", Model)`` in the code uses the name node.toml gives it."""
    assert set(all_section_models()) == set(node.CONFIG_SECTIONS.values())
    uses = [m for path in [*ROOT.glob("services/**/*.py"), *ROOT.glob("shared/*.py")]
            for m in re.findall(r"section\(\"(\w+)\", (?:cfg\.)?(\w+)\)", path.read_text())]
    assert len(uses) >= 7, uses
    names = {model.__name__: name for name, model in node.CONFIG_SECTIONS.items()}
    for name, model in uses:
        assert names[model] == name, (name, model)


def test_the_generated_node_toml_documents_every_key_of_every_section() -> None:
    """Each key of each section: its description, its environment variable (with how a
    list is written), and its default, commented out; the router's username and bootstrap
    (which users could not find) among them."""
    text = node.cfg.sample(node.CONFIG_SECTIONS)
    parts = sections_of(text)
    assert list(parts) == list(node.CONFIG_SECTIONS)
    for name, model in node.CONFIG_SECTIONS.items():
        body = parts[name]
        for key, info in cfg.keys(model).items():
            description = cfg.description(model, key)
            assert description, f"{name}.{key} has no description"
            block = re.search(rf"((?:^# .*\n)+)^#{key} = (.*)$", body, flags=re.M)
            assert block, f"{name}.{key} missing from node.toml"
            comment = " ".join(line[2:] for line in block.group(1).splitlines())
            assert description in comment, (name, key)
            assert f"Environment: {cfg.env_name(name, key)}" in comment
            if cfg.is_list(info):
                assert "JSON list, or comma-separated" in comment
            default = tomllib.loads(f"v = {block.group(2)}")["v"]
            assert default == cfg.default(info), (name, key)
    assert re.search(r"^#username = \"anonymous\"$", parts["router"], flags=re.M)
    assert re.search(r"^# e\.g\. bootstrap = \[\".*@192\.0\.2\.10:4433\"\]$", parts["router"],
                     flags=re.M)


def test_uncommenting_every_line_gives_the_defaults_and_chosen_values_are_set() -> None:
    """The file parses as it is and with every line uncommented; then each section is its
    defaults, except the values tom init chose, which are set (not commented out)."""
    chosen = {"transport": {"port": (4434, "4433 was taken")}}
    text = node.cfg.sample(node.CONFIG_SECTIONS, chosen)
    assert tomllib.loads(text) == {name: {"port": 4434} if name == "transport" else {}
                                   for name in node.CONFIG_SECTIONS}
    full = tomllib.loads(uncommented(text))
    for name, model in node.CONFIG_SECTIONS.items():
        got = cfg.section(full, name, model, env={})
        want = cfg.validate(model, {"port": 4434} if name == "transport" else {})
        assert got == want, name
    assert re.search(r"^# .*4433 was taken\n^port = 4434$", text, flags=re.M)
    with pytest.raises(KeyError):
        node.cfg.sample(node.CONFIG_SECTIONS, {"transport": {"prot": (1, "typo")}})


# -- environment variables ------------------------------------------------------------------

def env_text(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, list):
        return json.dumps(value)
    return str(value)


def other_value(model: type[cfg.Section], key: str, default: Any) -> Any:
    """A valid value of ``key`` other than its default."""
    match default:
        case bool():
            return not default
        case list():
            return ["192.0.2.7:4433"] if key == "advertise" else [BOOT_A]
        case str():
            return {"log_level": "debug", "host": "127.0.0.1", "log_format": "json",
                    "log_stream": "stdout", "event_loop": "uvloop",
                    "port_mapping_gateway": "192.0.2.1"}.get(key, "x.key")
    for value in (default + 1, default / 2, default - 1, 1):
        if value != default:
            try:
                cfg.validate(model, {key: value})
            except ValueError:
                continue
            return value
    raise AssertionError(f"no other value for {key}")


def test_every_key_is_settable_by_its_environment_variable() -> None:
    """Each key of each section, set through TOM_<SECTION>__<KEY> to a value other than its
    default, wins over node.toml."""
    for name, model in node.CONFIG_SECTIONS.items():
        for key, info in cfg.keys(model).items():
            default = cfg.default(info)
            value = other_value(model, key, default)
            got = cfg.section({name: {key: default}}, name, model,
                              env={cfg.env_name(name, key): env_text(value)})
            assert getattr(got, key) == value, (name, key)


def test_a_boolean_or_number_from_the_environment_may_be_spelled_as_people_do() -> None:
    """true/false, 1/0, yes/no, on/off in any case, and spaces around a value."""
    transport = node.CONFIG_SECTIONS["transport"]
    for text, want in (("yes", True), ("Off", False), (" 1 ", True), ("FALSE", False),
                       ("on", True), ("no", False)):
        got = cfg.section({}, "transport", transport,
                          env={"TOM_TRANSPORT__PORT_MAPPING": text})
        assert got.port_mapping is want, text  # type: ignore[attr-defined]
    assert cfg.section({}, "transport", transport,
                       env={"TOM_TRANSPORT__PORT": " 4500 "}).port == 4500  # type: ignore[attr-defined]
    with pytest.raises(cfg.ConfigError, match=r"transport\.port_mapping: .*true or false"):
        cfg.section({}, "transport", transport, env={"TOM_TRANSPORT__PORT_MAPPING": "maybe"})


def test_a_list_is_a_json_list_or_comma_separated() -> None:
    router = node.CONFIG_SECTIONS["router"]

    def boot(text: str) -> list[str]:
        got = cfg.section({}, "router", router, env={"TOM_ROUTER__BOOTSTRAP": text})
        return list(got.bootstrap)  # type: ignore[attr-defined]

    assert boot(f"{BOOT_A},{BOOT_B}") == [BOOT_A, BOOT_B]
    assert boot(f" {BOOT_A} , ") == [BOOT_A]
    assert boot(json.dumps([BOOT_A, BOOT_B])) == [BOOT_A, BOOT_B]
    assert boot("") == [] and boot("[]") == []
    with pytest.raises(cfg.ConfigError, match="TOM_ROUTER__BOOTSTRAP: not a JSON list"):
        boot("[1,")


def test_a_bad_variable_is_named_in_the_error() -> None:
    """Which key and which variable: a typo in a variable's key, a value of the wrong type,
    a bootstrap entry that is not ID@host:port."""
    router = node.CONFIG_SECTIONS["router"]
    with pytest.raises(cfg.ConfigError, match=r"TOM_ROUTER__USRNAME: \[router\] has no key "
                       r"'usrname'"):
        cfg.section({}, "router", router, env={"TOM_ROUTER__USRNAME": "alice"})
    with pytest.raises(cfg.ConfigError, match=r"router\.gossip_rate: .*number.*\(from "
                       r"TOM_ROUTER__GOSSIP_RATE\)"):
        cfg.section({}, "router", router, env={"TOM_ROUTER__GOSSIP_RATE": "fast"})
    with pytest.raises(cfg.ConfigError, match=r"router\.bootstrap: .*'nope' is not "
                       r"NODEID_HEX@host:port.*\(from TOM_ROUTER__BOOTSTRAP\)"):
        cfg.section({}, "router", router, env={"TOM_ROUTER__BOOTSTRAP": f"{BOOT_A},nope"})
    with pytest.raises(cfg.ConfigError, match=r"node\.toml: router\.bootstrap"):
        cfg.section({"router": {"bootstrap": ["zz@1.2.3.4:5"]}}, "router", router, env={})


def test_up_checks_every_section_and_variable_before_starting(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    data = DataDir(tmp_path)
    data.config.write_text("[router]\nusername = \"alice\"\n")
    node.check_config(data)
    monkeypatch.setenv("TOM_GROUPS__MAX_MEMBERS", "1")
    with pytest.raises(cfg.ConfigError, match=r"groups\.max_members.*TOM_GROUPS__MAX_MEMBERS"):
        node.check_config(data)
    monkeypatch.delenv("TOM_GROUPS__MAX_MEMBERS")
    data.config.write_text("[routr]\nusername = \"alice\"\n")
    with pytest.raises(cfg.ConfigError, match="unknown section.*routr"):
        node.check_config(data)


# -- the UDP port ---------------------------------------------------------------------------

@pytest.fixture
def held_port() -> Iterator[int]:
    """A UDP port on 127.0.0.1 held by another socket for the test."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        yield int(s.getsockname()[1])


def test_pick_port_takes_the_first_free_one(held_port: int) -> None:
    port, taken = node.pick_port("127.0.0.1", held_port)
    assert port > held_port and taken[0] == held_port and port not in taken
    assert node.udp_port_taken("127.0.0.1", port) is None
    assert node.pick_port("127.0.0.1", port) == (port, [])


def hold_default_port() -> socket.socket | None:
    """Hold 4433 on every interface, as another node would (None: it is taken already)."""
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        s.bind(("0.0.0.0", 4433))
    except OSError:
        s.close()
        return None
    return s


def test_init_writes_the_next_free_port_when_4433_is_taken_and_keeps_the_file(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A second node on the machine: 4433 is taken, so `tom init` writes the next free port
    into node.toml and says so; a second `tom init` keeps the file and reports its port."""
    monkeypatch.delenv("TOM_TRANSPORT__PORT", raising=False)
    monkeypatch.delenv("TOM_TRANSPORT__HOST", raising=False)
    data = DataDir(tmp_path / "n")
    holder = hold_default_port()
    try:
        r = node.init(data)
    finally:
        if holder:
            holder.close()
    port = tomllib.loads(data.config.read_text())["transport"]["port"]
    assert port > 4433
    assert r.port_note.startswith(f"UDP port {port}: 4433") and "taken" in r.port_note
    assert str(data.config) in r.port_note
    before = data.config.read_text()
    again = node.init(data)
    assert data.config.read_text() == before
    assert again.port_note == f"kept {data.config}: UDP port {port} (node.toml)"


def test_init_takes_the_port_of_the_environment_and_reports_an_old_file_without_one(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TOM_TRANSPORT__PORT", "5000")
    data = DataDir(tmp_path / "n")
    r = node.init(data)
    assert tomllib.loads(data.config.read_text())["transport"] == {"port": 5000}
    assert "TOM_TRANSPORT__PORT" in r.port_note
    monkeypatch.delenv("TOM_TRANSPORT__PORT")
    data.config.write_text("[bus]\nheartbeat_s = 1.0\n")  # written before issue 17
    note = node.init(data).port_note
    assert "the default, since node.toml sets none" in note and "4433" in note


def test_up_refuses_a_taken_port_and_says_what_to_do(tmp_path: Path, held_port: int) -> None:
    """`tom node up` does not start a node whose port is taken (its peers dial that port):
    the message names the port, node.toml and a free port; port_fallback lets it start."""
    data = DataDir(tmp_path)
    data.config.write_text(f"[transport]\nhost = \"127.0.0.1\"\nport = {held_port}\n")
    with pytest.raises(node.NodeError, match=rf"UDP port {held_port} on 127.0.0.1 is taken.*"
                       rf"set another port \(\d+ is free\).*{tmp_path}/node.toml"):
        node.check_port(data)
    data.config.write_text(f"[transport]\nhost = \"127.0.0.1\"\nport = {held_port}\n"
                           "port_fallback = true\n")
    node.check_port(data)
    data.config.write_text("[transport]\nhost = \"127.0.0.1\"\nport = 0\n")
    node.check_port(data)


def test_init_where_the_port_cannot_be_checked_writes_the_default(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """`tom init` run where the transport's host is not an address of this machine (the
    compose crypto container initialises the data directory): 4433, said to be unchecked."""
    monkeypatch.delenv("TOM_TRANSPORT__PORT", raising=False)
    monkeypatch.setenv("TOM_TRANSPORT__HOST", "192.0.2.77")  # TEST-NET-1: nobody's
    data = DataDir(tmp_path / "n")
    r = node.init(data)
    assert tomllib.loads(data.config.read_text())["transport"] == {"port": 4433}
    assert r.port_note.startswith("UDP port 4433 (the default, not checked: cannot open")


def test_json_log_lines() -> None:
    import logging

    from shared.runner import JsonFormatter

    rec = logging.LogRecord("tom.crypto", logging.WARNING, __file__, 1, "refused %s", ("x",),
                            None)
    line = json.loads(JsonFormatter("tom-crypto").format(rec))
    assert line["level"] == "warning" and line["msg"] == "refused x"
    assert line["service"] == "tom-crypto" and line["logger"] == "tom.crypto"
    assert line["ts"].endswith("+00:00") and isinstance(line["pid"], int)



def test_advertise_takes_ip_and_port() -> None:
    from services.transport.config import TransportConfig, advertised

    assert advertised("192.0.2.7:4433") == ("192.0.2.7", 4433)
    assert advertised("[2001:db8::1]:5000") == ("2001:db8::1", 5000)
    for bad in ("example.org:4433", "192.0.2.7", "192.0.2.7:0", "192.0.2.7:x"):
        with pytest.raises(ValueError):
            advertised(bad)
    assert cfg.validate(TransportConfig, {"advertise": ["192.0.2.7:4433"]}).advertise
    with pytest.raises(ValueError):
        cfg.validate(TransportConfig, {"advertise": ["nowhere"]})


def test_event_loop_setting_picks_the_loop(monkeypatch: pytest.MonkeyPatch) -> None:
    """[node] event_loop: "asyncio" runs the standard loop, "uvloop" and "auto" uvloop's
    when it is installed; "uvloop" without it is a startup error that says so."""
    import sys

    import uvloop

    from shared.runner import loop_factory
    from shared.service import StartupError

    assert loop_factory("asyncio") is None
    assert loop_factory("auto") is uvloop.new_event_loop
    assert loop_factory("uvloop") is uvloop.new_event_loop
    monkeypatch.setitem(sys.modules, "uvloop", None)  # not installed
    assert loop_factory("auto") is None
    with pytest.raises(StartupError, match="uvloop is not installed"):
        loop_factory("uvloop")
