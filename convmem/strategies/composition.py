"""The shared state of a composition: what a pipeline's components read and extend.

A :class:`Composition` is the context being built for one call under one budget; the three
component roles (:class:`SummaryComponent`, :class:`RecallComponent`, :class:`RecentComponent`)
are the protocols the composer (:mod:`convmem.strategies.compose`) calls in turn.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol, runtime_checkable

from ..history import Summary, Turn
from ..messages import Message
from ..plan import NOT_SUMMARISED, Action, DecisionSpan, Note, SummaryCall, TurnDecision
from ..strategy import ContextRequest

#: The three places a component can take in a composition.
ComponentRole = Literal["summary", "recall", "recent"]


@dataclass
class Composition:
    """The context being built by a pipeline. Components read and extend it.

    Attributes:
        request: The request.
        limit: Prompt budget in estimate units (the tightest of the window and any cap).
        pending: The pending turn's wire messages (tool outputs may have been cut to fit).
        pending_tokens: Their tokens.
        summary / summary_message / summary_tokens: The summary section.
        recalled: ``(turn, score)`` pairs, chronological once finished.
        recalled_messages / recalled_tokens: The recalled section.
        recent: Turns sent verbatim, chronological.
        decisions: Per turn id.
        reserved: Tokens set aside for later components, by name.
        notes: Structured notes (:class:`~convmem.plan.Note`) for the plan.
        components: The components taking part (read by components that plan ahead).
        summary_component: True when a summary component takes part: a turn it does not cover
            and nobody sends is then ``dropped, not summarised``.
        not_summarised_reason: Why the summary could not cover every dropped turn (set by the
            summary component when its summariser failed, was not called, or could not fit).
        recent_floor: The oldest turn id the recent-turn filler may keep (set once per
            composition by a cache policy, see :class:`~convmem.strategies.BlockTruncation`).
        trial: A trial composition (a summary planning its coverage): components must not
            change their own state in it.
    """

    request: ContextRequest
    limit: int
    pending: list[Message]
    pending_tokens: int
    components: Sequence[Component] = ()
    summary_component: bool = False
    not_summarised_reason: str | None = None
    summary: Summary | None = None
    summary_message: Message | None = None
    summary_tokens: int = 0
    recalled: list[tuple[Turn, float]] = field(default_factory=list)
    recalled_messages: list[Message] = field(default_factory=list)
    recalled_tokens: int = 0
    recent: list[Turn] = field(default_factory=list)
    recent_tokens: int = 0
    decisions: dict[int, TurnDecision] = field(default_factory=dict)
    reserved: dict[str, int] = field(default_factory=dict)
    notes: list[Note] = field(default_factory=list)
    summary_calls: list[SummaryCall] = field(default_factory=list)
    new_summary: Summary | None = None
    recent_floor: int | None = None
    recent_floor_set: bool = False
    trial: bool = False

    @property
    def used(self) -> int:
        """Estimated tokens committed so far (fixed parts, pending, every section)."""
        return (
            self.request.fixed_tokens
            + self.pending_tokens
            + self.summary_tokens
            + self.recalled_tokens
            + self.recent_tokens
        )

    @property
    def remaining(self) -> int:
        """Tokens still free, after what later components reserved."""
        return self.limit - self.used - sum(self.reserved.values())

    def is_decided(self, turn_id: int) -> bool:
        """True when the turn is already sent (recent, recalled) or covered by the summary."""
        return turn_id in self.decisions or (
            self.summary is not None and turn_id in self.summary.covered
        )

    def decide(self, turn: Turn, action: Action, reason: str, score: float | None = None) -> None:
        self.decisions[turn.id] = TurnDecision(turn.id, action, reason, score)

    def note(self, kind: str, **data: Any) -> None:
        """Adds a structured note (its readable text is derived from the kind and data)."""
        self.notes.append(Note(kind, data))

    def notes_of_kind(self, kind: str) -> list[Note]:
        return [n for n in self.notes if n.kind == kind]

    def add_recent(self, turn: Turn, reason: str = "recent", tokens: int | None = None) -> None:
        """Sends ``turn`` verbatim among the recent turns (the caller checked it fits).

        ``tokens`` is the turn's count when the caller already has it (it is read once).
        """
        self.recent.append(turn)
        self.recent_tokens += self.request.turn_tokens(turn) if tokens is None else tokens
        self.decide(turn, "kept", reason)

    def spans(self) -> list[DecisionSpan]:
        """Compact decisions for the summarised and dropped turns (cheap on long histories)."""
        spans: list[DecisionSpan] = []
        history = self.request.history
        turns = history.turn_list()
        if self.summary is not None:
            spans.append(DecisionSpan("summarised", "covered by the summary", self.summary.covers))
        # Everything older than the recent turns and not summarised was dropped; a recent-turn
        # policy that leaves gaps (a user's selection) also drops the turns in between.
        end = len(turns)
        if self.recent:
            oldest = min(t.id for t in self.recent)
            end = history.index_after(oldest) - 1
        dropped: Sequence[int]
        contiguous_from_start = self.summary is None or (
            self.summary.is_prefix and (not turns or self.summary.first <= turns[0].id)
        )
        if not contiguous_from_start:
            assert self.summary is not None
            dropped = [t.id for t in turns[:end] if t.id not in self.summary.covered]
        else:
            start = 0
            if self.summary is not None:
                start = min(history.index_after(self.summary.through), end)
            dropped = _ids(turns, start, end)
        covered = self.summary.covered if self.summary is not None else frozenset()
        gaps = [t.id for t in turns[end:] if t.id not in self.decisions and t.id not in covered]
        if gaps:
            dropped = [*dropped, *gaps]
        if len(dropped):
            if self.summary_component:
                reason = self.not_summarised_reason or "not covered by the summary"
                self.note("not_summarised", count=len(dropped), reason=reason)
                spans.append(DecisionSpan("dropped", NOT_SUMMARISED, dropped))
            else:
                spans.append(
                    DecisionSpan(
                        "dropped", f"over budget ({self.limit} estimated prompt tokens)", dropped
                    )
                )
        return spans


def _ids(turns: Sequence[Turn], start: int, end: int) -> Sequence[int]:
    """The ids of ``turns[start:end]``, as a ``range`` when they are consecutive numbers."""
    if end <= start:
        return ()
    first, last = turns[start].id, turns[end - 1].id
    if last - first + 1 == end - start:
        return range(first, last + 1)  # no copy of the turn list: this runs on every call
    return [t.id for t in turns[start:end]]


@runtime_checkable
class SummaryComponent(Protocol):
    """Sets the summary section (``RollingSummary``). At most one per composition."""

    @property
    def role(self) -> Literal["summary"]: ...

    def contribute(self, comp: Composition) -> None: ...


@runtime_checkable
class RecallComponent(Protocol):
    """Reserves tokens before the recent turns are chosen, then fills them (``VectorRecall``)."""

    @property
    def role(self) -> Literal["recall"]: ...

    def reserve(self, comp: Composition) -> int: ...

    def contribute(self, comp: Composition) -> None: ...


@runtime_checkable
class RecentComponent(Protocol):
    """Chooses the turns sent verbatim. Called twice: before recall (with the recall reserve
    held back) and after it (to top up); the second call must only add turns.

    ``max_tokens`` caps the whole prompt (None: the window's budget).
    """

    @property
    def role(self) -> Literal["recent"]: ...

    @property
    def max_tokens(self) -> int | None: ...

    def contribute(self, comp: Composition) -> None: ...


Component = SummaryComponent | RecallComponent | RecentComponent


def role_of(component: object) -> ComponentRole | None:
    """The component role of ``component``, or None when it is not a component."""
    role = getattr(component, "role", None)
    if role in ("summary", "recall", "recent") and callable(getattr(component, "contribute", None)):
        return role  # type: ignore[no-any-return]
    return None
