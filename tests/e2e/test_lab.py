"""The NAT lab (tom/lab.py): real namespaces, real iptables NAT, real UDP sockets.

Most tests share one lab (a module fixture): two public hosts with reflectors, two cone and
two symmetric NATs, each with a home. Every test uses its own local ports, so conntrack
entries left by one test cannot change the mappings another test sees. Tests that change a
router (loss, block) put it back in a ``finally``.
"""

from __future__ import annotations

import re
import secrets
import signal
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from shared.testing.prereq import require_command, require_root
from tom.lab import HOME_ADDR, Host, Lab, Nat, cleanup, punch, received, wait_until

pytestmark = [pytest.mark.slow, pytest.mark.root]
ROOT = Path(__file__).resolve().parents[2]
REFLECTOR_PORTS = (3478, 3479)


def prerequisites() -> None:
    require_root("create network namespaces for the NAT lab")
    require_command("ip", "create network namespaces and veths (apt-get install iproute2)")
    require_command("iptables", "build NAT routers in the lab (apt-get install iptables)")


def namespaces() -> list[str]:
    out = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True,
                         check=True).stdout
    return [line.split()[0] for line in out.splitlines() if line.strip()]


@dataclass
class World:
    lab: Lab
    p1: Host
    p2: Host
    cone: tuple[Nat, Nat]
    sym: tuple[Nat, Nat]
    cone_homes: tuple[Host, Host]
    sym_homes: tuple[Host, Host]

    def reflectors(self) -> list[str]:
        """Three destinations: two ports of p1 and one of p2."""
        return [f"{self.p1.addr}:{REFLECTOR_PORTS[0]}", f"{self.p1.addr}:{REFLECTOR_PORTS[1]}",
                f"{self.p2.addr}:{REFLECTOR_PORTS[0]}"]


@pytest.fixture(scope="module")
def world() -> Iterator[World]:
    prerequisites()
    with Lab() as lab:
        p1, p2 = lab.public("p1"), lab.public("p2")
        cone = lab.nat("ca"), lab.nat("cb")
        sym = lab.nat("sa", "symmetric"), lab.nat("sb", "symmetric")
        cone_homes = lab.home("ha", cone[0]), lab.home("hb", cone[1])
        sym_homes = lab.home("hc", sym[0]), lab.home("hd", sym[1])
        p1.reflect(*REFLECTOR_PORTS)
        p2.reflect(REFLECTOR_PORTS[0])
        yield World(lab, p1, p2, cone, sym, cone_homes, sym_homes)
    assert not [ns for ns in namespaces() if ns.startswith(lab.id + "-")]


def test_cone_mapping_keeps_the_port_for_every_destination(world: World) -> None:
    """A cone NAT maps 10.0.0.2:41000 to its public address and port 41000, whoever the
    destination is (two ports of one host, and another host)."""
    prerequisites()
    nat, home = world.cone[0], world.cone_homes[0]
    seen = home.observe(41000, world.reflectors())
    assert seen == [f"{nat.public_addr}:41000"] * 3


def test_symmetric_mapping_differs_per_destination(world: World) -> None:
    """A symmetric NAT shows the same public address but a different port to each of three
    destinations (random ports; all three equal by chance is about 1 in 10^9)."""
    prerequisites()
    nat, home = world.sym[0], world.sym_homes[0]
    seen = home.observe(41001, world.reflectors())
    assert None not in seen
    addrs = {str(s).rsplit(":", 1)[0] for s in seen}
    ports = {str(s).rsplit(":", 1)[1] for s in seen}
    assert addrs == {nat.public_addr}
    assert len(ports) > 1, seen


def test_unsolicited_inbound_is_dropped(world: World) -> None:
    """Datagrams from a public host to a NAT's address and a port its home listens on, with
    no mapping, are all dropped by the router (its drop counter proves they arrived), and
    none reaches the home."""
    prerequisites()
    nat, home = world.cone[1], world.cone_homes[1]
    listener = home.sink(41002)
    before = nat.drops()["inbound"]
    world.p2.send(41002, f"{nat.public_addr}:41002", 5)
    assert wait_until(lambda: nat.drops()["inbound"] >= before + 5, 5.0)
    assert received(listener, stop=True) == 0
    assert nat.drops()["inbound"] == before + 5


def test_punch_cone_to_cone_succeeds(world: World) -> None:
    """Two homes behind cone NATs learn their mappings from a reflector and punch
    simultaneously: both hear each other."""
    prerequisites()
    a, b = world.cone_homes
    r = punch(a, b, f"{world.p1.addr}:{REFLECTOR_PORTS[0]}", port=41003)
    assert r.mapped == (f"{world.cone[0].public_addr}:41003",
                        f"{world.cone[1].public_addr}:41003")
    assert r.punched == (True, True)


def test_punch_symmetric_to_symmetric_fails(world: World) -> None:
    """Behind symmetric NATs the mapping toward the peer is not the one the reflector saw,
    so neither side hears the other."""
    prerequisites()
    a, b = world.sym_homes
    r = punch(a, b, f"{world.p1.addr}:{REFLECTOR_PORTS[0]}", port=41004, timeout_s=1.0)
    assert None not in r.mapped
    assert r.punched == (False, False)


def test_homes_share_the_private_address(world: World) -> None:
    """Every home is 10.0.0.2, and each still reaches the public side through its own NAT."""
    prerequisites()
    homes = [*world.cone_homes, *world.sym_homes]
    assert {h.addr for h in homes} == {HOME_ADDR}
    for h in homes:
        out = h.run(["ip", "-4", "-o", "addr", "show", "dev", "eth0"], check=True).stdout
        assert f" {HOME_ADDR}/24 " in out
    seen = [h.observe(41005, world.reflectors()[:1])[0] for h in world.cone_homes]
    assert seen == [f"{n.public_addr}:41005" for n in world.cone]


def test_loss_drops_about_p_in_both_directions(world: World) -> None:
    """With loss 0.5, 400 datagrams each way lose about half (bounds 25 %..75 %: ten standard
    deviations), and every datagram is either received or counted by the loss rule (each
    set_loss replaces the rule, so its counter starts at 0)."""
    prerequisites()
    nat, home, public = world.cone[0], world.cone_homes[0], world.p2
    n = 400
    try:
        # out: home -> public
        sink = public.sink(41006)
        nat.set_loss(0.5)
        home.send(41006, f"{public.addr}:41006", n)
        assert wait_until(lambda: received(sink) + nat.drops()["loss"] == n, 5.0)
        got = received(sink, stop=True)
        assert n * 0.25 <= got <= n * 0.75, got

        # in: public -> home, through the mapping the home opens with one "hello"
        nat.set_loss(0)
        sink = home.sink(41007, hello=[f"{public.addr}:41007"])
        nat.set_loss(0.5)
        public.send(41007, f"{nat.public_addr}:41007", n)
        assert wait_until(lambda: received(sink) + nat.drops()["loss"] == n, 5.0)
        got = received(sink, stop=True)
        assert n * 0.25 <= got <= n * 0.75, got
    finally:
        nat.set_loss(0)
    assert nat.drops()["loss"] == 0  # the rule (and its counter) is gone


def test_block_and_unblock(world: World) -> None:
    """Blocking p1 stops UDP between the home and p1 only; unblocking restores it."""
    prerequisites()
    nat, home = world.cone[1], world.cone_homes[1]
    to_p1, to_p2 = world.reflectors()[0], world.reflectors()[2]
    mapped = f"{nat.public_addr}:41008"
    try:
        assert home.observe(41008, [to_p1, to_p2]) == [mapped, mapped]
        nat.block(world.p1.addr)
        nat.block(world.p1.addr)  # twice is the same as once
        assert home.observe(41008, [to_p1, to_p2], wait_s=0.5) == [None, mapped]
        assert nat.drops()["block"] > 0
        nat.unblock(world.p1.addr)
        assert home.observe(41008, [to_p1, to_p2]) == [mapped, mapped]
        assert nat.drops()["block"] == 0
    finally:
        nat.unblock(world.p1.addr)


def test_exception_inside_with_deletes_everything() -> None:
    """An exception inside ``with Lab()`` still kills its processes and deletes its
    namespaces."""
    prerequisites()
    with pytest.raises(RuntimeError, match="boom"):
        with Lab(prefix="tlx") as lab:
            nat = lab.nat("n", "symmetric")
            home = lab.home("h", nat)
            proc = home.popen(["sleep", "60"])
            assert len([ns for ns in namespaces() if ns.startswith(lab.id + "-")]) == 3
            raise RuntimeError("boom")
    assert proc.poll() is not None
    assert not [ns for ns in namespaces() if ns.startswith(lab.id + "-")]


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_signal_deletes_everything(sig: signal.Signals) -> None:
    """A process holding a lab that gets SIGTERM or SIGINT deletes the lab before dying."""
    prerequisites()
    code = ("import time\nfrom tom.lab import Lab\nlab = Lab(prefix='tls')\n"
            "lab.home('h', lab.nat('n')).popen(['sleep', '60'])\n"
            "print(lab.id, flush=True)\ntime.sleep(60)\n")
    proc = subprocess.Popen([sys.executable, "-c", code], cwd=ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        lab_id = proc.stdout.readline().strip()
        assert lab_id.startswith("tls"), proc.stderr.read() if proc.stderr else ""
        assert [ns for ns in namespaces() if ns.startswith(lab_id + "-")]
        proc.send_signal(sig)
        assert proc.wait(timeout=20) != 0
        assert not [ns for ns in namespaces() if ns.startswith(lab_id + "-")]
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.communicate()


def test_cleanup_removes_a_leftover_namespace() -> None:
    """``cleanup(prefix)`` kills what runs in a leftover namespace and deletes it."""
    prerequisites()
    prefix = f"tz{secrets.token_hex(3)}"
    ns = f"{prefix}-left"
    subprocess.run(["ip", "netns", "add", ns], check=True)
    sleeper = subprocess.Popen(["ip", "netns", "exec", ns, "sleep", "60"])
    try:
        assert cleanup(prefix) == [f"netns {ns}"]
        assert sleeper.wait(timeout=10) == -signal.SIGKILL
        assert ns not in namespaces()
        assert cleanup(prefix) == []
    finally:
        if sleeper.poll() is None:
            sleeper.kill()
            sleeper.wait()
        subprocess.run(["ip", "netns", "delete", ns], capture_output=True)


def lab_cli(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "tom.lab", *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=timeout)


def leftovers(lab_id: str) -> list[str]:
    """What a lab left behind: namespaces, node data directories, processes of its nodes."""
    found = [f"netns {ns}" for ns in namespaces() if ns.startswith(lab_id + "-")]
    found += [f"dir {d}" for d in Path("/tmp").glob(f"{lab_id}-*")]
    ps = subprocess.run(["ps", "-eo", "pid,args"], capture_output=True, text=True).stdout
    return found + [f"process {line.strip()}" for line in ps.splitlines()
                    if f"/tmp/{lab_id}-" in line]


def test_cli_check_and_clean() -> None:
    """``check`` says ok; ``clean`` lists what it removed."""
    prerequisites()
    check = lab_cli("check")
    assert (check.returncode, check.stdout) == (0, "ok\n"), check.stderr

    prefix = f"tz{secrets.token_hex(3)}"
    subprocess.run(["ip", "netns", "add", f"{prefix}-old"], check=True)
    clean = lab_cli("clean", "--prefix", prefix)
    assert clean.returncode == 0, clean.stderr
    assert f"removed netns {prefix}-old" in clean.stdout
    assert f"{prefix}-old" not in namespaces()


def test_demo_two_nodes_punch_and_chat() -> None:
    """``demo`` (what ``make lab`` runs): two whole nodes behind their own NATs meet through
    the relay, the path becomes direct to each other's NAT, a message goes each way and all
    are delivered; nothing is left behind."""
    prerequisites()
    demo = lab_cli("demo", "--prefix", "tld", timeout=300)
    out = demo.stdout
    print(out)
    assert demo.returncode == 0, out + demo.stderr
    found = re.match(r"NAT lab (tld[0-9a-f]{6}) .*alice behind cone NAT nat-a "
                     r"\((\S+)\), bob behind cone NAT nat-b \((\S+)\)", out)
    assert found, out
    lab_id, nat_a, nat_b = found.groups()
    for line in (f"alice connected to the relay, which sees it at {nat_a}:",
                 f"bob connected to the relay, which sees it at {nat_b}:",
                 "alice knows bob from the relay's announcements: path relayed via relay",
                 "alice -> bob 'hello bob': delivered in ",
                 f"path alice -> bob is direct: {nat_b}:",
                 f"path bob -> alice is direct: {nat_a}:",
                 "bob -> alice 'hi alice, no relay between us now': delivered in ",
                 "alice -> bob 'so I see': delivered in ", "1 direct, 0 failed",
                 "ok: alice and bob, each behind a NAT, met through the relay, punched a "
                 "direct path and chatted: 3 messages delivered"):
        assert line in out, line
    assert re.search(r"'hi alice, no relay between us now': delivered in \d+ ms, direct;", out)
    assert re.search(r"'so I see': delivered in \d+ ms, direct;", out)
    assert f"lab {lab_id} deleted" in out
    assert leftovers(lab_id) == []


def test_demo_interrupted_leaves_nothing() -> None:
    """SIGINT once the nodes run: the demo says so, exits 130 and deletes everything. It
    starts with SIGINT ignored, as a shell starts a background job (`make lab &`): the demo
    still takes SIGINT as an interrupt."""
    prerequisites()
    proc = subprocess.Popen([sys.executable, "-m", "tom.lab", "demo", "--prefix", "tli"],
                            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_IGN))
    try:
        assert proc.stdout is not None
        lines = [proc.stdout.readline()]
        found = re.match(r"NAT lab (tli[0-9a-f]{6}) ", lines[0])
        assert found, lines
        while "] up: relay " not in lines[-1]:  # readline returns "" if the demo ends
            lines.append(proc.stdout.readline())
            assert lines[-1], lines
        assert leftovers(found[1])  # the nodes run
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=60)
        assert proc.returncode == 130, out + err
        assert "interrupted; the lab was deleted" in err
        assert leftovers(found[1]) == []
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
