"""The `tom` command line with no node running: the parser (every option has help, --data
before or after the command, --version, usage errors exit 64), a stopped node reported at
once with exit 3, and a closed output pipe (exit 141, no traceback). The node's own sockets
are real unix sockets here; no service runs."""

from __future__ import annotations

import argparse
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from importlib import metadata
from pathlib import Path

import pytest

from shared import endpoints as ep
from shared.paths import DataDir
from shared.primitives import SigningKey
from tom import cli, node

ROOT = Path(__file__).resolve().parents[2]
FAST_S = 0.5
"""In-process bound for a command on a stopped node (before: bus timeouts, 2 to 6 s)."""


def walk(parser: argparse.ArgumentParser,
         path: tuple[str, ...] = ()) -> Iterator[tuple[tuple[str, ...], argparse.ArgumentParser]]:
    """Every parser of the tree, with the command words that reach it."""
    yield path, parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield from walk(sub, (*path, name))


def test_every_option_argument_and_command_has_help() -> None:
    undocumented = []
    parsers = list(walk(cli.build_parser()))
    for path, parser in parsers:
        for action in parser._actions:
            where = " ".join(("tom", *path))
            if isinstance(action, argparse._SubParsersAction):
                undocumented += [f"{where} {c.dest}" for c in action._choices_actions
                                 if not c.help]
            elif not action.help or action.help == argparse.SUPPRESS:
                undocumented.append(f"{where} {'/'.join(action.option_strings) or action.dest}")
    assert len(parsers) > 20  # the walk reached the leaves (tom group kick, ...)
    assert not undocumented


def test_data_is_accepted_at_every_level() -> None:
    """Every parser of the tree takes --data, so it may come before or after any word."""
    assert [" ".join(path) for path, p in walk(cli.build_parser())
            if "--data" not in p._option_string_actions] == []
    for argv in (["--data", "X", "node", "status"], ["node", "status", "--data", "X"],
                 ["node", "--data", "X", "status"], ["group", "--data", "X", "list"],
                 ["group", "list", "--data", "X"], ["--data", "Y", "peers", "--data", "X"]):
        assert cli.build_parser().parse_args(argv).data == Path("X"), argv


def test_json_output_shows_ids_in_hex_as_the_text_output_does() -> None:
    from shared.wire.messages import backup as bm

    reply = bm.SummaryReply(messages=1, bytes=2, receipts=0, capacity_bytes=3,
                            capacity_messages=4, recipients=[],
                            origins=[bm.Usage(node_id=b"\x01" * 32, messages=1, bytes=2)])
    assert cli.json_values(reply)["origins"] == [{"node_id": "01" * 32, "messages": 1, "bytes": 2}]


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as e:
        cli.main(["--version"])
    assert e.value.code == 0
    assert capsys.readouterr().out == f"tom {metadata.version('tom-node')}\n"


VALID = SigningKey(b"\x01" * 32).public.hex()


@pytest.mark.parametrize("argv", [
    [], ["nosuch"], ["node"], ["node", "status", "--bogus"], ["ping", "nosuch"],
    ["ping", "router", "-c", "0"], ["send", "1234abcd", "hi"], ["send", VALID],
    ["send", f"{VALID}@host", "hi"], ["chat", "zz"], ["group", "kick", "g", "1234abcd"],
    ["group", "create", "g", "--hub", "x"], ["group", "role", "g", VALID, "boss"],
    ["inbox", "--after", "-1"], ["inbox", "--nosuch"],
])
def test_usage_errors_exit_64(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    """Checked while parsing: before anything looks for the node, which is not running."""
    with pytest.raises(SystemExit) as e:
        cli.main(["--data", "/nonexistent", *argv])
    assert e.value.code == cli.EX_USAGE
    assert "error: " in capsys.readouterr().err


def test_a_wrong_length_node_id_says_so(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        cli.main(["send", "1234abcd", "hi"])
    err = capsys.readouterr().err
    assert "'1234abcd' has 8 characters: a node id is 64 hex or 52 base32 characters" in err
    assert "neither" not in err


@pytest.fixture
def stopped() -> Iterator[Path]:
    """An initialised node that is not running, with stale socket files at its endpoints
    (what a stopped or killed node leaves behind)."""
    root = Path(tempfile.mkdtemp(prefix="tomc-", dir="/tmp"))
    try:
        node.init(DataDir(root))
        for role in ep.ROLES:
            path = ep.load(root / "endpoints.toml")[role].rpc.removeprefix("ipc://")
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
                s.bind(path)  # the file stays after close, with nothing behind it
        yield root
    finally:
        shutil.rmtree(root, ignore_errors=True)


@pytest.mark.parametrize("argv", [
    ["node", "status"], ["node", "status", "--json"], ["node", "down"], ["peers"],
    ["backup"], ["ping", "router"], ["group", "list"], ["group", "send", "g", "hi"],
    ["send", VALID, "hi"], ["chat", "--bot"], ["inbox"], ["inbox", "--follow", "--unread"],
])
def test_a_stopped_node_is_reported_at_once_with_exit_3(
        stopped: Path, argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    t0 = time.monotonic()
    rc = cli.main(["--data", str(stopped), *argv])
    elapsed = time.monotonic() - t0
    out = capsys.readouterr()
    assert rc == cli.EX_NOT_RUNNING, out
    assert out.err.startswith("tom: the node is not running (start it with `tom node up`)")
    assert "node status" not in out.err  # not sent in a circle
    assert elapsed < FAST_S, elapsed


def test_no_node_at_all_is_not_running(capsys: pytest.CaptureFixture[str]) -> None:
    with tempfile.TemporaryDirectory(dir="/tmp") as empty:
        assert cli.main(["--data", empty, "peers"]) == cli.EX_NOT_RUNNING
    assert "the node is not running" in capsys.readouterr().err


def test_id_of_a_stopped_node_does_not_wait_for_crypto(
        stopped: Path, capsys: pytest.CaptureFixture[str]) -> None:
    t0 = time.monotonic()
    assert cli.main(["--data", str(stopped), "id"]) == 0
    assert time.monotonic() - t0 < FAST_S
    assert len(capsys.readouterr().out.strip()) == 64


def test_listening() -> None:
    with tempfile.TemporaryDirectory(dir="/tmp") as d:
        path = f"{d}/s"
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            s.bind(path)
            assert not node.listening(f"ipc://{path}")  # bound, not listening
            s.listen()
            assert node.listening(f"ipc://{path}")
        assert not node.listening(f"ipc://{path}")  # the file is left, nobody behind it
        assert not node.listening(f"ipc://{d}/none")
    with socket.create_server(("127.0.0.1", 0)) as srv:
        port = srv.getsockname()[1]
        assert node.listening(f"tcp://127.0.0.1:{port}")
    assert not node.listening(f"tcp://127.0.0.1:{port}")


@pytest.mark.parametrize("argv", [["id"], ["node", "status"]])
def test_a_closed_output_pipe_exits_quietly(stopped: Path, argv: list[str]) -> None:
    """`tom ... | head -1` where head has gone: exit 141 and nothing on stderr (a stopped
    node's status writes its message to stderr, which is that same pipe here)."""
    r, w = os.pipe()
    os.close(r)  # the reader is gone before tom writes anything
    try:
        proc = subprocess.run([sys.executable, "-m", "tom.cli", "--data", str(stopped), *argv],
                              stdout=w, stderr=w if argv == ["node", "status"] else
                              subprocess.PIPE, cwd=ROOT, timeout=60)
    finally:
        os.close(w)
    assert proc.returncode == cli.EX_PIPE
    assert not proc.stderr, proc.stderr
