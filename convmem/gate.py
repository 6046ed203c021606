"""One call at a time per conversation, without ever waiting on user code.

A stream must not hold a lock while its consumer runs: a ``break`` (or Ctrl-C) that leaves the
iterator in a variable would lock the conversation for good. Instead each call holds a
:class:`_Claim` on the conversation's :class:`_Gate`; a stream marks its claim *suspended*
whenever it hands an event to its consumer, and a newcomer that finds a suspended claim it can
never get back from (same thread or task, owner gone, idle too long) closes that stream rather
than wait. Shared by the sync and async classes: the state sits behind a ``threading.Condition``
held only for a few lines.
"""

from __future__ import annotations

import contextlib
import threading
import time
from typing import Any

from .errors import ConversationBusyError

#: A stream whose consumer has not asked for the next event for this long, while another
#: thread or task waits for the conversation, counts as abandoned and is closed.
STREAM_IDLE_SECONDS = 30.0


class _Claim:
    """One call's hold on its conversation.

    ``owner`` is the thread (sync) or task (async) driving the call; a stream records whoever
    last asked it for an event. While a stream has yielded an event to its consumer it is
    ``suspended``: control is in user code, and a later call from the same thread or task, or
    from anywhere once the consumer is gone or idle for :data:`STREAM_IDLE_SECONDS`, closes it
    (``cancelled``) instead of waiting for it forever.
    """

    __slots__ = ("cancelled", "kind", "owner", "response", "suspended", "suspended_at")

    def __init__(self, kind: str, owner: Any) -> None:
        self.kind = kind
        self.owner = owner
        self.suspended = False
        self.suspended_at = 0.0
        self.cancelled = False
        self.response: Any = None


def _owner_alive(owner: Any) -> bool:
    if isinstance(owner, threading.Thread):
        return owner.is_alive()
    done = getattr(owner, "done", None)  # an asyncio.Task
    return not done() if callable(done) else True


class _Gate:
    """Serialises the calls of one conversation without ever waiting on user code.

    Not a lock held across ``yield``: a stream marks its claim suspended while its consumer
    runs, and :meth:`decide` tells a newcomer to wait (the holder is working, or its consumer
    may still come back), to take over (the holder can never come back: same thread or task,
    its owner is gone, or it has idled too long), or that it is calling back into its own
    running call (it would wait forever). The state is guarded by a ``threading.Condition``
    held only for a few lines, so one gate serves threads and event loops alike.
    """

    def __init__(self) -> None:
        self.cond = threading.Condition()
        self.holder: _Claim | None = None
        self.async_waiters: list[tuple[Any, Any]] = []  # (loop, future)

    def decide(self, me: Any) -> str:
        """``free``, ``wait``, ``take`` (close the suspended holder) or ``busy``. Under cond."""
        h = self.holder
        if h is None:
            return "free"
        if h.owner is me:
            return "take" if h.suspended else "busy"
        if h.suspended and (
            not _owner_alive(h.owner) or time.monotonic() - h.suspended_at > STREAM_IDLE_SECONDS
        ):
            return "take"
        return "wait"

    def try_take(self, claim: _Claim) -> tuple[str, _Claim | None]:
        """Takes the gate if it can; returns (state, the claim it closed). Under cond."""
        state = self.decide(claim.owner)
        victim = None
        if state == "take":
            victim = self.holder
            assert victim is not None
            victim.cancelled = True
        if state in ("free", "take"):
            self.holder = claim
        return state, victim

    def suspend(self, claim: _Claim) -> None:
        with self.cond:
            claim.suspended = True
            claim.suspended_at = time.monotonic()
            self.cond.notify_all()

    def resume(self, claim: _Claim, owner: Any) -> bool:
        """The consumer asks for the next event; False when the stream was closed meanwhile."""
        with self.cond:
            if claim.cancelled or self.holder is not claim:
                return False
            claim.suspended = False
            claim.owner = owner
            return True

    def release(self, claim: _Claim) -> None:
        with self.cond:
            if self.holder is not claim:
                return
            self.holder = None
            self.cond.notify_all()
            waiters, self.async_waiters = self.async_waiters, []
        for loop, fut in waiters:
            with contextlib.suppress(RuntimeError):  # that loop is closed, and its waiter
                loop.call_soon_threadsafe(_wake, fut)


def _wake(fut: Any) -> None:
    if not fut.done():
        fut.set_result(None)


def _busy_error(kind: str) -> ConversationBusyError:
    return ConversationBusyError(
        f"this conversation is running a {kind} in this same thread or task (a tool or "
        "strategy calling back into its own conversation?); use another Conversation for "
        "nested calls"
    )
