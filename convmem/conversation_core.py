"""The sans-I/O core shared by ``Conversation`` and ``AsyncConversation``.

Budget arithmetic, validation, selection, message assembly, accounting and commit live in
:class:`_Core`, free of I/O. Only the I/O (the API call, streaming, running tools and strategy
jobs) is written twice, in :mod:`convmem.conversation_sync` and
:mod:`convmem.conversation_async`; ``tests/test_parity.py`` checks that both send identical
requests and leave identical state.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any, Literal

from openai.types.chat import ChatCompletion

from . import _check
from ._check import optional, positive_number
from .background import (
    _COLD_LOCK,
    JobResult,
    PendingMemory,
    _Background,
    _mark_warm,
)
from .conversation_server import _ServerFacts
from .errors import (
    ContextOverflowError,
    StreamAbandonedError,
    ToolRoundsExceededError,
    UsageError,
)
from .gate import _Claim, _Gate
from .history import History, Summary, Turn, load_conversation
from .messages import Message, open_tool_call_ids, user_message
from .plan import ContextPlan, Note, RefusedAttempt
from .plot import CallRecord
from .redact import describe_error, remember_client
from .replies import Chooser, assistant_message, check_completion
from .stores.link import Outcome, StoreLink
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
from .tokens import TokenCounter, UsageCalibrator
from .tools import ToolRegistry
from .usage import Usage, cached_tokens

#: Default room kept for the reply when the caller sets no ``max_tokens``: an eighth of the
#: window, capped at 4,096 tokens.
DEFAULT_MAX_REPLY_RESERVE = 4096
DEFAULT_MAX_TOOL_ROUNDS = 8
#: Seconds a strategy job (an embedding query, a vector search, storing turns) may take before
#: the call goes on without it (the strategy falls back and the plan says so).
DEFAULT_JOB_TIMEOUT = 60.0
_RESERVED_PARAMS = {
    "messages": "the conversation builds messages; pass the new user message to send()",
    "model": "the model is set on the conversation (Conversation(client, model=...))",
    "stream": "use conv.stream(...) for streaming",
}


@dataclass
class _Call:
    """State of one send/stream/parse while it runs. Nothing here is committed until the end."""

    pending: list[Message]
    params: dict[str, Any]
    registry: ToolRegistry | None
    choose: Chooser | None
    max_tool_rounds: int
    budget_reserve: int
    continues: bool = False
    #: Yield each raw SDK chunk (as :class:`RawChunk`) instead of typed events: ``convmem.wrap``
    #: hands the caller the SDK's own stream.
    raw: bool = False
    rounds: int = 0
    final: Message | None = None
    plans: list[ContextPlan] = field(default_factory=list)
    notes: list[Note] = field(default_factory=list)
    started: float = field(default_factory=time.perf_counter)
    refused: list[RefusedAttempt] = field(default_factory=list)
    #: The history's tail the new message was validated against (see ``_recheck``).
    tail: tuple[object, object] | None = None


@dataclass(frozen=True)
class RawChunk:
    """A streamed ``ChatCompletionChunk`` as the SDK parsed it (raw streams only)."""

    chunk: Any


def _same_tail(seen: tuple[object, object] | None, now: tuple[object, object]) -> bool:
    """True when nothing was committed since the message was validated (same objects)."""
    return seen is not None and seen[0] is now[0] and seen[1] is now[1]


def default_reply_reserve(context_window: int) -> int:
    """Room kept for the reply when no ``max_tokens`` is given: window/8, at most 4,096."""
    return max(1, min(DEFAULT_MAX_REPLY_RESERVE, context_window // 8))


class _Core(_Background, _ServerFacts):
    """Everything both conversation classes share. No I/O happens here (except asking the
    server about itself, in :class:`~convmem.conversation_server._ServerFacts`)."""

    #: Load a stored conversation in the constructor (the async class loads at its first call).
    _load_on_init = True

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
    ) -> None:
        self.job_timeout = optional(positive_number, "job_timeout", job_timeout)
        self.tool_timeout = optional(positive_number, "tool_timeout", tool_timeout)
        if not isinstance(model, str) or not model:
            raise UsageError("model must be a non-empty string")
        if strategy is not None:
            from .strategies.custom import as_strategy  # user strategies are checked at run time

            strategy = as_strategy(strategy)
        self.client = client
        self.model = model
        # A store resumes the conversation it has under this id (see convmem.stores.link).
        self._link: StoreLink | None = None
        stored = None
        if store is not None:
            if conversation_id is None:
                conversation_id = uuid.uuid4().hex
            self._link = StoreLink(
                store,
                _check.text_id("conversation_id", conversation_id),
                on_conflict,
                system_given=system is not None,
                save_plan=save_plan,
            )
            if self._load_on_init:
                stored = self._link.load()
                if context_window is None and stored is not None:
                    context_window = stored.context_window
        self.strategy: Strategy = strategy if strategy is not None else KeepAll()
        self._init_window(context_window, reply_reserve, counter)
        self.history = history if history is not None else History(system)
        if history is not None and system is not None:
            self.history.set_system(system)
        self.send_reasoning = send_reasoning
        self.max_tool_rounds = _check.non_negative_int("max_tool_rounds", max_tool_rounds)
        self.conversation_id = (
            uuid.uuid4().hex
            if conversation_id is None
            else _check.text_id("conversation_id", conversation_id)
        )
        remember_client(client)  # its api_key is redacted from notes and warnings
        self.calibrator = UsageCalibrator()
        self.usage = Usage()
        #: The messages of the last request sent, to measure the prefix the next one shares.
        self._last_sent: list[Message] = []
        #: Running token totals of ``_last_sent`` (entry i: messages 0..i), so a shared prefix
        #: is never counted again.
        self._last_sent_totals: list[int] = []
        self.last_plan: ContextPlan | None = None
        self.last_completion: ChatCompletion | None = None
        self.last_ttft: float | None = None
        self.last_latency: float | None = None
        self.last_error: BaseException | None = None
        #: One small record per API call (numbers only), what :meth:`plot` draws.
        self.call_log: list[CallRecord] = []
        self.closed = False
        self._gate = _Gate()
        self._memory_lock = threading.Lock()
        self._memory: list[PendingMemory] = []
        self._futures: list[Future[None]] = []
        self.background_summary = False
        #: The exception of the last background summary that failed (its call falls back).
        self.last_background_error: BaseException | None = None
        self._touch_client()
        if self._link is not None and self._load_on_init:
            self._link.attach(self, stored)

    def _touch_client(self) -> None:
        # The SDK builds its resource objects lazily, importing modules on first use: do it
        # here, on the constructing thread, not later while a worker thread imports a backend.
        chat = getattr(self.client, "chat", None)
        getattr(chat, "completions", None)

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

    def _repr_html_(self) -> str:  # notebooks: see convmem.display
        from .display import conversation_html

        return conversation_html(self)

    def plot(self, **kwargs: Any) -> Any:
        """Prompt tokens of each call against the history's size (a matplotlib ``Figure``).

        Summary calls and recalled tokens are marked, next to what sending the whole history
        would cost. Keyword arguments go to :func:`convmem.plot.plot_calls` (``x="turns"``,
        ``title=``, ``ax=``). Needs ``pip install 'convmem[notebook]'``.
        """
        from .plot import plot_calls

        return plot_calls(self.call_log, history=self.history, counter=self.counter, **kwargs)

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
        rounds = (
            self.max_tool_rounds
            if max_tool_rounds is None
            else _check.non_negative_int("max_tool_rounds", max_tool_rounds)
        )
        self._check_open()
        if message is None:
            pending: list[Message] = []
            self._check_continuation()
        else:
            pending = self.history.validate_new([user_message(message)])
        for key in ("max_completion_tokens", "max_tokens"):
            if params.get(key) is not None:
                _check.positive_int(key, params[key])  # True is not a token count
        reserve = params.get("max_completion_tokens") or params.get("max_tokens")
        if reserve is not None and self.context_window and reserve >= self.context_window:
            raise UsageError(
                f"max_tokens={reserve} leaves no room for the prompt in a "
                f"{self.context_window}-token window"
            )
        n = params.get("n")
        if n is not None:
            _check.positive_int("n", n)
        return _Call(
            tail=None if message is None else self.history.tail(),
            pending=pending,
            params=dict(params),
            registry=registry,
            choose=choose,
            max_tool_rounds=rounds,
            budget_reserve=int(reserve) if reserve else 0,
            continues=message is None,
        )

    def _check_open(self) -> None:
        if self.closed:
            raise UsageError(f"this {type(self).__name__} is closed")

    def _preview_jobs(self, request: ContextRequest) -> list[Job]:
        """The jobs a preview runs: local ones only (no summariser call is made)."""
        return [j for j in self._jobs(request) if isinstance(j, LocalJob)]

    def _preview_plan(self, call: _Call, request: ContextRequest) -> ContextPlan:
        plan = self._mark_plan(self.strategy.build(request), ())
        plan.notes.extend(call.notes)
        return plan

    def _check_continuation(self) -> None:
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

    def _recheck(self, call: _Call) -> None:
        """Validates the call again once it holds the conversation: another call may have
        committed since ``_begin`` (two ``send()`` continuations must not both answer)."""
        self._check_open()
        if call.continues:
            self._check_continuation()
        elif not _same_tail(call.tail, self.history.tail()):
            self.history.validate_new(call.pending[:1])
        call.notes = self._memory_notes()

    def _request(self, call: _Call) -> ContextRequest:
        reserve = call.budget_reserve or self.reply_reserve
        if reserve >= self.context_window:  # a window learnt from the server after _begin
            raise UsageError(
                f"max_tokens={reserve} leaves no room for the prompt in a "
                f"{self.context_window}-token window ({self.window})"
            )
        window = self._effective_window(reserve)
        budget = Budget(
            context_window=window,
            reply_reserve=reserve + self._count_margin(window, reserve),
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

    def _record_job(
        self,
        request: ContextRequest | None,
        job: Job,
        result: JobResult,
        turn_ids: Sequence[int] = (),
    ) -> None:
        if request is None:
            self._remember(job, result, tuple(turn_ids))
        else:
            request.results[job.key] = result
        if isinstance(job, LLMJob):
            usage = getattr(result.value, "usage", None)
            self.usage.add_summary(
                int(getattr(usage, "prompt_tokens", 0) or 0),
                int(getattr(usage, "completion_tokens", 0) or 0),
                result.model or self.model,
            )

    def _build(self, call: _Call, request: ContextRequest) -> ContextPlan:
        try:
            plan = self._mark_plan(self.strategy.build(request), call.refused)
        except ContextOverflowError as exc:
            if call.refused:  # the server refused, and the strategy cannot send less
                raise self._overflow_error(exc, call.refused) from exc
            raise
        if plan.new_summary is not None:
            # A summary is a derived record of committed turns: it is kept even if the call
            # then fails, so the next call does not pay for it again. Messages are untouched.
            self.history.add_summary(plan.new_summary)
        plan.notes.extend(call.notes)
        self._measure_prefix(plan)
        call.plans.append(plan)
        # Set before the request goes out, so after a failure it is the failed call's plan.
        self.last_plan = plan
        return plan

    def _measure_prefix(self, plan: ContextPlan) -> None:
        """How much of this request repeats the previous one from its start: what a provider's
        prompt cache (OpenAI, DeepSeek, DashScope, vLLM, llama.cpp) can serve again."""
        previous = self._last_sent
        messages = plan.messages
        same = 0
        for old, new in zip(previous, messages, strict=False):
            if old != new:
                break
            same += 1
        totals = self._last_sent_totals[:same]
        running = totals[-1] if totals else 0
        for m in messages[same:]:  # only what is new since the previous request is counted
            running += self.counter.count_message(m)
            totals.append(running)
        plan.shared_prefix_messages = same
        plan.shared_prefix_tokens = totals[same - 1] if same else 0
        self._last_sent = messages
        self._last_sent_totals = totals

    def _failed(self, call: _Call, exc: BaseException) -> None:
        """Records a failed call: nothing was committed; ``last_plan`` is its last plan (the
        plan that did not fit, for a ``ContextOverflowError`` that carries one)."""
        self.last_error = exc
        overflow = getattr(exc, "plan", None)
        if isinstance(overflow, ContextPlan):
            self.last_plan = overflow
        else:
            self.last_plan = call.plans[-1] if call.plans else None
        if self.last_plan is not None:
            error = describe_error(exc)
            text = f"call failed, nothing committed: {error}"
            self.last_plan.notes.append(Note("call_failed", {"error": error, "text": text}))

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
        check_completion(completion)
        usage = completion.usage
        plan.cost = self.usage.add_completion(usage, self.model)
        plan.cached_tokens = None if usage is None else cached_tokens(usage)
        if usage is not None and usage.prompt_tokens:
            plan.reported_prompt_tokens = int(usage.prompt_tokens)
            self.calibrator.observe(self.model, plan.estimated_tokens, int(usage.prompt_tokens))
        self.call_log.append(CallRecord.from_plan(plan, self.history, self.counter))
        index = call.choose(completion) if call.choose else 0
        if not isinstance(index, int) or not 0 <= index < len(completion.choices):
            raise UsageError(
                f"choose= returned {index!r}; expected an index below {len(completion.choices)}"
            )
        message = assistant_message(completion.choices[index].message)
        tool_calls = message.get("tool_calls") or []
        if tool_calls and call.registry is not None and call.registry.can_run_all(tool_calls):
            if call.rounds >= call.max_tool_rounds:
                raise ToolRoundsExceededError(call.rounds, [*call.pending, message])
            call.rounds += 1
            call.pending.append(message)
            return list(tool_calls)
        call.final = message
        return None

    def _commit(
        self, call: _Call, completion: ChatCompletion, stored: Outcome | None = None
    ) -> list[Turn]:
        assert call.final is not None
        messages = [*call.pending, call.final]
        if stored is not None and self._link is not None:
            turns = self._link.apply(self, messages, stored)  # the store has it: now memory
        else:
            turns = self.history.append(messages)
        self.last_completion = completion
        self.last_error = None
        self.last_latency = time.perf_counter() - call.started
        return turns

    def _store_write(self, call: _Call) -> Outcome | None:
        """Writes the call's turn to the store, if any (blocking; async runs it in a thread)."""
        if self._link is None:
            return None
        assert call.final is not None
        return self._link.write(self, [*call.pending, call.final])

    def _refuse_clear(self) -> None:
        if self._link is not None:
            raise UsageError(
                "a stored conversation is append-only and cannot be cleared: start another "
                "conversation_id, or store.fork(id, at_turn=-1) / store.delete(id)"
            )

    def _next_request(self) -> tuple[ContextRequest, list[LLMJob]]:
        """A request for a next call with no message yet, and the LLM jobs it would need."""
        call = _Call(
            pending=[],
            params={},
            registry=None,
            choose=None,
            max_tool_rounds=0,
            budget_reserve=0,
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

    # -- warm-up and the background summary (the I/O is in each class) -------------------------
    def _warm_parts(self) -> None:
        """Loads what a first call would load on its critical path (blocking; idempotent).

        The tokenizer (by counting a message), then every part of the strategy that has a
        ``warm()`` (``VectorRecall``: the embedding model and its Chroma collection). Afterwards
        the strategy's jobs run in the shared pool from the first call on.
        """
        self.counter.count_message({"role": "user", "content": "warm"})
        key = self._warm_key()
        parts = [key, *getattr(key, "strategies", ())]
        warms = [w for w in (getattr(p, "warm", None) for p in parts) if callable(w)]
        if warms:
            with _COLD_LOCK:  # the imports of a first load never race another thread's
                for warm in warms:
                    warm()
            _mark_warm(key)

    def _summary_claim(self, claim: _Claim) -> _Claim | None:
        """Hands the conversation from a finished call to a background summary job.

        With ``background_summary`` and a strategy that prepares jobs, the gate passes straight
        from ``claim`` (the call that just committed) to a new claim the background job
        releases, so no other call or ``extend()`` can change the history in between: the
        summary is always built on the history it is committed to. A later call waits at the
        gate only while the job runs. None when there is nothing to hand over.
        """
        if not self.background_summary or not isinstance(self.strategy, PreparingStrategy):
            return None
        job_claim = _Claim("background summary", object())
        with self._gate.cond:
            if self._gate.holder is not claim:
                return None
            self._gate.holder = job_claim
        return job_claim

    def _summary_failed(self, exc: BaseException) -> None:
        """A background summary failed: the history is untouched; the next call summarises."""
        self.last_background_error = exc

    def _job_call(self, job: LLMJob) -> tuple[Any, dict[str, Any]]:
        """The client and ``create`` arguments of a strategy's LLM job."""
        kwargs: dict[str, Any] = {
            "model": job.model or self.model,
            "messages": job.messages,
            **dict(job.params),
        }
        if job.timeout is not None:
            kwargs["timeout"] = job.timeout
        if job.client is not None:
            remember_client(job.client)  # a summariser's own key is redacted too
        return (job.client if job.client is not None else self.client), kwargs

    def _observe_jobs(self, turns: Sequence[Turn]) -> Sequence[Job]:
        observe = getattr(self.strategy, "observe", None)
        if turns and callable(observe):
            return observe(self.conversation_id, turns)  # type: ignore[no-any-return]
        return ()


def _load_kwargs(data: str | Mapping[str, Any], kwargs: dict[str, Any]) -> dict[str, Any]:
    """Constructor arguments for a conversation loaded from ``to_json`` output.

    The data is validated fully (``InvalidHistoryError`` names the bad field); a
    ``conversation_id=`` the caller passes pins the id, and a file naming another id is refused.
    """
    history, conversation_id, model = load_conversation(
        data, conversation_id=kwargs.get("conversation_id"), model=kwargs.get("model")
    )
    return {**kwargs, "model": model, "conversation_id": conversation_id, "history": history}


def _tool_name(tool_calls: Sequence[Mapping[str, Any]], tool_msg: Mapping[str, Any]) -> str:
    for call in tool_calls:
        if call.get("id") == tool_msg.get("tool_call_id"):
            return str(call.get("function", {}).get("name", ""))
    return ""


def _call_name(tool_call: Mapping[str, Any]) -> str:
    function = tool_call.get("function")
    name = function.get("name") if isinstance(function, Mapping) else None
    return name if isinstance(name, str) else "?"


def _abandoned(asm: StreamAssembler) -> StreamAbandonedError:
    return StreamAbandonedError(
        "this stream was closed because a later call on the conversation started while the "
        "stream waited for its consumer; nothing of it was committed (finish or close() a "
        "stream before the next call)",
        partial=asm.partial_text,
    )
