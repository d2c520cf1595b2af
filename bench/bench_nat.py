"""NAT traversal in the lab (tom/lab.py): punch-time distribution, direct %, and message RTT
direct vs relayed, per NAT pairing, with whole nodes. Needs root.

    python -m bench.bench_nat [--trials 100] [--pairs 4] [--delay-ms 0]

For each pairing (cone-cone, symmetric-cone, symmetric-symmetric) the lab holds ``--pairs``
pairs of homes behind their own NATs plus one public relay; the pairs run their trials at
once (a failing punch takes its full 5 s). A trial restarts the first node's transport (a
fresh port: fresh NAT mappings, no memory of the other node), reconnects it to the relay and
asks for a punch to the other node through the relay (``transport.punch``); it counts as
direct when the reply names the other node's NAT address. Then the message RTT (send to
status ``delivered``, through all services) is measured over the direct path of a cone pair
and over the relay for a symmetric pair, beside the transport's own RTTs (QUIC PING).
``--delay-ms`` holds every datagram each node sends (the kernel has no netem): a stand-in
for distance.
"""

from __future__ import annotations

import argparse
import sys
import threading
import time

from shared.wire import WireError
from shared.wire.messages import router as rm
from shared.wire.messages import transport as tm
from tom import lab as tl

PAIRINGS = (("cone", "cone"), ("symmetric", "cone"), ("symmetric", "symmetric"))


def pct(xs: list[float], q: float) -> float:
    return sorted(xs)[min(len(xs) - 1, int(q * len(xs)))] if xs else float("nan")


class Pair:
    def __init__(self, lab: tl.Lab, relay: tl.LabNode, relay_addr: str, kinds: tuple[str, str],
                 n: int, config: dict[str, dict[str, object]]) -> None:
        nat_x = lab.nat(f"x{n}{kinds[0][0]}{kinds[1][0]}", kinds[0])
        nat_y = lab.nat(f"y{n}{kinds[0][0]}{kinds[1][0]}", kinds[1])
        self.y_public = nat_y.public_addr
        self.x = lab.home(f"hx{n}{kinds[0][0]}{kinds[1][0]}", nat_x).node(f"x{n}", config)
        self.y = lab.home(f"hy{n}{kinds[0][0]}{kinds[1][0]}", nat_y).node(f"y{n}", config)
        self.relay, self.relay_addr = relay, relay_addr
        self.results: list[tuple[bool, float]] = []
        self.connect(self.y)

    def connect(self, node: tl.LabNode) -> None:
        node.client.bus.request("transport", tm.Connect(
            peer=self.relay.id, host=self.relay_addr, port=4433), timeout_s=15)

    def trials(self, count: int) -> None:
        for trial in range(count):
            if trial:
                self.x.restart("transport")
            self.connect(self.x)
            t0 = time.perf_counter()
            try:
                reply = self.x.client.bus.request(
                    "transport", tm.Punch(peer=self.y.id, via=self.relay.id), timeout_s=20)
            except WireError:
                self.results.append((False, (time.perf_counter() - t0) * 1000))
                continue
            assert isinstance(reply, tm.PunchReply)
            self.results.append((reply.host == self.y_public, reply.elapsed_ms))


def message_rtts(sender: tl.LabNode, to: bytes, count: int) -> list[float]:
    """Send-to-delivered times, one message at a time, through all services."""
    sender.client.subscribe()
    out = []
    for i in range(count):
        t0 = time.perf_counter()
        msg = sender.client.send(to, f"rtt {i}")
        for ev in sender.client.events(timeout_s=30):  # yields as events arrive
            if isinstance(ev, rm.StatusChanged) and ev.id == msg and ev.status == "delivered":
                out.append((time.perf_counter() - t0) * 1000)
                break
    return out


def transport_rtt(node: tl.LabNode, peer: bytes) -> float:
    reply = node.client.bus.request("transport", tm.Peers())
    assert isinstance(reply, tm.PeersReply)
    return next((p.rtt_ms for p in reply.peers if p.node_id == peer), float("nan"))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.bench_nat")
    ap.add_argument("--trials", type=int, default=100, help="punch trials per pairing")
    ap.add_argument("--pairs", type=int, default=4, help="pairs running trials at once")
    ap.add_argument("--delay-ms", type=float, default=0.0, help="per-node send delay")
    args = ap.parse_args(argv)
    if (reason := tl.available()) is not None:
        print(f"the NAT lab cannot run here: {reason}", file=sys.stderr)
        return 2
    config: dict[str, dict[str, object]] = {"transport": {"port": 0,
                                                          "send_delay_ms": args.delay_ms}}
    print(f"NAT lab bench: {args.trials} punch trials per pairing ({args.pairs} pairs at "
          f"once), send delay {args.delay_ms:g} ms per node")
    with tl.Lab(prefix="tb") as lab:
        r = lab.public("relay")
        relay = r.node("relay", {"transport": {"send_delay_ms": args.delay_ms}})
        rtt_pairs: dict[str, Pair] = {}
        print(f"{'pairing':22} {'direct':>8} {'p50 ms':>8} {'p90 ms':>8} {'max ms':>8}")
        for kinds in PAIRINGS:
            pairs = [Pair(lab, relay, r.addr, kinds, n, config) for n in range(args.pairs)]
            share = [args.trials // args.pairs + (n < args.trials % args.pairs)
                     for n in range(args.pairs)]
            threads = [threading.Thread(target=p.trials, args=(k,)) for p, k in
                       zip(pairs, share, strict=True)]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            results = [x for p in pairs for x in p.results]
            times = [ms for ok, ms in results if ok]
            name = "-".join(kinds)
            print(f"{name:22} {len(times):>4}/{len(results):<3} {pct(times, 0.5):8.1f} "
                  f"{pct(times, 0.9):8.1f} {max(times, default=float('nan')):8.1f}")
            rtt_pairs[name] = pairs[0]
        direct, relayed = rtt_pairs["cone-cone"], rtt_pairs["symmetric-symmetric"]
        direct.x.client.bus.request("transport", tm.Punch(peer=direct.y.id,
                                                          via=relay.id), timeout_s=20)
        for label, pair in (("direct", direct), ("relayed", relayed)):
            rtts = message_rtts(pair.x, pair.y.id, 50)
            print(f"message -> delivered, {label:8}: p50 {pct(rtts, 0.5):.2f} ms, "
                  f"p99 {pct(rtts, 0.99):.2f} ms")
        print(f"transport RTT (QUIC PING): direct {transport_rtt(direct.x, direct.y.id):.2f} "
              f"ms; to the relay {transport_rtt(relayed.x, relay.id):.2f} ms")
    return 0


if __name__ == "__main__":
    sys.exit(main())
