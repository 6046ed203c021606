"""``AsyncConversation``: the ``await`` I/O of a conversation (the pure parts are in ``_Core``)."""

from __future__ import annotations

import asyncio
import inspect
import json
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from contextlib import asynccontextmanager, suppress
from functools import partial
from typing import TYPE_CHECKING, Any, Literal

import openai
from openai.types.chat import ChatCompletion

from .background import BACKGROUND_SUMMARY_ROUNDS, JobResult, _run_local, _timed_out
from .conversation_core import (
    DEFAULT_JOB_TIMEOUT,
    DEFAULT_MAX_TOOL_ROUNDS,
    RawChunk,
    _abandoned,
    _Call,
    _call_name,
    _Core,
    _load_kwargs,
    _tool_name,
)
from .errors import InvalidResponseError, ToolTimeoutError, UsageError
from .events import StreamEnd, StreamEvent, ToolResult
from .gate import _busy_error, _Claim
from .history import Summary, Turn
from .plan import ContextPlan
from .replies import Chooser, not_json, parsed
from .strategy import ContextRequest, Job, LLMJob, LocalJob
from .streaming import StreamAssembler
from .workers import POOL, start_daemon

if TYPE_CHECKING:
    from .history import History
    from .strategy import Strategy
    from .tokens import TokenCounter


class AsyncConversation(_Core):
    """A conversation over an ``openai.AsyncOpenAI`` client; mirrors :class:`Conversation`.

    ``await conv.send(...)``, ``async for ev in conv.stream(...)``. Many conversations run
    concurrently under ``asyncio.gather``; concurrent calls on the same conversation are
    serialised, never interleaved, and a stream never holds the conversation while its consumer
    has an event (see :class:`Conversation`). Nothing is tied to one event loop: the same
    conversation works under ``asyncio.run`` twice (if its client does). Work a strategy does
    after a reply (storing turns for recall) runs in the pool shared by all conversations;
    ``await conv.drain()`` waits for it, ``await conv.aclose()`` (or ``async with``) finishes
    it and closes the conversation.

    Args:
        client: An ``openai.AsyncOpenAI`` client.
        background_summary: After each reply, let the strategy make the summary the next call
            would need (e.g. ``RollingSummary``) in the background, so the next call does not
            wait for it. The next call waits only if it starts before the summary is done; a
            summariser that fails leaves the history untouched (``last_background_error``) and
            the next call summarises as without the option.
        warm: Start :meth:`warm` now, as a task on the running event loop (a constructor
            cannot await). It holds the conversation like a call: the first call waits for
            it, ``await conv.drain()`` waits for it, and a failure is kept in
            :attr:`last_background_error` (the first call then loads and reports it). Needs a
            running loop: outside one, use ``await conv.warm()`` inside your coroutine.
        model, system, strategy, context_window, ...: The same as :class:`Conversation`.
            A window neither the caller nor the table knows is asked from the server at the
            first call (a constructor cannot await), so an unknown model on a server that
            cannot tell raises ``UnknownModelError`` there, before any chat request.

    Raises:
        UsageError: ``client`` is a blocking ``openai.OpenAI`` (use :class:`Conversation`);
            ``warm=True`` with no running event loop.
    """

    _load_on_init = False  # a stored conversation loads off the event loop, at first use

    # Spelled out, as in Conversation: IDEs show them, typos name AsyncConversation.
    def __init__(
        self,
        client: Any,
        *,
        model: str,
        system: str | Sequence[Mapping[str, Any]] | Mapping[str, Any] | None = None,
        strategy: Strategy | Callable[..., Any] | None = None,
        context_window: int | Literal["server"] | None = None,
        counter: TokenCounter | None = None,
        reply_reserve: int | None = None,
        send_reasoning: bool = False,
        max_tool_rounds: int = DEFAULT_MAX_TOOL_ROUNDS,
        conversation_id: str | None = None,
        history: History | None = None,
        job_timeout: float | None = DEFAULT_JOB_TIMEOUT,
        tool_timeout: float | None = None,
        store: Any = None,
        on_conflict: str = "append",
        save_plan: bool = False,
        background_summary: bool = False,
        warm: bool = False,
    ) -> None:
        if isinstance(client, openai.OpenAI):
            raise UsageError(
                "AsyncConversation needs an openai.AsyncOpenAI client, got a blocking OpenAI: "
                "use Conversation(client, ...) with a blocking client"
            )
        if warm and not _loop_running():
            raise UsageError(
                "AsyncConversation(warm=True) starts the warm-up on the running event loop, "
                "and no loop is running here: create the conversation inside a coroutine, or "
                "call `await conv.warm()` there"
            )
        super().__init__(
            client,
            model=model,
            system=system,
            strategy=strategy,
            context_window=context_window,
            counter=counter,
            reply_reserve=reply_reserve,
            send_reasoning=send_reasoning,
            max_tool_rounds=max_tool_rounds,
            conversation_id=conversation_id,
            history=history,
            job_timeout=job_timeout,
            tool_timeout=tool_timeout,
            store=store,
            on_conflict=on_conflict,
            save_plan=save_plan,
        )
        self.background_summary = background_summary
        self._tasks: set[asyncio.Task[Any]] = set()
        if warm:
            # The warm-up holds the conversation from now on (the gate is free in a new
            # conversation), so the first call waits for it instead of racing it.
            claim = _Claim("warm", object())
            self._gate.holder = claim
            task = asyncio.ensure_future(self._warm_in_background(claim))
            # Also when the loop ends before the task ran: the conversation is never left held.
            task.add_done_callback(lambda _: self._gate.release(claim))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    # -- holding the conversation -------------------------------------------------------------
    async def _acquire(self, kind: str) -> _Claim:
        loop = asyncio.get_running_loop()
        claim = _Claim(kind, asyncio.current_task())
        gate = self._gate
        while True:
            with gate.cond:
                holder = gate.holder
                state, victim = gate.try_take(claim)
                if state == "wait":
                    waiter = loop.create_future()
                    gate.async_waiters.append((loop, waiter))
            if state in ("free", "take"):
                break
            if state == "busy":
                raise _busy_error(holder.kind if holder else kind)
            # Woken by release(); the timeout notices a consumer that went away.
            await asyncio.wait([waiter], timeout=0.1)
        if victim is not None:
            await _aclose_quietly(victim.response)
        return claim

    @asynccontextmanager
    async def _hold(self, kind: str) -> AsyncIterator[_Claim]:
        claim = await self._acquire(kind)
        try:
            yield claim
        finally:
            self._gate.release(claim)

    def _resume(self, claim: _Claim, asm: StreamAssembler) -> None:
        if not self._gate.resume(claim, asyncio.current_task()):
            raise _abandoned(asm)

    # -- background work and closing ----------------------------------------------------------
    async def drain(self) -> None:
        """Waits for background work (turns being stored for recall) to finish.

        Waits at most ``job_timeout`` for each pool job (see :meth:`Conversation.drain`).
        """
        for fut in self._take_futures():
            await asyncio.wait([asyncio.wrap_future(fut)], timeout=self.job_timeout)
        loop = asyncio.get_running_loop()
        while True:
            # Tasks of an event loop that has ended never finish: forget them.
            self._tasks = {t for t in self._tasks if not t.done() and not t.get_loop().is_closed()}
            mine = [t for t in self._tasks if t.get_loop() is loop]
            if not mine:
                return
            await asyncio.gather(*mine, return_exceptions=True)

    async def aclose(self) -> None:
        """Finishes background work, tries failed memory jobs once more, and closes.

        Later calls raise :class:`~convmem.errors.UsageError`. Also done by ``async with``.
        """
        if self.closed:
            return
        async with self._hold("close"):
            await self.drain()
            self._retry_memory(everything=True)
            await self.drain()
            self.closed = True

    async def __aenter__(self) -> AsyncConversation:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    def _spawn(self, coro: Awaitable[Any]) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _spawn_observe(self, turns: Sequence[Turn]) -> None:
        """Stores finished turns in the shared pool, so the reply returns without waiting."""
        jobs = self._observe_jobs(turns)
        ids = [t.id for t in turns]
        self._spawn_local(jobs, ids)
        llm = [j for j in jobs if isinstance(j, LLMJob)]
        if llm:
            self._spawn(self._run_jobs(None, llm, ids))

    # -- history ------------------------------------------------------------------------------
    async def load(self) -> AsyncConversation:
        """Loads the stored conversation now (``store=``); otherwise its first call does.

        Returns:
            The conversation, so ``conv = await AsyncConversation(..., store=s).load()``.
        """
        async with self._hold("load"):
            await self._sync_store()
        return self

    async def _sync_store(self) -> None:
        """Resumes from the store at first use, then loads what other processes committed."""
        link = self._link
        if link is None:
            return
        if not link.attached:
            stored = await asyncio.to_thread(link.load)
            await asyncio.to_thread(link.attach, self, stored)
        else:
            link.catch_up(self, await asyncio.to_thread(link.fetch))

    async def extend(
        self, messages: Sequence[Any], *, created_at: float | None = None
    ) -> list[Turn]:
        """Appends existing messages without a call (see :meth:`Conversation.extend`)."""
        async with self._hold("extend"):
            self._check_open()
            await self._sync_store()
            cancelled = None
            if self._link is not None:
                checked = self.history.validate_new(messages)
                outcome, cancelled = await self._link.write_async(self, checked)
                turns = self._link.apply(self, checked, outcome)
            else:
                turns = self.history.append(messages, created_at=created_at)
            self._spawn_observe(turns)
            if cancelled is not None:
                raise cancelled
            return turns

    async def clear(self) -> None:
        """Starts over: forgets every turn and summary; the system prompt stays."""
        async with self._hold("clear"):
            self._refuse_clear()
            await self.drain()
            self.history.clear()
            self.last_plan = None

    @classmethod
    async def from_json(
        cls, client: Any, data: str | Mapping[str, Any], **kwargs: Any
    ) -> AsyncConversation:
        """Loads a conversation saved with :meth:`to_json` (see :meth:`Conversation.from_json`)."""
        conv = cls(client, **_load_kwargs(data, kwargs))
        conv._spawn_observe(conv.history.turn_list())
        return conv

    async def prepare_next(self) -> Summary | None:
        """Makes now the summary the next call would need (see ``Conversation.prepare_next``)."""
        async with self._hold("prepare_next"):
            await self.drain()
            await self._sync_store()
            request, jobs = self._next_request()
            if not jobs:
                return None
            await self._run_jobs(request, jobs)
            return self._keep_prepared(request)

    async def warm(self) -> AsyncConversation:
        """Loads now what the first call would load (see :meth:`Conversation.warm`), off the
        event loop; also a stored conversation (``store=``). Idempotent, cheap once warm."""
        async with self._hold("warm"):
            self._check_open()
            await self._sync_store()
            await asyncio.to_thread(self._warm_parts)
        return self

    async def _warm_in_background(self, claim: _Claim) -> None:
        """``warm=True``: :meth:`warm` as a task holding the conversation (handed over by the
        constructor); a failure is kept, and the first call loads (and reports) it itself."""
        try:
            if not self.closed:
                await self._sync_store()
                await asyncio.to_thread(self._warm_parts)
        except Exception as exc:
            self.last_background_error = exc
        finally:
            self._gate.release(claim)

    # -- calls --------------------------------------------------------------------------------
    async def preview(self, message: Any = None, **params: Any) -> ContextPlan:
        """The plan a call would send, without calling the model (see ``Conversation.preview``)."""
        call = self._begin(message, params.pop("tools", None), None, None, params)
        async with self._hold("preview"):
            await self.drain()
            await self._sync_store()
            self._recheck(call)
            await self._aconsult_server(call.pending)
            request = self._request(call)
            await self._run_jobs(request, self._preview_jobs(request))
            return self._preview_plan(call, request)

    async def send(
        self,
        message: Any = None,
        *,
        tools: Sequence[Any] | None = None,
        choose: Chooser | None = None,
        max_tool_rounds: int | None = None,
        **params: Any,
    ) -> ChatCompletion:
        """Sends a user message; see :meth:`Conversation.send`."""
        call = self._begin(message, tools, choose, max_tool_rounds, params)
        return await self._run(call, self.client.chat.completions.create)

    async def parse(
        self,
        message: Any = None,
        *,
        response_format: Any,
        tools: Sequence[Any] | None = None,
        choose: Chooser | None = None,
        **params: Any,
    ) -> Any:
        """Structured output; see :meth:`Conversation.parse`."""
        params["response_format"] = response_format
        call = self._begin(message, tools, choose, None, params)
        return parsed(await self._run(call, self.client.chat.completions.parse), choose)

    async def _start(self, call: _Call) -> None:
        """First steps of a call, once it holds the conversation."""
        await self.drain()
        await self._sync_store()
        self._recheck(call)
        self._retry_memory()
        await self._aconsult_server(call.pending)

    async def _create(self, create: Callable[..., Any], kwargs: dict[str, Any]) -> Any:
        try:
            return await create(**kwargs)
        except json.JSONDecodeError as exc:
            raise not_json(exc) from exc
        except (AttributeError, TypeError) as exc:
            # The SDK's parse() reads the reply before returning it: a body that is not a
            # chat completion (HTML, null) fails inside the SDK, not in convmem's check.
            if getattr(create, "__name__", "") != "parse":
                raise
            raise InvalidResponseError(f"parse() could not read it ({exc})") from exc

    async def _run(self, call: _Call, create: Callable[..., Any]) -> ChatCompletion:
        async with self._hold("call") as claim:
            try:
                await self._start(call)
                while True:
                    request = self._request(call)
                    await self._run_jobs(request, self._jobs(request))
                    plan = self._build(call, request)
                    try:
                        completion = await self._create(
                            create, self._kwargs(call, plan, stream=False)
                        )
                    except openai.APIStatusError as exc:
                        if self._overflow(call.refused, plan, exc):
                            continue  # learnt from the refusal: rebuild and retry, once
                        raise
                    tool_calls = self._on_completion(call, plan, completion)
                    if tool_calls is None:
                        break
                    call.pending.extend(await self._run_tools(call, tool_calls))
                turns, cancelled = await self._commit_async(call, completion)
            except BaseException as exc:
                self._failed(call, exc)
                raise
            self.last_ttft = None
            self._after_commit(claim, turns)
            if cancelled is not None:
                raise cancelled
            return completion  # type: ignore[no-any-return]

    async def _commit_async(
        self, call: _Call, completion: ChatCompletion
    ) -> tuple[list[Turn], BaseException | None]:
        """Commits, writing to the store off the event loop. A cancellation during the write
        is returned after the turn is in both the store and memory (never in one only)."""
        if self._link is None:
            return self._commit(call, completion), None
        assert call.final is not None
        outcome, cancelled = await self._link.write_async(self, [*call.pending, call.final])
        return self._commit(call, completion, outcome), cancelled

    def _after_commit(self, claim: _Claim, turns: Sequence[Turn]) -> None:
        self._spawn_observe(turns)
        job_claim = self._summary_claim(claim)
        if job_claim is None:
            return
        try:
            task = asyncio.ensure_future(self._background_summary(job_claim))
        except BaseException:
            self._gate.release(job_claim)
            raise
        # Also when the loop ends before the task ran: the conversation is never left held.
        task.add_done_callback(lambda _: self._gate.release(job_claim))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _background_summary(self, claim: _Claim) -> None:
        """Makes the next summary, holding the conversation (handed over by the call)."""
        try:
            if self.closed:
                return
            await self._sync_store()
            for _ in range(BACKGROUND_SUMMARY_ROUNDS):  # until the next call finds none due
                request, jobs = self._next_request()
                if not jobs:
                    break
                await self._run_jobs(request, jobs)
                if self._keep_prepared(request) is None:
                    break
        except Exception as exc:
            self._summary_failed(exc)
        finally:
            self._gate.release(claim)

    def stream(
        self,
        message: Any = None,
        *,
        tools: Sequence[Any] | None = None,
        choose: Chooser | None = None,
        max_tool_rounds: int | None = None,
        **params: Any,
    ) -> AsyncIterator[StreamEvent]:
        """Streams the reply as typed events; see :meth:`Conversation.stream`.

        Input is validated when ``stream()`` is called, before any network call.
        """
        call = self._begin(message, tools, choose, max_tool_rounds, params)
        return self._stream(call)

    async def _stream(
        self, call: _Call, create: Callable[..., Any] | None = None
    ) -> AsyncIterator[StreamEvent]:
        claim = await self._acquire("stream")
        gate = self._gate
        try:
            try:
                await self._start(call)
                while True:
                    request = self._request(call)
                    await self._run_jobs(request, self._jobs(request))
                    plan = self._build(call, request)
                    asm = StreamAssembler(time.perf_counter())
                    try:
                        response = await self._create(
                            create or self.client.chat.completions.create,
                            self._kwargs(call, plan, stream=True),
                        )
                    except openai.APIStatusError as exc:
                        if self._overflow(call.refused, plan, exc):
                            continue  # learnt from the refusal: rebuild and retry, once
                        raise
                    claim.response = response
                    try:
                        async for chunk in response:
                            events: Sequence[Any] = asm.feed(chunk)
                            if call.raw:
                                events = [RawChunk(chunk)]
                            for event in events:
                                gate.suspend(claim)
                                yield event
                                self._resume(claim, asm)
                    except json.JSONDecodeError as exc:  # an SSE line that is not JSON
                        raise not_json(exc) from exc
                    finally:
                        claim.response = None
                        await _aclose_quietly(response)
                    completion = asm.finish()
                    tool_calls = self._on_completion(call, plan, completion)
                    if tool_calls is None:
                        break
                    for tool_msg in await self._run_tools(call, tool_calls):
                        call.pending.append(tool_msg)
                        name = _tool_name(tool_calls, tool_msg)
                        gate.suspend(claim)
                        yield ToolResult(tool_msg["tool_call_id"], name, tool_msg)
                        self._resume(claim, asm)
                turns, cancelled = await self._commit_async(call, completion)
            except BaseException as exc:
                if not claim.cancelled:  # a closed stream must not overwrite a later call's state
                    self._failed(call, exc)
                raise
            self.last_ttft = asm.ttft
            self._after_commit(claim, turns)
        finally:
            gate.release(claim)
        if cancelled is not None:
            raise cancelled
        assert call.final is not None
        yield StreamEnd(completion, call.final, plan, asm.ttft, self.last_latency or 0.0)

    # -- jobs and tools -----------------------------------------------------------------------
    async def _run_jobs(
        self, request: ContextRequest | None, jobs: Sequence[Job], turn_ids: Sequence[int] = ()
    ) -> None:
        for job in jobs:
            if isinstance(job, LocalJob):
                result = await self._run_local(job)
            else:
                result = await self._run_llm_job(job)
            self._record_job(request, job, result, turn_ids)

    async def _run_local(self, job: LocalJob) -> JobResult:
        if not self._warm():
            # Once per strategy, on the loop's thread: its imports must not race (issue 7.2).
            return self._cold_or_inline(job)
        fut = asyncio.wrap_future(POOL.submit(partial(_run_local, job)))
        done, _ = await asyncio.wait([fut], timeout=self.job_timeout)
        if not done:
            assert self.job_timeout is not None
            return _timed_out(job, self.job_timeout)
        return fut.result()

    async def _run_llm_job(self, job: LLMJob) -> JobResult:
        client, kwargs = self._job_call(job)
        model = kwargs["model"]
        t0 = time.perf_counter()
        try:
            create = client.chat.completions.create
            if isinstance(client, openai.OpenAI):  # a blocking client in an async conversation
                value = await asyncio.to_thread(create, **kwargs)
            else:
                value = create(**kwargs)
                if inspect.isawaitable(value):
                    value = await value
            return JobResult(value=value, seconds=time.perf_counter() - t0, model=model)
        except Exception as exc:  # the strategy falls back; cancellation still propagates
            return JobResult(error=exc, seconds=time.perf_counter() - t0, model=model)

    async def _run_tools(
        self, call: _Call, tool_calls: list[dict[str, Any]]
    ) -> list[dict[str, Any]]:
        registry = call.registry
        assert registry is not None
        if self.tool_timeout is None:
            return await registry.run_all_async(tool_calls)

        async def one(tool_call: dict[str, Any]) -> dict[str, Any]:
            tool = registry.get(_call_name(tool_call))
            if tool is not None and tool.fn is not None and not tool.is_async:
                # A daemon thread, not asyncio.to_thread: a hung tool there would keep
                # asyncio.run() from returning (it waits for the loop's executor).
                thread = start_daemon(partial(registry.run_sync, tool_call), tool.name)
                return await asyncio.wrap_future(thread)
            return await registry.run_async(tool_call)

        tasks = [asyncio.ensure_future(one(tc)) for tc in tool_calls]
        _, pending = await asyncio.wait(tasks, timeout=self.tool_timeout)
        if pending:
            for task in pending:
                task.cancel()
            slow = tool_calls[tasks.index(next(iter(pending)))]
            raise ToolTimeoutError(_call_name(slow), self.tool_timeout)
        return [t.result() for t in tasks]


async def _aclose_quietly(response: Any) -> None:
    close = getattr(response, "close", None)
    if callable(close):
        with suppress(Exception):  # closing what failed must not hide why it failed
            result = close()
            if inspect.isawaitable(result):
                await result


def _loop_running() -> bool:
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return False
    return True
