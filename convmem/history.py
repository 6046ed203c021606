"""The history: the full, append-only record of a conversation.

Strategies never edit the history; they only choose what one call sends. Summaries are derived
records kept beside the turns, each saying which turn ids it covers.
"""

from __future__ import annotations

import bisect
import json
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from typing import TYPE_CHECKING, Any

from .errors import InvalidMessageError, UsageError
from .messages import Message, check_sequence, split_turns, to_wire, validate_message

if TYPE_CHECKING:
    from .tokens import TokenCounter

FORMAT_VERSION = 1


@dataclass(eq=False)
class Turn:
    """One turn: a user message and every assistant/tool message up to the next user message.

    Attributes:
        id: Stable id, unique within the conversation, increasing with time.
        messages: The messages, as recorded (``reasoning_content`` included).
        created_at: Unix time the turn was committed.
    """

    id: int
    messages: tuple[Message, ...]
    created_at: float = field(default_factory=time.time)
    _token_cache: dict[tuple[int, bool], tuple[int, ...]] = field(
        default_factory=dict, repr=False, compare=False
    )
    _total_cache: dict[tuple[int, bool], int] = field(
        default_factory=dict, repr=False, compare=False
    )

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
        key = (id(counter), send_reasoning)
        cached = self._token_cache.get(key)
        if cached is None or len(cached) != len(self.messages):
            cached = tuple(
                counter.count_message(to_wire(m, send_reasoning=send_reasoning))
                for m in self.messages
            )
            self._token_cache[key] = cached
        return cached

    def tokens(self, counter: TokenCounter, *, send_reasoning: bool = False) -> int:
        """Token count of the whole turn as sent (cached)."""
        key = (id(counter), send_reasoning)
        total = self._total_cache.get(key)
        if total is None:
            total = sum(self.message_tokens(counter, send_reasoning=send_reasoning))
            self._total_cache[key] = total
        return total

    def to_dict(self) -> dict[str, Any]:
        return {"id": self.id, "created_at": self.created_at, "messages": list(self.messages)}


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


class History:
    """The append-only record of one conversation: a pinned system message, turns, summaries.

    Args:
        system: The system prompt (string or a whole system/developer message), or None.
    """

    def __init__(self, system: str | Mapping[str, Any] | None = None) -> None:
        self.system: Message | None = _system_message(system)
        self._system_tokens: tuple[int, int] | None = None  # (id(counter), tokens)
        self._turns: list[Turn] = []
        self._summaries: list[Summary] = []
        self._next_id = 0

    # -- reading -------------------------------------------------------------------------------
    @property
    def turns(self) -> Sequence[Turn]:
        """The committed turns, oldest first (read-only view)."""
        return tuple(self._turns)

    def turn_list(self) -> list[Turn]:
        """The internal list, for I/O-free builders that must not copy it (do not mutate)."""
        return self._turns

    def index_after(self, turn_id: int) -> int:
        """Index in :meth:`turn_list` of the first turn whose id is greater than ``turn_id``."""
        return bisect.bisect_right(self._turns, turn_id, key=lambda t: t.id)

    def unsummarised(self) -> list[Turn]:
        """Turns the latest summary does not cover, oldest first."""
        summary = self.latest_summary
        if summary is None:
            return self._turns
        if summary.is_prefix and (not self._turns or summary.first <= self._turns[0].id):
            return self._turns[self.index_after(summary.through) :]
        return [t for t in self._turns if t.id not in summary.covered]

    @property
    def summaries(self) -> Sequence[Summary]:
        return tuple(self._summaries)

    @property
    def latest_summary(self) -> Summary | None:
        return self._summaries[-1] if self._summaries else None

    @property
    def next_turn_id(self) -> int:
        return self._next_id

    def __len__(self) -> int:
        return len(self._turns)

    def __iter__(self) -> Iterator[Turn]:
        return iter(self._turns)

    def messages(self) -> list[Message]:
        """The whole history as OpenAI message dicts, system first (copies)."""
        out: list[Message] = [dict(self.system)] if self.system else []
        for turn in self._turns:
            out.extend(json.loads(json.dumps(m)) for m in turn.messages)
        return out

    # -- writing (each is atomic: validate everything, then append) ----------------------------
    def validate_new(self, messages: Sequence[Any]) -> list[Message]:
        """Validates messages as a continuation of this history; returns copies. No side effects."""
        checked = [validate_message(m, i) for i, m in enumerate(messages)]
        prior = self._turns[-1].messages if self._turns else ()
        check_sequence(checked, prior=prior)
        return checked

    def append(self, messages: Sequence[Any], *, created_at: float | None = None) -> list[Turn]:
        """Appends messages (validated), grouping them into turns.

        Messages that do not start with a user message continue the last turn (e.g. the ``tool``
        replies to an assistant message that asked for them).

        Returns:
            The turns created or extended.

        Raises:
            InvalidMessageError: any message is invalid; nothing is appended then.
        """
        checked = self.validate_new(messages)
        return self._append_checked(checked, created_at=created_at)

    def _append_checked(self, checked: list[Message], *, created_at: float | None) -> list[Turn]:
        if not checked:
            return []
        now = time.time() if created_at is None else created_at
        touched: list[Turn] = []
        groups = split_turns(checked)
        if self._turns and checked[0].get("role") != "user":
            last = self._turns[-1]
            last.messages = last.messages + tuple(groups.pop(0))
            last._token_cache.clear()
            last._total_cache.clear()
            touched.append(last)
        for group in groups:
            turn = Turn(id=self._next_id, messages=tuple(group), created_at=now)
            self._next_id += 1
            self._turns.append(turn)
            touched.append(turn)
        return touched

    def add_summary(self, summary: Summary) -> None:
        """Records a summary (a derived record; the turns stay as they are)."""
        known = {t.id for t in self._turns}
        unknown = [i for i in summary.covers if i not in known]
        if unknown:
            raise UsageError(f"summary covers turn ids that do not exist: {unknown}")
        self._summaries.append(summary)

    def clear(self) -> None:
        """Forgets every turn and summary; the system prompt stays. Turn ids keep increasing."""
        self._turns.clear()
        self._summaries.clear()

    def set_system(self, system: str | Mapping[str, Any] | None) -> None:
        self.system = _system_message(system)
        self._system_tokens = None

    def system_tokens(self, counter: TokenCounter) -> int:
        """Tokens of the pinned system message (counted once per counter)."""
        if self.system is None:
            return 0
        if self._system_tokens is None or self._system_tokens[0] != id(counter):
            self._system_tokens = (id(counter), counter.count_message(self.system))
        return self._system_tokens[1]

    # -- JSON ----------------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return {
            "format": "convmem.history",
            "version": FORMAT_VERSION,
            "system": self.system,
            "next_turn_id": self._next_id,
            "turns": [t.to_dict() for t in self._turns],
            "summaries": [s.to_dict() for s in self._summaries],
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> History:
        """Rebuilds a history from :meth:`to_dict` output, or from a plain list of messages.

        Raises:
            InvalidMessageError: a message in the data is invalid.
            UsageError: the data is not a convmem history.
        """
        if isinstance(data, list):
            system = None
            msgs = list(data)
            if (
                msgs
                and isinstance(msgs[0], Mapping)
                and msgs[0].get("role") in ("system", "developer")
            ):
                system = msgs.pop(0)
            hist = cls(system)
            hist.append(msgs)
            return hist
        if not isinstance(data, Mapping) or data.get("format") != "convmem.history":
            raise UsageError("not a convmem history (expected format 'convmem.history')")
        hist = cls(data.get("system"))
        for raw in data.get("turns", []):
            msgs = hist.validate_new(raw["messages"])
            if not msgs or (msgs[0].get("role") != "user" and hist._turns):
                raise InvalidMessageError(
                    f"turn {raw.get('id')} does not start with a user message"
                )
            turn = Turn(
                id=int(raw["id"]), messages=tuple(msgs), created_at=float(raw["created_at"])
            )
            if hist._turns and turn.id <= hist._turns[-1].id:
                raise UsageError(f"turn ids must increase (turn {turn.id})")
            hist._turns.append(turn)
            hist._next_id = turn.id + 1
        hist._next_id = max(hist._next_id, int(data.get("next_turn_id", hist._next_id)))
        for raw in data.get("summaries", []):
            hist.add_summary(
                Summary(
                    text=raw["text"],
                    covers=tuple(int(i) for i in raw["covers"]),
                    created_at=float(raw.get("created_at", 0.0)),
                    model=raw.get("model", ""),
                    prompt_tokens=int(raw.get("prompt_tokens", 0)),
                    completion_tokens=int(raw.get("completion_tokens", 0)),
                )
            )
        return hist

    def to_json(self, **kwargs: Any) -> str:
        return json.dumps(self.to_dict(), ensure_ascii=False, **kwargs)

    @classmethod
    def from_json(cls, text: str) -> History:
        return cls.from_dict(json.loads(text))


def _system_message(system: str | Mapping[str, Any] | None) -> Message | None:
    if system is None:
        return None
    if isinstance(system, str):
        return {"role": "system", "content": system}
    msg = validate_message(system)
    if msg["role"] not in ("system", "developer"):
        raise InvalidMessageError("system= must be a string or a system/developer message", msg)
    return msg
