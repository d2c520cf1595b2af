"""Signalling inside authenticated connections: control frames, and hole punching.

Theory of operation (docs/architecture.md, NAT traversal). Control frames travel on the
lanes of authenticated connections (first byte ``CONTROL``, which never starts a msgpack
value, so never an envelope): ``addr`` tells a peer the address its packets come from and
this socket's own addresses; ``intro?`` asks a common peer (the relay) to introduce us to a
node; the relay answers both sides with ``intro`` and the other side's candidates (the
address it sees it at, then its private addresses), or ``nointro``. Both sides then probe
each other's candidates from the QUIC socket (bare UDP: ``PROBE_MAGIC token node_id``) and the
side that asked dials where a probe came from (both, when both asked at once). Everything a
peer says here is bounded: reports and introductions per window, candidates per introduction
(one public address: the relay's own observation), probes per punch, dials per punch, and
probes answered or dialled only from a candidate's address with the punch's token.

:class:`Signalling` is a mixin of :class:`~services.transport.endpoint.Endpoint`: it uses the
endpoint's connections, counters and outputs, declared below.
"""

from __future__ import annotations

import ipaddress
import secrets
from collections import Counter
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import msgpack

from .addresses import Addr, NameRefused, is_public, literal
from .events import (
    AddressObserved,
    CloseSockets,
    Event,
    OpenSockets,
    PunchEnded,
    SendError,
    SocketAction,
    framed,
)

if TYPE_CHECKING:
    from .endpoint import _Conn

CONTROL = 0xC1
"""First byte of a control frame on a lane (hole punching, observed addresses): a byte that
never starts a msgpack value, so never an envelope."""
PROBE_MAGIC = b"\x00tomp1"
TOKEN_BYTES = 16
PROBE_BYTES = len(PROBE_MAGIC) + TOKEN_BYTES + 32
PROBE_EVERY_S = 0.1
FIRST_PROBES_S = (0.0, 0.02, 0.05)
"""Offsets from the introduction of the first probe rounds, then one every
``PROBE_EVERY_S``: both sides get their introductions at about the same time, so the first
probes of each cross the other's NAT just before or just after its own probe opened it;
a second and third round soon after catch the ones that came too early."""
INTRO_TIMEOUT_S = 3.0
"""How long a punch waits for the relay's introduction (at least; see ``INTRO_RTTS``)."""
INTRO_RTTS = 4
"""... or this many round trips to the relay, whichever is longer."""
PUNCH_TIMEOUT_S = 5.0
"""How long a punch lasts from the introduction to an authenticated direct connection
(at least; see ``PUNCH_RTTS``)."""
PUNCH_RTTS = 12
"""... or this many estimated round trips to the peer (twice the relay's, the path the
introduction took), whichever is longer: a punch over long paths gets the time for its
probes, a QUIC handshake and the proofs, with retransmissions under loss."""
MAX_PUNCH_S = 15.0
"""A punch never lasts longer, whatever the relay's RTT says."""
MAX_PUNCHES = 64
MAX_INTRODUCED = 8
"""Punches one relay may have us take part in at once (the rest of the slots stay free)."""
PUNCH_DIALS = 2
"""Connections one punch may dial (to where probes came from): forged probes cannot make a
node open more."""
MAX_CANDIDATES = 8
PUBLIC_CANDIDATES = 2
"""Public (not private-range) candidates one punch takes: the address its relay saw the peer
at, perhaps once more after a NAT rebinding. The rest of an introduction must be private
(the peer's own interface addresses): a relay cannot aim probes at addresses of its choice."""
PUNCH_PROBES = 96
"""Probes one punch sends unasked, over all its candidates, in rounds of one per candidate
(the last round completes: at most 96 + 7); it sent 400 per introduction. Probing stops
once the peer's probes are heard (the hole is open; answers are not counted)."""
SPRAY_AFTER_RTTS = 3
"""Port prediction starts when the peer has not been heard for this many estimated round
trips (at least ``SPRAY_AFTER_S``) after the introduction: a symmetric NAT on its side
mapped it to another port toward us than toward the relay."""
SPRAY_AFTER_S = 0.3
SPRAY_PORTS = 16
"""Ports above the relay's observation of the peer probed by port prediction: a NAT that
gives out ports in sequence maps the peer's flow toward us to one of the next ports (as many
ports above as flows it opened in between, on its side and its neighbours')."""
SPRAY_EVERY_S = 0.2
SPRAY_PROBES = 16 * SPRAY_PORTS
"""Prediction probes one punch sends (16 rounds; a round is not cut short, so at most
``SPRAY_PORTS - 1`` more when a round skipped a port that was already a candidate)."""
SPRAY_RATE = 2000.0
"""Prediction probes per second over all punches (in bursts of ``SPRAY_BURST``): a node
asked for many punches at once never floods; what the rate refuses is counted
(``spray_refused``) and the round waits."""
SPRAY_BURST = 400.0
BIRTHDAY_AFTER_RTTS = 4
"""Birthday probing starts when the peer is still unheard this many estimated round trips
(at least ``BIRTHDAY_AFTER_S``) after the introduction: port prediction did not find it."""
BIRTHDAY_AFTER_S = 0.6
BIRTHDAY_SOCKETS = 256
"""Extra sockets a birthday punch opens toward the peer's vouched address: behind a NAT
with random ports each is a mapping the peer may hit."""
BIRTHDAY_PROBES = 1024
"""Probes at random ports of the peer's vouched IP one birthday punch sends: with 256
mappings on the other side, 1 - (1 - 256/64512)^1024 = 98 % find one (random ports on both
sides cannot be punched: half of it is wasted on the side that is not behind such a NAT,
which cannot tell)."""
BIRTHDAY_EVERY_S = 0.025
BIRTHDAY_BATCH = 25
"""Random-port probes per round (1,000/s), drawn from the node-wide ``SPRAY_RATE``."""
BIRTHDAYS_AT_ONCE = 1
"""Birthday punches at once per node (each holds up to 256 sockets)."""
INTRO_BURST = 20
"""Introductions a relay makes for one peer per ``INTRO_WINDOW_S`` (more are refused)."""
INTRO_IN_BURST = 100
"""Introductions a node takes from one relay per ``INTRO_WINDOW_S`` (each is another node
wanting a path to it; more are ignored, so a hostile relay cannot make it probe at will)."""
INTRO_WINDOW_S = 10.0
ADDR_BURST = 3
"""``addr`` reports taken from one connection per ``INTRO_WINDOW_S`` (one at authentication,
then one per NAT rebinding)."""


@dataclass
class _Punch:
    peer: bytes
    token: bytes
    """Sent in our probes."""
    initiator: bool
    """True on the side that asked for the introduction."""
    via: bytes
    started: float
    deadline: float
    candidates: list[Addr] = field(default_factory=list)
    introduced: float | None = None
    next_probe: float = 0.0
    dialled: set[Addr] = field(default_factory=set)
    answered: dict[Addr, float] = field(default_factory=dict)
    """When we last answered a probe from each address (once per probe interval)."""
    tokens: set[bytes] = field(default_factory=set)
    """Accepted in the peer's probes: ours, and the peer's when both asked at once."""
    probes_left: int = 0
    """Probes this punch may still send unasked (answers to the peer's are not counted)."""
    round: int = 0
    """Probe rounds sent so far."""
    rtt: float = 0.0
    """Estimated round trip to the peer (twice the relay's smoothed RTT)."""
    heard: float | None = None
    """When the peer's first valid probe arrived: the hole is open."""
    vouched: Addr | None = None
    """The relay's own observation of the peer: the only address port prediction aims at
    (its IP, the ports above)."""
    spray_at: float = 0.0
    spray_left: int = 0
    birthday_at: float = 0.0
    birthday_left: int = 0
    sockets_opened: bool = False


def _addrs(value: object) -> list[Addr]:
    """Candidate addresses from a control frame: ``[[ip, port], ...]``; ValueError if not
    (NameRefused for a host name: peers give literal addresses only)."""
    if not isinstance(value, list) or len(value) > MAX_CANDIDATES:
        raise ValueError("candidates: not a short list")
    out: list[Addr] = []
    for item in value:
        if not (isinstance(item, list) and len(item) == 2 and isinstance(item[1], int)
                and 0 < item[1] < 65536):
            raise ValueError("candidate: not [ip, port]")
        host = literal(item[0])
        ip = ipaddress.ip_address(host)
        if ip.is_loopback or ip.is_unspecified or ip.is_multicast or ip.is_reserved \
                or ip.is_link_local or host == "255.255.255.255":
            continue  # never a peer's address: not probed
        out.append((host, item[1]))
    return out


def _node(value: object) -> bytes:
    if not isinstance(value, bytes) or len(value) != 32:
        raise ValueError("not a node id")
    return value


class Signalling:
    """Control frames and hole punching, for the endpoint (a mixin)."""

    node_id: bytes
    peers: dict[bytes, _Conn]
    counters: Counter[str]
    local_candidates: list[Addr]
    _punches: dict[bytes, _Punch]
    _spray_tokens: float
    _spray_time: float | None
    _socket_actions: list[SocketAction]
    _birthdays: set[bytes]
    """Peers of the punches holding birthday sockets now."""
    _out: list[tuple[bytes, Addr]]
    _events: list[Event]
    _dirty: dict[_Conn, float]

    def _open(self, node_id: bytes, addr: Addr, now: float) -> None: ...

    def want(self, node_id: bytes) -> None: ...

    def punch(self, peer: bytes, via: bytes, now: float) -> None:
        """Start a hole punch to ``peer``: ask ``via`` (a connected peer that is also
        connected to it) to introduce the two nodes to each other with their candidate
        addresses; both then probe each other's candidates at once from this socket, and this
        side (the one that asked) dials the address a probe came from. Ends with a
        :class:`PunchEnded` event. No-op while a punch to ``peer`` is in progress."""
        relay = self.peers.get(via)
        if relay is None or relay.lane is None or relay.closing:
            raise SendError("not connected to the introducing peer")
        if peer in self._punches:  # in progress (perhaps started by the peer): it will end
            return
        if len(self._punches) >= MAX_PUNCHES:
            raise SendError(f"{MAX_PUNCHES} hole punches already in progress")
        self.want(peer)
        token = secrets.token_bytes(TOKEN_BYTES)
        relay_rtt = _srtt(relay)
        self._punches[peer] = _Punch(peer, token, True, via, now,
                                     now + max(INTRO_TIMEOUT_S, INTRO_RTTS * relay_rtt),
                                     tokens={token}, probes_left=PUNCH_PROBES,
                                     rtt=2 * relay_rtt)
        self._control(relay, ["intro?", peer, token])
        self.counters["punches"] += 1

    def _control(self, conn: _Conn, msg: list[Any]) -> None:
        """Send a control frame; not on a connection that is retired, closing or not yet
        proven (its lane is ended or absent)."""
        if conn.lane is None or conn.closing or conn.retired_until is not None:
            self.counters["control_unsent"] += 1
            return
        frame = bytes([CONTROL]) + msgpack.packb(msg, use_bin_type=True)
        try:
            conn.quic.send_stream_data(conn.lane, framed(frame))
        except (RuntimeError, ValueError):  # the lane was reset or ended meanwhile
            self.counters["control_unsent"] += 1
            return
        self.counters["control_sent"] += 1

    def _tell_address(self, conn: _Conn) -> None:
        """Tell the peer the address its packets come from, and our own candidates."""
        self._control(conn, ["addr", list(conn.addr),
                             [list(a) for a in self.local_candidates[:MAX_CANDIDATES]]])

    def _candidates(self, conn: _Conn) -> list[list[Any]]:
        """Where a peer may be reached: the address we see it at, then its own addresses."""
        out = [conn.addr] + [a for a in conn.peer_locals if a != conn.addr
                             and ipaddress.ip_address(a[0]).is_private]
        return [list(a) for a in out[:MAX_CANDIDATES]]

    def _on_control(self, conn: _Conn, data: bytes, now: float) -> None:
        node_id = conn.node_id
        assert node_id is not None
        if conn.retired_until is not None or self.peers.get(node_id) is not conn:
            self.counters["control_ignored"] += 1  # only the current connection signals
            return
        try:
            msg = msgpack.unpackb(data, raw=False)
            match msg:
                case ["addr", [str() as host, int() as port], list() as own]:
                    if not self._allow(conn.addr_reports, now, ADDR_BURST):
                        self.counters["control_ignored"] += 1
                        return
                    seen = _addrs([[host, port]])
                    conn.peer_locals = _addrs(own)
                    if seen:
                        self._events.append(AddressObserved(node_id, seen[0]))
                case ["intro?", target, bytes() as token] if len(token) == TOKEN_BYTES:
                    self._introduce(conn, _node(target), token, now)
                case ["intro", peer, bytes() as token, list() as cands] \
                        if len(token) == TOKEN_BYTES:
                    self._introduced(conn, _node(peer), token, _addrs(cands), now)
                case ["nointro", bytes() as peer, bytes() as token, str() as reason]:
                    p = self._punches.get(peer)
                    if p is not None and p.initiator and p.token == token \
                            and p.via == node_id:
                        self._end_punch(p, now, None, f"the relay cannot introduce: "
                                        f"{reason[:200]}")
                case _:
                    self.counters["unknown_control"] += 1
        except NameRefused:
            self.counters["names_refused"] += 1
        except (ValueError, TypeError, msgpack.UnpackException):
            self.counters["malformed_control"] += 1

    def _introduce(self, conn: _Conn, target: bytes, token: bytes, now: float) -> None:
        """As the relay: give each of the two peers the other's candidates."""
        assert conn.node_id is not None
        if not self._allow(conn.intros_asked, now, INTRO_BURST):
            self.counters["intros_refused"] += 1
            self._control(conn, ["nointro", target, token, "too many introductions asked"])
            return
        other = self.peers.get(target)
        if other is None or other is conn or other.lane is None or other.closing:
            self.counters["intros_unknown"] += 1
            self._control(conn, ["nointro", target, token, "not connected to that node"])
            return
        self._control(other, ["intro", conn.node_id, token, self._candidates(conn)])
        self._control(conn, ["intro", target, token, self._candidates(other)])
        self._dirty[other] = now
        self.counters["introductions"] += 1

    @staticmethod
    def _allow(times: list[float], now: float, burst: int) -> bool:
        """At most ``burst`` events per ``INTRO_WINDOW_S`` (``times`` is kept in place)."""
        times[:] = [t for t in times if now - t < INTRO_WINDOW_S]
        if len(times) >= burst:
            return False
        times.append(now)
        return True

    def _introduced(self, conn: _Conn, peer: bytes, token: bytes, cands: list[Addr],
                    now: float) -> None:
        """The relay ``conn`` introduces ``peer``: probe its candidates."""
        assert conn.node_id is not None
        if not self._allow(conn.intros_made, now, INTRO_IN_BURST):  # each costs probes
            self.counters["intros_ignored"] += 1
            return
        p = self._punches.get(peer)
        if peer == self.node_id:
            self.counters["stray_intros"] += 1
            return
        # taken even if we hold a connection to that node: it asked for a path, so ours is
        # probably stale (it restarted, and its goodbye was lost); a new one replaces it
        if p is None:  # the other side of the peer's punch
            by_relay = sum(1 for q in self._punches.values()
                           if not q.initiator and q.via == conn.node_id)
            if len(self._punches) >= MAX_PUNCHES or by_relay >= MAX_INTRODUCED:
                self.counters["punches_refused"] += 1
                return
            p = _Punch(peer, token, False, conn.node_id, now, now, probes_left=PUNCH_PROBES,
                       rtt=2 * _srtt(conn))
            self._punches[peer] = p
        elif p.via != conn.node_id:  # only the relay of this punch adds to it
            self.counters["stray_intros"] += 1
            return
        elif not p.initiator and p.introduced is not None and token not in p.tokens:
            # the peer asked again while our side of its last punch still runs (it
            # restarted, or gave up, before its proof reached us): a new punch to where it
            # is now, probing from the first round (merged into the old one, it would
            # neither probe the new address nor open our NAT to it). The probe budget
            # carries over: re-introductions do not buy a relay more probes.
            if peer in self._birthdays:
                self._birthdays.discard(peer)
                self._socket_actions.append(CloseSockets(p.token))
            p = self._punches[peer] = _Punch(peer, token, False, conn.node_id, now, now,
                                             probes_left=p.probes_left,
                                             rtt=2 * _srtt(conn))
            self.counters["punches_renewed"] += 1
        # both may have asked at once (each gets the other's introduction too): one punch,
        # accepting either token
        p.tokens.add(token)
        public = sum(1 for a in p.candidates if is_public(a[0]))
        for i, a in enumerate(cands):
            if a in p.candidates or len(p.candidates) >= MAX_CANDIDATES:
                continue
            if is_public(a[0]):  # only the relay's own observation, first in the list
                if i > 0 or public >= PUBLIC_CANDIDATES:
                    self.counters["intro_candidates_refused"] += 1
                    continue
                public += 1
                if i == 0 and p.vouched is None:
                    p.vouched = a  # the relay saw the peer there
            p.candidates.append(a)
        if p.introduced is None:
            p.introduced = now
            p.deadline = now + min(MAX_PUNCH_S, max(PUNCH_TIMEOUT_S, PUNCH_RTTS * p.rtt))
            p.spray_at = now + max(SPRAY_AFTER_S, SPRAY_AFTER_RTTS * p.rtt)
            p.spray_left = SPRAY_PROBES
            p.birthday_at = now + max(BIRTHDAY_AFTER_S, BIRTHDAY_AFTER_RTTS * p.rtt)
            p.birthday_left = BIRTHDAY_PROBES
            self._probe(p, now)

    def _probe(self, p: _Punch, now: float) -> None:
        probe = PROBE_MAGIC + p.token + self.node_id
        p.probes_left -= len(p.candidates)
        self._out += [(probe, addr) for addr in p.candidates]
        self.counters["probes_sent"] += len(p.candidates)
        p.round += 1
        assert p.introduced is not None
        if p.probes_left <= 0:  # the budget spent, no more rounds (the last one may pass
            p.next_probe = p.deadline  # it by a few candidates)
        elif p.round < len(FIRST_PROBES_S):
            p.next_probe = p.introduced + FIRST_PROBES_S[p.round]
        else:
            p.next_probe = now + PROBE_EVERY_S

    def _spray(self, p: _Punch, now: float) -> None:
        """Port prediction: probe the ports just above the relay's observation of the peer
        (its IP only: an address the relay vouched for, never one a probe or the peer's own
        list named), at most ``SPRAY_PORTS`` per round, ``SPRAY_PROBES`` per punch and
        ``SPRAY_RATE`` per second over all punches."""
        assert p.vouched is not None
        host, base = p.vouched
        ports = [port for port in range(base + 1, min(base + 1 + SPRAY_PORTS, 65536))
                 if (host, port) not in p.candidates]
        p.spray_at = now + SPRAY_EVERY_S
        if not self._take(len(ports), now):
            return
        p.spray_left -= len(ports)
        probe = PROBE_MAGIC + p.token + self.node_id
        self._out += [(probe, (host, port)) for port in ports]
        self.counters["spray_probes"] += len(ports)

    def _take(self, n: int, now: float) -> bool:
        """Take ``n`` probes from the node-wide allowance of prediction and birthday
        probes (``SPRAY_RATE``); False, counted, if it has not that many now."""
        if self._spray_time is not None:
            self._spray_tokens = min(SPRAY_BURST, self._spray_tokens
                                     + (now - self._spray_time) * SPRAY_RATE)
        self._spray_time = now
        if self._spray_tokens < n:
            self.counters["spray_refused"] += n
            return False
        self._spray_tokens -= n
        return True

    def _birthday(self, p: _Punch, now: float) -> None:
        """Birthday probing, both halves (neither side knows which NAT is the random one):
        open ``BIRTHDAY_SOCKETS`` sockets that each send a probe to the peer's vouched
        address, and probe random ports of the vouched IP from the main socket, a batch
        every ``BIRTHDAY_EVERY_S`` until ``BIRTHDAY_PROBES`` are sent. Only the relay's own
        observation of the peer is aimed at (its IP; random ports of it)."""
        assert p.vouched is not None
        p.birthday_at = now + BIRTHDAY_EVERY_S
        probe = PROBE_MAGIC + p.token + self.node_id
        if not p.sockets_opened:
            p.sockets_opened = True
            if len(self._birthdays) >= BIRTHDAYS_AT_ONCE:
                self.counters["birthdays_refused"] += 1
            else:
                self._birthdays.add(p.peer)
                self._socket_actions.append(
                    OpenSockets(p.token, BIRTHDAY_SOCKETS, p.vouched, probe))
                self.counters["birthday_sockets"] += BIRTHDAY_SOCKETS
        n = min(BIRTHDAY_BATCH, p.birthday_left)
        if not self._take(n, now):
            return
        p.birthday_left -= n
        host = p.vouched[0]
        self._out += [(probe, (host, 1024 + secrets.randbelow(65536 - 1024)))
                      for _ in range(n)]
        self.counters["birthday_probes"] += n

    def socket_actions(self) -> list[SocketAction]:
        """Extra sockets to open or close (birthday probing), for the shell."""
        out, self._socket_actions = self._socket_actions, []
        return out

    def _on_probe(self, data: bytes, addr: Addr, now: float) -> None:
        if len(data) != PROBE_BYTES or not data.startswith(PROBE_MAGIC):
            self.counters["garbage_datagrams"] += 1
            return
        token = data[len(PROBE_MAGIC):len(PROBE_MAGIC) + TOKEN_BYTES]
        peer = data[-32:]
        if peer == self.node_id:  # our own probe: a candidate was our own address
            return
        p = self._punches.get(peer)
        if p is None or p.introduced is None or token not in p.tokens:
            self.counters["stray_probes"] += 1
            return
        if addr not in p.candidates:
            # a symmetric NAT maps the peer to another port for us, never another address:
            # probes from elsewhere (forged, with the token a hostile relay knows) would make
            # this node answer and dial an address of the relay's choice
            if addr[0] not in {h for h, _ in p.candidates}:
                self.counters["stray_probes"] += 1
                return
            if len(p.candidates) < MAX_CANDIDATES:
                p.candidates.append(addr)  # where the peer's NAT maps it for us
        self.counters["probes_received"] += 1
        if p.heard is None:
            p.heard = now  # the hole is open: our own probing stops (answers go on)
        if not p.initiator or self.node_id > peer:
            # answer at once, once per probe interval per address
            if now - p.answered.get(addr, -1e9) >= PROBE_EVERY_S:
                p.answered[addr] = now
                self._out.append((PROBE_MAGIC + p.token + self.node_id, addr))
        if p.initiator and addr not in p.dialled and len(p.dialled) < PUNCH_DIALS:
            # the side that asked dials where the probe came from: that path is open both
            # ways, and with the server's proof in its first flight the asker knows the
            # peer one round trip later (when both asked at once both dial, and the
            # connection the smaller id dialled stays). Also while holding a connection
            # to the peer: asking for a punch means it does not use that one (it
            # restarted, or the path stalled); the new one wins.
            p.dialled.add(addr)
            self.counters["punch_dials"] += 1
            self._open(peer, addr, now)

    def _end_punch(self, p: _Punch, now: float, addr: Addr | None, reason: str = "") -> None:
        del self._punches[p.peer]
        if p.peer in self._birthdays:
            self._birthdays.discard(p.peer)
            self._socket_actions.append(CloseSockets(p.token))
        self.counters["punches_direct" if addr else "punches_failed"] += 1
        opened = None if p.heard is None or p.introduced is None \
            else round(p.heard - p.introduced, 6)
        self._events.append(PunchEnded(p.peer, addr is not None, addr,
                                       round(now - (p.introduced or p.started), 6),
                                       p.initiator, reason, opened))

    def _punch_timers(self, now: float) -> None:
        """End the punches past their deadline; probe again where a round is due."""
        for p in list(self._punches.values()):
            if now >= p.deadline:
                self._end_punch(p, now, None, "no introduction from the relay in time"
                                if p.introduced is None else "no direct path in time: the "
                                "probes did not get through (a symmetric NAT on the way?)")
                continue
            if p.introduced is None or p.heard is not None:
                continue
            if now >= p.next_probe:
                self._probe(p, now)
            if p.vouched is not None and p.spray_left > 0 and now >= p.spray_at:
                self._spray(p, now)
            if p.vouched is not None and is_public(p.vouched[0]) and p.birthday_left > 0 \
                    and now >= p.birthday_at:
                self._birthday(p, now)

    def _punch_deadlines(self) -> list[float]:
        out = []
        for p in self._punches.values():
            out.append(p.deadline)
            if p.introduced is not None and p.heard is None:
                out.append(p.next_probe)
                if p.vouched is not None and p.spray_left > 0:
                    out.append(p.spray_at)
                if p.vouched is not None and is_public(p.vouched[0]) and p.birthday_left > 0:
                    out.append(p.birthday_at)
        return out


def _srtt(conn: _Conn) -> float:
    """The connection's smoothed RTT, seconds (0 before any sample)."""
    return float(getattr(getattr(conn.quic, "_loss", None), "_rtt_smoothed", 0.0) or 0.0)
