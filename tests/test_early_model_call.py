"""A worker builds the next instant job's model call while it waits, and sends it as soon as
it pops the job's id, while RQ fetches the job and records it as started; the job function
takes that call's answer instead of asking again, a call armed but never fired sends
nothing, and a call whose job never runs still keeps its sentence."""

import json
import signal
import threading

import pytest
from rq import Queue
from rq.exceptions import DequeueTimeout
from rq.job import Job

import hitokoto.jobs
from hitokoto.generate import SendGate, generate_many
from hitokoto.queues import INSTANT_JOB, connect
from tests.conftest import raw_config
from tests.fake_model import Script
from tests.helpers import assert_stays, wait_until
from worker import EarlyCallQueue, ResilientWorker


def use_config(monkeypatch, path, raw: dict) -> None:
    """Job functions in this process load `raw` (written to `path`) from their next use on,
    as a worker started on that config would."""
    path.write_text(json.dumps(raw))
    monkeypatch.setenv("HITOKOTO_CONFIG", str(path))
    hitokoto.jobs.worker_context.cache_clear()


@pytest.fixture
def job_context(tmp_path, service_dir, monkeypatch):
    """Job functions run in this process, on a pool file of their own."""
    for name in ("OPENAI_API_KEY", "OPENAI_BASE_URL", "REDIS_URL"):
        monkeypatch.delenv(name, raising=False)
    raw = raw_config(service_dir, database=str(tmp_path / "early"), model_max_retries=0)
    use_config(monkeypatch, tmp_path / "config.json", raw)
    context = hitokoto.jobs.worker_context()
    yield context
    context.pool.close()
    hitokoto.jobs.worker_context.cache_clear()


@pytest.fixture
def queue(redis_url, request, monkeypatch):
    """A queue of instant jobs of this test's own: the session's worker.py processes do not
    listen on it."""
    queue = Queue(f"early-{request.node.name}", connection=connect(redis_url))
    monkeypatch.setattr(EarlyCallQueue, "early_call_queues", frozenset({queue.name}))
    yield queue
    queue.delete(delete_jobs=True)


def work_in_burst(queue: Queue) -> bool:
    """Run a ResilientWorker in this process until `queue` is empty; RQ installs its own
    SIGINT/SIGTERM handlers, so pytest's are put back afterwards."""
    handlers = {signum: signal.getsignal(signum) for signum in (signal.SIGINT, signal.SIGTERM)}
    try:
        return ResilientWorker([queue.name], connection=queue.connection).work(burst=True)
    finally:
        for signum, handler in handlers.items():
            signal.signal(signum, handler)


def run_as_popped(queue: Queue, keep_unused: bool = False) -> dict:
    """Enqueue an instant job and run it as a worker does: its model call is fired when its
    id is popped, then the job function runs; returns the job's outcome."""
    job = queue.enqueue(INSTANT_JOB, keep_unused)
    hitokoto.jobs.start_model_call_early(job.id)
    outcome = job.perform()
    hitokoto.jobs.orphan_early_model_calls()
    return outcome


def test_the_job_takes_the_answer_of_the_call_started_before_it_ran(job_context, queue, fake_model):
    job = queue.enqueue(INSTANT_JOB, False)
    hitokoto.jobs.start_model_call_early(job.id)
    wait_until(lambda: fake_model.calls == 1, message="the early model call")
    outcome = job.perform()
    hitokoto.jobs.orphan_early_model_calls()
    assert fake_model.calls == 1  # not asked a second time
    stored = job_context.pool.get(outcome["sentence"]["id"])
    assert stored.text == outcome["sentence"]["text"] and stored.used


def test_a_failed_early_call_is_the_jobs_upstream_error(job_context, queue, fake_model):
    fake_model.script = Script(status=500)
    outcome = run_as_popped(queue, keep_unused=True)
    assert outcome["error"]["code"] == "upstream_error"
    assert fake_model.calls == 1
    assert job_context.pool.counts() == (0, 0)


def test_the_worker_asks_the_model_before_rq_fetches_the_job(job_context, queue, fake_model, monkeypatch):
    """RQ's fetch of the popped job is held until the model has been asked: with the call
    started any later, the wait would time out and the test fail."""
    fetch = Job.fetch.__func__

    def after_the_model_was_asked(job_class, job_id, *args, **kwargs):
        wait_until(lambda: fake_model.calls == 1, timeout_s=5, message="the model call to start first")
        return fetch(job_class, job_id, *args, **kwargs)

    job = queue.enqueue(INSTANT_JOB, False)
    with monkeypatch.context() as patch:
        patch.setattr(Job, "fetch", classmethod(after_the_model_was_asked))
        work_in_burst(queue)
    job.refresh()
    assert job.is_finished, job.get_status()
    assert fake_model.calls == 1
    assert job_context.pool.get(job.return_value()["sentence"]["id"]) is not None


def test_a_job_gone_before_rq_fetched_it_still_adds_its_sentence_to_the_pool(job_context, queue, fake_model):
    """Its model call had started when the id was popped: the tokens are spent, so the
    sentence goes into the pool as unused instead of being dropped."""
    job = queue.enqueue(INSTANT_JOB, False)
    queue.connection.delete(job.key)  # deleted by hand, or expired, while its id was queued
    assert not work_in_burst(queue)  # no job ran
    wait_until(lambda: job_context.pool.counts() == (1, 1), message="the orphaned call's sentence")
    assert fake_model.calls == 1


def test_a_job_gone_keeps_its_sentence_when_the_next_pop_times_out(job_context, queue, fake_model):
    """A listening worker pops again after a job it cannot fetch, and waits: its wait ending
    with no job (RQ's DequeueTimeout) settles the orphaned call too."""
    job = queue.enqueue(INSTANT_JOB, False)
    queue.connection.delete(job.key)
    with pytest.raises(DequeueTimeout):
        EarlyCallQueue.dequeue_any(
            [EarlyCallQueue(queue.name, connection=queue.connection)], 1, queue.connection
        )
    wait_until(lambda: job_context.pool.counts() == (1, 1), message="the orphaned call's sentence")


def test_a_job_whose_data_cannot_be_read_fails_keeps_its_sentence_and_the_worker_goes_on(
    job_context, queue, fake_model
):
    unreadable, readable = queue.enqueue(INSTANT_JOB, False), queue.enqueue(INSTANT_JOB, False)
    queue.connection.hset(unreadable.key, "data", b"not a pickle")
    assert work_in_burst(queue)
    assert unreadable.get_status(refresh=True) == "failed"
    assert readable.get_status(refresh=True) == "finished"
    assert fake_model.calls == 2  # each popped id started a call
    # the readable job's sentence, handed out; the failed job's call's, kept unused
    wait_until(lambda: job_context.pool.counts() == (2, 1), message="the orphaned call's sentence")


def test_with_no_thread_to_be_had_the_job_asks_the_model_itself(job_context, queue, fake_model, monkeypatch):
    def no_thread(_thread):
        raise RuntimeError("can't start new thread")

    job = queue.enqueue(INSTANT_JOB, False)
    with monkeypatch.context() as patch:
        patch.setattr(threading.Thread, "start", no_thread)
        hitokoto.jobs.start_model_call_early(job.id)
    assert fake_model.calls == 0
    outcome = job.perform()
    assert fake_model.calls == 1 and job_context.pool.get(outcome["sentence"]["id"]) is not None


@pytest.fixture
def requests_held(monkeypatch):
    """Counts model requests that reached their SendGate (built, and waiting to be sent)."""
    held = []
    wait = SendGate.wait

    def counted_wait(gate):
        held.append(gate)
        wait(gate)

    monkeypatch.setattr(SendGate, "wait", counted_wait)
    return held


def arm_and_wait(requests_held: list) -> None:
    hitokoto.jobs.arm_model_call()
    wait_until(lambda: len(requests_held) == 1, message="the armed call's request to be built")


def test_an_armed_call_builds_its_request_but_sends_it_only_when_its_job_is_popped(
    job_context, queue, fake_model, requests_held
):
    arm_and_wait(requests_held)
    assert_stays(lambda: fake_model.calls == 0, message="no model call while the call is armed")
    outcome = run_as_popped(queue)
    assert fake_model.calls == 1
    assert job_context.pool.get(outcome["sentence"]["id"]).text == outcome["sentence"]["text"]


def test_a_worker_arms_a_call_before_each_wait_and_an_unfired_one_costs_nothing(
    job_context, queue, fake_model, requests_held
):
    """One job: the call armed before the first pop serves it, the one armed before the
    second pop (which finds the queue empty) is never sent."""
    job = queue.enqueue(INSTANT_JOB, False)
    assert work_in_burst(queue)
    assert job.get_status(refresh=True) == "finished"
    wait_until(lambda: len(requests_held) == 2, message="a call armed for the next job")
    assert_stays(lambda: fake_model.calls == 1, message="one model call, for the one job")
    assert job_context.pool.counts() == (1, 0)


def test_other_model_calls_on_the_same_client_are_not_held(job_context, fake_model, requests_held):
    arm_and_wait(requests_held)
    texts, _rejected = generate_many(job_context.client, job_context.config, 3)  # as a batch job does
    assert len(texts) == 3 and fake_model.calls == 1


def test_a_call_armed_for_an_earlier_config_is_not_sent(
    job_context, queue, fake_model, requests_held, service_dir, tmp_path, monkeypatch
):
    arm_and_wait(requests_held)
    reloaded = raw_config(service_dir, database=str(tmp_path / "reloaded"), prompt="换一句新的提示。")
    use_config(monkeypatch, tmp_path / "reloaded.json", reloaded)
    outcome = run_as_popped(queue)
    hitokoto.jobs.worker_context().pool.close()
    assert "sentence" in outcome
    # the earlier config's call is never sent: only the new config's prompt reaches the model
    assert_stays(lambda: fake_model.prompts == ["换一句新的提示。"], message="only the new config's call")


def test_behind_a_proxy_an_armed_call_is_still_held(
    job_context, queue, fake_model, requests_held, service_dir, tmp_path, monkeypatch
):
    """The hook runs before httpx picks a proxy's transport: with the model API reached
    through HTTP_PROXY (here the stand-in itself, which answers any path), an armed call
    sends nothing until it is fired, and then goes through the proxy."""
    monkeypatch.setenv("HTTP_PROXY", fake_model.base_url.removesuffix("/v1"))
    for name in ("NO_PROXY", "no_proxy", "http_proxy", "ALL_PROXY", "all_proxy"):
        monkeypatch.delenv(name, raising=False)
    proxied = raw_config(service_dir, database=str(tmp_path / "proxied"), base_url="http://model.invalid/v1")
    use_config(monkeypatch, tmp_path / "proxied.json", proxied)
    arm_and_wait(requests_held)
    assert_stays(lambda: fake_model.calls == 0, message="no model call while the call is armed")
    outcome = run_as_popped(queue)
    hitokoto.jobs.worker_context().pool.close()
    assert "sentence" in outcome and fake_model.calls == 1
