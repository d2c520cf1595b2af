"""Summarise the py-spy profiles of ``bench_router --py-spy`` (raw collapsed stacks).

    .venv/bin/python -m bench.pyspy_summary [DIR]     # default bench/results/router-prof

For each profiled process: samples, the share spent waiting in the event loop (a stack whose
innermost Python frame is ``Runner.run`` or a select/epoll call: with uvloop the loop itself is
C, so its callbacks' own overhead is counted there too), then the share of the busy samples
whose stack passes through each category (inclusive, so they overlap), and the functions
with the most samples of their own.
"""

from __future__ import annotations

import collections
import sys
from pathlib import Path

CATEGORIES = [
    ("bus codec (msgspec models, header, frames)", ("msgspec", "wire/frame.py")),
    ("msgpack", ("msgpack",)),
    ("bus send/recv (pyzmq)", ("send_frames", "recv_frames", "zmq/sugar")),
    ("SQLite", ("sqlite3", "store.py")),
    ("libsodium (sign, verify, X25519, AEAD) and HKDF", ("nacl/", "primitives.py", "hmac.py")),
    ("aioquic", ("aioquic/",)),
]


def idle(leaf: str) -> bool:
    return leaf.startswith("Runner.run (") or "select" in leaf or "epoll" in leaf


def summary(path: Path, top: int = 10) -> str:
    total = waiting = 0
    own: collections.Counter[str] = collections.Counter()
    cat: collections.Counter[str] = collections.Counter()
    for line in path.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack:
            continue
        n, frames = int(count), stack.split(";")
        total += n
        if idle(frames[-1]):
            waiting += n
            continue
        own[frames[-1]] += n
        for name, keys in CATEGORIES:
            if any(k in f for f in frames for k in keys):
                cat[name] += n
    busy = max(total - waiting, 1)
    out = [f"{path.stem}: {total} samples, {waiting / max(total, 1):.0%} waiting in the loop"]
    out += [f"  {name}: {cat[name] / busy:.0%} of busy" for name, _ in CATEGORIES if cat[name]]
    out += ["  own samples (share of busy):"]
    out += [f"    {n / busy:5.1%} {f}" for f, n in own.most_common(top)]
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    folder = Path(args[0]) if args else Path(__file__).parent / "results" / "router-prof"
    for path in sorted(folder.glob("*.txt")):
        print(summary(path) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
