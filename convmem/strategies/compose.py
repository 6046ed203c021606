"""One budget, several strategies: the machinery behind :class:`Pipeline`.

Every built-in strategy is a *component* that contributes to a shared :class:`Composition`:

1. summary components (``RollingSummary``) set the summary section and mark the turns it
   covers as ``summarised``;
2. recall components (``VectorRecall``) reserve their share of what is left;
3. the recent-turns filler (``Truncate``) keeps the newest whole turns that fit, newest first,
   as one contiguous run;
4. recall components fill their reserve with the best matching turns that are not already sent;
5. the filler tops up with older turns if the recall left room.

Whatever is left undecided is ``dropped``. Each strategy's own ``build`` is a pipeline of itself
and a default ``Truncate()``, so a strategy alone and in a pipeline behave the same.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

from ..errors import ContextOverflowError
from ..history import Summary, Turn
from ..messages import Message
from ..plan import ContextPlan, DecisionSpan, SummaryCall, TurnDecision
from ..strategy import ContextRequest, Job, assemble_plan

#: Marker put in place of the middle of a tool output that had to be cut to fit.
CUT_MARKER = "\n[... {n} characters cut by convmem to fit the context window ...]\n"


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
    """

    request: ContextRequest
    limit: int
    pending: list[Message]
    pending_tokens: int
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
    notes: list[str] = field(default_factory=list)
    summary_calls: list[SummaryCall] = field(default_factory=list)
    new_summary: Summary | None = None

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

    def decide(self, turn: Turn, action: Any, reason: str, score: float | None = None) -> None:
        self.decisions[turn.id] = TurnDecision(turn.id, action, reason, score)

    def spans(self) -> list[DecisionSpan]:
        """Compact decisions for the summarised and dropped turns (cheap on long histories)."""
        spans: list[DecisionSpan] = []
        history = self.request.history
        turns = history.turn_list()
        if self.summary is not None:
            spans.append(DecisionSpan("summarised", "covered by the summary", self.summary.covers))
        # Everything older than the run of recent turns and not summarised was dropped.
        end = len(turns)
        if self.recent:
            end = history.index_after(self.recent[-1].id) - 1  # recent is newest first
        dropped: Sequence[int]
        if self.summary is not None and not self.summary.is_prefix:
            dropped = [t.id for t in turns[:end] if t.id not in self.summary.covered]
        else:
            start = 0
            if self.summary is not None:
                start = min(history.index_after(self.summary.through), end)
            dropped = _ids(turns, start, end)
        if len(dropped):
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
class Component(Protocol):
    """A strategy that can take part in a :class:`Pipeline`."""

    role: str  # "summary", "recall" or "recent"

    def contribute(self, comp: Composition) -> None: ...


def _cut_text(text: str, keep_chars: int) -> str:
    if len(text) <= keep_chars:
        return text
    head = keep_chars * 2 // 3
    tail = keep_chars - head
    cut = len(text) - head - tail
    return text[:head] + CUT_MARKER.format(n=cut) + (text[-tail:] if tail else "")


def fit_pending(request: ContextRequest, limit: int) -> tuple[list[Message], int, list[str]]:
    """The pending turn's wire messages, with long tool outputs cut (visibly) if they must be.

    Only ``tool`` message contents are ever cut, middle first, keeping head and tail; the user
    message and the assistant's tool calls are sent whole.

    Raises:
        ContextOverflowError: it does not fit even with every tool output cut down.
    """
    counter = request.counter
    room = limit - request.fixed_tokens
    notes: list[str] = []
    if request.pending_tokens <= room:
        return request.pending_wire, request.pending_tokens, notes
    msgs = list(request.pending_wire)
    tokens = [counter.count_message(m) for m in msgs]
    tool_idx = [
        i
        for i, m in enumerate(msgs)
        if m.get("role") == "tool" and isinstance(m.get("content"), str)
    ]
    excess = sum(tokens) - room
    total_tool = sum(tokens[i] for i in tool_idx)
    for i in tool_idx:
        original = msgs[i]["content"]
        allowed = max(16, tokens[i] - math.ceil(excess * tokens[i] / max(total_tool, 1)))
        # Binary search the longest head+tail of the original that fits its share.
        lo, hi = 0, len(original)
        best = dict(msgs[i], content=_cut_text(original, 0))
        while lo <= hi:
            mid = (lo + hi) // 2
            candidate = dict(msgs[i], content=_cut_text(original, mid))
            if counter.count_message(candidate) <= allowed:
                best, lo = candidate, mid + 1
            else:
                hi = mid - 1
        if best["content"] != original:
            notes.append(
                f"tool output {msgs[i].get('tool_call_id')} cut from {len(original)} to "
                f"{len(best['content'])} characters to fit the window"
            )
        msgs[i] = best
        tokens[i] = counter.count_message(best)
    if sum(tokens) > room:
        raise ContextOverflowError(
            f"{request.model}: the current turn does not fit even with no history",
            needed=request.budget.corrected(request.fixed_tokens + sum(tokens)),
            budget=request.budget.prompt_tokens,
            context_window=request.budget.context_window,
        )
    return msgs, sum(tokens), notes


def compose(
    request: ContextRequest, components: Sequence[Any], *, name: str, cap_tokens: int | None = None
) -> ContextPlan:
    """Builds one plan from components sharing one budget (see the module docstring).

    Args:
        request: The request.
        components: Strategy components, in any order; a default ``Truncate()`` is added when
            none fills recent turns.
        name: The strategy name for the plan.
        cap_tokens: An overall cap on prompt tokens (real tokens), below the window's budget.
    """
    from .truncate import Truncate

    limit = request.budget.limit
    fillers = [c for c in components if getattr(c, "role", None) == "recent"]
    if cap_tokens is None:
        caps = [c.max_tokens for c in fillers if getattr(c, "max_tokens", None)]
        cap_tokens = min(caps) if caps else None
    if cap_tokens is not None:
        limit = min(limit, request.budget.to_estimate(cap_tokens))
    if request.fixed_tokens > limit:
        from ..errors import BudgetError

        raise BudgetError(
            f"{name}: the system prompt and tool schemas alone do not fit the prompt budget",
            budget=cap_tokens or request.budget.prompt_tokens,
            required=request.budget.corrected(request.fixed_tokens),
        )
    pending, pending_tokens, notes = fit_pending(request, limit)
    comp = Composition(request=request, limit=limit, pending=pending, pending_tokens=pending_tokens)
    comp.notes.extend(notes)

    summaries = [c for c in components if getattr(c, "role", None) == "summary"]
    recalls = [c for c in components if getattr(c, "role", None) == "recall"]
    filler = _merge_fillers(fillers) if fillers else Truncate()

    for comp_ in summaries:
        comp_.contribute(comp)
    for rec in recalls:
        comp.reserved[_key(rec)] = rec.reserve(comp)
    filler.contribute(comp)
    for rec in recalls:
        comp.reserved.pop(_key(rec), None)
        rec.contribute(comp)
    filler.contribute(comp)  # top up with what recall left free

    recent_sorted = sorted(comp.recent, key=lambda t: t.id)
    plan = assemble_plan(
        request,
        strategy=name,
        recent=recent_sorted,
        decisions=list(comp.decisions.values()),
        summary=comp.summary,
        summary_message=comp.summary_message,
        recalled_messages=comp.recalled_messages,
        recalled_ids=[t.id for t, _ in sorted(comp.recalled, key=lambda p: p[0].id)],
        notes=comp.notes,
        summary_calls=comp.summary_calls,
        new_summary=comp.new_summary,
        pending=comp.pending,
        pending_tokens=comp.pending_tokens,
        spans=comp.spans(),
    )
    if plan.estimated_tokens > limit:  # a component overshot: a bug, but never send it
        raise ContextOverflowError(
            f"{name}: built context is over budget",
            needed=plan.corrected_tokens,
            budget=request.budget.prompt_tokens,
            context_window=request.budget.context_window,
            plan=plan,
        )
    return plan


def _key(component: Any) -> str:
    return f"{type(component).__name__}@{id(component)}"


def _merge_fillers(fillers: Sequence[Any]) -> Any:
    from .truncate import Truncate

    if len(fillers) == 1:
        return fillers[0]
    turns = [f.max_turns for f in fillers if f.max_turns is not None]
    tokens = [f.max_tokens for f in fillers if f.max_tokens is not None]
    return Truncate(
        max_turns=min(turns) if turns else None, max_tokens=min(tokens) if tokens else None
    )


def prepare_all(components: Sequence[Any], request: ContextRequest) -> list[Job]:
    """The jobs of every component that has a ``prepare``."""
    jobs: list[Job] = []
    for c in components:
        prep = getattr(c, "prepare", None)
        if callable(prep):
            jobs.extend(prep(request))
    return jobs
