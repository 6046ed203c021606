"""AsyncConversation, and parity with Conversation: both send identical requests."""

from __future__ import annotations

import asyncio
from typing import Any

import openai
import pytest

from convmem import AsyncConversation, Conversation, StreamEnd, TextDelta, ToolResult
from convmem.testing import FakeChatServer, ToolCallSpec


async def get_time(zone: str) -> str:
    """Current time.

    Args:
        zone: A time zone name.
    """
    await asyncio.sleep(0)
    return f"12:00 {zone}"


def script(server: FakeChatServer) -> None:
    server.reply("Hi Ada")
    server.reply("Hello again", reasoning="greeting twice")
    server.reply(None, tool_calls=[ToolCallSpec("get_time", {"zone": "UTC"}, id="t1")])
    server.reply("It is noon")


def run_sync(server: FakeChatServer) -> list[dict[str, Any]]:
    conv = Conversation(server.client(), model="gpt-4o-mini", system="sys")
    conv.send("I am Ada", temperature=0)
    list(conv.stream("hello?"))
    conv.send("time?", tools=[get_time])
    return conv.messages


async def run_async(server: FakeChatServer) -> list[dict[str, Any]]:
    conv = AsyncConversation(server.async_client(), model="gpt-4o-mini", system="sys")
    await conv.send("I am Ada", temperature=0)
    async for _ in conv.stream("hello?"):
        pass
    await conv.send("time?", tools=[get_time])
    return conv.messages


async def test_sync_async_parity() -> None:
    s1, s2 = FakeChatServer(), FakeChatServer()
    script(s1)
    script(s2)
    sync_messages = await asyncio.to_thread(run_sync, s1)
    async_messages = await run_async(s2)
    assert sync_messages == async_messages
    assert s1.requests == s2.requests
    assert len(s1.requests) == 4


async def test_async_stream_events() -> None:
    server = FakeChatServer().reply("one two three", chunk_size=3)
    conv = AsyncConversation(server.async_client(), model="gpt-4o-mini")
    events = [e async for e in conv.stream("count")]
    assert "".join(e.text for e in events if isinstance(e, TextDelta)) == "one two three"
    assert isinstance(events[-1], StreamEnd)
    assert conv.messages[-1]["content"] == "one two three"


async def test_async_stream_tools() -> None:
    server = FakeChatServer()
    server.reply(None, tool_calls=[ToolCallSpec("get_time", {"zone": "CET"}, id="t1")]).reply(
        "noon"
    )
    conv = AsyncConversation(server.async_client(), model="gpt-4o-mini")
    events = [e async for e in conv.stream("time?", tools=[get_time])]
    assert next(e for e in events if isinstance(e, ToolResult)).message["content"] == "12:00 CET"


async def test_many_conversations_concurrently() -> None:
    server = FakeChatServer()
    server.respond_with(
        lambda body: {"content": "echo " + body["messages"][-1]["content"]}, times=60
    )
    convs = [AsyncConversation(server.async_client(), model="gpt-4o-mini") for _ in range(20)]

    async def talk(i: int, conv: AsyncConversation) -> None:
        for j in range(3):
            await conv.send(f"c{i} m{j}")

    await asyncio.gather(*(talk(i, c) for i, c in enumerate(convs)))
    for i, conv in enumerate(convs):
        assert [m["content"] for m in conv.messages] == [
            f"c{i} m0",
            f"echo c{i} m0",
            f"c{i} m1",
            f"echo c{i} m1",
            f"c{i} m2",
            f"echo c{i} m2",
        ]


async def test_concurrent_calls_on_one_conversation_are_serialised() -> None:
    server = FakeChatServer()
    server.respond_with(lambda body: {"content": f"seen {len(body['messages'])}"}, times=10)
    conv = AsyncConversation(server.async_client(), model="gpt-4o-mini")
    await asyncio.gather(*(conv.send(f"m{i}") for i in range(10)))
    # Serialised: each request carried all previous turns (1, 3, 5, ... messages).
    assert sorted(len(r["messages"]) for r in server.requests) == list(range(1, 20, 2))
    roles = [m["role"] for m in conv.messages]
    assert roles == ["user", "assistant"] * 10


async def test_async_failure_leaves_history_unchanged() -> None:
    server = FakeChatServer().reply("ok").error(503, "unavailable")
    conv = AsyncConversation(server.async_client(), model="gpt-4o-mini")
    await conv.send("a")
    before = conv.messages
    with pytest.raises(openai.APIStatusError):
        await conv.send("b")
    assert conv.messages == before


async def test_async_cut_stream_leaves_history_unchanged() -> None:
    server = FakeChatServer().cut_stream("partial answer here", after_chunks=2)
    conv = AsyncConversation(server.async_client(), model="gpt-4o-mini")
    with pytest.raises(Exception):  # noqa: B017
        async for _ in conv.stream("a"):
            pass
    assert conv.messages == []


def test_sync_conversation_works_inside_a_running_loop() -> None:
    """Notebooks run an event loop; the sync class must not need one of its own."""
    server = FakeChatServer().reply("fine")

    async def inside() -> str:
        conv = Conversation(server.client(), model="gpt-4o-mini")
        return conv.send("hi").choices[0].message.content or ""

    assert asyncio.run(inside()) == "fine"
