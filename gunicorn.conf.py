"""gunicorn settings: threads (gthread) so a request waiting on an instant job holds a
thread, not a whole process; port from PORT or config.json."""

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
