"""gunicorn settings: threads (gthread) so a request waiting on an instant job holds a
thread, not a whole process; port from PORT or config.json."""

import ctypes
import json
import multiprocessing
import os


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

# glibc's mallopt parameter for the most malloc arenas a process may create.
M_ARENA_MAX = -8
WEB_MALLOC_ARENAS = 2


def post_fork(server, worker):
    """At most two malloc arenas per web worker instead of glibc's eight per core. Python runs
    one thread at a time (the GIL), so more arenas buy no parallelism, but each keeps its own
    freed pages: with 32 threads spread over 16 arenas a worker's RSS crept up long after
    warm-up (bench/memory.py: +5.7 % over 10,000 requests; 3.2-4.5 % with two arenas)."""
    try:
        ctypes.CDLL(None).mallopt(M_ARENA_MAX, WEB_MALLOC_ARENAS)
    except (OSError, AttributeError):
        pass  # not glibc: that allocator's own policy applies


def worker_exit(server, worker):
    """Give the sentences this worker reserved ahead back to the pool (hitokoto.reserve), so a
    restart or a scale-down takes nothing out of the no-repeat pool."""
    services = getattr(worker.wsgi, "extensions", {}).get("hitokoto")
    if services is not None:
        services.handout.give_back()
