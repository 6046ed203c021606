"""The history: the full, append-only record of a conversation, and its saved (JSON) form.

Strategies never edit the history; they only choose what one call sends. Summaries are derived
records kept beside the turns, each saying which turn ids it covers. The records themselves
(:class:`Turn`, :class:`Summary`) live in :mod:`convmem.turns` and the read-only containers
(:class:`FrozenDict`, :func:`freeze`, :func:`thaw`) in :mod:`convmem.frozen`; both are
importable from here too. This module also reads saved histories back, trusting nothing.
"""

from __future__ import annotations

import bisect
import dataclasses
import json
import math
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from ._check import text_id
from .errors import InvalidHistoryError, InvalidMessageError, UsageError
from .frozen import FrozenDict, FrozenList, freeze, thaw
from .messages import (
    Message,
    check_sequence,
    convert_legacy_functions,
    repair_text,
    split_turns,
    validate_message,
)
from .turns import Summary, Turn

if TYPE_CHECKING:
    from .tokens import TokenCounter

FORMAT_VERSION = 1

#: Latest ``created_at`` a saved history may carry (the end of year 9999, UTC): later values are
#: tampering or corruption, and would break every time formatting and recency computation.
MAX_TIMESTAMP = 253_402_300_799.0
#: Largest turn id or token count accepted from a saved history.
MAX_SAVED_INT = 2**53


class History:
    """The append-only record of one conversation: a pinned system message, turns, summaries.

    Args:
        system: The system prompt (string or a whole system/developer message), or None.
    """

    def __init__(self, system: str | Sequence[Any] | Mapping[str, Any] | None = None) -> None:
        self._system: Message | None = _system_message(system)
        self._system_tokens: tuple[Any, int] | None = None  # (counter, tokens)
        self._turns: list[Turn] = []
        self._summaries: list[Summary] = []
        self._next_id = 0

    # -- reading -------------------------------------------------------------------------------
    @property
    def system(self) -> Message | None:
        """The pinned system message (a read-only view; change it with :meth:`set_system`)."""
        return self._system

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
        out: list[Message] = [thaw(self._system)] if self._system else []
        for turn in self._turns:
            out.extend(json.loads(json.dumps(m)) for m in turn.messages)
        return out

    # -- writing (each is atomic: validate everything, then append) ----------------------------
    def tail(self) -> tuple[object, object]:
        """What :meth:`validate_new` checks new messages against (the last turn and its
        messages), for an identity check: the same tail validates the same messages the same."""
        last = self._turns[-1] if self._turns else None
        return (last, last.messages if last is not None else None)

    def validate_new(self, messages: Iterable[Any]) -> list[Message]:
        """Validates messages as a continuation of this history; returns copies. No side effects.

        Legacy ``function_call``/``function`` messages come back converted to tool calls (see
        :func:`~convmem.messages.convert_legacy_functions`).

        Raises:
            InvalidMessageError: ``messages`` is not a list of messages, a message is invalid, or
                the order breaks the API's rules.
        """
        if (
            messages is None
            or isinstance(messages, (str, bytes, Mapping))
            or hasattr(messages, "model_dump")
            or not isinstance(messages, Iterable)
        ):
            raise InvalidMessageError(
                f"expected a list of message dicts, got {type(messages).__name__} "
                "(wrap a single message in a list)",
                messages,
            )
        checked = [validate_message(m, i) for i, m in enumerate(messages)]
        prior = self._turns[-1].messages if self._turns else ()
        checked = convert_legacy_functions(checked, prior=prior)
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
        if created_at is not None and (
            isinstance(created_at, bool)
            or not isinstance(created_at, (int, float))
            or not 0 <= created_at <= MAX_TIMESTAMP
        ):
            raise UsageError(
                f"created_at must be a Unix time between 1970 and 9999, got {_short(created_at)}"
            )
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
            added = tuple(freeze(m) for m in groups.pop(0))
            object.__setattr__(last, "messages", last.messages + added)
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
        repaired = repair_text(summary.text)
        if repaired is not summary.text:  # a summariser reply with a lone surrogate
            summary = dataclasses.replace(summary, text=repaired)
        self._summaries.append(summary)

    def restore_tail(
        self,
        turns: Sequence[Turn],
        *,
        after: int = -1,
        summaries: Sequence[Summary] | None = None,
    ) -> None:
        """Replaces the turns with ids above ``after`` by ``turns``, and (when given) every summary.

        For :mod:`convmem.stores`: the records come from a store that validated them when they
        were written, so resuming a long conversation does not validate them again.
        """
        del self._turns[self.index_after(after) :]
        self._turns.extend(turns)
        if self._turns:
            self._next_id = self._turns[-1].id + 1
        if summaries is not None:
            self._summaries = list(summaries)

    def clear(self) -> None:
        """Forgets every turn and summary; the system prompt stays. Turn ids keep increasing."""
        self._turns.clear()
        self._summaries.clear()

    def set_system(self, system: str | Sequence[Any] | Mapping[str, Any] | None) -> None:
        self._system = _system_message(system)
        self._system_tokens = None

    def system_tokens(self, counter: TokenCounter) -> int:
        """Tokens of the pinned system message (counted once per counter object)."""
        if self._system is None:
            return 0
        if self._system_tokens is None or self._system_tokens[0] is not counter:
            self._system_tokens = (counter, counter.count_message(self._system))
        return self._system_tokens[1]

    # -- JSON ----------------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return {
            "format": "convmem.history",
            "version": FORMAT_VERSION,
            "system": thaw(self._system),
            "next_turn_id": self._next_id,
            "turns": [t.to_dict() for t in self._turns],
            "summaries": [s.to_dict() for s in self._summaries],
        }

    @classmethod
    def from_dict(cls, data: Any) -> History:
        """Rebuilds a history from :meth:`to_dict` output, or from a plain list of messages.

        The input is not trusted: every field is checked (types, ranges, order, that each turn
        starts at a user message, that summaries cover turns that exist, timestamps finite and
        between 1970 and 9999) before anything is built.

        Raises:
            InvalidHistoryError: the data is not a valid convmem history; ``field`` names where
                (e.g. ``"turns[3].created_at"``).
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
            with _at("[0]" if system is not None else "[]"):
                hist = cls(system)
            offset = 1 if system is not None else 0
            try:
                hist.append(msgs)
            except InvalidMessageError as exc:
                where = f"[{exc.index + offset}]" if exc.index is not None else "[]"
                raise InvalidHistoryError(where, exc.reason) from exc
            return hist
        if not isinstance(data, Mapping):
            raise InvalidHistoryError(
                "$",
                f"expected a convmem history object or a list of messages, got "
                f"{type(data).__name__}",
            )
        if data.get("format") != "convmem.history":
            raise InvalidHistoryError(
                "format",
                f"not a convmem history (expected format 'convmem.history', got "
                f"{_short(data.get('format'))})",
            )
        version = data.get("version", FORMAT_VERSION)
        if not _is_int(version) or not 1 <= version <= FORMAT_VERSION:
            raise InvalidHistoryError(
                "version", f"this convmem reads version {FORMAT_VERSION}, got {_short(version)}"
            )
        with _at("system"):
            hist = cls(data.get("system"))
        raw_turns = data.get("turns", [])
        if not isinstance(raw_turns, list):
            raise InvalidHistoryError("turns", f"expected a list, got {type(raw_turns).__name__}")
        for n, raw in enumerate(raw_turns):
            where = f"turns[{n}]"
            if not isinstance(raw, Mapping):
                raise InvalidHistoryError(where, f"expected an object, got {type(raw).__name__}")
            turn_id = _saved_int(raw.get("id"), f"{where}.id")
            if hist._turns and turn_id <= hist._turns[-1].id:
                raise InvalidHistoryError(
                    f"{where}.id", f"turn ids must increase ({turn_id} after {hist._turns[-1].id})"
                )
            created_at = _saved_time(raw.get("created_at"), f"{where}.created_at")
            raw_msgs = raw.get("messages")
            if not isinstance(raw_msgs, list) or not raw_msgs:
                raise InvalidHistoryError(f"{where}.messages", "expected a non-empty list")
            try:
                msgs = hist.validate_new(raw_msgs)
            except InvalidMessageError as exc:
                sub = f"[{exc.index}]" if exc.index is not None else ""
                raise InvalidHistoryError(f"{where}.messages{sub}", exc.reason) from exc
            if msgs[0].get("role") != "user" and hist._turns:
                raise InvalidHistoryError(
                    f"{where}.messages[0]", "a turn after the first must start with a user message"
                )
            later_user = next(
                (i for i, m in enumerate(msgs) if i > 0 and m.get("role") == "user"), None
            )
            if later_user is not None:
                raise InvalidHistoryError(
                    f"{where}.messages[{later_user}]",
                    "a user message starts a new turn: it cannot be inside a turn",
                )
            hist._turns.append(Turn(id=turn_id, messages=tuple(msgs), created_at=created_at))
            hist._next_id = turn_id + 1
        if "next_turn_id" in data:
            next_id = _saved_int(data["next_turn_id"], "next_turn_id")
            hist._next_id = max(hist._next_id, next_id)
        raw_summaries = data.get("summaries", [])
        if not isinstance(raw_summaries, list):
            raise InvalidHistoryError(
                "summaries", f"expected a list, got {type(raw_summaries).__name__}"
            )
        known = {t.id for t in hist._turns}
        for n, raw in enumerate(raw_summaries):
            hist._summaries.append(_saved_summary(raw, f"summaries[{n}]", known))
        return hist

    def to_json(self, **kwargs: Any) -> str:
        return json.dumps(self.to_dict(), ensure_ascii=False, **kwargs)

    @classmethod
    def from_json(cls, text: str | bytes) -> History:
        """Rebuilds a history from :meth:`to_json` output (see :meth:`from_dict`).

        Raises:
            InvalidHistoryError: the text is not JSON, or not a valid history.
        """
        return cls.from_dict(parse_saved(text))


def parse_saved(text: Any) -> Any:
    """Parses saved JSON text (str or UTF-8 bytes), with clear errors.

    Data that is already parsed (a dict or list) is returned as it is.

    Raises:
        InvalidHistoryError: not text, not UTF-8, not JSON, or nested too deep to parse.
    """
    if isinstance(text, (bytes, bytearray)):
        try:
            text = bytes(text).decode("utf-8")
        except UnicodeDecodeError as exc:
            raise InvalidHistoryError("$", f"not UTF-8 text ({exc.reason})") from exc
    if not isinstance(text, str):
        return text
    try:
        # NaN/Infinity parse (Python's json accepts them) and are then refused by the field
        # checks, so the error names where they were.
        return json.loads(text)
    except RecursionError as exc:
        raise InvalidHistoryError("$", "JSON nested too deeply") from exc
    except ValueError as exc:  # json.JSONDecodeError
        raise InvalidHistoryError("$", f"not valid JSON ({exc})") from exc


def load_conversation(
    data: Any, *, conversation_id: Any = None, model: Any = None
) -> tuple[History, str | None, str | None]:
    """The history, conversation id and model of a saved conversation (``to_json`` output).

    Args:
        data: JSON text, parsed data, or a plain list of messages.
        conversation_id: The id the caller expects (``from_json(..., conversation_id=...)``).
            When given, a file that names another id is refused: a tampered or mixed-up file
            would otherwise write its turns under another conversation's id in a shared store.
        model: The model the caller chose (overrides the file's).

    Returns:
        ``(history, conversation_id, model)``: the id and model to use, None when neither the
        caller nor the file says.

    Raises:
        InvalidHistoryError: invalid data, or the file's id conflicts with ``conversation_id``.
    """
    raw = parse_saved(data)
    saved_id: str | None = None
    saved_model: str | None = None
    if isinstance(raw, Mapping):
        if raw.get("conversation_id") is not None:
            saved_id = _saved_text(raw["conversation_id"], "conversation_id")
            try:
                # The id as saved: repairing a lone surrogate would name another conversation.
                text_id("conversation_id", raw["conversation_id"])
            except UsageError as exc:
                raise InvalidHistoryError("conversation_id", str(exc)) from None
        if raw.get("model") is not None:
            saved_model = _saved_text(raw["model"], "model")
    if conversation_id is not None and saved_id is not None and conversation_id != saved_id:
        raise InvalidHistoryError(
            "conversation_id",
            f"the file belongs to conversation {saved_id!r}, not {_short(conversation_id)} "
            "(load it with that id, or without conversation_id= if you trust the file)",
        )
    history = History.from_dict(raw)
    chosen_id = conversation_id if conversation_id is not None else saved_id
    return history, chosen_id, model if model is not None else saved_model


class _at:
    """Re-raises an :class:`InvalidMessageError` in a block as :class:`InvalidHistoryError`."""

    def __init__(self, where: str) -> None:
        self.where = where

    def __enter__(self) -> None:
        return None

    def __exit__(self, kind: Any, exc: Any, tb: Any) -> None:
        if isinstance(exc, InvalidMessageError):
            raise InvalidHistoryError(self.where, exc.reason) from exc


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _saved_int(value: Any, where: str) -> int:
    if not _is_int(value) or not 0 <= value <= MAX_SAVED_INT:
        raise InvalidHistoryError(where, f"expected an int from 0 to 2**53, got {_short(value)}")
    return int(value)


def _saved_time(value: Any, where: str) -> float:
    if (
        isinstance(value, bool)
        or not isinstance(value, (int, float))
        or not math.isfinite(value)
        or not 0 <= value <= MAX_TIMESTAMP
    ):
        raise InvalidHistoryError(
            where, f"expected a Unix time between 1970 and 9999, got {_short(value)}"
        )
    return float(value)


def _saved_text(value: Any, where: str, *, empty: bool = False) -> str:
    if not isinstance(value, str) or (not value and not empty):
        raise InvalidHistoryError(
            where, f"expected a {'' if empty else 'non-empty '}string, got {_short(value)}"
        )
    return repair_text(value)


def _saved_summary(raw: Any, where: str, known: set[int]) -> Summary:
    if not isinstance(raw, Mapping):
        raise InvalidHistoryError(where, f"expected an object, got {type(raw).__name__}")
    covers = raw.get("covers")
    if not isinstance(covers, list):
        raise InvalidHistoryError(f"{where}.covers", "expected a list of turn ids")
    ids = tuple(_saved_int(i, f"{where}.covers[{k}]") for k, i in enumerate(covers))
    unknown = [i for i in ids if i not in known]
    if unknown:
        raise InvalidHistoryError(
            f"{where}.covers", f"covers turn ids that do not exist: {unknown[:10]}"
        )
    return Summary(
        text=_saved_text(raw.get("text"), f"{where}.text", empty=True),
        covers=ids,
        created_at=_saved_time(raw.get("created_at", 0.0), f"{where}.created_at"),
        model=_saved_text(raw.get("model", ""), f"{where}.model", empty=True),
        prompt_tokens=_saved_int(raw.get("prompt_tokens", 0), f"{where}.prompt_tokens"),
        completion_tokens=_saved_int(raw.get("completion_tokens", 0), f"{where}.completion_tokens"),
    )


def _system_message(system: str | Sequence[Any] | Mapping[str, Any] | None) -> Message | None:
    if system is None:
        return None
    if isinstance(system, (str, list, tuple)):  # text, or a list of content parts
        system = {
            "role": "system",
            "content": list(system) if not isinstance(system, str) else system,
        }
    if not isinstance(system, Mapping):
        raise InvalidMessageError(
            f"system= must be a string or a system/developer message, not {type(system).__name__}",
            system,
        )
    msg = validate_message(system)
    if msg["role"] not in ("system", "developer"):
        raise InvalidMessageError("system= must be a string or a system/developer message", msg)
    frozen: Message = freeze(msg)
    return frozen


__all__ = [
    "FORMAT_VERSION",
    "MAX_SAVED_INT",
    "MAX_TIMESTAMP",
    "FrozenDict",
    "FrozenList",
    "History",
    "Summary",
    "Turn",
    "freeze",
    "load_conversation",
    "parse_saved",
    "thaw",
]
