"""The sentence pool in SQLite: every SQL statement about sentences lives here.

A sentence entering the no-repeat pool gets a clock, ``pool_state.clock_floor + Exp(1)``,
stored on its row and never changed. The unused sentences are those with a clock above the
floor (ties broken by id) that were not handed out some other way. A claim of k sentences
is one UPDATE that raises the floor to the k-th smallest unused clock: the k sentences it
passes are handed out. The smallest of iid exponential clocks belongs to a uniformly random
entry, and by memorylessness the clocks left above the new floor are again iid
``floor + Exp(1)``, exactly like the clock of a sentence that enters later: every claim is
uniform over the unused sentences at that moment, whenever they arrived.

A claim writes nothing but ``pool_state`` and the tail of ``claim_log`` (the floor at the end
of each second with claims, from which a claimed sentence's hand-out time is read): two hot
pages however large the pool. Marking each claimed sentence's own row instead rewrote a page
at a random place in a large pool for every sentence (bench/http_throughput.py: that step
alone took the cached endpoint from 0.90 to 0.63 of bare Flask).

A sentence taken out of the pool some other way (an instant request that produced it again)
gets its ``handed_out_at`` set directly, which takes it out of the partial index that claims
walk. The view ``sentences`` shows every sentence with its used flag and hand-out time.
"""

from __future__ import annotations

import dataclasses
import json
import random
import sqlite3
import threading
import time
import types
import unicodedata
import uuid
from collections.abc import Iterable
from datetime import UTC, datetime
from pathlib import Path

from hitokoto.answer import ANSWER_SEPARATOR, CLAIMED_ANSWER_SQL

BUSY_TIMEOUT_MS = 5000
# Start-up waits this long for the write lock: another process may be migrating a large
# pool (migration 4 queued 5 million unused sentences in 18 s here; migration 5 moved 1
# million clocks onto their rows in 15 s, so ~75 s for 5 million).
MIGRATION_BUSY_TIMEOUT_MS = 600_000

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
    # 5: a claim raises the floor past the sentences it takes instead of deleting their queue
    # entries and rewriting their rows (see the module docstring): the clock moves onto the
    # sentence's row, and `sentences` becomes a view that derives the used flag and hand-out
    # time. sentence_rows.used and .handed_out_at now record hand-outs outside the queue (and
    # every hand-out before this migration). A sentence that was unused but had lost its queue
    # entry is queued again rather than left in neither state.
    """
    DROP TRIGGER sentence_added_unused;
    DROP TRIGGER sentence_handed_out;
    DROP TRIGGER unused_queue_taken;
    ALTER TABLE sentences RENAME TO sentence_rows;
    ALTER TABLE sentence_rows ADD COLUMN clock REAL;
    UPDATE sentence_rows SET handed_out_at = created_at WHERE used = 1 AND handed_out_at IS NULL;
    UPDATE sentence_rows SET clock = q.clock
      FROM (SELECT sentence_id, MIN(clock) AS clock FROM unused_queue GROUP BY sentence_id) AS q
     WHERE q.sentence_id = sentence_rows.id AND sentence_rows.used = 0;
    UPDATE sentence_rows SET clock = (SELECT clock_floor FROM pool_state) + exponential_clock()
     WHERE used = 0 AND clock IS NULL;
    DROP TABLE unused_queue;
    ALTER TABLE pool_state ADD COLUMN floor_id INTEGER NOT NULL DEFAULT 0;
    UPDATE pool_state SET unused_count = (SELECT COUNT(*) FROM sentence_rows WHERE used = 0);
    CREATE INDEX unused_by_clock ON sentence_rows (clock) WHERE handed_out_at IS NULL;
    CREATE TABLE claim_log (
        clock_floor REAL NOT NULL,
        floor_id INTEGER NOT NULL,
        claimed_at TEXT NOT NULL,
        PRIMARY KEY (clock_floor, floor_id)
    ) WITHOUT ROWID;
    -- One row per second with claims: a claim in the same second as the last one moves that
    -- row up to the new floor, so the log grows with time, not with traffic.
    CREATE TRIGGER floor_raised AFTER UPDATE OF clock_floor, floor_id ON pool_state
    BEGIN
        DELETE FROM claim_log
         WHERE (clock_floor, floor_id) = (old.clock_floor, old.floor_id)
           AND claimed_at = strftime('%Y-%m-%dT%H:%M:%SZ', 'now');
        INSERT INTO claim_log (clock_floor, floor_id, claimed_at)
        VALUES (new.clock_floor, new.floor_id, strftime('%Y-%m-%dT%H:%M:%SZ', 'now'));
    END;
    CREATE TRIGGER sentence_queued AFTER INSERT ON sentence_rows WHEN new.handed_out_at IS NULL
    BEGIN
        UPDATE pool_state SET unused_count = unused_count + 1;
    END;
    CREATE TRIGGER sentence_handed_out_directly AFTER UPDATE OF handed_out_at ON sentence_rows
    WHEN old.handed_out_at IS NULL AND new.handed_out_at IS NOT NULL
    BEGIN
        UPDATE pool_state SET unused_count = unused_count - 1;
    END;
    CREATE VIEW sentences AS
    SELECT r.id, r.uuid, r.text, r.norm_key, r.source, r.model, r.created_at,
           CASE WHEN r.handed_out_at IS NOT NULL OR (r.clock, r.id) <= (p.clock_floor, p.floor_id)
                THEN 1 ELSE 0 END AS used,
           COALESCE(r.handed_out_at,
                    (SELECT c.claimed_at FROM claim_log AS c
                      WHERE (c.clock_floor, c.floor_id) >= (r.clock, r.id)
                      ORDER BY c.clock_floor, c.floor_id LIMIT 1)) AS handed_out_at
      FROM sentence_rows AS r JOIN pool_state AS p;
    """,
    # 6: sentences a web process claimed ahead to hand out from memory (hitokoto.reserve):
    # one row per holding process, saying it may still hold up to `outstanding` of them until
    # `until` (Unix time). A claim that finds nothing reads it to wait for them to come back.
    """
    CREATE TABLE reservations (
        holder TEXT PRIMARY KEY,
        outstanding INTEGER NOT NULL,
        until REAL NOT NULL
    ) WITHOUT ROWID;
    """,
)
# A holder whose reservation is this long past its `until` is counted dead: nobody waits for
# it any more, and it may neither hand out nor give back what it held (it stays handed out).
RESERVATION_GRACE_S = 1.0


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
    used: bool  # its hand-out time is Pool.handed_out_at(id): nothing served needs it
    # Set on a claimed sentence: its success body as JSON, made by SQLite (hitokoto.answer).
    answer: str | None = dataclasses.field(default=None, compare=False, repr=False)


@dataclasses.dataclass(frozen=True)
class Reservation:
    """What Pool.claim_ahead took: sentences for the requests at hand, sentences held for later
    (hand them out before `until`, Unix time, or give them back), and whether the pool ran short
    while another process's reservation could still come back."""

    now: list[Sentence]
    held: list[Sentence]
    until: float
    others_hold: bool


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


# Sentence's fields in order. A claim reads the first six from sentence_rows (whose `used`
# column is not set by a claim: the view derives it); everything else reads all seven.
_ROW_COLUMNS = "id, uuid, text, source, model, created_at"
_SENTENCE_COLUMNS = f"{_ROW_COLUMNS}, used"
_FLOOR = "(SELECT clock_floor, floor_id FROM pool_state)"
_UNUSED = f"handed_out_at IS NULL AND (clock, id) > {_FLOOR}"
# Passed by a claim (a reserved sentence not yet handed out is one of these).
_CLAIMED = f"handed_out_at IS NULL AND (clock, id) <= {_FLOOR}"
# One statement, so it is atomic across processes: raise the floor to the k-th smallest unused
# (clock, id) and count the k off. It walks the partial index from the floor (hot pages) and
# writes pool_state and, by trigger, claim_log. The k sentences it passes are a uniformly
# random k-subset (the web claims for several requests at once); Python shuffles their order.
# No RETURNING: with it, the write transaction stays open until Python steps the statement
# again, which under load means holding the pool's write lock while this thread waits for
# the GIL (bench/http_throughput.py). Without it, the claim commits inside one sqlite3_step.
_CLAIM_TEMPLATE = f"""
    WITH taken AS (SELECT clock, id FROM sentence_rows WHERE {_UNUSED} ORDER BY clock, id LIMIT {{limit}})
    UPDATE pool_state
       SET (clock_floor, floor_id, unused_count) =
           (SELECT clock, id, unused_count - (SELECT COUNT(*) FROM taken)
              FROM taken ORDER BY clock DESC, id DESC LIMIT 1)
     WHERE EXISTS (SELECT 1 FROM taken)
"""
_CLAIM_SQL = _CLAIM_TEMPLATE.format(limit="?")
# A claim ahead (Pool.claim_ahead) is the same one statement: it claims temp.claim_request's
# `now` sentences, plus `ahead` more while `spare` unused ones would be left, and by trigger
# records the reservation in the same transaction. Nothing holds the write lock between
# statements, so no other process waits on it while this thread waits for the GIL.
_CLAIM_AHEAD_SQL = _CLAIM_TEMPLATE.format(
    limit="""(SELECT CASE WHEN p.unused_count >= r.now + r.ahead + r.spare THEN r.now + r.ahead ELSE r.now END
                FROM pool_state AS p, temp.claim_request AS r)"""
)
# Which rows a claim ahead ends: its holder's last reservation, and any dead holder's.
_ENDED_RESERVATIONS = "holder = {holder} OR until < {dead_before}"
_ENDED_BY_REQUEST = _ENDED_RESERVATIONS.format(
    holder="(SELECT holder FROM temp.claim_request)",
    dead_before="(SELECT dead_before FROM temp.claim_request)",
)
# Per connection (TEMP objects are private to the connection that makes them): the sentences
# a claim by this connection passes are copied into temp.taken by the same statement, so the
# claimed rows are read back without a second transaction on the pool file. They are copied as
# one JSON array, one row to read back: 3 sqlite3 steps and resets instead of k + 2 (the claim
# alone went from 0.58 to 0.63 of bare Flask under load, A/B). The GIL releases around those
# steps are not what it saves: a claim that kept the GIL throughout was no faster (bench/FINDINGS.md).
# Beside them go the sentences' success bodies (hitokoto.answer), in the same order, joined by
# ANSWER_SEPARATOR, which JSON text never holds raw: nested in the array as strings, they cost
# twice as much to build and to parse (bench/FINDINGS.md, twenty-eighth session).
# A claim ahead writes its holder's request to temp.claim_request first, and a second trigger
# records the reservation from it in the claim's own statement (Pool.claim_ahead).
_CAPTURE_TAKEN_SQL = f"""
    CREATE TEMP TABLE IF NOT EXISTS taken (sentences TEXT NOT NULL, answers TEXT NOT NULL);
    CREATE TEMP TRIGGER IF NOT EXISTS capture_taken AFTER UPDATE OF clock_floor, floor_id ON main.pool_state
    BEGIN
        INSERT INTO taken
        SELECT json_group_array(json_array({_ROW_COLUMNS})), group_concat({CLAIMED_ANSWER_SQL}, char(30))
          FROM sentence_rows
         WHERE handed_out_at IS NULL
           AND (clock, id) > (old.clock_floor, old.floor_id)
           AND (clock, id) <= (new.clock_floor, new.floor_id);
    END;
    CREATE TEMP TABLE IF NOT EXISTS claim_request (
        holder TEXT NOT NULL, now INTEGER NOT NULL, ahead INTEGER NOT NULL, spare INTEGER NOT NULL,
        until REAL NOT NULL, dead_before REAL NOT NULL
    );
    CREATE TEMP TRIGGER IF NOT EXISTS record_reservation
    AFTER UPDATE OF clock_floor, floor_id ON main.pool_state WHEN EXISTS (SELECT 1 FROM temp.claim_request)
    BEGIN
        DELETE FROM reservations WHERE {_ENDED_BY_REQUEST};
        INSERT INTO reservations
        SELECT holder, old.unused_count - new.unused_count - now, until FROM temp.claim_request
         WHERE old.unused_count - new.unused_count > now;
    END;
"""
_DRAIN_TAKEN_SQL = "DELETE FROM temp.taken RETURNING sentences, answers"
_END_RESERVATIONS_SQL = "DELETE FROM reservations WHERE " + _ENDED_RESERVATIONS.format(
    holder="?", dead_before="?"
)
_INSERT_SQL = """
    INSERT OR IGNORE INTO sentence_rows
           (uuid, text, norm_key, source, model, created_at, used, handed_out_at, clock)
    VALUES (?, ?, ?, ?, ?, ?, ?, ?, (SELECT clock_floor FROM pool_state) + ?)
"""
_HAND_OUT_SQL = f"UPDATE sentence_rows SET used = 1, handed_out_at = ? WHERE id = ? AND {_UNUSED}"
# A reserved sentence is claimed (at or below the floor, hand-out time not set); a fresh clock
# above the floor makes it unused again. Nothing else in those states is named by a holder.
_GIVE_BACK_SQL = f"""
    UPDATE sentence_rows SET clock = (SELECT clock_floor FROM pool_state) + exponential_clock()
     WHERE id IN (SELECT value FROM json_each(?)) AND {_CLAIMED}
"""
# The ids of a pool are cut into blocks of `size` from the smallest; one block drawn uniformly:
# each of its sentences with its place in the block (hitokoto.picks). No rows when the pool is
# empty (or, if ids ever had holes, when the block is one).
_BLOCK_SQL = f"""
    WITH block AS MATERIALIZED (SELECT low + abs(random()) % ((high - low) / :size + 1) * :size AS first_id
                     FROM (SELECT (SELECT MIN(id) FROM sentence_rows) AS low,
                                  (SELECT MAX(id) FROM sentence_rows) AS high))
    SELECT id - first_id, {_SENTENCE_COLUMNS} FROM block JOIN sentences
        ON id BETWEEN first_id AND first_id + :size - 1
"""


def _to_sentence(row: tuple | None) -> Sentence | None:
    if row is None:
        return None
    return Sentence(row[0], row[1], row[2], row[3], row[4], row[5], bool(row[6]))


def exponential_clock() -> float:
    """A draw from Exp(1): how far past the floor a sentence entering the queue waits.
    (random is reseeded in every forked process, so workers never share draws.)"""
    return random.expovariate(1.0)


def _install_capture(conn: sqlite3.Connection) -> None:
    """Create this connection's temp.taken and its trigger, once the pool has its
    current schema (a pool still to be migrated gets them after migrating)."""
    if conn.execute("PRAGMA user_version").fetchone()[0] == len(MIGRATIONS):
        for statement in _statements(_CAPTURE_TAKEN_SQL):
            conn.execute(statement)


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
                if version > len(MIGRATIONS):  # else no claim could capture what it took
                    raise PoolError(
                        f"sentence pool {self.path} has schema version {version}, newer than this "
                        f"HitokotoGPT knows ({len(MIGRATIONS)}); run the version that wrote it"
                    )
                for number, script in enumerate(MIGRATIONS[version:], start=version + 1):
                    for statement in _statements(script):
                        conn.execute(statement)
                    conn.execute(f"PRAGMA user_version = {number}")
                conn.execute("COMMIT")
                _install_capture(conn)  # the schema may have just become current
            except BaseException:
                _rollback(conn)
                raise
            return len(MIGRATIONS)
        except PoolError:
            self.close()
            raise
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

    # -- rows -------------------------------------------------------------------

    @staticmethod
    def _hand_out(conn: sqlite3.Connection, sentence_id: int) -> None:
        """Mark an unused sentence handed out without a claim (a no-op for a used one)."""
        conn.execute(_HAND_OUT_SQL, (utc_now(), sentence_id))

    @staticmethod
    def _fetch(conn: sqlite3.Connection, sentence_id: int) -> Sentence | None:
        row = conn.execute(
            f"SELECT {_SENTENCE_COLUMNS} FROM sentences WHERE id = ?", (sentence_id,)
        ).fetchone()
        return _to_sentence(row)

    @staticmethod
    def _insert(conn: sqlite3.Connection, text: str, source: str, model: str, used: bool) -> int | None:
        """Insert one sentence, handed out already or unused under a clock of floor + Exp(1);
        returns its id, or None when its normalised text exists."""
        now = utc_now()
        cursor = conn.execute(
            _INSERT_SQL,
            (
                str(uuid.uuid4()),
                text,
                normalize_key(text),
                source,
                model,
                now,
                int(used),
                now if used else None,
                None if used else exponential_clock(),
            ),
        )
        return cursor.lastrowid if cursor.rowcount == 1 else None

    # -- writes -----------------------------------------------------------------

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
                return self._fetch(conn, new_id), True
            existing_id = conn.execute(
                "SELECT id FROM sentence_rows WHERE norm_key = ?", (normalize_key(text),)
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
        if count < 1:
            return []
        try:
            return self._claim(self.connect(), _CLAIM_SQL, (count,))
        except sqlite3.Error as exc:
            raise PoolError(f"sentence pool is busy or unwritable: {exc}") from None

    @staticmethod
    def _claim(conn: sqlite3.Connection, claim_sql: str, parameters: tuple) -> list[Sentence]:
        changes_before = conn.total_changes  # (cursor.rowcount is -1 for a statement opening with WITH)
        conn.execute(claim_sql, parameters)
        floor_raised = conn.total_changes != changes_before
        captured = conn.execute(_DRAIN_TAKEN_SQL).fetchall()
        claimed = [
            Sentence(*fields, used=True, answer=answer)
            for batch, answers in captured
            for fields, answer in zip(json.loads(batch), answers.split(ANSWER_SEPARATOR), strict=True)
        ]
        if floor_raised and not claimed:  # the claim cannot tell what it took
            raise PoolError("sentence pool connection lost its capture trigger; restart")
        random.shuffle(claimed)  # whatever order SQLite hands the rows back in
        return claimed

    # -- reservations (hitokoto.reserve) ----------------------------------------

    def claim_ahead(self, holder: str, count: int, ahead: int, spare: int, hold_s: float) -> Reservation:
        """Claim `count` sentences to hand out now and, while at least `spare` unused ones would
        be left, `ahead` more that `holder` hands out from memory until now + hold_s. One
        statement claims them all (each uniformly random, like any claim, and handed out from
        this second on) and records the reservation, replacing the holder's last one: the holder
        has spent that one or given it back, or, claiming for none now (count 0, a refill),
        keeps what is left of it until the new one ends. A refill that reserves nothing leaves
        the holder's reservation as it was. When fewer than `count` are left, it also tells
        whether another holder's live reservation may still come back (give_back).

        The claim and the reservation are one statement (_CLAIM_AHEAD_SQL and the trigger
        record_reservation), which commits inside one sqlite3 step: with a BEGIN IMMEDIATE
        and five statements instead, the write lock was held while this thread waited for the
        GIL between them, and the other web processes waited for it (bench/FINDINGS.md)."""
        now = time.time()
        until, dead_before = now + hold_s, now - RESERVATION_GRACE_S
        try:
            conn = self.connect()
            conn.execute(
                "INSERT INTO temp.claim_request VALUES (?, ?, ?, ?, ?, ?)",
                (holder, count, ahead, spare, until, dead_before),
            )
            try:
                taken = self._claim(conn, _CLAIM_AHEAD_SQL, ())
            finally:
                conn.execute("DELETE FROM temp.claim_request")
            if not taken and count:  # nothing claimed, so the trigger did not run: end the reservation here
                conn.execute(_END_RESERVATIONS_SQL, (holder, dead_before))
            others_hold = len(taken) < count and self._others_hold(conn, holder, now)
        except sqlite3.Error as exc:
            raise PoolError(f"sentence pool is busy or unwritable: {exc}") from None
        return Reservation(taken[:count], taken[count:], until, others_hold)

    @staticmethod
    def _others_hold(conn: sqlite3.Connection, holder: str, now: float) -> bool:
        row = conn.execute(
            "SELECT EXISTS (SELECT 1 FROM reservations WHERE holder != ? AND outstanding > 0 AND until >= ?)",
            (holder, now - RESERVATION_GRACE_S),
        ).fetchone()
        return row[0] == 1

    def give_back(self, holder: str, sentence_ids: list[int]) -> int:
        """End holder's reservation: its unspent sentences go back to the no-repeat pool with fresh
        clocks above the floor, so each is exactly like a new one (the clocks are memoryless).
        A holder past its grace has been counted dead by the others, which may have answered
        `recycled` since: its sentences then stay handed out. Returns how many went back."""

        def work(conn):
            live = conn.execute(
                "SELECT until >= ? FROM reservations WHERE holder = ?",
                (time.time() - RESERVATION_GRACE_S, holder),
            ).fetchone()
            conn.execute("DELETE FROM reservations WHERE holder = ?", (holder,))
            if not (live and live[0] and sentence_ids):
                return 0
            returned = conn.execute(_GIVE_BACK_SQL, (json.dumps(sentence_ids),)).rowcount
            conn.execute("UPDATE pool_state SET unused_count = unused_count + ?", (returned,))
            return returned

        return self._write(work)

    def pick_block(self, size: int) -> list[tuple[int, Sentence]]:
        """A uniformly random block of `size` consecutive ids, marking nothing: each sentence it
        holds with its place in it (0 to size - 1). Empty when the pool is. One statement,
        which reads a leaf page or two of the pool file (hitokoto.picks)."""
        try:
            rows = self.connect().execute(_BLOCK_SQL, {"size": size}).fetchall()
        except sqlite3.Error as exc:
            raise PoolError(f"sentence pool cannot be read: {exc}") from None
        return [(row[0], _to_sentence(row[1:])) for row in rows]

    # -- reads ------------------------------------------------------------------

    def get(self, sentence_id: int) -> Sentence | None:
        return self._fetch(self.connect(), sentence_id)

    def handed_out_at(self, sentence_id: int) -> str | None:
        """When the sentence was handed out (None while unused). For a claimed sentence this is
        looked up in claim_log, so picks and claims leave it out (for tests and ops)."""
        row = self.connect().execute("SELECT handed_out_at FROM sentences WHERE id = ?", (sentence_id,))
        return next(row, (None,))[0]

    def is_empty(self) -> bool:
        """True while the pool has no sentence at all."""
        try:
            row = self.connect().execute("SELECT NOT EXISTS (SELECT 1 FROM sentence_rows)").fetchone()
        except sqlite3.Error as exc:
            raise PoolError(f"sentence pool cannot be read: {exc}") from None
        return row[0] == 1

    def counts(self) -> tuple[int, int]:
        """(total sentences, unused sentences), read without a scan."""
        conn = self.connect()
        try:
            total = conn.execute("SELECT COALESCE(MAX(id), 0) FROM sentence_rows").fetchone()[0]
            return total, conn.execute("SELECT unused_count FROM pool_state").fetchone()[0]
        except sqlite3.Error as exc:
            raise PoolError(f"sentence pool {self.path} cannot be read: {exc}") from None

    def check_integrity(self) -> list[str]:
        """Problems found in the unused sentences and their counts (empty when consistent).
        Scans: for tests and ops."""
        conn = self.connect()

        def count(where: str) -> int:
            return conn.execute(f"SELECT COUNT(*) FROM sentence_rows WHERE {where}").fetchone()[0]

        problems = []
        unused_rows = count(_UNUSED)
        counted = conn.execute("SELECT unused_count FROM pool_state").fetchone()[0]
        if unused_rows != counted:
            problems.append(f"{unused_rows} unused sentences but pool_state counts {counted}")
        if unqueued := count("handed_out_at IS NULL AND clock IS NULL"):
            problems.append(f"{unqueued} sentences are neither queued nor handed out")
        if mismatched := count("used != (handed_out_at IS NOT NULL)"):
            problems.append(f"{mismatched} sentences' used flags disagree with their hand-out times")
        unlogged_floor = conn.execute(
            "SELECT 1 FROM pool_state p WHERE floor_id != 0 AND NOT EXISTS"
            " (SELECT 1 FROM claim_log c WHERE (c.clock_floor, c.floor_id) = (p.clock_floor, p.floor_id))"
        ).fetchone()
        if unlogged_floor:
            problems.append("the last claim is missing from claim_log")
        return problems
