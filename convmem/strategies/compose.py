"""One budget, several strategies: the composer behind :class:`Pipeline`.

Every built-in strategy is a *component* with one of three roles, and contributes to a shared
:class:`Composition`:

1. a summary component (``RollingSummary``) sets the summary section and marks the turns it
   covers as ``summarised``;
2. recall components (``VectorRecall``) reserve their share of what is left;
3. the recent-turn filler keeps recent turns verbatim (the default policy,
   :class:`RecentTurns`: the newest whole turns that fit, newest first, one contiguous run;
   ``Truncate`` is that policy with limits; any object with ``role = "recent"`` and
   ``contribute`` replaces it);
4. recall components fill their reserve with the best matching turns that are not already sent;
5. the filler tops up with older turns if the recall left room.

Whatever is left undecided is ``dropped`` (``dropped, not summarised`` when a summary component
was there to cover it). Each strategy's own ``build`` is a composition of itself and the default
filler, so a strategy alone and in a pipeline behave the same.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol, runtime_checkable

from ..errors import BudgetError, ContextOverflowError, UsageError
from ..history import Summary, Turn
from ..messages import Message
from ..plan import (
    NOT_SUMMARISED,
    Action,
    ContextPlan,
    DecisionSpan,
    Note,
    SummaryCall,
    TurnDecision,
)
from ..strategy import ContextRequest, Job, assemble_plan

#: The three places a component can take in a composition.
ComponentRole = Literal["summary", "recall", "recent"]

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
        notes: Structured notes (:class:`~convmem.plan.Note`) for the plan.
        components: The components taking part (read by components that plan ahead).
        summary_component: True when a summary component takes part: a turn it does not cover
            and nobody sends is then ``dropped, not summarised``.
        not_summarised_reason: Why the summary could not cover every dropped turn (set by the
            summary component when its summariser failed, was not called, or could not fit).
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

    def add_recent(self, turn: Turn, reason: str = "recent") -> None:
        """Sends ``turn`` verbatim among the recent turns (the caller checked it fits)."""
        self.recent.append(turn)
        self.recent_tokens += self.request.turn_tokens(turn)
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


def fill_recent(
    comp: Composition, *, max_turns: int | None = None, floor: int | None = None
) -> None:
    """The default recent-turn policy: adds the newest whole turns that fit, one contiguous run.

    Continues below the turns already kept, steps over turns already in the recalled section,
    and stops at the first turn that is summarised, over ``max_turns``, over the room left, or
    older than ``floor`` (a turn id).
    """
    history = comp.request.history
    turns = history.turn_list()
    start = len(turns) - 1
    if comp.recent:
        # Continue below the oldest turn already kept (turns are sorted by id).
        start = history.index_after(comp.recent[-1].id) - 2
    for i in range(start, -1, -1):
        turn = turns[i]
        if comp.is_decided(turn.id):
            decision = comp.decisions.get(turn.id)
            if decision is not None and decision.action == "recalled":
                continue  # already sent by recall: room it left can still take older turns
            break  # summarised: the run of recent turns ends here
        if floor is not None and turn.id < floor:
            break
        if max_turns is not None and len(comp.recent) >= max_turns:
            break
        if comp.request.turn_tokens(turn) > comp.remaining:
            break
        comp.add_recent(turn)


@dataclass(frozen=True)
class BlockTruncation:
    """Prompt-cache policy: drop old turns in blocks and keep the first kept turn fixed.

    A sliding window drops one old turn per call once the budget is hit, so the messages after
    the system prompt change on every call and a provider's prompt cache (OpenAI, DeepSeek,
    vLLM, llama.cpp) never matches past them. With this policy, when the newest turns no longer
    all fit, old turns are dropped down to a low-water mark (``low_water`` of the room for
    recent turns, and of ``max_turns``); on later calls the first kept turn stays the same, and
    only new turns are added after it, until the budget is hit again.

    Applied only when the recent turns are the whole strategy (``Truncate`` alone): in a
    pipeline the summary covers what the recent turns leave out and plans against the newest
    turns that fit, and the recalled section (sent before the recent turns) changes with every
    new message.

    The state (the first kept turn per ``conversation_id``) lives in the strategy object and is
    not persisted: after a restart the next call recomputes it.

    Args:
        low_water: Share of the recent-turn room (and of ``max_turns``) to fill after a drop,
            between 0 and 1 (exclusive of 0).

    Raises:
        UsageError: ``low_water`` is not in (0, 1].
    """

    low_water: float = 0.65

    def __post_init__(self) -> None:
        lw = self.low_water
        if isinstance(lw, bool) or not isinstance(lw, int | float) or not 0 < lw <= 1:
            raise UsageError(f"BlockTruncation(low_water=...) must be in (0, 1], got {lw!r}")


#: The cache policy :class:`~convmem.strategies.Truncate` uses unless told otherwise.
DEFAULT_CACHE_POLICY = BlockTruncation()


class RecentTurns:
    """The default recent-turn filler: the newest whole turns that fit (see :func:`fill_recent`).

    Args:
        max_turns: Keep at most this many past turns.
        max_tokens: Cap on the whole prompt, in tokens.
        cache_policy: :class:`BlockTruncation` to drop old turns in blocks and keep the prefix
            stable for prompt caches; ``None`` for a sliding window (one turn per call).
    """

    role: Literal["recent"] = "recent"

    def __init__(
        self,
        max_turns: int | None = None,
        max_tokens: int | None = None,
        cache_policy: BlockTruncation | None = None,
    ) -> None:
        if cache_policy is not None and not isinstance(cache_policy, BlockTruncation):
            raise UsageError(
                f"cache_policy must be a BlockTruncation or None, got {cache_policy!r}"
            )
        self.max_turns = max_turns
        self.max_tokens = max_tokens
        self.cache_policy = cache_policy
        self._anchors: dict[str, int] = {}

    def contribute(self, comp: Composition) -> None:
        # Only for recent turns alone: a summary plans its coverage against the sliding window
        # (it moves in blocks itself), and the recalled section, sent before the recent turns,
        # changes with every new message anyway.
        alone = all(role_of(c) == "recent" for c in comp.components)
        policy = self.cache_policy if alone else None
        if policy is not None and not comp.recent_floor_set:
            comp.recent_floor = self._choose_floor(comp, policy)
            comp.recent_floor_set = True
        fill_recent(comp, max_turns=self.max_turns, floor=comp.recent_floor)

    def _choose_floor(self, comp: Composition, policy: BlockTruncation) -> int | None:
        """The id of the oldest turn to keep this call (``None``: no floor)."""
        request = comp.request
        key = request.conversation_id
        turns = request.history.turn_list()
        candidates: list[Turn] = []  # newest first, the undecided contiguous run
        for turn in reversed(turns):
            if comp.is_decided(turn.id):
                break
            candidates.append(turn)
        if not candidates:
            return None
        room = comp.remaining
        fits: list[Turn] = []  # what a sliding window keeps
        used = 0
        for turn in candidates:
            cost = request.turn_tokens(turn)
            if self.max_turns is not None and len(fits) >= self.max_turns:
                break
            if used + cost > room:
                break
            fits.append(turn)
            used += cost
        anchor = self._anchors.get(key)
        if len(fits) == len(candidates):
            # Everything fits: keep the anchor (if any) so the prefix stays as it was.
            if anchor is not None and anchor > candidates[-1].id:
                self._note_kept(comp, anchor, candidates)
                return anchor
            return None
        oldest_fit = fits[-1].id if fits else None
        if anchor is not None and oldest_fit is not None and anchor >= oldest_fit:
            self._note_kept(comp, anchor, candidates)
            return anchor
        # The budget is hit: drop down to the low-water mark.
        low_tokens = int(room * policy.low_water)
        low_turns = max(1, int(self.max_turns * policy.low_water)) if self.max_turns else None
        kept: list[Turn] = []
        used = 0
        for turn in fits:
            cost = request.turn_tokens(turn)
            if low_turns is not None and len(kept) >= low_turns:
                break
            if kept and used + cost > low_tokens:
                break
            kept.append(turn)
            used += cost
        if not kept:
            self._anchors.pop(key, None)
            return None
        new_anchor = kept[-1].id
        self._anchors[key] = new_anchor
        comp.note(
            "cache_block_dropped",
            kept_from=new_anchor,
            kept_turns=len(kept),
            dropped_turns=len(candidates) - len(kept),
            low_water=policy.low_water,
        )
        return new_anchor

    @staticmethod
    def _note_kept(comp: Composition, anchor: int, candidates: list[Turn]) -> None:
        comp.note(
            "cache_prefix_kept",
            kept_from=anchor,
            kept_turns=sum(1 for t in candidates if t.id >= anchor),
        )


def role_of(component: object) -> ComponentRole | None:
    """The component role of ``component``, or None when it is not a component."""
    role = getattr(component, "role", None)
    if role in ("summary", "recall", "recent") and callable(getattr(component, "contribute", None)):
        return role  # type: ignore[no-any-return]
    return None


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
    return RecentTurns(
        max_turns=min(turns) if turns else None, max_tokens=min(tokens) if tokens else None
    )


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
