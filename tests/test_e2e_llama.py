"""End to end against a real OpenAI-compatible server: llama.cpp (xllamacpp) serving SmolLM2-135M.

The model is tiny, so these tests check the plumbing (what was sent, what was committed), not
the quality of the answers.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

import httpx2
import pytest

from convmem import (
    AsyncConversation,
    ContextOverflowError,
    Conversation,
    StreamEnd,
    TextDelta,
    UsageEvent,
)
from convmem.quoting import quote_lines
from convmem.strategies import Pipeline, RollingSummary, Truncate

pytestmark = pytest.mark.llama


class Recorder:
    """An openai client whose every request body is recorded at the HTTP layer."""

    def __init__(self, server: Any) -> None:
        self.bodies: list[dict[str, Any]] = []

        def hook(request: httpx2.Request) -> None:
            if request.url.path.endswith("/chat/completions"):
                self.bodies.append(json.loads(request.read()))

        self.client = server.client(http_client=httpx2.Client(event_hooks={"request": [hook]}))


def conv_for(server: Any, **kw: Any) -> Conversation:
    kw.setdefault("system", "You are a helpful assistant. Answer briefly.")
    return Conversation(
        server.client(), model=server.model, context_window=server.context_window, **kw
    )


def test_plain_call(llama_server: Any) -> None:
    conv = conv_for(llama_server)
    reply = conv.send("Say hello.", max_tokens=16, temperature=0)
    text = reply.choices[0].message.content
    assert isinstance(text, str) and text
    assert conv.messages[-1] == {"role": "assistant", "content": text}
    assert conv.usage.prompt_tokens > 0 and conv.usage.completion_tokens > 0
    plan = conv.last_plan
    assert plan is not None and plan.reported_prompt_tokens == reply.usage.prompt_tokens  # type: ignore[union-attr]


def test_streamed_call_with_usage(llama_server: Any) -> None:
    conv = conv_for(llama_server)
    events = list(conv.stream("Count to three.", max_tokens=16, temperature=0))
    text = "".join(e.text for e in events if isinstance(e, TextDelta))
    usage = [e for e in events if isinstance(e, UsageEvent)]
    end = events[-1]
    assert text and usage and usage[0].usage.prompt_tokens > 0
    assert isinstance(end, StreamEnd) and end.ttft is not None and end.latency >= end.ttft
    assert conv.messages[-1]["content"] == text


def test_json_mode(llama_server: Any) -> None:
    conv = conv_for(llama_server)
    reply = conv.send(
        'Give a JSON object with a key "color" whose value is a colour name.',
        response_format={"type": "json_object"},
        max_tokens=48,
        temperature=0,
    )
    data = json.loads(reply.choices[0].message.content or "")
    assert isinstance(data, dict)


def test_third_request_carries_the_first_two_turns(llama_server: Any) -> None:
    rec = Recorder(llama_server)
    conv = conv_for(llama_server)
    conv.client = rec.client
    conv.send("My name is Xiaoming.", max_tokens=12, temperature=0)
    conv.send("I live in Hangzhou.", max_tokens=12, temperature=0)
    conv.send("Where do I live?", max_tokens=12, temperature=0)
    third = rec.bodies[2]["messages"]
    assert [m["role"] for m in third] == [
        "system",
        "user",
        "assistant",
        "user",
        "assistant",
        "user",
    ]
    assert third[1]["content"] == "My name is Xiaoming."
    assert third[3]["content"] == "I live in Hangzhou."
    assert third[2] == conv.messages[2] and third[4] == conv.messages[4]


def test_context_overflow_400_is_learnt_and_history_unchanged(llama_server: Any) -> None:
    # Claim a much bigger window than the server has, so convmem sends and the server refuses;
    # KeepAll cannot send less, so the error carries the server's own numbers.
    conv = Conversation(llama_server.client(), model=llama_server.model, context_window=100_000)
    conv.send("Hi", max_tokens=8)
    before = conv.messages
    with pytest.raises(ContextOverflowError) as info:
        conv.send("lorem ipsum dolor sit amet " * 800, max_tokens=8)
    assert conv.messages == before
    assert info.value.context_window == llama_server.context_window
    assert info.value.needed > llama_server.context_window
    assert isinstance(info.value.__cause__, ContextOverflowError)
    assert "llama.cpp" in str(info.value) and "KeepAll" in str(info.value)
    assert conv.context_window == llama_server.context_window  # learnt
    assert conv.window is not None and conv.window.source == "learnt"


def test_async_conversations_concurrently(llama_server: Any) -> None:
    async def main() -> list[list[dict[str, Any]]]:
        convs = [
            AsyncConversation(
                llama_server.async_client(),
                model=llama_server.model,
                context_window=llama_server.context_window,
            )
            for _ in range(3)
        ]
        await asyncio.gather(
            *(c.send(f"Say the number {i}.", max_tokens=8) for i, c in enumerate(convs))
        )
        return [c.messages for c in convs]

    results = asyncio.run(main())
    for i, msgs in enumerate(results):
        assert msgs[0] == {"role": "user", "content": f"Say the number {i}."}
        assert msgs[1]["role"] == "assistant"


def test_rolling_summary_calls_the_real_model(llama_server: Any) -> None:
    """The summary call really happens over HTTP and the next request carries it."""
    rec = Recorder(llama_server)
    conv = Conversation(
        rec.client,
        model=llama_server.model,
        context_window=1024,
        reply_reserve=64,
        system="You are a helpful assistant.",
        strategy=Pipeline(RollingSummary(max_summary_tokens=96), Truncate()),
    )
    facts = [
        "My name is Lena.",
        "My cat is called Miso.",
        "I work as a nurse in Graz.",
        "My sister Anna lives in Vienna.",
        "I was born on 3 May 1990.",
    ]
    conv.extend(
        [
            m
            for i, f in enumerate(facts * 3)
            for m in (
                {
                    "role": "user",
                    "content": f"{f} " + "Tell me something about the weather today please. " * 4,
                },
                {
                    "role": "assistant",
                    "content": "Thank you for telling me. The weather is mild and calm today. " * 3,
                },
            )
        ]
    )
    conv.send("What is my cat called?", max_tokens=24, temperature=0)
    plan = conv.last_plan
    assert plan is not None
    assert plan.summary_calls and plan.summary_calls[0].ok, plan.summary_calls
    summariser_bodies = [b for b in rec.bodies if "keep the memory" in b["messages"][0]["content"]]
    assert len(summariser_bodies) == 1
    final = rec.bodies[-1]["messages"]
    assert final[1]["content"].startswith("Summary of the earlier conversation")
    summary = conv.history.latest_summary
    assert summary is not None and quote_lines(summary.text) in final[1]["content"]
    assert conv.usage.summary_calls == 1 and conv.usage.summary_prompt_tokens > 0
    assert len(conv.messages) == 1 + 2 * 15 + 2  # history untouched
