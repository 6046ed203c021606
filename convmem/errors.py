"""The convmem exception tree.

Everything convmem raises on purpose derives from :class:`ConvmemError`. Two branches tell
apart *usage mistakes* (bad input, found before any network call) from *run failures*
(something went wrong while a call was being made or its context built). Errors from the
``openai`` SDK itself (``openai.RateLimitError``, ``openai.APITimeoutError``, ...) are
re-raised unchanged, so existing ``except openai.APIError`` handlers keep working; whatever
the error, the conversation's history is left exactly as it was before the call.
"""

from __future__ import annotations

from typing import Any


class ConvmemError(Exception):
    """Root of every exception convmem raises on purpose."""


class UsageError(ConvmemError, ValueError):
    """The caller asked for something invalid. Raised before any network call."""


class InvalidMessageError(UsageError):
    """A message is malformed, or messages are in an order the API refuses.

    Attributes:
        message: The offending message (as given).
        index: Its position in the batch being validated, when known.
        reason: What is wrong with it.
    """

    def __init__(self, reason: str, message: Any = None, index: int | None = None) -> None:
        self.reason = reason
        self.message = message
        self.index = index
        where = f" (message {index})" if index is not None else ""
        super().__init__(f"{reason}{where}")


class InvalidHistoryError(UsageError):
    """A saved history (``from_json``/``from_dict`` input) is malformed, tampered or conflicting.

    Attributes:
        field: Where in the document the problem is, as a path, e.g. ``"turns[3].created_at"``
            or ``"conversation_id"``.
        reason: What is wrong there.
    """

    def __init__(self, field: str, reason: str) -> None:
        self.field = field
        self.reason = reason
        super().__init__(f"invalid saved history at {field}: {reason}")


class ReadOnlyError(UsageError, TypeError):
    """Something tried to edit the append-only history in place.

    The history is changed only by sending, ``extend()`` and ``clear()``; ``conv.turns``,
    ``conv.system`` and the messages of a plan are read-only views of it. Copy a message with
    ``copy.deepcopy`` (or read ``conv.messages``, which returns copies) to change it.
    """


class StrategyError(UsageError):
    """A user strategy returned something convmem cannot send (checked before any call).

    The message names the strategy and the broken rule (a turn twice, a ``tool`` reply without
    its call, the system message not first, ...).

    Attributes:
        plan: The offending :class:`~convmem.plan.ContextPlan`, when one was built.
    """

    def __init__(self, reason: str, *, plan: Any = None) -> None:
        self.plan = plan
        super().__init__(reason)


class BudgetError(UsageError):
    """A token budget cannot work at all, e.g. it is smaller than the pinned system prompt.

    Attributes:
        budget: The budget, in tokens.
        required: The minimum the request needs, in tokens.
    """

    def __init__(self, reason: str, *, budget: int, required: int) -> None:
        self.budget = budget
        self.required = required
        super().__init__(f"{reason} (budget {budget} tokens, needs at least {required})")


class UnknownModelError(UsageError):
    """The model's context window is not in the table and none was given.

    Attributes:
        model: The model name.
    """

    def __init__(self, model: str) -> None:
        self.model = model
        super().__init__(
            f"unknown context window for model {model!r}: pass context_window=<tokens> "
            "(convmem does not guess a window; see convmem.models.CONTEXT_WINDOWS)"
        )


class MissingExtraError(ConvmemError, ImportError):
    """An optional dependency is not installed; the message names the ``pip install`` fix."""

    def __init__(self, feature: str, extra: str, missing: str) -> None:
        self.feature = feature
        self.extra = extra
        super().__init__(
            f"{feature} needs the optional package {missing!r}: pip install 'convmem[{extra}]'"
        )


class RunError(ConvmemError):
    """A failure while building a context or running a call (not the caller's input)."""


class ContextOverflowError(RunError):
    """The context cannot fit the budget with the chosen strategy.

    Attributes:
        needed: Estimated prompt tokens of the smallest context the strategy could build.
        budget: Prompt tokens available (context window minus room for the reply).
        context_window: The model's context window.
        plan: The :class:`~convmem.plan.ContextPlan` that did not fit, when one was built.
    """

    def __init__(
        self,
        reason: str,
        *,
        needed: int,
        budget: int,
        context_window: int,
        plan: Any = None,
    ) -> None:
        self.needed = needed
        self.budget = budget
        self.context_window = context_window
        self.plan = plan
        super().__init__(
            f"{reason}: needs ~{needed} prompt tokens, budget is {budget} "
            f"(context window {context_window})"
        )


class ToolRoundsExceededError(RunError):
    """The model kept calling tools past ``max_tool_rounds``; nothing was committed.

    Attributes:
        rounds: How many tool rounds ran.
        messages: The messages the turn had accumulated (for debugging).
    """

    def __init__(self, rounds: int, messages: list[dict[str, Any]]) -> None:
        self.rounds = rounds
        self.messages = messages
        super().__init__(
            f"the model was still calling tools after {rounds} rounds (max_tool_rounds); "
            "the turn was not committed"
        )


class StreamIncompleteError(RunError):
    """A stream ended without its final chunk (cut off); nothing was committed.

    Attributes:
        partial: The text received before the stream ended.
    """

    def __init__(self, reason: str, partial: str = "") -> None:
        self.partial = partial
        super().__init__(reason)


class StreamAbandonedError(StreamIncompleteError):
    """The stream was closed, unfinished, because a later call on the conversation started while
    the stream's consumer had stopped reading (a ``break``, Ctrl-C, an iterator left in a
    variable). Nothing of it was committed; the later call went ahead."""


class InvalidResponseError(RunError):
    """The server's reply is not a usable chat completion.

    Raised as the reply arrives, before any tool runs or another request is sent: no choices,
    a 200 whose body is not a chat completion (an HTML page from a proxy, ``null``), a choice
    without a message, tool calls with empty or duplicate ids. Nothing is committed.

    Attributes:
        reason: What is wrong.
        body: The start of what the server sent (at most 500 characters), when known.
    """

    def __init__(self, reason: str, body: str = "") -> None:
        self.reason = reason
        self.body = body
        super().__init__(f"the server's reply is not a usable chat completion: {reason}")


class ToolTimeoutError(RunError):
    """A tool convmem ran did not return within ``tool_timeout``; nothing was committed.

    Attributes:
        name: The tool.
        seconds: The limit that passed.
    """

    def __init__(self, name: str, seconds: float) -> None:
        self.name = name
        self.seconds = seconds
        super().__init__(
            f"tool {name!r} did not return within {seconds:g} s (tool_timeout); "
            "the turn was not committed"
        )


class ConversationBusyError(UsageError):
    """A call was made on a conversation from inside its own running call (a tool or strategy
    calling back into it in the same thread or task): waiting would never end, so it fails at
    once. Raised before any network call."""


class ConflictError(RunError):
    """A store write was built on a head another writer has moved past (policy ``"raise"``).

    Nothing was written. Load the conversation again (or resume it) and retry, or use the
    ``"append"`` / ``"fork"`` policy.

    Attributes:
        conversation_id: The conversation.
        expected: The :class:`~convmem.stores.Head` the write was built on.
        actual: The head the store has.
    """

    def __init__(self, conversation_id: str, expected: Any, actual: Any, reason: str = "") -> None:
        self.conversation_id = conversation_id
        self.expected = expected
        self.actual = actual
        why = f": {reason}" if reason else ""
        super().__init__(
            f"conversation {conversation_id!r} moved on: this write was built on {expected}, "
            f"the store's head is {actual}{why}"
        )


__all__ = [
    "BudgetError",
    "ConflictError",
    "ContextOverflowError",
    "ConversationBusyError",
    "ConvmemError",
    "InvalidHistoryError",
    "InvalidMessageError",
    "InvalidResponseError",
    "MissingExtraError",
    "ReadOnlyError",
    "RunError",
    "StrategyError",
    "StreamAbandonedError",
    "StreamIncompleteError",
    "ToolRoundsExceededError",
    "ToolTimeoutError",
    "UnknownModelError",
    "UsageError",
]
