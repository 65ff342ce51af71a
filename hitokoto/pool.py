"""The sentence pool in SQLite: every SQL statement about sentences lives here.

Unused sentences are tracked in a dense side table ``unused_slots`` whose positions run
1..k without holes. A no-repeat claim deletes the slot at a uniform random position and a
trigger moves the last slot into the hole and marks the sentence handed out; it is one SQL
statement, so it is atomic across processes, exact and O(log n). Keeping it to one
statement matters: a Python lock held across several SQLite calls stalls on the GIL when
other threads are busy (bench/http_throughput.py measured 0.2x of bare Flask that way).
"""

from __future__ import annotations

import dataclasses
import sqlite3
import threading
import unicodedata
import uuid
from collections.abc import Iterable
from datetime import UTC, datetime
from pathlib import Path

BUSY_TIMEOUT_MS = 5000

# Applied in order; PRAGMA user_version records how many have run. Append, never edit.
MIGRATIONS = (
    """
    CREATE TABLE sentences (
        id INTEGER PRIMARY KEY,
        uuid TEXT NOT NULL UNIQUE,
        text TEXT NOT NULL,
        norm_key TEXT NOT NULL UNIQUE,
        source TEXT NOT NULL CHECK (source IN ('instant', 'batch')),
        model TEXT NOT NULL,
        created_at TEXT NOT NULL,
        used INTEGER NOT NULL DEFAULT 0 CHECK (used IN (0, 1)),
        handed_out_at TEXT
    );
    CREATE TABLE unused_slots (
        pos INTEGER PRIMARY KEY,
        sentence_id INTEGER NOT NULL UNIQUE REFERENCES sentences(id)
    );
    """,
    # 2: no index on unused_slots.sentence_id. Every claim rewrote two entries of it at
    # random places in a large pool (bench/pool_flatness.py: p50 ratio 1.23 at 10M rows);
    # the one reader (an instant duplicate, rare) can afford a scan.
    """
    CREATE TABLE unused_slots_v2 (pos INTEGER PRIMARY KEY, sentence_id INTEGER NOT NULL);
    INSERT INTO unused_slots_v2 (pos, sentence_id) SELECT pos, sentence_id FROM unused_slots;
    DROP TABLE unused_slots;
    ALTER TABLE unused_slots_v2 RENAME TO unused_slots;
    """,
    # 3: taking a slot is one DELETE; this trigger keeps the positions dense and marks the
    # sentence handed out, inside that statement.
    """
    CREATE TRIGGER unused_slot_taken AFTER DELETE ON unused_slots
    BEGIN
        UPDATE sentences SET used = 1, handed_out_at = strftime('%Y-%m-%dT%H:%M:%SZ', 'now')
         WHERE id = old.sentence_id;
        UPDATE unused_slots SET pos = old.pos
         WHERE pos = (SELECT MAX(pos) FROM unused_slots)
           AND old.pos < (SELECT MAX(pos) FROM unused_slots);
    END;
    """,
)


class PoolError(Exception):
    """The pool file cannot be opened, migrated or written (locked, unwritable, corrupt)."""


@dataclasses.dataclass(frozen=True)
class Sentence:
    id: int
    uuid: str
    text: str
    source: str
    model: str
    created_at: str
    used: bool
    handed_out_at: str | None


@dataclasses.dataclass(frozen=True)
class AddResult:
    new: int
    duplicate: int


def utc_now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def normalize_key(text: str) -> str:
    """Key under which exact duplicates collide: width-folded, case-folded, letters and
    digits only (whitespace and punctuation dropped)."""
    folded = unicodedata.normalize("NFKC", text).casefold()
    return "".join(ch for ch in folded if unicodedata.category(ch)[0] in "LN")


_SENTENCE_COLUMNS = "id, uuid, text, source, model, created_at, used, handed_out_at"
# The random position is drawn inside SQLite, in an uncorrelated scalar subquery that runs
# once, so the DELETE hits exactly one slot. Lone MIN()/MAX() are read from the index ends.
# No RETURNING: with it, the write transaction stays open until Python steps the statement
# again, which under load means holding the pool's write lock while this thread waits for
# the GIL (bench/http_throughput.py). Without it, the claim commits inside one sqlite3_step.
_CLAIM_SQL = """
    DELETE FROM unused_slots
     WHERE pos = (SELECT abs(random()) % (SELECT MAX(pos) FROM unused_slots) + 1)
"""
# Per connection (TEMP objects are private to the connection that makes them): a slot this
# connection takes is copied, with its sentence, into temp.taken by the same statement, so
# the claimed row is read back without a second transaction on the pool file.
_CAPTURE_TAKEN_SQL = f"""
    CREATE TEMP TABLE IF NOT EXISTS taken ({_SENTENCE_COLUMNS});
    CREATE TEMP TRIGGER IF NOT EXISTS capture_taken_slot AFTER DELETE ON main.unused_slots
    BEGIN
        INSERT INTO taken
        SELECT id, uuid, text, source, model, created_at, 1, strftime('%Y-%m-%dT%H:%M:%SZ', 'now')
          FROM sentences WHERE id = old.sentence_id;
    END;
"""
_DRAIN_TAKEN_SQL = f"DELETE FROM temp.taken RETURNING {_SENTENCE_COLUMNS}"
_PICK_SQL = f"""
    SELECT {_SENTENCE_COLUMNS} FROM sentences
     WHERE id = (SELECT low + abs(random()) % (high - low + 1)
                   FROM (SELECT (SELECT MIN(id) FROM sentences) AS low,
                                (SELECT MAX(id) FROM sentences) AS high))
"""


def _to_sentence(row: tuple | None) -> Sentence | None:
    if row is None:
        return None
    return Sentence(row[0], row[1], row[2], row[3], row[4], row[5], bool(row[6]), row[7])


def _install_capture(conn: sqlite3.Connection) -> None:
    """Create this connection's temp.taken and its trigger, once the pool has its schema."""
    has_slots = conn.execute(
        "SELECT 1 FROM main.sqlite_master WHERE type = 'table' AND name = 'unused_slots'"
    ).fetchone()
    if has_slots:
        for statement in _statements(_CAPTURE_TAKEN_SQL):
            conn.execute(statement)


def _drain_taken(conn: sqlite3.Connection) -> list[tuple]:
    """The rows this connection's last slot deletion captured (temp.taken), emptied."""
    return conn.execute(_DRAIN_TAKEN_SQL).fetchall()


def _statements(script: str) -> list[str]:
    """Split a migration into statements; a trigger body's semicolons stay inside it."""
    statements, pending = [], ""
    for part in script.split(";"):
        pending += part + ";"
        if sqlite3.complete_statement(pending):
            if pending.strip(" \n;"):
                statements.append(pending.strip())
            pending = ""
    return statements


def _rollback(conn: sqlite3.Connection) -> None:
    # SQLite may already have rolled back on its own (e.g. disk full); ROLLBACK would then fail.
    if conn.in_transaction:
        conn.execute("ROLLBACK")


class Pool:
    """A handle on one pool file; safe to share between threads (one connection each)."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self._local = threading.local()

    # -- connections and schema -------------------------------------------------

    def connect(self) -> sqlite3.Connection:
        """This thread's connection, opened on first use (autocommit; explicit BEGINs)."""
        conn = getattr(self._local, "conn", None)
        if conn is None:
            try:
                conn = sqlite3.connect(self.path, isolation_level=None, timeout=BUSY_TIMEOUT_MS / 1000)
                conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
                conn.execute("PRAGMA journal_mode = WAL")
                conn.execute("PRAGMA synchronous = NORMAL")
                conn.execute("PRAGMA temp_store = MEMORY")
                _install_capture(conn)
            except sqlite3.Error as exc:
                raise PoolError(f"cannot open sentence pool {self.path}: {exc}") from None
            self._local.conn = conn
        return conn

    def close(self) -> None:
        conn = getattr(self._local, "conn", None)
        if conn is not None:
            conn.close()
            self._local.conn = None

    def migrate(self) -> int:
        """Create or upgrade the schema; returns the schema version. Raises PoolError."""
        if self.path.parent.exists() and not self.path.parent.is_dir():
            raise PoolError(f"cannot create sentence pool {self.path}: {self.path.parent} is not a directory")
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            conn = self.connect()
            conn.execute("BEGIN IMMEDIATE")
            try:
                version = conn.execute("PRAGMA user_version").fetchone()[0]
                for number, script in enumerate(MIGRATIONS[version:], start=version + 1):
                    for statement in _statements(script):
                        conn.execute(statement)
                    conn.execute(f"PRAGMA user_version = {number}")
                conn.execute("COMMIT")
                _install_capture(conn)  # a migration that rebuilt unused_slots dropped it
            except BaseException:
                _rollback(conn)
                raise
            return len(MIGRATIONS)
        except sqlite3.Error as exc:
            self.close()
            raise PoolError(f"cannot prepare sentence pool {self.path}: {exc}") from None
        except OSError as exc:
            self.close()
            raise PoolError(f"cannot prepare sentence pool {self.path}: {exc.strerror}") from None

    def _write(self, work):
        """Run work(conn) inside BEGIN IMMEDIATE; commit, or roll back on any error."""
        conn = self.connect()
        try:
            conn.execute("BEGIN IMMEDIATE")
        except sqlite3.OperationalError as exc:
            raise PoolError(f"sentence pool is busy or unwritable: {exc}") from None
        try:
            result = work(conn)
            conn.execute("COMMIT")
            return result
        except sqlite3.Error as exc:
            _rollback(conn)
            raise PoolError(f"sentence pool write failed: {exc}") from None
        except BaseException:
            _rollback(conn)
            raise

    # -- slots ------------------------------------------------------------------

    @staticmethod
    def _slot_count(conn: sqlite3.Connection) -> int:
        return conn.execute("SELECT COALESCE(MAX(pos), 0) FROM unused_slots").fetchone()[0]

    @classmethod
    def _push_slot(cls, conn: sqlite3.Connection, sentence_id: int) -> None:
        conn.execute(
            "INSERT INTO unused_slots (pos, sentence_id) VALUES (?, ?)",
            (cls._slot_count(conn) + 1, sentence_id),
        )

    @staticmethod
    def _take_slot(conn: sqlite3.Connection, pos: int) -> None:
        """Remove a slot; the unused_slot_taken trigger fills the hole and marks it used."""
        conn.execute("DELETE FROM unused_slots WHERE pos = ?", (pos,))
        _drain_taken(conn)

    @staticmethod
    def _fetch(conn: sqlite3.Connection, sentence_id: int) -> Sentence | None:
        row = conn.execute(
            f"SELECT {_SENTENCE_COLUMNS} FROM sentences WHERE id = ?", (sentence_id,)
        ).fetchone()
        return _to_sentence(row)

    # -- writes -----------------------------------------------------------------

    @staticmethod
    def _insert(conn: sqlite3.Connection, text: str, source: str, model: str, used: bool) -> int | None:
        """Insert one sentence; returns its id, or None when its normalised text exists."""
        cursor = conn.execute(
            "INSERT OR IGNORE INTO sentences (uuid, text, norm_key, source, model, created_at, used,"
            " handed_out_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            (
                str(uuid.uuid4()),
                text,
                normalize_key(text),
                source,
                model,
                utc_now(),
                int(used),
                utc_now() if used else None,
            ),
        )
        return cursor.lastrowid if cursor.rowcount == 1 else None

    def add_instant(self, text: str, model: str, keep_unused: bool) -> tuple[Sentence, bool]:
        """Store a sentence generated for an instant request.

        keep_unused=True puts it in the no-repeat pool; False stores it as handed out. When the
        text already exists, the existing row is returned (and, when keep_unused is False,
        taken out of the unused pool, since this caller has now seen it).
        Returns (sentence, is_new).
        """

        def work(conn):
            new_id = self._insert(conn, text, "instant", model, used=not keep_unused)
            if new_id is not None:
                if keep_unused:
                    self._push_slot(conn, new_id)
                return self._fetch(conn, new_id), True
            existing_id = conn.execute(
                "SELECT id FROM sentences WHERE norm_key = ?", (normalize_key(text),)
            ).fetchone()[0]
            if not keep_unused:
                # A scan (no index on sentence_id, see migration 2); only on this rare path.
                slot = conn.execute(
                    "SELECT pos FROM unused_slots WHERE sentence_id = ?", (existing_id,)
                ).fetchone()
                if slot is not None:
                    self._take_slot(conn, slot[0])
            return self._fetch(conn, existing_id), False

        return self._write(work)

    def add_batch(self, texts: Iterable[str], model: str, source: str = "batch") -> AddResult:
        """Store sentences as unused in one transaction; duplicates are counted, not stored."""

        def work(conn):
            new = duplicate = 0
            for text in texts:
                new_id = self._insert(conn, text, source, model, used=False)
                if new_id is None:
                    duplicate += 1
                else:
                    self._push_slot(conn, new_id)
                    new += 1
            return AddResult(new, duplicate)

        return self._write(work)

    # -- picks ------------------------------------------------------------------

    def claim_unused(self) -> Sentence | None:
        """Atomically take a uniformly random unused sentence and mark it handed out.

        Returns None when no unused sentence is left. Two callers, in any processes, never
        receive the same sentence. Raises PoolError when the pool cannot be written.
        """
        conn = self.connect()
        try:
            conn.execute(_CLAIM_SQL)
            taken = _drain_taken(conn)
        except sqlite3.Error as exc:
            raise PoolError(f"sentence pool is busy or unwritable: {exc}") from None
        return _to_sentence(taken[0]) if taken else None

    def pick_any(self) -> Sentence | None:
        """A uniformly random sentence from the whole pool, marking nothing; None when empty.

        Ids are dense (rows are never deleted), so a random id in [min, max] hits a row; a miss
        is redrawn, which keeps the pick exact even if holes ever appear.
        """
        conn = self.connect()
        try:
            for _attempt in range(64):
                row = conn.execute(_PICK_SQL).fetchone()
                if row is not None:
                    return _to_sentence(row)
                if conn.execute("SELECT MAX(id) FROM sentences").fetchone()[0] is None:
                    return None
        except sqlite3.Error as exc:
            raise PoolError(f"sentence pool cannot be read: {exc}") from None
        raise PoolError("sentence pool ids are too sparse to pick from")

    # -- reads ------------------------------------------------------------------

    def get(self, sentence_id: int) -> Sentence | None:
        return self._fetch(self.connect(), sentence_id)

    def counts(self) -> tuple[int, int]:
        """(total sentences, unused sentences), both read from indexes without a scan."""
        conn = self.connect()
        total = conn.execute("SELECT COALESCE(MAX(id), 0) FROM sentences").fetchone()[0]
        return total, self._slot_count(conn)

    def check_integrity(self) -> list[str]:
        """Problems found in the slot table (empty when consistent). Scans: for tests and ops."""
        conn = self.connect()
        problems = []
        slot_count, max_pos = conn.execute(
            "SELECT COUNT(*), COALESCE(MAX(pos), 0) FROM unused_slots"
        ).fetchone()
        if slot_count != max_pos:
            problems.append(f"unused slots not dense: {slot_count} rows, max position {max_pos}")
        unused_rows = conn.execute("SELECT COUNT(*) FROM sentences WHERE used = 0").fetchone()[0]
        if unused_rows != slot_count:
            problems.append(f"{unused_rows} unused sentences but {slot_count} slots")
        doubled_sql = "SELECT COUNT(*) - COUNT(DISTINCT sentence_id) FROM unused_slots"
        doubled = conn.execute(doubled_sql).fetchone()[0]
        if doubled:
            problems.append(f"{doubled} sentences sit in more than one slot")
        orphans = conn.execute(
            "SELECT COUNT(*) FROM unused_slots s JOIN sentences t ON t.id = s.sentence_id WHERE t.used = 1"
        ).fetchone()[0]
        if orphans:
            problems.append(f"{orphans} slots point at used sentences")
        return problems
