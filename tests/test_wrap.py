"""``convmem.wrap``: an unchanged chat loop gets memory, through the SDK's own types."""

from __future__ import annotations

import asyncio
from typing import Any

import openai
import pytest
from openai.types.chat import ChatCompletion

import convmem
from convmem.errors import UsageError
from convmem.stores import SQLiteStore
from convmem.strategies import Truncate
from convmem.testing import FakeChatServer, ToolCallSpec
from convmem.wrap import message_key

LONG = " ".join(["word"] * 30)


def _server(n: int = 20) -> FakeChatServer:
    server = FakeChatServer()
    for i in range(n):
        server.reply(f"answer {i} {LONG}")
    return server


def _loop(client: Any, server: FakeChatServer, turns: int) -> list[dict[str, Any]]:
    messages: list[dict[str, Any]] = [{"role": "system", "content": "You are terse."}]
    for i in range(turns):
        messages.append({"role": "user", "content": f"question {i} {LONG}"})
        reply = client.chat.completions.create(model="gpt-4o-mini", messages=messages)
        assert isinstance(reply, ChatCompletion)
        messages.append(reply.choices[0].message.model_dump(exclude_none=True))
    return messages


def _keys(messages: list[dict[str, Any]]) -> list[str]:
    return [message_key(m) for m in messages]


def test_unchanged_loop_sends_the_strategys_context() -> None:
    server = _server()
    plain = server.client()
    client = convmem.wrap(plain, strategy=Truncate(max_tokens=300))
    assert isinstance(client, openai.OpenAI) and type(plain) is openai.OpenAI
    messages = _loop(client, server, 8)
    assert len(messages) == 17
    last = server.last_request
    assert len(last["messages"]) < len(messages)  # bounded while the list grows
    assert last["messages"][0] == {"role": "system", "content": "You are terse."}
    assert last["messages"][-1]["content"].startswith("question 7")
    assert client.last_plan.estimated_tokens <= 300
    # Memory holds the whole list, once: nothing duplicated by re-sending it.
    assert _keys(client.memory.messages) == _keys(messages)
    assert client.usage.calls == 8
    assert type(plain.chat.completions).__name__ == "Completions"  # the caller's client untouched


def test_every_other_argument_goes_through_unchanged() -> None:
    server = _server()
    client = convmem.wrap(server.client())
    client.chat.completions.create(
        model="gpt-4o-mini",
        messages=[{"role": "user", "content": "hi"}],
        temperature=0.2,
        top_p=0.5,
        seed=7,
        response_format={"type": "json_object"},
        extra_body={"enable_thinking": False},
        max_tokens=50,
    )
    body = server.last_request
    assert body["temperature"] == 0.2 and body["top_p"] == 0.5 and body["seed"] == 7
    assert body["response_format"] == {"type": "json_object"}
    assert body["enable_thinking"] is False and body["max_tokens"] == 50


def test_streaming_returns_the_sdks_stream_and_commits_at_the_end() -> None:
    server = _server()
    client = convmem.wrap(server.client())
    messages = [{"role": "user", "content": "hi"}]
    stream = client.chat.completions.create(model="gpt-4o-mini", messages=messages, stream=True)
    assert isinstance(stream, openai.Stream)
    text = "".join(chunk.choices[0].delta.content or "" for chunk in stream)
    assert text.startswith("answer 0")
    assert server.last_request["stream_options"] == {"include_usage": True}
    assert client.usage.prompt_tokens > 0  # convmem read the usage chunk it asked for
    assert client.memory.messages[-1] == {"role": "assistant", "content": text}
    # A stream the loop abandons commits nothing; the next call works.
    messages += [{"role": "assistant", "content": text}, {"role": "user", "content": "more"}]
    with client.chat.completions.create(
        model="gpt-4o-mini", messages=messages, stream=True
    ) as stream:
        next(iter(stream))
    assert len(client.memory.turns) == 1
    reply = client.chat.completions.create(model="gpt-4o-mini", messages=messages)
    assert reply.choices[0].message.content.startswith("answer 2")
    assert len(client.memory.turns) == 2


def test_caller_stream_options_get_the_usage_chunk() -> None:
    server = _server()
    client = convmem.wrap(server.client())
    chunks = list(
        client.chat.completions.create(
            model="gpt-4o-mini",
            messages=[{"role": "user", "content": "hi"}],
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    assert chunks[-1].choices == [] and chunks[-1].usage is not None


def test_failed_call_stores_nothing_and_reraises_the_sdk_error() -> None:
    server = FakeChatServer().error(429, "slow down").reply("ok")
    client = convmem.wrap(server.client().with_options(max_retries=0))
    messages = [{"role": "user", "content": "hi"}]
    with pytest.raises(openai.RateLimitError):
        client.chat.completions.create(model="gpt-4o-mini", messages=messages)
    assert len(client.memory.turns) == 0
    assert client.chat.completions.create(model="gpt-4o-mini", messages=messages)
    assert len(client.memory.turns) == 1


def test_tool_results_in_the_list_continue_the_turn() -> None:
    weather = {
        "type": "function",
        "function": {"name": "weather", "parameters": {"type": "object", "properties": {}}},
    }
    server = FakeChatServer().reply(tool_calls=[ToolCallSpec("weather", {}, id="c1")])
    server.reply("It is sunny.")
    client = convmem.wrap(server.client())
    messages: list[dict[str, Any]] = [{"role": "user", "content": "weather?"}]
    reply = client.chat.completions.create(model="gpt-4o-mini", messages=messages, tools=[weather])
    call = reply.choices[0].message
    assert call.tool_calls and call.tool_calls[0].id == "c1"
    messages.append(call.model_dump(exclude_none=True))
    messages.append({"role": "tool", "tool_call_id": "c1", "content": "sunny"})
    reply = client.chat.completions.create(model="gpt-4o-mini", messages=messages, tools=[weather])
    assert reply.choices[0].message.content == "It is sunny."
    assert server.last_request["tools"] == [weather]
    assert [m["role"] for m in server.last_request["messages"]] == ["user", "assistant", "tool"]
    assert len(client.memory.turns) == 1 and len(client.memory.turns[0].messages) == 4


def test_an_edited_list_forks_and_the_original_is_kept() -> None:
    server = _server()
    client = convmem.wrap(server.client(), conversation_id="c")
    messages = _loop(client, server, 3)
    original = client.memory
    edited = [*messages[:3], {"role": "user", "content": "something else"}]
    client.chat.completions.create(model="gpt-4o-mini", messages=edited)
    assert client.conversation_id != "c" and client.conversation_id.startswith("c~")
    assert client.memory is not original
    assert [m["content"] for m in client.memory.messages][:4] == [m["content"] for m in edited]
    assert len(original.turns) == 3  # untouched
    # A shortened list (an 'undo' in the loop) forks too.
    client.chat.completions.create(
        model="gpt-4o-mini", messages=[*messages[:1], {"role": "user", "content": "restart"}]
    )
    assert len(client.memory.turns) == 1


def test_conversations_by_id_and_with_options() -> None:
    server = _server()
    client = convmem.wrap(server.client())
    alice = client.conversation("alice")
    bob = client.conversation("bob").with_options(timeout=5)
    assert bob.timeout == 5 and bob.conversation_id == "bob"
    alice.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": "a"}])
    bob.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": "b"}])
    assert [t.messages[0]["content"] for t in alice.memory.turns] == ["a"]
    assert [t.messages[0]["content"] for t in bob.memory.turns] == ["b"]
    assert "conversation_id" not in server.last_request and "alice" not in str(server.requests)


def test_with_a_store_the_loop_resumes_after_a_restart(tmp_path: Any) -> None:
    server = _server()
    store = SQLiteStore(str(tmp_path / "chats.db"))
    client = convmem.wrap(server.client(), store=store, conversation_id="loop")
    messages = _loop(client, server, 2)
    store.close()
    store = SQLiteStore(str(tmp_path / "chats.db"))
    client = convmem.wrap(server.client(), store=store, conversation_id="loop")
    messages.append({"role": "user", "content": "and now?"})
    client.chat.completions.create(model="gpt-4o-mini", messages=messages)
    assert len(client.memory.turns) == 3  # the two stored turns matched, only the tail added
    store.close()


def test_parse_goes_through_memory() -> None:
    from pydantic import BaseModel

    class City(BaseModel):
        name: str

    server = FakeChatServer().reply_json({"name": "Lisbon"})
    client = convmem.wrap(server.client())
    completion = client.chat.completions.parse(
        model="gpt-4o-mini",
        messages=[{"role": "user", "content": "where?"}],
        response_format=City,
    )
    assert completion.choices[0].message.parsed == City(name="Lisbon")
    assert len(client.memory.turns) == 1


def test_bad_input_is_refused_before_any_request() -> None:
    server = _server()
    client = convmem.wrap(server.client())
    with pytest.raises(UsageError, match="non-empty list"):
        client.chat.completions.create(model="gpt-4o-mini", messages=[])
    with pytest.raises(UsageError, match="adds nothing"):
        client.chat.completions.create(
            model="gpt-4o-mini", messages=[{"role": "system", "content": "x"}]
        )
    with pytest.raises(UsageError, match="unknown option"):
        convmem.wrap(server.client(), windw=5)
    with pytest.raises(UsageError, match=r"openai\.OpenAI or AsyncOpenAI"):
        convmem.wrap(object())
    assert server.requests == []


def test_async_wrap_with_streaming() -> None:
    server = _server()

    async def main() -> list[dict[str, Any]]:
        client = convmem.wrap(server.async_client(), strategy=Truncate(max_tokens=300))
        assert isinstance(client, openai.AsyncOpenAI)
        messages: list[dict[str, Any]] = [{"role": "system", "content": "terse"}]
        for i in range(5):
            messages.append({"role": "user", "content": f"q{i} {LONG}"})
            stream = await client.chat.completions.create(
                model="gpt-4o-mini", messages=messages, stream=True
            )
            assert isinstance(stream, openai.AsyncStream)
            text = ""
            async for chunk in stream:
                text += chunk.choices[0].delta.content or ""
            messages.append({"role": "assistant", "content": text})
        assert client.memory.messages == messages
        assert client.last_plan.estimated_tokens <= 300
        return messages

    messages = asyncio.run(main())
    assert len(server.last_request["messages"]) < len(messages)
