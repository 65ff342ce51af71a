"""A local stand-in for the paid model API: speaks the chat-completions protocol.

Tests change `server.script` to make it slow, fail with a status, or return junk. It can
also run alone for benchmarks: `python tests/fake_model.py --port 8099 --delay 0.2`.
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import json
import re
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

_WORDS = ("风", "灯", "河", "墙", "门", "雪", "钟", "路", "镜", "桥", "雨", "影")


@dataclasses.dataclass
class Script:
    """What the next answers look like. content=None invents unique sentences."""

    status: int = 200
    content: str | None = None
    delay_s: float = 0.0
    headers: dict = dataclasses.field(default_factory=dict)
    raw_body: bytes | None = None  # sent as-is instead of a completion (junk)
    lines_short_by: int = 0  # a batch answer with fewer lines than asked


class FakeModelServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, port: int = 0):
        super().__init__(("127.0.0.1", port), _Handler)
        self.script = Script()
        self.calls = 0
        self.prompts: list[str] = []
        self._counter = itertools.count(1)
        self._lock = threading.Lock()

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}/v1"

    def reset(self) -> None:
        with self._lock:
            self.script = Script()
            self.calls = 0
            self.prompts = []

    def invent(self) -> str:
        number = next(self._counter)
        word = _WORDS[number % len(_WORDS)]
        return f"第{number}次回头，{word}还在原处，变的是看{word}的人。"

    def record(self, prompt: str) -> Script:
        with self._lock:
            self.calls += 1
            self.prompts.append(prompt)
            return self.script

    def start(self) -> FakeModelServer:
        threading.Thread(target=self.serve_forever, daemon=True).start()
        return self


class _Handler(BaseHTTPRequestHandler):
    server: FakeModelServer

    def log_message(self, *args):  # keep test output quiet
        pass

    def do_POST(self):
        length = int(self.headers.get("Content-Length", 0))
        request = json.loads(self.rfile.read(length) or b"{}")
        prompt = request.get("messages", [{}])[-1].get("content", "")
        script = self.server.record(prompt)
        if script.delay_s:
            time.sleep(script.delay_s)
        if script.status != 200:
            body = json.dumps({"error": {"message": "scripted failure", "type": "server_error"}})
            return self._send(script.status, body.encode(), script.headers)
        if script.raw_body is not None:
            return self._send(200, script.raw_body, script.headers)
        content = script.content if script.content is not None else self._invent_answer(prompt, script)
        completion = {
            "id": "chatcmpl-fake",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": request.get("model", "fake"),
            "choices": [
                {"index": 0, "finish_reason": "stop", "message": {"role": "assistant", "content": content}}
            ],
            "usage": {"prompt_tokens": 10, "completion_tokens": 20, "total_tokens": 30},
        }
        self._send(200, json.dumps(completion, ensure_ascii=False).encode(), script.headers)

    def _invent_answer(self, prompt: str, script: Script) -> str:
        asked = re.search(r"(\d+)\s*句", prompt)
        count = int(asked.group(1)) if asked else 1
        return "\n".join(self.server.invent() for _ in range(max(1, count - script.lines_short_by)))

    def _send(self, status: int, body: bytes, headers: dict) -> None:
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        for name, value in headers.items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(body)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description="Run the chat-completions stand-in.")
    parser.add_argument("--port", type=int, default=8099)
    parser.add_argument("--delay", type=float, default=0.0, help="seconds before each answer")
    args = parser.parse_args()
    server = FakeModelServer(args.port)
    server.script.delay_s = args.delay
    print(f"fake model at {server.base_url}", flush=True)
    server.serve_forever()
