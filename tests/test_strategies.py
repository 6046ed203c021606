"""Truncate, RollingSummary and Pipeline, directly and through a Conversation."""

from __future__ import annotations

import asyncio
import dataclasses
import itertools
from typing import Any

import pytest

from convmem import (
    AsyncConversation,
    BudgetError,
    ContextOverflowError,
    Conversation,
    History,
    UsageError,
)
from convmem.invariants import check_plan
from convmem.strategies import Pipeline, RollingSummary, Truncate, default_should_summarize
from convmem.strategies.compose import CUT_MARKER
from convmem.strategy import Budget, ContextRequest
from convmem.testing import FakeChatServer
from convmem.tokens import default_counter

COUNTER = default_counter("gpt-4o-mini")


def history(n: int, words: int = 20, system: str = "sys") -> History:
    h = History(system)
    for i in range(n):
        h.append(
            [
                {"role": "user", "content": f"question {i} " + "word " * words},
                {"role": "assistant", "content": f"answer {i} " + "word " * words},
            ]
        )
    return h


def request(
    h: History, text: str = "new question", *, window: int = 1000, reserve: int = 100
) -> ContextRequest:
    return ContextRequest(
        history=h,
        pending=[{"role": "user", "content": text}] if text else [],
        budget=Budget(window, reserve),
        counter=COUNTER,
        conversation_id="c1",
        model="gpt-4o-mini",
    )


def test_truncate_keeps_newest_whole_turns_within_budget() -> None:
    h = history(50)
    req = request(h)
    plan = Truncate(cache_policy=None).build(req)
    check_plan(plan, req)
    kept = plan.kept
    assert kept == list(range(kept[0], 50))  # a contiguous run of the newest turns
    assert 0 < len(kept) < 50
    assert plan.dropped == list(range(0, kept[0]))
    assert plan.estimated_tokens <= req.budget.limit
    # One more turn would not have fitted.
    extra = req.turn_tokens(h.turns[kept[0] - 1])
    assert plan.estimated_tokens + extra > req.budget.limit


def test_truncate_max_turns_and_max_tokens() -> None:
    h = history(50)
    req = request(h, window=100_000, reserve=1000)
    plan = Truncate(max_turns=3, cache_policy=None).build(req)
    assert plan.kept == [47, 48, 49]
    plan = Truncate(max_tokens=300, cache_policy=None).build(req)
    check_plan(plan, req)
    assert plan.corrected_tokens <= 300
    assert len(plan.kept) >= 1


def test_truncate_argument_errors() -> None:
    with pytest.raises(UsageError):
        Truncate(max_turns=-1)
    with pytest.raises(UsageError):
        Truncate(max_tokens=0)
    with pytest.raises(BudgetError):
        Truncate(max_tokens=5).build(request(history(1, system="a long system prompt " * 10)))


def test_truncate_cuts_a_huge_tool_output_in_the_current_turn_visibly() -> None:
    h = history(5)
    req = request(h, window=1000, reserve=100)
    call = {"id": "c1", "type": "function", "function": {"name": "read_file", "arguments": "{}"}}
    req = dataclasses.replace(
        req,
        pending=[
            {"role": "user", "content": "read the file"},
            {"role": "assistant", "content": None, "tool_calls": [call]},
            {"role": "tool", "tool_call_id": "c1", "content": "line of the file\n" * 2000},
        ],
    )
    plan = Truncate().build(req)
    check_plan(plan, req)
    tool_msg = plan.messages[-1]
    assert tool_msg["role"] == "tool"
    assert "characters cut by convmem" in tool_msg["content"]
    assert tool_msg["content"].startswith("line of the file")
    assert any("cut from" in n for n in plan.notes)
    assert CUT_MARKER.split("{n}")[0] in tool_msg["content"]


def test_truncate_huge_user_message_is_a_clear_error() -> None:
    with pytest.raises(ContextOverflowError, match="does not fit even with no history"):
        Truncate().build(request(history(2), "word " * 5000))


def test_truncate_in_conversation_sends_less_and_keeps_history() -> None:
    server = FakeChatServer()
    server.respond_with(lambda body: "ok " * 20, times=40)
    conv = Conversation(
        server.client(),
        model="m",
        context_window=600,
        reply_reserve=100,
        system="sys",
        strategy=Truncate(),
    )
    for i in range(40):
        conv.send(f"message {i} " + "blah " * 15)
    assert len(conv.turns) == 40
    assert len(conv.messages) == 81
    last = server.requests[-1]["messages"]
    assert last[0] == {"role": "system", "content": "sys"}
    assert last[-1]["content"].startswith("message 39")
    assert len(last) < 81
    assert conv.last_plan is not None and conv.last_plan.dropped


# -- RollingSummary -------------------------------------------------------------------------


def summary_server(n: int = 200) -> FakeChatServer:
    """Answers chat calls with 'ok'; summariser calls (recognised by their prompt) with facts."""
    server = FakeChatServer()

    def reply(body: dict[str, Any]) -> Any:
        first = body["messages"][0]["content"]
        if "keep the memory of a conversation" in first:
            turns = body["messages"][1]["content"]
            return {
                "content": f"- facts from {turns.count('User:')} user messages",
                "usage": {"prompt_tokens": 300, "completion_tokens": 12, "total_tokens": 312},
            }
        return "ok " * 10

    server.respond_with(reply, times=n)
    return server


def summary_conv(server: FakeChatServer, **kw: Any) -> Conversation:
    """A conversation with a 1,000-token window whose summary fires at 700 tokens."""
    kw.setdefault("strategy", RollingSummary())
    return Conversation(server.client(), model="m", context_window=1000, reply_reserve=100, **kw)


def test_default_should_summarize() -> None:
    assert default_should_summarize(700, 1000, 0.7)
    assert not default_should_summarize(699, 1000, 0.7)


def test_rolling_summary_fires_at_trigger_and_folds_incrementally() -> None:
    server = summary_server()
    conv = summary_conv(server, system="sys")
    fired_at: list[int] = []
    for i in range(30):
        conv.send(f"message {i} " + "blah " * 20)
        plan = conv.last_plan
        assert plan is not None
        if plan.summary_calls:
            fired_at.append(i)
            assert plan.summary_calls[0].ok
            assert plan.new_summary is not None
            # The request that fired it carried system + summary + recent turns.
            sent = server.requests[-1]["messages"]
            assert sent[0] == {"role": "system", "content": "sys"}
            assert sent[1]["content"].startswith("Summary of the earlier conversation")
    assert len(fired_at) >= 2
    summaries = conv.history.summaries
    assert len(summaries) == len(fired_at)
    # Incremental: each summary covers everything the previous one did, and more.
    for prev, nxt in itertools.pairwise(summaries):
        assert set(prev.covers) < set(nxt.covers)
    # The second summariser call was given the previous summary to fold in.
    summariser_requests = [
        r for r in server.requests if "keep the memory" in r["messages"][0]["content"]
    ]
    assert summaries[0].text in summariser_requests[1]["messages"][1]["content"]
    assert conv.usage.summary_calls == len(fired_at)
    assert conv.usage.summary_prompt_tokens == 300 * len(fired_at)
    # History untouched: every turn is still there verbatim.
    assert len(conv.messages) == 61


def test_rolling_summary_context_stays_below_window() -> None:
    server = summary_server()
    conv = summary_conv(server)
    for i in range(40):
        conv.send(f"message {i} " + "blah " * 20)
        assert conv.last_plan is not None
        assert conv.last_plan.estimated_tokens <= 900


def test_summariser_failure_falls_back_to_truncation_and_retries() -> None:
    server = FakeChatServer()
    state = {"fail": True}

    def reply(body: dict[str, Any]) -> Any:
        if "keep the memory" in body["messages"][0]["content"]:
            if state["fail"]:
                return {"content": None, "status": 500} if False else _raise_500()
            return "- a fact"
        return "ok"

    server.respond_with(reply, times=200)
    conv = summary_conv(server, strategy=RollingSummary(trigger=0.5))
    failed_plan = None
    for i in range(40):
        conv.send(f"message {i} " + "blah " * 20)
        plan = conv.last_plan
        assert plan is not None
        if plan.summary_calls and not plan.summary_calls[0].ok:
            failed_plan = plan
            break
    assert failed_plan is not None
    assert any("falls back to truncation" in n for n in failed_plan.notes)
    assert conv.history.summaries == ()
    assert len(conv.messages) == 2 * (i + 1)
    state["fail"] = False
    conv.send("after recovery")
    assert conv.last_plan is not None and conv.last_plan.summary_calls[0].ok
    assert len(conv.history.summaries) == 1


def _raise_500() -> Any:
    import httpx2

    return httpx2.Response(
        500, json={"error": {"message": "summariser down", "type": "server_error"}}
    )


def test_summariser_can_use_another_client_and_model() -> None:
    main = FakeChatServer()
    main.respond_with(lambda body: "ok", times=50)
    cheap = FakeChatServer()
    cheap.respond_with(lambda body: "- cheap facts", times=50)
    conv = Conversation(
        main.client(),
        model="gpt-4o",
        system="s",
        context_window=800,
        reply_reserve=100,
        strategy=RollingSummary(client=cheap.client(), model="gpt-4o-mini"),
    )
    for i in range(20):
        conv.send(f"m{i} " + "blah " * 20)
    assert cheap.requests and all(r["model"] == "gpt-4o-mini" for r in cheap.requests)
    assert all("keep the memory" not in r["messages"][0]["content"] for r in main.requests)


def test_summary_covers_tool_turns_as_facts() -> None:
    server = summary_server()
    conv = summary_conv(server)
    call = {
        "id": "c1",
        "type": "function",
        "function": {"name": "lookup", "arguments": '{"q": "x"}'},
    }
    conv.extend(
        [
            {"role": "user", "content": "look up x " + "blah " * 30},
            {"role": "assistant", "content": None, "tool_calls": [call]},
            {"role": "tool", "tool_call_id": "c1", "content": "x is 42"},
            {"role": "assistant", "content": "x is 42 " + "blah " * 30},
        ]
    )
    for i in range(20):
        conv.send(f"m{i} " + "blah " * 20)
    summariser_requests = [
        r for r in server.requests if "keep the memory" in r["messages"][0]["content"]
    ]
    first = summariser_requests[0]["messages"][1]["content"]
    assert 'assistant called lookup:\n│ {"q":"x"}' in first
    assert "tool result:\n│ x is 42" in first


def test_preview_does_not_call_the_summariser() -> None:
    server = summary_server()
    conv = summary_conv(server, strategy=Pipeline(RollingSummary(), Truncate()))
    conv.extend(
        [
            m
            for i in range(30)
            for m in (
                {"role": "user", "content": "blah " * 20},
                {"role": "assistant", "content": "blah " * 20},
            )
        ]
    )
    plan = conv.preview("hello")
    assert server.requests == []
    assert any("summary is due" in n for n in plan.notes)


def test_prepare_next_and_background_summary() -> None:
    async def main() -> None:
        server = summary_server()
        conv = AsyncConversation(
            server.async_client(),
            model="m",
            context_window=1000,
            reply_reserve=100,
            strategy=RollingSummary(),
            background_summary=True,
        )
        for i in range(30):
            await conv.send(f"message {i} " + "blah " * 20)
        await conv.drain()
        assert conv.history.summaries
        # The summaries were made after replies, not while a call waited: no plan of the
        # foreground calls shows a summariser call.
        assert conv.last_plan is not None and not conv.last_plan.summary_calls

    asyncio.run(main())


def test_pipeline_validation() -> None:
    with pytest.raises(UsageError):
        Pipeline()
    with pytest.raises(UsageError, match="cannot take part"):
        Pipeline(object())  # type: ignore[arg-type]
    with pytest.raises(UsageError, match="at most one summary"):
        Pipeline(RollingSummary(), RollingSummary())


def test_pipeline_truncate_cap_applies_to_whole_context() -> None:
    server = summary_server()
    conv = Conversation(
        server.client(),
        model="m",
        context_window=100_000,
        reply_reserve=1000,
        strategy=Pipeline(RollingSummary(), Truncate(max_tokens=500)),
    )
    for i in range(30):
        conv.send(f"message {i} " + "blah " * 20)
        plan = conv.last_plan
        assert plan is not None and plan.corrected_tokens <= 500
        assert plan.not_summarised == []  # what the cap leaves out is summarised first
    # 70% of a 100k window is never reached; the summaries cover what the cap drops, and each
    # covers many turns (not one call per turn).
    assert 0 < conv.usage.summary_calls <= 6


def test_decisions_cover_every_turn_on_long_history() -> None:
    h = history(5000, words=5)
    req = request(h, window=4000, reserve=500)
    plan = Truncate().build(req)
    check_plan(plan, req)
    assert len(plan.decisions) == 5000
    assert plan.dropped[0] == 0 and plan.kept[-1] == 4999
    assert "dropped" in str(plan)


def test_vector_recall_renamed_options_keep_deprecated_aliases() -> None:
    from convmem.strategies.recall import VectorRecall

    with (
        pytest.warns(DeprecationWarning, match="max_recall_tokens"),
        pytest.warns(DeprecationWarning, match="message_role"),
    ):
        old = VectorRecall(max_tokens=300, role="user")
    assert old.max_recall_tokens == 300 and old.message_role == "user"
    assert old.role == "recall"  # the component role no longer clashes with the message role
    with pytest.warns(DeprecationWarning):
        assert old.max_tokens == 300
    new = VectorRecall(max_recall_tokens=200, message_role="system")
    assert new.max_recall_tokens == 200
    with pytest.raises(TypeError, match="unexpected keyword"):
        VectorRecall(max_token=1)


def test_plan_notes_are_structured_and_still_text() -> None:
    from convmem.plan import Note

    note = Note("recall_failed", {"error": "OSError: read-only"})
    assert note.kind == "recall_failed" and note.data["error"] == "OSError: read-only"
    assert note == "recall failed (OSError: read-only); sent without it"
    assert note.startswith("recall failed") and "read-only" in note
    assert note.to_dict() == {"kind": "recall_failed", "error": "OSError: read-only", "text": note}
    h = history(30)
    req = request(h)
    server = summary_server()
    conv = summary_conv(server)
    conv.extend([m for t in h.turns for m in t.messages])
    plan = conv.preview("and?")
    assert plan.notes_of("summary_not_called")
    assert all(isinstance(n, Note) for n in plan.notes)
    assert '"kind": "summary_not_called"' in plan.to_json()
    del req
