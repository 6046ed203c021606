"""One message: validating and repairing it, its wire form and its text.

:func:`validate_message` checks a message as the chat-completions API would (roles, keys,
content parts, image URLs, tool calls) and repairs what it safely can (lone surrogates);
:func:`to_wire` gives the form sent to the API and :func:`text_of` its plain text. The rules
over a run of messages (the turn rule, tool-call pairing) are in :mod:`convmem.turnrule` and
importable from here too.

Everything here is pure: no I/O, no token counting.
"""

from __future__ import annotations

import base64
import binascii
import math
import re
from collections.abc import Mapping, Sequence
from typing import Any
from urllib.parse import urlsplit

from .errors import InvalidMessageError
from .turnrule import (
    check_sequence,
    convert_legacy_functions,
    open_tool_call_ids,
    split_turns,
)

Message = dict[str, Any]

ROLES = frozenset({"system", "developer", "user", "assistant", "tool", "function"})
_CONTENT_PART_TYPES = frozenset({"text", "image_url", "input_audio", "file", "refusal"})

#: Reasoning (``reasoning`` from vLLM, Ollama, OpenRouter): recorded, sent only if asked.
PRIVATE_KEYS = frozenset({"reasoning_content", "reasoning"})

#: The keys each role may have (the chat-completions request schema). Any other key on a
#: non-assistant message is refused: the API answers it with HTTP 400.
ROLE_KEYS: Mapping[str, frozenset[str]] = {
    "system": frozenset({"role", "content", "name"}),
    "developer": frozenset({"role", "content", "name"}),
    "user": frozenset({"role", "content", "name"}),
    "assistant": frozenset(
        {"role", "content", "name", "tool_calls", "function_call", "refusal", "audio"}
    ),
    # "name" on a tool message is not in the schema but is in OpenAI's own cookbook examples
    # and accepted by the API, so imported logs carry it.
    "tool": frozenset({"role", "content", "tool_call_id", "name"}),
    "function": frozenset({"role", "content", "name"}),
}

#: Keys of an assistant message that are sent back to the API. Other keys on an assistant
#: message (provider fields of a reply such as ``reasoning_content``, ``reasoning`` or
#: ``annotations``) are recorded in the history but not sent (``reasoning_content`` is sent with
#: ``send_reasoning=True``).
ASSISTANT_WIRE_KEYS = ROLE_KEYS["assistant"]

#: How deep a message may nest (message > content list > part > image_url > url is 4).
MAX_DEPTH = 16

# OpenAI's rule for ``name`` (HTTP 400 "Expected a string that matches the pattern
# '^[a-zA-Z0-9_-]+$'"), with its documented 64-character limit.
_NAME = re.compile(r"[a-zA-Z0-9_-]{1,64}")
_DATA_URL = re.compile(
    r"data:(?P<mime>[\w.+-]+/[\w.+-]+)(?P<params>(?:;[^,;]*)*);base64,(?P<data>.*)", re.S
)
_IMAGE_MIMES = frozenset({"image/png", "image/jpeg", "image/jpg", "image/gif", "image/webp"})
_B64 = re.compile(r"[A-Za-z0-9+/]*={0,2}")


def repair_text(text: str) -> str:
    """Makes a string encodable as UTF-8: lone surrogates become U+FFFD.

    A lone surrogate (``"\\ud800"``) can come from a server reply, a decoded JSON escape or
    a byte-sliced string. It cannot be written as UTF-8, so a history holding one could never be
    sent or saved again. A surrogate *pair* written as two code points becomes the character it
    encodes; each unpaired surrogate becomes the replacement character ``"\\ufffd"``.
    """
    if text.isascii():
        return text
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return text.encode("utf-16-le", "surrogatepass").decode("utf-16-le", "replace")
    return text


def repair_value(value: Any, _depth: int = 0) -> Any:
    """``value`` with every string (keys included) passed through :func:`repair_text`.

    For data that is not validated yet but is about to be sent or kept (a server reply used in
    the next tool round). Containers deeper than :data:`MAX_DEPTH` are returned as they are
    (validation refuses them later).
    """
    if isinstance(value, str):
        return repair_text(value)
    if _depth >= MAX_DEPTH:
        return value
    if isinstance(value, dict):
        return {repair_value(k): repair_value(v, _depth + 1) for k, v in value.items()}
    if isinstance(value, list):
        return [repair_value(v, _depth + 1) for v in value]
    return value


def _clean(value: Any, msg: Any, index: int | None, depth: int) -> Any:
    """A JSON-shaped deep copy of ``value``: strings repaired, no NaN, no foreign types.

    The depth is bounded (not ``copy.deepcopy``), so a deeply nested or self-referencing
    structure is refused with a clear error instead of a ``RecursionError``.
    """
    kind = type(value)
    if kind is str:
        return repair_text(value)
    if kind is dict and depth < MAX_DEPTH:  # the common case first: a plain dict
        out: dict[str, Any] = {}
        for key, item in value.items():
            if type(key) is not str:
                raise InvalidMessageError(f"message keys must be strings, got {key!r}", msg, index)
            out[repair_text(key)] = _clean(item, msg, index, depth + 1)
        return out
    if isinstance(value, str):
        return repair_text(value)
    if value is None or isinstance(value, bool):
        return value
    if isinstance(value, int):
        return int(value)
    if isinstance(value, float):
        if not math.isfinite(value):
            raise InvalidMessageError(
                f"a message value is {value!r}: NaN and infinity are not valid JSON", msg, index
            )
        return float(value)
    if depth >= MAX_DEPTH:
        raise InvalidMessageError(
            f"the message is nested more than {MAX_DEPTH} levels deep", msg, index
        )
    if hasattr(value, "model_dump") and callable(value.model_dump):
        # An SDK object inside a dict, e.g. tool_calls=completion.choices[0].message.tool_calls.
        value = value.model_dump(exclude_none=True)
    if isinstance(value, Mapping):
        return _clean(dict(value), msg, index, depth)
    if isinstance(value, (list, tuple)):
        return [_clean(item, msg, index, depth + 1) for item in value]
    raise InvalidMessageError(
        f"a message may only hold JSON values (str, number, bool, None, list, dict), "
        f"not {type(value).__name__}",
        msg,
        index,
    )


def _check_base64(data: str) -> bool:
    compact = "".join(data.split())  # line breaks are common in pasted base64
    if not compact or len(compact) % 4 or not _B64.fullmatch(compact):
        return False
    try:
        base64.b64decode(compact, validate=True)
    except (binascii.Error, ValueError):
        return False
    return True


def check_image_url(url: Any) -> str | None:
    """Why ``url`` cannot be an ``image_url`` (None when it can).

    Accepted: ``http(s)://host/...`` URLs, and ``data:image/{png,jpeg,gif,webp};base64,...``
    URLs whose payload is valid base64 (the formats the OpenAI API takes).
    """
    if not isinstance(url, str) or not url:
        return "an 'image_url' part needs {'image_url': {'url': ...}}"
    if url.startswith("data:"):
        m = _DATA_URL.fullmatch(url)
        if m is None:
            return "a data URL must look like 'data:image/png;base64,<base64 data>'"
        mime = m.group("mime").lower()
        if mime not in _IMAGE_MIMES:
            return f"image data URL of type {mime!r}: use image/png, jpeg, gif or webp"
        if not _check_base64(m.group("data")):
            return "the image data URL's payload is not valid base64"
        return None
    if any(c.isspace() for c in url):
        return f"image URL contains whitespace: {url[:80]!r}"
    try:
        parts = urlsplit(url)
    except ValueError as exc:
        return f"invalid image URL {url[:80]!r}: {exc}"
    if parts.scheme.lower() not in ("http", "https") or not parts.netloc:
        return f"image URL must be http(s):// or a data: URL, got {url[:80]!r}"
    return None


def _validate_content_parts(
    parts: Sequence[Any], index: int | None, msg: Any, role: str = "user"
) -> None:
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
        if kind == "refusal" and role != "assistant":
            raise InvalidMessageError("only assistant messages have refusal parts", msg, index)
        if role in ("system", "developer", "tool") and kind != "text":
            raise InvalidMessageError(f"{role} content parts must be text parts", msg, index)
        if role == "assistant" and kind not in ("text", "refusal"):
            raise InvalidMessageError(
                "assistant content parts must be text or refusal parts", msg, index
            )
        if kind == "text" and not isinstance(part.get("text"), str):
            raise InvalidMessageError("a 'text' part needs a string 'text'", msg, index)
        if kind == "refusal" and not isinstance(part.get("refusal"), str):
            raise InvalidMessageError("a 'refusal' part needs a string 'refusal'", msg, index)
        if kind == "image_url":
            image = part.get("image_url")
            problem = check_image_url(image.get("url") if isinstance(image, Mapping) else None)
            if problem:
                raise InvalidMessageError(problem, msg, index)
            assert isinstance(image, Mapping)
            detail = image.get("detail")
            if detail not in (None, "auto", "low", "high"):
                raise InvalidMessageError(
                    f"image detail must be 'auto', 'low' or 'high', not {detail!r}", msg, index
                )
        if kind == "input_audio":
            audio = part.get("input_audio")
            data = audio.get("data") if isinstance(audio, Mapping) else None
            fmt = audio.get("format") if isinstance(audio, Mapping) else None
            if not isinstance(data, str) or not data:
                raise InvalidMessageError(
                    "an 'input_audio' part needs {'input_audio': {'data': <base64>, "
                    "'format': 'wav'|'mp3'}}",
                    msg,
                    index,
                )
            if not _check_base64(data):
                raise InvalidMessageError("input_audio data is not valid base64", msg, index)
            if not isinstance(fmt, str) or not fmt:
                raise InvalidMessageError(
                    "an 'input_audio' part needs a 'format' ('wav' or 'mp3')", msg, index
                )
        if kind == "file":
            file = part.get("file")
            if not isinstance(file, Mapping) or not (
                isinstance(file.get("file_id"), str) or isinstance(file.get("file_data"), str)
            ):
                raise InvalidMessageError(
                    "a 'file' part needs {'file': {'file_id': ...}} or {'file': {'file_data': "
                    "...}}",
                    msg,
                    index,
                )


def validate_message(message: Any, index: int | None = None) -> Message:
    """Checks one OpenAI-format message and returns a cleaned deep copy as a plain dict.

    Strings are repaired so they can always be written as UTF-8: a lone surrogate becomes
    U+FFFD (see :func:`repair_text`). Everything else that the API would refuse, or that
    would make the history unsaveable, is an error: NaN or infinity, non-string keys, values
    that are not JSON, nesting deeper than :data:`MAX_DEPTH`, keys a role does not have
    (:data:`ROLE_KEYS`; an assistant message may carry extra provider fields, which are
    recorded but not sent), a ``name`` outside ``[a-zA-Z0-9_-]{1,64}``, an image URL that is
    neither ``http(s)`` nor a valid base64 ``data:image/...`` URL, ``input_audio`` without data.

    Args:
        message: A dict (or any mapping, e.g. an SDK ``TypedDict``) in the chat-completions format.
        index: Its position in a batch, used in error messages.

    Returns:
        A deep copy, so later changes to the caller's object cannot rewrite the history.

    Raises:
        InvalidMessageError: unknown role or key, missing or ill-typed content, malformed tool
            calls, invalid values.
    """
    if hasattr(message, "model_dump") and callable(message.model_dump):
        # An SDK object such as ChatCompletionMessage: keep only what was set.
        message = message.model_dump(exclude_none=True)
    if not isinstance(message, Mapping):
        raise InvalidMessageError(
            f"a message must be a dict, not {type(message).__name__}", message, index
        )
    role = message.get("role")
    if not isinstance(role, str) or role not in ROLES:
        raise InvalidMessageError(
            f"unknown role {role!r} (expected one of {sorted(ROLES)})", message, index
        )
    msg: Message = _clean(message, message, index, 0)
    if role != "assistant":
        unknown = sorted(msg.keys() - ROLE_KEYS[role])
        if unknown:
            raise InvalidMessageError(
                f"unknown key{'s' if len(unknown) > 1 else ''} {', '.join(map(repr, unknown))} "
                f"in a {role} message (a {role} message has {sorted(ROLE_KEYS[role])})",
                msg,
                index,
            )
    content = msg.get("content")
    if role == "assistant":
        tool_calls = msg.get("tool_calls")
        if tool_calls is not None:
            _validate_tool_calls(tool_calls, msg, index)
        function_call = msg.get("function_call")
        if function_call is not None:
            _validate_function(function_call, "function_call", msg, index)
            if tool_calls:
                raise InvalidMessageError(
                    "an assistant message has both 'tool_calls' and the legacy 'function_call'",
                    msg,
                    index,
                )
        has_calls = bool(tool_calls) or function_call is not None
        if content is None and not has_calls and not msg.get("refusal") and not msg.get("audio"):
            raise InvalidMessageError(
                "assistant message has no content and no tool_calls", msg, index
            )
        if content is not None and not isinstance(content, (str, list)):
            raise InvalidMessageError("content must be a string or a list of parts", msg, index)
        if isinstance(content, list):
            _validate_content_parts(content, index, msg, role)
        refusal = msg.get("refusal")
        if refusal is not None and not isinstance(refusal, str):
            raise InvalidMessageError("'refusal' must be a string", msg, index)
    elif role == "tool":
        if not isinstance(msg.get("tool_call_id"), str) or not msg["tool_call_id"]:
            raise InvalidMessageError("a tool message needs a 'tool_call_id'", msg, index)
        if isinstance(content, list):
            _validate_content_parts(content, index, msg, role)
        elif not isinstance(content, str):
            raise InvalidMessageError(
                f"a tool message needs string content (or text parts), not "
                f"{type(content).__name__}: serialise the result, e.g. json.dumps(result)",
                msg,
                index,
            )
    elif role == "function":
        if not isinstance(msg.get("name"), str) or not msg["name"]:
            raise InvalidMessageError(
                "a legacy 'function' message needs the 'name' of the function it answers",
                msg,
                index,
            )
        if not isinstance(content, str):
            raise InvalidMessageError("a 'function' message needs string content", msg, index)
    else:
        if content is None:
            raise InvalidMessageError(f"a {role} message needs 'content'", msg, index)
        if isinstance(content, list):
            _validate_content_parts(content, index, msg, role)
        elif not isinstance(content, str):
            raise InvalidMessageError(
                f"content must be a string or a list of parts, not {type(content).__name__}",
                msg,
                index,
            )
    name = msg.get("name")
    if (
        name is not None
        and role != "function"
        and (not isinstance(name, str) or not _NAME.fullmatch(name))
    ):
        raise InvalidMessageError(
            f"'name' must be 1-64 letters, digits, '_' or '-' (no spaces), got {name!r}",
            msg,
            index,
        )
    return msg


def _validate_function(fn: Any, what: str, msg: Message, index: int | None) -> None:
    if not isinstance(fn, Mapping) or not isinstance(fn.get("name"), str) or not fn["name"]:
        raise InvalidMessageError(f"{what} needs {{'name': ..., 'arguments': ...}}", msg, index)
    if not isinstance(fn.get("arguments", ""), str):
        raise InvalidMessageError(f"{what} arguments must be a JSON string", msg, index)


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
        kind = call.get("type", "function")
        if kind != "function":
            raise InvalidMessageError(f"unknown tool call type {kind!r}", msg, index)


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


def to_wire(message: Mapping[str, Any], *, send_reasoning: bool = False) -> Message:
    """Returns the form of a history message that is sent to the API.

    Reasoning goes only with ``send_reasoning``, in the server's field; other extras never.
    """
    if message.get("role") != "assistant" or message.keys() <= ASSISTANT_WIRE_KEYS:
        return dict(message)
    return {
        k: v
        for k, v in message.items()
        if k in ASSISTANT_WIRE_KEYS or (send_reasoning and k in PRIVATE_KEYS)
    }


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


__all__ = [
    "ASSISTANT_WIRE_KEYS",
    "MAX_DEPTH",
    "PRIVATE_KEYS",
    "ROLES",
    "ROLE_KEYS",
    "Message",
    "check_image_url",
    "check_sequence",
    "convert_legacy_functions",
    "open_tool_call_ids",
    "repair_text",
    "repair_value",
    "split_turns",
    "text_of",
    "to_wire",
    "user_message",
    "validate_message",
]
