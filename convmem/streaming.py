"""Assembling a streamed chat completion (I/O-free; shared by the sync and async paths)."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

from openai.types.chat import ChatCompletion

from .errors import StreamIncompleteError
from .events import ReasoningDelta, StreamEvent, TextDelta, ToolCallDelta, UsageEvent


@dataclass
class _Choice:
    content: list[str] = field(default_factory=list)
    reasoning: list[str] = field(default_factory=list)
    reasoning_field: str = "reasoning_content"
    refusal: list[str] = field(default_factory=list)
    tool_calls: dict[int, dict[str, Any]] = field(default_factory=dict)
    finish_reason: str | None = None
    role: str = "assistant"


class StreamAssembler:
    """Turns SDK ``ChatCompletionChunk`` objects into events and, at the end, a ChatCompletion.

    Args:
        started: ``time.perf_counter()`` when the request was sent (for time to first token).
    """

    def __init__(self, started: float) -> None:
        self.started = started
        self.first_token_at: float | None = None
        self._choices: dict[int, _Choice] = {}
        self._meta: dict[str, Any] = {}
        self._usage: Any = None

    @property
    def ttft(self) -> float | None:
        """Seconds from the request to the first content, reasoning or tool-call delta."""
        return None if self.first_token_at is None else self.first_token_at - self.started

    @property
    def partial_text(self) -> str:
        ch = self._choices.get(0)
        return "".join(ch.content) if ch else ""

    def feed(self, chunk: Any) -> list[StreamEvent]:
        """Consumes one chunk; returns the events it carries."""
        events: list[StreamEvent] = []
        if not self._meta:
            self._meta = {
                "id": getattr(chunk, "id", None) or "chatcmpl-stream",
                "created": getattr(chunk, "created", None) or int(time.time()),
                "model": getattr(chunk, "model", None) or "",
                "system_fingerprint": getattr(chunk, "system_fingerprint", None),
            }
        usage = getattr(chunk, "usage", None)
        for choice in getattr(chunk, "choices", None) or ():
            idx = int(choice.index or 0)
            state = self._choices.setdefault(idx, _Choice())
            delta = choice.delta
            if delta is not None:
                if delta.role:
                    state.role = delta.role
                text = delta.content
                if text:
                    state.content.append(text)
                    events.append(TextDelta(text, idx))
                # DashScope, DeepSeek, llama.cpp: reasoning_content; vLLM, Ollama,
                # OpenRouter: reasoning (some vLLM versions send both, the same text: the
                # first one wins). Kept under the field the server used.
                for key in ("reasoning_content", "reasoning"):
                    reasoning = getattr(delta, key, None)
                    if reasoning and isinstance(reasoning, str):
                        state.reasoning.append(reasoning)
                        state.reasoning_field = key
                        events.append(ReasoningDelta(reasoning, idx))
                        break
                if getattr(delta, "refusal", None):
                    state.refusal.append(delta.refusal)
                for tc in delta.tool_calls or ():
                    slot = state.tool_calls.setdefault(
                        int(tc.index),
                        {"id": None, "type": "function", "function": {"name": "", "arguments": ""}},
                    )
                    name = tc.function.name if tc.function else None
                    args = (tc.function.arguments if tc.function else None) or ""
                    if tc.id:
                        slot["id"] = tc.id
                    if name:
                        slot["function"]["name"] += name
                    slot["function"]["arguments"] += args
                    events.append(ToolCallDelta(int(tc.index), tc.id, name, args, idx))
            if choice.finish_reason:
                state.finish_reason = choice.finish_reason
        if events and self.first_token_at is None:
            self.first_token_at = time.perf_counter()
        if usage is not None:
            self._usage = usage
            events.append(UsageEvent(usage))
        return events

    def finish(self) -> ChatCompletion:
        """The assembled completion.

        Raises:
            StreamIncompleteError: the stream ended before every choice had a finish_reason
                (the connection was cut); nothing must be committed then.
        """
        if not self._choices:
            raise StreamIncompleteError("the stream ended before any choice arrived")
        unfinished = [i for i, c in self._choices.items() if c.finish_reason is None]
        if unfinished:
            raise StreamIncompleteError(
                f"the stream ended before choice(s) {unfinished} finished (cut off?)",
                partial=self.partial_text,
            )
        choices = []
        for idx in sorted(self._choices):
            c = self._choices[idx]
            msg: dict[str, Any] = {"role": "assistant", "content": "".join(c.content) or None}
            if c.reasoning:
                msg[c.reasoning_field] = "".join(c.reasoning)
            if c.refusal:
                msg["refusal"] = "".join(c.refusal)
            if c.tool_calls:
                msg["tool_calls"] = [c.tool_calls[i] for i in sorted(c.tool_calls)]
            choices.append({"index": idx, "finish_reason": c.finish_reason, "message": msg})
        data: dict[str, Any] = {**self._meta, "object": "chat.completion", "choices": choices}
        if self._usage is not None:
            data["usage"] = self._usage.model_dump()
        return ChatCompletion.model_validate(data)
