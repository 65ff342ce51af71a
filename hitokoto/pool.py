"""The sentence pool in SQLite: every SQL statement about sentences lives here.

Unused sentences wait in ``unused_queue``, each under an exponential clock: when it enters,
it gets ``pool_state.clock_floor + Exp(1)``. A no-repeat claim deletes the entry with the
smallest clock, and a trigger raises the floor to that clock and marks the sentence handed
out. The smallest of iid exponential clocks belongs to a uniformly random entry, and by
memorylessness the clocks left behind are again iid ``floor + Exp(1)``, exactly like the
clock of a sentence that enters later: every claim is uniform over the unused sentences
at that moment, whenever they arrived. A claim is one SQL statement (atomic across
processes, O(log n)) and it only writes the head of the queue and the claimed sentence's
row, so at 10 million sentences it touches one cold page, not two (bench/pool_flatness.py).
Keeping it to one statement matters: a Python lock held across several SQLite calls stalls
on the GIL when other threads are busy (bench/http_throughput.py measured 0.2x of bare
Flask that way).

A sentence taken out of the pool some other way (an instant request that produced it again)
is only marked handed out; its queue entry stays until its clock comes up and is then
skipped. Removing it early would tell the queue something about the other clocks.
"""

from __future__ import annotations

import dataclasses
import random
import sqlite3
import threading
import types
import unicodedata
import uuid
from collections.abc import Iterable
from datetime import UTC, datetime
from pathlib import Path

BUSY_TIMEOUT_MS = 5000
# Start-up waits this long for the write lock: another process may be migrating a large
# pool (migration 4 queued 5 million unused sentences in 18 s here).
MIGRATION_BUSY_TIMEOUT_MS = 120_000

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
    # 4: the dense slots become a queue under exponential clocks (see the module docstring).
    # A slot claim wrote three pages, two of them at random places in a large pool; a queue
    # claim writes the queue's head (with pool_state, both hot) and the sentence's row.
    # (clock, sentence_id) is the key, so equal clocks (about 1 in 10^15 per pair) cannot
    # collide. exponential_clock() is registered on every connection by Pool.connect().
    """
    CREATE TABLE unused_queue (
        clock REAL NOT NULL,
        sentence_id INTEGER NOT NULL,
        PRIMARY KEY (clock, sentence_id)
    ) WITHOUT ROWID;
    CREATE TABLE pool_state (
        id INTEGER PRIMARY KEY CHECK (id = 1),
        clock_floor REAL NOT NULL,
        unused_count INTEGER NOT NULL
    );
    INSERT INTO pool_state (id, clock_floor, unused_count)
    SELECT 1, 0.0, COUNT(*) FROM sentences WHERE used = 0;
    -- unused_count follows sentences.used itself, whichever path flips it.
    CREATE TRIGGER sentence_added_unused AFTER INSERT ON sentences WHEN new.used = 0
    BEGIN
        UPDATE pool_state SET unused_count = unused_count + 1;
    END;
    CREATE TRIGGER sentence_handed_out AFTER UPDATE OF used ON sentences
    WHEN old.used = 0 AND new.used = 1
    BEGIN
        UPDATE pool_state SET unused_count = unused_count - 1;
    END;
    CREATE TRIGGER unused_queue_taken AFTER DELETE ON unused_queue
    BEGIN
        UPDATE pool_state SET clock_floor = max(clock_floor, old.clock);
        UPDATE sentences SET used = 1, handed_out_at = strftime('%Y-%m-%dT%H:%M:%SZ', 'now')
         WHERE id = old.sentence_id AND used = 0;
    END;
    INSERT INTO unused_queue (clock, sentence_id)
    SELECT exponential_clock(), id FROM sentences WHERE used = 0;
    DROP TRIGGER unused_slot_taken;
    DROP TABLE unused_slots;
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
# The head of the queue is read from the primary key's first entries, so the DELETE hits those rows.
# No RETURNING: with it, the write transaction stays open until Python steps the statement
# again, which under load means holding the pool's write lock while this thread waits for
# the GIL (bench/http_throughput.py). Without it, the claim commits inside one sqlite3_step.
# Taking the k smallest clocks at once is k claims in one statement: they are a uniformly
# random k-subset, in a uniformly random order (the web claims for several requests at once).
_CLAIM_SQL = """
    DELETE FROM unused_queue
     WHERE (clock, sentence_id) IN (SELECT clock, sentence_id FROM unused_queue
                                     ORDER BY clock, sentence_id LIMIT ?)
"""
_ENQUEUE_SQL = "INSERT INTO unused_queue (clock, sentence_id) SELECT clock_floor + ?, ? FROM pool_state"
# Per connection (TEMP objects are private to the connection that makes them): the sentence
# behind a queue entry this connection deletes is copied into temp.taken by the same
# statement, so the claimed row is read back without a second transaction on the pool file.
# BEFORE, so it sees the sentence as it was: an entry whose sentence was already handed out
# (see the module docstring) captures nothing and the claim moves on to the next entry.
_CAPTURE_TAKEN_SQL = f"""
    CREATE TEMP TABLE IF NOT EXISTS taken ({_SENTENCE_COLUMNS});
    CREATE TEMP TRIGGER IF NOT EXISTS capture_taken_entry BEFORE DELETE ON main.unused_queue
    BEGIN
        INSERT INTO taken
        SELECT id, uuid, text, source, model, created_at, 1, strftime('%Y-%m-%dT%H:%M:%SZ', 'now')
          FROM sentences WHERE id = old.sentence_id AND used = 0;
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


def exponential_clock() -> float:
    """A draw from Exp(1): how far past the floor a sentence entering the queue waits.
    (random is reseeded in every forked process, so workers never share draws.)"""
    return random.expovariate(1.0)


def _install_capture(conn: sqlite3.Connection) -> None:
    """Create this connection's temp.taken and its trigger, once the pool has its schema."""
    has_queue = conn.execute(
        "SELECT 1 FROM main.sqlite_master WHERE type = 'table' AND name = 'unused_queue'"
    ).fetchone()
    if has_queue:
        for statement in _statements(_CAPTURE_TAKEN_SQL):
            conn.execute(statement)


def _captures_taken(conn: sqlite3.Connection) -> bool:
    """Whether this connection copies taken entries into temp.taken (it always should)."""
    found = conn.execute(
        "SELECT 1 FROM temp.sqlite_master WHERE type = 'trigger' AND name = 'capture_taken_entry'"
    ).fetchone()
    return found is not None


def _drain_taken(conn: sqlite3.Connection) -> list[tuple]:
    """The rows this connection's last queue deletion captured (temp.taken), emptied."""
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
    """A handle on one pool file; safe to share between threads (one connection each).

    With one_connection=True every thread uses the same connection instead: only for a
    caller that never uses the pool from two threads at once (hitokoto.handout).
    """

    def __init__(self, path: str | Path, one_connection: bool = False):
        self.path = Path(path)
        self._one_connection = one_connection
        self._local = types.SimpleNamespace() if one_connection else threading.local()

    # -- connections and schema -------------------------------------------------

    def connect(self) -> sqlite3.Connection:
        """This thread's connection (or the one connection), opened on first use (autocommit;
        explicit BEGINs)."""
        conn = getattr(self._local, "conn", None)
        if conn is None:
            try:
                conn = sqlite3.connect(
                    self.path,
                    isolation_level=None,
                    timeout=BUSY_TIMEOUT_MS / 1000,
                    check_same_thread=not self._one_connection,
                )
                conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
                conn.execute("PRAGMA journal_mode = WAL")
                conn.execute("PRAGMA synchronous = NORMAL")
                conn.execute("PRAGMA temp_store = MEMORY")
                conn.create_function("exponential_clock", 0, exponential_clock)
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
            conn.execute(f"PRAGMA busy_timeout = {MIGRATION_BUSY_TIMEOUT_MS}")
            try:
                conn.execute("BEGIN IMMEDIATE")
            finally:
                conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
            try:
                version = conn.execute("PRAGMA user_version").fetchone()[0]
                for number, script in enumerate(MIGRATIONS[version:], start=version + 1):
                    for statement in _statements(script):
                        conn.execute(statement)
                    conn.execute(f"PRAGMA user_version = {number}")
                conn.execute("COMMIT")
                _install_capture(conn)  # the queue may have just been created
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

    # -- the queue -------------------------------------------------------------

    @staticmethod
    def _enqueue(conn: sqlite3.Connection, sentence_id: int) -> None:
        """Put a sentence in the no-repeat pool, under a clock of floor + Exp(1)."""
        conn.execute(_ENQUEUE_SQL, (exponential_clock(), sentence_id))

    @staticmethod
    def _hand_out(conn: sqlite3.Connection, sentence_id: int) -> None:
        """Mark a sentence handed out without a claim; its queue entry is skipped later."""
        conn.execute(
            "UPDATE sentences SET used = 1, handed_out_at = ? WHERE id = ? AND used = 0",
            (utc_now(), sentence_id),
        )

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
                    self._enqueue(conn, new_id)
                return self._fetch(conn, new_id), True
            existing_id = conn.execute(
                "SELECT id FROM sentences WHERE norm_key = ?", (normalize_key(text),)
            ).fetchone()[0]
            if not keep_unused:
                self._hand_out(conn, existing_id)
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
                    self._enqueue(conn, new_id)
                    new += 1
            return AddResult(new, duplicate)

        return self._write(work)

    # -- picks ------------------------------------------------------------------

    def claim_unused(self) -> Sentence | None:
        """Atomically take a uniformly random unused sentence and mark it handed out.

        Returns None when no unused sentence is left. Two callers, in any processes, never
        receive the same sentence. Raises PoolError when the pool cannot be written.
        """
        claimed = self.claim_unused_many(1)
        return claimed[0] if claimed else None

    def claim_unused_many(self, count: int) -> list[Sentence]:
        """claim_unused() for `count` callers in one statement: distinct sentences, each
        uniformly random, in a uniformly random order; fewer when the pool runs out."""
        conn = self.connect()
        claimed: list[tuple] = []
        try:
            while len(claimed) < count:  # again only past entries of sentences handed out otherwise
                wanted = count - len(claimed)
                deleted = conn.execute(_CLAIM_SQL, (wanted,)).rowcount
                taken = _drain_taken(conn)
                claimed += taken
                if deleted < wanted:  # the queue is empty now
                    break
                if not taken and not _captures_taken(conn):  # never walk the queue uncaptured
                    raise PoolError("sentence pool connection lost its capture trigger; restart")
        except sqlite3.Error as exc:
            raise PoolError(f"sentence pool is busy or unwritable: {exc}") from None
        random.shuffle(claimed)  # whatever order SQLite hands the rows back in
        return [_to_sentence(row) for row in claimed]

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
        """(total sentences, unused sentences), read without a scan."""
        conn = self.connect()
        total = conn.execute("SELECT COALESCE(MAX(id), 0) FROM sentences").fetchone()[0]
        return total, conn.execute("SELECT unused_count FROM pool_state").fetchone()[0]

    def check_integrity(self) -> list[str]:
        """Problems found in the queue and its counts (empty when consistent). Scans: for tests
        and ops."""
        conn = self.connect()
        problems = []
        unused_rows = conn.execute("SELECT COUNT(*) FROM sentences WHERE used = 0").fetchone()[0]
        counted = conn.execute("SELECT unused_count FROM pool_state").fetchone()[0]
        if unused_rows != counted:
            problems.append(f"{unused_rows} unused sentences but pool_state counts {counted}")
        queued_unused = conn.execute(
            "SELECT COUNT(DISTINCT q.sentence_id) FROM unused_queue q"
            " JOIN sentences s ON s.id = q.sentence_id WHERE s.used = 0"
        ).fetchone()[0]
        if queued_unused != unused_rows:
            problems.append(f"{unused_rows - queued_unused} unused sentences are not in the queue")
        doubled_sql = "SELECT COUNT(*) - COUNT(DISTINCT sentence_id) FROM unused_queue"
        doubled = conn.execute(doubled_sql).fetchone()[0]
        if doubled:
            problems.append(f"{doubled} sentences are queued more than once")
        behind = conn.execute(
            "SELECT COUNT(*) FROM unused_queue WHERE clock < (SELECT clock_floor FROM pool_state)"
        ).fetchone()[0]
        if behind:
            problems.append(f"{behind} queue entries have clocks below the floor")
        return problems
