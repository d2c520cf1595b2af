"""The groups service's SQLite file: groups, their logs (ciphertext only), sender keys,
this node's messages not yet ordered by a hub, invitations, and the router inbox cursor.

Like the router's store, writes are committed once per batch of inputs (:meth:`commit`)
before replies leave, so what a request was told is on disk. Nothing here is plaintext: the
log keeps each message as the sender's ciphertext, and history is decrypted on demand.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any

import msgpack

from .state import GroupState
from .wire import Entry, entry_decode, snapshot_from

SCHEMA = """
CREATE TABLE IF NOT EXISTS groups (
    gid TEXT PRIMARY KEY, hub BLOB NOT NULL, snapshot BLOB NOT NULL
);
CREATE TABLE IF NOT EXISTS log (
    gid TEXT NOT NULL, seq INTEGER NOT NULL, term INTEGER NOT NULL, ts_ms INTEGER NOT NULL,
    entry BLOB NOT NULL, sender BLOB, mid BLOB, shown INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (gid, seq)
);
CREATE UNIQUE INDEX IF NOT EXISTS log_msg ON log (gid, sender, mid) WHERE mid IS NOT NULL;
CREATE INDEX IF NOT EXISTS log_age ON log (ts_ms);
CREATE TABLE IF NOT EXISTS keys (
    gid TEXT NOT NULL, owner BLOB NOT NULL, epoch INTEGER NOT NULL, key BLOB NOT NULL,
    created_ms INTEGER NOT NULL, used INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (gid, owner, epoch)
);
CREATE TABLE IF NOT EXISTS outbox (
    gid TEXT NOT NULL, mid BLOB NOT NULL, epoch INTEGER NOT NULL, ct BLOB NOT NULL,
    created_ms INTEGER NOT NULL, PRIMARY KEY (gid, mid)
);
CREATE TABLE IF NOT EXISTS invites (
    gid TEXT PRIMARY KEY, name TEXT NOT NULL, hub BLOB NOT NULL, inviter BLOB NOT NULL,
    expires_ms INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS invited (
    gid TEXT NOT NULL, node BLOB NOT NULL, expires_ms INTEGER NOT NULL,
    PRIMARY KEY (gid, node)
);
CREATE TABLE IF NOT EXISTS meta (k TEXT PRIMARY KEY, v INTEGER NOT NULL);
"""


class Store:
    def __init__(self, path: Path | str) -> None:
        self.db = sqlite3.connect(str(path), isolation_level="DEFERRED")
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=NORMAL")
        self.db.executescript(SCHEMA)
        self.db.commit()
        self.dirty = False

    def _w(self, sql: str, args: tuple[Any, ...] = ()) -> int:
        self.dirty = True
        return self.db.execute(sql, args).rowcount

    def commit(self) -> None:
        if self.dirty:
            self.db.commit()
            self.dirty = False

    def close(self) -> None:
        self.commit()
        self.db.close()

    # -- groups ---------------------------------------------------------------------------

    def put_group(self, g: GroupState) -> None:
        self._w("INSERT OR REPLACE INTO groups VALUES (?,?,?)",
                (g.group_id, g.hub, msgpack.packb(g.snapshot().pack(), use_bin_type=True)))

    def delete_group(self, gid: str) -> None:
        for table in ("groups", "log", "keys", "outbox", "invited"):
            self._w(f"DELETE FROM {table} WHERE gid=?", (gid,))

    def groups(self) -> list[GroupState]:
        return [GroupState.from_snapshot(gid, hub, snapshot_from(msgpack.unpackb(s)))
                for gid, hub, s in self.db.execute("SELECT gid, hub, snapshot FROM groups")]

    # -- the log --------------------------------------------------------------------------

    def put_entry(self, gid: str, e: Entry) -> int:
        """Append an entry: 1 if new; 2 if it is a message shown before at a place a new
        hub did not keep (it keeps its new place, and is not shown again); 0 if that
        message or that seq is already there."""
        mid = e.args[1] if e.kind == "msg" else None
        shown = 0
        if mid is not None:
            row = self.db.execute("SELECT seq, shown FROM log WHERE gid=? AND sender=? AND "
                                  "mid=?", (gid, e.sender, mid)).fetchone()
            if row is not None and row[0] > 0:
                return 0
            if row is not None:
                self._w("DELETE FROM log WHERE gid=? AND seq=?", (gid, row[0]))
                shown = 2 if row[1] else 0
        n = self._w("INSERT OR IGNORE INTO log (gid, seq, term, ts_ms, entry, sender, mid, "
                    "shown) VALUES (?,?,?,?,?,?,?,?)", (gid, e.seq, e.term, e.ts_ms, e.encode(),
                                                        e.sender or None, mid, int(shown > 0)))
        return (shown or 1) if n else 0

    def has_message(self, gid: str, sender: bytes, mid: bytes) -> int:
        """The seq of that message in the log, or 0."""
        row = self.db.execute("SELECT seq FROM log WHERE gid=? AND sender=? AND mid=?",
                              (gid, sender, mid)).fetchone()
        return int(row[0]) if row else 0

    def entries_after(self, gid: str, after: int, limit: int) -> list[Entry]:
        return [entry_decode(r[0]) for r in self.db.execute(
            "SELECT entry FROM log WHERE gid=? AND seq>? ORDER BY seq LIMIT ?",
            (gid, after, limit))]

    def first_of_term(self, gid: str, term: int) -> Entry | None:
        """The first entry of ``term`` in the log (the ``hub`` entry that opened it, when
        this node has it)."""
        row = self.db.execute("SELECT entry FROM log WHERE gid=? AND term=? AND seq>0 "
                              "ORDER BY seq LIMIT 1", (gid, term)).fetchone()
        return entry_decode(row[0]) if row else None

    def messages_after(self, gid: str, after: int, limit: int) -> list[Entry]:
        return [entry_decode(r[0]) for r in self.db.execute(
            "SELECT entry FROM log WHERE gid=? AND seq>? AND mid IS NOT NULL ORDER BY seq "
            "LIMIT ?", (gid, after, limit))]

    def unshown(self, gid: str) -> list[Entry]:
        return [entry_decode(r[0]) for r in self.db.execute(
            "SELECT entry FROM log WHERE gid=? AND mid IS NOT NULL AND shown=0 AND seq>0 "
            "ORDER BY seq",
            (gid,))]

    def mark_shown(self, gid: str, seq: int) -> None:
        self._w("UPDATE log SET shown=1 WHERE gid=? AND seq=?", (gid, seq))

    def mark_shown_message(self, gid: str, sender: bytes, mid: bytes) -> None:
        self._w("UPDATE log SET shown=1 WHERE gid=? AND sender=? AND mid=?", (gid, sender, mid))

    def truncate(self, gid: str, from_seq: int) -> list[Entry]:
        """Set aside the entries from ``from_seq`` on (ordered by a hub whose term ended
        before the others saw them) and return them; they stay, at negative seqs below any
        set aside before, as the record of which messages were shown."""
        gone = self.entries_after(gid, from_seq - 1, 1_000_000)
        low = int(self.db.execute("SELECT COALESCE(MIN(seq), 0) FROM log WHERE gid=?",
                                  (gid,)).fetchone()[0])
        self._w("UPDATE log SET seq=?-(seq-?) WHERE gid=? AND seq>=?",
                (min(low, 0) - 1, from_seq, gid, from_seq))
        return gone

    def term_start(self, gid: str, term: int) -> int:
        """The seq of the first entry of ``term`` in the log (0 if none)."""
        row = self.db.execute("SELECT MIN(seq) FROM log WHERE gid=? AND term=? AND seq>0",
                              (gid, term)).fetchone()
        return int(row[0] or 0)

    def has_outbox(self, gid: str) -> bool:
        return self.db.execute("SELECT 1 FROM outbox WHERE gid=? LIMIT 1",
                               (gid,)).fetchone() is not None

    def purge(self, before_ms: int) -> int:
        return self._w("DELETE FROM log WHERE ts_ms<?", (before_ms,))

    # -- keys -----------------------------------------------------------------------------

    def put_key(self, gid: str, owner: bytes, epoch: int, key: bytes, now_ms: int) -> None:
        self._w("INSERT OR IGNORE INTO keys (gid, owner, epoch, key, created_ms) "
                "VALUES (?,?,?,?,?)", (gid, owner, epoch, key, now_ms))

    def key(self, gid: str, owner: bytes, epoch: int) -> bytes | None:
        row = self.db.execute("SELECT key FROM keys WHERE gid=? AND owner=? AND epoch=?",
                              (gid, owner, epoch)).fetchone()
        return bytes(row[0]) if row else None

    def latest_key(self, gid: str, owner: bytes) -> tuple[int, bytes, int, int] | None:
        """(epoch, key, created_ms, messages sealed with it) of ``owner``'s newest key."""
        row = self.db.execute("SELECT epoch, key, created_ms, used FROM keys WHERE gid=? AND "
                              "owner=? ORDER BY epoch DESC LIMIT 1", (gid, owner)).fetchone()
        return (row[0], bytes(row[1]), row[2], row[3]) if row else None

    def count_key_use(self, gid: str, owner: bytes, epoch: int) -> None:
        self._w("UPDATE keys SET used=used+1 WHERE gid=? AND owner=? AND epoch=?",
                (gid, owner, epoch))

    def purge_keys(self, gid: str, owner: bytes, keep_from_epoch: int) -> None:
        self._w("DELETE FROM keys WHERE gid=? AND owner=? AND epoch<?",
                (gid, owner, keep_from_epoch))

    def forget_keys(self, gid: str, owner: bytes) -> None:
        self._w("DELETE FROM keys WHERE gid=? AND owner=?", (gid, owner))

    # -- this node's messages not yet ordered ---------------------------------------------

    def put_out(self, gid: str, mid: bytes, epoch: int, ct: bytes, now_ms: int) -> None:
        self._w("INSERT OR IGNORE INTO outbox VALUES (?,?,?,?,?)", (gid, mid, epoch, ct, now_ms))

    def has_out(self, gid: str, mid: bytes) -> bool:
        return self.db.execute("SELECT 1 FROM outbox WHERE gid=? AND mid=?",
                               (gid, mid)).fetchone() is not None

    def delete_out(self, gid: str, mid: bytes) -> bool:
        return self._w("DELETE FROM outbox WHERE gid=? AND mid=?", (gid, mid)) > 0

    def outbox(self, gid: str) -> list[tuple[bytes, int, bytes, int]]:
        """(mid, epoch, ciphertext, created_ms), oldest first."""
        return [(bytes(m), e, bytes(c), t) for m, e, c, t in self.db.execute(
            "SELECT mid, epoch, ct, created_ms FROM outbox WHERE gid=? ORDER BY created_ms",
            (gid,))]

    def expire_out(self, before_ms: int) -> list[tuple[str, bytes]]:
        rows = [(g, bytes(m)) for g, m in self.db.execute(
            "SELECT gid, mid FROM outbox WHERE created_ms<?", (before_ms,))]
        if rows:
            self._w("DELETE FROM outbox WHERE created_ms<?", (before_ms,))
        return rows

    # -- invitations ----------------------------------------------------------------------

    def put_invite(self, gid: str, name: str, hub: bytes, inviter: bytes,
                   expires_ms: int) -> None:
        self._w("INSERT OR REPLACE INTO invites VALUES (?,?,?,?,?)",
                (gid, name, hub, inviter, expires_ms))

    def invite(self, gid: str) -> tuple[str, bytes, bytes, int] | None:
        row = self.db.execute("SELECT name, hub, inviter, expires_ms FROM invites WHERE gid=?",
                              (gid,)).fetchone()
        return (row[0], bytes(row[1]), bytes(row[2]), row[3]) if row else None

    def invites(self, now_ms: int) -> list[tuple[str, str, bytes, bytes, int]]:
        return [(g, n, bytes(h), bytes(i), e) for g, n, h, i, e in self.db.execute(
            "SELECT gid, name, hub, inviter, expires_ms FROM invites WHERE expires_ms>? "
            "ORDER BY gid", (now_ms,))]

    def count_invites(self) -> int:
        return int(self.db.execute("SELECT count(*) FROM invites").fetchone()[0])

    def delete_invite(self, gid: str) -> None:
        self._w("DELETE FROM invites WHERE gid=?", (gid,))

    def put_invited(self, gid: str, node: bytes, expires_ms: int) -> None:
        self._w("INSERT OR REPLACE INTO invited VALUES (?,?,?)", (gid, node, expires_ms))

    def is_invited(self, gid: str, node: bytes, now_ms: int) -> bool:
        return self.db.execute("SELECT 1 FROM invited WHERE gid=? AND node=? AND expires_ms>?",
                               (gid, node, now_ms)).fetchone() is not None

    def delete_invited(self, gid: str, node: bytes) -> None:
        self._w("DELETE FROM invited WHERE gid=? AND node=?", (gid, node))

    def expire_invites(self, now_ms: int) -> None:
        self._w("DELETE FROM invites WHERE expires_ms<=?", (now_ms,))
        self._w("DELETE FROM invited WHERE expires_ms<=?", (now_ms,))

    # -- cursor ---------------------------------------------------------------------------

    def get_meta(self, k: str) -> int:
        row = self.db.execute("SELECT v FROM meta WHERE k=?", (k,)).fetchone()
        return int(row[0]) if row else 0

    def set_meta(self, k: str, v: int) -> None:
        self._w("INSERT OR REPLACE INTO meta VALUES (?,?)", (k, v))
