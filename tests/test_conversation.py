"""Conversation behaviour through the fake server, asserting on the exact request bodies."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import openai
import pytest
from pydantic import BaseModel

from convmem import (
    AsyncConversation,
    ContextOverflowError,
    Conversation,
    InvalidMessageError,
    ReasoningDelta,
    StreamEnd,
    StreamIncompleteError,
    TextDelta,
    ToolCallDelta,
    ToolResult,
    ToolRoundsExceededError,
    UnknownModelError,
    UsageError,
    UsageEvent,
)
from convmem.testing import ChoiceSpec, FakeChatServer, ToolCallSpec


def make(server: FakeChatServer, **kw: Any) -> Conversation:
    kw.setdefault("model", "gpt-4o-mini")
    kw.setdefault("system", "You are terse.")
    return Conversation(server.client(), **kw)


SYS = {"role": "system", "content": "You are terse."}


def test_three_turns_carry_the_history() -> None:
    server = FakeChatServer().reply("Hello Xiaoming").reply("Noted").reply("You are Xiaoming")
    conv = make(server)
    r = conv.send("Hi, I am Xiaoming", temperature=0.5)
    assert r.choices[0].message.content == "Hello Xiaoming"
    conv.send("I like tea")
    conv.send("Who am I?")
    assert server.requests[0] == {
        "model": "gpt-4o-mini",
        "messages": [SYS, {"role": "user", "content": "Hi, I am Xiaoming"}],
        "temperature": 0.5,
    }
    assert server.requests[2]["messages"] == [
        SYS,
        {"role": "user", "content": "Hi, I am Xiaoming"},
        {"role": "assistant", "content": "Hello Xiaoming"},
        {"role": "user", "content": "I like tea"},
        {"role": "assistant", "content": "Noted"},
        {"role": "user", "content": "Who am I?"},
    ]
    assert conv.messages == [
        *server.requests[2]["messages"],
        {"role": "assistant", "content": "You are Xiaoming"},
    ]
    assert [t.id for t in conv.turns] == [0, 1, 2]
    assert conv.usage.calls == 3 and conv.usage.prompt_tokens > 0


def test_pass_through_params_unchanged() -> None:
    server = FakeChatServer().reply("ok")
    conv = make(server)
    params = {
        "temperature": 0.1,
        "top_p": 0.9,
        "max_tokens": 50,
        "stop": ["\n\n"],
        "seed": 7,
        "response_format": {"type": "json_object"},
        "tool_choice": "none",
        "extra_body": {"enable_thinking": True, "thinking_budget": 50},
    }
    conv.send("x", **params)
    body = server.last_request
    for k, v in params.items():
        if k == "extra_body":
            assert body["enable_thinking"] is True and body["thinking_budget"] == 50
        else:
            assert body[k] == v


def test_image_parts_are_sent() -> None:
    server = FakeChatServer().reply("a cat")
    conv = make(server)
    parts = [
        {"type": "text", "text": "What is this?"},
        {"type": "image_url", "image_url": {"url": "https://example.com/cat.png", "detail": "low"}},
    ]
    conv.send(parts)
    assert server.last_request["messages"][-1] == {"role": "user", "content": parts}
    assert conv.last_plan is not None
    # 85 tokens for a low-detail image, plus the text and overheads.
    assert conv.last_plan.section("recent").tokens >= 85  # type: ignore[union-attr]


@pytest.mark.parametrize(
    "fail",
    [
        lambda s: s.error(500, "boom"),
        lambda s: s.error(429, "slow down"),
        lambda s: s.error(400, "context length exceeded"),
        lambda s: s.timeout(),
        lambda s: s.disconnect(),
    ],
)
def test_failed_call_leaves_history_unchanged(fail: Any) -> None:
    server = FakeChatServer().reply("one")
    conv = make(server)
    conv.send("first")
    before = conv.messages
    fail(server)
    with pytest.raises(openai.APIError):
        conv.send("second")
    assert conv.messages == before
    server.reply("two")
    conv.send("second")
    assert server.last_request["messages"][-1] == {"role": "user", "content": "second"}
    assert len(conv.turns) == 2


def test_invalid_input_raises_before_any_request() -> None:
    server = FakeChatServer()
    conv = make(server)
    with pytest.raises(InvalidMessageError):
        conv.send({"role": "user"})
    with pytest.raises(InvalidMessageError):
        conv.send(42)  # type: ignore[arg-type]
    with pytest.raises(UsageError, match="messages="):
        conv.send("x", messages=[])
    with pytest.raises(UsageError, match="stream"):
        conv.send("x", stream=True)
    with pytest.raises(UsageError, match="nothing to send"):
        conv.send()
    with pytest.raises(UsageError, match="max_tokens"):
        conv.send("x", max_tokens=10**9)
    with pytest.raises(InvalidMessageError):
        conv.extend([{"role": "tool", "tool_call_id": "nope", "content": "1"}])
    assert server.requests == []


def test_unknown_model_needs_a_window() -> None:
    server = FakeChatServer()
    with pytest.raises(UnknownModelError, match="context_window"):
        Conversation(server.client(), model="my-private-model")
    conv = Conversation(server.client(), model="my-private-model", context_window=4096)
    assert conv.context_window == 4096


def test_keep_all_overflow_raises_with_numbers_and_sends_nothing() -> None:
    server = FakeChatServer().reply("ok")
    conv = make(server, model="m", context_window=300, reply_reserve=50)
    conv.send("short")
    with pytest.raises(ContextOverflowError) as info:
        conv.send("word " * 400)
    err = info.value
    assert err.budget == 250 and err.needed > 250 and err.context_window == 300
    assert len(server.requests) == 1
    assert len(conv.turns) == 1


def test_budget_smaller_than_system_prompt_is_a_usage_error() -> None:
    server = FakeChatServer()
    conv = make(server, model="m", context_window=100, reply_reserve=50, system="rules " * 200)
    with pytest.raises(UsageError, match="system prompt"):
        conv.send("hi")
    assert server.requests == []


def test_extend_then_send_and_json_round_trip() -> None:
    server = FakeChatServer().reply("Paris")
    conv = make(server)
    conv.extend(
        [{"role": "user", "content": "I live in France"}, {"role": "assistant", "content": "Nice"}]
    )
    conv.send("Capital?")
    assert server.last_request["messages"][1:3] == [
        {"role": "user", "content": "I live in France"},
        {"role": "assistant", "content": "Nice"},
    ]
    saved = conv.to_json()
    back = Conversation.from_json(server.client(), saved)
    assert back.messages == conv.messages
    assert back.model == "gpt-4o-mini"
    assert back.conversation_id == conv.conversation_id
    conv.clear()
    assert conv.messages == [SYS]


def test_stream_events_commit_and_timings() -> None:
    server = FakeChatServer().reply("Hello there friend", reasoning="user greets", chunk_size=5)
    conv = make(server)
    events = list(conv.stream("Hi"))
    text = "".join(e.text for e in events if isinstance(e, TextDelta))
    reasoning = "".join(e.text for e in events if isinstance(e, ReasoningDelta))
    assert text == "Hello there friend"
    assert reasoning == "user greets"
    assert any(isinstance(e, UsageEvent) for e in events)
    end = events[-1]
    assert isinstance(end, StreamEnd)
    assert end.ttft is not None and end.latency >= end.ttft
    assert server.last_request["stream"] is True
    assert server.last_request["stream_options"] == {"include_usage": True}
    assert conv.messages[-1] == {
        "role": "assistant",
        "content": "Hello there friend",
        "reasoning_content": "user greets",
    }
    assert conv.usage.calls == 1 and conv.usage.completion_tokens > 0


def test_last_plan_is_the_streams_own_plan_at_its_usage_event() -> None:
    """Issue 14.4: a consumer reading ``conv.last_plan`` at the usage event gets this call's
    plan (the one that sent the new message), not the previous call's; sync and async."""
    server = FakeChatServer().reply("first").reply("Hello there", chunk_size=3)
    conv = make(server)
    conv.send("one")
    seen = []
    for event in conv.stream("two"):
        if isinstance(event, UsageEvent):
            assert conv.last_plan is not None
            seen.append(conv.last_plan.messages[-1])
    assert seen == [{"role": "user", "content": "two"}]

    async def main() -> list[Any]:
        aserver = FakeChatServer().reply("first").reply("Hello there", chunk_size=3)
        aconv = AsyncConversation(aserver.async_client(), model="gpt-4o-mini", system="sys")
        await aconv.send("one")
        seen = []
        async for event in aconv.stream("two"):
            if isinstance(event, UsageEvent):
                assert aconv.last_plan is not None
                seen.append(aconv.last_plan.messages[-1])
        return seen

    assert asyncio.run(main()) == [{"role": "user", "content": "two"}]


def test_stream_respects_caller_stream_options() -> None:
    server = FakeChatServer().reply("ok")
    conv = make(server)
    events = list(conv.stream("Hi", stream_options={"include_usage": False}))
    assert server.last_request["stream_options"] == {"include_usage": False}
    assert not any(isinstance(e, UsageEvent) for e in events)


def test_cut_stream_commits_nothing() -> None:
    server = FakeChatServer().cut_stream("this will never finish", after_chunks=2)
    conv = make(server)
    with pytest.raises(Exception):  # noqa: B017 - transport error type is the SDK's business
        list(conv.stream("Hi"))
    assert conv.messages == [SYS]
    server.cut_stream("ends early", after_chunks=2, error=False)
    with pytest.raises(StreamIncompleteError):
        list(conv.stream("Hi"))
    assert conv.messages == [SYS]


def test_stream_abandoned_midway_commits_nothing() -> None:
    server = FakeChatServer().reply("a long answer in many pieces", chunk_size=2)
    conv = make(server)
    gen = conv.stream("Hi")
    next(gen)
    next(gen)
    gen.close()  # what a KeyboardInterrupt in the consumer's loop amounts to
    assert conv.messages == [SYS]
    server.reply("again")
    list(conv.stream("Hi"))  # the lock was released
    assert len(conv.turns) == 1


def test_keyboard_interrupt_during_stream_commits_nothing() -> None:
    server = FakeChatServer().reply("a long answer in many pieces", chunk_size=2)
    conv = make(server)
    with pytest.raises(KeyboardInterrupt):
        for i, _ev in enumerate(conv.stream("Hi")):
            if i == 3:
                raise KeyboardInterrupt
    assert conv.messages == [SYS]


def test_reasoning_not_sent_back_by_default_but_switch_sends_it() -> None:
    for send_reasoning in (False, True):
        server = FakeChatServer().reply("4", reasoning="2+2=4").reply("ok")
        conv = make(server, send_reasoning=send_reasoning)
        conv.send("2+2?", extra_body={"enable_thinking": True, "thinking_budget": 50})
        assert conv.messages[-1]["reasoning_content"] == "2+2=4"
        conv.send("thanks")
        sent = server.last_request["messages"][2]
        assert ("reasoning_content" in sent) is send_reasoning


def get_weather(city: str) -> str:
    """Current weather.

    Args:
        city: The city name.
    """
    return f"sunny in {city}"


def test_tool_loop_runs_functions_and_commits_the_whole_turn() -> None:
    server = (
        FakeChatServer()
        .reply(
            None,
            tool_calls=[
                ToolCallSpec("get_weather", {"city": "Paris"}, id="call_a"),
                ToolCallSpec("get_weather", {"city": "Rome"}, id="call_b"),
            ],
        )
        .reply("Paris and Rome are sunny")
    )
    conv = make(server)
    r = conv.send("Weather in Paris and Rome?", tools=[get_weather])
    assert r.choices[0].message.content == "Paris and Rome are sunny"
    second = server.requests[1]
    assert second["tools"][0]["function"]["name"] == "get_weather"
    assert second["messages"][-2:] == [
        {"role": "tool", "tool_call_id": "call_a", "content": "sunny in Paris"},
        {"role": "tool", "tool_call_id": "call_b", "content": "sunny in Rome"},
    ]
    assert [m["role"] for m in conv.messages] == [
        "system",
        "user",
        "assistant",
        "tool",
        "tool",
        "assistant",
    ]
    assert len(conv.turns) == 1


def test_bad_tool_arguments_become_a_readable_tool_message() -> None:
    server = (
        FakeChatServer()
        .reply(None, tool_calls=[ToolCallSpec("get_weather", '{"city": ', id="c1")])
        .reply("sorry")
    )
    conv = make(server)
    conv.send("weather?", tools=[get_weather])
    tool_msg = server.requests[1]["messages"][-1]
    assert tool_msg["role"] == "tool" and tool_msg["content"].startswith("Error")


def test_tool_rounds_exceeded_commits_nothing() -> None:
    server = FakeChatServer()
    for _ in range(3):
        server.reply(None, tool_calls=[ToolCallSpec("get_weather", {"city": "X"})])
    conv = make(server)
    with pytest.raises(ToolRoundsExceededError):
        conv.send("loop", tools=[get_weather], max_tool_rounds=2)
    assert conv.messages == [SYS]


def test_schema_only_tools_are_returned_to_the_caller() -> None:
    schema = {
        "type": "function",
        "function": {"name": "lookup", "parameters": {"type": "object", "properties": {}}},
    }
    server = (
        FakeChatServer().reply(None, tool_calls=[ToolCallSpec("lookup", {}, id="c9")]).reply("done")
    )
    conv = make(server)
    r = conv.send("look it up", tools=[schema])
    assert r.choices[0].message.tool_calls is not None
    with pytest.raises(InvalidMessageError, match="no tool reply"):
        conv.send("next question")
    conv.extend([{"role": "tool", "tool_call_id": "c9", "content": "found"}])
    conv.send()
    assert server.last_request["messages"][-1] == {
        "role": "tool",
        "tool_call_id": "c9",
        "content": "found",
    }
    assert len(conv.turns) == 1


def test_stream_with_tools_yields_deltas_and_results() -> None:
    server = (
        FakeChatServer()
        .reply(None, tool_calls=[ToolCallSpec("get_weather", {"city": "Oslo"}, id="c1")])
        .reply("Oslo is sunny")
    )
    conv = make(server)
    events = list(conv.stream("Oslo?", tools=[get_weather]))
    assert any(isinstance(e, ToolCallDelta) and e.name == "get_weather" for e in events)
    results = [e for e in events if isinstance(e, ToolResult)]
    assert results[0].message["content"] == "sunny in Oslo"
    assert isinstance(events[-1], StreamEnd) and events[-1].text == "Oslo is sunny"
    assert [m["role"] for m in conv.messages] == [
        "system",
        "user",
        "assistant",
        "tool",
        "assistant",
    ]


def test_n_choices_commit_first_or_chosen() -> None:
    server = FakeChatServer().reply(choices=[ChoiceSpec("short"), ChoiceSpec("a longer one")])
    conv = make(server)
    conv.send("x", n=2)
    assert conv.messages[-1]["content"] == "short"
    server.reply(choices=[ChoiceSpec("short"), ChoiceSpec("a longer one")])
    conv.send(
        "y",
        n=2,
        choose=lambda c: max(
            range(len(c.choices)), key=lambda i: len(c.choices[i].message.content or "")
        ),
    )
    assert conv.messages[-1]["content"] == "a longer one"
    assert server.last_request["n"] == 2


class Person(BaseModel):
    name: str
    age: int


def test_parse_returns_pydantic_object() -> None:
    server = FakeChatServer().reply_json({"name": "Ada", "age": 36})
    conv = make(server)
    person = conv.parse("Extract: Ada, 36", response_format=Person)
    assert person == Person(name="Ada", age=36)
    assert server.last_request["response_format"]["type"] == "json_schema"
    assert json.loads(conv.messages[-1]["content"]) == {"name": "Ada", "age": 36}


def test_plan_records_sections_and_reported_tokens() -> None:
    server = FakeChatServer().reply(
        "a", usage={"prompt_tokens": 40, "completion_tokens": 1, "total_tokens": 41}
    )
    conv = make(server)
    conv.send("hello")
    plan = conv.last_plan
    assert plan is not None
    assert plan.reported_prompt_tokens == 40
    assert plan.section("system") is not None and plan.section("recent") is not None
    assert plan.messages == server.last_request["messages"]
    assert json.loads(plan.to_json())["reported_prompt_tokens"] == 40
    assert "ContextPlan[KeepAll]" in str(plan)


def test_calibration_learns_from_reported_usage() -> None:
    server = FakeChatServer()
    conv = make(server)
    for i in range(4):
        estimate = conv.preview(f"message {i}").estimated_tokens
        # The server bills twice what convmem estimates.
        server.reply(
            "ok",
            usage={
                "prompt_tokens": 2 * estimate,
                "completion_tokens": 1,
                "total_tokens": 2 * estimate + 1,
            },
        )
        conv.send(f"message {i}")
        assert conv.last_plan is not None
        assert conv.last_plan.reported_prompt_tokens == 2 * estimate
    assert conv.calibrator.ratio("gpt-4o-mini") > 1.5
    plan = conv.preview("next")
    assert plan.corrected_tokens > 1.5 * plan.estimated_tokens


def test_preview_makes_no_call() -> None:
    server = FakeChatServer()
    conv = make(server)
    plan = conv.preview("what would you send?")
    assert plan.messages[-1] == {"role": "user", "content": "what would you send?"}
    assert server.requests == []
    assert conv.messages == [SYS]


def test_keyboard_interrupt_during_send_commits_nothing() -> None:
    server = FakeChatServer().reply("one")
    conv = make(server)
    conv.send("first")
    before = conv.messages

    def interrupt(body: dict[str, Any]) -> Any:
        raise KeyboardInterrupt

    server.respond_with(interrupt)
    with pytest.raises(KeyboardInterrupt):
        conv.send("second")
    assert conv.messages == before


def test_stream_n_choices_commits_the_chosen_one() -> None:
    server = FakeChatServer().reply(choices=[ChoiceSpec("alpha"), ChoiceSpec("beta gamma")])
    conv = make(server)
    events = list(conv.stream("x", n=2, choose=lambda c: 1))
    deltas = {e.choice for e in events if isinstance(e, TextDelta)}
    assert deltas == {0, 1}
    end = events[-1]
    assert isinstance(end, StreamEnd) and len(end.completion.choices) == 2
    assert conv.messages[-1]["content"] == "beta gamma"


def test_prepare_next_without_a_summary_strategy_does_nothing() -> None:
    server = FakeChatServer()
    conv = make(server)
    conv.extend([{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}])
    assert conv.prepare_next() is None
    assert server.requests == []
