"""How recall's units are indexed and shown: message text, windows, tool groups, the quoted section.

A *unit* is one message of a finished turn; it is indexed with the text of its neighbours
(:func:`unit_text`; :func:`units_of` and :func:`missing_units` build the units to store) and,
when recalled, sent with them (:func:`window_keys`). Messages are
addressed by :data:`Key`, ``(turn index, message index in the turn)``; a window crosses turn
boundaries (:func:`step`) and never splits a tool call from its results (:func:`tool_group`).
:func:`render_section` quotes the chosen messages in date order, one tagged block per day and
one ``turns a-b, HH:MM:`` line per run of consecutive messages (:mod:`convmem.quoting`).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Sequence
from typing import TYPE_CHECKING, Any

from ..history import Turn
from ..messages import Message, text_of
from ..quoting import data_section, quote_speaker, quoted_block

if TYPE_CHECKING:
    from ..store import StoredTurn

Key = tuple[int, int]
"""A message: (index of its turn in the history's turn list, its index in the turn)."""

#: The heading of the recalled section (:func:`convmem.quoting.data_section` adds that what
#: follows is quoted data, not instructions).
RECALL_HEADER = (
    "Earlier in this conversation (messages retrieved for the new message, in date order)"
)


def render_message(msg: Message, *, include_tool_output: bool = False) -> str:
    """One message as a line of recalled or indexed text (``"User: ..."``, ...); may be empty."""
    role = msg.get("role")
    text = text_of(msg).strip()
    lines: list[str] = []
    if role == "user" and text:
        lines.append(f"User: {text}")
    elif role == "assistant":
        if text:
            lines.append(f"Assistant: {text}")
        for call in msg.get("tool_calls") or ():
            fn = call.get("function", {})
            lines.append(f"Assistant called {fn.get('name')}({fn.get('arguments', '')})")
    elif role == "tool":
        lines.append(f"Tool result: {text}" if include_tool_output else "Tool result: (omitted)")
    elif role in ("system", "developer") and text:
        lines.append(f"System: {text}")
    return "\n".join(lines)


def speaker_lines(msg: Message, *, include_tool_output: bool = False) -> list[tuple[str, str]]:
    """One message as ``(speaker, past text)`` pairs for the quoted recalled section."""
    role = str(msg.get("role"))
    text = text_of(msg).strip()
    out: list[tuple[str, str]] = []
    if role == "tool":
        name = "tool result"
        out.append((name, text if include_tool_output else "(omitted)"))
        return out
    if text or role != "assistant":
        out.append((role, text))
    for call in msg.get("tool_calls") or ():
        fn = call.get("function", {})
        out.append(("assistant tool call", f"{fn.get('name')}({fn.get('arguments', '')})"))
    return out


def render_turn(turn: Turn, *, include_tool_output: bool = False) -> str:
    """The text of a whole turn, one line per message."""
    lines = (render_message(m, include_tool_output=include_tool_output) for m in turn.messages)
    return "\n".join(line for line in lines if line)


def unit_text(
    msgs: Sequence[Message], i: int, window: int, *, include_tool_output: bool = False
) -> str:
    """The indexed text of message ``i`` of ``msgs``: it and ``window`` neighbours each side."""
    lo, hi = max(0, i - window), min(len(msgs), i + window + 1)
    lines = (render_message(m, include_tool_output=include_tool_output) for m in msgs[lo:hi])
    return "\n".join(line for line in lines if line)


def units_of(
    conversation_id: str,
    turns: Sequence[Turn],
    before: Sequence[Message],
    after: Sequence[Message],
    text_of_unit: Callable[[Sequence[Message], int], str],
) -> list[StoredTurn]:
    """The units to store for ``turns`` (consecutive, complete), the last message held back.

    ``before`` are the messages just before the first turn (its neighbours), ``after`` the
    first message after the last one, if it exists yet; without it, the last message has no
    next neighbour, so it is stored with the next turn (until then it is among the newest
    turns, which are sent anyway). ``text_of_unit(messages, i)`` is the indexed text.
    """
    from ..store import StoredTurn

    msgs: list[Message] = list(before)
    owners: list[tuple[Turn, int] | None] = [None] * len(before)
    for turn in turns:
        for part, msg in enumerate(turn.messages):
            msgs.append(msg)
            owners.append((turn, part))
    msgs.extend(after)
    owners.extend([None] * len(after))
    if after:
        owners.append(None)  # the last message has its next neighbour: store it too
    out = []
    for i, owner in enumerate(owners[:-1]):
        if owner is None:
            continue
        turn, part = owner
        text = text_of_unit(msgs, i)
        if text.strip():
            out.append(StoredTurn(conversation_id, turn.id, text, turn.created_at, part))
    return out


def missing_units(
    conversation_id: str,
    turns: Sequence[Turn],
    gaps: set[tuple[int, int]],
    text_of_unit: Callable[[Sequence[Message], int], str],
) -> list[StoredTurn]:
    """The units of the ``(turn_id, part)`` messages in ``gaps``, with their neighbours."""
    from ..store import StoredTurn

    units = []
    for idx, turn in enumerate(turns):
        parts = [p for p in range(len(turn.messages)) if (turn.id, p) in gaps]
        if not parts:
            continue
        prev = turns[idx - 1].messages if idx > 0 else ()
        nxt = turns[idx + 1].messages if idx + 1 < len(turns) else ()
        msgs = [*prev, *turn.messages, *nxt]
        for p in parts:
            text = text_of_unit(msgs, len(prev) + p)
            if text.strip():
                units.append(StoredTurn(conversation_id, turn.id, text, turn.created_at, p))
    return units


def step(turns: Sequence[Turn], key: Key, d: int) -> Key | None:
    """The message ``d`` (+1 or -1) away from ``key``, across turn boundaries; None at an end."""
    idx, part = key
    part += d
    if 0 <= part < len(turns[idx].messages):
        return (idx, part)
    idx += d
    if not 0 <= idx < len(turns) or not turns[idx].messages:
        return None
    return (idx, 0 if d > 0 else len(turns[idx].messages) - 1)


def tool_group(turns: Sequence[Turn], key: Key) -> list[Key]:
    """The message, or the whole tool exchange it belongs to (the call and every result)."""
    idx, part = key
    msgs = turns[idx].messages
    start = part
    if msgs[part].get("role") == "tool":
        while start > 0 and msgs[start].get("role") == "tool":
            start -= 1
    if msgs[start].get("role") != "assistant" or not msgs[start].get("tool_calls"):
        return [key]
    end = start + 1
    while end < len(msgs) and msgs[end].get("role") == "tool":
        end += 1
    return [(idx, p) for p in range(start, end)]


def window_keys(turns: Sequence[Turn], key: Key, window: int) -> list[Key]:
    """The message and ``window`` neighbours each side, in order, tool groups kept whole."""
    out: list[Key] = [key]
    prev, nxt = key, key
    for _ in range(window):
        p = step(turns, prev, -1)
        if p is not None:
            out.insert(0, p)
            prev = p
        n = step(turns, nxt, +1)
        if n is not None:
            out.append(n)
            nxt = n
    whole: list[Key] = []
    for m in out:
        for g in tool_group(turns, m):
            if g not in whole:
                whole.append(g)
    return sorted(whole)


def message_lines(msg: Message, *, include_tool_output: bool = False) -> str:
    """One message as it appears in the recalled section (label lines and quoted text)."""
    pairs = speaker_lines(msg, include_tool_output=include_tool_output)
    return "\n".join(quote_speaker(who, what) for who, what in pairs)


def session_cost(counter: Any) -> int:
    """Tokens of one session's tags in :func:`render_section` (its date included)."""
    return int(counter.count_text(quoted_block("session", "", {"date": "Wed 30 Sep 2026"}))) + 1


def window_line(turns: Sequence[Turn], keys: Sequence[Key]) -> str:
    """The line :func:`render_section` puts above a window: its turns and time."""
    ids = sorted({turns[i].id for i, _ in keys})
    span = f"turn {ids[0]}" if len(ids) == 1 else f"turns {ids[0]}-{ids[-1]}"
    when = time.gmtime(turns[keys[0][0]].created_at)
    return f"{span}, {time.strftime('%H:%M', when)}:"


def render_section(
    turns: Sequence[Turn],
    keys: Iterable[Key],
    *,
    role: str = "system",
    include_tool_output: bool = False,
    lines: Callable[[Key], str] | None = None,
) -> Message:
    """The recalled section: ``keys``' messages quoted in date order under time headers.

    ``lines`` gives a message's quoted lines (:func:`message_lines`), e.g. from a cache."""
    blocks: list[list[Key]] = []
    for m in sorted(keys):
        if blocks and step(turns, blocks[-1][-1], +1) == m:
            blocks[-1].append(m)
        else:
            blocks.append([m])
    # One tagged block per session (calendar day, UTC) with its date; inside it, each
    # window under a line of convmem's own giving its turns and time.
    quoted: list[str] = []
    day: str | None = None
    body: list[str] = []
    for block in blocks:
        first = turns[block[0][0]]
        when = time.gmtime(first.created_at)
        this_day = time.strftime("%a %d %b %Y", when)
        if this_day != day:
            if body:
                quoted.append(quoted_block("session", "\n".join(body), {"date": day}))
            day, body = this_day, []
        body.append(window_line(turns, block))
        if lines is not None:
            body.extend(lines(m) for m in block)
        else:
            body.extend(
                message_lines(turns[i].messages[p], include_tool_output=include_tool_output)
                for i, p in block
            )
    if body:
        quoted.append(quoted_block("session", "\n".join(body), {"date": day}))
    return {"role": role, "content": data_section("recalled", RECALL_HEADER, "\n".join(quoted))}


__all__ = [
    "RECALL_HEADER",
    "Key",
    "message_lines",
    "missing_units",
    "render_message",
    "render_section",
    "render_turn",
    "session_cost",
    "speaker_lines",
    "step",
    "tool_group",
    "unit_text",
    "units_of",
    "window_keys",
    "window_line",
]
