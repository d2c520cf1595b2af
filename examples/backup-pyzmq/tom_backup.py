"""A second implementation of the ToM node's backup role, written from docs/protocol.md and
docs/contract.md alone: plain pyzmq, msgpack, sqlite3 and `cryptography`, one loop, one file.
It imports nothing from the project (no service base, no wire models).

    python tom_backup.py --data DIR [--config DIR/node.toml] [--endpoints FILE]

What it does (docs/contract.md, "Backup"): hold sealed chat envelopes for offline recipients
(`backup.hold`, stored before the reply), hand them back (`backup.pending`, and
`router.pass_on` when `router.path` says the recipient is directly connected), end a copy
only on its recipient's signed delivery ACK (`backup.delivered`, `router.confirmation`),
keep that ACK for the origin (`backup.receipts`), count everything (`sys.status`) and drop
copies at their expiry (`backup.expired`). Over tcp endpoints it is a CURVE server admitting
the node's bus keys (docs/contract.md, "Over tcp").

Left out, as a minimal implementation may: replication among holders and the hand-on when it
stops (protocol.md §8.9 steps 4 and 5): the other holders keep their copies.
"""

from __future__ import annotations

import argparse
import fcntl
import ipaddress
import os
import signal
import sqlite3
import sys
import time
import tomllib
from collections import Counter
from pathlib import Path
from typing import Any

import msgpack
import zmq
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

ROLE = "backup"
IMPL = "tom-backup-pyzmq/0.1"
TAG = b"tom/1"
MAX_HEADER = 1024
MAX_BLOBS = 16
MAX_ENVELOPE = 256 * 1024
MAX_LIFETIME_MS = 24 * 3600 * 1000
MAX_FUTURE_MS = 60_000
PASS_ON_BLOBS = 16
PURGE_EVERY_S = 1.0
EARLY_HEARTBEATS_S = (0.2, 0.5, 1.0, 2.0)

ERRORS = {400: "malformed", 401: "bad_tag", 404: "unsupported", 413: "too_large",
          422: "invalid", 426: "version_mismatch", 429: "overloaded", 440: "bad_envelope",
          441: "unsigned", 442: "bad_signature", 447: "expired", 500: "internal"}


class Refused(Exception):
    """A request refused with an error code; ``why`` names its ``refused_*`` counter."""

    def __init__(self, code: int, message: str, why: str | None = None) -> None:
        super().__init__(message)
        self.code, self.message, self.why = code, message, why


class Malformed(Exception):
    def __init__(self, code: int, message: str, parent: bytes | None = None) -> None:
        super().__init__(message)
        self.code, self.message, self.parent = code, message, parent


# -- configuration ---------------------------------------------------------------------------

def load_settings(args: argparse.Namespace) -> dict[str, Any]:
    """node.toml ([bus], [backup]) with TOM_<SECTION>__<KEY> environment overrides."""
    data = Path(args.data)
    path = Path(args.config) if args.config else data / "node.toml"
    conf: dict[str, Any] = {}
    if path.exists():
        with path.open("rb") as f:
            conf = tomllib.load(f)
    out = {"heartbeat_s": 5.0, "request_timeout_s": 2.0, "max_message_bytes": 4 * 2**20,
           "capacity_bytes": 64 * 2**20, "capacity_messages": 50_000}
    for section, key in (("bus", "heartbeat_s"), ("bus", "request_timeout_s"),
                         ("bus", "max_message_bytes"), ("backup", "capacity_bytes"),
                         ("backup", "capacity_messages")):
        value = conf.get(section, {}).get(key, out[key])
        env = os.environ.get(f"TOM_{section.upper()}__{key.upper()}")
        out[key] = type(out[key])(env) if env is not None else value
    return out


def load_endpoints(path: Path) -> dict[str, dict[str, str]]:
    with path.open("rb") as f:
        table = tomllib.load(f)
    if not all(isinstance(table.get(r), dict) and {"rpc", "events"} <= set(table[r])
               for r in (ROLE, "router")):
        raise SystemExit(f"{path}: needs [backup] and [router] tables with rpc and events")
    return table


# -- the store -------------------------------------------------------------------------------

SCHEMA = """
CREATE TABLE IF NOT EXISTS held (origin BLOB, id BLOB, recipient BLOB, hop BLOB,
    expires_ms INTEGER, envelope BLOB, PRIMARY KEY (origin, id));
CREATE INDEX IF NOT EXISTS held_recipient ON held (recipient);
CREATE TABLE IF NOT EXISTS receipts (origin BLOB, id BLOB, expires_ms INTEGER, ack BLOB,
    PRIMARY KEY (origin, id));
"""


# -- envelopes (protocol.md §8.2) ------------------------------------------------------------

def is_bin(v: object, size: int | None = None) -> bool:
    return isinstance(v, bytes) and (size is None or len(v) == size)


def is_uint(v: object) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and v >= 0


def decode_envelope(raw: bytes) -> dict[str, Any]:
    try:
        f = msgpack.unpackb(raw, raw=False, strict_map_key=True)
    except Exception as e:  # noqa: BLE001 - any unpacking failure is a malformed envelope
        raise Refused(440, f"the envelope does not decode: {e}", "malformed") from None
    if not (isinstance(f, list) and len(f) == 10 and is_bin(f[0], 16) and is_bin(f[1], 32)
            and is_bin(f[2], 32) and isinstance(f[3], list) and len(f[3]) <= 4
            and all(is_bin(v, 32) for v in f[3]) and isinstance(f[4], str)
            and 1 <= len(f[4]) <= 32 and is_bin(f[5]) and is_uint(f[6])
            and is_bin(f[7]) and len(f[7]) in (0, 64) and is_uint(f[8]) and f[8] <= 4
            and isinstance(f[9], bool)):
        raise Refused(440, "not an envelope: wrong field count or types", "malformed")
    keys = ("id", "from", "to", "via", "msg_type", "payload", "timestamp", "signature", "ttl",
            "encrypted")
    return dict(zip(keys, f, strict=True))


def check_signature(env: dict[str, Any], what: str) -> None:
    """Ed25519 over "tom/envelope/1" 0x00 + msgpack of every field but signature and ttl."""
    if not env["signature"]:
        raise Refused(441, f"the {what} is unsigned", "unsigned")
    signed = b"tom/envelope/1\x00" + msgpack.packb(
        [env["id"], env["from"], env["to"], env["via"], env["msg_type"], env["payload"],
         env["timestamp"], env["encrypted"]], use_bin_type=True)
    try:
        Ed25519PublicKey.from_public_bytes(env["from"]).verify(env["signature"], signed)
    except (InvalidSignature, ValueError):
        raise Refused(442, f"the {what}'s signature is not its sender's", "forged") from None


def delivery_ack(raw: bytes) -> dict[str, Any]:
    """A signed `Ack` of type RecipientReceived (``original`` = the id it acknowledges)."""
    try:
        ack = decode_envelope(raw)
        payload = msgpack.unpackb(ack["payload"], raw=False) if ack["msg_type"] == "Ack" \
            else None
    except (Refused, ValueError, msgpack.UnpackException):
        payload = None
    if not (isinstance(payload, list) and len(payload) == 2 and is_bin(payload[0], 16)
            and payload[1] == "RecipientReceived"):
        raise Refused(422, "not a delivery ACK", "confirmation_not_ack")
    try:
        check_signature(ack, "ACK")
    except Refused as e:
        e.why = f"confirmation_{e.why}"
        raise
    ack["original"] = payload[0]
    return ack


# -- the service -----------------------------------------------------------------------------

class Backup:
    def __init__(self, data: Path, settings: dict[str, Any],
                 endpoints: dict[str, dict[str, str]]) -> None:
        self.data = data
        self.s = settings
        self.eps = endpoints
        self.ctx = zmq.Context()
        self.stats: Counter[str] = Counter()
        self.errors: Counter[str] = Counter()
        self.counters: Counter[str] = Counter()
        self.started = time.monotonic()
        self.incarnation = os.urandom(8)
        self.msg_prefix, self.msg_n = os.urandom(8), 0
        self.stopping = False
        self.auth: Any = None
        self.db = sqlite3.connect(data / "backup_pyzmq.db", isolation_level=None)
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.executescript(SCHEMA)

    # -- sockets ---------------------------------------------------------------------------

    def bind(self) -> None:
        ep = self.eps[ROLE]
        tcp = any(u.startswith("tcp://") for u in (ep["rpc"], ep["events"]))
        self.rpc = self.ctx.socket(zmq.ROUTER)
        self.pub = self.ctx.socket(zmq.PUB)
        for sock in (self.rpc, self.pub):
            sock.setsockopt(zmq.LINGER, 0)
            sock.setsockopt(zmq.MAXMSGSIZE, 64 * 2**20)
        if tcp:  # CURVE server: only the node's own keys (DATA/bus/*.key) get in
            from zmq.auth.thread import ThreadAuthenticator
            self.auth = ThreadAuthenticator(self.ctx)
            self.auth.start()
            self.auth.configure_curve(domain=ROLE, location=str(self.data / "bus"))
            _, secret = zmq.auth.load_certificate(self.data / "bus" / f"{ROLE}.key_secret")
            for sock in (self.rpc, self.pub):
                sock.curve_server = True
                sock.curve_secretkey = secret
                sock.zap_domain = ROLE.encode()
        for sock, url in ((self.rpc, ep["rpc"]), (self.pub, ep["events"])):
            if url.startswith("ipc://"):
                self.prepare_ipc(url)
            sock.bind(bind_address(url))
        # the router: requests (router.pass_on) and its events
        self.router = self.client(zmq.DEALER, self.eps["router"]["rpc"])
        self.router_events = self.client(zmq.SUB, self.eps["router"]["events"])
        for topic in (b"router.path", b"router.confirmation"):
            self.router_events.setsockopt(zmq.SUBSCRIBE, topic)

    def prepare_ipc(self, url: str) -> None:
        """The run directory (0700, ours), and the lock that keeps a second instance out."""
        path = Path(url[len("ipc://"):])
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        st = path.parent.stat()
        if st.st_uid != os.geteuid():
            raise SystemExit(f"{path.parent} belongs to uid {st.st_uid}, not to this user")
        os.chmod(path.parent, 0o700)
        if url == self.eps[ROLE]["rpc"]:
            self.lock = os.open(f"{path}.lock", os.O_RDWR | os.O_CREAT, 0o600)
            try:
                fcntl.flock(self.lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                raise SystemExit(f"another backup service is serving {url}") from None

    def client(self, kind: int, url: str) -> zmq.Socket:
        sock = self.ctx.socket(kind)
        sock.setsockopt(zmq.LINGER, 0)
        if url.startswith("tcp://"):
            bus = self.data / "bus"
            public, secret = zmq.auth.load_certificate(bus / f"{ROLE}.key_secret")
            server, _ = zmq.auth.load_certificate(bus / "router.key")
            sock.curve_publickey, sock.curve_secretkey, sock.curve_serverkey = (
                public, secret, server)
        sock.connect(url)
        return sock

    # -- frames ----------------------------------------------------------------------------

    def header(self, msg_type: str, parent: bytes | None = None,
               deadline: float | None = None) -> bytes:
        self.msg_n += 1
        h: dict[str, Any] = {"msg_type": msg_type,
                             "msg_id": self.msg_prefix + self.msg_n.to_bytes(8, "big"),
                             "parent_id": parent, "src": ROLE, "ts": time.time()}
        if deadline is not None:
            h["deadline"] = deadline
        return msgpack.packb(h, use_bin_type=True)

    def frames(self, msg_type: str, body: dict[str, Any], blobs: tuple[bytes, ...] = (),
               parent: bytes | None = None) -> list[bytes]:
        return [TAG, self.header(msg_type, parent), msgpack.packb(body, use_bin_type=True),
                *blobs]

    def send(self, sock: zmq.Socket, frames: list[bytes]) -> None:
        try:
            sock.send_multipart(frames, flags=zmq.NOBLOCK)
            self.stats["frames_out"] += 1
        except zmq.ZMQError:
            self.stats["drops"] += 1

    def reply(self, route: list[bytes], msg_type: str, body: dict[str, Any],
              parent: bytes | None, blobs: tuple[bytes, ...] = ()) -> None:
        self.send(self.rpc, [*route, b"", *self.frames(msg_type, body, blobs, parent)])

    def error(self, route: list[bytes], parent: bytes | None, code: int, message: str) -> None:
        name = ERRORS[code]
        self.errors[name] += 1
        self.reply(route, "sys.error", {"code": code, "name": name, "message": message}, parent)

    def publish(self, msg_type: str, body: dict[str, Any], blobs: tuple[bytes, ...] = ()
                ) -> None:
        self.send(self.pub, [msg_type.encode(), *self.frames(msg_type, body, blobs)])

    def parse(self, rest: list[bytes]) -> tuple[dict[str, Any], dict[str, Any], list[bytes]]:
        """Protocol.md §3, "Decoding order": (header, body, blobs), or Malformed."""
        if sum(map(len, rest)) > self.s["max_message_bytes"]:
            raise Malformed(413, "the message exceeds the bus limit")
        if len(rest) < 3:
            raise Malformed(400, "a message has a tag, a header and a body frame")
        if rest[0] != TAG:
            if rest[0].startswith(b"tom/"):
                raise Malformed(426, f"this service speaks {TAG.decode()}")
            raise Malformed(401, "not a ToM bus message")
        if len(rest[1]) > MAX_HEADER:
            raise Malformed(413, "the header exceeds 1 KiB")
        try:
            h = msgpack.unpackb(rest[1], raw=False)
        except Exception:  # noqa: BLE001
            raise Malformed(400, "the header is not msgpack") from None
        if not (isinstance(h, dict) and isinstance(h.get("msg_type"), str)
                and 1 <= len(h["msg_type"]) <= 64 and is_bin(h.get("msg_id"))
                and 1 <= len(h["msg_id"]) <= 32 and isinstance(h.get("src"), str)
                and isinstance(h.get("ts"), (int, float)) and not isinstance(h["ts"], bool)
                and (h.get("parent_id") is None or is_bin(h["parent_id"]))
                and (h.get("deadline") is None or (isinstance(h["deadline"], (int, float))
                                                   and not isinstance(h["deadline"], bool)))):
            raise Malformed(400, "the header lacks a required key or has a wrong type")
        parent = h["msg_id"]
        if len(rest) - 3 > MAX_BLOBS:
            raise Malformed(413, f"more than {MAX_BLOBS} blob frames", parent)
        try:
            body = msgpack.unpackb(rest[2], raw=False)
        except Exception:  # noqa: BLE001
            raise Malformed(400, "the body is not msgpack", parent) from None
        if not isinstance(body, dict):
            raise Malformed(400, "the body is not a map", parent)
        return h, body, rest[3:]

    # -- requests --------------------------------------------------------------------------

    def on_request(self, frames: list[bytes]) -> None:
        self.stats["frames_in"] += 1
        split = frames.index(b"") if b"" in frames[1:] else -1
        route, rest = (frames[:split], frames[split + 1:]) if split > 0 else (frames[:1], [])
        try:
            if split <= 0:
                raise Malformed(400, "no empty delimiter frame after the routing frames")
            h, body, blobs = self.parse(rest)
        except Malformed as e:
            self.stats["decode_errors"] += 1
            return self.error(route, e.parent, e.code, e.message)
        parent, msg_type = h["msg_id"], h["msg_type"]
        if h.get("deadline") is not None and h["deadline"] < time.time():
            self.counters["expired_requests"] += 1  # the caller gave up on it
            return None
        handler = REQUESTS.get(msg_type)
        if handler is None:
            self.stats["decode_errors"] += 1
            return self.error(route, parent, 404, f"the backup service does not handle "
                                                  f"{msg_type}")
        try:
            fields = validate(msg_type, body)
        except ValueError as e:
            self.stats["decode_errors"] += 1
            return self.error(route, parent, 422, f"{msg_type}: {e}")
        try:
            out = handler(self, fields, tuple(blobs))
        except Refused as e:
            if e.why:
                self.counters[f"refused_{e.why}"] += 1
            return self.error(route, parent, e.code, e.message)
        except Exception as e:  # noqa: BLE001 - a bug: answered, logged, counted
            self.counters["internal_errors"] += 1
            print(f"{IMPL}: internal error in {msg_type}: {e!r}", file=sys.stderr, flush=True)
            return self.error(route, parent, 500, f"internal error: {e}")
        reply_type, reply_body, reply_blobs = out
        self.reply(route, reply_type, reply_body, parent, reply_blobs)

    def ping(self, _f: dict[str, Any], _b: tuple[bytes, ...]) -> Any:
        return "sys.ping_reply", {"service": ROLE, "impl": IMPL, "pid": os.getpid()}, ()

    def shutdown(self, _f: dict[str, Any], _b: tuple[bytes, ...]) -> Any:
        self.stopping = True
        return "sys.shutdown_reply", {}, ()

    def status(self, _f: dict[str, Any], _b: tuple[bytes, ...]) -> Any:
        held, size = self.db.execute("SELECT count(*), coalesce(sum(length(envelope)), 0) "
                                     "FROM held").fetchone()
        return "sys.status_reply", {
            "service": ROLE, "impl": IMPL, "pid": os.getpid(),
            "uptime_s": round(time.monotonic() - self.started, 3),
            "frames_in": self.stats["frames_in"], "frames_out": self.stats["frames_out"] + 1,
            "decode_errors": self.stats["decode_errors"], "drops": self.stats["drops"],
            "errors": dict(self.errors), "queues": {"held": held, "held_bytes": size},
            "counters": dict(self.counters)}, ()

    def hold(self, f: dict[str, Any], blobs: tuple[bytes, ...]) -> Any:
        if len(blobs) != 1:
            raise Refused(422, "expected one blob: the sealed envelope", "malformed")
        raw = blobs[0]
        if len(raw) > MAX_ENVELOPE:
            raise Refused(413, f"the envelope exceeds {MAX_ENVELOPE} bytes", "oversize")
        env = decode_envelope(raw)
        now = int(time.time() * 1000)
        if env["msg_type"] != "Chat" or not env["encrypted"]:
            raise Refused(422, "only end-to-end encrypted chat envelopes are held",
                          "not_sealed")
        if env["timestamp"] > now + MAX_FUTURE_MS:
            raise Refused(422, "the envelope's timestamp is in the future", "future")
        check_signature(env, "envelope")
        expires = min(f["expires_ms"], env["timestamp"] + MAX_LIFETIME_MS)
        if expires <= now:
            raise Refused(447, "the message has no lifetime left", "expired")
        key = (env["from"], env["id"])
        if self.db.execute("SELECT 1 FROM held WHERE origin=? AND id=?", key).fetchone():
            return "backup.hold_reply", {"expires_ms": expires, "already": True}, ()
        hop = f["hop"] or env["from"]
        total, total_bytes = self.db.execute(
            "SELECT count(*), coalesce(sum(length(envelope)), 0) FROM held").fetchone()
        mine, mine_bytes = self.db.execute(
            "SELECT count(*), coalesce(sum(length(envelope)), 0) FROM held WHERE hop=?",
            (hop,)).fetchone()
        cap_n, cap_b = self.s["capacity_messages"], self.s["capacity_bytes"]
        if total + 1 > cap_n or total_bytes + len(raw) > cap_b:
            raise Refused(429, "this node's backup store is full", "full")
        # one handing-over peer fills at most half of what the others leave free
        if mine + 1 > (cap_n - (total - mine)) // 2 or \
                mine_bytes + len(raw) > (cap_b - (total_bytes - mine_bytes)) // 2:
            raise Refused(429, "that peer's share of this node's backup store is used up",
                          "share")
        with self.db:  # committed before the reply: it survives a kill -9 after it
            self.db.execute("INSERT INTO held VALUES (?, ?, ?, ?, ?, ?)",
                            (*key, env["to"], hop, expires, raw))
        self.counters["held"] += 1
        return "backup.hold_reply", {"expires_ms": expires, "already": False}, ()

    def pending(self, f: dict[str, Any], _b: tuple[bytes, ...]) -> Any:
        rows = self.db.execute("SELECT id, origin, expires_ms, envelope FROM held WHERE "
                               "recipient=? ORDER BY rowid LIMIT ?",
                               (f["recipient"], f["limit"] + 1)).fetchall()
        page = rows[:f["limit"]]
        return "backup.pending_reply", {
            "envelopes": [{"id": i, "origin": o, "expires_ms": e} for i, o, e, _ in page],
            "more": len(rows) > f["limit"]}, tuple(r[3] for r in page)

    def delivered(self, _f: dict[str, Any], blobs: tuple[bytes, ...]) -> Any:
        if len(blobs) != 1:
            raise Refused(422, "expected one blob: the delivery ACK envelope",
                          "confirmation_malformed")
        return "backup.delivered_reply", {"deleted": self.confirm(blobs[0]) is not None}, ()

    def confirm(self, raw: bytes) -> bytes | None:
        """End the copy a recipient's signed ACK names; returns its origin if one ended."""
        ack = delivery_ack(raw)
        origin, msg_id = ack["to"], ack["original"]
        row = self.db.execute("SELECT recipient, expires_ms FROM held WHERE origin=? AND "
                              "id=?", (origin, msg_id)).fetchone()
        if row is None:
            self.counters["confirmations_unknown"] += 1
            return None
        if ack["from"] != row[0]:
            raise Refused(422, "only the message's recipient can confirm its delivery",
                          "confirmation_not_recipient")
        with self.db:
            self.db.execute("DELETE FROM held WHERE origin=? AND id=?", (origin, msg_id))
            self.db.execute("INSERT OR REPLACE INTO receipts VALUES (?, ?, ?, ?)",
                            (origin, msg_id, row[1], raw))
        self.counters["delivered"] += 1
        return origin

    def receipts(self, f: dict[str, Any], _b: tuple[bytes, ...]) -> Any:
        acks = [r[0] for r in self.db.execute("SELECT ack FROM receipts WHERE origin=? "
                                              "ORDER BY rowid LIMIT ?",
                                              (f["origin"], f["limit"]))]
        return "backup.receipts_reply", {"count": len(acks)}, tuple(acks)

    def summary(self, _f: dict[str, Any], _b: tuple[bytes, ...]) -> Any:
        def usage(column: str) -> list[dict[str, Any]]:
            return [{"node_id": n, "messages": c, "bytes": b} for n, c, b in self.db.execute(
                f"SELECT {column}, count(*), sum(length(envelope)) FROM held GROUP BY "
                f"{column} ORDER BY count(*) DESC LIMIT 50")]

        held, size = self.db.execute("SELECT count(*), coalesce(sum(length(envelope)), 0) "
                                     "FROM held").fetchone()
        (receipts,) = self.db.execute("SELECT count(*) FROM receipts").fetchone()
        return "backup.summary_reply", {
            "messages": held, "bytes": size, "receipts": receipts,
            "capacity_bytes": self.s["capacity_bytes"],
            "capacity_messages": self.s["capacity_messages"],
            "origins": usage("hop"), "recipients": usage("recipient")}, ()

    # -- the router's events ---------------------------------------------------------------

    def on_router_event(self, frames: list[bytes]) -> None:
        self.stats["frames_in"] += 1
        try:
            _, body, blobs = self.parse(frames[1:])
        except Malformed:
            self.stats["decode_errors"] += 1
            return
        if frames[0] == b"router.path" and body.get("path") == "direct" \
                and is_bin(body.get("node_id"), 32):
            self.give(body["node_id"])
        elif frames[0] == b"router.confirmation" and len(blobs) == 1:
            try:
                origin = self.confirm(blobs[0])
            except Refused as e:
                self.counters[f"refused_{e.why}"] += 1
                return
            if origin is not None:  # the origin learns of it if it is connected now
                self.pass_on(origin, [blobs[0]])

    def give(self, node: bytes) -> None:
        """A node is directly connected: what is held for it, and its receipts."""
        held = [r[0] for r in self.db.execute("SELECT envelope FROM held WHERE recipient=? "
                                              "ORDER BY rowid LIMIT 256", (node,))]
        acks = [r[0] for r in self.db.execute("SELECT ack FROM receipts WHERE origin=? "
                                              "LIMIT 256", (node,))]
        self.pass_on(node, acks + held)

    def pass_on(self, to: bytes, blobs: list[bytes]) -> None:
        for i in range(0, len(blobs), PASS_ON_BLOBS):
            self.counters["passed_on"] += len(blobs[i:i + PASS_ON_BLOBS])
            deadline = time.time() + self.s["request_timeout_s"]
            self.send(self.router, [b"", TAG, self.header("router.pass_on", None, deadline),
                                    msgpack.packb({"to": to}, use_bin_type=True),
                                    *blobs[i:i + PASS_ON_BLOBS]])

    # -- time ------------------------------------------------------------------------------

    def purge(self) -> None:
        now = int(time.time() * 1000)
        gone = self.db.execute("SELECT origin, id, recipient FROM held WHERE expires_ms <= ?",
                               (now,)).fetchall()
        with self.db:
            self.db.execute("DELETE FROM held WHERE expires_ms <= ?", (now,))
            self.db.execute("DELETE FROM receipts WHERE expires_ms <= ?", (now,))
        for origin, msg_id, recipient in gone:
            self.counters["expired"] += 1
            self.publish("backup.expired", {"id": msg_id, "origin": origin,
                                            "recipient": recipient})

    def run(self) -> int:
        self.bind()
        self.publish("sys.ready", {"service": ROLE, "impl": IMPL, "pid": os.getpid(),
                                   "incarnation": self.incarnation})
        beats = [self.started + t for t in EARLY_HEARTBEATS_S]
        next_purge = 0.0
        poller = zmq.Poller()
        for sock in (self.rpc, self.router, self.router_events):
            poller.register(sock, zmq.POLLIN)
        while not self.stopping:
            ready = dict(poller.poll(50))
            for _ in range(1000):  # a bounded batch per socket and turn
                if self.rpc not in ready or not self.rpc.poll(0) or self.stopping:
                    break
                self.on_request(self.rpc.recv_multipart())
            while self.router.poll(0):  # the router's replies to router.pass_on: noted
                self.router.recv_multipart()
                self.stats["frames_in"] += 1
            while self.router_events.poll(0):
                self.on_router_event(self.router_events.recv_multipart())
            now = time.monotonic()
            if now >= (beats[0] if beats else 0):
                self.publish("sys.heartbeat", {"service": ROLE, "uptime_s": now - self.started,
                                               "incarnation": self.incarnation})
                beats = beats[1:] or [now + self.s["heartbeat_s"]]
            if now >= next_purge:
                next_purge = now + PURGE_EVERY_S
                self.purge()
        return 0

    def close(self) -> None:
        self.db.close()
        if self.auth is not None:
            self.auth.stop()
        self.ctx.destroy(linger=0)


# -- request bodies (the catalogue of protocol.md §9), checked strictly ----------------------

def validate(msg_type: str, body: dict[str, Any]) -> dict[str, Any]:
    """The known fields of ``body`` with their defaults; unknown fields are ignored;
    ValueError for a known field of the wrong type (no coercion)."""
    def node_id(v: object) -> bool:
        return is_bin(v, 32)

    def limit(v: object) -> bool:
        return isinstance(v, int) and not isinstance(v, bool) and 1 <= v <= 16

    spec: dict[str, tuple[Any, Any]] = {
        "backup.hold": {"expires_ms": (None, is_uint),
                        "hop": (None, lambda v: v is None or node_id(v)),
                        "holders": ([], lambda v: isinstance(v, list) and len(v) <= 8
                                    and all(node_id(x) for x in v))},
        "backup.pending": {"recipient": (None, node_id), "limit": (16, limit)},
        "backup.receipts": {"origin": (None, node_id), "limit": (16, limit)},
    }.get(msg_type, {})  # type: ignore[assignment]
    out = {}
    for name, (default, ok) in spec.items():
        if name not in body:
            if default is None and name != "hop":
                raise ValueError(f"{name} is required")
            out[name] = default
        elif not ok(body[name]):
            raise ValueError(f"{name} has the wrong type or is out of range")
        else:
            out[name] = body[name]
    return out


REQUESTS = {
    "sys.ping": Backup.ping, "sys.status": Backup.status, "sys.shutdown": Backup.shutdown,
    "backup.hold": Backup.hold, "backup.pending": Backup.pending,
    "backup.delivered": Backup.delivered, "backup.receipts": Backup.receipts,
    "backup.summary": Backup.summary,
}


def bind_address(url: str) -> str:
    """A tcp host that is a name (``tcp://backup:7108``) is bound on every interface."""
    if not url.startswith("tcp://"):
        return url
    host, _, port = url[len("tcp://"):].rpartition(":")
    try:
        ipaddress.ip_address(host.strip("[]"))
        return url
    except ValueError:
        return f"tcp://*:{port}"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="tom-backup-pyzmq")
    p.add_argument("--data", default=os.environ.get("TOM_HOME", str(Path.home() / ".tom")))
    p.add_argument("--config", default=None)
    p.add_argument("--endpoints", default=None)
    p.add_argument("--log-level", default=None)  # accepted like the node's own services
    args = p.parse_args(argv)
    data = Path(args.data)
    try:
        settings = load_settings(args)
        endpoints = load_endpoints(Path(args.endpoints) if args.endpoints
                                   else data / "endpoints.toml")
    except (OSError, ValueError, tomllib.TOMLDecodeError) as e:
        print(f"tom-backup-pyzmq: cannot start: {e}", file=sys.stderr)
        return 2
    service = Backup(data, settings, endpoints)

    def stop(_sig: int, _frame: object) -> None:
        service.stopping = True

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    try:
        return service.run()
    except zmq.ZMQError as e:
        print(f"tom-backup-pyzmq: cannot open the bus sockets: {e}", file=sys.stderr)
        return 2
    finally:
        service.close()


if __name__ == "__main__":
    raise SystemExit(main())
