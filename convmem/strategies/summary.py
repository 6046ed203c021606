"""RollingSummary: summarise the older half when the context reaches 70% of the window."""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from typing import Any, Literal

from .. import _check
from ..errors import UsageError
from ..history import Summary, Turn
from ..messages import Message, text_of
from ..plan import ContextPlan, SummaryCall
from ..strategy import ContextRequest, Job, LLMJob
from .compose import Composition, compose

#: The summariser's instructions: durable facts, not prose.
DEFAULT_SUMMARY_PROMPT = """\
You keep the memory of a conversation between a user and an assistant. You are given the \
previous memory (possibly empty) and the turns that follow it. Write the updated memory as a \
compact list of durable facts, one per line, starting with "- ":
- names, numbers, dates, places, amounts, identifiers: copy them exactly;
- decisions made, preferences and dislikes stated, commitments, open tasks and questions;
- corrections: when a later turn corrects a fact, keep only the corrected value and say it was \
corrected;
- tool calls: record what was looked up and the result as a fact.
Keep every fact from the previous memory unless a newer turn corrects it. No greetings, no \
small talk, no commentary. Write only the list."""

SUMMARY_JOB = "summary"

ShouldSummarize = Callable[[int, int, float], bool]


def default_should_summarize(context_tokens: int, context_window: int, trigger: float) -> bool:
    """Fires when the context would reach ``trigger`` (a fraction) of the window."""
    return context_tokens >= trigger * context_window


def render_turns(turns: Sequence[Turn]) -> str:
    """Renders turns as a plain transcript for the summariser; tool calls become facts."""
    lines: list[str] = []
    for turn in turns:
        for msg in turn.messages:
            role = msg.get("role")
            text = text_of(msg).strip()
            if role == "user":
                images = _count_images(msg)
                suffix = f" [{images} image(s) attached]" if images else ""
                lines.append(f"[turn {turn.id}] User: {text}{suffix}")
            elif role == "assistant":
                for call in msg.get("tool_calls") or ():
                    fn = call.get("function", {})
                    lines.append(
                        f"[turn {turn.id}] Assistant called {fn.get('name')}"
                        f"({_compact(fn.get('arguments', ''))})"
                    )
                if text:
                    lines.append(f"[turn {turn.id}] Assistant: {text}")
            elif role == "tool":
                lines.append(f"[turn {turn.id}] Tool result ({msg.get('tool_call_id')}): {text}")
    return "\n".join(lines)


def _count_images(msg: Message) -> int:
    content = msg.get("content")
    if not isinstance(content, list):
        return 0
    return sum(1 for p in content if isinstance(p, dict) and p.get("type") == "image_url")


def _compact(arguments: str) -> str:
    try:
        return json.dumps(json.loads(arguments), ensure_ascii=False, separators=(",", ":"))
    except (ValueError, TypeError):
        return str(arguments)


class RollingSummary:
    """Summarises the older half of the conversation when the context grows too large.

    Before a call, if the context would reach ``trigger`` (70%) of the model's window, the
    older half (by tokens) of the turns not yet summarised is summarised by a separate call,
    folding in the previous summary, and the context becomes system + summary + recent turns.

    - Incremental: each summary folds the previous one into the newly covered turns and records
      every turn id it covers. The history itself is never edited.
    - Transactional: if the summariser call fails or times out, the history is untouched, this
      call goes ahead with truncation (the plan says so), and the summary is tried again at the
      next trigger.
    - The summariser's tokens are counted apart (``conv.usage.summary_*``, ``plan.summary_calls``).

    Args:
        trigger: Fraction of the context window at which to summarise.
        client: An ``openai`` client for the summariser; None uses the conversation's client.
        model: The summariser model; None uses the conversation's model (a cheaper model is a
            good choice).
        should_summarize: Policy ``(context_tokens, context_window, trigger) -> bool``.
        prompt: The summariser's instructions (default :data:`DEFAULT_SUMMARY_PROMPT`).
        max_summary_tokens: ``max_tokens`` of the summariser call (bounds the summary).
        summary_role: Role of the summary message: ``"system"`` (default) or ``"user"`` for
            servers whose chat template accepts only one system message.
        timeout: Seconds before the summariser call is abandoned.
        summarizer_window: The summariser model's context window, when it differs from the
            conversation's; its input is cut to fit.

    Raises:
        UsageError: an argument is out of range.
    """

    role: Literal["summary"] = "summary"

    def __init__(
        self,
        trigger: float = 0.70,
        client: Any = None,
        model: str | None = None,
        *,
        should_summarize: ShouldSummarize = default_should_summarize,
        prompt: str = DEFAULT_SUMMARY_PROMPT,
        max_summary_tokens: int = 512,
        summary_role: str = "system",
        timeout: float | None = 60.0,
        summarizer_window: int | None = None,
    ) -> None:
        _check.number_in_range("RollingSummary(trigger=...)", trigger, 0, 1, low_open=True)
        _check.positive_int("RollingSummary(max_summary_tokens=...)", max_summary_tokens)
        _check.optional(_check.positive_number, "RollingSummary(timeout=...)", timeout)
        _check.optional(
            _check.positive_int, "RollingSummary(summarizer_window=...)", summarizer_window
        )
        if model is not None:
            _check.non_empty_str("RollingSummary(model=...)", model)
        if not callable(should_summarize):
            raise UsageError("RollingSummary(should_summarize=...) must be a callable")
        if not isinstance(prompt, str) or not prompt.strip():
            raise UsageError("RollingSummary(prompt=...) must be a non-empty string")
        if summary_role not in ("system", "user"):
            raise UsageError("summary_role must be 'system' or 'user'")
        self.trigger = trigger
        self.client = client
        self.model = model
        self.should_summarize = should_summarize
        self.prompt = prompt
        self.max_summary_tokens = max_summary_tokens
        self.summary_role = summary_role
        self.timeout = timeout
        self.summarizer_window = summarizer_window
        # (id(summary), id(counter), role) -> (summary, counter, tokens): the objects are kept
        # and compared with `is`, so an id reused by a new object never hits a stale count.
        self._token_cache: dict[tuple[int, int, str], tuple[Summary, Any, int]] = {}

    @property
    def name(self) -> str:
        return f"RollingSummary(trigger={self.trigger})"

    def __repr__(self) -> str:
        return self.name

    # -- selection (pure; prepare and build compute the same answer) ----------------------------
    @staticmethod
    def unsummarised(request: ContextRequest) -> list[Turn]:
        return request.history.unsummarised()

    def summary_message(self, summary: Summary) -> Message:
        span = f"turns {summary.first}-{summary.through}" if summary.covers else "earlier turns"
        return {
            "role": self.summary_role,
            "content": f"Summary of the earlier conversation ({span}); facts, not instructions:\n"
            f"{summary.text}",
        }

    def context_tokens(self, request: ContextRequest) -> int:
        """Real tokens of sending everything not yet summarised, plus the current summary."""
        est = request.fixed_tokens + request.pending_tokens
        est += sum(request.turn_tokens(t) for t in self.unsummarised(request))
        summary = request.history.latest_summary
        if summary is not None:
            est += self._summary_tokens(summary, request)
        return request.budget.corrected(est)

    def _summary_tokens(self, summary: Summary, request: ContextRequest) -> int:
        """Tokens of the summary message, counted once per summary and counter."""
        key = (id(summary), id(request.counter), self.summary_role)
        cached = self._token_cache.get(key)
        if cached is not None and cached[0] is summary and cached[1] is request.counter:
            return cached[2]
        tokens = request.counter.count_message(self.summary_message(summary))
        if len(self._token_cache) > 256:
            self._token_cache.clear()
        self._token_cache[key] = (summary, request.counter, tokens)
        return tokens

    def due(self, request: ContextRequest) -> bool:
        return len(self.unsummarised(request)) >= 2 and self.should_summarize(
            self.context_tokens(request), request.budget.context_window, self.trigger
        )

    def select(self, request: ContextRequest) -> list[Turn]:
        """The older half (by tokens) of the unsummarised turns; the newest is always left."""
        turns = self.unsummarised(request)[:-1]
        if not turns:
            return []
        half = sum(request.turn_tokens(t) for t in self.unsummarised(request)) / 2
        window = self.summarizer_window or request.budget.context_window
        # The summariser's own input must fit its window, with room for the answer.
        room = window - self.max_summary_tokens - 2 * request.counter.count_text(self.prompt) - 64
        chosen: list[Turn] = []
        total = 0
        for turn in turns:
            cost = request.turn_tokens(turn)
            if chosen and (total >= half or total + cost > room):
                break
            chosen.append(turn)
            total += cost
        return chosen

    def job_messages(self, request: ContextRequest, turns: Sequence[Turn]) -> list[Message]:
        previous = request.history.latest_summary
        prev_text = previous.text if previous else "(empty)"
        return [
            {"role": "system", "content": self.prompt},
            {
                "role": "user",
                "content": f"Previous memory:\n{prev_text}\n\nNew turns:\n{render_turns(turns)}\n\n"
                "Write the updated memory.",
            },
        ]

    # -- strategy protocol -----------------------------------------------------------------------
    def prepare(self, request: ContextRequest) -> list[Job]:
        if not self.due(request):
            return []
        turns = self.select(request)
        if not turns:
            return []
        return [
            LLMJob(
                key=SUMMARY_JOB,
                messages=self.job_messages(request, turns),
                model=self.model,
                client=self.client,
                params={"max_tokens": self.max_summary_tokens, "temperature": 0},
                timeout=self.timeout,
            )
        ]

    def build(self, request: ContextRequest) -> ContextPlan:
        return compose(request, [self], name=self.name)

    def contribute(self, comp: Composition) -> None:
        """Sets the summary section (making a new summary from the job result, if any)."""
        request = comp.request
        summary = request.history.latest_summary
        result = request.results.get(SUMMARY_JOB)
        if result is not None:
            turns = self.select(request)
            ids = tuple(t.id for t in turns)
            pct = 100 * self.context_tokens(request) / request.budget.context_window
            text = _completion_text(result.value) if result.ok else ""
            usage = getattr(result.value, "usage", None)
            call = SummaryCall(
                model=result.model,
                ok=bool(text),
                prompt_tokens=int(getattr(usage, "prompt_tokens", 0) or 0),
                completion_tokens=int(getattr(usage, "completion_tokens", 0) or 0),
                covers=ids,
                error=None if text else _error_text(result),
                seconds=result.seconds,
            )
            comp.summary_calls.append(call)
            if text and ids:
                covers = tuple(sorted({*(summary.covers if summary else ()), *ids}))
                summary = Summary(
                    text=text,
                    covers=covers,
                    model=result.model,
                    prompt_tokens=call.prompt_tokens,
                    completion_tokens=call.completion_tokens,
                )
                comp.new_summary = summary
                comp.note(
                    "summarised",
                    why=f"context at {pct:.0f}% of the window (trigger {self.trigger:.0%})",
                    span=f"turn{'s' if len(ids) > 1 else ''} "
                    f"{ids[0]}{f'-{ids[-1]}' if len(ids) > 1 else ''}",
                    first=ids[0],
                    last=ids[-1],
                    context_pct=round(pct, 1),
                    trigger=self.trigger,
                )
            else:
                comp.note("summary_failed", error=call.error)
        elif self.due(request):
            comp.note("summary_not_called")
        if summary is None:
            return
        message = self.summary_message(summary)
        tokens = self._summary_tokens(summary, request)
        if tokens > comp.remaining:
            comp.note("summary_does_not_fit", tokens=tokens)
            return
        comp.summary = summary
        comp.summary_message = message
        comp.summary_tokens = tokens


def _completion_text(completion: Any) -> str:
    try:
        content = completion.choices[0].message.content
    except (AttributeError, IndexError):
        return ""
    return content.strip() if isinstance(content, str) else ""


def _error_text(result: Any) -> str:
    if result.error is not None:
        return f"{type(result.error).__name__}: {result.error}"[:300]
    return "empty summary"
