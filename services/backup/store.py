"""The backup service's SQLite file: the sealed envelopes held for others, and the delivery
ACKs kept for their origins. Nothing in it is plaintext: an envelope is the sender's sealed
and signed bytes, an ACK the recipient's signed envelope."""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass
from pathlib import Path

SCHEMA = """
CREATE TABLE IF NOT EXISTS held (
    origin BLOB NOT NULL, id BLOB NOT NULL, recipient BLOB NOT NULL, hop BLOB NOT NULL,
    expires_ms INTEGER NOT NULL, stored_ms INTEGER NOT NULL, size INTEGER NOT NULL,
    envelope BLOB NOT NULL, holders BLOB NOT NULL DEFAULT x'', PRIMARY KEY (origin, id)
);
CREATE INDEX IF NOT EXISTS held_recipient ON held (recipient, stored_ms);
CREATE INDEX IF NOT EXISTS held_expiry ON held (expires_ms);
CREATE TABLE IF NOT EXISTS receipts (
    origin BLOB NOT NULL, id BLOB NOT NULL, recipient BLOB NOT NULL,
    expires_ms INTEGER NOT NULL, ack BLOB NOT NULL, PRIMARY KEY (origin, id)
);
CREATE INDEX IF NOT EXISTS receipts_expiry ON receipts (expires_ms);
"""


@dataclass(frozen=True, slots=True)
class Held:
    origin: bytes
    id: bytes
    recipient: bytes
    expires_ms: int
    envelope: bytes


class Store:
    def __init__(self, path: Path | str) -> None:
        self.db = sqlite3.connect(str(path), isolation_level="DEFERRED")
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=NORMAL")
        self.db.executescript(SCHEMA)
        if "holders" not in {r[1] for r in self.db.execute("PRAGMA table_info(held)")}:
            self.db.execute("ALTER TABLE held ADD COLUMN holders BLOB NOT NULL DEFAULT x''")
        self.db.commit()
        self.dirty = False

    def commit(self) -> None:
        if self.dirty:
            self.db.commit()
            self.dirty = False

    def close(self) -> None:
        self.commit()
        self.db.close()

    def _w(self, sql: str, args: tuple[object, ...] = ()) -> int:
        self.dirty = True
        return self.db.execute(sql, args).rowcount

    # -- held envelopes -------------------------------------------------------------------

    def put(self, h: Held, hop: bytes, stored_ms: int, holders: bytes = b"") -> None:
        """``hop``: the peer charged for it (:mod:`.quota`); ``holders``: the node ids
        meant to hold it, 32 bytes each."""
        self._w("INSERT INTO held VALUES (?,?,?,?,?,?,?,?,?)",
                (h.origin, h.id, h.recipient, hop, h.expires_ms, stored_ms, len(h.envelope),
                 h.envelope, holders))

    def holder_sets(self, limit: int) -> list[tuple[bytes, bytes, bytes]]:
        """(holders, recipient, origin) of the entries that know their holder set."""
        return self.db.execute("SELECT holders, recipient, origin FROM held WHERE holders!=x'' "
                               "GROUP BY holders, recipient, origin LIMIT ?",
                               (limit,)).fetchall()

    def of_set(self, holders: bytes, recipient: bytes, origin: bytes,
               limit: int) -> list[tuple[int, bytes, int]]:
        """(expires_ms, envelope, row) of one holder set's entries."""
        return self.db.execute("SELECT expires_ms, envelope, rowid FROM held WHERE holders=? "
                               "AND recipient=? AND origin=? ORDER BY rowid LIMIT ?",
                               (holders, recipient, origin, limit)).fetchall()

    def set_holders(self, rows: list[int], holders: bytes) -> None:
        self.db.executemany("UPDATE held SET holders=? WHERE rowid=?",
                            [(holders, r) for r in rows])
        self.dirty = True

    def get(self, origin: bytes, msg_id: bytes) -> Held | None:
        row = self.db.execute("SELECT origin, id, recipient, expires_ms, envelope FROM held "
                              "WHERE origin=? AND id=?", (origin, msg_id)).fetchone()
        return Held(*row) if row else None

    def delete(self, origin: bytes, msg_id: bytes) -> bool:
        return self._w("DELETE FROM held WHERE origin=? AND id=?", (origin, msg_id)) > 0

    def for_recipient(self, recipient: bytes, limit: int) -> list[Held]:
        return [Held(*r) for r in self.db.execute(
            "SELECT origin, id, recipient, expires_ms, envelope FROM held WHERE recipient=? "
            "ORDER BY stored_ms, origin, id LIMIT ?", (recipient, limit))]

    def page(self, recipient: bytes, after: int, limit: int) -> list[tuple[int, bytes]]:
        """(row, envelope) held for ``recipient`` after row ``after``, in the order stored:
        one push's pages (a cursor that deletions meanwhile do not disturb)."""
        return self.db.execute(
            "SELECT rowid, envelope FROM held WHERE recipient=? AND rowid>? ORDER BY rowid "
            "LIMIT ?", (recipient, after, limit)).fetchall()

    def expired(self, now_ms: int) -> list[tuple[bytes, bytes, bytes]]:
        """(origin, id, recipient) of held envelopes past their expiry, deleted now."""
        rows = self.db.execute("SELECT origin, id, recipient FROM held WHERE expires_ms<=?",
                               (now_ms,)).fetchall()
        if rows:
            self._w("DELETE FROM held WHERE expires_ms<=?", (now_ms,))
        self._w("DELETE FROM receipts WHERE expires_ms<=?", (now_ms,))
        return rows

    def charges(self) -> list[tuple[bytes, bytes, bytes, int]]:
        """(origin, id, hop charged, size) of every held envelope."""
        return self.db.execute("SELECT origin, id, hop, size FROM held").fetchall()

    def expiring(self, now_ms: int) -> list[tuple[bytes, bytes, bytes]]:
        return self.db.execute("SELECT origin, id, recipient FROM held WHERE expires_ms<=?",
                               (now_ms,)).fetchall()

    def by_recipient(self, limit: int) -> list[tuple[bytes, int, int]]:
        return self.db.execute("SELECT recipient, COUNT(*), SUM(size) FROM held GROUP BY "
                               "recipient ORDER BY COUNT(*) DESC LIMIT ?", (limit,)).fetchall()

    # -- delivery ACKs kept for origins ---------------------------------------------------

    def put_receipt(self, origin: bytes, msg_id: bytes, recipient: bytes, expires_ms: int,
                    ack: bytes) -> None:
        self._w("INSERT OR IGNORE INTO receipts VALUES (?,?,?,?,?)",
                (origin, msg_id, recipient, expires_ms, ack))

    def has_receipt(self, origin: bytes, msg_id: bytes) -> bool:
        return self.db.execute("SELECT 1 FROM receipts WHERE origin=? AND id=?",
                               (origin, msg_id)).fetchone() is not None

    def receipts(self, origin: bytes, limit: int) -> list[bytes]:
        return [r[0] for r in self.db.execute(
            "SELECT ack FROM receipts WHERE origin=? ORDER BY expires_ms LIMIT ?",
            (origin, limit))]

    def receipt_count(self) -> int:
        return int(self.db.execute("SELECT COUNT(*) FROM receipts").fetchone()[0])
