"""The invariants every context must keep, checked by one validator.

The test suite runs :func:`check_plan` over every strategy and pipeline on random histories;
users can run it over their own strategies the same way.
"""

from __future__ import annotations

from typing import Any

from .plan import NOT_SUMMARISED, ContextPlan
from .strategy import ContextRequest


class PlanInvariantError(AssertionError):
    """A plan breaks an invariant (a bug in the strategy that built it)."""


def check_plan(plan: ContextPlan, request: ContextRequest, *, coverage: bool = False) -> None:
    """Checks the invariants of a context plan.

    - The system message, when there is one, comes first and only once as the pinned prompt.
    - Whole turns only: no ``tool`` message without the assistant ``tool_calls`` message that
      asked for it, and no assistant ``tool_calls`` without all its replies.
    - Within the budget: the estimate does not exceed the prompt budget.
    - The newest user message (the pending turn) is sent, and is the last user message.
    - Every history turn has exactly one decision; recent turns are sent verbatim.
    - A ``summarised`` turn is covered by the summary section the plan sends.
    - A turn ``dropped, not summarised`` comes with a ``not_summarised`` note giving the reason.
    - With ``coverage=True`` (a summary strategy in use): no holes, every turn is sent (recent
      or recalled), covered by the summary sent, or ``dropped, not summarised`` with its reason.

    Args:
        plan: The plan.
        request: The request it was built for.
        coverage: Also check coverage without holes.

    Raises:
        PlanInvariantError: naming the broken invariant.
    """
    msgs = plan.messages
    system = request.history.system
    if system is not None:
        _require(bool(msgs) and msgs[0] == system, "the system message must come first")
    _check_tool_pairs(msgs)
    _require(
        plan.estimated_tokens <= request.budget.limit,
        f"over budget: {plan.estimated_tokens} > {request.budget.limit}",
    )
    recount = sum(request.counter.count_message(m) for m in msgs) + request.counter.reply_priming
    if request.tools:
        recount += request.counter.count_tools(request.tools)
    _require(
        recount == plan.estimated_tokens,
        f"section token counts ({plan.estimated_tokens}) disagree with a recount ({recount})",
    )
    if request.pending:
        user_msgs = [m for m in msgs if m.get("role") == "user"]
        newest = request.pending_wire[0]
        _require(bool(user_msgs) and user_msgs[-1] == newest, "the newest user message is missing")
    decided = {d.turn_id for d in plan.decisions}
    all_ids = {t.id for t in request.turns}
    _require(decided == all_ids, f"turns without a decision: {sorted(all_ids - decided)[:10]}")
    recent = plan.section("recent")
    if recent is not None:
        by_id = {t.id: t for t in request.turns}
        expected: list[Any] = []
        for turn_id in recent.turn_ids:
            if turn_id in by_id:
                expected.extend(request.wire(by_id[turn_id]))
        sent_history = recent.messages[: len(expected)]
        _require(sent_history == expected, "recent turns must be sent verbatim and whole")
    _check_coverage(plan, coverage=coverage)


def _check_coverage(plan: ContextPlan, *, coverage: bool) -> None:
    summary = plan.section("summary")
    covered = set(summary.turn_ids) if summary is not None else set()
    stray = [i for i in plan.summarised if i not in covered]
    _require(
        not stray, f"turns {stray[:10]} marked summarised but the summary sent does not cover them"
    )
    lost = plan.not_summarised
    if lost:
        _require(
            bool(plan.notes_of("not_summarised")),
            f"turns {lost[:10]} dropped, not summarised, without a note giving the reason",
        )
    if coverage:
        holes = [
            d.turn_id
            for d in plan.decisions
            if d.action == "dropped" and d.reason != NOT_SUMMARISED
        ]
        _require(not holes, f"turns {holes[:10]} neither sent nor summarised")


def _check_tool_pairs(msgs: list[dict[str, Any]]) -> None:
    open_ids: set[str] = set()
    for i, m in enumerate(msgs):
        role = m.get("role")
        if role == "tool":
            call_id = m.get("tool_call_id")
            _require(call_id in open_ids, f"message {i}: tool reply {call_id!r} without its call")
            open_ids.discard(str(call_id))
        else:
            _require(
                not open_ids, f"message {i}: tool calls {sorted(open_ids)} left without replies"
            )
            if role == "assistant":
                open_ids.update(c["id"] for c in m.get("tool_calls") or ())
    # Calls still open at the very end belong to no turn the API would accept.
    _require(not open_ids, f"tool calls {sorted(open_ids)} left without replies")


def _require(ok: bool, what: str) -> None:
    if not ok:
        raise PlanInvariantError(what)
