"""``Conversation``: the blocking I/O of a conversation (the pure parts are in ``_Core``)."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager, suppress
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
        system: The system prompt (pinned: never dropped, summarised or recalled): a string,
            a list of content parts, or a whole system/developer message.
        strategy: How each call's context is built; default :class:`~convmem.strategy.KeepAll`.
        context_window: The model's window in tokens. Without it the window comes from
            :data:`convmem.models.CONTEXT_WINDOWS`, else from the server (vLLM, llama.cpp,
            Ollama report theirs; see :mod:`convmem.providers`); ``"server"`` asks the server
            even for a model the table knows. A window the server reports also replaces a
            table figure at the first call, and one learnt from an overflow error replaces
            any. ``conv.window`` says where it came from.
        counter: A :class:`~convmem.tokens.TokenCounter`; default tiktoken for the model.
        reply_reserve: Tokens kept free for the reply when a call sets no ``max_tokens``.
        send_reasoning: Send ``reasoning_content`` back in later calls (some providers require
            it during tool-call turns). Off by default; it is always kept in the history.
        max_tool_rounds: How many rounds of registered tool calls one send may run.
        conversation_id: Identifies this conversation in shared stores (random by default).
        history: Start from an existing :class:`~convmem.history.History`.
        job_timeout: Seconds a strategy's local job (an embedding query, a vector search) may
            take before the call goes on without it (the strategy falls back; the plan says
            so). None waits for ever. The first job of a strategy runs on the calling thread
            without a limit, so that the packages it imports never race another thread.
        tool_timeout: Seconds a tool convmem runs may take; then the call fails with
            :class:`~convmem.errors.ToolTimeoutError` and nothing is committed. With a limit,
            tools run in their own thread. None (the default) runs them on the calling
            thread with no limit.
        store: A :class:`~convmem.stores.Store` (e.g. ``SQLiteStore("chats.db")``): the
            conversation ``conversation_id`` is resumed from it when it exists and created
            otherwise, and every committed turn is written to it (see "Durable conversations"
            in the README).
        on_conflict: With a store, what a commit does when another process moved the
            conversation on since: ``"append"`` (default), ``"raise"`` (``ConflictError``) or
            ``"fork"``.
        save_plan: With a store, also keep each call's :class:`~convmem.plan.ContextPlan`
            (``StoredConversation.state["last_plan"]``); off by default, plans are large.
        background_summary: After each reply, make the summary the next call would need
            (e.g. ``RollingSummary``) in the shared pool, so the next call does not wait for
            it. The job holds the conversation like a call: a call that starts before the
            summary is done waits for it; a summariser that fails leaves the history untouched
            (:attr:`last_background_error`) and the next call summarises as without the option.
        warm: Call :meth:`warm` now (load the tokenizer and the embedding model up front).

    One call runs at a time. A stream holds the conversation only while it works, never
    while its consumer has an event: a later call from the same thread (after a ``break``
    or Ctrl-C left the iterator in a variable) closes the unfinished stream, which commits
    nothing and raises :class:`~convmem.errors.StreamAbandonedError` if iterated again.
    After a call fails, :attr:`last_plan` is the plan of its last request (with a note that
    says it failed), or None when it failed before a plan was built; :attr:`last_error`
    holds the exception. Background memory work (storing turns for recall) runs in one pool
    shared by all conversations; ``close()`` (or ``with Conversation(...) as conv:``) waits
    for it.

    Raises:
        UnknownModelError: the model's window is unknown and ``context_window`` is not given.
        UsageError: ``client`` is an ``openai.AsyncOpenAI`` (use :class:`AsyncConversation`).
    """

    # The parameters are spelled out (not **kwargs to _Core) so that IDEs and type checkers
    # show them, and a misspelt one is reported against Conversation.
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
        if isinstance(client, openai.AsyncOpenAI):
            raise UsageError(
                "Conversation needs a blocking openai.OpenAI client, got an AsyncOpenAI: "
                "use AsyncConversation(client, ...) with an async client"
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
        if self._ask_server:  # not in the table: the server says, or UnknownModelError
            self._consult_server()
        if warm:
            self._warm_parts()

    # -- holding the conversation -------------------------------------------------------------
    def _acquire(self, kind: str) -> _Claim:
        claim = _Claim(kind, threading.current_thread())
        gate = self._gate
        with gate.cond:
            while True:
                holder = gate.holder
                state, victim = gate.try_take(claim)
                if state in ("free", "take"):
                    break
                if state == "busy":
                    raise _busy_error(holder.kind if holder else kind)
                gate.cond.wait(0.1)  # wake up to notice a consumer that went away
        if victim is not None:
            _close_quietly(victim.response)
        return claim

    @contextmanager
    def _hold(self, kind: str) -> Iterator[_Claim]:
        claim = self._acquire(kind)
        try:
            yield claim
        finally:
            self._gate.release(claim)

    def _hand_over(
        self, claim: _Claim, event: StreamEvent, asm: StreamAssembler
    ) -> Iterator[StreamEvent]:
        """Yields one event to the consumer, holding nothing while it has it."""
        self._gate.suspend(claim)
        yield event
        if not self._gate.resume(claim, threading.current_thread()):
            raise _abandoned(asm)

    # -- background work and closing ----------------------------------------------------------
    def drain(self) -> None:
        """Waits for background work (turns being stored for recall) to finish.

        Waits at most ``job_timeout`` for each job; a job still running then records its
        outcome when it ends (a failure goes to :attr:`pending_memory`).
        """
        for fut in self._take_futures():
            with suppress(TimeoutError):
                fut.result(self.job_timeout)

    def close(self) -> None:
        """Finishes background work, tries failed memory jobs once more, and closes.

        Later calls raise :class:`~convmem.errors.UsageError`. Also done by ``with``.
        """
        if self.closed:
            return
        with self._hold("close"):
            self.drain()
            self._retry_memory(everything=True)
            self.drain()
            self.closed = True

    def __enter__(self) -> Conversation:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _spawn_observe(self, turns: Sequence[Turn]) -> None:
        """Stores finished turns in the shared pool, so the reply returns without waiting."""
        jobs = self._observe_jobs(turns)
        ids = [t.id for t in turns]
        self._spawn_local(jobs, ids)
        llm = [j for j in jobs if isinstance(j, LLMJob)]
        if llm:
            fut = POOL.submit(lambda: self._run_jobs(None, llm, ids))
            with self._memory_lock:
                self._futures.append(fut)

    # -- history ------------------------------------------------------------------------------
    def extend(self, messages: Sequence[Any], *, created_at: float | None = None) -> list[Turn]:
        """Appends existing messages (an imported chat log, tool results) without a call.

        ``created_at`` (Unix time) dates the new turns, e.g. an imported log's own time (recall
        reads it for dates the user mentions); default now.

        Raises:
            InvalidMessageError: a message is invalid; nothing is appended.
        """
        with self._hold("extend"):
            self._check_open()
            if self._link is not None:
                turns = self._link.write_messages(self, self.history.validate_new(messages))
            else:
                turns = self.history.append(messages, created_at=created_at)
            self._spawn_observe(turns)
            return turns

    def clear(self) -> None:
        """Starts over: forgets every turn and summary; the system prompt stays."""
        with self._hold("clear"):
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
        whose turns a shared recall store holds); a file that names another id is refused. The
        strategy observes the loaded turns in the background (e.g. stores them for recall).
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
        with self._hold("prepare_next"):
            self.drain()
            if self._link is not None:
                self._link.catch_up(self, self._link.fetch())
            request, jobs = self._next_request()
            if not jobs:
                return None
            self._run_jobs(request, jobs)
            return self._keep_prepared(request)

    def warm(self) -> Conversation:
        """Loads now what the first call would load: the tokenizer and, for strategies that
        embed (``VectorRecall``), the embedding model and the Chroma collection.

        Idempotent, and cheap once warm. Returns the conversation, so
        ``conv = Conversation(...).warm()``.
        """
        with self._hold("warm"):
            self._check_open()
            self._warm_parts()
        return self

    def _after_commit(self, claim: _Claim, turns: Sequence[Turn]) -> None:
        self._spawn_observe(turns)
        job_claim = self._summary_claim(claim)
        if job_claim is None:
            return
        try:
            fut = POOL.submit(lambda: self._background_summary(job_claim))
        except BaseException:
            self._gate.release(job_claim)
            raise
        fut.add_done_callback(lambda _: self._gate.release(job_claim))
        with self._memory_lock:
            self._futures.append(fut)

    def _background_summary(self, claim: _Claim) -> None:
        """Makes the next summary, holding the conversation (handed over by the call)."""
        try:
            if self.closed:
                return
            if self._link is not None:
                self._link.catch_up(self, self._link.fetch())
            for _ in range(BACKGROUND_SUMMARY_ROUNDS):  # until the next call finds none due
                request, jobs = self._next_request()
                if not jobs:
                    break
                self._run_jobs(request, jobs)
                if self._keep_prepared(request) is None:
                    break
        except Exception as exc:
            self._summary_failed(exc)
        finally:
            self._gate.release(claim)

    # -- calls --------------------------------------------------------------------------------
    def preview(self, message: Any = None, **params: Any) -> ContextPlan:
        """The plan a call with ``message`` would send, without calling the model.

        Summariser calls are not made; a plan that would need one says so in its notes.
        """
        call = self._begin(message, params.pop("tools", None), None, None, params)
        with self._hold("preview"):
            self.drain()
            if self._link is not None:  # turns other processes committed meanwhile
                self._link.catch_up(self, self._link.fetch())
            self._recheck(call)
            request = self._request(call)
            self._run_jobs(request, self._preview_jobs(request))
            return self._preview_plan(call, request)

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
            InvalidResponseError: the reply is not a usable chat completion.
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
        return parsed(self._run(call, self.client.chat.completions.parse), choose)

    def _start(self, call: _Call) -> None:
        """First steps of a call, once it holds the conversation."""
        self.drain()
        if self._link is not None:  # turns other processes committed meanwhile
            self._link.catch_up(self, self._link.fetch())
        self._recheck(call)
        self._retry_memory()
        self._consult_server(call.pending)

    def _create(self, create: Callable[..., Any], kwargs: dict[str, Any]) -> Any:
        try:
            return create(**kwargs)
        except json.JSONDecodeError as exc:
            raise not_json(exc) from exc
        except (AttributeError, TypeError) as exc:
            # The SDK's parse() reads the reply before returning it: a body that is not a
            # chat completion (HTML, null) fails inside the SDK, not in convmem's check.
            if getattr(create, "__name__", "") != "parse":
                raise
            raise InvalidResponseError(f"parse() could not read it ({exc})") from exc

    def _run(self, call: _Call, create: Callable[..., Any]) -> ChatCompletion:
        with self._hold("call") as claim:
            try:
                self._start(call)
                while True:
                    request = self._request(call)
                    self._run_jobs(request, self._jobs(request))
                    plan = self._build(call, request)
                    try:
                        completion = self._create(create, self._kwargs(call, plan, stream=False))
                    except openai.APIStatusError as exc:
                        if self._overflow(call.refused, plan, exc):
                            continue  # learnt from the refusal: rebuild and retry, once
                        raise
                    tool_calls = self._on_completion(call, plan, completion)
                    if tool_calls is None:
                        break
                    call.pending.extend(self._run_tools(call, tool_calls))
                turns = self._commit(call, completion, self._store_write(call))
            except BaseException as exc:
                self._failed(call, exc)
                raise
            self.last_ttft = None
            self._after_commit(claim, turns)
            return completion  # type: ignore[no-any-return]

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

    def _stream(
        self, call: _Call, create: Callable[..., Any] | None = None
    ) -> Iterator[StreamEvent]:
        claim = self._acquire("stream")
        try:
            try:
                self._start(call)
                while True:
                    request = self._request(call)
                    self._run_jobs(request, self._jobs(request))
                    plan = self._build(call, request)
                    asm = StreamAssembler(time.perf_counter())
                    try:
                        response = self._create(
                            create or self.client.chat.completions.create,
                            self._kwargs(call, plan, stream=True),
                        )
                    except openai.APIStatusError as exc:
                        if self._overflow(call.refused, plan, exc):
                            continue  # learnt from the refusal: rebuild and retry, once
                        raise
                    claim.response = response
                    try:
                        for chunk in response:
                            events: Sequence[Any] = asm.feed(chunk)
                            if call.raw:
                                events = [RawChunk(chunk)]
                            for event in events:
                                yield from self._hand_over(claim, event, asm)
                    except json.JSONDecodeError as exc:  # an SSE line that is not JSON
                        raise not_json(exc) from exc
                    finally:
                        claim.response = None
                        _close_quietly(response)
                    completion = asm.finish()
                    tool_calls = self._on_completion(call, plan, completion)
                    if tool_calls is None:
                        break
                    for tool_msg in self._run_tools(call, tool_calls):
                        call.pending.append(tool_msg)
                        name = _tool_name(tool_calls, tool_msg)
                        result = ToolResult(tool_msg["tool_call_id"], name, tool_msg)
                        yield from self._hand_over(claim, result, asm)
                turns = self._commit(call, completion, self._store_write(call))
            except BaseException as exc:
                if not claim.cancelled:  # a closed stream must not overwrite a later call's state
                    self._failed(call, exc)
                raise
            self.last_ttft = asm.ttft
            self._after_commit(claim, turns)
        finally:
            self._gate.release(claim)
        assert call.final is not None
        yield StreamEnd(completion, call.final, plan, asm.ttft, self.last_latency or 0.0)

    # -- jobs and tools -----------------------------------------------------------------------
    def _run_jobs(
        self, request: ContextRequest | None, jobs: Sequence[Job], turn_ids: Sequence[int] = ()
    ) -> None:
        for job in jobs:
            result = self._run_local(job) if isinstance(job, LocalJob) else self._run_llm_job(job)
            self._record_job(request, job, result, turn_ids)

    def _run_local(self, job: LocalJob) -> JobResult:
        if self.job_timeout is None or not self._warm():
            return self._cold_or_inline(job)
        fut = POOL.submit(lambda: _run_local(job))
        try:
            return fut.result(self.job_timeout)
        except TimeoutError:
            return _timed_out(job, self.job_timeout)

    def _run_llm_job(self, job: LLMJob) -> JobResult:
        client, kwargs = self._job_call(job)
        t0 = time.perf_counter()
        try:
            value = client.chat.completions.create(**kwargs)
            return JobResult(value=value, seconds=time.perf_counter() - t0, model=kwargs["model"])
        except Exception as exc:  # the strategy falls back; KeyboardInterrupt still propagates
            return JobResult(error=exc, seconds=time.perf_counter() - t0, model=kwargs["model"])

    def _run_tools(self, call: _Call, tool_calls: list[dict[str, Any]]) -> list[dict[str, Any]]:
        registry = call.registry
        assert registry is not None
        if self.tool_timeout is None:
            return registry.run_all_sync(tool_calls)
        out = []
        for tool_call in tool_calls:
            future = start_daemon(partial(registry.run_sync, tool_call), _call_name(tool_call))
            try:
                out.append(future.result(self.tool_timeout))
            except TimeoutError:
                raise ToolTimeoutError(_call_name(tool_call), self.tool_timeout) from None
        return out


def _close_quietly(response: Any) -> None:
    close = getattr(response, "close", None)
    if callable(close):
        with suppress(Exception):  # closing what failed must not hide why it failed
            close()
