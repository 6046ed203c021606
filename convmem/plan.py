"""ContextPlan: what one call sent, section by section, and why.

Every call leaves a plan, so a user can always answer "what did the model see, and what did it
cost?". Plans are plain data: JSON-serialisable and readable when printed.
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Literal

from .history import Summary
from .messages import Message
from .redact import redact

SectionName = Literal["system", "summary", "recalled", "recent", "tools"]
Action = Literal["kept", "dropped", "summarised", "recalled"]

#: The reason of a turn dropped while a summary strategy was in use but could not cover it (the
#: summariser failed, timed out, was not called, or its input could not fit). A note of kind
#: ``not_summarised`` in the same plan gives the reason.
NOT_SUMMARISED = "dropped, not summarised"

#: The readable text of each note kind, formatted with the note's data.
NOTE_TEXTS: dict[str, str] = {
    "summarised": "{why}: summarised {span}",
    "summary_failed": "summariser failed ({error}); this call falls back to truncation, the "
    "summary is retried at the next call",
    "summary_rejected": "summary rejected: {tokens} tokens, more than twice its cap of {cap} "
    "(max_summary_tokens); this call falls back to truncation",
    "summary_cut": "summary cut at a line end from {tokens} to {kept_tokens} tokens (cap {cap}, "
    "max_summary_tokens)",
    "summary_not_called": "a summary is due: the summariser was not called (preview)",
    "summary_does_not_fit": "the summary ({tokens} tokens) does not fit; sent without it",
    "not_summarised": "{count} turn(s) dropped, not summarised: {reason}",
    "tool_output_cut": "tool output {tool_call_id} cut from {before} to {after} characters to "
    "fit the window",
    "recall_failed": "recall failed ({error}); sent without it",
    "cache_block_dropped": "budget hit: dropped {dropped_turns} old turn(s) down to the "
    "low-water mark ({low_water:.0%}); recent turns from turn {kept_from} are kept fixed for the "
    "prompt cache",
    "cache_prefix_kept": "prompt cache: recent turns kept from turn {kept_from} (stable prefix, "
    "{kept_turns} turn(s))",
    "cache_block_summarised": "prompt cache: the turns before turn {kept_from} are now in the "
    "summary (one block); the summary and the recent turns from turn {kept_from} stay fixed until "
    "the budget is hit again",
    "recall_nothing_fits": "no recalled turn fits the recall budget or all are recent",
}


class Note(str):
    """An event worth knowing about one call: a kind, its numbers, and readable text.

    Programs test :attr:`kind` and read :attr:`data`; people read the note itself, which is its
    readable text (a ``str``, derived from the kind and data through :data:`NOTE_TEXTS`), so
    code written when notes were plain strings keeps working.

    Attributes:
        kind: What happened, e.g. ``"recall_failed"``, ``"summary_failed"``, ``"summarised"``.
        data: The numbers and names behind it (JSON-serialisable, read-only).
    """

    kind: str
    data: Mapping[str, Any]

    def __new__(cls, kind: str, data: Mapping[str, Any] | None = None) -> Note:
        values = dict(data or {})
        note = super().__new__(cls, _note_text(kind, values))
        note.kind = kind
        note.data = MappingProxyType(values)
        return note

    @property
    def text(self) -> str:
        """The readable text (the note as a plain ``str``)."""
        return str.__str__(self)

    def __repr__(self) -> str:
        return f"Note({self.kind!r}, {dict(self.data)!r})"

    def __reduce__(self) -> tuple[Any, ...]:
        return (Note, (self.kind, dict(self.data)))

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, **dict(self.data), "text": self.text}


def _note_text(kind: str, data: Mapping[str, Any]) -> str:
    template = NOTE_TEXTS.get(kind)
    if template is not None:
        try:
            return template.format(**data)
        except (KeyError, IndexError, ValueError):
            pass
    if "text" in data:
        return str(data["text"])
    details = ", ".join(f"{k}={v}" for k, v in data.items())
    return f"{kind}: {details}" if details else kind


def as_note(note: Note | str) -> Note:
    """A note; plain text becomes a note of kind ``"text"``."""
    return note if isinstance(note, Note) else Note("text", {"text": str(note)})


#: Order in which sections are sent: what changes least between calls first, so the prefix a
#: provider's prompt cache can reuse again (OpenAI, DeepSeek, vLLM, llama.cpp) is as long as
#: possible. The system prompt never changes; the summary only when a new one is made; the
#: recent turns only grow (under ``Truncate``'s block policy) until a block of old turns is
#: dropped; the recalled section changes with every question, so it goes last, right before
#: the newest user message (see :attr:`ContextPlan.messages`).
SECTION_ORDER: tuple[str, ...] = ("system", "summary", "recent", "recalled")


@dataclass
class Section:
    """One part of the context.

    Attributes:
        name: ``system``, ``summary``, ``recalled``, ``recent`` or ``tools``.
        messages: The messages this section sends (``tools`` sends schemas, not messages).
        tokens: Estimated tokens of the section.
        turn_ids: The history turns the section carries.
    """

    name: str
    messages: list[Message]
    tokens: int
    turn_ids: tuple[int, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "tokens": self.tokens,
            "turn_ids": list(self.turn_ids),
            "messages": self.messages,
        }


@dataclass(frozen=True)
class TurnDecision:
    """What happened to one history turn in this call, and why.

    Attributes:
        turn_id: The turn.
        action: ``kept`` (sent verbatim as a recent turn), ``dropped`` (not sent),
            ``summarised`` (sent only through the summary) or ``recalled`` (sent in the recalled
            section).
        reason: A short human-readable why, e.g. ``"over budget (4096)"``.
        score: Similarity score for recalled turns.
        parts: For a turn only partly recalled, the indices of the messages sent (recall
            sends messages with their neighbours, not always whole turns); None: all of them.
    """

    turn_id: int
    action: Action
    reason: str
    score: float | None = None
    parts: tuple[int, ...] | None = None

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {"turn_id": self.turn_id, "action": self.action, "reason": self.reason}
        if self.score is not None:
            d["score"] = round(self.score, 4)
        if self.parts is not None:
            d["parts"] = list(self.parts)
        return d


@dataclass(frozen=True)
class DecisionSpan:
    """The same decision for many turns, stored compactly (e.g. 5,000 dropped turns).

    Attributes:
        action: As in :class:`TurnDecision`.
        reason: As in :class:`TurnDecision`.
        turn_ids: The turns (a ``range`` when they are consecutive).
    """

    action: Action
    reason: str
    turn_ids: Sequence[int]

    def to_dict(self) -> dict[str, Any]:
        return {
            "action": self.action,
            "reason": self.reason,
            "turn_ids": _ranges(list(self.turn_ids)),
        }


@dataclass
class SummaryCall:
    """A summariser call made while building this context."""

    model: str
    ok: bool
    prompt_tokens: int = 0
    completion_tokens: int = 0
    covers: tuple[int, ...] = ()
    error: str | None = None
    seconds: float = 0.0

    def __post_init__(self) -> None:
        # Provider error text can echo the API key back: never keep it (convmem.redact).
        if self.error is not None:
            self.error = redact(self.error)

    def to_dict(self) -> dict[str, Any]:
        return {
            "model": self.model,
            "ok": self.ok,
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "covers": list(self.covers),
            "error": self.error,
            "seconds": round(self.seconds, 4),
        }


@dataclass
class RefusedAttempt:
    """An attempt of this call that the server refused as too long, and what convmem learnt.

    Attributes:
        provider: Whose error wording it was (``"llama.cpp"``, ``"vllm"``, ...).
        message: The server's error message.
        estimated_tokens: convmem's raw estimate of the refused prompt.
        corrected_tokens: That estimate after the learnt correction, at the time.
        budget: The prompt budget it was built for.
        context_window: The window convmem budgeted against.
        server_context_window: The window the server stated, if it did.
        server_prompt_tokens: The server's count of the refused prompt, if it stated one.
        learnt: What changed (``"window 100000 -> 2048, token ratio 1.000 -> 1.310"``).
    """

    provider: str
    message: str
    estimated_tokens: int
    corrected_tokens: int
    budget: int
    context_window: int
    server_context_window: int | None = None
    server_prompt_tokens: int | None = None
    learnt: str = ""

    def describe(self) -> str:
        said = []
        if self.server_context_window is not None:
            said.append(f"window {self.server_context_window}")
        if self.server_prompt_tokens is not None:
            said.append(f"prompt {self.server_prompt_tokens} tokens")
        numbers = f": {', '.join(said)}" if said else ""
        return (
            f"{self.provider}{numbers}; convmem had estimated ~{self.corrected_tokens} of "
            f"{self.budget} in a {self.context_window}-token window"
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "provider": self.provider,
            "message": self.message,
            "estimated_tokens": self.estimated_tokens,
            "corrected_tokens": self.corrected_tokens,
            "budget": self.budget,
            "context_window": self.context_window,
            "server_context_window": self.server_context_window,
            "server_prompt_tokens": self.server_prompt_tokens,
            "learnt": self.learnt,
        }


@dataclass
class ContextPlan:
    """The context one call sends, with token counts and per-turn decisions.

    Attributes:
        strategy: Name of the strategy that built it.
        sections: Sections in send order: system, summary, recent, recalled (whose message
            goes right before the newest user message of ``recent``), ``tools`` last (it holds
            no messages).
        decisions: One entry per history turn (see :attr:`decisions`; many turns with the same
            decision are stored as :class:`DecisionSpan` so building a plan stays cheap on
            long histories).
        context_window: The model's window.
        reply_reserve: Tokens kept free for the reply.
        budget: Prompt tokens available (``context_window - reply_reserve``).
        estimated_tokens: convmem's own count of the prompt (messages, tools, priming).
        corrected_tokens: That estimate after the per-model correction learnt from usage.
        reported_prompt_tokens: ``usage.prompt_tokens`` the server reported (after the call).
        shared_prefix_tokens: Of the messages sent, the leading ones identical to the previous
            request's, in convmem's count: the part a provider's prompt cache can reuse.
        shared_prefix_messages: How many leading messages that is.
        cached_tokens: ``usage.prompt_tokens_details.cached_tokens`` the server reported (None
            when it did not say).
        cost: What the call cost in US dollars (None when the model has no price, see
            :mod:`convmem.pricing`).
        notes: Events worth knowing (thresholds hit, fallbacks taken), as :class:`Note`.
        summary_calls: Summariser calls made for this context.
        new_summary: A summary made for this call; committed with the turn.
        created_at: Unix time.
        window_source: Where the window came from: ``"2048 (server: llama.cpp /v1/models
            meta.n_ctx)"``; ``table``, ``server``, ``caller`` or ``learnt``.
        refused: Earlier attempts of this call that the server refused as too long (the call
            was rebuilt from what they taught, and retried once).
    """

    strategy: str
    sections: list[Section]
    turn_decisions: list[TurnDecision]
    context_window: int
    reply_reserve: int
    budget: int
    estimated_tokens: int
    corrected_tokens: int
    reported_prompt_tokens: int | None = None
    shared_prefix_tokens: int = 0
    shared_prefix_messages: int = 0
    cached_tokens: int | None = None
    cost: float | None = None
    notes: list[Note] = field(default_factory=list)
    summary_calls: list[SummaryCall] = field(default_factory=list)
    new_summary: Summary | None = None
    spans: list[DecisionSpan] = field(default_factory=list)
    created_at: float = field(default_factory=time.time)
    window_source: str = ""
    refused: list[RefusedAttempt] = field(default_factory=list)

    def __post_init__(self) -> None:
        # Notes quote provider errors, which can echo the API key back (convmem.redact).
        self.notes = [_redacted(as_note(n)) for n in self.notes]

    @property
    def decisions(self) -> list[TurnDecision]:
        """One decision per history turn, by turn id (spans expanded)."""
        singles = {d.turn_id: d for d in self.turn_decisions}
        out = dict(singles)
        for span in self.spans:
            for i in span.turn_ids:
                if i not in singles:
                    out[i] = TurnDecision(i, span.action, span.reason)
        return [out[i] for i in sorted(out)]

    # -- views ---------------------------------------------------------------------------------
    @property
    def messages(self) -> list[Message]:
        """The ``messages`` array this plan sends, stable parts first (:data:`SECTION_ORDER`).

        System prompt, summary, recent turns, then the recalled section right before the newest
        user message (the turn being made, with its tool rounds so far, comes last): the part a
        prompt cache can match runs through the recent turns, and what recall finds sits next
        to the question it was found for.
        """
        by_name: dict[str, list[Message]] = {}
        for sec in self.sections:
            by_name.setdefault(sec.name, []).extend(sec.messages)
        recent = by_name.get("recent", [])
        at = len(recent)  # where the newest user message starts (the end when there is none)
        for i in range(len(recent) - 1, -1, -1):
            if recent[i].get("role") == "user":
                at = i
                break
        return [
            *by_name.get("system", ()),
            *by_name.get("summary", ()),
            *recent[:at],
            *by_name.get("recalled", ()),
            *recent[at:],
        ]

    def section(self, name: str) -> Section | None:
        """The named section, or None."""
        for sec in self.sections:
            if sec.name == name:
                return sec
        return None

    def tokens_by_section(self) -> dict[str, int]:
        return {sec.name: sec.tokens for sec in self.sections}

    def turn_ids(self, action: Action) -> list[int]:
        """Turn ids with the given decision."""
        singles = {d.turn_id for d in self.turn_decisions}
        ids = {d.turn_id for d in self.turn_decisions if d.action == action}
        for span in self.spans:
            if span.action == action:
                ids.update(i for i in span.turn_ids if i not in singles)
        return sorted(ids)

    @property
    def kept(self) -> list[int]:
        return self.turn_ids("kept")

    @property
    def dropped(self) -> list[int]:
        return self.turn_ids("dropped")

    @property
    def summarised(self) -> list[int]:
        return self.turn_ids("summarised")

    @property
    def recalled(self) -> list[int]:
        return self.turn_ids("recalled")

    @property
    def not_summarised(self) -> list[int]:
        """Dropped turns a summary strategy should have covered but could not (see the notes)."""
        singles = {d.turn_id for d in self.turn_decisions}
        ids = {
            d.turn_id
            for d in self.turn_decisions
            if d.action == "dropped" and d.reason == NOT_SUMMARISED
        }
        for span in self.spans:
            if span.action == "dropped" and span.reason == NOT_SUMMARISED:
                ids.update(i for i in span.turn_ids if i not in singles)
        return sorted(ids)

    def notes_of(self, kind: str) -> list[Note]:
        """The notes of one kind."""
        return [n for n in self.notes if n.kind == kind]

    # -- serialisation ---------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return {
            "strategy": self.strategy,
            "context_window": self.context_window,
            "reply_reserve": self.reply_reserve,
            "budget": self.budget,
            "estimated_tokens": self.estimated_tokens,
            "corrected_tokens": self.corrected_tokens,
            "reported_prompt_tokens": self.reported_prompt_tokens,
            "shared_prefix_tokens": self.shared_prefix_tokens,
            "shared_prefix_messages": self.shared_prefix_messages,
            "cached_tokens": self.cached_tokens,
            "cost": self.cost,
            "tokens_by_section": self.tokens_by_section(),
            "sections": [s.to_dict() for s in self.sections],
            "decisions": [d.to_dict() for d in self.turn_decisions],
            "decision_spans": [s.to_dict() for s in self.spans],
            "notes": [n.to_dict() for n in self.notes],
            "summary_calls": [c.to_dict() for c in self.summary_calls],
            "new_summary": self.new_summary.to_dict() if self.new_summary else None,
            "created_at": self.created_at,
            "window_source": self.window_source,
            "refused": [r.to_dict() for r in self.refused],
        }

    def to_json(self, **kwargs: Any) -> str:
        return json.dumps(self.to_dict(), ensure_ascii=False, **kwargs)

    def __str__(self) -> str:
        reported = (
            f", server reported {self.reported_prompt_tokens}"
            if self.reported_prompt_tokens is not None
            else ""
        )
        lines = [
            f"ContextPlan[{self.strategy}] ~{self.corrected_tokens} of {self.budget} prompt tokens "
            f"(window {self.window_source or self.context_window}, "
            f"{self.reply_reserve} kept for the reply; "
            f"raw estimate {self.estimated_tokens}{reported})"
        ]
        for sec in self.sections:
            span = _ranges(sec.turn_ids)
            lines.append(
                f"  {sec.name:<9} {sec.tokens:>7} tokens  {len(sec.messages):>4} messages"
                + (f"  turns {span}" if span else "")
            )
        actions: tuple[Action, ...] = ("kept", "summarised", "recalled", "dropped")
        for action in actions:
            ids = self.turn_ids(action)
            if ids:
                lines.append(f"  {action:<10} turns {_ranges(ids)}")
        lost = self.not_summarised
        if lost:
            lines.append(f"  {NOT_SUMMARISED} turns {_ranges(lost)}")
        if self.shared_prefix_messages or self.cached_tokens or self.cost is not None:
            cache = f"; server cached {self.cached_tokens}" if self.cached_tokens else ""
            money = f"; cost ${self.cost:.6f}" if self.cost is not None else ""
            lines.append(
                f"  prefix    {self.shared_prefix_tokens:>7} tokens  "
                f"{self.shared_prefix_messages:>4} messages  same as the previous request"
                f"{cache}{money}"
            )
        for call in self.summary_calls:
            status = "ok" if call.ok else f"FAILED ({call.error})"
            lines.append(
                f"  summary call {call.model}: {status}, {call.prompt_tokens}+"
                f"{call.completion_tokens} tokens"
            )
        lines.extend(f"  note: {n}" for n in self.notes)
        return "\n".join(lines)

    def _repr_pretty_(self, p: Any, cycle: bool) -> None:  # IPython / notebooks
        p.text(str(self))

    def _repr_html_(self) -> str:  # notebooks: see convmem.display
        from .display import plan_html

        return plan_html(self)


def _redacted(note: Note) -> Note:
    data = {k: redact(v) if isinstance(v, str) else v for k, v in note.data.items()}
    return note if data == dict(note.data) else Note(note.kind, data)


def _ranges(ids: tuple[int, ...] | list[int]) -> str:
    """Compacts ``[1,2,3,7]`` to ``"1-3, 7"``."""
    if not ids:
        return ""
    s = sorted(ids)
    out: list[str] = []
    start = prev = s[0]
    for i in s[1:]:
        if i == prev + 1:
            prev = i
            continue
        out.append(f"{start}-{prev}" if prev != start else str(start))
        start = prev = i
    out.append(f"{start}-{prev}" if prev != start else str(start))
    return ", ".join(out)
