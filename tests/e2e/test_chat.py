"""`tom chat`, `tom chat --bot` and `tom send` between two real nodes (`tom node up`, five
processes each, QUIC on loopback). The chat UI runs in a detached tmux session driven with
send-keys and read with capture-pane; every wait polls the screen (or the nodes' own state)
against a deadline."""

from __future__ import annotations

import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from shared import nodeid
from shared.paths import DataDir
from shared.primitives import SigningKey
from shared.testing.prereq import require_command
from shared.wire.messages import transport as tm
from tom.client import Client
from tom.node import Supervisor

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[2]
NODE_TOML = """\
[bus]
heartbeat_s = 0.5
[transport]
host = "127.0.0.1"
port = 0
"""
ORDER = ["sending", "pending", "sent", "relayed", "delivered", "read"]


def tom(data: Path, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "tom.cli", "--data", str(data), *args],
                          capture_output=True, text=True, timeout=timeout, cwd=ROOT)


def until(what: str, check: Callable[[], object], timeout_s: float = 30,
          detail: Callable[[], str] = lambda: "") -> object:
    deadline = time.monotonic() + timeout_s
    while True:
        if result := check():
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s} s waiting for {what}\n{detail()}")
        time.sleep(0.05)  # polling the screen or the nodes' own state


@dataclass
class Node:
    data: Path
    id: bytes
    host: str
    port: int

    @property
    def short(self) -> str:
        return nodeid.short(self.id)

    def client(self, after: int | None = None) -> Client:
        return Client(DataDir(self.data), after=after)

    def router(self, action: str) -> None:
        rpc = Supervisor(DataDir(self.data)).rpc().supervisor
        (rpc.stopProcess if action == "stop" else rpc.startProcess)("router")


def kill_leftovers(data: Path) -> None:
    """Whatever happened in the test, leave no supervisord or service behind."""
    try:
        tom(data, "node", "down", timeout=30)
    finally:
        try:
            pid = int((data / "run" / "supervisord.pid").read_text())
            os.kill(pid, signal.SIGKILL)
        except (OSError, ValueError):
            pass
        subprocess.run(["pkill", "-9", "-f", f"services.* --data {data}"], check=False)


def start(data: Path) -> Node:
    (data / "node.toml").parent.mkdir(parents=True, exist_ok=True)
    (data / "node.toml").write_text(NODE_TOML)
    up = tom(data, "node", "up")
    assert up.returncode == 0, up.stdout + up.stderr
    with Client(DataDir(data)) as c:
        node_id = c.node_id()

        def ready() -> tm.InfoReply | None:
            reply = c.bus.request("transport", tm.Info())
            assert isinstance(reply, tm.InfoReply)
            return reply if reply.ready else None

        info = until("the transport's binding", ready, 20)
        assert isinstance(info, tm.InfoReply)
    return Node(data, node_id, info.host, info.port)


@pytest.fixture(scope="module")
def nodes() -> Iterator[tuple[Node, Node]]:
    dirs = [Path(tempfile.mkdtemp(prefix=f"tomchat-{n}-", dir="/tmp")) for n in "ab"]
    try:
        a, b = start(dirs[0]), start(dirs[1])
        with a.client() as ca, b.client() as cb:
            ca.add_peer(b.id, b.host, b.port)
            cb.add_peer(a.id, a.host, a.port)
            until("A and B connected", lambda: any(p.node_id == b.id and p.connected
                                                  for p in ca.peers()))
        yield a, b
    finally:
        for d in dirs:
            kill_leftovers(d)
            shutil.rmtree(d, ignore_errors=True)


class Tmux:
    """A private tmux server (its own socket and config, not the user's) with one 160x40
    session."""

    def __init__(self) -> None:
        self.exe = require_command("tmux", "drive `tom chat` in a terminal (Debian/Ubuntu: "
                                   "apt-get install --no-install-recommends tmux)")
        # a short path: a unix socket's path is limited to ~100 bytes (tmp_path is longer)
        self.dir = Path(tempfile.mkdtemp(prefix="tomtmux-", dir="/tmp"))
        tmp = self.dir
        self.sock = tmp / "sock"
        self.conf = tmp / "tmux.conf"
        # keep the pane after the program exits: its last words (or traceback) stay readable
        self.conf.write_text("set -g remain-on-exit on\nset -g history-limit 2000\n")
        self.server_pid: int | None = None

    def run(self, *args: str) -> subprocess.CompletedProcess[str]:
        # COLUMNS/LINES (pytest's, 80x24) would override the pane's size in the chat
        env = {k: v for k, v in os.environ.items() if k not in ("COLUMNS", "LINES")}
        return subprocess.run([self.exe, "-u", "-S", str(self.sock), "-f", str(self.conf),
                               *args], capture_output=True, text=True, timeout=10, cwd=ROOT,
                              env=env)

    def start(self, *argv: str) -> None:
        r = self.run("new-session", "-d", "-x", "160", "-y", "40", "-s", "chat", "-c",
                     str(ROOT), shlex.join(argv))
        assert r.returncode == 0, r.stderr
        self.server_pid = int(self.run("display-message", "-p", "#{pid}").stdout)

    def screen(self) -> str:
        return self.run("capture-pane", "-p", "-t", "chat").stdout

    def wait(self, what: str, check: Callable[[str], object], timeout_s: float = 30) -> str:
        until(what, lambda: check(self.screen()), timeout_s, lambda: "screen:\n" + self.screen())
        return self.screen()

    def type(self, line: str) -> None:
        """Type a line, wait until the input box shows it, then press Enter."""
        assert self.run("send-keys", "-t", "chat", "-l", line).returncode == 0
        self.wait(f"{line!r} in the input box",
                  lambda s: any(line in x for x in s.splitlines()[-4:]))
        assert self.run("send-keys", "-t", "chat", "Enter").returncode == 0

    def kill(self) -> None:
        self.run("kill-server")  # SIGHUP to the chat
        deadline = time.monotonic() + 5
        try:
            while self.server_pid is not None and time.monotonic() < deadline:
                os.kill(self.server_pid, 0)
                time.sleep(0.05)  # waiting for the server's exit
            if self.server_pid is not None:
                os.kill(self.server_pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        finally:
            shutil.rmtree(self.dir, ignore_errors=True)


@pytest.fixture()
def tmux() -> Iterator[Tmux]:
    t = Tmux()
    try:
        yield t
    finally:
        t.kill()


def chat_argv(node: Node, *args: str) -> list[str]:
    return [sys.executable, "-m", "tom.cli", "--data", str(node.data), "chat", *args]


def status_of(screen: str, text: str) -> str | None:
    m = re.search(re.escape(text) + r"  \((\w+)", screen)
    return m.group(1) if m else None


class Bot:
    """`tom chat --bot` in the background, its output collected line by line."""

    def __init__(self, node: Node) -> None:
        self.proc = subprocess.Popen(chat_argv(node, "--bot"), stdout=subprocess.PIPE,
                                     stderr=subprocess.STDOUT, text=True, cwd=ROOT)
        self.lines: list[str] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.append(line.rstrip("\n"))

    @property
    def out(self) -> str:
        return "\n".join(self.lines)

    def wait(self, what: str, text: str, timeout_s: float = 30) -> None:
        until(what, lambda: text in self.out, timeout_s, lambda: "bot output:\n" + self.out)

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        rc = self.proc.wait(10)
        self._reader.join(5)
        return rc


def test_chat_with_a_bot_message_goes_to_read_and_the_echo_comes_back(
        nodes: tuple[Node, Node], tmux: Tmux) -> None:
    a, b = nodes
    bot = Bot(b)
    try:
        bot.wait("the bot's node id", f"[bot] node {b.id.hex()}")
        tmux.start(*chat_argv(a, b.id.hex()))
        tmux.wait("the header", lambda s: f"You: {a.short}" in s and b.short in s.splitlines()[0])
        text = "hello from tmux"
        tmux.type(text)
        seen: list[str] = []

        def reached_read(screen: str) -> bool:
            st = status_of(screen, text)
            if st and (not seen or seen[-1] != st):
                seen.append(st)
            return st == "read"

        tmux.wait("the message to be read by the bot", reached_read)
        assert seen == sorted(seen, key=ORDER.index) and seen[-1] == "read", seen
        assert "failed" not in seen
        # the bot's echo, shown tagged, and read by the chat: the bot sees "read"
        try:
            screen = tmux.wait("the echo",
                               lambda s: f"echo: {text}  [verified, encrypted]" in s)
        except AssertionError as e:  # (a rare failure under load: say what the bot did)
            raise AssertionError(f"{e}\nbot output:\n{bot.out}") from None
        echo = next(x for x in screen.splitlines() if f": echo: {text}" in x)
        assert b.short in echo  # "anonymous (short id)" once B's announcement named it
        bot.wait("the bot to log its message",
                 f'[bot] #1 from {a.short} | verified | "{text}"')
        bot.wait("the chat to read the echo", "[bot] reply to #1: read")

        tmux.type("/id")
        tmux.wait("/id", lambda s: f"Your node id: {a.id.hex()}" in s.replace("\n", ""))
        tmux.type("/peers")
        tmux.wait("/peers", lambda s: f"{b.id.hex()} " in s and "connected" in s)
        tmux.type("/stats")
        tmux.wait("/stats", lambda s: "this session: 1 sent, 1 received" in s
                  and "counters:" in s)
        tmux.type("/nonsense")
        tmux.wait("an unknown command", lambda s: "Unknown command: /nonsense" in s)
        tmux.type("/q")
        tmux.wait("the chat to exit", lambda s: "Stats: 1 sent, 1 received" in s)
    finally:
        rc = bot.stop()
    assert rc == 0, bot.out
    assert "[bot] stopped: 1 received, 1 replied" in bot.out


def test_status_steps_sent_then_delivered_then_read(nodes: tuple[Node, Node],
                                                    tmux: Tmux) -> None:
    """With B's router stopped, A's message is sent (B's transport took it) and stays so;
    B's router back: delivered; B's app reads it: read."""
    a, b = nodes
    text = "while you were away"
    b.router("stop")
    try:
        tmux.start(*chat_argv(a, b.id.hex()))
        tmux.wait("the header", lambda s: f"You: {a.short}" in s)
        tmux.type(text)
        tmux.wait("sent", lambda s: status_of(s, text) == "sent")
        # tom send gives up after its timeout and names the last status
        r = tom(a.data, "send", b.id.hex(), "not yet", "--timeout", "3")
        assert r.returncode == 2, r.stdout + r.stderr
        assert "timeout after 3 s: last status sent" in r.stderr
        assert status_of(tmux.screen(), text) == "sent"
    finally:
        b.router("start")
    tmux.wait("delivered once B's router is back", lambda s: status_of(s, text) == "delivered")
    with b.client(after=0) as cb:
        msg = until("B's inbox to hold it", lambda: next(
            (m for m in cb.inbox(0, 1000) if m.text == text), None))
        cb.read(msg)  # type: ignore[arg-type]
    tmux.wait("read", lambda s: status_of(s, text) == "read")


def test_send_exit_status(nodes: tuple[Node, Node]) -> None:
    a, b = nodes
    r = tom(a.data, "send", b.id.hex(), "one shot", "--timeout", "20")
    assert (r.returncode, r.stdout.strip()) == (0, "delivered"), r.stdout + r.stderr
    r = tom(a.data, "send", f"{b.id.hex()}@{b.host}:{b.port}", "plain one", "--no-encrypt",
            "--timeout", "20")
    assert (r.returncode, r.stdout.strip()) == (0, "delivered"), r.stdout + r.stderr
    with b.client(after=0) as cb:
        got = {m.text: m.info.encrypted for m in cb.inbox(0, 1000)}
    assert got["one shot"] is True and got["plain one"] is False

    nobody = SigningKey(os.urandom(32)).public  # a valid id no node has
    r = tom(a.data, "send", nobody.hex(), "hello?", "--timeout", "3")
    assert r.returncode == 2, r.stdout + r.stderr
    assert "timeout after 3 s: last status pending" in r.stderr

    r = tom(a.data, "send", "not-a-node", "x")
    assert r.returncode == 64 and "not a node id" in r.stderr, r.stderr  # usage error
    r = tom(a.data, "send", a.id.hex(), "to myself", "--timeout", "20")
    assert r.returncode == 1 and "cannot send a message to this node itself" in r.stderr, \
        r.stderr
