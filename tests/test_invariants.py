"""Property-based tests: every strategy keeps the invariants on random histories.

Histories mix text, parallel tool calls, images and reasoning content. One validator
(:func:`convmem.invariants.check_plan`) is run over every strategy and pipeline.
"""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from convmem import ContextOverflowError, History, JobResult, KeepAll, Summary
from convmem.invariants import PlanInvariantError, check_plan
from convmem.plan import ContextPlan
from convmem.strategies import Pipeline, RollingSummary, Truncate
from convmem.strategies.recall import VectorRecall
from convmem.strategies.summary import SUMMARY_JOB
from convmem.strategy import Budget, ContextRequest
from convmem.tokens import default_counter

COUNTER = default_counter("gpt-4o-mini")
WORDS = ["alpha", "beta", "gamma", "delta", "tool", "result", "paris", "42", "x" * 30, "émoji 🙂"]

text = st.lists(st.sampled_from(WORDS), min_size=1, max_size=40).map(" ".join)


@st.composite
def turn_messages(draw: Any, tid: int) -> list[dict[str, Any]]:
    kind = draw(st.sampled_from(["text", "tools", "image", "reasoning"]))
    if kind == "image":
        user: dict[str, Any] = {
            "role": "user",
            "content": [
                {"type": "text", "text": draw(text)},
                {
                    "type": "image_url",
                    "image_url": {
                        "url": "https://x/y.png",
                        "detail": draw(st.sampled_from(["low", "high", "auto"])),
                    },
                },
            ],
        }
    else:
        user = {"role": "user", "content": draw(text)}
    msgs = [user]
    if kind == "tools":
        n = draw(st.integers(1, 3))
        calls = [
            {
                "id": f"c{tid}_{j}",
                "type": "function",
                "function": {"name": "lookup", "arguments": f'{{"q": "{j}"}}'},
            }
            for j in range(n)
        ]
        msgs.append({"role": "assistant", "content": None, "tool_calls": calls})
        for c in calls:
            msgs.append({"role": "tool", "tool_call_id": c["id"], "content": draw(text)})
    reply: dict[str, Any] = {"role": "assistant", "content": draw(text)}
    if kind == "reasoning":
        reply["reasoning_content"] = draw(text)
    msgs.append(reply)
    return msgs


@st.composite
def histories(draw: Any) -> History:
    h = History(draw(st.sampled_from([None, "You are terse.", "A longer system prompt " * 5])))
    n = draw(st.integers(0, 40))
    for i in range(n):
        h.append(draw(turn_messages(i)))
    if n > 3 and draw(st.booleans()):
        upto = draw(st.integers(0, n - 2))
        if draw(st.booleans()):
            covers = tuple(range(upto + 1))
        else:  # a summary that does not cover a prefix (made by another strategy, imported)
            covers = tuple(sorted(draw(st.sets(st.integers(0, n - 1), min_size=1, max_size=n))))
        h.add_summary(Summary("- fact one\n- fact two", covers=covers))
    return h


@st.composite
def requests(draw: Any) -> ContextRequest:
    h = draw(histories())
    window = draw(st.integers(400, 6000))
    reserve = draw(st.integers(50, 300))
    pending = [{"role": "user", "content": draw(text)}]
    tools = None
    if draw(st.booleans()):
        tools = [
            {
                "type": "function",
                "function": {
                    "name": "lookup",
                    "parameters": {"type": "object", "properties": {"q": {"type": "string"}}},
                },
            }
        ]
    req = ContextRequest(
        history=h,
        pending=pending,
        budget=Budget(window, reserve, ratio=draw(st.sampled_from([1.0, 0.8, 1.3]))),
        counter=COUNTER,
        conversation_id="prop",
        model="gpt-4o-mini",
        tools=tools,
        send_reasoning=draw(st.booleans()),
    )
    # Recall results as the store would return them: random turns, random scores.
    if h.turns:
        ids = draw(st.lists(st.sampled_from([t.id for t in h.turns]), max_size=8, unique=True))
        hits = [_Hit(i, draw(st.floats(0, 1))) for i in ids]
        req.results[RECALL.job_key] = JobResult(value=sorted(hits, key=lambda x: -x.score))
    # What the summariser did, when it was asked: nothing yet, a reply, a failure, a reply far
    # over max_summary_tokens (a server that ignores max_tokens).
    outcome = draw(st.sampled_from(["none", "ok", "failed", "overlong", "long"]))
    if outcome == "ok":
        req.results[SUMMARY_JOB] = JobResult(value=_completion("- a fact\n- another"), model="m")
    elif outcome == "failed":
        req.results[SUMMARY_JOB] = JobResult(error=TimeoutError("summariser timed out"), model="m")
    elif outcome == "overlong":
        req.results[SUMMARY_JOB] = JobResult(value=_completion("- fact " * 3000), model="m")
    elif outcome == "long":
        lines = "\n".join(f"- fact number {i} is here" for i in range(60))
        req.results[SUMMARY_JOB] = JobResult(value=_completion(lines), model="m")
    return req


def _completion(text: str) -> Any:
    message = SimpleNamespace(content=text)
    usage = SimpleNamespace(prompt_tokens=100, completion_tokens=50)
    return SimpleNamespace(choices=[SimpleNamespace(message=message)], usage=usage)


class _Hit:
    def __init__(self, turn_id: int, score: float) -> None:
        self.turn_id = turn_id
        self.score = score


RECALL = VectorRecall(k=3)  # the store is never touched: results are given


def strategies_under_test() -> list[Any]:
    recall = RECALL
    return [
        KeepAll(),
        Truncate(),
        Truncate(max_turns=3),
        Truncate(max_tokens=700),
        RollingSummary(max_summary_tokens=64),
        recall,
        Pipeline(RollingSummary(max_summary_tokens=64), Truncate(max_turns=5)),
        Pipeline(recall, Truncate(max_tokens=900)),
        Pipeline(RollingSummary(max_summary_tokens=64), recall, Truncate()),
    ]


def _has_summary(strategy: Any) -> bool:
    parts = getattr(strategy, "strategies", (strategy,))
    return any(isinstance(p, RollingSummary) for p in parts)


def _build(strategy: Any, req: ContextRequest) -> ContextPlan | None:
    try:
        return strategy.build(req)  # type: ignore[no-any-return]
    except ContextOverflowError:
        return None  # allowed: nothing fits; it must never send an invalid request instead


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(req=requests())
def test_every_strategy_keeps_the_invariants(req: ContextRequest) -> None:
    from convmem.errors import BudgetError

    for strategy in strategies_under_test():
        try:
            plan = _build(strategy, req)
        except BudgetError:
            assert req.fixed_tokens > req.budget.limit or isinstance(strategy, (Truncate, Pipeline))
            continue
        if plan is None:
            assert not isinstance(strategy, (Truncate, Pipeline, RollingSummary, VectorRecall)) or (
                req.fixed_tokens + req.pending_tokens > req.budget.limit
            ), f"{strategy!r} raised overflow although the new message fits"
            continue
        summarising = _has_summary(strategy)
        check_plan(plan, req, coverage=summarising)
        if not summarising:
            continue
        # Coverage without holes: a turn is dropped unsummarised only for a stated reason, and
        # never because of a summariser that succeeded with a usable reply.
        if plan.not_summarised:
            (note,) = plan.notes_of("not_summarised")
            reason = note.data["reason"]
            assert any(
                why in reason
                for why in ("failed", "not called", "does not fit", "cannot fit", "rejected")
            ), reason
        if plan.new_summary is not None:
            cap = strategy_summary(strategy).summary_cap(req)
            message = strategy_summary(strategy).summary_message(plan.new_summary)
            assert req.counter.count_message(message) <= cap  # a stored summary always fits


def strategy_summary(strategy: Any) -> RollingSummary:
    parts = getattr(strategy, "strategies", (strategy,))
    return next(p for p in parts if isinstance(p, RollingSummary))


@settings(max_examples=60, deadline=None)
@given(req=requests())
def test_truncation_is_maximal(req: ContextRequest) -> None:
    """Truncate keeps the longest run of newest turns that fits: one more would not."""
    plan = _build(Truncate(cache_policy=None), req)
    if plan is None or not plan.dropped:
        return
    oldest_kept = min(plan.kept) if plan.kept else None
    turns = req.turns
    idx = (
        len(turns) - 1
        if oldest_kept is None
        else next(i for i, t in enumerate(turns) if t.id == oldest_kept) - 1
    )
    if idx >= 0:
        assert plan.estimated_tokens + req.turn_tokens(turns[idx]) > req.budget.limit


def test_validator_catches_a_broken_plan() -> None:
    h = History("sys")
    call = {"id": "c1", "type": "function", "function": {"name": "f", "arguments": "{}"}}
    h.append(
        [
            {"role": "user", "content": "a"},
            {"role": "assistant", "content": None, "tool_calls": [call]},
            {"role": "tool", "tool_call_id": "c1", "content": "1"},
            {"role": "assistant", "content": "b"},
        ]
    )
    req = ContextRequest(
        history=h,
        pending=[{"role": "user", "content": "q"}],
        budget=Budget(4000, 100),
        counter=COUNTER,
        conversation_id="x",
        model="m",
    )
    plan = Truncate().build(req)
    check_plan(plan, req)
    recent = plan.section("recent")
    assert recent is not None
    del recent.messages[1]  # drop the assistant tool_calls message: the tool reply dangles
    with pytest.raises(PlanInvariantError, match="without its call"):
        check_plan(plan, req)
