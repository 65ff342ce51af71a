"""gunicorn entry point: `gunicorn -c gunicorn.conf.py wsgi:app`."""

from hitokoto.startup import create_app_or_exit

app = create_app_or_exit()
