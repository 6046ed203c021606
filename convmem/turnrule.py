"""The turn rule over a run of messages: tool-call pairing, legacy function calls, turns.

A *turn* starts at a user message and runs to the next one: the user message, every assistant
message (with or without ``tool_calls``) and every ``tool`` reply. :func:`split_turns` groups
messages so; :func:`check_sequence` enforces the order the API does (a ``tool`` reply answers an
open call, no new message while calls are unanswered); :func:`open_tool_call_ids` says which
calls still wait; :func:`convert_legacy_functions` turns old ``function_call`` logs into tool
calls. Single messages are checked in :mod:`convmem.messages`. Pure: no I/O.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from .errors import InvalidMessageError

if TYPE_CHECKING:
    from .messages import Message


def convert_legacy_functions(
    messages: Sequence[Message], *, prior: Sequence[Mapping[str, Any]] = ()
) -> list[Message]:
    """Converts the legacy ``function_call`` / ``function`` role to tool calls (new dicts).

    Older chat logs use an assistant ``function_call`` answered by a ``{"role": "function",
    "name": ..., "content": ...}`` message. convmem records them in today's form, which every
    compatible server accepts: the ``function_call`` becomes a one-element ``tool_calls`` list with
    a generated id (``call_legacy_...``), and the ``function`` message becomes a ``tool`` message
    answering it (the oldest open call of that function name).

    Args:
        messages: Validated messages (:func:`validate_message` output).
        prior: Messages already accepted before them.

    Raises:
        InvalidMessageError: a ``function`` message answers no earlier call of that function.
    """
    if not any(m.get("role") == "function" or "function_call" in m for m in messages):
        return list(messages)
    open_calls: dict[str, str] = {}  # call id -> function name, in call order
    for msg in prior:
        if msg.get("role") == "assistant":
            for call in msg.get("tool_calls") or ():
                open_calls[call["id"]] = str(call.get("function", {}).get("name", ""))
        elif msg.get("role") == "tool":
            open_calls.pop(str(msg.get("tool_call_id", "")), None)
    out: list[Message] = []
    for i, msg in enumerate(messages):
        role = msg.get("role")
        if role == "assistant" and "function_call" in msg:
            new = {k: v for k, v in msg.items() if k != "function_call"}
            fn = msg["function_call"]
            call_id = f"call_legacy_{uuid.uuid4().hex[:20]}"
            new["tool_calls"] = [
                {
                    "id": call_id,
                    "type": "function",
                    "function": {"name": fn["name"], "arguments": fn.get("arguments", "")},
                }
            ]
            out.append(new)
            open_calls = {call_id: fn["name"]}
        elif role == "function":
            match = next((cid for cid, n in open_calls.items() if n == msg["name"]), None)
            if match is None:
                raise InvalidMessageError(
                    f"a legacy 'function' message for {msg['name']!r} answers no earlier "
                    "assistant function_call or tool call of that function (an orphan reply; "
                    "add the assistant message that called it first)",
                    msg,
                    i,
                )
            del open_calls[match]
            out.append({"role": "tool", "tool_call_id": match, "content": msg["content"]})
        else:
            if role == "assistant":
                open_calls = {
                    c["id"]: str(c.get("function", {}).get("name", ""))
                    for c in msg.get("tool_calls") or ()
                }
            elif role == "tool":
                open_calls.pop(str(msg.get("tool_call_id", "")), None)
            elif role == "user":
                open_calls = {}
            out.append(msg)
    return out


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


__all__ = ["check_sequence", "convert_legacy_functions", "open_tool_call_ids", "split_turns"]
