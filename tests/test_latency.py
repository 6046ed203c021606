"""Issue 14.3: no stalls a user cannot predict (background summary on both classes, warm())."""

from __future__ import annotations

import asyncio
import io
import random
import threading
import uuid
from typing import Any

import httpx2
import pytest

from convmem import AsyncConversation, Conversation, UsageError
from convmem.strategies import Pipeline, RollingSummary, Truncate, VectorRecall
from convmem.testing import FakeChatServer

SUMMARISER = "keep the memory of a conversation"
# The body OpenAI sends with a 500 (the SDK raises openai.InternalServerError from it).
SERVER_ERROR = {
    "error": {
        "message": "The server had an error while processing your request. Sorry about that!",
        "type": "server_error",
        "param": None,
        "code": None,
    }
}


def chat_server(fail_summaries: int = 0) -> tuple[FakeChatServer, list[str]]:
    """Replies 'ok'; summariser calls (recognised by their prompt) with facts, the first
    ``fail_summaries`` of them with a 500. The list records each request's kind."""
    server = FakeChatServer()
    kinds: list[str] = []

    def reply(body: dict[str, Any]) -> Any:
        if SUMMARISER in body["messages"][0]["content"]:
            kinds.append("summary")
            if kinds.count("summary") <= fail_summaries:
                return httpx2.Response(500, json=SERVER_ERROR)
            turns = body["messages"][1]["content"]
            return {
                "content": f"- facts from {turns.count('User:')} user messages",
                "usage": {"prompt_tokens": 300, "completion_tokens": 12, "total_tokens": 312},
            }
        kinds.append("chat")
        return "ok " * 10

    server.respond_with(reply, times=200)
    return server, kinds


def options(**kw: Any) -> dict[str, Any]:
    return {
        "model": "m",
        "context_window": 1000,
        "reply_reserve": 100,
        "strategy": RollingSummary(),
        **kw,
    }


def run_sync(server: FakeChatServer, turns: int, **kw: Any) -> tuple[Conversation, list[Any]]:
    conv = Conversation(server.client(), **options(**kw))
    plans = []
    for i in range(turns):
        conv.send(f"message {i} " + "blah " * 20)
        plans.append(conv.last_plan)
        conv.drain()  # the user reads the reply: the background summary finishes meanwhile
    return conv, plans


def run_async(server: FakeChatServer, turns: int, **kw: Any) -> tuple[AsyncConversation, list[Any]]:
    async def main() -> tuple[AsyncConversation, list[Any]]:
        conv = AsyncConversation(server.async_client(), **options(**kw))
        plans = []
        for i in range(turns):
            await conv.send(f"message {i} " + "blah " * 20)
            plans.append(conv.last_plan)
            await conv.drain()
        return conv, plans

    return asyncio.run(main())


def test_sync_background_summary_is_made_after_a_reply_and_used_next() -> None:
    server, kinds = chat_server()
    conv, plans = run_sync(server, 30, background_summary=True)
    assert conv.history.summaries
    # No call waits for a summariser, not even the first to cross the trigger: each summary
    # is made between calls (planned with the lookahead for the next exchange).
    assert all(p is not None and not p.summary_calls for p in plans)
    assert conv.usage.summary_calls == kinds.count("summary") >= 2
    # The request after each summariser call carries that summary.
    for i, kind in enumerate(kinds):
        if kind == "summary" and i + 1 < len(kinds):
            sent = server.requests[i + 1]["messages"]
            assert any("facts from" in str(m.get("content")) for m in sent)
    # Without the option the same conversation makes its summaries in the blocking path.
    server2, _ = chat_server()
    _, blocking = run_sync(server2, 30)
    assert sum(1 for p in blocking if p is not None and p.summary_calls) >= 2


def test_next_call_waits_for_a_running_background_summary() -> None:
    """A call that starts before the summary is done waits for it, then uses it."""
    server, kinds = chat_server()
    conv = Conversation(server.client(), **options(background_summary=True))
    plans = []
    for i in range(30):
        conv.send(f"message {i} " + "blah " * 20)  # no drain: the next call may find it running
        plans.append(conv.last_plan)
    conv.close()
    # The gate passes from the call to the job: the same requests, in the same order, as when
    # every summary had finished before the next call.
    drained_server, drained_kinds = chat_server()
    _, drained = run_sync(drained_server, 30, background_summary=True)
    assert kinds == drained_kinds and "summary" in kinds
    assert [r["messages"] for r in server.requests] == [
        r["messages"] for r in drained_server.requests
    ]
    assert [bool(p and p.summary_calls) for p in plans] == [
        bool(p and p.summary_calls) for p in drained
    ]


def background_failing_server() -> tuple[FakeChatServer, list[str]]:
    """Like :func:`chat_server`, but every summariser call made off the calling thread (the
    background job, in the shared pool) gets a 500; the calls' own summariser calls succeed."""
    server = FakeChatServer()
    kinds: list[str] = []
    main = threading.main_thread()

    def reply(body: dict[str, Any]) -> Any:
        if SUMMARISER in body["messages"][0]["content"]:
            if threading.current_thread() is not main:
                kinds.append("failed background summary")
                return httpx2.Response(500, json=SERVER_ERROR)
            kinds.append("summary")
            return {
                "content": "- facts from the turns",
                "usage": {"prompt_tokens": 300, "completion_tokens": 12, "total_tokens": 312},
            }
        kinds.append("chat")
        return "ok " * 10

    server.respond_with(reply, times=400)
    return server, kinds


def test_failed_background_summary_leaves_history_and_next_call_falls_back() -> None:
    server, kinds = chat_server(fail_summaries=1)
    conv = Conversation(server.client(), **options(background_summary=True))
    i = 0
    while "summary" not in kinds:
        before = conv.to_dict()
        conv.send(f"message {i} " + "blah " * 20)
        after_call = conv.to_dict()
        conv.drain()
        i += 1
        assert i < 30
    # The background summary failed: the history is exactly what the call committed.
    assert conv.to_dict() == after_call and not conv.history.summaries
    assert len(after_call["turns"]) == len(before["turns"]) + 1
    # The next background job (after the next reply) tries again; no turn was lost meanwhile.
    conv.send("one more " + "blah " * 20)
    conv.drain()
    assert conv.history.summaries
    assert kinds.count("summary") >= 2


def test_background_summarising_always_failing_falls_back_to_the_calls_path() -> None:
    """A background summariser that never succeeds: the call that needs the summary makes it
    in its own path, as without the option, and no turn is dropped unsummarised."""
    server, kinds = background_failing_server()
    conv = Conversation(
        server.client(),
        **options(background_summary=True, strategy=Pipeline(RollingSummary(), Truncate())),
    )
    in_path = 0
    for i in range(40):
        conv.send(f"message {i} " + "blah " * 20)
        plan = conv.last_plan
        assert plan is not None and plan.not_summarised == [], plan
        in_path += sum(c.ok for c in plan.summary_calls)
        conv.drain()
    assert "failed background summary" in kinds
    assert in_path >= 2 and conv.history.summaries
    assert len(conv.history.summaries) == in_path


def test_background_and_foreground_failing_say_dropped_not_summarised() -> None:
    server, kinds = chat_server(fail_summaries=10_000)
    conv = Conversation(
        server.client(),
        **options(background_summary=True, strategy=Pipeline(RollingSummary(), Truncate())),
    )
    for i in range(40):
        conv.send(f"message {i} " + "blah " * 20)
        conv.drain()
    plan = conv.last_plan
    assert plan is not None and plan.not_summarised, plan
    (note,) = plan.notes_of("not_summarised")
    assert "summariser failed" in note.data["reason"]
    assert "InternalServerError" in note.data["reason"]
    assert not conv.history.summaries and "chat" in kinds


def test_background_summary_parity_sync_async() -> None:
    s_server, s_kinds = chat_server()
    a_server, a_kinds = chat_server()
    sync_conv, sync_plans = run_sync(s_server, 25, background_summary=True)
    async_conv, async_plans = run_async(a_server, 25, background_summary=True)
    assert s_kinds == a_kinds and "summary" in s_kinds
    assert [s.text for s in sync_conv.history.summaries] == [
        s.text for s in async_conv.history.summaries
    ]
    assert [r["messages"] for r in s_server.requests] == [r["messages"] for r in a_server.requests]
    assert [p.summary_calls != [] for p in sync_plans] == [
        p.summary_calls != [] for p in async_plans
    ]


def counting_recall() -> tuple[VectorRecall, list[int]]:
    calls: list[int] = []

    def embed(texts: list[str]) -> list[list[float]]:
        calls.append(len(texts))
        return [[float(len(t)), 1.0, 0.5] for t in texts]

    return VectorRecall(embedder=embed, collection=f"warm_{uuid.uuid4().hex}"), calls


@pytest.mark.recall
def test_warm_loads_embedder_and_collection_once() -> None:
    recall, calls = counting_recall()
    server = FakeChatServer()
    server.reply("ok").reply("ok")
    conv = Conversation(
        server.client(), model="m", context_window=8000, strategy=Pipeline(recall, Truncate())
    )
    assert conv.warm() is conv
    assert calls == [1] and recall._store is not None
    conv.warm()  # idempotent: nothing is embedded or opened again
    assert calls == [1]
    assert conv._warm()  # the strategy's jobs go to the pool from the first call on
    conv.send("hi")
    conv.close()

    async def main() -> None:
        recall2, calls2 = counting_recall()
        aconv = AsyncConversation(
            server.async_client(),
            model="m",
            context_window=8000,
            strategy=Pipeline(recall2, Truncate()),
        )
        assert await aconv.warm() is aconv
        await aconv.warm()
        assert calls2 == [1] and recall2._store is not None
        await aconv.send("hi")
        await aconv.aclose()

    asyncio.run(main())
    server.assert_all_used()


@pytest.mark.recall
def test_warm_on_construction_sync_async_parity() -> None:
    """``warm=True`` on both classes: sync warms in the constructor; async starts the warm-up
    as a task on the running loop (a constructor cannot await) that the first call waits for."""
    recall, calls = counting_recall()
    server = FakeChatServer()
    server.reply("ok").reply("ok")
    conv = Conversation(server.client(), model="m", context_window=8000, strategy=recall, warm=True)
    assert calls == [1] and conv._warm()
    conv.send("hi")
    conv.close()

    async def main() -> list[int]:
        recall2, calls2 = counting_recall()
        aconv = AsyncConversation(
            server.async_client(), model="m", context_window=8000, strategy=recall2, warm=True
        )
        assert calls2 == []  # started, not yet run: the constructor did not block the loop
        await aconv.send("hi")  # waits at the gate for the warm-up task
        assert calls2[0] == 1 and aconv._warm() and aconv.last_background_error is None
        await aconv.aclose()
        return calls2

    calls2 = asyncio.run(main())
    # The same embedder calls in both: the warm-up's, then the ones of the call.
    assert calls2 == calls
    server.assert_all_used()


def test_async_warm_needs_a_running_loop() -> None:
    server = FakeChatServer()
    with pytest.raises(UsageError, match=r"no loop is running.*await conv\.warm\(\)"):
        AsyncConversation(server.async_client(), model="m", context_window=8000, warm=True)


def test_async_warm_failure_is_kept_and_the_first_call_goes_on() -> None:
    class Boom:
        def build(self, request: Any) -> Any:
            return Truncate().build(request)

        def warm(self) -> None:
            raise RuntimeError("embedding model missing")

    async def main() -> None:
        server = FakeChatServer().reply("ok")
        aconv = AsyncConversation(
            server.async_client(), model="m", context_window=8000, strategy=Boom(), warm=True
        )
        await aconv.drain()
        assert isinstance(aconv.last_background_error, RuntimeError)
        await aconv.send("hi")
        await aconv.aclose()

    asyncio.run(main())


@pytest.mark.recall
def test_latency_bench_plumbing() -> None:
    from convmem.bench import latency

    server = FakeChatServer()
    server.respond_with(lambda body: "Pack light layers.", times=6)
    out = io.StringIO()
    recall, _ = counting_recall()
    result = latency.run_setup(
        server.client(),
        "m",
        "warm+background",
        3,
        out=out,
        strategy=Pipeline(RollingSummary(), recall, Truncate()),
        context_window=2048,
    )
    assert len(result.latencies) == 3 and result.warm_seconds is not None
    row = result.row()
    assert row["turns"] == 3 and row["p50_s"] is not None
    assert out.getvalue().count("turn") == 3
    assert [t["turn"] for t in result.turns] == [1, 2, 3]
    assert all(t["summary_calls"] == 0 and t["prompt_tokens"] for t in result.turns)


def sixty_turn_replies() -> Any:
    """Scripted replies of varying length (a steady conversation); summariser calls get a
    fact list. Counts the summariser calls by the thread that made them."""
    rng = random.Random(14)
    main = threading.main_thread()
    counts = {"in a call": 0, "background": 0}

    def reply(body: dict[str, Any]) -> Any:
        if SUMMARISER in body["messages"][0]["content"]:
            where = "in a call" if threading.current_thread() is main else "background"
            counts[where] += 1
            return {
                "content": "- the user plans trips; budgets and foods noted",
                "usage": {"prompt_tokens": 900, "completion_tokens": 20, "total_tokens": 920},
            }
        return " ".join(rng.choice(["Pack", "light", "layers", "and", "walk"]) for _ in range(40))

    return reply, counts


def sixty_turn_pipeline(kind: str) -> Any:
    if kind == "summary+truncate":
        return Pipeline(RollingSummary(), Truncate())
    recall, _ = counting_recall()
    return Pipeline(RollingSummary(), recall, Truncate())


def run_sixty(kind: str, *, background: bool) -> tuple[list[Any], dict[str, int], Conversation]:
    from convmem.bench.latency import messages

    reply, counts = sixty_turn_replies()
    server = FakeChatServer()
    server.respond_with(reply, times=400)
    conv = Conversation(
        server.client(),
        model="m",
        context_window=2048,
        strategy=sixty_turn_pipeline(kind),
        background_summary=background,
    )
    plans = []
    for i, text in enumerate(messages(60)):  # the latency benchmark's conversation, with
        text += " Also:" + " and some more details" * (i * 7 % 5 * 3)  # messages of mixed length
        conv.send(text, max_tokens=48)
        plans.append(conv.last_plan)
        conv.drain()  # the pause while the user reads and types
    conv.close()
    return plans, counts, conv


@pytest.mark.parametrize(
    "kind", ["summary+truncate", pytest.param("summary+recall+truncate", marks=pytest.mark.recall)]
)
def test_sixty_turns_no_summariser_call_in_any_blocking_path(kind: str) -> None:
    """With a background summary and a pause between turns, no call waits for a summariser,
    the one whose message first crosses the 70% trigger included; no turn falls through."""
    blocking, blocking_counts, _ = run_sixty(kind, background=False)
    crossing = next(i for i, p in enumerate(blocking) if p.summary_calls)
    assert blocking_counts["in a call"] >= 3 and blocking_counts["background"] == 0

    plans, counts, conv = run_sixty(kind, background=True)
    assert [i for i, p in enumerate(plans) if p.summary_calls] == []
    assert not plans[crossing].summary_calls  # the crossing turn found its summary made
    assert counts == {"in a call": 0, "background": counts["background"]}
    assert counts["background"] >= 3 and len(conv.history.summaries) == counts["background"]
    for i, plan in enumerate(plans):
        assert plan.not_summarised == [], plan
        covered = set(plan.summarised) | set(plan.kept) | set(plan.recalled)
        assert covered >= set(range(i)), plan  # every earlier turn sent or summarised
