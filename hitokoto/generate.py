"""Model calls through the official openai SDK, and cleaning/validation of what comes back."""

from __future__ import annotations

import re
import threading

import openai

from hitokoto.config import Config

# Local OpenAI-compatible servers accept any key; the SDK insists on having one.
NO_KEY_PLACEHOLDER = "not-needed"

_NUMBERING = re.compile(
    r"^\s*(?:[\(（\[]?\d{1,3}[\)）\]]|\d{1,3}\s*[\.、:：．)]|[一二三四五六七八九十]+[、.．])\s*"
)
_BULLET = re.compile(r"^\s*(?:[-*•·●◦▪]|>)\s+")
_QUOTE_PAIRS = ('""', "''", "“”", "‘’", "「」", "『』", "《》", "«»", "``")
_REFUSALS = re.compile(
    r"(i\s*(can(no|')t|cannot|am unable|'m unable|won't)|i'?m sorry|as an ai|language model"
    r"|抱歉|对不起|我不能|我无法|作为一个?(ai|人工智能|语言模型)|很遗憾)",
    re.IGNORECASE,
)
_PREAMBLE = re.compile(r"[:：]\s*$")


class GenerationError(Exception):
    """The model failed or gave unusable output. The message is safe to show to clients."""


class CallCancelled(Exception):
    """A held model call was cancelled before its request was sent: nothing was spent."""


class SendGate:
    """Holds the model requests of a thread that waits at it (hold_requests) until open() or
    cancel(). The SDK spends ~1.5 ms of Python building a request before its HTTP client sends
    it (bench/FINDINGS.md): a call held here has done that work before it is needed."""

    def __init__(self):
        self._decided = threading.Event()
        self._cancelled = False

    def open(self) -> None:
        self._decided.set()

    def cancel(self) -> None:
        self._cancelled = True
        self._decided.set()

    def wait(self) -> None:
        self._decided.wait()
        if self._cancelled:
            raise CallCancelled()


_held = threading.local()  # .gate: the SendGate this thread's requests wait at, if any


def hold_requests(gate: SendGate | None) -> None:
    """From now on, this thread's model requests wait at `gate` before they are sent (and
    retries of an opened one go straight through)."""
    _held.gate = gate


def _wait_at_gate(request) -> None:
    """httpx request hook: it runs in the sending thread, once the request is built and
    before any proxy or transport is chosen, so nothing held can leave early."""
    gate = getattr(_held, "gate", None)
    if gate is not None:
        gate.wait()


def make_client(config: Config) -> openai.OpenAI:
    """One SDK client per worker process: bounded timeout and retries (the SDK backs off on
    429, honouring Retry-After, and on 5xx). Its HTTP client is the SDK's own default one,
    with the hook that holds requests at a thread's SendGate."""
    return openai.OpenAI(
        api_key=config.api_key or NO_KEY_PLACEHOLDER,
        base_url=config.base_url or None,
        timeout=config.model_timeout,
        max_retries=config.model_max_retries,
        http_client=openai.DefaultHttpxClient(event_hooks={"request": [_wait_at_gate]}),
    )


def _describe_sdk_error(exc: openai.OpenAIError) -> str:
    # Built from the status only: SDK messages can quote request details we do not want shown.
    if isinstance(exc, openai.AuthenticationError | openai.PermissionDeniedError):
        return "the model API rejected the configured credentials"
    if isinstance(exc, openai.RateLimitError):
        return "the model API is rate limiting or out of quota; try again later"
    if isinstance(exc, openai.APITimeoutError):
        return "the model API did not answer in time"
    if isinstance(exc, openai.APIConnectionError):
        return "the model API could not be reached"
    if isinstance(exc, openai.APIStatusError):
        return f"the model API answered with HTTP {exc.status_code}"
    return "the model API returned a response that could not be read"


def ask_model(client: openai.OpenAI, model: str, prompt: str) -> str:
    """Send one chat completion; returns the raw text of the first choice.

    Raises GenerationError on any SDK failure or an answer with no text.
    """
    try:
        response = client.chat.completions.create(model=model, messages=[{"role": "user", "content": prompt}])
        content = response.choices[0].message.content if response.choices else None
    except openai.OpenAIError as exc:
        raise GenerationError(_describe_sdk_error(exc)) from None
    except (AttributeError, TypeError, ValueError, IndexError):
        raise GenerationError("the model API returned a response that could not be read") from None
    if not isinstance(content, str) or not content.strip():
        raise GenerationError("the model returned an empty answer")
    return content


def clean_line(line: str) -> str:
    """Strip numbering, bullets, surrounding quotes and whitespace from one line."""
    text = " ".join(line.split())
    text = _BULLET.sub("", text)
    text = _NUMBERING.sub("", text)
    text = text.strip()
    while len(text) >= 2 and text[0] + text[-1] in _QUOTE_PAIRS:
        text = text[1:-1].strip()
    return text


def usable(text: str, max_length: int) -> bool:
    """A sentence we are willing to store: non-empty, not too long, not a refusal."""
    return 2 <= len(text) <= max_length and not _REFUSALS.search(text) and not _PREAMBLE.search(text)


def sentences_from(raw: str, max_length: int) -> tuple[list[str], int]:
    """Split a model answer into cleaned, usable sentences, one per line.

    Returns (sentences, rejected_line_count).
    """
    sentences, rejected = [], 0
    for line in raw.splitlines():
        if not line.strip():
            continue
        text = clean_line(line)
        if usable(text, max_length):
            sentences.append(text)
        else:
            rejected += 1
    return sentences, rejected


def generate_one(client: openai.OpenAI, config: Config) -> str:
    """One new sentence for an instant request. Raises GenerationError."""
    sentences, _rejected = sentences_from(ask_model(client, config.model, config.prompt), config.max_length)
    if not sentences:
        raise GenerationError("the model's answer was not a usable sentence")
    return sentences[0]


def generate_many(client: openai.OpenAI, config: Config, count: int) -> tuple[list[str], int]:
    """Up to `count` sentences from one model call. Returns (sentences, rejected_lines).

    Raises GenerationError when the call fails.
    """
    prompt = config.batch_prompt.replace("{count}", str(count))
    sentences, rejected = sentences_from(ask_model(client, config.model, prompt), config.max_length)
    return sentences[:count], rejected
