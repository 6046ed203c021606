"""Conversations kept in a store: resume, commit after success only, conflicts, async.

The API is faked at the HTTP transport (convmem.testing.FakeChatServer); the stores are real
(SQLite, and PostgreSQL where the test takes ``store_spec``).
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

import openai
import pytest

from convmem import AsyncConversation, Conversation
from convmem.errors import ConflictError, UsageError
from convmem.stores import Head, SQLiteStore
from convmem.testing import FakeChatServer


@pytest.fixture
def sqlite(tmp_path: Any) -> Any:
    store = SQLiteStore(tmp_path / "chats.db")
    yield store
    store.close()


def test_resume_in_a_new_conversation_gives_the_same_next_context(store_spec: Any) -> None:
    server = FakeChatServer().reply("Hello Xiaoming.").reply("You are Xiaoming.").reply("Tea.")
    store = store_spec.open()
    conv = Conversation(
        server.client(),
        model="gpt-4o-mini",
        system="Be terse.",
        store=store,
        conversation_id="alice-1",
    )
    conv.send("Hi, I am Xiaoming")
    conv.send("Who am I?")
    expected = conv.preview("What do I drink?").messages
    store.close()
    # A new process: a new store object, a new conversation, no system= given.
    again = store_spec.open()
    resumed = Conversation(
        server.client(), model="gpt-4o-mini", store=again, conversation_id="alice-1"
    )
    assert resumed.messages == conv.messages
    assert [t.id for t in resumed.turns] == [0, 1]
    assert resumed.usage.calls == 2 and resumed.usage.prompt_tokens == conv.usage.prompt_tokens
    assert resumed.calibrator.to_dict() == conv.calibrator.to_dict()
    assert resumed.preview("What do I drink?").messages == expected
    resumed.send("What do I drink?")
    assert server.messages(-1)[:-1] == conv.messages  # everything before, sent again
    assert [t.id for t in again.load("alice-1").turns] == [0, 1, 2]
    info = again.list()[0]
    assert (info.id, info.title, info.model, info.turns) == (
        "alice-1",
        "Hi, I am Xiaoming",
        "gpt-4o-mini",
        3,
    )
    assert info.tokens > 0
    again.close()


def test_a_failed_call_writes_nothing(sqlite: Any) -> None:
    server = FakeChatServer().reply("ok").error(500)
    conv = Conversation(
        server.client(max_retries=0), model="gpt-4o-mini", store=sqlite, conversation_id="c"
    )
    conv.send("one")
    with pytest.raises(openai.InternalServerError):
        conv.send("two")
    assert sqlite.turn_ids("c") == [0] and len(conv.turns) == 1


def test_a_failed_store_write_leaves_memory_unchanged(sqlite: Any) -> None:
    server = FakeChatServer().reply("ok").reply("lost")
    conv = Conversation(server.client(), model="gpt-4o-mini", store=sqlite, conversation_id="c")
    conv.send("one")
    sqlite.close()  # the store is gone when the second turn is written
    with pytest.raises(UsageError, match="closed"):
        conv.send("two")
    assert [m["content"] for m in conv.messages] == ["one", "ok"]


def test_tool_turns_are_written_whole(sqlite: Any) -> None:
    def get_weather(city: str) -> str:
        """Current weather.

        Args:
            city: The city.
        """
        return f"sunny in {city}"

    server = (
        FakeChatServer()
        .reply(tool_calls=[{"id": "c1", "name": "get_weather", "arguments": {"city": "Lyon"}}])
        .reply("Sunny.")
    )
    conv = Conversation(server.client(), model="gpt-4o-mini", store=sqlite, conversation_id="c")
    conv.send("Weather in Lyon?", tools=[get_weather])
    (turn,) = sqlite.load("c").turns
    assert [m["role"] for m in turn.messages] == ["user", "assistant", "tool", "assistant"]
    assert sqlite.search("lyon")[0].turn_id == 0


def test_schema_only_tool_calls_continue_the_stored_turn(sqlite: Any) -> None:
    server = (
        FakeChatServer()
        .reply(tool_calls=[{"id": "c1", "name": "lookup", "arguments": {"q": "x"}}])
        .reply("Found it.")
    )
    schema = {"type": "function", "function": {"name": "lookup", "parameters": {"type": "object"}}}
    conv = Conversation(server.client(), model="gpt-4o-mini", store=sqlite, conversation_id="c")
    conv.send("Look it up", tools=[schema])
    assert sqlite.head("c") == Head(0, 2)
    conv.extend([{"role": "tool", "tool_call_id": "c1", "content": "42"}])
    conv.send(tools=[schema])
    assert sqlite.head("c") == Head(0, 4)
    assert [m["role"] for m in sqlite.load("c").turns[0].messages] == [
        "user",
        "assistant",
        "tool",
        "assistant",
    ]


def test_two_processes_on_one_conversation_append_policy(store_spec: Any) -> None:
    server = FakeChatServer().reply("a1").reply("b1").reply("a2")
    s1, s2 = store_spec.open(), store_spec.open()
    a = Conversation(server.client(), model="gpt-4o-mini", store=s1, conversation_id="shared")
    b = Conversation(server.client(), model="gpt-4o-mini", store=s2, conversation_id="shared")
    a.send("from A")
    b.send("from B")  # B catches up before its call: it sees A's turn
    assert [m["content"] for m in server.messages(-1)] == ["from A", "a1", "from B"]
    a.send("A again")
    assert [m["content"] for m in a.messages] == ["from A", "a1", "from B", "b1", "A again", "a2"]
    assert [t.id for t in s1.load("shared").turns] == [0, 1, 2]
    s1.close()
    s2.close()


def test_commit_after_a_concurrent_write_follows_the_policy(sqlite: Any) -> None:
    for policy in ("append", "raise", "fork"):
        cid = f"c-{policy}"
        server = FakeChatServer()
        conv = Conversation(
            server.client(),
            model="gpt-4o-mini",
            store=sqlite,
            conversation_id=cid,
            on_conflict=policy,
        )

        def sneak(body: dict[str, Any], cid: str = cid) -> str:
            # Another process commits while this call is on the wire.
            sqlite.append(
                cid, [{"role": "user", "content": "other"}, {"role": "assistant", "content": "x"}]
            )
            return "mine"

        server.respond_with(sneak)
        if policy == "raise":
            with pytest.raises(ConflictError):
                conv.send("me")
            assert len(conv.turns) == 0 and sqlite.turn_ids(cid) == [0]
        elif policy == "append":
            conv.send("me")
            assert [m["content"] for m in conv.messages] == ["other", "x", "me", "mine"]
            assert [t.id for t in conv.turns] == [0, 1]
        else:
            conv.send("me")
            assert conv.conversation_id != cid
            assert sqlite.load(conv.conversation_id).forked_from == cid
            assert [m["content"] for m in conv.messages] == ["me", "mine"]
            assert [m["content"] for t in sqlite.load(cid).turns for m in t.messages] == [
                "other",
                "x",
            ]


def test_lost_acknowledgement_is_retried_with_the_same_key(sqlite: Any) -> None:
    server = FakeChatServer().reply("ok")
    conv = Conversation(server.client(), model="gpt-4o-mini", store=sqlite, conversation_id="c")
    real_append = sqlite.append
    calls: list[str] = []

    def flaky(*args: Any, **kwargs: Any) -> Any:
        calls.append(kwargs["idempotency_key"])
        commit = real_append(*args, **kwargs)
        if len(calls) == 1:
            raise ConnectionResetError("connection lost before the acknowledgement")
        return commit

    sqlite.append = flaky
    conv.send("pay once")
    assert len(calls) == 2 and calls[0] == calls[1]
    assert sqlite.turn_ids("c") == [0] and [t.id for t in conv.turns] == [0]


def test_clear_is_refused_and_arguments_checked(sqlite: Any) -> None:
    conv = Conversation(
        FakeChatServer().client(), model="gpt-4o-mini", store=sqlite, conversation_id="c"
    )
    with pytest.raises(UsageError, match="append-only"):
        conv.clear()
    with pytest.raises(UsageError, match="on_conflict"):
        Conversation(
            FakeChatServer().client(),
            model="gpt-4o-mini",
            store=sqlite,
            conversation_id="c",
            on_conflict="merge",
        )
    with pytest.raises(UsageError, match="Store"):
        Conversation(
            FakeChatServer().client(), model="gpt-4o-mini", store=object(), conversation_id="c"
        )


def test_json_export_import_between_stores(tmp_path: Any, sqlite: Any) -> None:
    server = FakeChatServer().reply("one").reply("two")
    conv = Conversation(server.client(), model="gpt-4o-mini", store=sqlite, conversation_id="c")
    conv.send("first")
    conv.send("second")
    other = SQLiteStore(tmp_path / "other.db")
    imported = Conversation.from_json(
        server.client(), conv.to_json(), store=other, conversation_id="c"
    )
    assert imported.messages == conv.messages
    assert [t.messages for t in other.load("c").turns] == [
        t.messages for t in sqlite.load("c").turns
    ]
    with pytest.raises(UsageError, match="already exists in the store"):
        Conversation.from_json(server.client(), conv.to_json(), store=other, conversation_id="c")
    other.close()


def test_last_plan_is_kept_only_when_asked(sqlite: Any) -> None:
    server = FakeChatServer().reply("a").reply("b")
    Conversation(server.client(), model="gpt-4o-mini", store=sqlite, conversation_id="p").send("x")
    assert "last_plan" not in sqlite.load("p").state
    conv = Conversation(
        server.client(), model="gpt-4o-mini", store=sqlite, conversation_id="q", save_plan=True
    )
    conv.send("y")
    assert sqlite.load("q").state["last_plan"] == json.loads(conv.last_plan.to_json())


def test_postgres_notifies_other_processes(store_spec: Any) -> None:
    if store_spec.kind != "postgres":
        pytest.skip("LISTEN/NOTIFY is PostgreSQL's")
    import threading

    store = store_spec.open(notify=True)
    heard: list[str] = []
    ready = threading.Event()

    def listen() -> None:
        for cid in store.listen(timeout=5, ready=ready):
            heard.append(cid)
            return

    thread = threading.Thread(target=listen)
    thread.start()
    assert ready.wait(10)
    store.append("n1", [{"role": "user", "content": "hello"}])
    thread.join(10)
    assert heard == ["n1"]
    store.close()


# -- async -------------------------------------------------------------------------------------


async def test_async_conversation_resumes_and_commits_off_the_loop(store_spec: Any) -> None:
    server = FakeChatServer().reply("one").reply("two")
    store = store_spec.open()
    conv = AsyncConversation(
        server.async_client(), model="gpt-4o-mini", store=store, conversation_id="a"
    )
    await conv.send("first")
    resumed = await AsyncConversation(
        server.async_client(), model="gpt-4o-mini", store=store, conversation_id="a"
    ).load()
    assert resumed.messages == conv.messages
    await resumed.send("second")
    assert [t.id for t in store.load("a").turns] == [0, 1]
    store.close()


@pytest.mark.parametrize("point", ["load", "head", "add_summary", "append"])
async def test_cancellation_at_every_await_of_a_commit(sqlite: Any, point: str) -> None:
    """Cancel a send while each store call it awaits is running in its thread.

    The turn ends up in both the store and memory, or in neither: never in one only.
    """
    import threading

    cid = f"cancel-{point}"
    server = FakeChatServer().reply("first").reply("ok").reply("again")
    conv = AsyncConversation(
        server.async_client(), model="gpt-4o-mini", store=sqlite, conversation_id=cid
    )
    if point != "load":
        await conv.send("first")  # loaded; the next send fetches the head first
    if point == "add_summary":
        from convmem.history import Summary

        conv.history.add_summary(Summary("s", (0,)))  # written before the next turn
    entered, release = threading.Event(), threading.Event()
    real = getattr(sqlite, point)

    def gated(*args: Any, **kwargs: Any) -> Any:
        entered.set()
        release.wait(10)
        return real(*args, **kwargs)

    setattr(sqlite, point, gated)
    task = asyncio.ensure_future(conv.send("hi"))
    while not entered.is_set():
        await asyncio.sleep(0.002)
    task.cancel()
    release.set()
    with pytest.raises(asyncio.CancelledError):
        await task
    setattr(sqlite, point, real)
    stored = [t.messages for t in sqlite.turns(cid)]
    assert stored == [t.messages for t in conv.turns]  # never in one only
    committed = point in ("add_summary", "append")  # the call had succeeded: it is kept
    assert [m["content"] for t in stored for m in t][-2:] == (
        ["hi", "ok"] if committed else (["first", "first"] if point == "head" else [])
    )
    assert len(server.requests) == (2 if committed else (1 if point == "head" else 0))
    await conv.send("again")  # the conversation goes on, in step with the store
    assert [t.messages for t in sqlite.turns(cid)] == [t.messages for t in conv.turns]
