"""``Conversation`` and ``AsyncConversation``: a chat loop's ``messages`` list, with memory.

Budget arithmetic, validation, selection and message assembly live in :class:`_Core`, shared by
both classes and free of I/O. Only the I/O (the API call, streaming, running tools and strategy
jobs) is written twice, once blocking and once with ``await``; ``tests/test_parity.py`` checks
that the two send identical requests. The sync class is not a wrapper around the async one, so it
works inside notebooks, which already run an event loop.
"""

from __future__ import annotations

import asyncio
import inspect
import threading
import time
import uuid
import warnings
from collections.abc import AsyncIterator, Callable, Iterator, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import openai
from openai.types.chat import ChatCompletion

from .errors import ToolRoundsExceededError, UsageError
from .events import StreamEnd, StreamEvent, ToolResult
from .history import History, Summary, Turn
from .messages import Message, open_tool_call_ids, user_message
from .models import resolve_context_window
from .plan import ContextPlan
from .strategy import (
    Budget,
    ContextRequest,
    Job,
    KeepAll,
    LLMJob,
    LocalJob,
    PreparingStrategy,
    Strategy,
)
from .streaming import StreamAssembler
from .tokens import TokenCounter, UsageCalibrator, default_counter
from .tools import ToolRegistry
from .usage import Usage

#: Default room kept for the reply when the caller sets no ``max_tokens``: an eighth of the
#: window, capped at 4,096 tokens.
DEFAULT_MAX_REPLY_RESERVE = 4096
DEFAULT_MAX_TOOL_ROUNDS = 8

_RESERVED_PARAMS = {
    "messages": "the conversation builds messages; pass the new user message to send()",
    "model": "the model is set on the conversation (Conversation(client, model=...))",
    "stream": "use conv.stream(...) for streaming",
}

Chooser = Callable[[ChatCompletion], int]


@dataclass
class JobResult:
    """The outcome of a strategy job, handed back in ``ContextRequest.results``.

    Attributes:
        value: What the job returned (a ``ChatCompletion`` for an :class:`LLMJob`).
        error: The exception, when it failed.
        seconds: How long it took.
        model: For LLM jobs, the model it went to.
    """

    value: Any = None
    error: BaseException | None = None
    seconds: float = 0.0
    model: str = ""

    @property
    def ok(self) -> bool:
        return self.error is None


@dataclass
class _Call:
    """State of one send/stream/parse while it runs. Nothing here is committed until the end."""

    pending: list[Message]
    params: dict[str, Any]
    registry: ToolRegistry | None
    choose: Chooser | None
    max_tool_rounds: int
    budget_reserve: int
    rounds: int = 0
    final: Message | None = None
    plans: list[ContextPlan] = field(default_factory=list)
    started: float = field(default_factory=time.perf_counter)


def default_reply_reserve(context_window: int) -> int:
    """Room kept for the reply when no ``max_tokens`` is given: window/8, at most 4,096."""
    return max(1, min(DEFAULT_MAX_REPLY_RESERVE, context_window // 8))


class _Core:
    """Everything both conversation classes share. No I/O happens here."""

    def __init__(
        self,
        client: Any,
        *,
        model: str,
        system: str | Mapping[str, Any] | None = None,
        strategy: Strategy | None = None,
        context_window: int | None = None,
        counter: TokenCounter | None = None,
        reply_reserve: int | None = None,
        send_reasoning: bool = False,
        max_tool_rounds: int = DEFAULT_MAX_TOOL_ROUNDS,
        conversation_id: str | None = None,
        history: History | None = None,
    ) -> None:
        if not isinstance(model, str) or not model:
            raise UsageError("model must be a non-empty string")
        if strategy is not None and not callable(getattr(strategy, "build", None)):
            raise UsageError(
                f"strategy must have a build(request) method, got {type(strategy).__name__}"
            )
        self.client = client
        self.model = model
        self.context_window = resolve_context_window(model, context_window)
        if reply_reserve is not None and not (0 < reply_reserve < self.context_window):
            raise UsageError(
                f"reply_reserve must be between 1 and the context window "
                f"({self.context_window}), got {reply_reserve}"
            )
        self.reply_reserve = reply_reserve or default_reply_reserve(self.context_window)
        self.strategy: Strategy = strategy if strategy is not None else KeepAll()
        self.counter: TokenCounter = counter if counter is not None else default_counter(model)
        self.history = history if history is not None else History(system)
        if history is not None and system is not None:
            self.history.set_system(system)
        self.send_reasoning = send_reasoning
        self.max_tool_rounds = max_tool_rounds
        self.conversation_id = conversation_id or uuid.uuid4().hex
        self.calibrator = UsageCalibrator()
        self.usage = Usage()
        self.last_plan: ContextPlan | None = None
        self.last_completion: ChatCompletion | None = None
        self.last_ttft: float | None = None
        self.last_latency: float | None = None

    # -- public, I/O-free -----------------------------------------------------------------------
    @property
    def messages(self) -> list[Message]:
        """The full history as OpenAI message dicts, system first (a copy)."""
        return self.history.messages()

    @property
    def turns(self) -> Sequence[Turn]:
        """The committed turns, with their stable ids."""
        return self.history.turns

    @property
    def system(self) -> Message | None:
        return self.history.system

    def to_dict(self) -> dict[str, Any]:
        """The history (turns, summaries, system) as plain JSON-compatible data."""
        data = self.history.to_dict()
        data["conversation_id"] = self.conversation_id
        data["model"] = self.model
        return data

    def to_json(self, **kwargs: Any) -> str:
        """The history as a JSON string; load it with ``from_json``."""
        import json

        return json.dumps(self.to_dict(), ensure_ascii=False, **kwargs)

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(model={self.model!r}, turns={len(self.history)}, "
            f"strategy={type(self.strategy).__name__}, window={self.context_window})"
        )

    # -- one call's life, pure parts -------------------------------------------------------------
    def _begin(
        self,
        message: Any,
        tools: Sequence[Any] | None,
        choose: Chooser | None,
        max_tool_rounds: int | None,
        params: dict[str, Any],
    ) -> _Call:
        """Validates everything a call needs, before any network traffic."""
        for key, why in _RESERVED_PARAMS.items():
            if key in params:
                raise UsageError(f"{key}= is not a send() argument: {why}")
        if choose is not None and not callable(choose):
            raise UsageError("choose= must be a callable taking the ChatCompletion")
        registry = ToolRegistry.from_tools(tools) if tools else None
        if registry is not None and "tools" in params:
            raise UsageError("pass tools once, as tools=[...]")
        rounds = self.max_tool_rounds if max_tool_rounds is None else max_tool_rounds
        if rounds < 0:
            raise UsageError("max_tool_rounds must be >= 0")
        if message is None:
            pending: list[Message] = []
            turns = self.history.turn_list()
            if not turns:
                raise UsageError("nothing to send: the history is empty and no message was given")
            last = turns[-1].messages[-1]
            if open_tool_call_ids(turns[-1].messages):
                raise UsageError(
                    "the last assistant message has tool calls without replies: add the tool "
                    "messages with extend() before calling send() with no message"
                )
            if last.get("role") == "assistant":
                raise UsageError(
                    "nothing to send: the last message is the assistant's; give a user message"
                )
        else:
            pending = self.history.validate_new([user_message(message)])
        reserve = params.get("max_completion_tokens") or params.get("max_tokens")
        if reserve is not None:
            if not isinstance(reserve, int) or reserve <= 0:
                raise UsageError(f"max_tokens must be a positive int, got {reserve!r}")
            if reserve >= self.context_window:
                raise UsageError(
                    f"max_tokens={reserve} leaves no room for the prompt in a "
                    f"{self.context_window}-token window"
                )
        n = params.get("n")
        if n is not None and (not isinstance(n, int) or n < 1):
            raise UsageError(f"n must be a positive int, got {n!r}")
        return _Call(
            pending=pending,
            params=dict(params),
            registry=registry,
            choose=choose,
            max_tool_rounds=rounds,
            budget_reserve=int(reserve) if reserve else self.reply_reserve,
        )

    def _request(self, call: _Call) -> ContextRequest:
        budget = Budget(
            context_window=self.context_window,
            reply_reserve=call.budget_reserve,
            ratio=self.calibrator.ratio(self.model),
        )
        tools = call.registry.schemas if call.registry else call.params.get("tools")
        return ContextRequest(
            history=self.history,
            pending=list(call.pending),
            budget=budget,
            counter=self.counter,
            conversation_id=self.conversation_id,
            model=self.model,
            tools=list(tools) if tools else None,
            send_reasoning=self.send_reasoning,
        )

    def _jobs(self, request: ContextRequest) -> Sequence[Job]:
        # getattr rather than isinstance(…, PreparingStrategy): a runtime Protocol check costs
        # more than the rest of a typical context build.
        prepare = getattr(self.strategy, "prepare", None)
        return prepare(request) if callable(prepare) else ()

    def _record_job(self, request: ContextRequest | None, job: Job, result: JobResult) -> None:
        if request is None:
            # Background work (storing turns): nobody waits for it, so say when it fails.
            if result.error is not None:
                warnings.warn(
                    f"convmem background job {job.key!r} failed: "
                    f"{type(result.error).__name__}: {result.error}",
                    RuntimeWarning,
                    stacklevel=2,
                )
        else:
            request.results[job.key] = result
        if isinstance(job, LLMJob):
            usage = getattr(result.value, "usage", None)
            self.usage.add_summary(
                int(getattr(usage, "prompt_tokens", 0) or 0),
                int(getattr(usage, "completion_tokens", 0) or 0),
            )

    def _build(self, call: _Call, request: ContextRequest) -> ContextPlan:
        plan = self.strategy.build(request)
        if plan.new_summary is not None:
            # A summary is a derived record of committed turns: it is kept even if the call
            # then fails, so the next call does not pay for it again. Messages are untouched.
            self.history.add_summary(plan.new_summary)
        call.plans.append(plan)
        return plan

    def _kwargs(self, call: _Call, plan: ContextPlan, *, stream: bool) -> dict[str, Any]:
        kwargs: dict[str, Any] = {"model": self.model, "messages": plan.messages}
        kwargs.update(call.params)
        if call.registry is not None:
            kwargs["tools"] = call.registry.schemas
        if stream:
            kwargs["stream"] = True
            kwargs.setdefault("stream_options", {"include_usage": True})
        return kwargs

    def _on_completion(
        self, call: _Call, plan: ContextPlan, completion: ChatCompletion
    ) -> list[dict[str, Any]] | None:
        """Accounts for a response; returns the tool calls convmem must run, or None when done."""
        usage = completion.usage
        self.usage.add_completion(usage)
        if usage is not None and usage.prompt_tokens:
            plan.reported_prompt_tokens = int(usage.prompt_tokens)
            self.calibrator.observe(self.model, plan.estimated_tokens, int(usage.prompt_tokens))
        self.last_plan = plan
        if not completion.choices:
            raise UsageError("the server returned no choices")
        index = call.choose(completion) if call.choose else 0
        if not isinstance(index, int) or not 0 <= index < len(completion.choices):
            raise UsageError(
                f"choose= returned {index!r}; expected an index below {len(completion.choices)}"
            )
        message = _assistant_message(completion.choices[index].message)
        tool_calls = message.get("tool_calls") or []
        if tool_calls and call.registry is not None and call.registry.can_run_all(tool_calls):
            if call.rounds >= call.max_tool_rounds:
                raise ToolRoundsExceededError(call.rounds, [*call.pending, message])
            call.rounds += 1
            call.pending.append(message)
            return list(tool_calls)
        call.final = message
        return None

    def _commit(self, call: _Call, completion: ChatCompletion) -> list[Turn]:
        assert call.final is not None
        turns = self.history.append([*call.pending, call.final])
        self.last_completion = completion
        self.last_latency = time.perf_counter() - call.started
        return turns

    def _next_request(self) -> tuple[ContextRequest, list[LLMJob]]:
        """A request for a next call with no message yet, and the LLM jobs it would need."""
        call = _Call(
            pending=[],
            params={},
            registry=None,
            choose=None,
            max_tool_rounds=0,
            budget_reserve=self.reply_reserve,
        )
        request = self._request(call)
        return request, [j for j in self._jobs(request) if isinstance(j, LLMJob)]

    def _keep_prepared(self, request: ContextRequest) -> Summary | None:
        try:
            plan = self.strategy.build(request)
        except Exception:  # the next call builds its own context and reports any problem
            return None
        if plan.new_summary is not None:
            self.history.add_summary(plan.new_summary)
        return plan.new_summary

    def _job_call(self, job: LLMJob) -> tuple[Any, dict[str, Any]]:
        """The client and ``create`` arguments of a strategy's LLM job."""
        kwargs: dict[str, Any] = {
            "model": job.model or self.model,
            "messages": job.messages,
            **dict(job.params),
        }
        if job.timeout is not None:
            kwargs["timeout"] = job.timeout
        return (job.client if job.client is not None else self.client), kwargs

    def _observe_jobs(self, turns: Sequence[Turn]) -> Sequence[Job]:
        observe = getattr(self.strategy, "observe", None)
        if turns and callable(observe):
            return observe(self.conversation_id, turns)  # type: ignore[no-any-return]
        return ()


def _load_kwargs(data: str | Mapping[str, Any], kwargs: dict[str, Any]) -> dict[str, Any]:
    """Constructor arguments for a conversation loaded from ``to_json`` output."""
    import json

    raw = json.loads(data) if isinstance(data, str) else data
    if isinstance(raw, Mapping):
        kwargs.setdefault("model", raw.get("model"))
        kwargs.setdefault("conversation_id", raw.get("conversation_id"))
    return {**kwargs, "history": History.from_dict(raw)}


def _parsed(completion: ChatCompletion, choose: Chooser | None) -> Any:
    index = choose(completion) if choose else 0
    return getattr(completion.choices[index].message, "parsed", None)


def _assistant_message(msg: Any) -> Message:
    data: Message = msg.model_dump(exclude_none=True, exclude={"parsed"}, warnings=False)
    if not data.get("annotations"):
        data.pop("annotations", None)
    data["role"] = "assistant"
    if data.get("tool_calls"):
        data.setdefault("content", None)
    elif "content" not in data:
        data["content"] = ""
    return data


def _run_local(job: LocalJob) -> JobResult:
    t0 = time.perf_counter()
    try:
        return JobResult(value=job.fn(), seconds=time.perf_counter() - t0)
    except Exception as exc:  # a store failure must not lose the call; the strategy decides
        return JobResult(error=exc, seconds=time.perf_counter() - t0)


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
            turns = self.history.append(messages)
            self._spawn_observe(turns)
            return turns

    def clear(self) -> None:
        """Starts over: forgets every turn and summary; the system prompt stays."""
        with self._lock:
            self.drain()
            self.history.clear()
            self.last_plan = None

    @classmethod
    def from_json(cls, client: Any, data: str | Mapping[str, Any], **kwargs: Any) -> Conversation:
        """Loads a conversation saved with :meth:`to_json` (or a plain list of messages)."""
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
            turns = self._commit(call, completion)
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
            turns = self._commit(call, completion)
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
    async def extend(self, messages: Sequence[Any]) -> list[Turn]:
        """Appends existing messages without a call (see :meth:`Conversation.extend`)."""
        async with self._lock:
            turns = self.history.append(messages)
            self._spawn(self._run_jobs(None, self._observe_jobs(turns)))
            return turns

    async def clear(self) -> None:
        """Starts over: forgets every turn and summary; the system prompt stays."""
        async with self._lock:
            await self.drain()
            self.history.clear()
            self.last_plan = None

    @classmethod
    async def from_json(
        cls, client: Any, data: str | Mapping[str, Any], **kwargs: Any
    ) -> AsyncConversation:
        """Loads a conversation saved with :meth:`to_json`."""
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
            turns = self._commit(call, completion)
            self.last_ttft = None
            self._after_commit(turns)
            return completion

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
            turns = self._commit(call, completion)
            self.last_ttft = asm.ttft
            self._after_commit(turns)
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


def _tool_name(tool_calls: Sequence[Mapping[str, Any]], tool_msg: Mapping[str, Any]) -> str:
    for call in tool_calls:
        if call.get("id") == tool_msg.get("tool_call_id"):
            return str(call.get("function", {}).get("name", ""))
    return ""
