"""The queue of envelopes waiting for a ``router.deliver`` slot, served peer by peer.

One FIFO per peer (a peer's envelopes stay in arrival order, as on its connection) and the
peers in turn: a peer with a backlog of thousands of envelopes (a flood of made-up senders
relayed through one connection) delays another peer's next envelope by at most one envelope
per queued peer, not by its whole backlog.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable

Item = tuple[int, bytes, bytes]
"""(arrival number, peer, envelope)."""


class FairQueue:
    def __init__(self) -> None:
        self._queues: dict[bytes, deque[Item]] = {}
        self._turns: deque[bytes] = deque()
        """Peers with something queued, in the order they will be served."""
        self._len = 0

    def __len__(self) -> int:
        return self._len

    def __bool__(self) -> bool:
        return self._len > 0

    def append(self, item: Item) -> None:
        q = self._queues.get(item[1])
        if q is None:
            q = self._queues[item[1]] = deque()
            self._turns.append(item[1])
        q.append(item)
        self._len += 1

    def extendleft(self, items: Iterable[Item]) -> None:
        """Put items back at the head of their peers' queues, like ``deque.extendleft``
        (so ``extendleft(reversed(items))`` keeps their order); their peers are served
        next."""
        for item in items:
            q = self._queues.get(item[1])
            if q is None:
                q = self._queues[item[1]] = deque()
            else:
                self._turns.remove(item[1])
            self._turns.appendleft(item[1])
            q.appendleft(item)
            self._len += 1

    def popleft(self) -> Item:
        """The next envelope of the peer whose turn it is."""
        peer = self._turns.popleft()
        q = self._queues[peer]
        item = q.popleft()
        if q:
            self._turns.append(peer)
        else:
            del self._queues[peer]
        self._len -= 1
        return item

    def pop(self) -> Item:
        """The newest envelope of the last peer in turn (tests)."""
        peer = self._turns[-1]
        q = self._queues[peer]
        item = q.pop()
        if not q:
            del self._queues[peer]
            self._turns.pop()
        self._len -= 1
        return item
