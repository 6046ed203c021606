"""``Conversation`` and ``AsyncConversation``: a chat loop's ``messages`` list, with memory.

Budget arithmetic, validation, selection and message assembly live in ``_Core``
(:mod:`convmem.conversation_core`), shared by both classes and free of I/O. Only the I/O (the
API call, streaming, running tools and strategy jobs) is written twice, once blocking
(:mod:`convmem.conversation_sync`) and once with ``await`` (:mod:`convmem.conversation_async`);
``tests/test_parity.py`` checks that the two send identical requests. The sync class is not a
wrapper around the async one, so it works inside notebooks, which already run an event loop.
"""

from __future__ import annotations

from .background import JobResult, PendingMemory
from .conversation_async import AsyncConversation
from .conversation_core import (
    DEFAULT_JOB_TIMEOUT,
    DEFAULT_MAX_REPLY_RESERVE,
    DEFAULT_MAX_TOOL_ROUNDS,
    default_reply_reserve,
)
from .conversation_sync import Conversation
from .replies import Chooser

__all__ = [
    "DEFAULT_JOB_TIMEOUT",
    "DEFAULT_MAX_REPLY_RESERVE",
    "DEFAULT_MAX_TOOL_ROUNDS",
    "AsyncConversation",
    "Chooser",
    "Conversation",
    "JobResult",
    "PendingMemory",
    "default_reply_reserve",
]
