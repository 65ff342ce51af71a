"""The SQLite pool: uniform atomic claims, recycling, dedup, schema."""

import collections
import concurrent.futures
import multiprocessing
import sqlite3
import threading
import time

import pytest

from hitokoto import pool as pool_module
from hitokoto.pool import MIGRATIONS, Pool, PoolError, normalize_key
from tests.helpers import fill, new_pool


@pytest.fixture
def pool(tmp_path):
    return new_pool(tmp_path)


def test_empty_pool_has_nothing_to_claim_or_pick(pool):
    assert pool.claim_unused() is None
    assert pool.pick_block(16) == []
    assert pool.counts() == (0, 0)


def test_every_sentence_is_claimed_exactly_once_then_none(pool):
    fill(pool, 50)
    claimed = [pool.claim_unused() for _ in range(50)]
    assert len({sentence.id for sentence in claimed}) == 50
    assert all(sentence.used and pool.handed_out_at(sentence.id) for sentence in claimed)
    assert all(sentence == pool.get(sentence.id) for sentence in claimed)  # what is stored, as stored
    assert pool.claim_unused() is None
    assert pool.check_integrity() == []


def test_claimed_sentences_come_back_exactly_as_stored_whatever_they_hold(pool):
    """A claim reads its sentences back as JSON: quotes, backslashes, control characters,
    NUL, emoji and line separators must survive it unchanged."""
    texts = ['引号"与\\反斜杠', "制表\t符", "表情😀与\u2028分隔", "空字\x00符", "控制\x01\x1f字符"]
    texts.append("'单引号'")
    pool.add_batch(texts, "m")
    claimed = pool.claim_unused_many(len(texts))
    assert sorted(sentence.text for sentence in claimed) == sorted(texts)
    assert all(sentence == pool.get(sentence.id) for sentence in claimed)


def test_a_picked_block_holds_consecutive_ids_in_place_and_marks_nothing(pool):
    fill(pool, 5)
    for _ in range(20):
        block = pool.pick_block(4)
        first_id = block[0][1].id - block[0][0]
        assert first_id in (1, 5)  # ids 1-4 or 5 (the last block: one sentence, three empty places)
        assert all(sentence == pool.get(first_id + place) for place, sentence in block)
        assert len(block) == (4 if first_id == 1 else 1)
    assert pool.counts() == (5, 5)


@pytest.mark.parametrize(
    "first, second",
    [("人生如戏。", "人生如戏"), ("ＡＢＣ，好", "abc 好"), ("  风  起了 ", "风起了！"), ("“雪”", "雪")],
)
def test_exact_duplicates_after_normalising_are_stored_once(pool, first, second):
    assert normalize_key(first) == normalize_key(second)
    result = pool.add_batch([first, second], model="m")
    assert (result.new, result.duplicate) == (1, 1)
    assert pool.counts() == (1, 1)


def test_instant_sentence_kept_unused_enters_no_repeat_pool(pool):
    sentence, is_new = pool.add_instant("一句新话", model="m", keep_unused=True)
    assert is_new and not sentence.used
    assert pool.claim_unused().id == sentence.id


def test_instant_sentence_not_kept_is_stored_as_used(pool):
    sentence, _ = pool.add_instant("一句旧话", model="m", keep_unused=False)
    assert sentence.used
    assert pool.claim_unused() is None
    assert pool.get(sentence.id).text == "一句旧话"


def test_instant_duplicate_of_unused_sentence_takes_it_out_of_the_pool(pool):
    pool.add_batch(["重复的话", "别的话一", "别的话二"], model="m")
    sentence, is_new = pool.add_instant("重复的话。", model="m", keep_unused=False)
    assert not is_new and sentence.used
    assert pool.counts() == (3, 2)
    assert {pool.claim_unused().text, pool.claim_unused().text} == {"别的话一", "别的话二"}
    assert pool.claim_unused() is None
    assert pool.counts() == (3, 0)
    assert pool.check_integrity() == []


def test_instant_duplicate_of_a_claimed_sentence_changes_nothing(pool):
    """A sentence already handed out by a claim stays as it was when an instant request
    produces it again: same hand-out time, and the unused count is not taken down twice."""
    pool.add_batch(["说过的话", "没说的话"], model="m")
    claimed = pool.claim_unused()
    sentence, is_new = pool.add_instant(claimed.text, model="m", keep_unused=False)
    assert not is_new and sentence == claimed
    assert pool.counts() == (2, 1)
    assert pool.claim_unused().text != claimed.text
    assert pool.check_integrity() == []


@pytest.mark.parametrize("batch", [1, 4], ids=["one claim", "first of four claimed together"])
def test_claims_are_uniform_over_old_and_new_unused_sentences(pool, batch):
    """SPEC §5: every unused sentence is equally likely, however long it has waited and
    whatever was claimed around it. Each of 1,000 rounds adds 20 sentences, claims 10, adds
    10 more, and records where the next claim falls among the 20 unused ones in insertion
    order; ranks 11-20 are the newcomers. A queue that favours new or old entries, or an
    id-based pick skewed by the used ids between them, fails the chi-square. With several
    claims in one statement (the web serves concurrent requests so), each request's sentence
    must be uniform too, not only the set: the first one is checked."""
    rounds, unused = 1000, 20
    ranks = collections.Counter()
    for round_number in range(rounds):
        pool.add_batch([f"第{round_number}轮旧句{number}" for number in range(20)], model="m")
        assert len(pool.claim_unused_many(10)) == 10
        pool.add_batch([f"第{round_number}轮新句{number}" for number in range(10)], model="m")
        unused_ids = [row[0] for row in pool.connect().execute("SELECT id FROM sentences WHERE used = 0")]
        assert len(unused_ids) == unused
        ranks[sorted(unused_ids).index(pool.claim_unused_many(batch)[0].id)] += 1
        assert len(pool.claim_unused_many(unused)) == unused - batch
    expected = rounds / unused
    chi_square = sum((ranks[rank] - expected) ** 2 / expected for rank in range(unused))
    assert chi_square < 51.2  # df=19, p=0.0001: a false alarm once in 10,000 runs
    assert pool.check_integrity() == []


def _drain(path, start_together, results):
    store = Pool(path)
    store.connect()
    start_together.wait(timeout=60)
    claimed = []
    while (sentence := store.claim_unused()) is not None:
        claimed.append(sentence.id)
        time.sleep(0.001)  # like a request loop: give the other processes a turn at the lock
    results.put(claimed)


def test_concurrent_processes_never_receive_the_same_unused_sentence(tmp_path):
    """Six processes drain a 500-sentence pool at once: each sentence goes out exactly once."""
    store = new_pool(tmp_path)
    fill(store, 500)
    store.close()
    context = multiprocessing.get_context("spawn")
    results = context.Queue()
    start_together = context.Barrier(6)
    processes = [context.Process(target=_drain, args=(store.path, start_together, results)) for _ in range(6)]
    for process in processes:
        process.start()
    claimed_lists = [results.get(timeout=60) for _ in processes]
    for process in processes:
        process.join(timeout=30)
    all_claimed = [sentence_id for claimed in claimed_lists for sentence_id in claimed]
    assert len(all_claimed) == 500
    assert len(set(all_claimed)) == 500
    assert sum(1 for claimed in claimed_lists if claimed) >= 2  # they really ran side by side
    assert Pool(store.path).check_integrity() == []


def test_threads_sharing_one_pool_never_receive_the_same_sentence(pool):
    """16 threads drain 1,600 sentences through one Pool object, as gunicorn's threads do:
    each thread claims on its own connection, so claims never mix up their rows."""
    fill(pool, 1600)
    start_together = threading.Barrier(16)

    def drain() -> list[int]:
        start_together.wait(timeout=30)
        claimed = []
        while (sentence := pool.claim_unused()) is not None:
            claimed.append(sentence.id)
        return claimed

    with concurrent.futures.ThreadPoolExecutor(max_workers=16) as executor:
        claimed_lists = list(executor.map(lambda _: drain(), range(16)))
    all_claimed = [sentence_id for claimed in claimed_lists for sentence_id in claimed]
    assert len(all_claimed) == len(set(all_claimed)) == 1600
    assert sum(1 for claimed in claimed_lists if claimed) >= 2
    assert pool.check_integrity() == []


def test_schema_version_is_recorded_and_migration_is_idempotent(pool):
    assert pool.migrate() == len(MIGRATIONS)
    version = pool.connect().execute("PRAGMA user_version").fetchone()[0]
    assert version == len(MIGRATIONS)
    assert pool.connect().execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_corrupt_file_fails_with_pool_error(tmp_path):
    path = tmp_path / "broken.db"
    path.write_bytes(b"this is not a sqlite database" * 100)
    with pytest.raises(PoolError, match="broken.db"):
        Pool(path).migrate()


def test_unwritable_location_fails_with_pool_error(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(PoolError):
        Pool(blocker / "sub" / "pool.db").migrate()


def test_a_version_1_pool_is_migrated_forward_with_its_data(tmp_path):
    path = tmp_path / "old.db"
    old = sqlite3.connect(path, isolation_level=None)
    old.executescript(MIGRATIONS[0] + "PRAGMA user_version = 1;")
    old.execute(
        "INSERT INTO sentences (id, uuid, text, norm_key, source, model, created_at) "
        "VALUES (1, 'u1', '旧句一', '旧句一', 'batch', 'm', '2026-01-01T00:00:00Z'),"
        " (2, 'u2', '旧句二', '旧句二', 'batch', 'm', '2026-01-01T00:00:00Z'),"
        " (3, 'u3', '旧句三', '旧句三', 'batch', 'm', '2026-01-01T00:00:00Z')"
    )
    old.execute("UPDATE sentences SET used = 1, handed_out_at = created_at WHERE id = 2")
    old.execute("INSERT INTO unused_slots (pos, sentence_id) VALUES (1, 1), (2, 3)")
    old.close()
    pool = Pool(path)
    assert pool.migrate() == len(MIGRATIONS)
    assert pool.counts() == (3, 2)
    assert {pool.claim_unused().text, pool.claim_unused().text} == {"旧句一", "旧句三"}
    assert pool.claim_unused() is None
    assert pool.handed_out_at(2) == "2026-01-01T00:00:00Z"
    assert pool.check_integrity() == []


def test_a_version_4_pool_keeps_its_queue_and_hand_outs_when_migrated(tmp_path):
    """Migration 5 moves each queued sentence's clock onto its row: the unused stay unused
    (a stale queue entry of a sentence handed out directly does not revive it), and the
    handed-out keep their times."""
    path = tmp_path / "v4.db"
    old = sqlite3.connect(path, isolation_level=None)
    old.create_function("exponential_clock", 0, pool_module.exponential_clock)
    for script in MIGRATIONS[:4]:
        old.executescript(script)
    old.execute("PRAGMA user_version = 4")
    old.execute(
        "INSERT INTO sentences (id, uuid, text, norm_key, source, model, created_at) VALUES"
        " (1, 'u1', '句一', '句一', 'batch', 'm', '2026-01-01T00:00:00Z'),"
        " (2, 'u2', '句二', '句二', 'batch', 'm', '2026-01-01T00:00:00Z'),"
        " (3, 'u3', '句三', '句三', 'batch', 'm', '2026-01-01T00:00:00Z'),"
        " (4, 'u4', '句四', '句四', 'batch', 'm', '2026-01-01T00:00:00Z')"
    )
    old.execute("INSERT INTO unused_queue (clock, sentence_id) VALUES (0.5, 1), (0.7, 2), (0.9, 3), (1.1, 4)")
    old.execute("DELETE FROM unused_queue WHERE sentence_id = 1")  # a v4 claim
    old.execute("UPDATE sentences SET used = 1, handed_out_at = '2026-02-02T00:00:00Z' WHERE id = 2")
    old.close()
    pool = Pool(path)
    assert pool.migrate() == len(MIGRATIONS)
    assert pool.counts() == (4, 2)
    assert pool.get(1).used and pool.handed_out_at(1) is not None
    assert pool.handed_out_at(2) == "2026-02-02T00:00:00Z"
    assert {pool.claim_unused().text, pool.claim_unused().text} == {"句三", "句四"}
    assert pool.claim_unused() is None
    assert pool.check_integrity() == []


def test_each_claimed_sentence_keeps_the_time_of_its_own_claim(pool):
    """Hand-out times come from the claim that passed each sentence, not from a later one."""
    fill(pool, 6)
    first = pool.claim_unused_many(3)
    first_at = {pool.handed_out_at(sentence.id) for sentence in first}
    # Until the clock that stamps the claims, SQLite's, is past that second. Waiting on
    # Python's clock instead once let the next claim be stamped with the first one's second
    # (a run two minutes after the machine booted); the two clocks are read separately.
    clock = pool.connect()
    while clock.execute("SELECT strftime('%Y-%m-%dT%H:%M:%SZ', 'now')").fetchone()[0] <= max(first_at):
        time.sleep(0.05)
    second = pool.claim_unused_many(3)
    second_at = {pool.handed_out_at(sentence.id) for sentence in second}
    assert len(first_at) == len(second_at) == 1 and first_at != second_at
    assert pool.handed_out_at(first[0].id) in first_at  # unchanged by the second claim
    for claimed in (first, second):
        assert [pool.get(sentence.id) for sentence in claimed] == claimed


def test_a_pool_from_a_newer_version_is_refused_at_start_up_and_left_as_it_is(pool):
    """Older code on a newer pool would start, then fail every claim (its capture trigger
    is only installed on the schema it knows): it must stop at start-up instead."""
    fill(pool, 3)
    conn = pool.connect()
    conn.execute(f"PRAGMA user_version = {len(MIGRATIONS) + 1}")
    pool.close()
    newer = Pool(pool.path)
    with pytest.raises(PoolError, match="newer"):
        newer.migrate()
    assert newer._local.conn is None  # closed, like every other refusal at start-up
    check = sqlite3.connect(pool.path)
    try:
        assert check.execute("PRAGMA user_version").fetchone()[0] == len(MIGRATIONS) + 1
        assert check.execute("SELECT COUNT(*) FROM sentence_rows").fetchone()[0] == 3
    finally:
        check.close()


def test_start_up_waits_for_another_process_migrating(tmp_path, monkeypatch):
    """A process starting while another holds the pool's write lock for longer than a
    request would wait (e.g. migrating a large pool) waits for it instead of failing."""
    monkeypatch.setattr(pool_module, "BUSY_TIMEOUT_MS", 100)
    monkeypatch.setattr(pool_module, "MIGRATION_BUSY_TIMEOUT_MS", 10_000)
    Pool(tmp_path / "pool.db").migrate()
    holder = sqlite3.connect(tmp_path / "pool.db", isolation_level=None, check_same_thread=False)
    holder.execute("BEGIN IMMEDIATE")
    releaser = threading.Timer(1.0, holder.execute, ("COMMIT",))
    releaser.start()
    try:
        with pytest.raises(PoolError):  # a request-sized wait gives up
            Pool(tmp_path / "pool.db").add_batch(["等不及的话"], model="m")
        assert Pool(tmp_path / "pool.db").migrate() == len(MIGRATIONS)
    finally:
        releaser.join()
        holder.close()


def test_a_connection_without_its_capture_trigger_fails_instead_of_handing_out_nothing(pool):
    """Defence in depth: if a connection ever lost its capture trigger, a claim cannot tell
    which sentences it took; it must fail, not answer as if the pool were empty."""
    fill(pool, 20)
    pool.connect().execute("DROP TRIGGER temp.capture_taken")
    with pytest.raises(PoolError):
        pool.claim_unused()
    assert pool.counts() == (20, 19)
    assert pool.check_integrity() == []
