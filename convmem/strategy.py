"""The strategy protocol: how a call's context is built from the history.

A strategy is a small object with one job, ``build(request) -> ContextPlan``, which is pure: no
network, no disk. A strategy that needs work done first (a summariser call, an embedding query)
says so with ``prepare(request) -> list[Job]``; the conversation runs the jobs (sync or async, the
only code written twice) and hands the results back in ``request.results`` before ``build``.
A strategy that learns from committed turns (e.g. stores them for recall) implements
``observe(conversation_id, turns) -> list[Job]``, run after each successful call.

The default, :class:`KeepAll`, sends the whole history and raises
:class:`~convmem.errors.ContextOverflowError` with the numbers when it cannot fit.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any, Protocol, runtime_checkable

from .errors import BudgetError, ContextOverflowError
from .history import History, Summary, Turn
from .messages import Message, to_wire
from .plan import ContextPlan, DecisionSpan, Note, Section, SummaryCall, TurnDecision, as_note
from .tokens import TokenCounter


@dataclass(frozen=True)
class Budget:
    """Token limits for one call.

    Attributes:
        context_window: The model's window, in tokens.
        reply_reserve: Tokens kept free for the reply (``max_tokens`` when the caller set it).
        ratio: The learnt correction, reported/estimated prompt tokens (1.0 until learnt).
    """

    context_window: int
    reply_reserve: int
    ratio: float = 1.0

    @property
    def prompt_tokens(self) -> int:
        """Prompt tokens available, in real (server) tokens."""
        return self.context_window - self.reply_reserve

    def to_estimate(self, real_tokens: int) -> int:
        """Converts a limit in real tokens to convmem's estimate units."""
        return math.floor(real_tokens / self.ratio)

    @property
    def limit(self) -> int:
        """Prompt tokens available, in estimate units (what strategies compare against)."""
        return self.to_estimate(self.prompt_tokens)

    def corrected(self, estimate: int) -> int:
        """An estimate converted to real tokens."""
        return math.ceil(estimate * self.ratio)


@dataclass(frozen=True)
class ContextRequest:
    """Everything a strategy may look at to build one call's context. Read-only for strategies
    (frozen; a strategy of your own gets a read-only view of the history too).

    Attributes:
        history: The committed history.
        pending: The turn being made: the new user message and any tool rounds so far. Empty
            when the call continues the last committed turn (after tool results were added).
        budget: The limits.
        counter: Counts tokens; turn counts are cached on the turns.
        conversation_id: Identifies the conversation (for stores shared between conversations).
        model: The model the call goes to.
        tools: Tool schemas sent with the call (their tokens count against the budget).
        send_reasoning: Whether ``reasoning_content`` is sent back.
        results: Results of the jobs the strategy asked for in ``prepare``, by job key (an
            exception instance when the job failed).
    """

    history: History
    pending: list[Message]
    budget: Budget
    counter: TokenCounter
    conversation_id: str
    model: str
    tools: list[dict[str, Any]] | None = None
    send_reasoning: bool = False
    results: dict[str, Any] = field(default_factory=dict)

    # -- derived, computed on demand --------------------------------------------------------
    @property
    def turns(self) -> list[Turn]:
        return self.history.turn_list()

    @property
    def pending_id(self) -> int:
        """The id the pending turn will get when committed."""
        return self.history.next_turn_id

    def turn_tokens(self, turn: Turn) -> int:
        return turn.tokens(self.counter, send_reasoning=self.send_reasoning)

    def wire(self, turn: Turn) -> list[Message]:
        return turn.wire_messages(send_reasoning=self.send_reasoning)

    # Counted once per request: strategies read these in loops.
    @cached_property
    def pending_wire(self) -> list[Message]:
        return [to_wire(m, send_reasoning=self.send_reasoning) for m in self.pending]

    @cached_property
    def pending_tokens(self) -> int:
        return sum(self.counter.count_message(m) for m in self.pending_wire)

    @cached_property
    def system_tokens(self) -> int:
        return self.history.system_tokens(self.counter)

    @cached_property
    def tools_tokens(self) -> int:
        return self.counter.count_tools(self.tools) if self.tools else 0

    @cached_property
    def fixed_tokens(self) -> int:
        """What every context costs whatever the strategy: system, tools, reply priming."""
        return self.system_tokens + self.tools_tokens + self.counter.reply_priming


@dataclass(frozen=True)
class LLMJob:
    """A chat-completions call a strategy needs before it can build (e.g. a summary).

    Attributes:
        key: Where the result goes in ``request.results``.
        messages: The messages to send.
        model: The model; None means the conversation's model.
        client: An ``openai`` client; None means the conversation's client.
        params: Extra ``create`` arguments (``max_tokens``, ``temperature``, ...).
        timeout: Seconds before the call is abandoned (the strategy then falls back).
    """

    key: str
    messages: list[Message]
    model: str | None = None
    client: Any = None
    params: Mapping[str, Any] = field(default_factory=dict)
    timeout: float | None = None


@dataclass(frozen=True)
class LocalJob:
    """Local work (embedding, a vector-store query): run inline, or in a thread when async."""

    key: str
    fn: Callable[[], Any]


Job = LLMJob | LocalJob


@runtime_checkable
class Strategy(Protocol):
    """Builds the context of one call. Pure: no I/O."""

    def build(self, request: ContextRequest) -> ContextPlan:
        """Returns the plan for this call.

        Raises:
            ContextOverflowError: nothing this strategy can send fits the budget.
        """
        ...


@runtime_checkable
class PreparingStrategy(Protocol):
    """A strategy that needs jobs run before :meth:`Strategy.build`."""

    def prepare(self, request: ContextRequest) -> Sequence[Job]: ...


@runtime_checkable
class ObservingStrategy(Protocol):
    """A strategy that learns from committed turns (run after every successful call)."""

    def observe(self, conversation_id: str, turns: Sequence[Turn]) -> Sequence[Job]: ...


# -- assembling a plan ------------------------------------------------------------------------


def assemble_plan(
    request: ContextRequest,
    *,
    strategy: str,
    recent: Sequence[Turn],
    decisions: list[TurnDecision],
    summary: Summary | None = None,
    summary_message: Message | None = None,
    recalled_messages: Sequence[Message] = (),
    recalled_ids: Sequence[int] = (),
    notes: Sequence[Note | str] = (),
    summary_calls: Sequence[SummaryCall] = (),
    new_summary: Summary | None = None,
    pending: Sequence[Message] | None = None,
    pending_tokens: int | None = None,
    spans: Sequence[DecisionSpan] = (),
) -> ContextPlan:
    """Puts chosen pieces together into a :class:`ContextPlan` with its token counts.

    ``recent`` turns are sent verbatim in history order, followed by the pending turn (or
    ``pending``, a shortened form of it, when given). Sections are listed in the order that
    breaks the least between calls: system, summary, recent, recalled (sent right before the
    newest user message, see :attr:`ContextPlan.messages`), tools.
    """
    counter = request.counter
    sections: list[Section] = []
    sys = request.history.system
    if sys:
        sections.append(Section("system", [dict(sys)], request.system_tokens))
    if summary_message is not None:
        sections.append(
            Section(
                "summary",
                [summary_message],
                counter.count_message(summary_message),
                tuple(summary.covers) if summary else (),
            )
        )
    recent_msgs: list[Message] = []
    recent_tokens = 0
    for turn in recent:
        recent_msgs.extend(request.wire(turn))
        recent_tokens += request.turn_tokens(turn)
    if pending is None:
        recent_msgs.extend(request.pending_wire)
        recent_tokens += request.pending_tokens
    else:
        recent_msgs.extend(pending)
        recent_tokens += (
            pending_tokens
            if pending_tokens is not None
            else sum(counter.count_message(m) for m in pending)
        )
    ids = tuple(t.id for t in recent) + ((request.pending_id,) if request.pending else ())
    sections.append(Section("recent", recent_msgs, recent_tokens, ids))
    if recalled_messages:
        sections.append(
            Section(
                "recalled",
                list(recalled_messages),
                sum(counter.count_message(m) for m in recalled_messages),
                tuple(recalled_ids),
            )
        )
    if request.tools:
        sections.append(Section("tools", [], request.tools_tokens))
    estimated = sum(s.tokens for s in sections) + counter.reply_priming
    budget = request.budget
    return ContextPlan(
        strategy=strategy,
        sections=sections,
        turn_decisions=sorted(decisions, key=lambda d: d.turn_id),
        spans=list(spans),
        context_window=budget.context_window,
        reply_reserve=budget.reply_reserve,
        budget=budget.prompt_tokens,
        estimated_tokens=estimated,
        corrected_tokens=budget.corrected(estimated),
        notes=[as_note(n) for n in notes],
        summary_calls=list(summary_calls),
        new_summary=new_summary,
    )


def check_fixed_fits(request: ContextRequest, strategy: str) -> None:
    """Raises if even the system prompt, tools and new message cannot fit.

    Raises:
        BudgetError: the pinned system prompt (plus tools) alone exceeds the budget.
        ContextOverflowError: system, tools and the pending turn exceed the budget.
    """
    limit = request.budget.limit
    fixed = request.fixed_tokens
    if fixed > limit:
        raise BudgetError(
            "the system prompt and tool schemas alone do not fit the prompt budget",
            budget=request.budget.prompt_tokens,
            required=request.budget.corrected(fixed),
        )
    needed = fixed + request.pending_tokens
    if needed > limit:
        raise ContextOverflowError(
            f"{strategy}: the new message does not fit even with no history",
            needed=request.budget.corrected(needed),
            budget=request.budget.prompt_tokens,
            context_window=request.budget.context_window,
        )


class KeepAll:
    """Sends the whole history. Raises :class:`ContextOverflowError` when it does not fit.

    This is the default strategy: nothing is lost silently. Choose a strategy from
    :mod:`convmem.strategies` to keep long conversations within the window.
    """

    name = "KeepAll"

    def build(self, request: ContextRequest) -> ContextPlan:
        check_fixed_fits(request, self.name)
        turns = request.turns
        plan = assemble_plan(
            request,
            strategy=self.name,
            recent=turns,
            decisions=[],
            spans=[DecisionSpan("kept", "keep-all", [t.id for t in turns])],
        )
        if plan.estimated_tokens > request.budget.limit:
            raise ContextOverflowError(
                "KeepAll: the whole history does not fit; choose a strategy from "
                "convmem.strategies (e.g. Truncate) to send less",
                needed=plan.corrected_tokens,
                budget=request.budget.prompt_tokens,
                context_window=request.budget.context_window,
                plan=plan,
            )
        return plan
