"""The router's SQLite file: outbox (sent messages and their status), inbox (received
messages, which is also the replay-protection record), and the peers with history
(bootstrap peers and contacts; strangers are never written here, issue 13).

The core calls it synchronously (SQLite is a local library call, not a socket); writes are
committed by :meth:`Store.commit`, which the core runs once per batch of inputs before it
answers the requests of that batch, so "accepted" always means "on disk". WAL with
``synchronous=NORMAL``: a committed transaction survives the process being killed (not
necessarily a power cut). Unit tests use ``":memory:"``.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

SCHEMA = """
CREATE TABLE IF NOT EXISTS outbox (
    id BLOB PRIMARY KEY, recipient BLOB NOT NULL, envelope BLOB NOT NULL,
    status INTEGER NOT NULL, reason TEXT NOT NULL DEFAULT '',
    created_ms INTEGER NOT NULL, updated_ms INTEGER NOT NULL, attempts INTEGER NOT NULL,
    expires_ms INTEGER NOT NULL DEFAULT 0, relay BLOB NOT NULL DEFAULT x'',
    holders BLOB NOT NULL DEFAULT x''
);
CREATE INDEX IF NOT EXISTS outbox_open ON outbox (status);
CREATE TABLE IF NOT EXISTS inbox (
    seq INTEGER PRIMARY KEY AUTOINCREMENT, id BLOB NOT NULL, sender BLOB NOT NULL,
    timestamp_ms INTEGER NOT NULL, encrypted INTEGER NOT NULL, relayed INTEGER NOT NULL,
    payload BLOB NOT NULL, received_ms INTEGER NOT NULL, read INTEGER NOT NULL DEFAULT 0,
    envelope BLOB NOT NULL DEFAULT x'', hop BLOB NOT NULL DEFAULT x'',
    kind INTEGER NOT NULL DEFAULT 0, UNIQUE (sender, id)
);
CREATE INDEX IF NOT EXISTS inbox_age ON inbox (received_ms);
CREATE TABLE IF NOT EXISTS peers (
    node_id BLOB PRIMARY KEY, host TEXT NOT NULL, port INTEGER NOT NULL,
    bootstrap INTEGER NOT NULL, last_seen_ms INTEGER NOT NULL,
    contact INTEGER NOT NULL DEFAULT 0
);
"""
MIGRATIONS = (
    ("inbox", "envelope", "ALTER TABLE inbox ADD COLUMN envelope BLOB NOT NULL DEFAULT x''"),
    ("inbox", "hop", "ALTER TABLE inbox ADD COLUMN hop BLOB NOT NULL DEFAULT x''"),
    ("peers", "contact", "ALTER TABLE peers ADD COLUMN contact INTEGER NOT NULL DEFAULT 0"),
    ("outbox", "expires_ms",
     "ALTER TABLE outbox ADD COLUMN expires_ms INTEGER NOT NULL DEFAULT 0"),
    ("inbox", "kind", "ALTER TABLE inbox ADD COLUMN kind INTEGER NOT NULL DEFAULT 0"),
    ("outbox", "relay", "ALTER TABLE outbox ADD COLUMN relay BLOB NOT NULL DEFAULT x''"),
    ("outbox", "holders", "ALTER TABLE outbox ADD COLUMN holders BLOB NOT NULL DEFAULT x''"),
)
"""Columns added since the first release: (table, column, how to add it)."""
INDEXES = """
CREATE INDEX IF NOT EXISTS inbox_unread ON inbox (seq) WHERE read = 0 AND kind = 0;
"""
"""Indexes on columns that :data:`MIGRATIONS` may have just added (made after them)."""
CHAT, GROUP = 0, 1
"""Inbox kinds: a chat for the app, a group envelope for the groups service."""
_SIZE = "sum(length(payload) + length(envelope))"
"""What a received message costs the inbox quotas (services/router/quota.py), in SQL."""


@dataclass
class OutRow:
    id: bytes
    recipient: bytes
    envelope: bytes
    status: int
    reason: str
    created_ms: int
    updated_ms: int
    attempts: int
    expires_ms: int = 0
    """When it fails unacknowledged, Unix ms; 0: the router's message lifetime."""
    relay: bytes = b""
    """The relay the app named (``router.send`` ``relay``), b"" if none."""
    holders: bytes = b""
    """The node ids (32 bytes each) of the holders that keep a copy (backup hand-off)."""


@dataclass
class InRow:
    seq: int
    id: bytes
    sender: bytes
    timestamp_ms: int
    encrypted: bool
    relayed: bool
    payload: bytes
    read: bool = False


class Store:
    def __init__(self, path: Path | str) -> None:
        self.db = sqlite3.connect(str(path), isolation_level="DEFERRED")
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=NORMAL")
        self.db.executescript(SCHEMA)
        for table, column, sql in MIGRATIONS:
            if column not in {r[1] for r in self.db.execute(f"PRAGMA table_info({table})")}:
                self.db.execute(sql)
        self.db.executescript(INDEXES)
        # peers without history were written by earlier versions: forget them
        self.db.execute("DELETE FROM peers WHERE bootstrap=0 AND contact=0")
        self.db.commit()
        self.dirty = False
        """Written since the last commit, and something waits for it to be on disk."""
        self.pending = False
        """Written since the last commit, and nothing waits for it (:meth:`update_out`
        with ``lazy``): it rides on the next commit."""

    def commit(self) -> None:
        """Commit, if something written waits for it (lazy writes go along)."""
        if self.dirty:
            self.db.commit()
            self.dirty = self.pending = False

    def commit_all(self) -> None:
        """Commit whatever was written, lazy writes included (the core's tick)."""
        if self.dirty or self.pending:
            self.db.commit()
            self.dirty = self.pending = False

    def close(self) -> None:
        self.commit_all()
        self.db.close()

    # -- outbox ---------------------------------------------------------------------------

    def put_out(self, r: OutRow) -> None:
        self.db.execute("INSERT OR REPLACE INTO outbox VALUES (?,?,?,?,?,?,?,?,?,?,?)",
                        (r.id, r.recipient, r.envelope, r.status, r.reason, r.created_ms,
                         r.updated_ms, r.attempts, r.expires_ms, r.relay, r.holders))
        self.dirty = True

    def update_out(self, msg_id: bytes, status: int, reason: str, updated_ms: int,
                   attempts: int, envelope: bytes | None = None, lazy: bool = False) -> None:
        """``lazy``: a status that is redone if a crash loses it (docs/architecture.md,
        router decisions), committed with the next commit something waits for, or at the
        core's next tick."""
        if envelope is None:
            self.db.execute("UPDATE outbox SET status=?, reason=?, updated_ms=?, attempts=? "
                            "WHERE id=?", (status, reason, updated_ms, attempts, msg_id))
        else:
            self.db.execute("UPDATE outbox SET status=?, reason=?, updated_ms=?, attempts=?, "
                            "envelope=? WHERE id=?",
                            (status, reason, updated_ms, attempts, envelope, msg_id))
        if lazy:
            self.pending = True
        else:
            self.dirty = True

    def set_holders(self, msg_id: bytes, holders: bytes) -> None:
        self.db.execute("UPDATE outbox SET holders=? WHERE id=?", (holders, msg_id))
        self.dirty = True

    def has_out(self, msg_id: bytes) -> bool:
        return self.db.execute("SELECT 1 FROM outbox WHERE id=?", (msg_id,)).fetchone() \
            is not None

    def get_out(self, msg_id: bytes) -> OutRow | None:
        row = self.db.execute("SELECT * FROM outbox WHERE id=?", (msg_id,)).fetchone()
        return OutRow(*row) if row else None

    def open_out(self, below: int) -> Iterator[OutRow]:
        """Messages whose status is below ``below`` (not yet delivered nor failed)."""
        for row in self.db.execute("SELECT * FROM outbox WHERE status < ?", (below,)):
            yield OutRow(*row)

    def latest_out(self, limit: int) -> list[OutRow]:
        rows = self.db.execute("SELECT * FROM outbox ORDER BY created_ms DESC LIMIT ?",
                               (limit,)).fetchall()
        return [OutRow(*r) for r in rows]

    def purge_out(self, before_ms: int) -> int:
        n = self.db.execute("DELETE FROM outbox WHERE updated_ms < ?", (before_ms,)).rowcount
        self.dirty = self.dirty or n > 0
        return n

    # -- inbox ----------------------------------------------------------------------------

    def has_in(self, sender: bytes, msg_id: bytes, kind: int | None = None) -> bool:
        if kind is None:
            return self.db.execute("SELECT 1 FROM inbox WHERE sender=? AND id=?",
                                   (sender, msg_id)).fetchone() is not None
        return self.db.execute("SELECT 1 FROM inbox WHERE sender=? AND id=? AND kind=?",
                               (sender, msg_id, kind)).fetchone() is not None

    def put_in(self, msg_id: bytes, sender: bytes, timestamp_ms: int, encrypted: bool,
               relayed: bool, payload: bytes, received_ms: int, envelope: bytes = b"",
               hop: bytes = b"", kind: int = CHAT) -> int | None:
        """Store a received message (and the signed envelope it came in: crypto signs its
        read receipt only with it; and the peer that delivered it, for the quotas); its
        seq, or None if it was already there."""
        cur = self.db.execute(
            "INSERT OR IGNORE INTO inbox (id, sender, timestamp_ms, encrypted, relayed, "
            "payload, received_ms, envelope, hop, kind) VALUES (?,?,?,?,?,?,?,?,?,?)",
            (msg_id, sender, timestamp_ms, int(encrypted), int(relayed), payload, received_ms,
             envelope, hop, kind))
        self.dirty = True
        return cur.lastrowid if cur.rowcount else None

    def inbox_after(self, after: int, limit: int, kind: int = CHAT, unread: bool = False,
                    newest: bool = False) -> list[InRow]:
        """Up to ``limit`` messages of ``kind`` with a seq above ``after``, in seq order: the
        oldest of them, or with ``newest`` the newest; with ``unread`` only those not marked
        read."""
        # kind and read as literals: the partial index inbox_unread serves unread reads
        where = f"seq > ? AND kind = {int(kind)}" + (" AND read = 0" if unread else "")
        rows = self.db.execute(
            "SELECT seq, id, sender, timestamp_ms, encrypted, relayed, payload, read FROM inbox "
            f"WHERE {where} ORDER BY seq {'DESC' if newest else ''} LIMIT ?",
            (after, limit)).fetchall()
        if newest:
            rows.reverse()
        return [InRow(s, i, f, t, bool(e), bool(r), p, bool(d))
                for s, i, f, t, e, r, p, d in rows]

    def unread_count(self) -> int:
        """How many of the apps' messages are not marked read."""
        return int(self.db.execute("SELECT count(*) FROM inbox WHERE read = 0 AND kind = 0"
                                   ).fetchone()[0])

    def envelope_in(self, sender: bytes, msg_id: bytes) -> bytes:
        """The signed envelope a received message came in (empty for rows stored before
        envelopes were kept)."""
        row = self.db.execute("SELECT envelope FROM inbox WHERE sender=? AND id=?",
                              (sender, msg_id)).fetchone()
        return bytes(row[0]) if row else b""

    def inbox_tail(self, kind: int = CHAT) -> int:
        """The seq of the newest message of ``kind`` in the inbox (0 if none)."""
        return int(self.db.execute("SELECT COALESCE(MAX(seq), 0) FROM inbox WHERE kind = ?",
                                   (kind,)).fetchone()[0])

    def mark_read(self, sender: bytes, msg_id: bytes) -> bool:
        """Mark a received message read (committed with the batch, like every write); False
        if unknown or already read."""
        n = self.db.execute("UPDATE inbox SET read=1 WHERE sender=? AND id=? AND read=0 "
                            "AND kind=0",
                            (sender, msg_id)).rowcount
        self.dirty = self.dirty or n > 0
        return n > 0

    def inbox_usage(self) -> list[tuple[bytes, bytes, int, int]]:
        """(sender, hop, messages, bytes of payloads and envelopes) of the whole inbox."""
        return self.db.execute(f"SELECT sender, hop, count(*), {_SIZE} FROM inbox "
                               "GROUP BY sender, hop").fetchall()

    def purge_in(self, before_ms: int) -> list[tuple[bytes, bytes, int, int]]:
        """Forget messages received before ``before_ms`` whose timestamp is also before it
        (the freshness check, which goes by the timestamp, refuses them now: a copy whose
        timestamp was ahead is kept until it is stale too); return what went, as
        (sender, hop, messages, bytes of payloads and envelopes)."""
        where = "WHERE received_ms < ?1 AND timestamp_ms < ?1"
        gone = self.db.execute(f"SELECT sender, hop, count(*), {_SIZE} FROM inbox "
                               f"{where} GROUP BY sender, hop", (before_ms,)).fetchall()
        if gone:
            self.db.execute(f"DELETE FROM inbox {where}", (before_ms,))
            self.dirty = True
        return gone

    # -- peers ----------------------------------------------------------------------------

    def put_peer(self, node_id: bytes, host: str, port: int, bootstrap: bool,
                 last_seen_ms: int, contact: bool = False) -> None:
        self.db.execute(
            "INSERT INTO peers VALUES (?,?,?,?,?,?) ON CONFLICT(node_id) DO UPDATE SET "
            "host=excluded.host, port=excluded.port, last_seen_ms=excluded.last_seen_ms, "
            "bootstrap=max(bootstrap, excluded.bootstrap), "
            "contact=max(contact, excluded.contact)",
            (node_id, host, port, int(bootstrap), last_seen_ms, int(contact)))
        self.dirty = True

    def set_address(self, node_id: bytes, host: str, port: int, bootstrap: bool) -> None:
        """A saved peer's address and bootstrap flag, as given (an address that turned out
        to belong to another node is forgotten; such a peer is no longer dialled)."""
        self.db.execute("UPDATE peers SET host=?, port=?, bootstrap=? WHERE node_id=?",
                        (host, port, int(bootstrap), node_id))
        self.dirty = True

    def peers(self) -> list[tuple[bytes, str, int, bool, int, bool]]:
        """(node id, host, port, bootstrap, last seen, contact) of every saved peer."""
        return [(n, h, p, bool(b), s, bool(c)) for n, h, p, b, s, c in
                self.db.execute("SELECT node_id, host, port, bootstrap, last_seen_ms, contact "
                                "FROM peers")]

    def delete_peers(self, nodes: list[bytes]) -> None:
        """Forget saved peers (bootstrap peers stay)."""
        if nodes:
            self.db.executemany("DELETE FROM peers WHERE node_id=? AND bootstrap=0",
                                [(n,) for n in nodes])
            self.dirty = True

    def prune_peers(self, keep: int) -> int:
        """Keep every bootstrap peer and at most ``keep`` contacts (the most recently
        seen); return how many went."""
        n = self.db.execute(
            "DELETE FROM peers WHERE bootstrap=0 AND node_id NOT IN (SELECT node_id FROM "
            "peers WHERE bootstrap=0 ORDER BY last_seen_ms DESC LIMIT ?)", (keep,)).rowcount
        self.dirty = self.dirty or n > 0
        return n

    def contacts(self) -> list[bytes]:
        """The recipients of the messages in the outbox."""
        return [r[0] for r in self.db.execute("SELECT DISTINCT recipient FROM outbox")]
