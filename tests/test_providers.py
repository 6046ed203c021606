"""Servers other than OpenAI: windows from the server, overflow recovery, reasoning fields.

The real llama.cpp server is exercised in ``test_e2e_llama.py``. What cannot run here (vLLM,
Ollama, DashScope) is faked at the HTTP transport, shaped like the real thing: their
``/models`` bodies, their tokenize endpoints, their error bodies (``tests/fixtures/
overflow_errors.json``, collected from the servers' sources and issue threads) and their
reasoning fields.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx2
import openai
import pytest

from convmem import AsyncConversation, ContextOverflowError, Conversation, UnknownModelError
from convmem.events import ReasoningDelta, StreamEnd
from convmem.providers import (
    Overflow,
    discover,
    forget_servers,
    overflow_from_exception,
    parse_overflow,
)
from convmem.strategies import Truncate
from convmem.testing import FakeChatServer

FIXTURES = json.loads((Path(__file__).parent / "fixtures" / "overflow_errors.json").read_text())


@pytest.fixture(autouse=True)
def _fresh_servers() -> Iterator[None]:
    forget_servers()
    yield
    forget_servers()


# -- recognising overflow errors -------------------------------------------------------------


@pytest.mark.parametrize("case", FIXTURES["overflows"], ids=lambda c: c["name"])
def test_every_real_overflow_body_is_recognised_with_its_numbers(case: dict[str, Any]) -> None:
    overflow = parse_overflow(case["status"], case["body"])
    assert overflow is not None
    assert overflow.provider == case["provider"]
    got = {
        key: getattr(overflow, key)
        for key in ("context_window", "prompt_tokens", "completion_tokens", "max_prompt_tokens")
        if getattr(overflow, key) is not None
    }
    assert got == case["expect"]
    # Raw text works as well as parsed JSON.
    assert parse_overflow(case["status"], json.dumps(case["body"])) == overflow


@pytest.mark.parametrize("case", FIXTURES["not_overflows"], ids=lambda c: c["name"])
def test_other_errors_are_not_overflows(case: dict[str, Any]) -> None:
    assert parse_overflow(case["status"], case["body"]) is None


def test_prompt_limit_from_what_the_server_said() -> None:
    assert Overflow("vllm", "", context_window=4096, completion_tokens=8000).prompt_limit == -3904
    assert Overflow("dashscope", "", max_prompt_tokens=129024).prompt_limit == 129024
    assert Overflow("llama.cpp", "", context_window=2048).prompt_limit is None


def test_overflow_from_an_sdk_exception() -> None:
    body = FIXTURES["overflows"][6]["body"]  # llama.cpp

    def handler(request: httpx2.Request) -> httpx2.Response:
        return httpx2.Response(400, json=body)

    client = _client(handler)
    with pytest.raises(openai.BadRequestError) as info:
        client.chat.completions.create(model="m", messages=[{"role": "user", "content": "x"}])
    overflow = overflow_from_exception(info.value)
    assert overflow is not None and overflow.context_window == 2048
    assert overflow_from_exception(ValueError("no")) is None


# -- fakes shaped like the real servers ------------------------------------------------------


def _client(
    handler: Callable[[httpx2.Request], httpx2.Response], base: str = "http://srv.test/v1"
) -> openai.OpenAI:
    return openai.OpenAI(
        api_key="test",
        base_url=base,
        max_retries=0,
        http_client=httpx2.Client(transport=httpx2.MockTransport(handler)),
    )


def _async_client(
    handler: Callable[[httpx2.Request], httpx2.Response], base: str = "http://srv.test/v1"
) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(
        api_key="test",
        base_url=base,
        max_retries=0,
        http_client=httpx2.AsyncClient(transport=httpx2.MockTransport(handler)),
    )


def _completion(model: str, message: dict[str, Any], prompt_tokens: int) -> dict[str, Any]:
    return {
        "id": "chatcmpl-fake",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model,
        "choices": [{"index": 0, "message": message, "finish_reason": "stop", "logprobs": None}],
        "usage": {
            "prompt_tokens": prompt_tokens,
            "completion_tokens": 5,
            "total_tokens": prompt_tokens + 5,
        },
    }


def _sse(chunks: list[dict[str, Any]]) -> httpx2.Response:
    body = "".join(f"data: {json.dumps(c)}\n\n" for c in chunks) + "data: [DONE]\n\n"
    return httpx2.Response(
        200, content=body.encode(), headers={"content-type": "text/event-stream"}
    )


def _chunk(model: str, delta: dict[str, Any], finish: str | None = None) -> dict[str, Any]:
    return {
        "id": "chatcmpl-fake",
        "object": "chat.completion.chunk",
        "created": int(time.time()),
        "model": model,
        "choices": [{"index": 0, "delta": delta, "finish_reason": finish, "logprobs": None}],
    }


class FakeVLLM:
    """vLLM's OpenAI server: /v1/models with max_model_len, /tokenize, its 400 body, and its
    ``reasoning`` field (recent versions) with a reasoning parser on.

    Its tokenizer: one token per 3 characters of ASCII, one per CJK character, 12 tokens of
    chat template per message.
    """

    def __init__(self, model: str = "Qwen/Qwen3-4B", window: int = 32768) -> None:
        self.model = model
        self.window = window
        self.chat_bodies: list[dict[str, Any]] = []
        self.refused = 0
        self.paths: list[str] = []

    @staticmethod
    def count_text(text: str) -> int:
        ascii_chars = sum(1 for ch in text if ord(ch) < 128)
        return -(-ascii_chars // 3) + (len(text) - ascii_chars)

    def count_messages(self, messages: list[dict[str, Any]]) -> int:
        return sum(12 + self.count_text(str(m.get("content") or "")) for m in messages)

    def __call__(self, request: httpx2.Request) -> httpx2.Response:
        path = request.url.path
        self.paths.append(f"{request.method} {path}")
        if path == "/v1/models":
            return httpx2.Response(
                200,
                json={
                    "object": "list",
                    "data": [
                        {
                            "id": self.model,
                            "object": "model",
                            "created": 1735000000,
                            "owned_by": "vllm",
                            "root": self.model,
                            "parent": None,
                            "max_model_len": self.window,
                            "permission": [],
                        }
                    ],
                },
            )
        body = json.loads(request.read() or b"{}")
        if path == "/tokenize":
            if "messages" in body:
                n = self.count_messages(body["messages"])
            else:
                n = self.count_text(body["prompt"])
            return httpx2.Response(
                200, json={"count": n, "max_model_len": self.window, "tokens": list(range(n))}
            )
        if path == "/v1/chat/completions":
            self.chat_bodies.append(body)
            prompt = self.count_messages(body["messages"])
            if prompt >= self.window:
                self.refused += 1
                return httpx2.Response(
                    400,
                    json={
                        "error": {
                            "message": f"This model's maximum context length is {self.window} "
                            f"tokens. However, your request has {prompt} input tokens. Please "
                            "reduce the length of the input messages. None",
                            "type": "BadRequestError",
                            "param": None,
                            "code": 400,
                        }
                    },
                )
            if body.get("stream"):
                return _sse(
                    [
                        _chunk(self.model, {"role": "assistant", "content": ""}),
                        _chunk(self.model, {"reasoning": "The user "}),
                        _chunk(self.model, {"reasoning": "says hi."}),
                        _chunk(self.model, {"content": "Hello!"}),
                        _chunk(self.model, {}, "stop"),
                        {
                            **_chunk(self.model, {}),
                            "choices": [],
                            "usage": {
                                "prompt_tokens": prompt,
                                "completion_tokens": 5,
                                "total_tokens": prompt + 5,
                            },
                        },
                    ]
                )
            message = {"role": "assistant", "content": "Hello!", "reasoning": "Think first."}
            return httpx2.Response(200, json=_completion(self.model, message, prompt))
        return httpx2.Response(404, json={"detail": "Not Found"})


def test_vllm_window_comes_from_its_model_list_and_the_plan_says_so() -> None:
    server = FakeVLLM(model="my-org/support-bot-v2", window=8192)
    conv = Conversation(_client(server), model="my-org/support-bot-v2")
    assert conv.context_window == 8192
    assert conv.window is not None and conv.window.source == "server"
    conv.send("hi")
    plan = conv.last_plan
    assert plan is not None and "vLLM /v1/models max_model_len" in plan.window_source
    assert "8192 (server" in str(plan)
    # Asked once per client and model: a second conversation does not ask again.
    asked = server.paths.count("GET /v1/models")
    Conversation(_client(server), model="my-org/support-bot-v2")
    assert server.paths.count("GET /v1/models") == asked == 1


def test_the_servers_window_wins_over_the_table() -> None:
    server = FakeVLLM(model="Qwen/Qwen3-4B", window=16384)
    conv = Conversation(_client(server), model="Qwen/Qwen3-4B")
    assert conv.context_window == 32768  # the table, until the server is asked
    conv.send("hi")
    assert conv.context_window == 16384
    assert conv.window is not None and conv.window.source == "server"
    # Or asked up front, over the table:
    eager = Conversation(_client(server), model="Qwen/Qwen3-4B", context_window="server")
    assert eager.context_window == 16384
    # The caller's own figure is never overridden by the server's.
    mine = Conversation(_client(server), model="Qwen/Qwen3-4B", context_window=4096)
    mine.send("hi")
    assert mine.context_window == 4096 and mine.window is not None
    assert mine.window.source == "caller"


def test_a_server_that_cannot_tell_still_gets_unknown_model_error() -> None:
    fake = FakeChatServer()
    with pytest.raises(UnknownModelError, match="context_window"):
        Conversation(fake.client(), model="my-private-model")
    with pytest.raises(UnknownModelError):
        Conversation(fake.client(), model="gpt-4o", context_window="server")


def test_vllm_tokenize_calibrates_the_count_before_the_first_call() -> None:
    server = FakeVLLM(model="my-qwen", window=8192)
    conv = Conversation(_client(server), model="my-qwen", strategy=Truncate())
    chinese = "小明住在杭州，他每天早上七点起床，然后骑自行车去公司上班。" * 8
    conv.send(chinese)
    plan = conv.last_plan
    assert plan is not None and plan.reported_prompt_tokens is not None
    assert "POST /tokenize" in server.paths
    # The counter now prices CJK at the server's rate, and the first estimate was close.
    assert "server" in conv.counter.name
    error = abs(plan.corrected_tokens - plan.reported_prompt_tokens) / plan.reported_prompt_tokens
    assert error < 0.15, (plan.corrected_tokens, plan.reported_prompt_tokens)


def test_vllm_overflow_is_learnt_and_retried_once_then_never_repeats() -> None:
    server = FakeVLLM(model="my-qwen", window=2048)
    # The caller claims a much bigger window: the server refuses, convmem learns its window
    # and its count, rebuilds and retries once.
    conv = Conversation(
        _client(server), model="my-qwen", context_window=100_000, strategy=Truncate()
    )
    for i in range(12):
        conv.extend(
            [
                {"role": "user", "content": f"Question {i}: " + "lorem ipsum dolor " * 40},
                {"role": "assistant", "content": "An answer. " * 30},
            ]
        )
    conv.send("And now?", max_tokens=64)
    assert server.refused == 1 and len(server.chat_bodies) == 2
    plan = conv.last_plan
    assert plan is not None and len(plan.refused) == 1
    refused = plan.refused[0]
    assert refused.provider == "vllm" and refused.server_context_window == 2048
    assert refused.server_prompt_tokens is not None and refused.context_window == 100_000
    assert plan.context_window == 2048 and "learnt" in plan.window_source
    assert any("refused an earlier attempt" in n for n in plan.notes)
    assert plan.to_dict()["refused"][0]["server_context_window"] == 2048
    # The next calls start from what was learnt: no 400 again.
    for i in range(3):
        conv.send(f"More {i}? " + "text " * 60, max_tokens=64)
    assert server.refused == 1


def test_keep_all_raises_context_overflow_with_the_servers_numbers() -> None:
    server = FakeVLLM(model="my-qwen", window=1024)
    conv = Conversation(_client(server), model="my-qwen", context_window=100_000)
    conv.extend(
        [
            {"role": "user", "content": "lorem ipsum dolor " * 200},
            {"role": "assistant", "content": "ok"},
        ]
    )
    before = conv.messages
    with pytest.raises(ContextOverflowError) as info:
        conv.send("and?", max_tokens=32)
    assert info.value.context_window == 1024
    assert info.value.needed > 1024
    assert "refused" in str(info.value) and "KeepAll" in str(info.value)
    assert conv.messages == before
    assert server.refused == 1  # learnt once; the rebuild did not send the same prompt again


def test_streamed_reasoning_field_is_read_kept_and_not_sent_back() -> None:
    server = FakeVLLM(model="my-qwen", window=8192)
    conv = Conversation(_client(server), model="my-qwen")
    events = list(conv.stream("hi"))
    reasoning = "".join(e.text for e in events if isinstance(e, ReasoningDelta))
    assert reasoning == "The user says hi."
    assert isinstance(events[-1], StreamEnd)
    assert conv.messages[-1]["reasoning"] == "The user says hi."
    conv.send("again")
    sent = server.chat_bodies[-1]["messages"]
    assert all("reasoning" not in m and "reasoning_content" not in m for m in sent)
    # Not streamed: the same field, also kept and not sent back.
    assert conv.messages[-1]["reasoning"] == "Think first."


def test_send_reasoning_sends_it_under_the_field_the_server_used() -> None:
    server = FakeVLLM(model="my-qwen", window=8192)
    conv = Conversation(_client(server), model="my-qwen", send_reasoning=True)
    list(conv.stream("hi"))
    conv.send("again")
    sent = server.chat_bodies[-1]["messages"]
    assert sent[1] == {"role": "assistant", "content": "Hello!", "reasoning": "The user says hi."}


def test_async_conversation_asks_the_server_at_its_first_call() -> None:
    server = FakeVLLM(model="my-qwen", window=4096)

    async def main() -> AsyncConversation:
        conv = AsyncConversation(_async_client(server), model="my-qwen")
        assert not conv.window_known
        await conv.send("hi")
        return conv

    conv = asyncio.run(main())
    assert conv.context_window == 4096 and conv.window_known


def test_async_overflow_is_retried_once() -> None:
    server = FakeVLLM(model="my-qwen", window=1024)

    async def main() -> AsyncConversation:
        conv = AsyncConversation(
            _async_client(server), model="my-qwen", context_window=50_000, strategy=Truncate()
        )
        await conv.extend(
            [
                m
                for i in range(8)
                for m in (
                    {"role": "user", "content": f"q{i} " + "lorem ipsum " * 40},
                    {"role": "assistant", "content": "a " * 40},
                )
            ]
        )
        await conv.send("now?", max_tokens=32)
        return conv

    conv = asyncio.run(main())
    assert server.refused == 1 and conv.context_window == 1024
    assert conv.last_plan is not None and len(conv.last_plan.refused) == 1


class FakeOllama:
    """Ollama: /v1/models (owned_by "library"), /api/ps of the loaded models, /api/show."""

    def __init__(self, loaded: int | None, parameters: str = "", trained: int = 40960) -> None:
        self.loaded = loaded
        self.parameters = parameters
        self.trained = trained

    def __call__(self, request: httpx2.Request) -> httpx2.Response:
        path = request.url.path
        if path == "/v1/models":
            return httpx2.Response(
                200,
                json={
                    "object": "list",
                    "data": [
                        {
                            "id": "mymodel:latest",
                            "object": "model",
                            "created": 1735000000,
                            "owned_by": "library",
                        }
                    ],
                },
            )
        if path == "/api/ps":
            models = []
            if self.loaded is not None:
                models.append(
                    {
                        "name": "mymodel:latest",
                        "model": "mymodel:latest",
                        "size": 5_000_000_000,
                        "digest": "abc",
                        "details": {"family": "qwen3"},
                        "expires_at": "2026-11-28T23:59:00Z",
                        "size_vram": 5_000_000_000,
                        "context_length": self.loaded,
                    }
                )
            return httpx2.Response(200, json={"models": models})
        if path == "/api/show":
            assert json.loads(request.read())["model"] == "mymodel"
            return httpx2.Response(
                200,
                json={
                    "parameters": self.parameters,
                    "details": {"family": "qwen3", "parameter_size": "8.2B"},
                    "model_info": {
                        "general.architecture": "qwen3",
                        "qwen3.context_length": self.trained,
                    },
                    "capabilities": ["completion", "tools", "thinking"],
                },
            )
        return httpx2.Response(404, text="404 page not found")


def test_ollama_window_of_the_loaded_model() -> None:
    info = discover(_client(FakeOllama(loaded=8192), "http://ollama.test/v1"), "mymodel")
    assert info.kind == "ollama" and info.window is not None
    assert info.window.tokens == 8192 and "/api/ps" in info.window.detail


def test_ollama_window_from_num_ctx_or_the_default_when_not_loaded() -> None:
    with_param = FakeOllama(
        loaded=None, parameters='num_ctx                        16384\nstop "<|im_end|>"'
    )
    info = discover(_client(with_param, "http://ollama1.test/v1"), "mymodel")
    assert info.window is not None and info.window.tokens == 16384
    bare = discover(_client(FakeOllama(loaded=None), "http://ollama2.test/v1"), "mymodel")
    assert bare.window is not None and bare.window.tokens == 4096
    assert "40960" in bare.window.detail and "default" in bare.window.detail


class FakeDashScope:
    """DashScope's compatible mode: a /models list without windows, its input limit as a 400
    (no token count in it), and ``reasoning_content`` with ``enable_thinking``."""

    def __init__(self, input_limit: int) -> None:
        self.input_limit = input_limit
        self.chat_bodies: list[dict[str, Any]] = []
        self.refused = 0

    def __call__(self, request: httpx2.Request) -> httpx2.Response:
        path = request.url.path
        if path == "/compatible-mode/v1/models":
            return httpx2.Response(
                200,
                json={
                    "object": "list",
                    "data": [
                        {
                            "id": "qwen-plus",
                            "object": "model",
                            "created": 1735000000,
                            "owned_by": "system",
                        }
                    ],
                },
            )
        if path != "/compatible-mode/v1/chat/completions":
            return httpx2.Response(404, json={"code": "NotFound", "message": "Not found"})
        body = json.loads(request.read())
        self.chat_bodies.append(body)
        # Qwen's tokenizer: about 1.5 Chinese characters per token (Alibaba Cloud's notes).
        prompt = sum(8 + -(-len(str(m.get("content") or "")) * 2 // 3) for m in body["messages"])
        if prompt > self.input_limit:
            self.refused += 1
            return httpx2.Response(
                400,
                json={
                    "error": {
                        "message": "<400> InternalError.Algo.InvalidParameter: Range of input "
                        f"length should be [1, {self.input_limit}]",
                        "type": "invalid_request_error",
                        "param": None,
                        "code": "invalid_parameter_error",
                    },
                    "id": "chatcmpl-0f1e2d3c",
                    "request_id": "0f1e2d3c-4b5a-6978-8695-a4b3c2d1e0f9",
                },
            )
        thinking = body.get("enable_thinking") or False
        message: dict[str, Any] = {"role": "assistant", "content": "好的。"}
        if thinking:
            message["reasoning_content"] = "用户在问问题。"
        return httpx2.Response(200, json=_completion("qwen-plus", message, prompt))


def test_dashscope_input_limit_is_learnt_from_its_400() -> None:
    server = FakeDashScope(input_limit=3000)
    client = _client(server, "https://dashscope.test/compatible-mode/v1")
    conv = Conversation(client, model="qwen-plus", strategy=Truncate())
    assert conv.window is not None and conv.window.source == "table"
    conv.extend(
        [
            m
            for i in range(20)
            for m in (
                {"role": "user", "content": f"第{i}个问题：" + "杭州的天气怎么样？" * 12},
                {"role": "assistant", "content": "杭州今天晴朗，气温二十度。" * 8},
            )
        ]
    )
    conv.send("继续。", extra_body={"enable_thinking": True, "thinking_budget": 50})
    assert server.refused == 1
    plan = conv.last_plan
    assert plan is not None and plan.refused[0].provider == "dashscope"
    assert conv.messages[-1]["reasoning_content"] == "用户在问问题。"
    conv.send("再来一次。", extra_body={"enable_thinking": True})
    assert server.refused == 1
    sent = server.chat_bodies[-1]["messages"]
    assert all("reasoning_content" not in m for m in sent)


# -- the constructors ------------------------------------------------------------------------


def test_constructors_show_their_real_parameters() -> None:
    import inspect

    from convmem.conversation_core import _Core

    core = set(inspect.signature(_Core.__init__).parameters)
    for cls in (Conversation, AsyncConversation):
        params = inspect.signature(cls.__init__).parameters
        assert core <= set(params), core - set(params)
        assert not any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
    fake = FakeChatServer()
    with pytest.raises(TypeError, match=r"Conversation.__init__\(\) got an unexpected keyword"):
        Conversation(fake.client(), model="gpt-4o-mini", sytem="typo")  # type: ignore[call-arg]
    with pytest.raises(TypeError, match=r"AsyncConversation.__init__\(\)"):
        AsyncConversation(fake.async_client(), model="gpt-4o-mini", modle="x")  # type: ignore[call-arg]


def test_a_system_prompt_given_as_content_parts() -> None:
    fake = FakeChatServer().reply("ok")
    parts = [{"type": "text", "text": "You are terse."}, {"type": "text", "text": "Use metric."}]
    conv = Conversation(fake.client(), model="gpt-4o-mini", system=parts)
    conv.send("hi")
    assert fake.last_request["messages"][0] == {"role": "system", "content": parts}
    assert conv.last_plan is not None and conv.last_plan.section("system") is not None
