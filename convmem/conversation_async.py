"""``AsyncConversation``: the ``await`` I/O of a conversation (the pure parts are in ``_Core``)."""

from __future__ import annotations

import asyncio
import inspect
import time
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from typing import Any

import openai
from openai.types.chat import ChatCompletion

from .conversation_core import (
    Chooser,
    JobResult,
    _Call,
    _Core,
    _load_kwargs,
    _parsed,
    _run_local,
    _tool_name,
)
from .events import StreamEnd, StreamEvent, ToolResult
from .history import Summary, Turn
from .plan import ContextPlan
from .strategy import ContextRequest, Job, LLMJob, LocalJob, PreparingStrategy
from .streaming import StreamAssembler


class AsyncConversation(_Core):
    """A conversation over an ``openai.AsyncOpenAI`` client; mirrors :class:`Conversation`.

    ``await conv.send(...)``, ``async for ev in conv.stream(...)``. Many conversations run
    concurrently under ``asyncio.gather``; concurrent calls on the same conversation are
    serialised (an ``asyncio.Lock``), never interleaved. Work a strategy does after a reply
    (storing turns for recall) runs in the background; ``await conv.drain()`` waits for it.

    Args:
        client: An ``openai.AsyncOpenAI`` client.
        background_summary: After each reply, let the strategy make the summary the next call
            would need (e.g. ``RollingSummary``) in the background, so the next call does not
            wait for it. The next call waits only if it starts before the summary is done.
        **kwargs: The same as :class:`Conversation`.
    """

    _load_on_init = False  # a stored conversation loads off the event loop, at first use

    def __init__(self, client: Any, *, background_summary: bool = False, **kwargs: Any) -> None:
        super().__init__(client, **kwargs)
        self.background_summary = background_summary
        self._alock: asyncio.Lock | None = None
        self._background: set[asyncio.Task[Any]] = set()

    @property
    def _lock(self) -> asyncio.Lock:
        if self._alock is None:
            self._alock = asyncio.Lock()
        return self._alock

    # -- history ------------------------------------------------------------------------------
    async def load(self) -> AsyncConversation:
        """Loads the stored conversation now (``store=``); otherwise its first call does.

        Returns:
            The conversation, so ``conv = await AsyncConversation(..., store=s).load()``.
        """
        async with self._lock:
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

    async def extend(self, messages: Sequence[Any]) -> list[Turn]:
        """Appends existing messages without a call (see :meth:`Conversation.extend`)."""
        async with self._lock:
            await self._sync_store()
            if self._link is not None:
                checked = self.history.validate_new(messages)
                outcome, cancelled = await self._link.write_async(self, checked)
                turns = self._link.apply(self, checked, outcome)
                if cancelled is not None:
                    raise cancelled
            else:
                turns = self.history.append(messages)
            self._spawn(self._run_jobs(None, self._observe_jobs(turns)))
            return turns

    async def clear(self) -> None:
        """Starts over: forgets every turn and summary; the system prompt stays."""
        async with self._lock:
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
        await conv._run_jobs(None, conv._observe_jobs(conv.history.turn_list()))
        return conv

    async def drain(self) -> None:
        """Waits for background work (turns being stored for recall) to finish."""
        while self._background:
            await asyncio.gather(*list(self._background), return_exceptions=True)

    def _spawn(self, coro: Any) -> None:
        task = asyncio.ensure_future(coro)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    # -- calls --------------------------------------------------------------------------------
    async def preview(self, message: Any = None, **params: Any) -> ContextPlan:
        """The plan a call would send, without calling the model (see ``Conversation.preview``)."""
        async with self._lock:
            call = self._begin(message, params.pop("tools", None), None, None, params)
            request = self._request(call)
            await self.drain()
            jobs = [j for j in self._jobs(request) if isinstance(j, LocalJob)]
            await self._run_jobs(request, jobs)
            return self.strategy.build(request)

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
        return _parsed(await self._run(call, self.client.chat.completions.parse), choose)

    async def _run(self, call: _Call, create: Callable[..., Any]) -> ChatCompletion:
        async with self._lock:
            await self.drain()
            await self._sync_store()
            while True:
                request = self._request(call)
                await self._run_jobs(request, self._jobs(request))
                plan = self._build(call, request)
                completion: ChatCompletion = await create(**self._kwargs(call, plan, stream=False))
                tool_calls = self._on_completion(call, plan, completion)
                if tool_calls is None:
                    break
                assert call.registry is not None
                call.pending.extend(await call.registry.run_all_async(tool_calls))
            turns, cancelled = await self._commit_async(call, completion)
            self.last_ttft = None
            self._after_commit(turns)
            if cancelled is not None:
                raise cancelled
            return completion

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

    def _after_commit(self, turns: Sequence[Turn]) -> None:
        self._spawn(self._run_jobs(None, self._observe_jobs(turns)))
        if self.background_summary and isinstance(self.strategy, PreparingStrategy):
            self._spawn(self._prepare_next())

    async def _prepare_next(self) -> None:
        request, jobs = self._next_request()
        if jobs:
            await self._run_jobs(request, jobs)
            self._keep_prepared(request)

    async def prepare_next(self) -> Summary | None:
        """Makes now the summary the next call would need (see ``Conversation.prepare_next``)."""
        async with self._lock:
            await self.drain()
            await self._sync_store()
            request, jobs = self._next_request()
            if not jobs:
                return None
            await self._run_jobs(request, jobs)
            return self._keep_prepared(request)

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

    async def _stream(self, call: _Call) -> AsyncIterator[StreamEvent]:
        async with self._lock:
            await self.drain()
            await self._sync_store()
            while True:
                request = self._request(call)
                await self._run_jobs(request, self._jobs(request))
                plan = self._build(call, request)
                asm = StreamAssembler(time.perf_counter())
                response = await self.client.chat.completions.create(
                    **self._kwargs(call, plan, stream=True)
                )
                try:
                    async for chunk in response:
                        for event in asm.feed(chunk):
                            yield event
                finally:
                    await response.close()
                completion = asm.finish()
                tool_calls = self._on_completion(call, plan, completion)
                if tool_calls is None:
                    break
                assert call.registry is not None
                for tool_msg in await call.registry.run_all_async(tool_calls):
                    call.pending.append(tool_msg)
                    yield ToolResult(
                        tool_msg["tool_call_id"], _tool_name(tool_calls, tool_msg), tool_msg
                    )
            turns, cancelled = await self._commit_async(call, completion)
            self.last_ttft = asm.ttft
            self._after_commit(turns)
            if cancelled is not None:
                raise cancelled
            assert call.final is not None
            yield StreamEnd(completion, call.final, plan, asm.ttft, self.last_latency or 0.0)

    async def _run_jobs(self, request: ContextRequest | None, jobs: Sequence[Job]) -> None:
        for job in jobs:
            if isinstance(job, LocalJob):
                result = await asyncio.to_thread(_run_local, job)
            else:
                result = await self._run_llm_job(job)
            self._record_job(request, job, result)

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
