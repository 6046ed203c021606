"""``Conversation``: the blocking I/O of a conversation (the pure parts are in ``_Core``)."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

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
from .strategy import ContextRequest, Job, LLMJob, LocalJob
from .streaming import StreamAssembler


class Conversation(_Core):
    """A conversation over a blocking ``openai.OpenAI`` client (or any compatible server).

    Put it in place of the ``messages`` list of an existing chat loop::

        conv = Conversation(OpenAI(), model="gpt-4o-mini", system="You are terse.")
        reply = conv.send("Hi, I am Xiaoming", temperature=0.5)   # a ChatCompletion
        for ev in conv.stream("Who am I?"):
            ...

    Args:
        client: An ``openai.OpenAI`` client (``base_url`` may point at DashScope, vLLM, Ollama,
            llama.cpp, ...).
        model: The model name sent with every call.
        system: The system prompt (pinned: never dropped, summarised or recalled).
        strategy: How each call's context is built; default :class:`~convmem.strategy.KeepAll`.
        context_window: The model's window in tokens; required when the model is not in
            :data:`convmem.models.CONTEXT_WINDOWS`.
        counter: A :class:`~convmem.tokens.TokenCounter`; default tiktoken for the model.
        reply_reserve: Tokens kept free for the reply when a call sets no ``max_tokens``.
        send_reasoning: Send ``reasoning_content`` back in later calls (some providers require
            it during tool-call turns). Off by default; it is always kept in the history.
        max_tool_rounds: How many rounds of registered tool calls one send may run.
        conversation_id: Identifies this conversation in shared stores (random by default).
        history: Start from an existing :class:`~convmem.history.History`.
        store: A :class:`~convmem.stores.Store` (e.g. ``SQLiteStore("chats.db")``): the
            conversation ``conversation_id`` is resumed from it when it exists and created
            otherwise, and every committed turn is written to it (see "Durable conversations"
            in the README).
        on_conflict: With a store, what a commit does when another process moved the
            conversation on since: ``"append"`` (default), ``"raise"`` (``ConflictError``) or
            ``"fork"``.
        save_plan: With a store, also keep each call's :class:`~convmem.plan.ContextPlan`
            (``StoredConversation.state["last_plan"]``); off by default, plans are large.

    Raises:
        UnknownModelError: the model's window is unknown and ``context_window`` is not given.
    """

    def __init__(self, client: Any, **kwargs: Any) -> None:
        super().__init__(client, **kwargs)
        self._lock = threading.Lock()
        self._executor: ThreadPoolExecutor | None = None
        self._background: list[Future[None]] = []

    def drain(self) -> None:
        """Waits for background work (turns being stored for recall) to finish."""
        pending, self._background = self._background, []
        for fut in pending:
            fut.result()

    def close(self) -> None:
        """Finishes background work and stops the worker thread (also done at exit)."""
        self.drain()
        if self._executor is not None:
            self._executor.shutdown(wait=True)
            self._executor = None

    def _spawn_observe(self, turns: Sequence[Turn]) -> None:
        """Stores finished turns in a worker thread, so the reply returns without waiting."""
        jobs = self._observe_jobs(turns)
        if not jobs:
            return
        if self._executor is None:
            self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="convmem")
        self._background.append(self._executor.submit(self._run_jobs, None, jobs))

    # -- history ------------------------------------------------------------------------------
    def extend(self, messages: Sequence[Any]) -> list[Turn]:
        """Appends existing messages (an imported chat log, tool results) without a call.

        Raises:
            InvalidMessageError: a message is invalid; nothing is appended.
        """
        with self._lock:
            if self._link is not None:
                turns = self._link.write_messages(self, self.history.validate_new(messages))
            else:
                turns = self.history.append(messages)
            self._spawn_observe(turns)
            return turns

    def clear(self) -> None:
        """Starts over: forgets every turn and summary; the system prompt stays."""
        with self._lock:
            self._refuse_clear()
            self.drain()
            self.history.clear()
            self.last_plan = None

    @classmethod
    def from_json(cls, client: Any, data: str | Mapping[str, Any], **kwargs: Any) -> Conversation:
        """Loads a conversation saved with :meth:`to_json` (or a plain list of messages).

        The data is not trusted: it is validated fully before anything is built, and any
        problem raises :class:`~convmem.errors.InvalidHistoryError` naming the field. Pass
        ``conversation_id=`` to pin the id (recommended for files from elsewhere: the id decides
        whose turns a shared recall store holds); a file that names another id is refused.
        """
        conv = cls(client, **_load_kwargs(data, kwargs))
        conv._spawn_observe(conv.history.turn_list())
        return conv

    def prepare_next(self) -> Summary | None:
        """Makes now the summary the next call would need, if the strategy says one is due.

        Useful after importing a long log with :meth:`extend`, or when replaying a conversation
        turn by turn (the benchmarks do). Returns the new summary, or None when none was due
        (or the summariser failed; it is retried at the next call).
        """
        with self._lock:
            self.drain()
            request, jobs = self._next_request()
            if not jobs:
                return None
            self._run_jobs(request, jobs)
            return self._keep_prepared(request)

    # -- calls --------------------------------------------------------------------------------
    def preview(self, message: Any = None, **params: Any) -> ContextPlan:
        """The plan a call with ``message`` would send, without calling the model.

        Summariser calls are not made; a plan that would need one says so in its notes.
        """
        with self._lock:
            self.drain()
            call = self._begin(message, params.pop("tools", None), None, None, params)
            request = self._request(call)
            jobs = [j for j in self._jobs(request) if isinstance(j, LocalJob)]
            self._run_jobs(request, jobs)
            return self.strategy.build(request)

    def send(
        self,
        message: Any = None,
        *,
        tools: Sequence[Any] | None = None,
        choose: Chooser | None = None,
        max_tool_rounds: int | None = None,
        **params: Any,
    ) -> ChatCompletion:
        """Sends a user message with the context the strategy builds; commits the reply.

        Args:
            message: A string, a list of content parts (text, ``image_url``), or a user message
                dict. None continues the last turn (after tool results were added).
            tools: JSON tool schemas and/or Python functions. Calls to functions are run by
                convmem and answered, up to ``max_tool_rounds``.
            choose: With ``n > 1``, picks the index of the choice to commit (default 0).
            max_tool_rounds: Overrides the conversation's limit for this call.
            **params: Passed unchanged to ``chat.completions.create`` (``temperature``,
                ``response_format``, ``extra_body``, ...).

        Returns:
            The SDK's ``ChatCompletion`` of the last request.

        Raises:
            UsageError: invalid input (before any network call).
            ContextOverflowError: the strategy cannot fit the context.
            openai.APIError: the API call failed. The history is unchanged.
        """
        call = self._begin(message, tools, choose, max_tool_rounds, params)
        return self._run(call, self.client.chat.completions.create)

    def parse(
        self,
        message: Any = None,
        *,
        response_format: Any,
        tools: Sequence[Any] | None = None,
        choose: Chooser | None = None,
        **params: Any,
    ) -> Any:
        """Like :meth:`send` with structured output; returns the parsed object.

        Uses the SDK's ``chat.completions.parse`` with a pydantic model as ``response_format``.
        The full completion is in :attr:`last_completion`. Returns None when the model refused
        (the refusal is committed as the assistant message).
        """
        params["response_format"] = response_format
        call = self._begin(message, tools, choose, None, params)
        return _parsed(self._run(call, self.client.chat.completions.parse), choose)

    def _run(self, call: _Call, create: Callable[..., Any]) -> ChatCompletion:
        with self._lock:
            self.drain()
            if self._link is not None:  # turns other processes committed meanwhile
                self._link.catch_up(self, self._link.fetch())
            while True:
                request = self._request(call)
                self._run_jobs(request, self._jobs(request))
                plan = self._build(call, request)
                completion: ChatCompletion = create(**self._kwargs(call, plan, stream=False))
                tool_calls = self._on_completion(call, plan, completion)
                if tool_calls is None:
                    break
                assert call.registry is not None
                call.pending.extend(call.registry.run_all_sync(tool_calls))
            turns = self._commit(call, completion, self._store_write(call))
            self.last_ttft = None
            self._spawn_observe(turns)
            return completion

    def stream(
        self,
        message: Any = None,
        *,
        tools: Sequence[Any] | None = None,
        choose: Chooser | None = None,
        max_tool_rounds: int | None = None,
        **params: Any,
    ) -> Iterator[StreamEvent]:
        """Streams the reply as typed events; commits when the stream ends.

        Input is validated now, before any network call. The returned iterator yields
        :class:`~convmem.events.TextDelta`, ``ReasoningDelta``, ``ToolCallDelta``,
        ``UsageEvent``, ``ToolResult`` (when convmem ran a tool) and finally ``StreamEnd``.
        Usage is requested with ``stream_options={"include_usage": True}`` unless the caller
        set ``stream_options``. If the stream fails, is cut off, or the consumer stops early,
        nothing is committed.
        """
        call = self._begin(message, tools, choose, max_tool_rounds, params)
        return self._stream(call)

    def _stream(self, call: _Call) -> Iterator[StreamEvent]:
        with self._lock:
            self.drain()
            if self._link is not None:  # turns other processes committed meanwhile
                self._link.catch_up(self, self._link.fetch())
            while True:
                request = self._request(call)
                self._run_jobs(request, self._jobs(request))
                plan = self._build(call, request)
                asm = StreamAssembler(time.perf_counter())
                response = self.client.chat.completions.create(
                    **self._kwargs(call, plan, stream=True)
                )
                try:
                    for chunk in response:
                        yield from asm.feed(chunk)
                finally:
                    response.close()
                completion = asm.finish()
                tool_calls = self._on_completion(call, plan, completion)
                if tool_calls is None:
                    break
                assert call.registry is not None
                for tool_msg in call.registry.run_all_sync(tool_calls):
                    call.pending.append(tool_msg)
                    yield ToolResult(
                        tool_msg["tool_call_id"], _tool_name(tool_calls, tool_msg), tool_msg
                    )
            turns = self._commit(call, completion, self._store_write(call))
            self.last_ttft = asm.ttft
            self._spawn_observe(turns)
            assert call.final is not None
            yield StreamEnd(completion, call.final, plan, asm.ttft, self.last_latency or 0.0)

    def _run_jobs(self, request: ContextRequest | None, jobs: Sequence[Job]) -> None:
        for job in jobs:
            result = _run_local(job) if isinstance(job, LocalJob) else self._run_llm_job(job)
            self._record_job(request, job, result)

    def _run_llm_job(self, job: LLMJob) -> JobResult:
        client, kwargs = self._job_call(job)
        t0 = time.perf_counter()
        try:
            value = client.chat.completions.create(**kwargs)
            return JobResult(value=value, seconds=time.perf_counter() - t0, model=kwargs["model"])
        except Exception as exc:  # the strategy falls back; KeyboardInterrupt still propagates
            return JobResult(error=exc, seconds=time.perf_counter() - t0, model=kwargs["model"])
