"""What a test queues on the fake server: reply specs, and the items the queue holds.

:class:`ToolCallSpec` and :class:`ChoiceSpec` are what a test passes to
:meth:`~convmem.testing.FakeChatServer.reply`; the server turns every queued call into one item
(:class:`Reply`, :class:`ErrorReply`, :class:`Raise` or :class:`Dynamic`) that answers one
request.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal, TypeAlias

UsageSpec: TypeAlias = "Mapping[str, Any] | Literal[False] | None"
ToolCallLike: TypeAlias = "ToolCallSpec | Mapping[str, Any]"


@dataclass(frozen=True)
class ToolCallSpec:
    """A tool call the fake model makes.

    Args:
        name: The function name.
        arguments: The JSON arguments, as a string (sent verbatim, so it may be malformed on
            purpose) or a dict (sent as ``json.dumps(arguments)``).
        id: The tool call id; when omitted the server assigns ``call_1``, ``call_2``, ... in the
            order tool calls are queued (for :meth:`FakeChatServer.respond_with`, rendered).
    """

    name: str
    arguments: str | Mapping[str, Any]
    id: str | None = None


@dataclass(frozen=True)
class ChoiceSpec:
    """One choice of a multi-choice reply (a request with ``n > 1``).

    Args:
        content: The message text; ``None`` sends ``content: null``.
        reasoning: Text sent as ``reasoning_content`` (as DashScope/Qwen and vLLM do).
        tool_calls: Tool calls, as :class:`ToolCallSpec` or dicts (see
            :meth:`FakeChatServer.reply`).
        finish_reason: Defaults to ``"tool_calls"`` when there are tool calls, else ``"stop"``.
    """

    content: str | None = ""
    reasoning: str | None = None
    tool_calls: Sequence[ToolCallLike] | None = None
    finish_reason: str | None = None


# --- queued items -----------------------------------------------------------------------------


@dataclass(frozen=True)
class ToolCall:
    id: str
    name: str
    arguments: str


@dataclass(frozen=True)
class Choice:
    content: str | None
    reasoning: str | None
    tool_calls: tuple[ToolCall, ...]
    finish_reason: str


@dataclass(frozen=True)
class Reply:
    choices: tuple[Choice, ...]
    usage: UsageSpec
    chunk_size: int
    status: int
    delay: float
    # For cut_stream: how many SSE events to send before the body stops, and how it stops.
    cut_after: int | None = None
    cut_error: bool = True

    def describe(self) -> str:
        first = self.choices[0]
        text = first.content if first.content is not None else ""
        what = "cut_stream" if self.cut_after is not None else "reply"
        parts = [repr(text[:40] + ("..." if len(text) > 40 else ""))]
        if first.tool_calls:
            parts.append("tool_calls=" + ",".join(tc.name for tc in first.tool_calls))
        if len(self.choices) > 1:
            parts.append(f"choices={len(self.choices)}")
        return f"{what}({', '.join(parts)})"


@dataclass(frozen=True)
class ErrorReply:
    status: int
    body: dict[str, Any]
    headers: Mapping[str, str]

    def describe(self) -> str:
        return f"error({self.status}, {self.body['error']['message']!r})"


@dataclass(frozen=True)
class Raise:
    kind: Literal["timeout", "disconnect"]

    def describe(self) -> str:
        return f"{self.kind}()"


@dataclass(frozen=True)
class Dynamic:
    fn: Callable[[dict[str, Any]], Any]

    def describe(self) -> str:
        return f"respond_with({getattr(self.fn, '__name__', repr(self.fn))})"


Item: TypeAlias = "Reply | ErrorReply | Raise | Dynamic"


__all__ = [
    "Choice",
    "ChoiceSpec",
    "Dynamic",
    "ErrorReply",
    "Item",
    "Raise",
    "Reply",
    "ToolCall",
    "ToolCallLike",
    "ToolCallSpec",
    "UsageSpec",
]
