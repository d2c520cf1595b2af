"""NAT traversal campaign in the lab (tom/lab.py, issue 20): punch success and punch time per
cell of a grid that looks like the field, with whole nodes. Needs root (and nft, conntrack).

    python -m bench.bench_nat [--scenarios cone,sequential,symmetric,sym-sym,hairpin]
        [--delays 0,50,150] [--jitter-ms 0] [--losses 0,0.05,0.1] [--inflight 1,4,16]
        [--trials 16] [--png nat-heatmap.png] [--rebind]

Scenarios (the NAT kinds of the two nodes of each pair):

* ``cone``: both behind cone NATs; pair i mixes the kinds (full cone, address-restricted,
  port-restricted) so that 9 pairs cover every ordered combination.
* ``sequential``: a symmetric NAT with sequential ports on one side, a cone kind on the other.
* ``symmetric``: a symmetric NAT with random ports on one side, a cone kind on the other.
* ``sym-port``: random symmetric against port-restricted only, the pairing that needs
  birthday probing (the other cone kinds let the symmetric side's new port in).
* ``sym-sym``: random symmetric on both sides (no direct path exists: the relay carries).
* ``hairpin``: both nodes behind one (port-restricted) NAT.

For each scenario and delay the lab holds one public relay and as many pairs as the largest
``--inflight``; every node holds each datagram it sends ``delay`` ms (plus up to
``--jitter-ms`` at random: the kernel has no netem), so a direct path has an RTT of about
2 x delay, and each NAT drops ``loss`` of the packets it forwards, both ways. A cell is
(scenario, delay, loss, in flight): its trials run in rounds of ``inflight`` pairs at once
through the one relay. A trial restarts the first node of its pair (a fresh port: fresh NAT
mappings, no memory of the other node), connects it to the relay, waits for the others of
its round, and asks for a punch to the other node (``transport.punch``): direct when the
reply names the other node's NAT address (hairpin: its private address). Per cell it prints
the direct share, and for direct punches the median and p90 of two times from the relay's
introduction: the hole open (the first of the peer's probes heard, ``opened_ms``) and the
authenticated direct connection (``elapsed_ms``); and the failures' reasons. ``--png``
writes a heat map of direct % per cell (matplotlib: ``pip install -e .[bench]``).

``--rebind`` adds two conversations (a message every 200 ms): across a NAT that rebinds (a
cone node and a node behind a rebinding NAT talk over their direct path, and the NAT moves
its home to another port), and between two nodes behind one NAT (hairpin); each reports
how many messages arrived and whether the direct path came (back).
"""

from __future__ import annotations

import argparse
import collections
import importlib.util
import sys
import threading
import time
from dataclasses import dataclass, field
from typing import Any

from shared.wire import WireError
from shared.wire.messages import transport as tm
from tom import lab as tl

CONE_KINDS = ("full-cone", "address-restricted", "port-restricted")
SCENARIOS = ("cone", "sequential", "symmetric", "sym-port", "sym-sym", "hairpin")
TARGET = {"cone": 0.99, "sequential": 0.95, "symmetric": 0.50, "sym-port": 0.50,
          "sym-sym": 0.0, "hairpin": 0.99}
"""The share of direct punches issue 20 asks for (sym-sym: none exists; the relay carries)."""


def pct(xs: list[float], q: float) -> float:
    return sorted(xs)[min(len(xs) - 1, int(q * len(xs)))] if xs else float("nan")


def kinds(scenario: str, i: int) -> tuple[str, str]:
    """The NAT kinds of pair ``i`` of a scenario (x's, y's)."""
    cone = CONE_KINDS[i % 3]
    return {"cone": (CONE_KINDS[(i // 3) % 3], cone), "sequential": ("sequential", cone),
            "symmetric": ("symmetric", cone), "sym-port": ("symmetric", "port-restricted"),
            "sym-sym": ("symmetric", "symmetric"),
            "hairpin": ("port-restricted", "port-restricted")}[scenario]


@dataclass
class Trial:
    ok: bool
    opened_ms: float
    elapsed_ms: float
    reason: str = ""
    kinds: tuple[str, str] = ("", "")


class Pair:
    def __init__(self, lab: tl.Lab, relay: tl.LabNode, relay_addr: str, scenario: str,
                 n: int, config: dict[str, dict[str, Any]]) -> None:
        self.kinds = kinds(scenario, n)
        tag = f"{scenario[:3]}{n}"
        nat_x = lab.nat(f"nx{tag}", self.kinds[0])
        nat_y = nat_x if scenario == "hairpin" else lab.nat(f"ny{tag}", self.kinds[1])
        self.nats = [nat_x] if nat_x is nat_y else [nat_x, nat_y]
        home_y = lab.home(f"hy{tag}", nat_y)
        home_x = lab.home(f"hx{tag}", nat_x)
        self.y_direct = home_y.addr if scenario == "hairpin" else nat_y.public_addr
        self.x = home_x.node(f"x{n}", config, all_in_one=True)
        self.y = home_y.node(f"y{n}", config, all_in_one=True)
        self.relay, self.relay_addr = relay, relay_addr
        self.fresh = True
        self.connect(self.y)

    def connect(self, node: tl.LabNode) -> None:
        node.client.bus.request("transport", tm.Connect(
            peer=self.relay.id, host=self.relay_addr, port=4433), timeout_s=30)

    def prepare(self) -> None:
        """Fresh state for a trial: a restarted x (new port) connected to the relay; y's
        link to the relay checked."""
        if not self.fresh:
            self.x.restart("transport", timeout_s=60)
        self.fresh = False
        self.connect(self.x)
        self.connect(self.y)

    def trial(self) -> Trial:
        t0 = time.perf_counter()
        try:
            reply = self.x.client.bus.request(
                "transport", tm.Punch(peer=self.y.id, via=self.relay.id), timeout_s=30)
        except WireError as e:
            return Trial(False, float("nan"), (time.perf_counter() - t0) * 1000, str(e),
                         self.kinds)
        assert isinstance(reply, tm.PunchReply)
        return Trial(reply.host == self.y_direct, getattr(reply, "opened_ms", float("nan")),
                     reply.elapsed_ms, "" if reply.host == self.y_direct
                     else f"direct to {reply.host}", self.kinds)


@dataclass
class Cell:
    scenario: str
    delay_ms: float
    loss: float
    inflight: int
    trials: list[Trial] = field(default_factory=list)

    @property
    def direct(self) -> float:
        return sum(t.ok for t in self.trials) / len(self.trials) if self.trials else 0.0

    def line(self, jitter_ms: float) -> str:
        ok = [t for t in self.trials if t.ok]
        opened = [t.opened_ms for t in ok]
        done = [t.elapsed_ms for t in ok]
        rtt = 2 * self.delay_ms + jitter_ms
        reasons = collections.Counter(t.reason.rpartition("failed: ")[2][:50]
                                      for t in self.trials if not t.ok)
        return (f"{self.scenario:10} {self.delay_ms:5g} {self.loss * 100:4g}% "
                f"{self.inflight:3d}  {sum(t.ok for t in self.trials):3d}/"
                f"{len(self.trials):<3d} {self.direct * 100:5.1f}%  "
                f"{pct(opened, 0.5):6.0f} {pct(opened, 0.9):6.0f}  "
                f"{pct(done, 0.5):6.0f} {pct(done, 0.9):6.0f}  {1.5 * rtt + 100:6.0f}  "
                + "; ".join(f"{n}x {r}" for r, n in reasons.most_common(3)))


HEADER = (f"{'scenario':10} {'delay':>5} {'loss':>5} {'fly':>3}  {'direct':>7} {'%':>6}  "
          f"{'open50':>6} {'open90':>6}  {'auth50':>6} {'auth90':>6}  {'1.5RTT':>6}  "
          "failures (ms; 1.5RTT = 1.5 x 2 x delay + 100 ms)")


def run_scenario(scenario: str, delay_ms: float, args: argparse.Namespace,
                 cells: list[Cell]) -> None:
    """Run the cells of one scenario and delay (``args``: trials, jitter_ms, losses,
    inflight), printing each and adding it to ``cells``."""
    config: dict[str, dict[str, Any]] = {"transport": {
        "port": 0, "send_delay_ms": delay_ms, "send_jitter_ms": args.jitter_ms}}
    npairs = max(args.inflight)
    with tl.Lab(prefix="tb") as lab:
        r = lab.public("relay")
        relay = r.node("relay", all_in_one=True)
        pairs: list[Pair] = []
        errors: list[BaseException] = []

        def build(n: int) -> None:
            try:
                pairs.append(Pair(lab, relay, r.addr, scenario, n, config))
            except BaseException as e:  # reported below
                errors.append(e)

        # nodes start in parallel (a few at a time: namespaces are made under a lock)
        for start in range(0, npairs, 4):
            threads = [threading.Thread(target=build, args=(n,))
                       for n in range(start, min(npairs, start + 4))]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            if errors:
                raise errors[0]
        pairs.sort(key=lambda p: p.x.name)
        for loss in args.losses:
            for p in pairs:
                for nat in p.nats:
                    nat.set_loss(loss)
            for inflight in args.inflight:
                cell = Cell(scenario, delay_ms, loss, inflight)
                while len(cell.trials) < args.trials:
                    group = pairs[:min(inflight, args.trials - len(cell.trials))]
                    barrier = threading.Barrier(len(group))
                    out: list[Trial] = []

                    def go(p: Pair, barrier: threading.Barrier = barrier,
                           out: list[Trial] = out) -> None:
                        try:
                            p.prepare()
                        except WireError as e:
                            barrier.wait()
                            out.append(Trial(False, float("nan"), float("nan"),
                                             f"setup: {e}", p.kinds))
                            return
                        barrier.wait()  # every punch of the round starts at once
                        out.append(p.trial())

                    threads = [threading.Thread(target=go, args=(p,)) for p in group]
                    for t in threads:
                        t.start()
                    for t in threads:
                        t.join()
                    cell.trials += out
                print(cell.line(args.jitter_ms), flush=True)
                cells.append(cell)


@dataclass
class Conversation:
    sent: int
    lost: list[int]
    direct_before: bool
    direct_again_s: float | None
    """Seconds from the rebind until the direct path used the NAT's new port (hairpin:
    from the path turning direct until it was seen on the private address; None: never
    within the conversation)."""

    def line(self, what: str) -> str:
        again = "never" if self.direct_again_s is None else f"{self.direct_again_s:.1f} s"
        return (f"{what}: {self.sent} messages, {len(self.lost)} lost; direct before: "
                f"{self.direct_before}; direct again after {again}")


def converse(hairpin: bool = False, seconds: float = 10.0) -> Conversation:
    """A conversation, a message every 200 ms from node a to node b, until their path is
    direct and for ``seconds`` after; then every message is checked at the recipient.

    :param hairpin: both behind one port-restricted NAT (else b behind a rebinding NAT,
        which moves b to another public port once the path is direct).
    """
    with tl.Lab(prefix="tr") as lab:
        r = lab.public("relay")
        relay = r.node("relay", all_in_one=True)
        nat_a = lab.nat("na", "port-restricted")
        nat_b = nat_a if hairpin else lab.nat("nb", "rebinding")
        a = lab.home("ha", nat_a).node("a", {"transport": {"port": 0}}, all_in_one=True)
        b = lab.home("hb", nat_b).node("b", {"transport": {"port": tl.REBIND_LOCAL_PORT}},
                                       all_in_one=True)
        for n in (a, b):
            n.client.add_peer(relay.id, r.addr, 4433)
        b.client.subscribe()
        ids: list[bytes] = []

        def link() -> tuple[str, int] | None:
            links = a.client.bus.request("transport", tm.Peers())
            assert isinstance(links, tm.PeersReply)
            return next(((p.host, p.port) for p in links.peers if p.node_id == b.id), None)

        def direct() -> bool:
            return any(p.node_id == b.id and p.path == "direct" for p in a.client.peers())

        deadline = time.monotonic() + 60
        while not direct() and time.monotonic() < deadline:
            ids.append(a.client.send(b.id, f"m{len(ids)}"))
            time.sleep(0.2)  # one message every 200 ms: the conversation
        was_direct = direct()
        t0 = time.monotonic()
        if not hairpin:
            nat_b.rebind()
        new = (tl.HOME_ADDRS[1] if hairpin else nat_b.public_addr,
               tl.REBIND_LOCAL_PORT if hairpin else nat_b.rebind_port)
        again = None
        while time.monotonic() < t0 + seconds:
            ids.append(a.client.send(b.id, f"m{len(ids)}"))
            if again is None and link() == new and direct():
                again = time.monotonic() - t0
            time.sleep(0.2)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            states = [s for i in range(0, len(ids), 100)
                      for s in a.client.outbox(ids[i:i + 100], limit=100)]
            if all(s.status in ("delivered", "read") for s in states):
                break
            time.sleep(0.2)
        got = {m.text for m in b.client.inbox(limit=1000) if m.info.sender == a.id}
        return Conversation(len(ids), [i for i in range(len(ids)) if f"m{i}" not in got],
                            was_direct, again)


def heatmap(cells: list[Cell], path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = sorted({(c.scenario, c.delay_ms) for c in cells},
                  key=lambda k: (SCENARIOS.index(k[0]), k[1]))
    cols = sorted({(c.loss, c.inflight) for c in cells})
    grid = [[float("nan")] * len(cols) for _ in rows]
    for c in cells:
        grid[rows.index((c.scenario, c.delay_ms))][cols.index((c.loss, c.inflight))] = \
            c.direct * 100
    fig, ax = plt.subplots(figsize=(1.2 + 0.9 * len(cols), 1.0 + 0.45 * len(rows)))
    im = ax.imshow(grid, cmap="RdYlGn", vmin=0, vmax=100, aspect="auto")
    ax.set_xticks(range(len(cols)), [f"loss {lo * 100:g}%\n{n} in flight" for lo, n in cols],
                  fontsize=7)
    ax.set_yticks(range(len(rows)), [f"{s} {d:g} ms" for s, d in rows], fontsize=7)
    for i, row in enumerate(grid):
        for j, v in enumerate(row):
            if v == v:
                ax.text(j, i, f"{v:.0f}", ha="center", va="center", fontsize=7)
    ax.set_title("direct punches, % (delay per side)", fontsize=9)
    fig.colorbar(im, ax=ax)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    print(f"heat map written to {path}")


def floats(text: str) -> list[float]:
    return [float(x) for x in text.split(",") if x]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.bench_nat")
    ap.add_argument("--scenarios", default=",".join(SCENARIOS))
    ap.add_argument("--delays", type=floats, default=[0.0, 50.0, 150.0],
                    help="ms each node holds each datagram it sends")
    ap.add_argument("--jitter-ms", type=float, default=0.0)
    ap.add_argument("--losses", type=floats, default=[0.0, 0.05, 0.10])
    ap.add_argument("--inflight", type=lambda t: [int(x) for x in t.split(",")],
                    default=[1, 4, 16])
    ap.add_argument("--trials", type=int, default=16, help="punches per cell")
    ap.add_argument("--png", default="", help="write a heat map of direct %% here")
    ap.add_argument("--rebind", action="store_true")
    args = ap.parse_args(argv)
    scenarios = [s for s in args.scenarios.split(",") if s]
    if bad := [s for s in scenarios if s not in SCENARIOS]:
        ap.error(f"unknown scenarios {bad}: choose from {SCENARIOS}")
    if args.png and importlib.util.find_spec("matplotlib") is None:
        ap.error("--png needs matplotlib: .venv/bin/pip install -e '.[bench]' (checked "
                 "before the campaign, not after it)")
    if (reason := tl.available()) is not None:
        print(f"the NAT lab cannot run here: {reason}", file=sys.stderr)
        return 2
    print(f"NAT campaign: {args.trials} punches per cell; delays {args.delays} ms per side, "
          f"jitter up to {args.jitter_ms:g} ms, losses {args.losses} per NAT each way, "
          f"{args.inflight} punches in flight through one relay")
    print(HEADER, flush=True)
    cells: list[Cell] = []
    t0 = time.monotonic()
    for scenario in scenarios:
        for delay in args.delays:
            run_scenario(scenario, delay, args, cells)
    print(f"campaign took {time.monotonic() - t0:.0f} s")
    for scenario in scenarios:
        mine = [c for c in cells if c.scenario == scenario]
        worst = min(mine, key=lambda c: c.direct)
        print(f"{scenario}: worst cell {worst.direct * 100:.0f}% direct "
              f"(delay {worst.delay_ms:g}, loss {worst.loss * 100:g}%, {worst.inflight} in "
              f"flight); target {TARGET[scenario] * 100:g}%"
              + (" -- met" if worst.direct >= TARGET[scenario] else " -- NOT met"))
    if args.rebind:
        print(converse(hairpin=False, seconds=20).line("rebinding NAT"))
        print(converse(hairpin=True).line("hairpin (both behind one NAT)"))
    if args.png:
        heatmap(cells, args.png)
    return 0


if __name__ == "__main__":
    sys.exit(main())
