"""convmem: memory for the stateless OpenAI chat-completions API.

The API only knows what is in ``messages``. convmem keeps the **history** (the append-only
record of what was said) and, before every call, builds the **context** (what that call sends)
with a pluggable **strategy**, leaving a :class:`ContextPlan` that says what was sent and why.

Example::

    from openai import OpenAI
    from convmem import Conversation
    from convmem.strategies import Truncate

    conv = Conversation(OpenAI(), model="gpt-4o-mini", system="You are terse.",
                        strategy=Truncate(max_tokens=4000))
    conv.send("Hi, I am Xiaoming")
    print(conv.send("Who am I?").choices[0].message.content)
    print(conv.last_plan)
"""

from .conversation import AsyncConversation, Conversation, JobResult
from .errors import (
    BudgetError,
    ContextOverflowError,
    ConversationBusyError,
    ConvmemError,
    InvalidHistoryError,
    InvalidMessageError,
    InvalidResponseError,
    MissingExtraError,
    ReadOnlyError,
    RunError,
    StreamAbandonedError,
    StreamIncompleteError,
    ToolRoundsExceededError,
    ToolTimeoutError,
    UnknownModelError,
    UsageError,
)
from .events import (
    ReasoningDelta,
    StreamEnd,
    StreamEvent,
    TextDelta,
    ToolCallDelta,
    ToolResult,
    UsageEvent,
)
from .history import History, Summary, Turn
from .plan import ContextPlan, Section, SummaryCall, TurnDecision
from .redact import redact
from .strategy import (
    Budget,
    ContextRequest,
    KeepAll,
    LLMJob,
    LocalJob,
    ObservingStrategy,
    PreparingStrategy,
    Strategy,
)
from .tokens import TiktokenCounter, TokenCounter, UsageCalibrator, default_counter
from .usage import Usage
from .wrap import AsyncMemoryOpenAI, MemoryOpenAI, wrap

__version__ = "0.1.0"

__all__ = [
    "AsyncConversation",
    "AsyncMemoryOpenAI",
    "Budget",
    "BudgetError",
    "ContextOverflowError",
    "ContextPlan",
    "ContextRequest",
    "Conversation",
    "ConversationBusyError",
    "ConvmemError",
    "History",
    "InvalidHistoryError",
    "InvalidMessageError",
    "InvalidResponseError",
    "JobResult",
    "KeepAll",
    "LLMJob",
    "LocalJob",
    "MemoryOpenAI",
    "MissingExtraError",
    "ObservingStrategy",
    "PreparingStrategy",
    "ReadOnlyError",
    "ReasoningDelta",
    "RunError",
    "Section",
    "Strategy",
    "StreamAbandonedError",
    "StreamEnd",
    "StreamEvent",
    "StreamIncompleteError",
    "Summary",
    "SummaryCall",
    "TextDelta",
    "TiktokenCounter",
    "TokenCounter",
    "ToolCallDelta",
    "ToolResult",
    "ToolRoundsExceededError",
    "ToolTimeoutError",
    "Turn",
    "TurnDecision",
    "UnknownModelError",
    "Usage",
    "UsageCalibrator",
    "UsageError",
    "UsageEvent",
    "__version__",
    "default_counter",
    "redact",
    "wrap",
]
