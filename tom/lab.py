"""A NAT lab in Linux network namespaces, for hole punching with real UDP sockets.

    python -m tom.lab demo [--prefix P]   (make lab) two whole nodes, each behind its own
                                          NAT, meet through a public relay, punch a direct
                                          path and chat; prints what happened
    python -m tom.lab clean [--prefix P]  delete leftover namespaces of earlier labs
    python -m tom.lab check               "ok", or why the lab cannot run here

Exit codes: 0 ok, 1 failure, 2 the lab cannot run here (the message says why), 130
interrupted (SIGINT or SIGTERM; the lab is deleted first).

Theory of operation (the recipe of docs "NAT lab in network namespaces", measured here):

* Every lab has an id, ``prefix`` plus six random hex digits, and every namespace it creates
  is named ``<id>-<name>``, so labs running at the same time never collide and
  ``cleanup(<id>-)`` finds all of one lab's namespaces, even half-built ones.
* The namespace ``<id>-pub`` holds a bridge ``br0`` with no address: the public internet.
  Each public host, and each NAT router's WAN side, is a veth on that bridge with an address
  ``<subnet>.<n>`` (n = 10, 11, ... in creation order).
* A NAT router is a namespace with ``wan`` (public) and ``lan`` (10.0.0.1/24) and forwarding
  on. Its one home is a namespace whose ``eth0`` is 10.0.0.2, the same private address behind
  every NAT on purpose, with its default route via 10.0.0.1.
* NAT kinds (:data:`KINDS`), by mapping and filtering as RFC 4787 names them:

  - "port-restricted" (alias "cone"): ``MASQUERADE``, endpoint-independent mapping that keeps
    the port; inbound only from an address *and port* the home sent to (conntrack).
  - "address-restricted": the same mapping; inbound from any port of an address the home
    sent to (``-m recent`` remembers the destinations; new inbound flows are DNATed to the
    home on the same port and accepted when their source is remembered).
  - "full-cone": the same mapping; inbound from anyone to the home's ports (DNAT).
  - "symmetric": ``MASQUERADE --random-fully``, a fresh random port per destination.
  - "sequential": symmetric, but each new flow takes the next port (nft ``snat to
    PUB:numgen inc``), as many carrier NATs do: predictable from one observation.
  - "rebinding": port-restricted; the home's port 4433 (a node's) is mapped to one public
    port, which :meth:`Nat.rebind` changes mid-conversation (a new port, the old mappings
    flushed), as a CGNAT does when a mapping expires or the router restarts.

  The restricted kinds filter per home, not per mapping (RFC 4787 filters per internal
  endpoint): the same for a node, which has one UDP socket.

  A NAT may have two homes (10.0.0.2 and 10.0.0.3 on its LAN bridge): "hairpin", two nodes
  behind one NAT. It does not loop packets for its own public address back to the LAN
  (many home routers do not); the nodes meet over their private addresses.
* Every router filters like a real home router: FORWARD policy DROP, LAN->WAN accepted,
  WAN->LAN only ESTABLISHED,RELATED, and new UDP to the router itself from the WAN dropped.
  Without the last rule an early punch packet creates a conntrack entry on the router itself,
  the router then claims the port, and the punch from behind it gets another port and fails.
* FORWARD first jumps to chain LOSS (a ``statistic`` random drop, :meth:`Nat.set_loss`) and
  then to chain BLOCK (per-peer UDP drops, :meth:`Nat.block`).
* Interfaces are created directly inside their namespaces (``ip -n A link add ... peer ...
  netns B``), so nothing ever exists in the root namespace and interface names stay fixed
  and short (``eth0``, ``wan``, ``lan``, ``br0``, ``v<n>``).
* Everything is deleted on :meth:`Lab.close`: on leaving ``with Lab()``, also by an
  exception, at interpreter exit, and on SIGINT/SIGTERM (the handlers close every open lab and
  then defer to the previous handler, or die of the signal). Processes are killed first: the
  ones started through the lab, then any pid still inside the lab's namespaces.

Traffic never leaves the namespaces the lab created. There is no netem in the test kernel,
so the lab has loss but no delay.
"""

from __future__ import annotations

import argparse
import atexit
import ipaddress
import json
import os
import queue
import re
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from types import FrameType, TracebackType
from typing import Any

HOME_ADDR = "10.0.0.2"
ROUTER_LAN_ADDR = "10.0.0.1"
FIRST_HOST_NUMBER = 10
KINDS = ("cone", "port-restricted", "address-restricted", "full-cone", "symmetric",
         "sequential", "rebinding")
"""NAT kinds a lab router can be (module docstring); "cone" is "port-restricted"."""
HOME_ADDRS = ("10.0.0.2", "10.0.0.3")
"""Addresses of the first and second home behind one NAT (a second home: hairpin)."""
SEQUENTIAL_BASE = 20000
"""First port a "sequential" NAT gives out (then the next one per new flow)..."""
SEQUENTIAL_PORTS = 1000
"""... up to this many, then it starts again at the first."""
REBIND_BASE = 30000
"""The port a "rebinding" NAT maps its home's port :data:`REBIND_LOCAL_PORT` to, until the
first rebind (then the next one at each rebind)."""
REBIND_LOCAL_PORT = 4433
"""The home's port a "rebinding" NAT moves (a node's default port); others keep theirs."""
SUBNET6 = "2001:db8::"
"""The public IPv6 /64 of public hosts made with ``ipv6=True`` (the documentation prefix; the
bridge has no way out)."""
REFLECTOR_PORT = 3478
PUNCH_PORT = 40000

_NAME = re.compile(r"[a-z0-9][a-z0-9_-]{0,15}")
_PREFIX = re.compile(r"[a-z][a-z0-9]{0,7}")
_ROUTER_RULES = """\
*nat
:PREROUTING ACCEPT [0:0]
:INPUT ACCEPT [0:0]
:OUTPUT ACCEPT [0:0]
:POSTROUTING ACCEPT [0:0]
{nat}COMMIT
*filter
:INPUT ACCEPT [0:0]
:FORWARD DROP [0:0]
:OUTPUT ACCEPT [0:0]
:LOSS - [0:0]
:BLOCK - [0:0]
-A INPUT -i wan -p udp -m conntrack --ctstate NEW -j DROP
-A FORWARD -j LOSS
-A FORWARD -j BLOCK
{filter}-A FORWARD -i lan -o wan -j ACCEPT
-A FORWARD -i wan -o lan -m conntrack --ctstate ESTABLISHED,RELATED -j ACCEPT
COMMIT
"""


def _router_rules(kind: str, rebind_port: int) -> str:
    """iptables-restore input for a NAT router of ``kind`` ("sequential" adds an nft table,
    see :meth:`Lab.nat`)."""
    masquerade = "-A POSTROUTING -o wan -j MASQUERADE\n"
    dnat = f"-A PREROUTING -i wan -p udp -j DNAT --to-destination {HOME_ADDR}\n"
    nat, filt = masquerade, ""
    if kind == "symmetric":
        nat = "-A POSTROUTING -o wan -j MASQUERADE --random-fully\n"
    elif kind == "sequential":
        nat = ""  # nft: snat to PUB:numgen inc
    elif kind == "rebinding":
        nat = (f"-A POSTROUTING -o wan -p udp --sport {REBIND_LOCAL_PORT} -j MASQUERADE "
               f"--to-ports {rebind_port}\n" + masquerade)
    elif kind == "full-cone":
        nat += dnat
        filt = f"-A FORWARD -i wan -o lan -p udp -d {HOME_ADDR} -j ACCEPT\n"
    elif kind == "address-restricted":
        nat += dnat
        filt = ("-A FORWARD -i lan -o wan -m recent --name talked --rdest --set\n"
                f"-A FORWARD -i wan -o lan -p udp -d {HOME_ADDR} -m conntrack --ctstate NEW "
                "-m recent --name talked --rsource --rcheck -j ACCEPT\n")
    return _ROUTER_RULES.format(nat=nat, filter=filt)


# Small programs run inside namespaces with ``python -c``; parameters come in sys.argv.

REFLECTOR = """\
import selectors, socket, sys
sel = selectors.DefaultSelector()
for port in sys.argv[1:]:
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind(("0.0.0.0", int(port)))
    sel.register(s, selectors.EVENT_READ)
print("ready", flush=True)
while True:
    for key, _ in sel.select():
        data, (addr, port) = key.fileobj.recvfrom(2048)
        print(f"seen {addr}:{port}", flush=True)
        key.fileobj.sendto(f"{addr}:{port}".encode(), (addr, port))
"""
"""Answers every datagram with the sender's address as seen here ("a:p"), like STUN.
argv: ports to listen on. Prints "ready", then "seen a:p" per datagram."""

OBSERVE = """\
import json, socket, sys, time
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind(("0.0.0.0", int(sys.argv[1])))
wait_s = float(sys.argv[2])
seen = []
for dest in sys.argv[3:]:
    host, port = dest.rsplit(":", 1)
    to, got = (host, int(port)), None
    deadline = time.monotonic() + wait_s
    while got is None and time.monotonic() < deadline:
        s.sendto(b"?", to)
        s.settimeout(max(0.001, min(0.1, deadline - time.monotonic())))
        try:
            while got is None:
                data, src = s.recvfrom(2048)
                if src == to:
                    got = data.decode()
        except TimeoutError:
            pass
    seen.append(got)
print(json.dumps(seen), flush=True)
"""
"""From one local port, ask each reflector in turn how we look; prints a JSON list of
"a:p" or null. argv: local port, seconds per reflector, reflectors as "a:p"."""

SINK = """\
import json, selectors, socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.setsockopt(socket.SOL_SOCKET, 33, 1 << 22)  # SO_RCVBUFFORCE: a burst must not overflow
s.bind(("0.0.0.0", int(sys.argv[1])))
for dest in sys.argv[2:]:
    host, port = dest.rsplit(":", 1)
    s.sendto(b"hello", (host, int(port)))
sel = selectors.DefaultSelector()
sel.register(s, selectors.EVENT_READ)
sel.register(sys.stdin, selectors.EVENT_READ)
count, peers = 0, set()
print("ready", flush=True)
while True:
    for key, _ in sel.select():
        if key.fileobj is s:
            _, (addr, port) = s.recvfrom(2048)
            count += 1
            peers.add(f"{addr}:{port}")
        else:
            line = sys.stdin.readline().strip()
            s.setblocking(False)
            try:
                while True:
                    _, (addr, port) = s.recvfrom(2048)
                    count += 1
                    peers.add(f"{addr}:{port}")
            except BlockingIOError:
                s.setblocking(True)
            print(json.dumps({"received": count, "from": sorted(peers)}), flush=True)
            if line != "count":
                sys.exit(0)
"""
"""Counts datagrams. On each stdin line prints {"received": n, "from": ["a:p", ...]}; after
any line but "count" (or at end of input) it exits. argv: local port, then destinations to
send one "hello" to first (to open a NAT mapping)."""

SEND = """\
import socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind(("0.0.0.0", int(sys.argv[1])))
host, port = sys.argv[2].rsplit(":", 1)
for i in range(int(sys.argv[3])):
    s.sendto(b"%d" % i, (host, int(port)))
print("sent", sys.argv[3], flush=True)
"""
"""Sends n datagrams. argv: local port, destination "a:p", n."""

PUNCH = """\
import socket, sys, time
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind(("0.0.0.0", int(sys.argv[1])))
host, port = sys.argv[2].rsplit(":", 1)
reflector, timeout_s = (host, int(port)), float(sys.argv[3])
s.settimeout(0.1)
mapped, deadline = None, time.monotonic() + timeout_s
while mapped is None and time.monotonic() < deadline:
    s.sendto(b"?", reflector)
    try:
        data, src = s.recvfrom(2048)
    except TimeoutError:
        continue
    if src == reflector:
        mapped = data.decode()
print(f"mapped {mapped}", flush=True)
host, port = sys.stdin.readline().split()[1].rsplit(":", 1)
peer, heard, confirmed = (host, int(port)), False, False
deadline = time.monotonic() + timeout_s
while not (heard and confirmed) and time.monotonic() < deadline:
    s.sendto(b"punch %d" % heard, peer)
    try:
        data, src = s.recvfrom(2048)
    except TimeoutError:
        continue
    if src == peer:
        heard, confirmed = True, confirmed or data.endswith(b"1")
for _ in range(3 if heard else 0):
    s.sendto(b"punch 1", peer)
print("punched" if heard else "failed", flush=True)
"""
"""One side of a simultaneous UDP punch. Learns its mapping from the reflector and prints
"mapped a:p", reads "peer a:p" on stdin, then sends to the peer until it hears from it and
knows the peer heard it too. Prints "punched" or "failed". argv: local port, reflector "a:p",
seconds for each phase."""


class LabError(RuntimeError):
    """A lab command failed; the message has the command and what it wrote to stderr."""


def _run(args: Sequence[str], *, input: str | None = None, check: bool = True,
         timeout: float = 30) -> subprocess.CompletedProcess[str]:
    p = subprocess.run(list(args), input=input, capture_output=True, text=True, timeout=timeout)
    if check and p.returncode != 0:
        raise LabError(f"`{' '.join(args)}` exited {p.returncode}: {p.stderr.strip()}")
    return p


def _netns_names() -> list[str]:
    out = _run(["ip", "netns", "list"]).stdout
    return [line.split()[0] for line in out.splitlines() if line.strip()]


def _kill_namespace_pids(ns: str) -> list[int]:
    p = _run(["ip", "netns", "pids", ns], check=False)
    killed = []
    for word in p.stdout.split():
        pid = int(word)
        if pid == os.getpid():
            continue
        try:
            os.kill(pid, signal.SIGKILL)
            killed.append(pid)
        except ProcessLookupError:
            pass
    return killed


def cleanup(prefix: str = "tl") -> list[str]:
    """Delete every namespace whose name starts with ``prefix``, killing the processes in it
    first, and any link of the root namespace with that prefix. Returns what was removed, as
    ``"netns NAME"`` / ``"link NAME"`` strings.

    :param prefix: must not be empty (that would delete every namespace of the machine).
    """
    if not prefix:
        raise ValueError("cleanup needs a non-empty prefix")
    removed = []
    for ns in _netns_names():
        if ns.startswith(prefix):
            _kill_namespace_pids(ns)
            if _run(["ip", "netns", "delete", ns], check=False).returncode == 0:
                removed.append(f"netns {ns}")
    links = json.loads(_run(["ip", "-j", "link", "show"]).stdout or "[]")
    for link in links:
        name = str(link.get("ifname", ""))
        if name.startswith(prefix):
            if _run(["ip", "link", "delete", name], check=False).returncode == 0:
                removed.append(f"link {name}")
    return removed


def available() -> str | None:
    """None if a lab can be built here, else the reason it cannot."""
    if os.geteuid() != 0:
        return "not running as root: creating network namespaces needs root"
    for command, package in (("ip", "iproute2"), ("iptables", "iptables"),
                             ("iptables-restore", "iptables")):
        if shutil.which(command) is None:
            return f"`{command}` is not on PATH (apt-get install {package})"
    ns = f"tomlab-check-{secrets.token_hex(3)}"
    try:
        _run(["ip", "netns", "add", ns])
    except (LabError, OSError) as e:
        return f"cannot create a network namespace: {e}"
    try:
        _run(["ip", "netns", "exec", ns, "iptables", "-w", "-t", "nat", "-L", "-n"])
    except (LabError, OSError) as e:
        return f"iptables does not work inside a network namespace: {e}"
    finally:
        _run(["ip", "netns", "delete", ns], check=False)
    return None


class Script:
    """A Python program running in a namespace, read line by line.

    Use :meth:`expect` to wait for a line (a receiver prints "ready" once bound), and
    :meth:`send` to write a line to its stdin.
    """

    def __init__(self, proc: subprocess.Popen[str], what: str) -> None:
        self.proc = proc
        self.what = what
        self.lines: list[str] = []
        """Every stdout line read so far."""
        self._queue: queue.Queue[str | None] = queue.Queue()
        self._stderr: list[str] = []
        self._threads = [threading.Thread(target=self._read_stdout, daemon=True),
                         threading.Thread(target=self._read_stderr, daemon=True)]
        for t in self._threads:
            t.start()

    def _read_stdout(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self._queue.put(line.rstrip("\n"))
        self._queue.put(None)

    def _read_stderr(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            self._stderr.append(line)

    @property
    def stderr(self) -> str:
        return "".join(self._stderr)

    def expect(self, prefix: str, timeout: float = 10) -> str:
        """The next stdout line starting with ``prefix`` (other lines are skipped).

        :raises LabError: the program ended first, or ``timeout`` seconds passed.
        """
        deadline = time.monotonic() + timeout
        while True:
            try:
                line = self._queue.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                raise LabError(f"{self.what}: no line starting {prefix!r} within "
                               f"{timeout} s; stderr: {self.stderr.strip()}") from None
            if line is None:
                self._queue.put(None)
                code = self.proc.wait()
                raise LabError(f"{self.what} exited {code} before printing {prefix!r}; "
                               f"stderr: {self.stderr.strip()}")
            self.lines.append(line)
            if line.startswith(prefix):
                return line

    def send(self, line: str) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(line + "\n")
        self.proc.stdin.flush()

    def stop(self) -> None:
        """Kill the program (if still running) and release its pipes."""
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()
        for t in self._threads:
            t.join(timeout=2)
        for stream in (self.proc.stdin, self.proc.stdout, self.proc.stderr):
            if stream is not None:
                try:
                    stream.close()
                except OSError:
                    pass


class Namespace:
    """One network namespace of a lab; commands run inside with ``ip netns exec``."""

    def __init__(self, lab: Lab, name: str, ns: str) -> None:
        self.lab = lab
        self.name = name
        self.ns = ns

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name} in netns {self.ns}>"

    def _argv(self, args: Sequence[str]) -> list[str]:
        return ["ip", "netns", "exec", self.ns, *args]

    def run(self, args: Sequence[str], **kw: Any) -> subprocess.CompletedProcess[Any]:
        """``subprocess.run`` inside the namespace. Unless told otherwise it captures output
        as text; like ``subprocess.run`` it does not check the exit status."""
        if not {"stdout", "stderr", "capture_output"} & kw.keys():
            kw["capture_output"] = True
        if not {"text", "encoding", "errors", "universal_newlines"} & kw.keys():
            kw["text"] = True
        return subprocess.run(self._argv(args), **kw)

    def popen(self, args: Sequence[str], **kw: Any) -> subprocess.Popen[Any]:
        """``subprocess.Popen`` inside the namespace; the lab kills it when it closes."""
        proc: subprocess.Popen[Any] = subprocess.Popen(self._argv(args), **kw)
        self.lab._procs.append(proc)
        return proc

    def python(self, code: str, timeout: float = 30, *, args: Sequence[str] = ()) -> str:
        """Run ``code`` with this interpreter inside the namespace; return its stdout.

        :param args: become ``sys.argv[1:]``.
        :raises LabError: it exited non-zero (the message has its stderr) or timed out.
        """
        try:
            p = self.run([sys.executable, "-c", code, *args], timeout=timeout)
        except subprocess.TimeoutExpired:
            raise LabError(f"python in {self.ns} did not finish within {timeout} s") from None
        if p.returncode != 0:
            raise LabError(f"python in {self.ns} exited {p.returncode}: {p.stderr.strip()}")
        return str(p.stdout)

    def spawn_python(self, code: str, *, args: Sequence[str] = ()) -> Script:
        """Start ``code`` inside the namespace, with line-based pipes; killed at lab close."""
        proc = self.popen([sys.executable, "-c", code, *args], stdin=subprocess.PIPE,
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, bufsize=1)
        script = Script(proc, f"python in {self.ns}")
        self.lab._scripts.append(script)
        return script


class Host(Namespace):
    """A machine: a public host on the bridge, or a home behind a NAT."""

    def __init__(self, lab: Lab, name: str, ns: str, addr: str,
                 addr6: str | None = None) -> None:
        super().__init__(lab, name, ns)
        self.addr = addr
        self.addr6 = addr6
        """Its public IPv6 address, for a public host made with ``ipv6=True``."""

    def reflect(self, *ports: int) -> Script:
        """Start a reflector (see :data:`REFLECTOR`) on ``ports``, once it is bound."""
        script = self.spawn_python(REFLECTOR, args=[str(p) for p in ports])
        script.expect("ready")
        return script

    def observe(self, port: int, reflectors: Sequence[str],
                wait_s: float = 2.0) -> list[str | None]:
        """How this host's UDP ``port`` looks to each reflector ("a:p"), or None for a
        reflector that did not answer within ``wait_s`` seconds."""
        out = self.python(OBSERVE, args=[str(port), str(wait_s), *reflectors],
                          timeout=wait_s * len(reflectors) + 20)
        seen: list[str | None] = json.loads(out)
        return seen

    def node(self, name: str, config: dict[str, dict[str, Any]] | None = None,
             all_in_one: bool = False) -> LabNode:
        """Run a whole ToM node in this host's namespace (see :class:`LabNode`)."""
        return LabNode(self, name, config or {}, all_in_one)

    def sink(self, port: int, hello: Sequence[str] = ()) -> Script:
        """Start a counting receiver (see :data:`SINK`) on ``port``, once it is bound;
        see :func:`received` for reading its count."""
        script = self.spawn_python(SINK, args=[str(port), *hello])
        script.expect("ready")
        return script

    def send(self, port: int, dest: str, count: int) -> None:
        """Send ``count`` datagrams from local ``port`` to ``dest`` ("a:p")."""
        self.python(SEND, args=[str(port), dest, str(count)])


class Nat(Namespace):
    """A home router: ``wan`` on the public bridge, ``lan`` to its one home."""

    def __init__(self, lab: Lab, name: str, ns: str, public_addr: str, kind: str) -> None:
        super().__init__(lab, name, ns)
        self.public_addr = public_addr
        self.kind = kind
        self.home: Host | None = None
        """The first home."""
        self.homes: list[Host] = []
        self.rebind_port = REBIND_BASE
        """The port a "rebinding" NAT maps its home to now."""
        self.rebinds = 0

    def nft(self, script: str) -> None:
        """Run an nft script in the router (the "sequential" NAT's table)."""
        _run(self._argv(["nft", "-f", "-"]), input=script)

    def rebind(self) -> int:
        """A "rebinding" NAT maps its home to a new port from now on, and forgets every
        mapping it held (``conntrack -F``): peers' packets to the old port are dropped, the
        home's next packets leave from the new one. Returns the new port."""
        if self.kind != "rebinding":
            raise ValueError(f"{self.name} is a {self.kind} NAT, not a rebinding one")
        self.rebinds += 1
        self.rebind_port = REBIND_BASE + self.rebinds
        self.iptables("-t", "nat", "-R", "POSTROUTING", "1", "-o", "wan", "-p", "udp",
                      "--sport", str(REBIND_LOCAL_PORT), "-j", "MASQUERADE", "--to-ports",
                      str(self.rebind_port))
        _run(self._argv(["conntrack", "-F"]), check=False)  # rc 1 when the table is empty
        return self.rebind_port

    def iptables(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return _run(self._argv(["iptables", "-w", *args]), check=check)

    def set_loss(self, p: float) -> None:
        """Drop forwarded packets at random with probability ``p``, both directions; this
        replaces any earlier loss, and 0 removes it."""
        if not 0.0 <= p <= 1.0:
            raise ValueError(f"loss must be a probability, not {p}")
        self.iptables("-F", "LOSS")
        if p > 0:
            self.iptables("-A", "LOSS", "-m", "statistic", "--mode", "random",
                          "--probability", f"{p:.6f}", "-j", "DROP")

    def forward(self, port: int) -> None:
        """Forward UDP ``port`` of the public address to the home, as a home router's "port
        forwarding" does: strangers can reach the home's ``port`` from then on."""
        self.iptables("-t", "nat", "-A", "PREROUTING", "-i", "wan", "-p", "udp", "--dport",
                      str(port), "-j", "DNAT", "--to-destination", f"{HOME_ADDR}:{port}")
        self.iptables("-A", "FORWARD", "-i", "wan", "-o", "lan", "-p", "udp", "-d", HOME_ADDR,
                      "--dport", str(port), "-j", "ACCEPT")

    def map_ports(self, timeout_s: float = 10) -> Script:
        """Run a port-mapping daemon on this router, as home routers do: Debian's
        ``miniupnpd`` (package ``miniupnpd-iptables``), answering PCP and NAT-PMP (and UPnP
        IGD) on the LAN side, mapping ports of the WAN address to the home on request
        (only to the asking host itself: ``secure_mode``). Returns once it listens; the lab
        kills it at close. Call it once the router has its home (:meth:`Lab.home`).

        miniupnpd refuses to map when the WAN address is in a reserved range, the lab's
        default 100.64/10 included: build the lab with a ``subnet`` it takes for public
        (the bridge has no way out, so nothing reaches the real holders of that range).
        Its rules go into legacy iptables chains (MINIUPNPD, which it fills itself) that
        this method creates and hooks into PREROUTING (not its POSTROUTING chain: what the
        home sends still leaves through the router's own NAT, symmetric or cone); the
        router's FORWARD chain accepts what a mapping let in (conntrack state DNAT).
        """
        if self.home is None:
            raise LabError(f"{self.name} has no home yet: the daemon listens on its LAN side")
        legacy = ["iptables-legacy", "-w"]
        for args in (["-t", "nat", "-N", "MINIUPNPD"],
                     ["-t", "nat", "-A", "PREROUTING", "-i", "wan", "-j", "MINIUPNPD"],
                     # not hooked into POSTROUTING: there miniupnpd would also keep the
                     # mapped port for what the home sends from it, turning this symmetric
                     # NAT into a cone one for that port (routers differ); the test needs
                     # the mapping to be the only way in
                     ["-t", "nat", "-N", "MINIUPNPD-POSTROUTING"],
                     ["-t", "filter", "-N", "MINIUPNPD"],
                     ["-t", "mangle", "-N", "MINIUPNPD"]):
            _run(self._argv([*legacy, *args]))
        self.iptables("-A", "FORWARD", "-i", "wan", "-o", "lan", "-m", "conntrack",
                      "--ctstate", "DNAT", "-j", "ACCEPT")
        with self.lab._lock:
            if self.lab._closing:
                raise LabError(f"lab {self.lab.id} is closed")
            work = Path(tempfile.mkdtemp(prefix=f"{self.lab.id}-{self.name}-upnp-", dir="/tmp"))
            self.lab._dirs.append(work)
        conf = work / "miniupnpd.conf"
        conf.write_text(
            "ext_ifname=wan\nlistening_ip=lan\nenable_natpmp=yes\nenable_upnp=yes\n"
            "secure_mode=yes\nmin_lifetime=60\nmax_lifetime=86400\n"
            f"lease_file={work}/leases\n"
            f"allow 1024-65535 {HOME_ADDR}/32 1024-65535\ndeny 0-65535 0.0.0.0/0 0-65535\n"
            "uuid=7a6e6f64-746f-4d00-8000-746f6d6c6162\n")
        proc = self.popen(["miniupnpd", "-f", str(conf), "-d", "-P", str(work / "pid")],
                          stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, text=True, bufsize=1)
        script = Script(proc, f"miniupnpd in {self.ns}")
        self.lab._scripts.append(script)
        deadline = time.monotonic() + timeout_s
        while "Listening for NAT-PMP/PCP" not in script.stderr:
            if proc.poll() is not None or time.monotonic() > deadline:
                raise LabError(f"miniupnpd did not start in {self.ns}: {script.stderr}")
            time.sleep(0.02)  # polling its log for readiness
        return script

    def mappings(self) -> list[str]:
        """The public ports the mapping daemon forwards now, as "udp PORT" (iptables
        cannot print the destination of miniupnpd's DNAT rules: "unsupported revision")."""
        out = _run(self._argv(["iptables-legacy", "-w", "-t", "nat", "-S", "MINIUPNPD"]),
                   check=False).stdout
        return [f"{m[1]} {m[2]}" for line in out.splitlines()
                if (m := re.search(r"-p (\w+) .*--dport (\d+) .*-j DNAT", line))]

    def _block_rules(self, peer_public_addr: str) -> list[list[str]]:
        peer = str(ipaddress.IPv4Address(peer_public_addr))
        return [["BLOCK", "-p", "udp", side, peer, "-j", "DROP"] for side in ("-s", "-d")]

    def block(self, peer_public_addr: str) -> None:
        """Drop forwarded UDP between this NAT's home and ``peer_public_addr``, both ways."""
        for rule in self._block_rules(peer_public_addr):
            if self.iptables("-C", *rule, check=False).returncode != 0:
                self.iptables("-A", *rule)

    def unblock(self, peer_public_addr: str) -> None:
        """Undo :meth:`block` (nothing happens if ``peer_public_addr`` is not blocked)."""
        for rule in self._block_rules(peer_public_addr):
            while self.iptables("-D", *rule, check=False).returncode == 0:
                pass

    def drops(self) -> dict[str, int]:
        """Packets dropped so far: "inbound" (unsolicited UDP from the WAN), "loss", "block".
        The "loss" count restarts at each :meth:`set_loss`, a peer's "block" count when it is
        unblocked (the rules are replaced)."""
        counts = {}
        for key, chain in (("inbound", "INPUT"), ("loss", "LOSS"), ("block", "BLOCK")):
            out = self.iptables("-L", chain, "-n", "-v", "-x").stdout
            counts[key] = sum(int(f[0]) for f in (line.split() for line in out.splitlines())
                              if len(f) > 2 and f[0].isdigit() and f[2] == "DROP")
        return counts


_live: list[Lab] = []
_previous_handlers: dict[int, Any] = {}
_atexit_registered = False


def _close_all() -> None:
    for lab in list(_live):
        lab.close()


def _on_signal(signum: int, frame: FrameType | None) -> None:
    previous = _previous_handlers.get(signum, signal.SIG_DFL)
    _close_all()
    if callable(previous):
        previous(signum, frame)
    elif previous != signal.SIG_IGN:
        signal.signal(signum, signal.SIG_DFL)
        os.kill(os.getpid(), signum)


def _register(lab: Lab) -> None:
    global _atexit_registered
    _live.append(lab)
    if not _atexit_registered:
        atexit.register(_close_all)
        _atexit_registered = True
    if threading.current_thread() is threading.main_thread():
        for sig in (signal.SIGINT, signal.SIGTERM):
            if sig not in _previous_handlers:
                _previous_handlers[sig] = signal.getsignal(sig)
                signal.signal(sig, _on_signal)


def _unregister(lab: Lab) -> None:
    if lab in _live:
        _live.remove(lab)
    if _live or threading.current_thread() is not threading.main_thread():
        return
    for sig, previous in list(_previous_handlers.items()):
        if signal.getsignal(sig) is _on_signal:
            signal.signal(sig, signal.SIG_DFL if previous is None else previous)
        del _previous_handlers[sig]


class Lab:
    """Network namespaces wired as the public internet, NAT routers and homes.

    Use it as a context manager; :meth:`close` deletes everything the lab created.

    :param prefix: starts every namespace name (a letter, then up to 7 letters or digits);
        six random hex digits follow it, so concurrent labs never collide.
    :param subnet: the first three octets of the public /24.
    """

    def __init__(self, prefix: str = "tl", subnet: str = "100.64.0") -> None:
        if not _PREFIX.fullmatch(prefix):
            raise ValueError(f"bad lab prefix {prefix!r}: a letter, then up to 7 [a-z0-9]")
        ipaddress.IPv4Network(f"{subnet}.0/24")  # raises on a bad subnet
        self.subnet = subnet
        taken = _netns_names()
        while True:
            self.id = prefix + secrets.token_hex(3)
            if not any(ns.startswith(self.id + "-") for ns in taken):
                break
        self.public_ns = f"{self.id}-pub"
        self.namespaces: list[str] = []
        """Every namespace created so far, in order."""
        self.hosts: dict[str, Namespace] = {}
        """Public hosts, NAT routers and homes, by name."""
        self._procs: list[subprocess.Popen[Any]] = []
        self._dirs: list[Path] = []
        """Data directories of the nodes run in the lab, deleted at close."""
        self._scripts: list[Script] = []
        self._next_number = FIRST_HOST_NUMBER
        self._closed = False
        self._closing = False
        """Set (under ``_lock``) as :meth:`close` starts: no data directory is added after."""
        self._lock = threading.RLock()  # reentrant: close() may run in a signal handler
        _register(self)
        try:
            self._add_namespace(self.public_ns)
            self._ip(self.public_ns, "link", "add", "br0", "type", "bridge")
            self._ip(self.public_ns, "link", "set", "br0", "up")
            # bridged frames must not pass through this namespace's (empty) iptables
            _run(["ip", "netns", "exec", self.public_ns, "sh", "-c",
                  "f=/proc/sys/net/bridge/bridge-nf-call-iptables; "
                  "[ ! -e $f ] || echo 0 > $f"])
        except BaseException:
            self.close()
            raise

    def __enter__(self) -> Lab:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<Lab {self.id} {sorted(self.hosts)}{' closed' if self._closed else ''}>"

    @staticmethod
    def _ip(ns: str, *args: str) -> None:
        _run(["ip", "-n", ns, *args])

    def _add_namespace(self, ns: str) -> None:
        if self._closed:
            raise LabError(f"lab {self.id} is closed")
        _run(["ip", "netns", "add", ns])
        self.namespaces.append(ns)
        self._ip(ns, "link", "set", "lo", "up")

    def _new(self, name: str) -> str:
        if not _NAME.fullmatch(name) or name == "pub":
            raise ValueError(f"bad name {name!r}: up to 16 of [a-z0-9_-], not 'pub'")
        if name in self.hosts:
            raise ValueError(f"lab {self.id} already has {name!r}")
        ns = f"{self.id}-{name}"
        self._add_namespace(ns)
        return ns

    def _plug(self, ns: str, ifname: str, ipv6: bool = False) -> str:
        """A veth from the bridge to ``ifname`` in ``ns``, up, with the next public address
        (and with ``ipv6`` the IPv6 one of the same number, :data:`SUBNET6`)."""
        if self._next_number > 254:
            raise LabError(f"lab {self.id} has no public addresses left")
        n, self._next_number = self._next_number, self._next_number + 1
        addr = f"{self.subnet}.{n}"
        self._ip(self.public_ns, "link", "add", f"v{n}", "type", "veth",
                 "peer", "name", ifname, "netns", ns)
        self._ip(self.public_ns, "link", "set", f"v{n}", "master", "br0", "up")
        self._ip(ns, "addr", "add", f"{addr}/24", "dev", ifname)
        if ipv6:  # nodad: usable at once (no duplicate detection on a bridge of our own)
            self._ip(ns, "-6", "addr", "add", f"{SUBNET6}{n}/64", "dev", ifname, "nodad")
        self._ip(ns, "link", "set", ifname, "up")
        return addr

    def public(self, name: str, ipv6: bool = False) -> Host:
        """A host on the public bridge, with the next public address; with ``ipv6`` also
        an IPv6 one (``addr6``: :data:`SUBNET6` and the same number)."""
        ns = self._new(name)
        addr = self._plug(ns, "eth0", ipv6)
        host = Host(self, name, ns, addr,
                    f"{SUBNET6}{addr.rsplit('.', 1)[1]}" if ipv6 else None)
        self.hosts[name] = host
        return host

    def nat(self, name: str, kind: str = "cone", loss: float = 0.0) -> Nat:
        """A NAT router with the next public address; see the module docstring.

        :param kind: one of :data:`KINDS` ("cone": endpoint-independent mapping that keeps
            the port, port-restricted filtering; "symmetric": a random port per destination).
        :param loss: probability of dropping each forwarded packet, both ways.
        """
        if kind not in KINDS:
            raise ValueError(f"NAT kind must be one of {KINDS}, not {kind!r}")
        for needs, command, package in (("sequential", "nft", "nftables"),
                                        ("rebinding", "conntrack", "conntrack")):
            if kind == needs and shutil.which(command) is None:
                raise LabError(f"a {kind} NAT needs `{command}` (apt-get install {package})")
        ns = self._new(name)
        nat = Nat(self, name, ns, self._plug(ns, "wan"), kind)
        self.hosts[name] = nat
        _run(["ip", "netns", "exec", ns, "sh", "-c",
              "echo 1 > /proc/sys/net/ipv4/ip_forward; "
              "f=/proc/sys/net/bridge/bridge-nf-call-iptables; [ ! -e $f ] || echo 0 > $f"])
        # the LAN is a bridge, so a second home can join it (hairpin)
        self._ip(ns, "link", "add", "lan", "type", "bridge")
        self._ip(ns, "addr", "add", f"{ROUTER_LAN_ADDR}/24", "dev", "lan")
        self._ip(ns, "link", "set", "lan", "up")
        _run(["ip", "netns", "exec", ns, "iptables-restore", "-w"],
             input=_router_rules(kind, nat.rebind_port))
        if kind == "sequential":
            # each new flow (a new destination) takes the next port: nft evaluates the NAT
            # rule once per new conntrack entry, and numgen counts those evaluations
            # (through a map: numgen's own "offset" lands byte-swapped in the port)
            ports = ", ".join(f"{i} : {SEQUENTIAL_BASE + i}" for i in range(SEQUENTIAL_PORTS))
            nat.nft(f"add table ip lab\n"
                    f"add chain ip lab post {{ type nat hook postrouting priority srcnat; }}\n"
                    f"add rule ip lab post oifname \"wan\" meta l4proto udp snat to "
                    f"{nat.public_addr} : numgen inc mod {SEQUENTIAL_PORTS} map {{ {ports} }}\n"
                    f"add rule ip lab post oifname \"wan\" masquerade\n")
        if loss:
            nat.set_loss(loss)
        return nat

    def home(self, name: str, nat: Nat) -> Host:
        """A host behind ``nat``: the first is 10.0.0.2, a second (hairpin) 10.0.0.3; the
        default route goes via 10.0.0.1."""
        if nat.lab is not self:
            raise ValueError(f"{nat!r} belongs to another lab")
        if len(nat.homes) >= len(HOME_ADDRS):
            raise ValueError(f"{nat.name} already has {len(nat.homes)} homes")
        if nat.homes and nat.kind in ("full-cone", "address-restricted"):
            raise ValueError(f"a {nat.kind} NAT of the lab forwards to one home only")
        addr = HOME_ADDRS[len(nat.homes)]
        ns = self._new(name)
        port = f"h{len(nat.homes)}"
        self._ip(nat.ns, "link", "add", port, "type", "veth", "peer", "name", "eth0",
                 "netns", ns)
        self._ip(nat.ns, "link", "set", port, "master", "lan", "up")
        self._ip(ns, "addr", "add", f"{addr}/24", "dev", "eth0")
        self._ip(ns, "link", "set", "eth0", "up")
        self._ip(ns, "route", "add", "default", "via", ROUTER_LAN_ADDR)
        host = Host(self, name, ns, addr)
        nat.homes.append(host)
        if nat.home is None:
            nat.home = host
        self.hosts[name] = host
        return host

    def close(self) -> None:
        """Kill the lab's processes and delete its namespaces (and so their interfaces).
        Safe to call more than once, and from a signal handler."""
        if self._closed:
            return
        with self._lock:  # nodes starting in other threads add no directory after this
            self._closing = True
            dirs = list(self._dirs)
        for proc in list(self._procs):
            if proc.poll() is None:
                proc.kill()
            try:
                proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                pass
        cleanup(f"{self.id}-")  # also kills what those processes started
        for d in dirs:
            shutil.rmtree(d, ignore_errors=True)
        scripted = {id(script.proc) for script in self._scripts}
        for script in list(self._scripts):
            script.stop()
        for proc in self._procs:
            if id(proc) not in scripted:
                for stream in (proc.stdin, proc.stdout, proc.stderr):
                    if stream is not None:
                        try:
                            stream.close()
                        except OSError:
                            pass
        self._closed = True
        _unregister(self)


NODE_CONFIG: dict[str, dict[str, Any]] = {
    "bus": {"heartbeat_s": 0.5},
    "transport": {"host": "0.0.0.0", "port": 4433},
    "router": {"gossip_interval_s": 1.0},
}


def _toml(config: dict[str, dict[str, Any]]) -> str:
    out = []
    for section, values in config.items():
        out.append(f"[{section}]")
        out += [f"{k} = {json.dumps(v)}" for k, v in values.items()]  # JSON scalars and
        # lists of strings are TOML too
    return "\n".join(out) + "\n"


class LabNode:
    """A whole ToM node (``tom node up``: supervisord and the five services) started inside
    a host's namespace, so its UDP socket lives behind that host's NAT. Its bus endpoints
    are unix sockets in its data directory, which work across network namespaces: the
    caller drives it with :class:`tom.client.Client` (``client``) from anywhere on the
    machine. The lab kills it and deletes its data directory at close.

    :param config: sections merged over :data:`NODE_CONFIG` (``username`` is the name).
    :param all_in_one: the five services in one process (``tom node up --all-in-one``):
        two processes per node instead of six, for labs with many nodes.
    """

    def __init__(self, host: Host, name: str, config: dict[str, dict[str, Any]],
                 all_in_one: bool = False) -> None:
        from shared.paths import DataDir
        from tom.client import Client

        self.host, self.name, self.all_in_one = host, name, all_in_one
        lab = host.lab
        with lab._lock:
            if lab._closing:
                raise LabError(f"lab {lab.id} is closed")
            self.data = Path(tempfile.mkdtemp(prefix=f"{lab.id}-{name}-", dir="/tmp"))
            lab._dirs.append(self.data)
        merged = {k: dict(v) for k, v in NODE_CONFIG.items()}
        merged["router"]["username"] = name
        for section, values in config.items():
            merged.setdefault(section, {}).update(values)
        (self.data / "node.toml").write_text(_toml(merged))
        up = self.tom("node", "up", *(["--all-in-one"] if all_in_one else []), timeout=90)
        if up.returncode != 0:
            raise LabError(f"node {name} did not start in {host.ns}: {up.stdout}{up.stderr}")
        self.client = Client(DataDir(self.data))
        self.id = self.client.node_id()

    def tom(self, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        """Run ``tom ARGS`` for this node inside its namespace. The node follows its
        node.toml for port mapping (the test suite turns it off for nodes outside the lab,
        whose gateway is the machine's; here the gateway is the lab's router)."""
        env = {k: v for k, v in os.environ.items() if k != "TOM_TRANSPORT__PORT_MAPPING"}
        return self.host.run([sys.executable, "-m", "tom.cli", "--data", str(self.data),
                              *args], timeout=timeout, env=env)

    def transport_info(self) -> Any:
        from shared.wire.messages.transport import Info

        return self.client.bus.request("transport", Info())

    def restart(self, program: str, timeout_s: float = 30) -> None:
        """Restart one service under the node's supervisord and wait until it answers (all
        five at once for an all-in-one node)."""
        from shared.paths import DataDir
        from shared.wire import WireError
        from shared.wire.messages.sys import Ping
        from tom.node import Supervisor

        rpc = Supervisor(DataDir(self.data)).rpc()
        name = "node" if self.all_in_one else program
        rpc.supervisor.stopProcess(name)
        rpc.supervisor.startProcess(name, False)
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                self.client.bus.request(program, Ping(), timeout_s=1.0)
                if program != "transport" or self.transport_info().ready:
                    return  # (a transport is ready once crypto signed its binding)
            except WireError:
                pass
            if time.monotonic() > deadline:
                raise LabError(f"{program} of {self.name} did not come back") from None
            time.sleep(0.05)  # polling the service's own readiness

    def close(self) -> None:
        self.client.close()
        self.tom("node", "down", timeout=30)


def received(sink: Script, stop: bool = False) -> int:
    """How many datagrams ``sink`` (from :meth:`Host.sink`) has received; ``stop`` ends it."""
    sink.send("stop" if stop else "count")
    n: int = json.loads(sink.expect("{"))["received"]
    return n


@dataclass
class Punch:
    """The outcome of :func:`punch`, one value per side."""

    mapped: tuple[str | None, str | None]
    """Each side's address as the reflector saw it."""
    punched: tuple[bool, bool]
    """Whether each side heard the other."""

    @property
    def ok(self) -> bool:
        return all(self.punched)


def punch(a: Host, b: Host, reflector: str, port: int = PUNCH_PORT,
          timeout_s: float = 2.0) -> Punch:
    """A simultaneous UDP punch between ``a`` and ``b`` from local ``port``: each learns its
    public mapping from ``reflector`` ("a:p"), is told the other's, and sends to it."""
    sides = [h.spawn_python(PUNCH, args=[str(port), reflector, str(timeout_s)]) for h in (a, b)]
    try:
        mapped = [s.expect("mapped ", timeout=timeout_s + 10).split()[1] for s in sides]
        for side, other in zip(sides, reversed(mapped), strict=True):
            side.send(f"peer {other}")
        results = [s.expect("", timeout=timeout_s + 10) for s in sides]
    finally:
        for s in sides:
            s.stop()

    def value(m: str) -> str | None:
        return None if m == "None" else m

    return Punch((value(mapped[0]), value(mapped[1])),
                 (results[0] == "punched", results[1] == "punched"))


def wait_until(predicate: Callable[[], bool], timeout_s: float) -> bool:
    """Poll ``predicate`` (lab state, not a guess at readiness) until true or timed out."""
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)
    return True


DEMO_STEP_S = 45.0
"""Deadline of each step of :func:`demo` (a node starting, a connection, a punch...)."""


class Demo:
    """:func:`demo`'s story: a clock, the lines it prints, and the nodes' state it waits on
    (polled with deadlines: each step is something the nodes report, never a fixed delay)."""

    def __init__(self) -> None:
        self.t0 = time.monotonic()
        self.names: dict[bytes, str] = {}
        self.paths: list[tuple[float, str, str, str]] = []
        """(when, node, peer, path) of each ``router.path`` event the nodes published."""

    def say(self, text: str) -> None:
        print(f"[{time.monotonic() - self.t0:5.1f} s] {text}", flush=True)

    def until(self, what: str, check: Callable[[], Any],
              timeout_s: float = DEMO_STEP_S) -> Any:
        deadline = time.monotonic() + timeout_s
        while True:
            if result := check():
                return result
            if time.monotonic() > deadline:
                raise LabError(f"timed out after {timeout_s:g} s waiting for {what}")
            time.sleep(0.05)  # polling the nodes' own state

    def peer(self, node: LabNode, other: LabNode) -> Any:
        """``node``'s router's entry for ``other`` (None while it knows nothing of it)."""
        return next((p for p in node.client.peers() if p.node_id == other.id), None)

    def path(self, node: LabNode, other: LabNode, path: str) -> Any:
        """``node``'s router's entry for ``other`` if its path is ``path``, else None."""
        entry = self.peer(node, other)
        return entry if entry is not None and entry.path == path else None

    def link(self, node: LabNode, other: LabNode) -> Any:
        """``node``'s transport's direct connection to ``other``, if any."""
        from shared.wire.messages import transport as tm

        reply = node.client.bus.request("transport", tm.Peers())
        assert isinstance(reply, tm.PeersReply)
        return next((c for c in reply.peers if c.node_id == other.id), None)

    def events(self, node: LabNode) -> list[Any]:
        """``node``'s app events of the next 20 ms; path changes are noted in ``paths``."""
        from shared.wire.messages import router as rm

        events = list(node.client.events(timeout_s=0.02))
        self.paths += [(time.monotonic(), node.name, self.names.get(ev.node_id, "?"), ev.path)
                       for ev in events if isinstance(ev, rm.PathChanged)]
        return events

    def became(self, node: LabNode, other: LabNode, path: str) -> float | None:
        """When ``node`` last said its path to ``other`` became ``path`` (None: not seen)."""
        return next((t for t, n, o, p in reversed(self.paths)
                     if (n, o, p) == (node.name, other.name, path)), None)

    def route(self, entry: Any) -> str:
        return " > ".join(self.names.get(r, r.hex()[:10]) for r in entry.route)

    def chat(self, sender: LabNode, to: LabNode, text: str) -> bool:
        """``sender`` sends ``text``; wait until it is delivered and ``to``'s app has it.
        Returns whether it came through a relay."""
        from shared.wire.messages import router as rm
        from tom.client import Message

        sent_at = time.monotonic()
        msg_id = sender.client.send(to.id, text)
        delivered: float | None = None
        got: Message | None = None
        deadline = sent_at + DEMO_STEP_S
        while delivered is None or got is None:
            if time.monotonic() > deadline:
                raise LabError(f"{sender.name} -> {to.name} {text!r} not delivered within "
                               f"{DEMO_STEP_S:g} s (status events seen: delivered "
                               f"{delivered is not None}, received {got is not None})")
            for ev in self.events(sender):
                if isinstance(ev, rm.StatusChanged) and ev.id == msg_id:
                    if ev.status in ("delivered", "read") and delivered is None:
                        delivered = time.monotonic()
                    elif ev.status == "failed":
                        raise LabError(f"{sender.name} -> {to.name} {text!r} failed: "
                                       f"{ev.reason}")
            for m in self.events(to):
                if isinstance(m, Message) and m.info.id == msg_id:
                    got = m
        how = "relayed" if got.info.relayed else "direct"
        self.say(f"{sender.name} -> {to.name} {text!r}: delivered in "
                 f"{(delivered - sent_at) * 1000:.0f} ms, {how}; {to.name}'s app shows it "
                 f"[verified, {'encrypted' if got.info.encrypted else 'plain'}]")
        return got.info.relayed


def demo(prefix: str = "tl") -> int:
    """Two whole nodes, each behind its own NAT, find each other through a public relay,
    punch a direct path and chat; print what happened, with times and paths.

    Each node is ``tom node up`` (supervisord and the five services) run inside its home's
    namespace; the demo drives them through the app API (:class:`tom.client.Client`) over
    their unix-socket buses, like an app on each device would. Everything (processes,
    namespaces and so their interfaces and iptables rules, data directories) is deleted at
    the end, on failure and on Ctrl+C.
    """
    from concurrent.futures import ThreadPoolExecutor

    def reflexive(n: LabNode) -> Any:
        return n.transport_info().reflexive

    def direct_link(d: Demo, n: LabNode, other: LabNode) -> Any:
        return d.path(n, other, "direct") and d.link(n, other)

    with Lab(prefix) as lab:
        public = lab.public("relay")
        nat_a, nat_b = lab.nat("nat-a", "cone"), lab.nat("nat-b", "cone")
        home_a, home_b = lab.home("home-a", nat_a), lab.home("home-b", nat_b)
        print(f"NAT lab {lab.id} (namespaces {lab.id}-*): relay {public.addr} on the public "
              f"side; alice behind cone NAT {nat_a.name} ({nat_a.public_addr}), bob behind "
              f"cone NAT {nat_b.name} ({nat_b.public_addr}); both homes are {HOME_ADDR}, and "
              "each NAT drops unsolicited inbound UDP like a home router", flush=True)
        d = Demo()
        d.say("starting three whole nodes (`tom node up`: supervisord and five services "
              "each), the relay on the public side and one in each home")
        with ThreadPoolExecutor(3) as pool:
            starting = [pool.submit(host.node, name) for host, name in
                        ((public, "relay"), (home_a, "alice"), (home_b, "bob"))]
            relay, alice, bob = (f.result() for f in starting)
        for n in (relay, alice, bob):
            d.names[n.id] = n.name
        d.say(f"up: relay {relay.id.hex()[:10]} at {public.addr}:4433, alice "
              f"{alice.id.hex()[:10]} in {home_a.name}, bob {bob.id.hex()[:10]} in "
              f"{home_b.name}")

        for n in (alice, bob):
            n.client.add_peer(relay.id, public.addr, 4433)
            n.client.subscribe()  # from here on no event of theirs is missed
        d.say(f"alice and bob are given the relay as their bootstrap peer "
              f"({public.addr}:4433)")
        for n, nat in ((alice, nat_a), (bob, nat_b)):
            d.until(f"{n.name} to connect to the relay",
                    partial(d.path, n, relay, "direct"))
            seen = d.until(f"the relay to report {n.name}'s public address",
                           partial(reflexive, n))
            where = ", ".join(f"{a.host}:{a.port}" for a in seen)
            d.say(f"{n.name} connected to the relay, which sees it at {where} "
                  f"({nat.name}'s public address, not {HOME_ADDR})")
        for n, other in ((alice, bob), (bob, alice)):
            entry = d.until(f"{n.name} to learn a path to {other.name} through the relay",
                            partial(d.path, n, other, "relayed"))
            d.say(f"{n.name} knows {other.name} from the relay's announcements: path "
                  f"relayed via {d.route(entry)}")

        first_at = time.monotonic()
        first_relayed = d.chat(alice, bob, "hello bob")
        d.say(("with no direct path, alice's router sent it through the relay and "
               if first_relayed else "alice's router ")
              + "asked its transport for a hole punch to bob: the relay introduces the two, "
              "and both probe each other's public address at once")
        for n, other, nat in ((alice, bob, nat_b), (bob, alice, nat_a)):
            link = d.until(f"a direct path from {n.name} to {other.name}",
                           partial(direct_link, d, n, other))
            d.events(n)  # a router.path event still on its way
            through = (f"{nat.name}'s public address" if link.host == nat.public_addr
                       else f"NOT {nat.name}'s public address {nat.public_addr}")
            when = d.became(n, other, "direct")
            since = (f"{when - first_at:.2f} s after the first message was sent"
                     if when is not None else "(its router.path event was not seen)")
            d.say(f"path {n.name} -> {other.name} is direct: {link.host}:{link.port} "
                  f"({through}), rtt {link.rtt_ms:.2f} ms; it became direct {since}")
        reply_relayed = d.chat(bob, alice, "hi alice, no relay between us now")
        again_relayed = d.chat(alice, bob, "so I see")

        punches = alice.client.stats().counters
        drops = {nat.name: nat.drops()["inbound"] for nat in (nat_a, nat_b)}
        direct = [d.link(alice, bob), d.link(bob, alice)]
        ok = (all(direct) and direct[0].host == nat_b.public_addr
              and direct[1].host == nat_a.public_addr and not reply_relayed
              and not again_relayed)
        d.say(f"alice's router: {punches.get('punches', 0)} punch(es) asked, "
              f"{punches.get('punches_direct', 0)} direct, {punches.get('punches_failed', 0)} "
              f"failed; unsolicited UDP dropped by the NATs (probes that came before the "
              f"other side's own probe had opened its NAT): "
              + ", ".join(f"{k} {v}" for k, v in drops.items()))
        summary = (f"alice and bob, each behind a NAT, met through the relay, punched a "
                   f"direct path and chatted: 3 messages delivered, the first "
                   f"{'relayed' if first_relayed else 'direct'}, both answers direct")
        print(f"{'ok' if ok else 'FAILED'}: {summary if ok else 'see above'}", flush=True)
    print(f"lab {lab.id} deleted: nodes stopped, namespaces, NAT rules and data removed")
    return 0 if ok else 1


def _interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m tom.lab",
                                description="A NAT lab in network namespaces (needs root).")
    sub = p.add_subparsers(dest="command", required=True)
    d = sub.add_parser("demo", help="two whole nodes behind NATs meet through a relay, "
                                    "punch a direct path and chat")
    d.add_argument("--prefix", default="tl", help="namespace name prefix (default tl)")
    c = sub.add_parser("clean", help="delete namespaces left behind by earlier labs")
    c.add_argument("--prefix", default="tl", help="namespace name prefix (default tl)")
    sub.add_parser("check", help='print "ok" or why the lab cannot run here')
    args = p.parse_args(argv)
    if args.command == "clean":
        if not args.prefix:
            p.error("--prefix must not be empty")
        if os.geteuid() != 0 or shutil.which("ip") is None:
            print("cannot clean up here: it needs root and `ip` (iproute2)", file=sys.stderr)
            return 2
        removed = cleanup(args.prefix)
        for item in removed:
            print(f"removed {item}")
        print(f"{len(removed)} removed")
        return 0
    reason = available()
    if args.command == "check":
        print("ok" if reason is None else f"the NAT lab cannot run here: {reason}")
        return 0 if reason is None else 2
    if reason is not None:
        print(f"the NAT lab cannot run here: {reason}", file=sys.stderr)
        return 2
    for sig in (signal.SIGINT, signal.SIGTERM):
        # Ctrl+C or a kill ends the demo as an interrupt, even where the shell started it with
        # SIGINT ignored (a background job): the lab's own handler deletes the lab first
        signal.signal(sig, _interrupt)
    try:
        return demo(args.prefix)
    except (LabError, ValueError) as e:
        print(f"demo failed: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted; the lab was deleted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
