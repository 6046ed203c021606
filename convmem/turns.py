"""The records a history holds: turns, with their token counts cached, and summaries.

A :class:`Turn` is a user message and every assistant and tool message up to the next user
message, frozen (see :mod:`convmem.frozen`); it counts its tokens once per counter. A
:class:`Summary` is a derived record that says which turn ids it covers.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from functools import cached_property
from typing import TYPE_CHECKING, Any

from .frozen import freeze, thaw
from .messages import Message, to_wire

if TYPE_CHECKING:
    from .tokens import TokenCounter


class _CountCache:
    """Token counts cached per counter *object* (compared with ``is``, never by ``id()``).

    Keyed by ``id(counter)``, a counter created at the address of a freed one inherited its
    counts. Holding the counter itself makes that impossible; a few entries suffice (one
    counter per conversation is the rule). The most recent entry sits in slots of its own:
    every context build reads it for each kept turn, and a slot compare is several times
    faster than scanning a list.
    """

    __slots__ = ("counter", "flag", "older", "value")
    _MAX = 4

    def __init__(self) -> None:
        self.counter: Any = None
        self.flag = False
        self.value: Any = None
        self.older: tuple[tuple[Any, bool, Any], ...] = ()

    def get(self, counter: Any, flag: bool) -> Any:
        if self.counter is counter and self.flag == flag:
            return self.value
        for c, f, value in self.older:
            if c is counter and f == flag:
                return value
        return None

    def put(self, counter: Any, flag: bool, value: Any) -> None:
        if self.counter is counter and self.flag == flag:
            self.value = value
            return
        older = [e for e in self.older if not (e[0] is counter and e[1] == flag)]
        if self.counter is not None:
            older.insert(0, (self.counter, self.flag, self.value))
        self.older = tuple(older[: self._MAX - 1])
        self.counter, self.flag, self.value = counter, flag, value

    def clear(self) -> None:
        self.counter, self.flag, self.value, self.older = None, False, None, ()


@dataclass(frozen=True, eq=False)
class Turn:
    """One turn: a user message and every assistant/tool message up to the next user message.

    A turn is read-only: its messages are frozen views (:class:`FrozenDict`), so the history
    cannot be edited through ``conv.turns[i].messages[j]`` and cached token counts always match
    what is sent. ``copy.deepcopy(message)`` gives an editable copy.

    Attributes:
        id: Stable id, unique within the conversation, increasing with time.
        messages: The messages, as recorded (``reasoning_content`` included).
        created_at: Unix time the turn was committed.
    """

    id: int
    messages: tuple[Message, ...]
    created_at: float = field(default_factory=time.time)
    _token_cache: _CountCache = field(default_factory=_CountCache, repr=False, compare=False)
    _total_cache: _CountCache = field(default_factory=_CountCache, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "messages", tuple([freeze(m) for m in self.messages]))

    @property
    def user_message(self) -> Message | None:
        """The turn's user message (None for a leading assistant-only turn)."""
        first = self.messages[0] if self.messages else None
        return first if first is not None and first.get("role") == "user" else None

    @property
    def complete(self) -> bool:
        """False while an assistant tool call in this turn has no ``tool`` reply."""
        from .messages import open_tool_call_ids

        return not open_tool_call_ids(self.messages)

    def wire_messages(self, *, send_reasoning: bool = False) -> list[Message]:
        """The messages as they are sent to the API."""
        return [to_wire(m, send_reasoning=send_reasoning) for m in self.messages]

    def message_tokens(
        self, counter: TokenCounter, *, send_reasoning: bool = False
    ) -> tuple[int, ...]:
        """Per-message token counts of the wire form, counted once and cached."""
        cached: tuple[int, ...] | None = self._token_cache.get(counter, send_reasoning)
        if cached is None or len(cached) != len(self.messages):
            cached = tuple(
                counter.count_message(to_wire(m, send_reasoning=send_reasoning))
                for m in self.messages
            )
            self._token_cache.put(counter, send_reasoning, cached)
        return cached

    def tokens(self, counter: TokenCounter, *, send_reasoning: bool = False) -> int:
        """Token count of the whole turn as sent (cached)."""
        total: int | None = self._total_cache.get(counter, send_reasoning)
        if total is None:
            total = sum(self.message_tokens(counter, send_reasoning=send_reasoning))
            self._total_cache.put(counter, send_reasoning, total)
        return total

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "created_at": self.created_at,
            "messages": [thaw(m) for m in self.messages],
        }


@dataclass(frozen=True)
class Summary:
    """A derived record: a summary of the turns it covers.

    Attributes:
        text: The summary text.
        covers: Every turn id the summary accounts for (it folds in earlier summaries).
        created_at: Unix time it was made.
        model: The model that wrote it.
        prompt_tokens: Prompt tokens the summariser call used (as reported, or estimated).
        completion_tokens: Completion tokens of that call.
    """

    text: str
    covers: tuple[int, ...]
    created_at: float = field(default_factory=time.time)
    model: str = ""
    prompt_tokens: int = 0
    completion_tokens: int = 0

    @cached_property
    def through(self) -> int:
        """The newest turn id covered (-1 if none)."""
        return max(self.covers) if self.covers else -1

    @cached_property
    def covered(self) -> frozenset[int]:
        """The covered ids as a set (built once per summary)."""
        return frozenset(self.covers)

    @cached_property
    def is_prefix(self) -> bool:
        """True when the summary covers every turn id up to :attr:`through` (the usual case)."""
        return len(self.covers) == len(self.covered) and (
            not self.covers or len(self.covers) == self.through - self.first + 1
        )

    @cached_property
    def first(self) -> int:
        """The oldest turn id covered (-1 if none)."""
        return min(self.covers) if self.covers else -1

    def to_dict(self) -> dict[str, Any]:
        return {
            "text": self.text,
            "covers": list(self.covers),
            "created_at": self.created_at,
            "model": self.model,
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
        }


__all__ = ["Summary", "Turn"]
