"""gunicorn settings: threads (gthread) so a request waiting on an instant job holds a
thread, not a whole process; port from PORT or config.json."""

import json
import multiprocessing
import os
import threading


def _config_port() -> int:
    try:
        with open(os.environ.get("HITOKOTO_CONFIG", "config.json"), encoding="utf-8") as handle:
            return int(json.load(handle).get("port", 65530))
    except (OSError, ValueError, TypeError, AttributeError):
        return 65530  # wsgi.py reports the real config problem with one clear line


bind = f"{os.environ.get('HOST', '0.0.0.0')}:{os.environ.get('PORT') or _config_port()}"
worker_class = "gthread"
workers = int(os.environ.get("WEB_CONCURRENCY", min(multiprocessing.cpu_count() * 2, 8)))
threads = int(os.environ.get("WEB_THREADS", 32))
preload_app = True  # a bad config stops the master once, with one line, instead of every worker
timeout = 120
graceful_timeout = 30
keepalive = 5
accesslog = None if os.environ.get("GUNICORN_ACCESS_LOG") == "off" else "-"  # off: benchmarks
# Client address, and what a proxy in front says it is (believed only with trusted_proxies).
access_log_format = '%(h)s forwarded-for=%({x-forwarded-for}i)s "%(r)s" %(s)s %(b)s %(M)sms'
# One shared $HOME/.gunicorn/gunicorn.ctl would clash between instances; we do not use it.
control_socket_disable = True


def post_worker_init(worker):
    """Start all request threads now. gunicorn's pool starts them one by one as load
    overlaps, so a worker's memory crept up for tens of thousands of requests (each thread
    brings its stack and its own SQLite connection: bench/memory.py); started here, the
    threads' memory is all there once the first requests have touched each of them."""
    thread_pool = getattr(worker, "tpool", None)  # gthread workers only
    if thread_pool is None:
        return
    all_started = threading.Barrier(worker.cfg.threads)
    waits = [thread_pool.submit(all_started.wait, 10) for _ in range(worker.cfg.threads)]
    try:
        for wait in waits:
            wait.result()
    except threading.BrokenBarrierError:
        worker.log.warning("not every request thread started in time; the rest start on demand")
