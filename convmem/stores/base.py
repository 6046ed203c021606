"""The :class:`Store` protocol and the records every store reads and writes.

A store keeps conversations durably, one **whole turn** per write: the unit of storage is the
unit of context, so a turn (a user message, the assistant's replies, every tool call and its
``tool`` reply) is written in one transaction after the call that produced it succeeded, and a
half turn is never read back. On disk the history stays append-only: undo, retry and edits are
forks, never rewrites.

Every write says what it was built on (a :class:`Head`: the last turn id and how many messages
that turn had). When another writer got there first, the write follows its
:data:`ConflictPolicy`: ``"append"`` (the default) puts the turn after the new head, ``"raise"``
raises :class:`~convmem.errors.ConflictError` naming both heads, ``"fork"`` writes it to a new
conversation forked at the head it was built on. A conflict is never a silent interleave.
"""

from __future__ import annotations

import builtins
import json
import time
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol, runtime_checkable

from ..errors import InvalidMessageError, UsageError
from ..history import Summary, Turn
from ..messages import Message, check_sequence, split_turns, text_of, validate_message

ConflictPolicy = Literal["append", "raise", "fork"]
"""What a write does when the conversation moved on since the head it was built on."""

CONFLICT_POLICIES: tuple[str, ...] = ("append", "raise", "fork")
TITLE_CHARS = 80
MAX_ID_CHARS = 200


@dataclass(frozen=True, order=True)
class Head:
    """Where a conversation ends: its last turn id and how many messages that turn has.

    Attributes:
        turn_id: The newest turn id, -1 for an empty conversation.
        length: Messages in that turn (a turn grows when tool replies continue it).
    """

    turn_id: int = -1
    length: int = 0

    def __str__(self) -> str:
        if self.turn_id < 0:
            return "empty"
        return f"turn {self.turn_id} ({self.length} message{'s' if self.length != 1 else ''})"


EMPTY = Head()


@dataclass(frozen=True)
class Commit:
    """What one :meth:`Store.append` did.

    Attributes:
        conversation_id: Where the turns went: the conversation asked for, or the new fork
            when the ``"fork"`` policy applied.
        turns: The turns written (a continued turn is returned whole), with their final ids.
        base: The head they were written after (differs from the expected head after an
            ``"append"`` conflict: the turns in between came from other writers).
        head: The head after the write.
        conflict: True when the conversation had moved on since the expected head.
        duplicate: True when the idempotency key was already committed: nothing was added and
            ``turns`` are the ones that first commit wrote.
        forked_from: The conversation the fork was made from, for the ``"fork"`` policy.
    """

    conversation_id: str
    turns: tuple[Turn, ...]
    base: Head
    head: Head
    conflict: bool = False
    duplicate: bool = False
    forked_from: str | None = None


@dataclass
class StoredConversation:
    """Everything a store keeps about one conversation, as loaded.

    Attributes:
        id: The conversation id.
        system: The pinned system message, or None.
        model: The model the conversation calls.
        context_window: Its context window in tokens (None when never recorded).
        title: A title (by default the start of the first user message).
        turns: The committed turns, oldest first, with dense ids ``0..head``.
        summaries: Summaries in the order they were written, each with the turn ids it covers.
        head: The last turn id and its length.
        usage: Cumulative token usage (:class:`~convmem.usage.Usage` fields), summariser
            calls counted apart.
        state: Other state the writer keeps (the calibration ratio, optionally the last plan).
        tokens: Tokens of the turns as the writers counted them.
        created_at: When the conversation was created (Unix time).
        updated_at: When it last changed.
        forked_from: The conversation it was forked from, if any.
        forked_at: The last turn id it shares with that conversation.
    """

    id: str
    system: Message | None = None
    model: str = ""
    context_window: int | None = None
    title: str = ""
    turns: list[Turn] = field(default_factory=list)
    summaries: list[Summary] = field(default_factory=list)
    head: Head = EMPTY
    usage: dict[str, int] = field(default_factory=dict)
    state: dict[str, Any] = field(default_factory=dict)
    tokens: int = 0
    created_at: float = 0.0
    updated_at: float = 0.0
    forked_from: str | None = None
    forked_at: int | None = None


@dataclass(frozen=True)
class ConversationInfo:
    """One row of :meth:`Store.list`.

    Attributes:
        id: The conversation id.
        title: Its title (by default the start of the first user message).
        model: The model it calls.
        turns: How many turns it has.
        tokens: Tokens of those turns, as the writers counted them.
        created_at: When it was created (Unix time).
        updated_at: When it last changed.
        forked_from: The conversation it was forked from, if any.
    """

    id: str
    title: str
    model: str
    turns: int
    tokens: int
    created_at: float
    updated_at: float
    forked_from: str | None = None


@dataclass(frozen=True)
class SearchHit:
    """One message that matched :meth:`Store.search`.

    Attributes:
        conversation_id: Its conversation.
        turn_id: Its turn.
        index: Its position in the turn.
        role: ``user``, ``assistant`` or ``tool``.
        text: Its searchable text.
        score: Relevance, higher is better (BM25 for SQLite, ``ts_rank`` for PostgreSQL; not
            comparable across stores).
        created_at: When its turn was committed.
    """

    conversation_id: str
    turn_id: int
    index: int
    role: str
    text: str
    score: float
    created_at: float


@runtime_checkable
class Store(Protocol):
    """Durable conversations, written one whole turn per transaction.

    :class:`~convmem.stores.SQLiteStore` (stdlib ``sqlite3``, the default),
    :class:`~convmem.stores.PostgresStore` (many machines) and
    :class:`~convmem.stores.MemoryStore` (one process, for tests) implement it; the
    conformance suite in ``tests/test_stores_conformance.py`` is the contract a store of your
    own must pass. Every method is blocking; ``AsyncConversation`` runs them off the event loop.
    """

    def create(
        self,
        conversation_id: str,
        *,
        system: Message | None = None,
        model: str = "",
        context_window: int | None = None,
        title: str = "",
    ) -> bool:
        """Creates an empty conversation; returns False (changing nothing) if it exists."""
        ...

    def load(self, conversation_id: str) -> StoredConversation | None:
        """The whole conversation, or None when there is none with that id."""
        ...

    def head(self, conversation_id: str) -> Head | None:
        """The conversation's head (cheap), or None when it does not exist."""
        ...

    def turns(self, conversation_id: str, *, after: int = -1) -> list[Turn]:
        """The turns with ids greater than ``after``, oldest first."""
        ...

    def summaries(self, conversation_id: str) -> list[Summary]:
        """The conversation's summaries, in the order they were written."""
        ...

    def turn_ids(self, conversation_id: str) -> list[int]:
        """Every turn id of the conversation, oldest first (e.g. to find turns not embedded)."""
        ...

    def append(
        self,
        conversation_id: str,
        messages: Sequence[Mapping[str, Any]],
        *,
        expected_head: Head | None = None,
        on_conflict: ConflictPolicy = "append",
        idempotency_key: str | None = None,
        tokens: int = 0,
        usage: Mapping[str, int] | None = None,
        state: Mapping[str, Any] | None = None,
        created_at: float | None = None,
    ) -> Commit:
        """Writes whole turns in one transaction (creating the conversation if needed).

        Messages that start with a user message start new turns; messages that do not continue
        the head turn (the ``tool`` replies to its tool calls, then the assistant's answer).

        Args:
            conversation_id: The conversation.
            messages: OpenAI-format messages (validated; system messages are refused).
            expected_head: The head the messages were built on; None skips the check.
            on_conflict: What to do when the head moved on (see :data:`ConflictPolicy`).
            idempotency_key: A key for this write: a retry with the same key adds nothing and
                returns the first write's turns (``duplicate=True``).
            tokens: Tokens of the messages, added to the conversation's count.
            usage: Token usage to add (``Usage`` field names to increments).
            state: Replaces the conversation's state (calibration, last plan), when given.
            created_at: The turns' time (default now).

        Raises:
            ConflictError: the head moved on and the policy is ``"raise"`` (or the messages
                continue a turn another writer has moved past).
            InvalidMessageError: a message is invalid or out of order; nothing is written.
        """
        ...

    def add_summary(
        self,
        conversation_id: str,
        summary: Summary,
        *,
        expected_summaries: int,
        expected_head: Head | None = None,
    ) -> bool:
        """Writes a summary only if nothing it was built on changed.

        Args:
            conversation_id: The conversation.
            summary: The summary, with the turn ids it covers.
            expected_summaries: How many summaries the summariser saw (it folds in the last).
            expected_head: The head it saw; when the summary covers the head turn, the head
                must not have moved.

        Returns:
            True if written; False when another summary was written first, or a covered turn
            changed or does not exist.
        """
        ...

    def list(self, *, limit: int | None = None) -> list[ConversationInfo]:
        """Conversations, most recently updated first."""
        ...

    def search(
        self, query: str, *, conversation_id: str | None = None, limit: int = 20
    ) -> builtins.list[SearchHit]:
        """Keyword search over the messages of every (or one) conversation, best first.

        Every word of ``query`` must occur (no query syntax: punctuation is ignored).
        """
        ...

    def delete(self, conversation_id: str) -> bool:
        """Deletes a conversation with its turns and summaries; False if there was none."""
        ...

    def fork(
        self, conversation_id: str, *, at_turn: int | None = None, new_id: str | None = None
    ) -> str:
        """Copies turns ``0..at_turn`` (all when None) and their summaries to a new conversation.

        Returns:
            The new conversation's id (``new_id``, or a fresh one).

        Raises:
            UsageError: no such conversation or turn, or ``new_id`` exists.
        """
        ...

    def close(self) -> None:
        """Releases connections."""
        ...


# -- shared, I/O-free helpers -----------------------------------------------------------------


def check_id(conversation_id: Any, what: str = "conversation_id") -> str:
    """Validates a conversation id (a non-empty string of at most 200 characters)."""
    if not isinstance(conversation_id, str) or not conversation_id:
        raise UsageError(f"{what} must be a non-empty string, got {conversation_id!r}")
    if len(conversation_id) > MAX_ID_CHARS:
        raise UsageError(f"{what} is longer than {MAX_ID_CHARS} characters")
    return conversation_id


def check_policy(policy: Any) -> str:
    if policy not in CONFLICT_POLICIES:
        raise UsageError(
            f"on_conflict must be one of {', '.join(CONFLICT_POLICIES)}, got {policy!r}"
        )
    return str(policy)


def check_key(key: Any) -> str | None:
    if key is None:
        return None
    if not isinstance(key, str) or not key or len(key) > MAX_ID_CHARS:
        raise UsageError(f"idempotency_key must be a non-empty string (<= 200 chars), got {key!r}")
    return key


def prepare_messages(messages: Sequence[Mapping[str, Any]]) -> list[Message]:
    """Validates messages for a write (before any I/O); returns copies."""
    if isinstance(messages, (str, bytes)) or not isinstance(messages, Sequence):
        raise UsageError("messages must be a list of message dicts")
    if not messages:
        raise UsageError("nothing to append: messages is empty")
    checked = [validate_message(m, i) for i, m in enumerate(messages)]
    for i, msg in enumerate(checked):
        if msg["role"] in ("system", "developer"):
            raise InvalidMessageError(
                "system messages are pinned: pass system= when creating the conversation",
                msg,
                i,
            )
    return checked


def group_for_write(
    messages: Sequence[Message], base: Head, prior: Sequence[Message]
) -> tuple[list[Message], list[list[Message]]]:
    """Splits messages into a continuation of the base turn and new turns, checking order.

    Args:
        messages: Validated messages.
        base: The head they go after.
        prior: The base turn's messages (empty for an empty conversation).

    Returns:
        (messages continuing the base turn, groups that start new turns).

    Raises:
        InvalidMessageError: the messages cannot follow the base turn.
    """
    check_sequence(messages, prior=prior)
    groups = split_turns(list(messages))
    continuation: list[Message] = []
    if base.turn_id >= 0 and messages[0].get("role") != "user":
        continuation = groups.pop(0)
    return continuation, groups


def searchable_text(message: Mapping[str, Any]) -> str:
    """The words a message is found by: its text, and the names and arguments of tool calls."""
    parts = [text_of(message)]
    for call in message.get("tool_calls") or ():
        fn = call.get("function") or {}
        parts.append(f"{fn.get('name', '')} {fn.get('arguments', '')}")
    if message.get("refusal"):
        parts.append(str(message["refusal"]))
    return "\n".join(p for p in parts if p)


def title_of(messages: Sequence[Mapping[str, Any]]) -> str:
    """A default title: the first line of the first user message, at most 80 characters."""
    for msg in messages:
        if msg.get("role") == "user":
            text = text_of(msg).strip()
            line = text.splitlines()[0] if text else ""
            return line if len(line) <= TITLE_CHARS else line[: TITLE_CHARS - 1] + "…"
    return ""


def query_words(query: Any) -> list[str]:
    """The words of a search query (letters, digits, underscores), lower-cased."""
    import re

    if not isinstance(query, str):
        raise UsageError(f"query must be a string, got {type(query).__name__}")
    return [w.lower() for w in re.findall(r"\w+", query)]


def new_fork_id(conversation_id: str) -> str:
    """A fresh id for a fork of ``conversation_id``."""
    base = conversation_id[: MAX_ID_CHARS - 13]
    return f"{base}~{uuid.uuid4().hex[:12]}"


def dumps(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"))


def add_usage(current: Mapping[str, Any], delta: Mapping[str, int] | None) -> dict[str, int]:
    """Adds usage increments (``Usage`` field names) to a stored usage record."""
    out = {k: int(v) for k, v in current.items()}
    for key, value in (delta or {}).items():
        if not isinstance(value, int) or isinstance(value, bool):
            raise UsageError(f"usage[{key!r}] must be an int, got {value!r}")
        if key == "total_tokens":
            continue  # derived
        out[key] = out.get(key, 0) + value
    return out


def summary_from_row(
    text: str, covers: str, created_at: float, model: str, prompt: int, completion: int
) -> Summary:
    return Summary(
        text=text,
        covers=tuple(int(i) for i in json.loads(covers)),
        created_at=float(created_at),
        model=model,
        prompt_tokens=int(prompt),
        completion_tokens=int(completion),
    )


def check_summary(summary: Any) -> Summary:
    if not isinstance(summary, Summary):
        raise UsageError(f"summary must be a convmem Summary, got {type(summary).__name__}")
    if not summary.covers:
        raise UsageError("a summary must cover at least one turn")
    return summary


def check_message_for_read(raw: str, conversation_id: str, turn_id: int) -> Message:
    try:
        msg = json.loads(raw)
    except ValueError as exc:  # pragma: no cover - only a corrupted file gets here
        raise InvalidMessageError(
            f"stored message of conversation {conversation_id!r} turn {turn_id} is not JSON"
        ) from exc
    if not isinstance(msg, dict):  # pragma: no cover - as above
        raise InvalidMessageError(f"stored message of turn {turn_id} is not an object")
    return msg


def now() -> float:
    return time.time()
