"""Conversation and AsyncConversation: the same API, the same requests, the same state.

The pure parts live in ``_Core``; only the I/O is written twice. These tests run one script
through both classes and compare every request body, the history, the plans (notes included)
and what the strategy's jobs saw: with strategy jobs, preview, extend, from_json, tools,
streaming, a failure, and close.
"""

from __future__ import annotations

import asyncio
import inspect
import threading
from collections.abc import Sequence
from typing import Any

import openai
import pytest

from convmem import (
    AsyncConversation,
    ContextPlan,
    ContextRequest,
    Conversation,
    KeepAll,
    LocalJob,
    StreamEnd,
    Turn,
)
from convmem.conversation_core import _Core
from convmem.plan import as_note
from convmem.testing import FakeChatServer, ToolCallSpec


def weather(city: str) -> str:
    """The weather.

    Args:
        city: A city.
    """
    return f"sunny in {city}"


class Recorder(KeepAll):
    """A strategy with jobs: a query before each call, a store after each turn."""

    def __init__(self) -> None:
        self.log: list[str] = []
        self._lock = threading.Lock()

    def observe(self, conversation_id: str, turns: Sequence[Turn]) -> list[LocalJob]:
        ids = [t.id for t in turns]

        def store() -> None:
            with self._lock:
                self.log.append(f"store {ids}")

        return [LocalJob("rec:store", store)]

    def prepare(self, request: ContextRequest) -> list[LocalJob]:
        n = len(request.turns)
        return [LocalJob("rec:query", lambda: f"query over {n} turns")]

    def build(self, request: ContextRequest) -> ContextPlan:
        plan = super().build(request)
        result = request.results.get("rec:query")
        plan.notes.append(as_note(f"saw {result.value if result else None}"))
        return plan


def script(server: FakeChatServer) -> None:
    server.reply("Hi Ada")
    server.reply("streamed reply", chunk_size=3)
    server.reply(None, tool_calls=[ToolCallSpec("weather", {"city": "Oslo"}, id="t1")])
    server.reply("It is sunny")
    server.error(503, "overloaded")
    server.reply(None, tool_calls=[ToolCallSpec("weather", {"city": "Rome"}, id="t2")])
    server.reply("Rome too", chunk_size=5)
    server.reply("after import")


SAVED = [
    {"role": "user", "content": "an old question"},
    {"role": "assistant", "content": "an old answer"},
]


def run_sync(server: FakeChatServer) -> dict[str, Any]:
    strategy = Recorder()
    out: dict[str, Any] = {}
    with Conversation(server.client(), model="gpt-4o-mini", system="sys", strategy=strategy) as c:
        c.send("I am Ada", temperature=0)
        ends = [e for e in c.stream("hello?") if isinstance(e, StreamEnd)]
        out["stream_end"] = ends[0].text
        c.send("weather?", tools=[weather])
        with pytest.raises(openai.InternalServerError):
            c.send("fails")
        out["failed_plan_notes"] = c.last_plan.notes if c.last_plan else None
        list(c.stream("and Rome?", tools=[weather]))
        out["preview"] = c.preview("next?").to_dict()
        c.extend(SAVED)
        out["json"] = c.to_json()
        loaded = Conversation.from_json(server.client(), out["json"], strategy=strategy)
        loaded.send("go on")
        loaded.close()
        out["loaded"] = loaded.messages
    out["messages"] = c.messages
    out["plan"] = c.last_plan.to_dict() if c.last_plan else None
    out["usage"] = c.usage.to_dict()
    out["jobs"] = sorted(strategy.log)
    return out


async def run_async(server: FakeChatServer) -> dict[str, Any]:
    strategy = Recorder()
    out: dict[str, Any] = {}
    async with AsyncConversation(
        server.async_client(), model="gpt-4o-mini", system="sys", strategy=strategy
    ) as c:
        await c.send("I am Ada", temperature=0)
        ends = [e async for e in c.stream("hello?") if isinstance(e, StreamEnd)]
        out["stream_end"] = ends[0].text
        await c.send("weather?", tools=[weather])
        with pytest.raises(openai.InternalServerError):
            await c.send("fails")
        out["failed_plan_notes"] = c.last_plan.notes if c.last_plan else None
        async for _ in c.stream("and Rome?", tools=[weather]):
            pass
        out["preview"] = (await c.preview("next?")).to_dict()
        await c.extend(SAVED)
        out["json"] = c.to_json()
        loaded = await AsyncConversation.from_json(
            server.async_client(), out["json"], strategy=strategy
        )
        await loaded.send("go on")
        await loaded.aclose()
        out["loaded"] = loaded.messages
    out["messages"] = c.messages
    out["plan"] = c.last_plan.to_dict() if c.last_plan else None
    out["usage"] = c.usage.to_dict()
    out["jobs"] = sorted(strategy.log)
    return out


def _strip_times(value: Any) -> Any:
    if isinstance(value, dict):
        return {
            k: _strip_times(v)
            for k, v in value.items()
            if k not in ("created_at", "conversation_id", "seconds")
        }
    if isinstance(value, list):
        return [_strip_times(v) for v in value]
    return value


def test_sync_and_async_send_the_same_requests_and_end_in_the_same_state() -> None:
    s1, s2 = FakeChatServer(), FakeChatServer()
    script(s1)
    script(s2)
    sync = run_sync(s1)
    async_ = asyncio.run(run_async(s2))
    assert s1.requests == s2.requests
    assert len(s1.requests) == 8
    for key in ("stream_end", "failed_plan_notes", "messages", "usage", "jobs", "loaded"):
        assert sync[key] == async_[key], key
    assert _strip_times(sync["plan"]) == _strip_times(async_["plan"])
    assert _strip_times(sync["preview"]) == _strip_times(async_["preview"])
    import json

    assert _strip_times(json.loads(sync["json"])) == _strip_times(json.loads(async_["json"]))
    assert sync["failed_plan_notes"][-1].startswith("call failed, nothing committed")
    assert "saw query over" in sync["preview"]["notes"][0]["text"]
    # Every turn was stored once, the imported ones and the loaded conversation's too.
    assert {"store [4]", "store [0, 1, 2, 3, 4]", "store [5]"} <= set(sync["jobs"])


PUBLIC = [
    "send",
    "stream",
    "parse",
    "preview",
    "extend",
    "clear",
    "from_json",
    "prepare_next",
    "drain",
    "warm",
]


@pytest.mark.parametrize("name", PUBLIC)
def test_both_classes_have_the_same_methods(name: str) -> None:
    sync_fn = getattr(Conversation, name)
    async_fn = getattr(AsyncConversation, name)
    s_sig = inspect.signature(sync_fn)
    a_sig = inspect.signature(async_fn)
    assert list(s_sig.parameters) == list(a_sig.parameters), name
    if name == "stream":
        assert not inspect.iscoroutinefunction(async_fn)  # an async iterator, not a coroutine
    else:
        assert inspect.iscoroutinefunction(async_fn), name
    assert not inspect.iscoroutinefunction(sync_fn)


def test_close_and_context_managers_on_both() -> None:
    assert callable(Conversation.close) and inspect.iscoroutinefunction(AsyncConversation.aclose)
    assert hasattr(Conversation, "__enter__") and hasattr(AsyncConversation, "__aenter__")


def test_only_io_is_written_twice() -> None:
    """Everything but the I/O lives in _Core: the classes add no other public names."""
    io = {*PUBLIC, "close", "aclose"}
    for cls in (Conversation, AsyncConversation):
        own = {n for n in vars(cls) if not n.startswith("_")}
        # load(): the async class loads a store= conversation off the loop, at first use.
        assert own - io <= {"background_summary", "load"}, cls
        assert issubclass(cls, _Core)
