"""Checking and reading the server's replies (I/O-free; shared by the sync and async classes)."""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from typing import Any

from openai.types.chat import ChatCompletion

from .errors import InvalidResponseError
from .messages import Message, repair_value

Chooser = Callable[[ChatCompletion], int]


def check_completion(completion: Any) -> None:
    """Raises :class:`InvalidResponseError` unless ``completion`` is a usable chat completion.

    Checked as the reply arrives, before anything acts on it (a tool run, a second request).
    """
    if not isinstance(completion, ChatCompletion):
        body = completion if isinstance(completion, str) else repr(completion)
        raise InvalidResponseError(
            f"expected a chat completion, got {type(completion).__name__}", body=body[:500]
        )
    choices = completion.choices
    if not isinstance(choices, list) or not choices:
        raise InvalidResponseError("no choices")
    for i, choice in enumerate(choices):
        message = getattr(choice, "message", None)
        if message is None:
            raise InvalidResponseError(f"choice {i} has no message")
        seen: set[str] = set()
        for call in getattr(message, "tool_calls", None) or ():
            call_id = call.get("id") if isinstance(call, Mapping) else getattr(call, "id", None)
            if not isinstance(call_id, str) or not call_id:
                raise InvalidResponseError(f"choice {i} has a tool call without an id")
            if call_id in seen:
                raise InvalidResponseError(f"choice {i} repeats the tool call id {call_id!r}")
            seen.add(call_id)


def not_json(exc: json.JSONDecodeError) -> InvalidResponseError:
    """The error for a reply body the SDK could not decode."""
    return InvalidResponseError(f"the body is not valid JSON ({exc})", body=exc.doc[:500])


def parsed(completion: ChatCompletion, choose: Chooser | None) -> Any:
    index = choose(completion) if choose else 0
    return getattr(completion.choices[index].message, "parsed", None)


def assistant_message(msg: Any) -> Message:
    data: Message = msg.model_dump(exclude_none=True, exclude={"parsed"}, warnings=False)
    if not data.get("annotations"):
        data.pop("annotations", None)
    data["role"] = "assistant"
    if data.get("tool_calls"):
        data.setdefault("content", None)
    elif "content" not in data:
        data["content"] = ""
    # A lone surrogate in a reply would poison the next tool round and the history: U+FFFD.
    repaired: Message = repair_value(data)
    return repaired
