"""One budget, several strategies: the composer behind :class:`Pipeline`.

Every built-in strategy is a *component* with one of three roles, and contributes to a shared
:class:`~convmem.strategies.composition.Composition`:

1. a summary component (``RollingSummary``) sets the summary section and marks the turns it
   covers as ``summarised``;
2. recall components (``VectorRecall``) reserve their share of what is left;
3. the recent-turn filler keeps recent turns verbatim (the default policy,
   :class:`~convmem.strategies.recent.RecentTurns`: the newest whole turns that fit, newest
   first, one contiguous run; ``Truncate`` is that policy with limits and, by default, block
   truncation for prompt caches; any object with ``role = "recent"`` and ``contribute``
   replaces it);
4. recall components fill their reserve with the best matching turns that are not already sent;
5. the filler tops up with older turns if the recall left room.

Whatever is left undecided is ``dropped`` (``dropped, not summarised`` when a summary component
was there to cover it). Each strategy's own ``build`` is a composition of itself and the default
filler, so a strategy alone and in a pipeline behave the same.

The request is sent in the order that breaks the least between calls (stable parts first):
system prompt, summary, recent turns, recalled section, new message (see
:attr:`~convmem.plan.ContextPlan.messages`).

The composition state and the component protocols live in
:mod:`convmem.strategies.composition`, the recent-turn filler and its cache policy in
:mod:`convmem.strategies.recent`; both are re-exported here.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from ..errors import BudgetError, ContextOverflowError, UsageError
from ..history import Summary, Turn
from ..messages import Message
from ..plan import ContextPlan, Note
from ..strategy import ContextRequest, Job, assemble_plan
from .composition import (
    Component,
    ComponentRole,
    Composition,
    RecallComponent,
    RecentComponent,
    SummaryComponent,
    role_of,
)
from .recent import DEFAULT_CACHE_POLICY, BlockTruncation, RecentTurns, fill_recent

__all__ = [
    "CUT_MARKER",
    "DEFAULT_CACHE_POLICY",
    "BlockTruncation",
    "Component",
    "ComponentRole",
    "Composition",
    "RecallComponent",
    "RecentComponent",
    "RecentTurns",
    "SummaryComponent",
    "compose",
    "fill_recent",
    "fit_pending",
    "merge_fillers",
    "prepare_all",
    "recent_horizon",
    "role_of",
    "sends_everything",
]

#: Marker put in place of the middle of a tool output that had to be cut to fit.
CUT_MARKER = "\n[... {n} characters cut by convmem to fit the context window ...]\n"


def _cut_text(text: str, keep_chars: int) -> str:
    if len(text) <= keep_chars:
        return text
    head = keep_chars * 2 // 3
    tail = keep_chars - head
    cut = len(text) - head - tail
    return text[:head] + CUT_MARKER.format(n=cut) + (text[-tail:] if tail else "")


def fit_pending(request: ContextRequest, limit: int) -> tuple[list[Message], int, list[Note]]:
    """The pending turn's wire messages, with long tool outputs cut (visibly) if they must be.

    Only ``tool`` message contents are ever cut, middle first, keeping head and tail; the user
    message and the assistant's tool calls are sent whole.

    Raises:
        ContextOverflowError: it does not fit even with every tool output cut down.
    """
    counter = request.counter
    room = limit - request.fixed_tokens
    notes: list[Note] = []
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
                Note(
                    "tool_output_cut",
                    {
                        "tool_call_id": msgs[i].get("tool_call_id"),
                        "before": len(original),
                        "after": len(best["content"]),
                    },
                )
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


@dataclass
class _Parts:
    summaries: list[SummaryComponent]
    recalls: list[RecallComponent]
    filler: RecentComponent


def _parts(components: Sequence[Component]) -> _Parts:
    summaries: list[SummaryComponent] = []
    recalls: list[RecallComponent] = []
    fillers: list[RecentComponent] = []
    for c in components:
        role = role_of(c)
        if role == "summary":
            summaries.append(c)  # type: ignore[arg-type]
        elif role == "recall":
            recalls.append(c)  # type: ignore[arg-type]
        elif role == "recent":
            fillers.append(c)  # type: ignore[arg-type]
        else:
            raise UsageError(f"{type(c).__name__} is not a pipeline component")
    return _Parts(summaries, recalls, merge_fillers(fillers))


def merge_fillers(fillers: Sequence[RecentComponent]) -> RecentComponent:
    """One recent-turn filler: the default, the one given, or the tightest of several
    :class:`RecentTurns` (e.g. two ``Truncate``).

    Raises:
        UsageError: several fillers of which one is not a :class:`RecentTurns`.
    """
    if not fillers:
        return RecentTurns()
    if len(fillers) == 1:
        return fillers[0]
    if not all(isinstance(f, RecentTurns) for f in fillers):
        names = ", ".join(type(f).__name__ for f in fillers)
        raise UsageError(f"a Pipeline takes one recent-turn strategy, got {names}")
    turns = [f.max_turns for f in fillers if isinstance(f, RecentTurns) and f.max_turns is not None]
    tokens = [f.max_tokens for f in fillers if f.max_tokens is not None]
    # One that turned the cache policy off wins (a sliding window was asked for).
    policies = [f.cache_policy for f in fillers if isinstance(f, RecentTurns)]
    policy = None if None in policies else policies[0]
    merged = RecentTurns(
        max_turns=min(turns) if turns else None,
        max_tokens=min(tokens) if tokens else None,
        cache_policy=policy,
    )
    first = fillers[0]
    assert isinstance(first, RecentTurns)
    merged.share_state(first)  # merged anew on every call: the cache anchors live on
    return merged


def _start(
    request: ContextRequest,
    components: Sequence[Component],
    parts: _Parts,
    *,
    name: str,
    cap_tokens: int | None,
) -> Composition:
    limit = request.budget.limit
    if cap_tokens is None:
        cap_tokens = parts.filler.max_tokens
    if cap_tokens is not None:
        limit = min(limit, request.budget.to_estimate(cap_tokens))
    if request.fixed_tokens > limit:
        raise BudgetError(
            f"{name}: the system prompt and tool schemas alone do not fit the prompt budget",
            budget=cap_tokens or request.budget.prompt_tokens,
            required=request.budget.corrected(request.fixed_tokens),
        )
    pending, pending_tokens, notes = fit_pending(request, limit)
    comp = Composition(
        request=request,
        limit=limit,
        pending=pending,
        pending_tokens=pending_tokens,
        components=components,
        summary_component=bool(parts.summaries),
    )
    comp.notes.extend(notes)
    return comp


def compose(
    request: ContextRequest,
    components: Sequence[Component],
    *,
    name: str,
    cap_tokens: int | None = None,
) -> ContextPlan:
    """Builds one plan from components sharing one budget (see the module docstring).

    Args:
        request: The request.
        components: Components, in any order; the default :class:`RecentTurns` fills recent
            turns when none does.
        name: The strategy name for the plan.
        cap_tokens: An overall cap on prompt tokens (real tokens), below the window's budget;
            default the recent-turn filler's ``max_tokens``.

    Raises:
        BudgetError: the system prompt and tools alone exceed the budget.
        ContextOverflowError: the new turn cannot fit, or a component overshot the budget.
        UsageError: a component is not one, or several recent-turn fillers clash.
    """
    parts = _parts(components)
    comp = _start(request, components, parts, name=name, cap_tokens=cap_tokens)
    for summary in parts.summaries:
        summary.contribute(comp)
    for rec in parts.recalls:
        comp.reserved[_key(rec)] = rec.reserve(comp)
    parts.filler.contribute(comp)
    for rec in parts.recalls:
        comp.reserved.pop(_key(rec), None)
        rec.contribute(comp)
    parts.filler.contribute(comp)  # top up with what recall left free

    recent_sorted = sorted(comp.recent, key=lambda t: t.id)
    spans = comp.spans()
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
        spans=spans,
    )
    if plan.estimated_tokens > comp.limit:  # a component overshot: a bug, but never send it
        raise ContextOverflowError(
            f"{name}: built context is over budget",
            needed=plan.corrected_tokens,
            budget=request.budget.prompt_tokens,
            context_window=request.budget.context_window,
            plan=plan,
        )
    return plan


def recent_horizon(
    request: ContextRequest,
    components: Sequence[Component],
    *,
    summary: Summary | None,
    summary_tokens: int,
    candidates: Sequence[Turn],
    ahead: int = 0,
) -> int:
    """The id of the oldest candidate turn the recent filler is sure to keep, given a summary.

    Runs the filler's first pass (recall reserves held back, no recall results read) with a
    summary section of ``summary_tokens`` covering ``summary``'s turns. ``candidates`` (the
    unsummarised turns, oldest first) older than the answer would be dropped: a summary
    component covers them first. Pure and
    deterministic, so ``prepare`` and ``build`` agree. ``ahead`` holds back room for a message
    not known yet (a summary made ahead of the next call).

    Raises:
        BudgetError, ContextOverflowError: as :func:`compose` (the new turn cannot fit).
    """
    parts = _parts(components)
    comp = _start(request, components, parts, name="horizon", cap_tokens=None)
    comp.trial = True  # a cache policy reads its state here but must not move it
    comp.summary = summary
    comp.summary_tokens = summary_tokens
    comp.reserved["ahead"] = ahead
    for rec in parts.recalls:
        comp.reserved[_key(rec)] = rec.reserve(comp)
    parts.filler.contribute(comp)
    # The oldest of the ``candidates`` (the turns the summary does not cover, oldest first) in
    # the unbroken run of them that the filler sends, ending at the newest. Only candidates are
    # walked: the covered prefix can be 100k turns long.
    horizon = request.pending_id
    for turn in reversed(candidates):
        if turn.id not in comp.decisions:
            break
        horizon = turn.id
    return horizon


def sends_everything(
    request: ContextRequest, components: Sequence[Component], tokens: int, turns: int
) -> bool:
    """True when the default recent-turn policy surely sends ``turns`` newest turns that, with
    everything else, cost ``tokens`` (estimate units): no recall reserve, no turn limit below
    ``turns``, and ``tokens`` within the prompt budget. A cheap test that spares summary
    components a trial composition on most calls."""
    parts = _parts(components)
    filler = parts.filler
    if parts.recalls or not isinstance(filler, RecentTurns):
        return False
    if type(filler).contribute is not RecentTurns.contribute:
        return False  # another policy: only a trial composition can tell
    if filler.max_turns is not None and filler.max_turns < turns:
        return False
    limit = request.budget.limit
    if filler.max_tokens is not None:
        limit = min(limit, request.budget.to_estimate(filler.max_tokens))
    return tokens <= limit


def _key(component: object) -> str:
    return f"{type(component).__name__}@{id(component)}"


def prepare_all(components: Sequence[object], request: ContextRequest) -> list[Job]:
    """The jobs of every component that has a ``prepare``."""
    jobs: list[Job] = []
    for c in components:
        # A summary component plans its coverage against the others (what recent turns keep).
        prep_in = getattr(c, "prepare_in", None)
        if callable(prep_in):
            jobs.extend(prep_in(request, components))
            continue
        prep = getattr(c, "prepare", None)
        if callable(prep):
            jobs.extend(prep(request))
    return jobs
