"""The fault matrix: every call path x every fault, over a real loopback socket (issue 7).

After each fault: the history is byte-identical to before the failed call (or, for a tool that
raises, holds exactly the one committed turn with the error reported to the model), the error
is one a caller can catch as documented (never ``AttributeError``/``TypeError``/``KeyError``
from internals), and the next call commits exactly one turn. A per-case watchdog
(``faulthandler``) kills the run with every thread's traceback if anything hangs.
"""

from __future__ import annotations

import asyncio
import faulthandler
import json
import os
import signal
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import httpx2
import openai
import pydantic
import pytest
from _loopback import Act, LoopbackServer, chunks, closed_port_url, completion
from _loopback import loopback as loopback  # the fixture

from convmem import (
    AsyncConversation,
    Conversation,
    InvalidResponseError,
    RunError,
    StreamAbandonedError,
    ToolTimeoutError,
)

# Short reads make the stall faults fast; a generous connect keeps a loaded machine from
# failing the warm-up call with ConnectTimeout.
CLIENT_TIMEOUT = httpx2.Timeout(1.0, connect=10.0)
TOOL_TIMEOUT = 0.3
WATCHDOG_SECONDS = 30
RELEASE = threading.Event()  # lets hung tools finish after their case


class Answer(pydantic.BaseModel):
    value: str


def lookup(q: str) -> str:
    """Looks something up.

    Args:
        q: The query.
    """
    return f"found {q}"


def boom(q: str) -> str:
    """Always fails.

    Args:
        q: The query.
    """
    raise ValueError(f"boom on {q}")


def stuck(q: str) -> str:
    """Never returns in time.

    Args:
        q: The query.
    """
    RELEASE.wait(5)
    return "late"


TOOLS = [lookup, boom, stuck]


def tool_call(name: str) -> list[dict[str, Any]]:
    return [
        {
            "id": f"call_{name}",
            "type": "function",
            "function": {"name": name, "arguments": json.dumps({"q": "x"})},
        }
    ]


SYNC_PATHS = ["send", "stream", "tools", "stream_tools", "parse", "n2"]
PATHS = SYNC_PATHS + [f"a_{p}" for p in SYNC_PATHS]

HTTP = ["http400", "http401", "http429", "http500", "http503"]
COMMON = [*HTTP, "timeout", "refused", "close_before_headers", "kbi_request"]
BODY = [
    "cut_body",
    "bad_json",
    "empty_choices",
    "non_completion_html",
    "null_body",
    "duplicate_tool_ids",
    "empty_tool_id",
]
SSE = [
    "sse_cut",
    "sse_garbage",
    "sse_stall",
    "sse_error",
    "sse_empty_choices",
    "sse_non_completion",
    "kbi_stream",
    "break",
    "abandon",
]
TOOL_FAULTS = ["raising_tool", "hanging_tool"]


def faults_for(path: str) -> list[str]:
    base = path.removeprefix("a_")
    streaming = base.startswith("stream")
    out = list(COMMON) + (SSE if streaming else BODY)
    if "tools" in base:
        out += TOOL_FAULTS
    return out


CASES = [(p, f) for p in PATHS for f in faults_for(p)]


@dataclass
class Case:
    path: str
    fault: str

    @property
    def is_async(self) -> bool:
        return self.path.startswith("a_")

    @property
    def base(self) -> str:
        return self.path.removeprefix("a_")

    @property
    def streaming(self) -> bool:
        return self.base.startswith("stream")

    @property
    def tools(self) -> bool:
        return "tools" in self.base


def fault_acts(case: Case) -> list[Act]:
    """The script for the faulted call: for tool paths the fault hits the second request."""
    f = case.fault
    lead = [Act(tool_calls=tool_call("lookup"))] if case.tools else []
    if f == "raising_tool":
        return [Act(tool_calls=tool_call("boom")), Act(text="sorry")]
    if f == "hanging_tool":
        return [Act(tool_calls=tool_call("stuck"))]
    if f.startswith("http"):
        return [*lead, Act("error", status=int(f[4:]))]
    act = {
        "timeout": Act("stall", seconds=3),
        "kbi_request": Act("stall", seconds=3),
        "refused": Act(),  # never reached
        "close_before_headers": Act("close"),
        "cut_body": Act("cut_body"),
        "bad_json": Act("raw", body='{"id": "chatcmpl-1", "choices": [{"index": 0,'),
        "empty_choices": Act("raw", body=json.dumps({**completion("x"), "choices": []})),
        "non_completion_html": Act(
            "raw",
            body="<html><body><h1>502 Bad Gateway</h1></body></html>",
            content_type="text/html",
        ),
        "null_body": Act("raw", body="null"),
        "duplicate_tool_ids": Act(
            "raw", body=json.dumps(completion("", tool_calls=tool_call("lookup") * 2))
        ),
        "empty_tool_id": Act(
            "raw",
            body=json.dumps(completion("", tool_calls=[{**tool_call("lookup")[0], "id": ""}])),
        ),
        "sse_cut": Act("sse", events=chunks("hello there")[:2], end="cut"),
        "sse_garbage": Act("sse", events=[*chunks("hello")[:1], "{not json"]),
        "sse_stall": Act("sse", events=chunks("hello there")[:2], end="stall", seconds=3),
        "sse_error": Act(
            "sse",
            events=[
                *chunks("hello")[:1],
                json.dumps(
                    {
                        "error": {
                            "message": "The server had an error while processing your request.",
                            "type": "server_error",
                            "param": None,
                            "code": None,
                        }
                    }
                ),
            ],
        ),
        "sse_empty_choices": Act(
            "sse",
            events=[
                json.dumps(
                    {
                        "id": "c",
                        "object": "chat.completion.chunk",
                        "created": 1,
                        "model": "m",
                        "choices": [],
                    }
                )
            ],
        ),
        "sse_non_completion": Act(
            "raw", body="<html><body>Service Unavailable</body></html>", content_type="text/html"
        ),
        "kbi_stream": Act("sse", events=chunks("hello there")[:2], end="stall", seconds=3),
        "break": Act(text="a long reply"),
        "abandon": Act(text="a long reply"),
    }[f]
    return [*lead, act]


_CLIENTS: dict[tuple[bool, str], Any] = {}


def make_client(case: Case, url: str) -> Any:
    """One client per kind and URL for the whole matrix (building one costs ~0.2 s)."""
    key = (case.is_async, url)
    if key not in _CLIENTS:
        _CLIENTS[key] = _new_client(case.is_async, url)
    return _CLIENTS[key]


_REFUSED = closed_port_url()


def _new_client(is_async: bool, url: str) -> Any:
    if is_async:
        # No keep-alive: pooled connections belong to the event loop that opened them, and
        # each step below runs under its own asyncio.run().
        http = httpx2.AsyncClient(limits=httpx2.Limits(max_keepalive_connections=0))
        return openai.AsyncOpenAI(
            base_url=url, api_key="sk-test", max_retries=0, timeout=CLIENT_TIMEOUT, http_client=http
        )
    return openai.OpenAI(base_url=url, api_key="sk-test", max_retries=0, timeout=CLIENT_TIMEOUT)


def interrupt_after(seconds: float) -> threading.Timer:
    timer = threading.Timer(seconds, lambda: os.kill(os.getpid(), signal.SIGINT))
    timer.start()
    return timer


@pytest.fixture
def watchdog() -> Iterator[None]:
    faulthandler.dump_traceback_later(WATCHDOG_SECONDS, exit=True)
    yield
    faulthandler.cancel_dump_traceback_later()
    RELEASE.set()
    RELEASE.clear()


# -- running one path ------------------------------------------------------------------------------


def call_kwargs(case: Case) -> dict[str, Any]:
    kw: dict[str, Any] = {}
    if case.tools:
        kw["tools"] = TOOLS
    if case.base == "n2":
        kw["n"] = 2
    return kw


def sync_call(conv: Conversation, case: Case, held: list[Any]) -> None:
    kw = call_kwargs(case)
    if case.base == "parse":
        conv.parse("question", response_format=Answer)
    elif case.streaming:
        it = conv.stream("question", **kw)
        if case.fault in ("break", "abandon"):
            for _ in it:
                break
            if case.fault == "abandon":
                held.append(it)  # still referenced: the next call must not wait for it
            return
        for _ in it:
            pass
    else:
        conv.send("question", **kw)


async def async_call(conv: AsyncConversation, case: Case, held: list[Any]) -> None:
    kw = call_kwargs(case)
    if case.base == "parse":
        await conv.parse("question", response_format=Answer)
    elif case.streaming:
        it = conv.stream("question", **kw)
        if case.fault in ("break", "abandon"):
            async for _ in it:
                break
            if case.fault == "abandon":
                held.append(it)
            return
        async for _ in it:
            pass
    else:
        await conv.send("question", **kw)


# Errors a caller is told to expect: the SDK's, convmem's run errors, a transport error from
# inside a stream, or the interrupt itself. Never AttributeError/TypeError/KeyError.
EXPECTED = (openai.OpenAIError, RunError, httpx2.TransportError, KeyboardInterrupt)


@pytest.mark.parametrize(("path", "fault"), CASES, ids=[f"{p}-{f}" for p, f in CASES])
def test_fault(loopback: LoopbackServer, watchdog: None, path: str, fault: str) -> None:
    case = Case(path, fault)
    loopback.reset()
    client = make_client(case, loopback.url)
    conv_cls = AsyncConversation if case.is_async else Conversation
    conv: Any = conv_cls(client, model="gpt-4o-mini", system="Be brief.", tool_timeout=TOOL_TIMEOUT)

    # A first turn, so there is a history to protect.
    if case.is_async:
        asyncio.run(conv.send("warm up"))
    else:
        conv.send("warm up")
    before = conv.to_json()
    turns_before = len(conv.turns)

    loopback.then(*fault_acts(case))
    if fault == "refused":
        conv.client = make_client(case, _REFUSED)
    held: list[Any] = []
    error: BaseException | None = None
    timer = None
    if fault == "kbi_request":
        timer = interrupt_after(0.15)
    elif fault == "kbi_stream":
        timer = interrupt_after(0.3)
    try:
        if case.is_async:
            asyncio.run(async_call(conv, case, held))
        else:
            sync_call(conv, case, held)
    except BaseException as exc:  # classified below
        error = exc
    finally:
        if timer is not None:
            timer.join()

    if fault == "refused":
        conv.client = client
    committed = fault == "raising_tool"
    if fault in ("break", "abandon"):
        assert error is None
    elif committed:
        assert error is None, repr(error)
    elif case.base == "parse" and fault not in COMMON:
        assert error is not None
    else:
        assert error is not None, f"{path}/{fault} did not fail"
    if error is not None:
        assert isinstance(error, EXPECTED), f"{path}/{fault}: {type(error).__name__}: {error}"
        assert conv.last_error is error or fault.startswith("kbi") or case.is_async
    if fault in BODY and fault != "cut_body" and case.base != "parse":
        assert isinstance(error, InvalidResponseError), repr(error)
    if fault == "hanging_tool":
        assert isinstance(error, ToolTimeoutError)

    if committed:
        assert len(conv.turns) == turns_before + 1
        tool_msgs = [m for m in conv.turns[-1].messages if m["role"] == "tool"]
        assert "boom on x" in tool_msgs[0]["content"]
    else:
        assert conv.to_json() == before, f"{path}/{fault} changed the history"

    # The next call commits exactly one turn and does not wait for anything left behind.
    loopback.reset()
    n = len(conv.turns)
    if case.is_async:
        asyncio.run(conv.send("next"))
    else:
        conv.send("next")
    assert len(conv.turns) == n + 1
    assert conv.messages[-1] == {"role": "assistant", "content": "ok"}
    assert conv.last_error is None

    if fault == "abandon":
        # The stream left in a variable was closed, and says so if used again. (An async
        # one was closed by asyncio.run() at the end of its loop: see the same-task case.)
        if case.is_async:
            asyncio.run(abandoned_in_one_task(conv))
        else:
            with pytest.raises(StreamAbandonedError):
                next(held[0])
        assert len(conv.turns) == n + (2 if case.is_async else 1)


async def abandoned_in_one_task(conv: AsyncConversation) -> None:
    it = conv.stream("question")
    await it.__anext__()
    await conv.send("next")  # same task, stream suspended: it is closed, not waited for
    with pytest.raises(StreamAbandonedError):
        await it.__anext__()
