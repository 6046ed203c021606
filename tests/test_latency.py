"""Issue 14.3: no stalls a user cannot predict (background summary on both classes, warm())."""

from __future__ import annotations

import asyncio
import io
import uuid
from typing import Any

import httpx2
import pytest

from convmem import AsyncConversation, Conversation
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
    # Once summaries are steady, no call waits for a summariser: each is made between calls.
    # (A call whose own new message crosses the threshold still summarises in its path: the
    # summary made after the previous reply could not know that message.)
    assert all(p is not None and not p.summary_calls for p in plans[-10:])
    in_calls = sum(len(p.summary_calls) for p in plans if p is not None)
    assert conv.usage.summary_calls == kinds.count("summary") >= 3 * in_calls
    # The request after each summariser call carries that summary.
    for i, kind in enumerate(kinds):
        if kind == "summary" and i + 1 < len(kinds):
            sent = server.requests[i + 1]["messages"]
            assert any("facts from" in str(m.get("content")) for m in sent)
    # Without the option the same conversation makes its summaries in the blocking path.
    server2, _ = chat_server()
    _, blocking = run_sync(server2, 30)
    assert sum(1 for p in blocking if p is not None and p.summary_calls) >= 8


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
    # The next call makes the summary itself, as without the option.
    conv.send("one more " + "blah " * 20)
    plan = conv.last_plan
    assert plan is not None and plan.summary_calls
    assert conv.history.summaries
    assert kinds.count("summary") >= 2


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
def test_warm_on_construction() -> None:
    recall, calls = counting_recall()
    server = FakeChatServer()
    Conversation(server.client(), model="m", context_window=8000, strategy=recall, warm=True)
    assert calls == [1]


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
