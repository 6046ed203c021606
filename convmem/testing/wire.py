"""The fake server's wire format: the bodies, SSE chunks, usage and errors the real API sends.

A queued :class:`~convmem.testing.specs.Reply` renders as a ``chat.completion`` JSON body
(:func:`message_choice`, :func:`usage_of`) or as ``chat.completion.chunk`` server-sent events
(:func:`sse_events`), with the field names and ``null`` s of OpenAI's own responses; errors carry
its error body (:func:`error_body`).
"""

from __future__ import annotations

import itertools
import json
from collections.abc import AsyncIterator, Iterator, Mapping
from typing import Any

import httpx2

from .specs import Choice, Reply

#: The ``created`` timestamp of every fake response (fixed, so outputs are deterministic).
CREATED = 1_700_000_000


def estimate_tokens(text: str) -> int:
    """The fake server's deterministic token estimate for a piece of text: ``len(text) // 4``.

    It is not a tokenizer: it only makes default ``usage`` numbers predictable in tests.
    """
    return len(text) // 4


class EventStream(httpx2.SyncByteStream, httpx2.AsyncByteStream):
    """A response body sent piece by piece, optionally failing as a dropped connection."""

    def __init__(self, pieces: list[bytes], *, fail: bool = False) -> None:
        self._pieces = pieces
        self._fail = fail

    def _error(self) -> httpx2.RemoteProtocolError:
        return httpx2.RemoteProtocolError(
            "FakeChatServer: peer closed connection without sending complete message body "
            "(scripted cut_stream)"
        )

    def __iter__(self) -> Iterator[bytes]:
        yield from self._pieces
        if self._fail:
            raise self._error()

    async def __aiter__(self) -> AsyncIterator[bytes]:
        for piece in self._pieces:
            yield piece
        if self._fail:
            raise self._error()


def json_body(request: httpx2.Request) -> Any:
    if not request.content:
        return {}
    try:
        return json.loads(request.content)
    except ValueError:
        return request.content.decode("utf-8", "replace")


def error_body(
    message: str,
    *,
    status: int,
    code: str | None = None,
    type_: str | None = None,
    param: str | None = None,
) -> dict[str, Any]:
    if type_ is None:
        type_ = (
            "requests"
            if status == 429
            else "server_error"
            if status >= 500
            else ("invalid_request_error")
        )
    return {"error": {"message": message, "type": type_, "code": code, "param": param}}


def error_response(
    status: int, body: dict[str, Any], headers: Mapping[str, str] | None = None
) -> httpx2.Response:
    return httpx2.Response(status, json=body, headers=headers)


def message_text(message: Any) -> str:
    if not isinstance(message, dict):
        return ""
    parts: list[str] = []
    content = message.get("content")
    if isinstance(content, str):
        parts.append(content)
    elif isinstance(content, list):
        parts.extend(
            str(p.get("text", ""))
            for p in content
            if isinstance(p, dict) and p.get("type") == "text"
        )
    for tc in message.get("tool_calls") or ():
        fn = tc.get("function", {}) if isinstance(tc, dict) else {}
        parts.append(str(fn.get("name", "")) + str(fn.get("arguments", "")))
    return "".join(parts)


def usage_of(item: Reply, body: dict[str, Any]) -> dict[str, Any] | None:
    if item.usage is False:
        return None
    messages = body.get("messages") or []
    prompt = estimate_tokens("".join(message_text(m) for m in messages)) + 3 * len(messages)
    reasoning = sum(estimate_tokens(c.reasoning or "") for c in item.choices)
    answer = sum(
        estimate_tokens((c.content or "") + "".join(t.name + t.arguments for t in c.tool_calls))
        for c in item.choices
    )
    usage: dict[str, Any] = {
        "prompt_tokens": prompt,
        "completion_tokens": answer + reasoning,
        "total_tokens": prompt + answer + reasoning,
        "prompt_tokens_details": {"cached_tokens": 0},
        "completion_tokens_details": {"reasoning_tokens": reasoning},
    }
    if item.usage:
        usage.update(item.usage)
        if "total_tokens" not in item.usage:
            usage["total_tokens"] = usage["prompt_tokens"] + usage["completion_tokens"]
    return usage


def message_choice(index: int, choice: Choice) -> dict[str, Any]:
    message: dict[str, Any] = {
        "role": "assistant",
        "content": choice.content,
        "refusal": None,
        "annotations": [],
    }
    if choice.reasoning is not None:
        message["reasoning_content"] = choice.reasoning
    if choice.tool_calls:
        message["tool_calls"] = [
            {"id": t.id, "type": "function", "function": {"name": t.name, "arguments": t.arguments}}
            for t in choice.tool_calls
        ]
    return {
        "index": index,
        "message": message,
        "logprobs": None,
        "finish_reason": choice.finish_reason,
    }


def _pieces(text: str, size: int) -> list[str]:
    return [text[i : i + size] for i in range(0, len(text), size)]


def _choice_deltas(choice: Choice, size: int) -> list[dict[str, Any]]:
    """One choice's deltas, without the finish chunk."""
    deltas: list[dict[str, Any]] = [
        {"role": "assistant", "content": None if choice.content is None else ""}
    ]
    deltas += [{"reasoning_content": p} for p in _pieces(choice.reasoning or "", size)]
    deltas += [{"content": p} for p in _pieces(choice.content or "", size)]
    for j, t in enumerate(choice.tool_calls):
        deltas.append(
            {
                "tool_calls": [
                    {
                        "index": j,
                        "id": t.id,
                        "type": "function",
                        "function": {"name": t.name, "arguments": ""},
                    }
                ]
            }
        )
        deltas += [
            {"tool_calls": [{"index": j, "function": {"arguments": p}}]}
            for p in _pieces(t.arguments, size)
        ]
    return deltas


def sse_events(
    item: Reply, completion_id: str, model: str, usage: dict[str, Any] | None
) -> list[dict[str, Any]]:
    """Every chunk of a streamed reply: content chunks first, then finish and usage chunks."""

    def chunk(choices: list[dict[str, Any]]) -> dict[str, Any]:
        event: dict[str, Any] = {
            "id": completion_id,
            "object": "chat.completion.chunk",
            "created": CREATED,
            "model": model,
            "choices": choices,
        }
        if usage is not None:
            # The real API sends "usage": null on every chunk when include_usage is set.
            event["usage"] = None
        return event

    per_choice = [_choice_deltas(c, item.chunk_size) for c in item.choices]
    events = [
        chunk([{"index": i, "delta": delta, "logprobs": None, "finish_reason": None}])
        for row in itertools.zip_longest(*per_choice)
        for i, delta in enumerate(row)
        if delta is not None
    ]
    events += [
        chunk([{"index": i, "delta": {}, "logprobs": None, "finish_reason": c.finish_reason}])
        for i, c in enumerate(item.choices)
    ]
    if usage is not None:
        last = chunk([])
        last["usage"] = usage
        events.append(last)
    return events


def n_content_events(events: list[dict[str, Any]]) -> int:
    return sum(1 for e in events if e["choices"] and e["choices"][0]["finish_reason"] is None)


def sse(event: dict[str, Any]) -> bytes:
    return f"data: {json.dumps(event)}\n\n".encode()


__all__ = [
    "CREATED",
    "EventStream",
    "error_body",
    "error_response",
    "estimate_tokens",
    "json_body",
    "message_choice",
    "message_text",
    "n_content_events",
    "sse",
    "sse_events",
    "usage_of",
]
