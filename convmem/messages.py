"""Message validation and the turn rule.

A *turn* starts at a user message and runs to the next one: the user message, every assistant
message (with or without ``tool_calls``) and every ``tool`` reply. Strategies keep or drop whole
turns, so a ``tool`` message is never separated from the assistant message that called it.

Everything here is pure: no I/O, no token counting.
"""

from __future__ import annotations

import copy
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from .errors import InvalidMessageError

Message = dict[str, Any]

ROLES = frozenset({"system", "developer", "user", "assistant", "tool", "function"})
_CONTENT_PART_TYPES = frozenset({"text", "image_url", "input_audio", "file", "refusal"})

#: Keys convmem records in the history but never sends unless asked to.
PRIVATE_KEYS = frozenset({"reasoning_content"})


def _validate_content_parts(parts: Sequence[Any], index: int | None, msg: Any) -> None:
    if not parts:
        raise InvalidMessageError("content is an empty list of parts", msg, index)
    for part in parts:
        if not isinstance(part, Mapping) or "type" not in part:
            raise InvalidMessageError(
                "each content part must be a dict with a 'type' key", msg, index
            )
        kind = part["type"]
        if kind not in _CONTENT_PART_TYPES:
            raise InvalidMessageError(f"unknown content part type {kind!r}", msg, index)
        if kind == "text" and not isinstance(part.get("text"), str):
            raise InvalidMessageError("a 'text' part needs a string 'text'", msg, index)
        if kind == "image_url":
            image = part.get("image_url")
            url = image.get("url") if isinstance(image, Mapping) else None
            if not isinstance(url, str) or not url:
                raise InvalidMessageError(
                    "an 'image_url' part needs {'image_url': {'url': ...}}", msg, index
                )
            detail = image.get("detail") if isinstance(image, Mapping) else None
            if detail not in (None, "auto", "low", "high"):
                raise InvalidMessageError(
                    f"image detail must be 'auto', 'low' or 'high', not {detail!r}", msg, index
                )


def validate_message(message: Any, index: int | None = None) -> Message:
    """Checks one OpenAI-format message and returns a deep copy as a plain dict.

    Args:
        message: A dict (or any mapping, e.g. an SDK ``TypedDict``) in the chat-completions format.
        index: Its position in a batch, used in error messages.

    Returns:
        A deep copy, so later changes to the caller's object cannot rewrite the history.

    Raises:
        InvalidMessageError: unknown role, missing or ill-typed content, malformed tool calls.
    """
    if hasattr(message, "model_dump") and callable(message.model_dump):
        # An SDK object such as ChatCompletionMessage: keep only what was set.
        message = message.model_dump(exclude_none=True)
    if not isinstance(message, Mapping):
        raise InvalidMessageError(
            f"a message must be a dict, not {type(message).__name__}", message, index
        )
    role = message.get("role")
    if role not in ROLES:
        raise InvalidMessageError(
            f"unknown role {role!r} (expected one of {sorted(ROLES)})", message, index
        )
    msg: Message = copy.deepcopy(dict(message))
    content = msg.get("content")
    if role == "assistant":
        tool_calls = msg.get("tool_calls")
        if tool_calls is not None:
            _validate_tool_calls(tool_calls, msg, index)
        has_calls = bool(tool_calls) or msg.get("function_call") is not None
        if content is None and not has_calls and not msg.get("refusal") and not msg.get("audio"):
            raise InvalidMessageError(
                "assistant message has no content and no tool_calls", msg, index
            )
        if content is not None and not isinstance(content, (str, list)):
            raise InvalidMessageError("content must be a string or a list of parts", msg, index)
        if isinstance(content, list):
            _validate_content_parts(content, index, msg)
    elif role == "tool":
        if not isinstance(msg.get("tool_call_id"), str) or not msg["tool_call_id"]:
            raise InvalidMessageError("a tool message needs a 'tool_call_id'", msg, index)
        if not isinstance(content, (str, list)):
            raise InvalidMessageError("a tool message needs string content", msg, index)
    else:
        if content is None:
            raise InvalidMessageError(f"a {role} message needs 'content'", msg, index)
        if isinstance(content, list):
            if role in ("system", "developer"):
                for part in content:
                    if not isinstance(part, Mapping) or part.get("type") != "text":
                        raise InvalidMessageError(
                            f"{role} content parts must be text parts", msg, index
                        )
            _validate_content_parts(content, index, msg)
        elif not isinstance(content, str):
            raise InvalidMessageError(
                f"content must be a string or a list of parts, not {type(content).__name__}",
                msg,
                index,
            )
    name = msg.get("name")
    if name is not None and not isinstance(name, str):
        raise InvalidMessageError("'name' must be a string", msg, index)
    return msg


def _validate_tool_calls(tool_calls: Any, msg: Message, index: int | None) -> None:
    if not isinstance(tool_calls, list):
        raise InvalidMessageError("'tool_calls' must be a list", msg, index)
    seen: set[str] = set()
    for call in tool_calls:
        if not isinstance(call, Mapping):
            raise InvalidMessageError("each tool call must be a dict", msg, index)
        call_id = call.get("id")
        fn = call.get("function")
        if not isinstance(call_id, str) or not call_id:
            raise InvalidMessageError("each tool call needs an 'id'", msg, index)
        if call_id in seen:
            raise InvalidMessageError(f"duplicate tool call id {call_id!r}", msg, index)
        seen.add(call_id)
        if not isinstance(fn, Mapping) or not isinstance(fn.get("name"), str):
            raise InvalidMessageError(
                "each tool call needs {'function': {'name', 'arguments'}}", msg, index
            )
        if not isinstance(fn.get("arguments", ""), str):
            raise InvalidMessageError("tool call arguments must be a JSON string", msg, index)


def user_message(content: str | Sequence[Mapping[str, Any]] | Mapping[str, Any]) -> Message:
    """Turns what a caller passes to ``send`` into a validated user message.

    Args:
        content: A string, a list of content parts (text, ``image_url``, ...), or a whole message
            dict with ``role: "user"``.

    Raises:
        InvalidMessageError: the message is not a valid user message.
    """
    if isinstance(content, str):
        msg: Any = {"role": "user", "content": content}
    elif isinstance(content, Mapping):
        msg = content
        if msg.get("role") != "user":
            raise InvalidMessageError(
                f"send() takes a user message; got role {msg.get('role')!r} "
                "(use extend() to add other messages)",
                msg,
            )
    elif isinstance(content, Sequence):
        msg = {"role": "user", "content": list(content)}
    else:
        raise InvalidMessageError(
            f"send() takes a string, a list of content parts or a user message dict, "
            f"not {type(content).__name__}",
            content,
        )
    return validate_message(msg)


def open_tool_call_ids(messages: Iterable[Mapping[str, Any]]) -> list[str]:
    """Returns the ids of tool calls in ``messages`` that have no ``tool`` reply yet, in order."""
    open_ids: dict[str, None] = {}
    for msg in messages:
        if msg.get("role") == "assistant":
            for call in msg.get("tool_calls") or ():
                open_ids[call["id"]] = None
        elif msg.get("role") == "tool":
            open_ids.pop(msg.get("tool_call_id", ""), None)
    return list(open_ids)


def check_sequence(
    messages: Sequence[Mapping[str, Any]], *, prior: Sequence[Mapping[str, Any]] = ()
) -> None:
    """Checks the order rules the API enforces on a run of non-system messages.

    Every ``tool`` message must answer an open tool call of an earlier assistant message, and a
    new user message may not start while tool calls are still unanswered.

    Args:
        messages: The messages to check.
        prior: Messages already accepted before them (their open tool calls carry over).

    Raises:
        InvalidMessageError: a ``tool`` reply without its call, or a user message that leaves
            tool calls unanswered.
    """
    open_ids = set(open_tool_call_ids(prior))
    for i, msg in enumerate(messages):
        role = msg.get("role")
        if role in ("system", "developer"):
            raise InvalidMessageError(
                "system messages are pinned: pass system= to the conversation, not in the history",
                msg,
                i,
            )
        if role == "tool":
            call_id = msg.get("tool_call_id")
            if call_id not in open_ids:
                raise InvalidMessageError(
                    f"tool message answers no open tool call (tool_call_id {call_id!r})", msg, i
                )
            open_ids.discard(str(call_id))
        elif role == "user":
            if open_ids:
                raise InvalidMessageError(
                    f"tool calls {sorted(open_ids)} have no tool reply before this user message",
                    msg,
                    i,
                )
        elif role == "assistant":
            if open_ids:
                raise InvalidMessageError(
                    f"tool calls {sorted(open_ids)} have no tool reply before this "
                    "assistant message",
                    msg,
                    i,
                )
            for call in msg.get("tool_calls") or ():
                open_ids.add(call["id"])


def split_turns(messages: Sequence[Message]) -> list[list[Message]]:
    """Groups messages into turns: each turn starts at a user message.

    Messages before the first user message (an assistant greeting in an imported log) form a
    turn of their own.
    """
    turns: list[list[Message]] = []
    for msg in messages:
        if msg.get("role") == "user" or not turns:
            turns.append([msg])
        else:
            turns[-1].append(msg)
    return turns


def to_wire(message: Mapping[str, Any], *, send_reasoning: bool = False) -> Message:
    """Returns the form of a history message that is sent to the API.

    ``reasoning_content`` stays in the history but is only sent when ``send_reasoning`` is set
    (some providers require it back during tool-call turns; most refuse it).
    """
    if send_reasoning or not (PRIVATE_KEYS & message.keys()):
        return dict(message)
    return {k: v for k, v in message.items() if k not in PRIVATE_KEYS}


def text_of(message: Mapping[str, Any]) -> str:
    """The plain text of a message: string content, or its text parts joined."""
    content = message.get("content")
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "\n".join(
            str(p.get("text", ""))
            for p in content
            if isinstance(p, Mapping) and p.get("type") == "text"
        )
    return ""
