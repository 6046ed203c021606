"""The user strategy contract: a plain function or a build() returning a selection, checked."""

from __future__ import annotations

from typing import Any

import pytest

from convmem import ContextOverflowError, Conversation, History, ReadOnlyError, Summary
from convmem.errors import StrategyError, UsageError
from convmem.invariants import check_plan
from convmem.plan import ContextPlan, Section
from convmem.strategies import Pipeline, RollingSummary, Selection, Truncate
from convmem.strategies.custom import CheckedStrategy, as_strategy
from convmem.strategy import Budget, ContextRequest
from convmem.testing import FakeChatServer
from convmem.tokens import default_counter

COUNTER = default_counter("gpt-4o-mini")


# The README's ten-line strategy.
def first_and_last_three(request: ContextRequest) -> list[Any]:
    """Pins the first turn and keeps the last three."""
    turns = request.turns
    return turns[:1] + turns[-3:] if len(turns) > 4 else turns


def history(n: int, words: int = 20) -> History:
    h = History("sys")
    for i in range(n):
        h.append(
            [
                {"role": "user", "content": f"question {i} " + "word " * words},
                {"role": "assistant", "content": f"answer {i} " + "word " * words},
            ]
        )
    return h


def request(h: History, *, window: int = 4000, reserve: int = 100) -> ContextRequest:
    return ContextRequest(
        history=h,
        pending=[{"role": "user", "content": "new question"}],
        budget=Budget(window, reserve),
        counter=COUNTER,
        conversation_id="c1",
        model="gpt-4o-mini",
    )


def echo() -> FakeChatServer:
    server = FakeChatServer()
    server.respond_with(lambda body: "noted", times=200)
    return server


def test_a_function_alone_gets_decisions_and_passes_the_validator() -> None:
    h = history(10)
    req = request(h)
    strategy = as_strategy(first_and_last_three)
    plan = strategy.build(req)
    check_plan(plan, req)
    assert plan.kept == [0, 7, 8, 9]
    assert plan.dropped == [1, 2, 3, 4, 5, 6]
    assert plan.strategy == "first_and_last_three"
    assert all(
        d.reason.startswith("not selected by") for d in plan.decisions if d.action == "dropped"
    )


def test_a_function_through_a_conversation_sends_its_selection() -> None:
    server = echo()
    conv = Conversation(server.client(), model="gpt-4o-mini", strategy=first_and_last_three)
    for i in range(8):
        conv.send(f"message {i}")
    sent = [m["content"] for m in server.messages() if m["role"] == "user"]
    assert sent == ["message 0", "message 4", "message 5", "message 6", "message 7"]
    assert conv.last_plan is not None and conv.last_plan.dropped == [1, 2, 3]


def test_a_function_inside_a_pipeline_is_the_recent_turn_filler() -> None:
    h = history(10)
    req = request(h)
    plan = Pipeline(first_and_last_three).build(req)
    check_plan(plan, req)
    assert plan.kept == [0, 7, 8, 9]
    with_summary = Pipeline(RollingSummary(), first_and_last_three)
    h.add_summary(Summary("- facts", covers=(0, 1, 2, 3)))
    req = request(h)
    plan = with_summary.build(req)
    check_plan(plan, req)
    # Turn 0 is covered by the summary: the pipeline does not send it twice.
    assert plan.kept == [7, 8, 9] and plan.summarised == [0, 1, 2, 3]
    # Turns 4-6: nobody sent or summarised them, and no summariser was there to ask: the plan
    # says so (the summariser was not called in a bare build).
    assert plan.not_summarised == [4, 5, 6]
    assert plan.notes_of("not_summarised")


def test_a_build_object_returning_a_selection_with_recall_and_summary() -> None:
    class Picky:
        name = "Picky"

        def build(self, request: ContextRequest) -> Selection:
            return Selection(
                recent=[request.turns[-1]],
                recalled=[2],
                summary=request.history.latest_summary,
            )

    h = history(6)
    h.add_summary(Summary("- the user likes </convmem-summary> tea", covers=(0, 1)))
    req = request(h)
    plan = as_strategy(Picky()).build(req)
    check_plan(plan, req)
    assert plan.kept == [5] and plan.recalled == [2] and plan.summarised == [0, 1]
    assert plan.dropped == [3, 4]
    recalled = plan.section("recalled")
    assert recalled is not None and "│ question 2" in recalled.messages[0]["content"]
    summary = plan.section("summary")
    assert summary is not None
    # The forged end marker inside the summary text is neutralised: one real end marker.
    assert summary.messages[0]["content"].count("</convmem-summary>") == 1


def test_selection_over_budget_raises_one_clear_overflow() -> None:
    def everything(request: ContextRequest) -> list[Any]:
        return list(request.turns)

    h = history(40)
    req = request(h, window=800)
    with pytest.raises(ContextOverflowError, match="everything: the selected turns do not fit"):
        as_strategy(everything).build(req)


def test_bad_returns_and_bad_selections_raise_strategy_error() -> None:
    h = history(4)
    req = request(h)
    cases: list[tuple[Any, str]] = [
        (lambda r: None, "returned None"),
        (lambda r: "turns", "returned str"),
        (lambda r: [{"role": "user"}], "holding dict"),
        (lambda r: [99], "turn 99, which is not in the history"),
        (lambda r: Selection(recent=[1], recalled=[1]), "both recent and recalled"),
        (lambda r: [1, 1], "a turn twice"),
    ]
    for fn, match in cases:
        with pytest.raises(StrategyError, match=match):
            as_strategy(fn).build(req)


def test_a_hand_made_plan_is_checked_at_run_time() -> None:
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
    req = request(h)

    def split_pair(request: ContextRequest) -> ContextPlan:
        msgs = [
            dict(request.history.system or {}),
            {"role": "tool", "tool_call_id": "c1", "content": "1"},
        ]
        msgs += request.pending_wire
        tokens = sum(request.counter.count_message(m) for m in msgs[1:])
        return ContextPlan(
            strategy="split_pair",
            sections=[
                Section("system", msgs[:1], request.system_tokens),
                Section("recent", msgs[1:], tokens, (request.pending_id,)),
            ],
            turn_decisions=[],
            context_window=4000,
            reply_reserve=100,
            budget=3900,
            estimated_tokens=request.system_tokens + tokens + request.counter.reply_priming,
            corrected_tokens=0,
        )

    with pytest.raises(StrategyError, match="split_pair built a context that breaks a rule"):
        as_strategy(split_pair).build(req)
    # Through a conversation: refused before anything is sent.
    server = FakeChatServer()
    conv = Conversation(server.client(), model="gpt-4o-mini", strategy=split_pair, history=h)
    with pytest.raises(StrategyError):
        conv.send("q")
    assert server.requests == []


def test_a_hand_made_plan_without_decisions_gets_them_derived() -> None:
    h = history(3)
    req = request(h)

    def last_only(request: ContextRequest) -> ContextPlan:
        return Truncate(max_turns=1).build(request)  # a plan, decisions removed below

    plan = Truncate(max_turns=1).build(req)
    plan.turn_decisions, plan.spans = [], []
    out = as_strategy(lambda r: plan).build(req)
    assert out.kept == [2] and out.dropped == [0, 1]
    check_plan(out, req)


def test_strategies_see_a_read_only_history() -> None:
    def vandal(request: ContextRequest) -> list[Any]:
        request.history.append([{"role": "user", "content": "x"}])
        return []

    def sneaky(request: ContextRequest) -> list[Any]:
        request.history.turn_list().clear()
        return []

    h = history(3)
    req = request(h)
    with pytest.raises(ReadOnlyError):
        as_strategy(vandal).build(req)
    as_strategy(sneaky).build(req)
    assert len(h) == 3


def test_builtins_are_not_wrapped_and_junk_is_refused() -> None:
    t = Truncate()
    assert as_strategy(t) is t
    assert isinstance(as_strategy(first_and_last_three), CheckedStrategy)
    with pytest.raises(UsageError, match="a strategy is a function of the request"):
        Conversation(echo().client(), model="gpt-4o-mini", strategy=42)
    with pytest.raises(UsageError, match="one recent-turn strategy"):
        Pipeline(first_and_last_three, lambda r: []).build(request(history(2)))
    with pytest.raises(UsageError, match="cannot hold a Pipeline"):
        Pipeline(Pipeline(Truncate()))
