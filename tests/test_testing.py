"""convmem.testing: the scripted fake chat server, driven through the real openai SDK."""

from __future__ import annotations

import asyncio
import json
import threading
from typing import Any

import httpx2
import openai
import pydantic
import pytest

import convmem.testing
from convmem.errors import UsageError
from convmem.testing import CREATED, ChoiceSpec, FakeChatServer, ToolCallSpec, estimate_tokens

USER: Any = [{"role": "user", "content": "Hello there, model"}]  # 18 chars -> 4 tokens + 3


def _prompt_tokens(messages: list[dict[str, Any]]) -> int:
    text = "".join(m.get("content") or "" for m in messages)
    return len(text) // 4 + 3 * len(messages)


# --- plain replies -------------------------------------------------------------------------------


def test_reply_renders_a_chat_completion_the_sdk_parses() -> None:
    server = FakeChatServer().reply("Hi!", reasoning="The user greets me.")
    completion = server.client().chat.completions.create(model="qwen-plus", messages=USER)

    assert completion.id == "chatcmpl-fake-1"
    assert completion.object == "chat.completion"
    assert completion.created == CREATED
    assert completion.model == "qwen-plus"  # echoed from the request
    [choice] = completion.choices
    assert choice.index == 0
    assert choice.finish_reason == "stop"
    assert choice.message.role == "assistant"
    assert choice.message.content == "Hi!"
    assert choice.message.tool_calls is None
    assert choice.message.reasoning_content == "The user greets me."  # type: ignore[attr-defined]
    assert completion.usage is not None
    assert completion.usage.prompt_tokens == _prompt_tokens(USER) == 7
    reasoning = estimate_tokens("The user greets me.")
    assert completion.usage.completion_tokens == estimate_tokens("Hi!") + reasoning
    assert completion.usage.total_tokens == 7 + completion.usage.completion_tokens
    assert completion.usage.completion_tokens_details is not None
    assert completion.usage.completion_tokens_details.reasoning_tokens == reasoning


def test_no_reasoning_means_no_reasoning_field() -> None:
    server = FakeChatServer().reply("plain")
    message = server.client().chat.completions.create(model="m", messages=USER).choices[0].message
    assert "reasoning_content" not in message.model_dump(exclude_unset=True)


def test_completion_ids_count_up_and_model_defaults_to_the_servers() -> None:
    server = FakeChatServer(model="default-model").reply("a").reply("b")
    client = server.client()
    assert client.chat.completions.create(model="m", messages=USER).id == "chatcmpl-fake-1"
    # A raw request without "model": the server names its own.
    with httpx2.Client(transport=server.transport) as http:
        raw = http.post("http://fake.test/v1/chat/completions", json={"messages": USER})
    assert raw.status_code == 200
    assert raw.json()["id"] == "chatcmpl-fake-2"
    assert raw.json()["model"] == "default-model"


async def test_async_client_reply() -> None:
    server = FakeChatServer().reply("async answer", reasoning="r")
    completion = await server.async_client().chat.completions.create(model="m", messages=USER)
    assert completion.choices[0].message.content == "async answer"
    assert completion.choices[0].message.reasoning_content == "r"  # type: ignore[attr-defined]
    assert server.pending == 0


def test_usage_override_is_merged_and_false_omits_it() -> None:
    server = FakeChatServer()
    server.reply("four", usage={"prompt_tokens": 9000})
    server.reply("x", usage={"prompt_tokens": 1, "completion_tokens": 2, "total_tokens": 99})
    server.reply("none", usage=False)
    client = server.client()

    first = client.chat.completions.create(model="m", messages=USER).usage
    assert first is not None
    assert (first.prompt_tokens, first.completion_tokens, first.total_tokens) == (9000, 1, 9001)
    second = client.chat.completions.create(model="m", messages=USER).usage
    assert second is not None
    assert (second.prompt_tokens, second.completion_tokens, second.total_tokens) == (1, 2, 99)
    assert client.chat.completions.create(model="m", messages=USER).usage is None


def test_prompt_estimate_counts_tool_calls_and_text_parts() -> None:
    server = FakeChatServer().reply("ok")
    messages: Any = [
        {"role": "user", "content": [{"type": "text", "text": "abcdefgh"}]},
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {"id": "c1", "type": "function", "function": {"name": "fn", "arguments": "{}"}}
            ],
        },
        {"role": "tool", "tool_call_id": "c1", "content": "1234"},
    ]
    usage = server.client().chat.completions.create(model="m", messages=messages).usage
    assert usage is not None
    # "abcdefgh" + "fn{}" + "1234" = 16 chars -> 4, plus 3 per message.
    assert usage.prompt_tokens == 4 + 9


# --- tool calls ----------------------------------------------------------------------------------


def test_tool_calls_non_stream() -> None:
    server = FakeChatServer().reply(
        tool_calls=[
            ToolCallSpec("get_weather", {"city": "Paris"}),
            {"name": "raw", "arguments": "{not json"},
            {"type": "function", "function": {"name": "api_shape", "arguments": {"x": 1}}},
            ToolCallSpec("explicit", "{}", id="call_mine"),
        ]
    )
    completion = server.client().chat.completions.create(model="m", messages=USER)
    [choice] = completion.choices
    assert choice.finish_reason == "tool_calls"
    assert choice.message.content is None  # tool-call-only replies carry null content
    calls = choice.message.tool_calls
    assert calls is not None
    assert [(c.id, c.type) for c in calls] == [
        ("call_1", "function"),
        ("call_2", "function"),
        ("call_3", "function"),
        ("call_mine", "function"),
    ]
    functions = [(c.function.name, c.function.arguments) for c in calls]  # type: ignore[union-attr]
    assert functions == [
        ("get_weather", json.dumps({"city": "Paris"})),
        ("raw", "{not json"),
        ("api_shape", '{"x": 1}'),
        ("explicit", "{}"),
    ]


def test_tool_call_ids_continue_across_replies_and_keep_content() -> None:
    server = FakeChatServer()
    server.reply("Let me check.", tool_calls=[ToolCallSpec("a", {})], finish_reason="stop")
    server.reply(tool_calls=[ToolCallSpec("b", {})])
    client = server.client()
    first = client.chat.completions.create(model="m", messages=USER).choices[0]
    assert first.message.content == "Let me check."
    assert first.finish_reason == "stop"  # explicit finish_reason wins
    assert first.message.tool_calls is not None
    assert first.message.tool_calls[0].id == "call_1"
    second = client.chat.completions.create(model="m", messages=USER).choices[0]
    assert second.message.tool_calls is not None
    assert second.message.tool_calls[0].id == "call_2"


# --- streaming -----------------------------------------------------------------------------------


def test_stream_chunks_reassemble() -> None:
    server = FakeChatServer().reply("Hello, world!", reasoning="think first", chunk_size=5)
    chunks = list(server.client().chat.completions.create(model="m", messages=USER, stream=True))

    assert all(c.object == "chat.completion.chunk" for c in chunks)
    assert {c.id for c in chunks} == {"chatcmpl-fake-1"}
    assert all(c.created == CREATED and c.model == "m" for c in chunks)
    assert chunks[0].choices[0].delta.role == "assistant"
    assert chunks[0].choices[0].delta.content == ""
    reasoning = [
        getattr(c.choices[0].delta, "reasoning_content", None)
        for c in chunks
        if getattr(c.choices[0].delta, "reasoning_content", None) is not None
    ]
    assert reasoning == ["think", " firs", "t"]
    content = [c.choices[0].delta.content for c in chunks[1:] if c.choices[0].delta.content]
    assert content == ["Hello", ", wor", "ld!"]
    # Reasoning comes before content, and only the last chunk finishes.
    assert [c.choices[0].finish_reason for c in chunks] == [None] * (len(chunks) - 1) + ["stop"]
    assert len(chunks) == 1 + 3 + 3 + 1
    # No usage without stream_options.include_usage.
    assert all(c.usage is None and c.choices for c in chunks)
    assert all("usage" not in c.model_dump(exclude_unset=True) for c in chunks)


def test_stream_usage_chunk_only_when_include_usage() -> None:
    server = FakeChatServer().reply("abcdefgh").reply("abcdefgh")
    client = server.client()
    chunks = list(
        client.chat.completions.create(
            model="m", messages=USER, stream=True, stream_options={"include_usage": True}
        )
    )
    last = chunks[-1]
    assert last.choices == []
    assert last.usage is not None
    assert last.usage.prompt_tokens == _prompt_tokens(USER)
    assert last.usage.completion_tokens == 2
    assert all(c.usage is None for c in chunks[:-1])
    assert chunks[-2].choices[0].finish_reason == "stop"
    # include_usage false: no usage chunk.
    chunks = list(
        client.chat.completions.create(
            model="m", messages=USER, stream=True, stream_options={"include_usage": False}
        )
    )
    assert all(c.choices and c.usage is None for c in chunks)


def test_stream_usage_false_sends_no_usage_chunk() -> None:
    server = FakeChatServer().reply("abc", usage=False)
    chunks = list(
        server.client().chat.completions.create(
            model="m", messages=USER, stream=True, stream_options={"include_usage": True}
        )
    )
    assert all(c.choices and c.usage is None for c in chunks)


def test_stream_tool_call_deltas() -> None:
    server = FakeChatServer().reply(
        tool_calls=[ToolCallSpec("lookup", {"q": "abc"}), ToolCallSpec("two", "{}")],
        chunk_size=6,
    )
    chunks = list(server.client().chat.completions.create(model="m", messages=USER, stream=True))
    assert chunks[0].choices[0].delta.role == "assistant"
    assert chunks[0].choices[0].delta.content is None
    deltas = [tc for c in chunks for tc in (c.choices[0].delta.tool_calls or [])]
    first = deltas[0]
    assert (first.index, first.id, first.type) == (0, "call_1", "function")
    assert first.function is not None
    assert (first.function.name, first.function.arguments) == ("lookup", "")
    later = [d for d in deltas if d.index == 0][1:]
    assert all(d.id is None and d.function is not None and d.function.name is None for d in later)
    pieces = [d.function.arguments for d in later if d.function is not None]
    assert pieces == ['{"q": ', '"abc"}']
    second = [d for d in deltas if d.index == 1]
    assert second[0].id == "call_2"
    assert "".join(d.function.arguments or "" for d in second if d.function) == "{}"
    assert chunks[-1].choices[0].finish_reason == "tool_calls"


def test_stream_helper_accumulates_a_final_completion() -> None:
    server = FakeChatServer().reply("Sure.", tool_calls=[ToolCallSpec("f", {"a": [1, 2]})])
    client = server.client()
    with client.chat.completions.stream(model="m", messages=USER) as stream:
        for _ in stream:
            pass
        final = stream.get_final_completion()
    choice = final.choices[0]
    assert choice.message.content == "Sure."
    assert choice.finish_reason == "tool_calls"
    assert choice.message.tool_calls is not None
    assert choice.message.tool_calls[0].function.arguments == '{"a": [1, 2]}'
    assert choice.message.tool_calls[0].id == "call_1"
    assert server.last_request["stream"] is True


async def test_async_stream() -> None:
    server = FakeChatServer().reply("async streaming", reasoning="hm", chunk_size=3)
    client = server.async_client()
    stream = await client.chat.completions.create(
        model="m", messages=USER, stream=True, stream_options={"include_usage": True}
    )
    text, reasoning, usage = "", "", None
    async for chunk in stream:
        if chunk.usage is not None:
            usage = chunk.usage
        for choice in chunk.choices:
            text += choice.delta.content or ""
            reasoning += getattr(choice.delta, "reasoning_content", None) or ""
    assert (text, reasoning) == ("async streaming", "hm")
    assert usage is not None and usage.completion_tokens == estimate_tokens("async streaming")


# --- several choices -----------------------------------------------------------------------------


def test_choices_non_stream_and_stream() -> None:
    choices = [
        ChoiceSpec("first answer"),
        ChoiceSpec(reasoning="hmm", tool_calls=[ToolCallSpec("f", {})]),
        ChoiceSpec("cut", finish_reason="length"),
    ]
    server = FakeChatServer().reply(choices=choices).reply(choices=choices, chunk_size=2)
    client = server.client()

    completion = client.chat.completions.create(model="m", messages=USER, n=3)
    got = [(c.index, c.message.content, c.finish_reason) for c in completion.choices]
    assert got == [(0, "first answer", "stop"), (1, None, "tool_calls"), (2, "cut", "length")]
    assert completion.choices[1].message.tool_calls is not None
    assert completion.choices[1].message.tool_calls[0].id == "call_1"
    # Ids are assigned once, when queued: the streamed copy gets its own.
    texts: dict[int, str] = {}
    finishes: dict[int, str] = {}
    indexes = []
    for chunk in client.chat.completions.create(model="m", messages=USER, n=3, stream=True):
        [choice] = chunk.choices
        indexes.append(choice.index)
        texts[choice.index] = texts.get(choice.index, "") + (choice.delta.content or "")
        if choice.finish_reason:
            finishes[choice.index] = choice.finish_reason
    assert texts == {0: "first answer", 1: "", 2: "cut"}
    assert finishes == {0: "stop", 1: "tool_calls", 2: "length"}
    assert indexes[:3] == [0, 1, 2]  # interleaved, not one choice after another


def test_request_n_does_not_invent_choices() -> None:
    server = FakeChatServer().reply("only one")
    completion = server.client().chat.completions.create(model="m", messages=USER, n=4)
    assert len(completion.choices) == 1
    assert server.last_request["n"] == 4


def test_choices_conflict_with_content() -> None:
    with pytest.raises(UsageError, match="either choices"):
        FakeChatServer().reply("x", choices=[ChoiceSpec("y")])


# --- structured output ---------------------------------------------------------------------------


class Person(pydantic.BaseModel):
    name: str
    age: int


def test_parse_with_reply_json() -> None:
    server = FakeChatServer().reply_json({"name": "Ada", "age": 36})
    completion = server.client().chat.completions.parse(
        model="m", messages=USER, response_format=Person
    )
    assert completion.choices[0].message.parsed == Person(name="Ada", age=36)
    fmt = server.last_request["response_format"]
    assert fmt["type"] == "json_schema"
    assert fmt["json_schema"]["name"] == "Person"


async def test_async_parse_with_reply_json() -> None:
    server = FakeChatServer().reply_json({"name": "Bo", "age": 2})
    completion = await server.async_client().chat.completions.parse(
        model="m", messages=USER, response_format=Person
    )
    assert completion.choices[0].message.parsed == Person(name="Bo", age=2)


# --- errors --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("status", "exc_type", "default_type"),
    [
        (400, openai.BadRequestError, "invalid_request_error"),
        (401, openai.AuthenticationError, "invalid_request_error"),
        (404, openai.NotFoundError, "invalid_request_error"),
        (429, openai.RateLimitError, "requests"),
        (500, openai.InternalServerError, "server_error"),
        (503, openai.InternalServerError, "server_error"),
    ],
)
def test_error_maps_to_sdk_exception(
    status: int, exc_type: type[openai.APIStatusError], default_type: str
) -> None:
    server = FakeChatServer().error(status, "boom", code="some_code")
    with pytest.raises(exc_type) as info:
        server.client().chat.completions.create(model="m", messages=USER)
    assert info.value.status_code == status
    assert info.value.code == "some_code"
    assert info.value.type == default_type
    assert info.value.body == {
        "message": "boom",
        "type": default_type,
        "code": "some_code",
        "param": None,
    }
    assert len(server.requests) == 1


def test_error_type_param_and_headers() -> None:
    server = FakeChatServer().error(
        400,
        "This model's maximum context length is 128000 tokens.",
        code="context_length_exceeded",
        type="invalid_request_error",
        param="messages",
        headers={"x-custom": "1"},
    )
    with pytest.raises(openai.BadRequestError) as info:
        server.client().chat.completions.create(model="m", messages=USER, stream=True)
    assert info.value.param == "messages"
    assert info.value.code == "context_length_exceeded"
    assert "maximum context length" in info.value.message
    assert info.value.response.headers["x-custom"] == "1"


async def test_async_error() -> None:
    server = FakeChatServer().error(429)
    with pytest.raises(openai.RateLimitError, match="scripted HTTP 429"):
        await server.async_client().chat.completions.create(model="m", messages=USER)


def test_retries_can_be_turned_back_on() -> None:
    server = FakeChatServer().error(500, headers={"retry-after-ms": "1"}).reply("second try")
    client = server.client(max_retries=1)
    completion = client.chat.completions.create(model="m", messages=USER)
    assert completion.choices[0].message.content == "second try"
    assert len(server.requests) == 2
    assert server.requests[0] == server.requests[1]


def test_timeout_and_disconnect() -> None:
    server = FakeChatServer().timeout().disconnect().reply("after")
    client = server.client()
    with pytest.raises(openai.APITimeoutError) as timeout:
        client.chat.completions.create(model="m", messages=USER)
    assert isinstance(timeout.value.__cause__, httpx2.ReadTimeout)
    with pytest.raises(openai.APIConnectionError) as disconnect:
        client.chat.completions.create(model="m", messages=USER, stream=True)
    assert not isinstance(disconnect.value, openai.APITimeoutError)
    assert isinstance(disconnect.value.__cause__, httpx2.ConnectError)
    assert client.chat.completions.create(model="m", messages=USER).choices[0].message.content
    assert len(server.requests) == 3


async def test_async_timeout_and_disconnect() -> None:
    server = FakeChatServer().timeout().disconnect()
    client = server.async_client()
    with pytest.raises(openai.APITimeoutError):
        await client.chat.completions.create(model="m", messages=USER)
    with pytest.raises(openai.APIConnectionError):
        await client.chat.completions.create(model="m", messages=USER)
    assert server.pending == 0


def test_empty_queue_is_a_loud_500() -> None:
    server = FakeChatServer()
    with pytest.raises(openai.InternalServerError, match="FakeChatServer: no reply queued") as e:
        server.client().chat.completions.create(model="m", messages=USER)
    assert e.value.code == "fake_queue_empty"
    assert server.requests == [{"model": "m", "messages": USER}]


def test_other_paths_are_404_and_not_chat_requests() -> None:
    server = FakeChatServer().reply("kept")
    client = server.client()
    with pytest.raises(openai.NotFoundError, match=r"only POST \.\.\./chat/completions"):
        client.embeddings.create(model="text-embedding-3-small", input="hi")
    assert server.requests == []
    assert server.pending == 1
    assert server.other_requests[0]["path"] == "/v1/embeddings"
    assert server.other_requests[0]["body"]["input"] == "hi"


# --- cut streams ---------------------------------------------------------------------------------


def test_cut_stream_raises_after_some_chunks() -> None:
    server = FakeChatServer().cut_stream("abcdefghijkl", after_chunks=3)
    stream = server.client().chat.completions.create(
        model="m", messages=USER, stream=True, stream_options={"include_usage": True}
    )
    received = []
    with pytest.raises(openai.APIConnectionError) as info:
        for chunk in stream:
            received.append(chunk)
    assert isinstance(info.value.__cause__, httpx2.RemoteProtocolError)
    assert [c.choices[0].delta.content for c in received] == ["", "abcd", "efgh"]
    assert all(c.choices[0].finish_reason is None for c in received)


def test_cut_stream_without_error_just_ends() -> None:
    server = FakeChatServer().cut_stream("abcdefghijkl", after_chunks=2, error=False)
    chunks = list(
        server.client().chat.completions.create(
            model="m", messages=USER, stream=True, stream_options={"include_usage": True}
        )
    )
    # The SDK ends quietly: the consumer must notice the missing finish_reason itself.
    assert [c.choices[0].delta.content for c in chunks] == ["", "abcd"]
    assert all(c.choices and c.choices[0].finish_reason is None for c in chunks)


def test_cut_stream_never_sends_the_finish_chunk() -> None:
    server = FakeChatServer().cut_stream("ab", after_chunks=50, error=False)
    chunks = list(server.client().chat.completions.create(model="m", messages=USER, stream=True))
    assert [c.choices[0].delta.content for c in chunks] == ["", "ab"]


def test_cut_stream_cuts_tool_call_arguments() -> None:
    server = FakeChatServer().cut_stream(
        "", tool_calls=[ToolCallSpec("f", {"long": "arguments"})], after_chunks=3
    )
    received = []
    with pytest.raises(openai.APIConnectionError):
        for chunk in server.client().chat.completions.create(model="m", messages=USER, stream=True):
            received.append(chunk)
    args = "".join(
        tc.function.arguments or ""
        for c in received
        for tc in c.choices[0].delta.tool_calls or []
        if tc.function
    )
    assert args == '{"lo'


def test_cut_stream_on_a_non_streamed_request() -> None:
    server = FakeChatServer().cut_stream("abc").cut_stream("abc", error=False)
    client = server.client()
    with pytest.raises(openai.APIConnectionError):
        client.chat.completions.create(model="m", messages=USER)
    with pytest.raises(json.JSONDecodeError):
        client.chat.completions.create(model="m", messages=USER)


async def test_async_cut_stream() -> None:
    server = FakeChatServer().cut_stream("abcdefgh", after_chunks=2)
    stream = await server.async_client().chat.completions.create(
        model="m", messages=USER, stream=True
    )
    received = []
    with pytest.raises(openai.APIConnectionError):
        async for chunk in stream:
            received.append(chunk.choices[0].delta.content)
    assert received == ["", "abcd"]


def test_cut_stream_rejects_negative_after_chunks() -> None:
    with pytest.raises(UsageError):
        FakeChatServer().cut_stream("x", after_chunks=-1)


# --- recording -----------------------------------------------------------------------------------


def test_requests_recorded_exactly_including_failures() -> None:
    server = FakeChatServer().reply("one").error(400)
    client = server.client()
    tools: Any = [{"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}]
    client.chat.completions.create(model="m", messages=USER, temperature=0.5, tools=tools)
    second: Any = [*USER, {"role": "assistant", "content": "one"}, {"role": "user", "content": "2"}]
    with pytest.raises(openai.BadRequestError):
        client.chat.completions.create(model="m2", messages=second)

    assert server.requests == [
        {"model": "m", "messages": USER, "temperature": 0.5, "tools": tools},
        {"model": "m2", "messages": second},
    ]
    assert server.last_request == server.requests[1]
    assert server.messages() == second
    assert server.messages(0) == USER


def test_reading_back_before_any_request() -> None:
    server = FakeChatServer()
    with pytest.raises(AssertionError, match="no request"):
        _ = server.last_request
    with pytest.raises(AssertionError, match="no request"):
        server.messages()


def test_pending_and_assert_all_used() -> None:
    server = FakeChatServer().reply("used").reply("never used").error(429).timeout()
    assert server.pending == 4
    server.client().chat.completions.create(model="m", messages=USER)
    assert server.pending == 3
    with pytest.raises(AssertionError) as info:
        server.assert_all_used()
    text = str(info.value)
    assert "3 queued item(s) never used" in text
    assert "'never used'" in text and "error(429" in text and "timeout()" in text
    assert "'used'" not in text

    empty = FakeChatServer().reply("x")
    empty.client().chat.completions.create(model="m", messages=USER)
    empty.assert_all_used()


# --- dynamic replies -----------------------------------------------------------------------------


def test_respond_with_sees_the_request() -> None:
    def echo(body: dict[str, Any]) -> str:
        return "you said: " + str(body["messages"][-1]["content"])

    server = (
        FakeChatServer()
        .respond_with(echo, times=2)
        .respond_with(lambda body: {"content": None, "tool_calls": [ToolCallSpec("f", {})]})
        .respond_with(lambda body: ChoiceSpec("choice", reasoning="r"))
        .respond_with(lambda body: httpx2.Response(418, json={"error": {"message": "teapot"}}))
    )
    assert server.pending == 5
    client = server.client()

    def ask(text: str) -> Any:
        messages: Any = [{"role": "user", "content": text}]
        return client.chat.completions.create(model="m", messages=messages)

    assert ask("a").choices[0].message.content == "you said: a"
    assert ask("b").choices[0].message.content == "you said: b"
    tool = ask("c").choices[0]
    assert tool.finish_reason == "tool_calls"
    assert tool.message.tool_calls[0].id == "call_1"
    choice = ask("d").choices[0].message
    assert (choice.content, choice.reasoning_content) == ("choice", "r")
    with pytest.raises(openai.APIStatusError, match="teapot") as info:
        ask("e")
    assert info.value.status_code == 418
    assert server.pending == 0


def test_respond_with_can_raise_and_renders_streams() -> None:
    def fail(body: dict[str, Any]) -> str:
        raise httpx2.ReadTimeout("slow")

    server = FakeChatServer().respond_with(fail).respond_with(lambda body: "streamed")
    client = server.client()
    with pytest.raises(openai.APITimeoutError):
        client.chat.completions.create(model="m", messages=USER)
    chunks = list(client.chat.completions.create(model="m", messages=USER, stream=True))
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == "streamed"


def test_respond_with_bad_return_type() -> None:
    server = FakeChatServer().respond_with(lambda body: 42)
    with pytest.raises(TypeError, match="respond_with"):
        server.client().chat.completions.create(model="m", messages=USER)


# --- validation ----------------------------------------------------------------------------------

CALL = {
    "role": "assistant",
    "content": None,
    "tool_calls": [{"id": "c1", "type": "function", "function": {"name": "f", "arguments": "{}"}}],
}


@pytest.mark.parametrize(
    ("messages", "problem"),
    [
        ([], "too short"),
        ([*USER, {"role": "tool", "tool_call_id": "c1", "content": "x"}], "role 'tool'"),
        ([*USER, CALL, {"role": "user", "content": "next"}], "did not have response"),
        ([*USER, CALL], "did not have response messages: c1"),
    ],
)
def test_validation_refuses_what_the_api_refuses(messages: Any, problem: str) -> None:
    server = FakeChatServer().reply("not consumed")
    with pytest.raises(openai.BadRequestError, match=problem):
        server.client().chat.completions.create(model="m", messages=messages)
    assert server.pending == 1
    assert server.requests == [{"model": "m", "messages": messages}]

    lenient = FakeChatServer(validate=False).reply("fine")
    content = (
        lenient.client().chat.completions.create(model="m", messages=messages).choices[0]
    ).message.content
    assert content == "fine"


def test_validation_accepts_a_complete_tool_round() -> None:
    two_calls = {
        "role": "assistant",
        "content": None,
        "tool_calls": [
            {"id": "c1", "type": "function", "function": {"name": "f", "arguments": "{}"}},
            {"id": "c2", "type": "function", "function": {"name": "g", "arguments": "{}"}},
        ],
    }
    messages: Any = [
        {"role": "system", "content": "s"},
        *USER,
        two_calls,
        {"role": "tool", "tool_call_id": "c2", "content": "2"},
        {"role": "tool", "tool_call_id": "c1", "content": "1"},
        {"role": "assistant", "content": "done"},
        {"role": "user", "content": "thanks"},
    ]
    server = FakeChatServer().reply("ok")
    completion = server.client().chat.completions.create(model="m", messages=messages)
    assert completion.choices[0].message.content == "ok"


# --- concurrency and delays ----------------------------------------------------------------------


async def test_concurrent_async_conversations_share_one_server() -> None:
    server = FakeChatServer().respond_with(
        lambda body: "re: " + body["messages"][-1]["content"], times=40
    )
    client = server.async_client()

    async def talk(i: int) -> list[str]:
        answers = []
        for turn in range(2):
            text = f"conv {i} turn {turn}"
            messages: Any = [{"role": "user", "content": text}]
            completion = await client.chat.completions.create(model="m", messages=messages)
            answers.append(completion.choices[0].message.content or "")
        return answers

    results = await asyncio.gather(*(talk(i) for i in range(20)))
    assert results == [[f"re: conv {i} turn {t}" for t in range(2)] for i in range(20)]
    assert len(server.requests) == 40
    server.assert_all_used()


def test_threads_share_one_server() -> None:
    server = FakeChatServer()
    for i in range(60):
        server.reply(f"answer {i}", tool_calls=[ToolCallSpec("f", {})])
    client = server.client()
    got: list[str] = []
    ids: list[str] = []
    lock = threading.Lock()

    def worker() -> None:
        for _ in range(10):
            message = client.chat.completions.create(model="m", messages=USER).choices[0].message
            with lock:
                got.append(message.content or "")
                ids.append(message.tool_calls[0].id)  # type: ignore[index]

    threads = [threading.Thread(target=worker) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(got) == sorted(f"answer {i}" for i in range(60))  # each reply used once
    assert sorted(ids) == sorted(f"call_{i}" for i in range(1, 61))
    assert server.pending == 0
    assert len(server.requests) == 60


async def test_async_delay_does_not_block_other_requests() -> None:
    server = FakeChatServer().reply("slow", delay=30).reply("fast")
    client = server.async_client()
    slow = asyncio.create_task(client.chat.completions.create(model="m", messages=USER))
    while not server.requests:  # let the slow request take the first item
        await asyncio.sleep(0)
    fast = await client.chat.completions.create(model="m", messages=USER)
    assert fast.choices[0].message.content == "fast"
    assert not slow.done()  # still waiting, and the event loop was never blocked
    slow.cancel()
    with pytest.raises(asyncio.CancelledError):
        await slow


def test_sync_delay_still_answers() -> None:
    server = FakeChatServer().reply("late", delay=0.01)
    completion = server.client().chat.completions.create(model="m", messages=USER)
    assert completion.choices[0].message.content == "late"


def test_bad_chunk_size() -> None:
    with pytest.raises(UsageError, match="chunk_size"):
        FakeChatServer().reply("x", chunk_size=0)


def test_bad_arguments() -> None:
    with pytest.raises(UsageError, match="times"):
        FakeChatServer().respond_with(lambda body: "x", times=0)
    with pytest.raises(UsageError, match="name"):
        FakeChatServer().reply(tool_calls=[{"arguments": "{}"}])
    with pytest.raises(UsageError, match="empty"):
        FakeChatServer().reply(choices=[])


def test_module_docstring_example_runs() -> None:
    doc = convmem.testing.__doc__ or ""
    example = doc.split("::\n", 1)[1]  # the indented block after "::"
    block = []
    for line in example.splitlines():
        if line and not line.startswith("    "):
            break
        block.append(line[4:])
    namespace: dict[str, Any] = {}
    exec("\n".join(block), namespace)
    namespace["test_my_loop_remembers"]()
