"""Context-length errors of OpenAI-compatible servers: recognised, with the numbers they state.

A context-length HTTP 400 says the same thing in five servers' words. :func:`parse_overflow`
recognises the real error bodies of OpenAI, vLLM (old and new wordings), llama.cpp, Ollama and
DashScope (kept as test fixtures in ``tests/fixtures/overflow_errors.json``, each with where it
comes from) and reads whatever numbers they give: the window, the server's count of the
prompt, the reply room, DashScope's input limit. Rate limits, bad keys and other 400s are not
overflows.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Overflow:
    """A context-length error, and the numbers it stated.

    Attributes:
        provider: Whose wording it matched: ``"openai"``, ``"vllm"``, ``"llama.cpp"``,
            ``"ollama"``, ``"dashscope"`` or ``"unknown"`` (a generic wording).
        message: The server's message.
        context_window: The window the server stated.
        prompt_tokens: The server's count of the prompt it refused.
        completion_tokens: The reply room it counted (``max_tokens``), when it said.
        max_prompt_tokens: The most input tokens it accepts (DashScope states this, not the
            window).
    """

    provider: str
    message: str
    context_window: int | None = None
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    max_prompt_tokens: int | None = None

    @property
    def prompt_limit(self) -> int | None:
        """The most prompt tokens the server takes, from what it said (None if unknown)."""
        if self.max_prompt_tokens is not None:
            return self.max_prompt_tokens
        if self.context_window is not None and self.completion_tokens is not None:
            return self.context_window - self.completion_tokens
        return None

    def describe(self) -> str:
        """The numbers, readably: ``"window 2048, prompt 4322 tokens"``."""
        parts = []
        if self.context_window is not None:
            parts.append(f"window {self.context_window}")
        if self.max_prompt_tokens is not None:
            parts.append(f"input limit {self.max_prompt_tokens}")
        if self.prompt_tokens is not None:
            parts.append(f"prompt {self.prompt_tokens} tokens")
        if self.completion_tokens is not None:
            parts.append(f"reply {self.completion_tokens}")
        return ", ".join(parts) or "no numbers"


_I = re.IGNORECASE
# (provider, pattern, groups -> fields). Checked in order; every match adds its numbers.
_PATTERNS: tuple[tuple[str, re.Pattern[str], tuple[str, ...]], ...] = (
    # vLLM >= 0.6: "'max_tokens' or 'max_completion_tokens' is too large: 8000. This model's
    # maximum context length is 4096 tokens and your request has 2778 input tokens (...)".
    (
        "vllm",
        re.compile(
            r"'max_tokens' or 'max_completion_tokens' is too large: (\d+)\. This model's maximum "
            r"context length is (\d+) tokens and your request has (\d+) input tokens",
            _I,
        ),
        ("completion_tokens", "context_window", "prompt_tokens"),
    ),
    # OpenAI and vLLM < 0.6: "... However, you requested 4120 tokens (3120 in the messages,
    # 1000 in the completion)".
    (
        "openai",
        re.compile(r"\((\d+) in the messages, (\d+) in the completion\)", _I),
        ("prompt_tokens", "completion_tokens"),
    ),
    # OpenAI: "However, your messages resulted in 8243 tokens"; vLLM: "However, your request
    # has 372027 input tokens"; vLLM < 0.6 without max_tokens: "you requested 40000 tokens in
    # the messages".
    (
        "openai",
        re.compile(
            r"(?:your messages resulted in|your request has|you requested) (\d+) "
            r"(?:input )?tokens(?! \()",
            _I,
        ),
        ("prompt_tokens",),
    ),
    ("openai", re.compile(r"maximum context length is (\d+) tokens", _I), ("context_window",)),
    # vLLM V1 engine: "The decoder prompt (length 40000) is longer than the maximum model
    # length of 32768."
    (
        "vllm",
        re.compile(r"prompt \(length (\d+)\) is longer than the maximum model length of (\d+)", _I),
        ("prompt_tokens", "context_window"),
    ),
    # llama.cpp: "request (10032 tokens) exceeds the available context size (2048 tokens)".
    (
        "llama.cpp",
        re.compile(r"request \((\d+) tokens\) exceeds the available context size \((\d+)", _I),
        ("prompt_tokens", "context_window"),
    ),
    ("llama.cpp", re.compile(r"exceeds the available context size", _I), ()),
    # DashScope: "<400> InternalError.Algo.InvalidParameter: Range of input length should be
    # [1, 129024]" (the input limit, not the window); qwen-long: "Total message token length
    # exceed model limit (10000000 tokens)".
    (
        "dashscope",
        re.compile(r"Range of input length should be \[\s*1\s*,\s*(\d+)\s*\]", _I),
        ("max_prompt_tokens",),
    ),
    (
        "dashscope",
        re.compile(r"Total message token length exceed model limit \((\d+) tokens\)", _I),
        ("context_window",),
    ),
    # Ollama (llama-server runner, truncation off): "the prompt is longer than the context
    # length currently available to the model; ..."; its embedding and native paths: "the
    # input length exceeds the context length", "input exceeds maximum context length".
    ("ollama", re.compile(r"prompt is longer than the context length", _I), ()),
    ("ollama", re.compile(r"input length exceeds the context length", _I), ()),
    ("ollama", re.compile(r"exceeds maximum context length", _I), ()),
    (
        "ollama",
        re.compile(
            r"input length \((\d+) tokens\) exceeds the model's maximum context length "
            r"\((\d+) tokens\)",
            _I,
        ),
        ("prompt_tokens", "context_window"),
    ),
    # OpenAI Responses-era wording, no numbers.
    ("openai", re.compile(r"input exceeds the context window of this model", _I), ()),
)
_CODES = {"context_length_exceeded": "openai", "exceed_context_size_error": "llama.cpp"}


def _error_object(body: Any) -> Mapping[str, Any]:
    if isinstance(body, (str, bytes)):
        try:
            body = json.loads(body)
        except ValueError:
            return {"message": body.decode(errors="replace") if isinstance(body, bytes) else body}
    if not isinstance(body, Mapping):
        return {}
    error = body.get("error", body)
    if isinstance(error, str):
        return {"message": error}
    return error if isinstance(error, Mapping) else {}


def _int(value: Any) -> int | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int) and value > 0:
        return value
    if isinstance(value, str) and value.isdigit() and int(value) > 0:
        return int(value)
    return None


def parse_overflow(status: int | None, body: Any) -> Overflow | None:
    """Recognises a context-length error and reads its numbers.

    Args:
        status: The HTTP status (400 for all five servers; 413 and 500 from some Ollama
            paths). Statuses that are never an overflow (401, 404, 429, ...) return None, so
            a rate limit that speaks of "tokens per minute" is not mistaken for one.
        body: The response body: raw text, or its parsed JSON (``{"error": {...}}``, vLLM's
            older flat ``{"object": "error", "message": ...}``, or Ollama's
            ``{"error": "..."}``).

    Returns:
        The :class:`Overflow`, or None when the error is something else.
    """
    if status is not None and status not in (400, 413, 500):
        return None
    error = _error_object(body)
    message = str(error.get("message") or "")
    code = error.get("code")
    kind = error.get("type")
    provider: str | None = None
    if isinstance(code, str) and code in _CODES:
        provider = _CODES[code]
    if isinstance(kind, str) and kind in _CODES:
        provider = _CODES[kind]
    found: dict[str, int] = {}
    for name, pattern, fields in _PATTERNS:
        match = pattern.search(message)
        if match is None:
            continue
        if provider is None or (provider == "openai" and name != "openai"):
            provider = name
        for key, value in zip(fields, match.groups(), strict=False):
            found.setdefault(key, int(value))
    # llama.cpp also states the numbers as fields of the error object.
    for key, field_name in (("prompt_tokens", "n_prompt_tokens"), ("context_window", "n_ctx")):
        value = _int(error.get(field_name))
        if value is not None:
            found[key] = value
            provider = provider or "llama.cpp"
    if provider is None:
        return None
    if error.get("type") == "BadRequestError" and provider == "openai":
        provider = "vllm"  # vLLM's error type, OpenAI's wording
    return Overflow(provider=provider, message=message, **found)


def overflow_from_exception(exc: BaseException) -> Overflow | None:
    """:func:`parse_overflow` for an exception raised by the ``openai`` SDK.

    Args:
        exc: Any exception; only ``openai.APIStatusError`` (e.g. ``BadRequestError``) can be
            an overflow.

    Returns:
        The :class:`Overflow`, or None.
    """
    status = getattr(exc, "status_code", None)
    response = getattr(exc, "response", None)
    if not isinstance(status, int) or response is None:
        return None
    try:
        text = response.text
    except Exception:  # a streamed response whose body was not read
        text = ""
    if text:
        parsed = parse_overflow(status, text)
        if parsed is not None:
            return parsed
    body = getattr(exc, "body", None)
    return parse_overflow(status, body if body is not None else str(exc))


__all__ = ["Overflow", "overflow_from_exception", "parse_overflow"]
