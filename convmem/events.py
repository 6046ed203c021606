"""Typed events yielded by ``Conversation.stream`` and ``AsyncConversation.stream``.

Match on the class (or on ``event.type``)::

    for ev in conv.stream("Hi"):
        if isinstance(ev, TextDelta):
            print(ev.text, end="")
        elif isinstance(ev, StreamEnd):
            print(ev.ttft, ev.completion.usage)
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

if TYPE_CHECKING:
    from openai.types.chat import ChatCompletion
    from openai.types.completion_usage import CompletionUsage

    from .plan import ContextPlan


@dataclass(frozen=True)
class TextDelta:
    """A piece of the assistant's text."""

    text: str
    choice: int = 0
    type: Literal["text"] = "text"


@dataclass(frozen=True)
class ReasoningDelta:
    """A piece of ``reasoning_content`` from a thinking model."""

    text: str
    choice: int = 0
    type: Literal["reasoning"] = "reasoning"


@dataclass(frozen=True)
class ToolCallDelta:
    """A piece of a tool call: the first carries ``id`` and ``name``, later ones ``arguments``."""

    index: int
    id: str | None
    name: str | None
    arguments: str
    choice: int = 0
    type: Literal["tool_call"] = "tool_call"


@dataclass(frozen=True)
class UsageEvent:
    """The usage chunk at the end of a stream."""

    usage: CompletionUsage
    type: Literal["usage"] = "usage"


@dataclass(frozen=True)
class ToolResult:
    """convmem ran a registered tool; ``message`` is the ``tool`` message sent back."""

    tool_call_id: str
    name: str
    message: dict[str, Any]
    type: Literal["tool_result"] = "tool_result"


@dataclass(frozen=True)
class StreamEnd:
    """The stream finished and the turn was committed to the history.

    Attributes:
        completion: The assembled ``ChatCompletion`` (all choices).
        message: The assistant message committed (the chosen choice).
        plan: The context plan of the last request.
        ttft: Seconds from the request to the first delta of the last request.
        latency: Seconds from the first request of this turn to the end.
    """

    completion: ChatCompletion
    message: dict[str, Any]
    plan: ContextPlan
    ttft: float | None
    latency: float
    type: Literal["end"] = "end"

    @property
    def text(self) -> str:
        content = self.message.get("content")
        return content if isinstance(content, str) else ""


StreamEvent = TextDelta | ReasoningDelta | ToolCallDelta | UsageEvent | ToolResult | StreamEnd

__all__ = [
    "ReasoningDelta",
    "StreamEnd",
    "StreamEvent",
    "TextDelta",
    "ToolCallDelta",
    "ToolResult",
    "UsageEvent",
]
