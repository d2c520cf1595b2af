"""docs/guide.md works as written: its command blocks run, in order, in the NAT lab (two
homes behind cone NATs, a public server), with the placeholders replaced by the real ids and
addresses. Way 1 (Alice forwards a UDP port) and way 2 (a public server) each from fresh
nodes."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from shared.testing.prereq import missing, require_command, require_root
from tom import lab as tl

pytestmark = [pytest.mark.slow, pytest.mark.root]
DOC = Path(__file__).parents[2] / "docs" / "guide.md"
BLOCK = re.compile(r"```sh\n# (alice|bob)\n(.*?)```", re.S)
SECTION = re.compile(r"^## (\d+)\. ", re.M)
BIN = str(Path(sys.executable).parent)  # where `tom` is installed


def blocks(sections: set[int]) -> list[tuple[str, str]]:
    """(who, commands) of each block in the numbered ``sections``, in document order."""
    text = DOC.read_text()
    starts = [(m.start(), int(m.group(1))) for m in SECTION.finditer(text)]

    def section(pos: int) -> int:
        return max((n for start, n in starts if start < pos), default=0)
    return [(m.group(1), m.group(2)) for m in BLOCK.finditer(text)
            if section(m.start()) in sections]


@dataclass
class Person:
    host: tl.Host
    home: Path
    env: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.env = dict(os.environ, TOM_HOME=str(self.home),
                        PATH=f"{BIN}:{os.environ.get('PATH', '')}")

    def sh(self, script: str, timeout: float = 90) -> subprocess.CompletedProcess[str]:
        return self.host.run(["bash", "-euo", "pipefail", "-c", script], env=self.env,
                             timeout=timeout, check=False, capture_output=True, text=True)

    def id(self) -> str:
        r = self.sh("tom id")
        assert r.returncode == 0, r.stdout + r.stderr
        return r.stdout.split()[0]


@pytest.fixture
def world() -> Iterator[tuple[tl.Lab, dict[str, Person], dict[str, tl.Nat]]]:
    require_root("create network namespaces for the NAT lab")
    require_command("ip", "create network namespaces (apt-get install iproute2)")
    require_command("iptables", "build NAT routers in the lab (apt-get install iptables)")
    if (reason := tl.available()) is not None:
        missing(f"the NAT lab cannot run here: {reason}")
    homes: list[Path] = []
    people: dict[str, Person] = {}
    with tl.Lab(prefix="tg") as lab:
        try:
            nats = {"alice": lab.nat("nata", "cone"), "bob": lab.nat("natb", "cone")}
            hosts = {"alice": lab.home("alice", nats["alice"]),
                     "bob": lab.home("bob", nats["bob"]), "server": lab.public("server")}
            for name, host in hosts.items():
                homes.append(Path(tempfile.mkdtemp(prefix=f"tg-{name}-", dir="/tmp")))
                people[name] = Person(host, homes[-1])
            yield lab, people, nats
        finally:
            for p in people.values():
                p.sh("tom node down", timeout=30)
            for h in homes:
                shutil.rmtree(h, ignore_errors=True)


def run_guide(people: dict[str, Person], sections: set[int],
              values: dict[str, str]) -> dict[str, str]:
    """Run the guide's blocks of ``sections``; the output of each, by who ran it (joined)."""
    out: dict[str, str] = {"alice": "", "bob": ""}
    for who, script in blocks({1} | sections):
        for key, value in values.items():
            script = script.replace(key, value)
        if "ALICE_ID" in script:
            script = script.replace("ALICE_ID", people["alice"].id())
        assert not re.search(r"\b[A-Z]{3,}_[A-Z_]+\b", script), f"placeholder left: {script}"
        p = people[who]
        if script.strip() == "tom peers":  # "repeat the command until it does"
            r = poll(p, script, lambda text: re.search(rf"{people['alice'].id()}.*direct",
                                                       text) is not None)
        elif script.strip() == "tom inbox":
            r = poll(p, script, lambda text: "hello Alice" in text)
        else:
            r = p.sh(script)
        assert r.returncode == 0, f"{who}: {script}\n{r.stdout}{r.stderr}"
        out[who] += r.stdout
    return out


def poll(p: Person, script: str, done: object, timeout_s: float = 30
         ) -> subprocess.CompletedProcess[str]:
    assert callable(done)
    deadline = time.monotonic() + timeout_s
    while True:
        r = p.sh(script)
        if (r.returncode == 0 and done(r.stdout)) or time.monotonic() > deadline:
            return r
        time.sleep(0.5)  # the person repeats the command


def test_the_guide_has_both_ways() -> None:
    assert [who for who, _ in blocks({1})] == ["alice", "bob"]
    assert any("ALICE_PUBLIC_IP" in s for _, s in blocks({2}))
    assert any("SERVER_IP" in s for _, s in blocks({3}))
    assert [s.strip() for _, s in blocks({4})] == ["tom peers"]


def test_way_1_alice_forwards_a_port(
        world: tuple[tl.Lab, dict[str, Person], dict[str, tl.Nat]]) -> None:
    _lab, people, nats = world
    nats["alice"].forward(4433)
    out = run_guide(people, {2, 4}, {"ALICE_PUBLIC_IP": nats["alice"].public_addr})
    assert "port 4433" in out["alice"] and "port 4433" in out["bob"]
    assert "delivered" in out["bob"]
    assert "hello Alice, it's Bob" in out["alice"]


def test_way_2_a_public_server(
        world: tuple[tl.Lab, dict[str, Person], dict[str, tl.Nat]]) -> None:
    _lab, people, _nats = world
    server = people["server"]
    for cmd in ("tom init", "tom node up"):
        r = server.sh(cmd)
        assert r.returncode == 0, r.stdout + r.stderr
    out = run_guide(people, {3, 4}, {"SERVER_ID": server.id(),
                                     "SERVER_IP": server.host.addr})
    assert out["bob"].count("delivered") >= 2, out["bob"]
