"""How a conversation keeps itself in a :class:`~convmem.stores.Store`.

``Conversation(client, model=..., store=store, conversation_id="alice-1")`` resumes the stored
conversation when it exists (turns, summaries, usage, the calibration ratio, the window) and
creates it otherwise. Then:

- before each call, turns other processes committed since are loaded (one cheap head query);
- after a call succeeded, its whole turn is written in one transaction, with the head it was
  built on and an idempotency key (a write whose acknowledgement was lost is retried with the
  same key and adds nothing); only then does the in-memory history change, so a failed write
  leaves both as they were;
- a summary made for a call is written with the next turn, and only if nothing it was built on
  changed (a summary another process wrote first wins, and is loaded instead).

The blocking I/O is in :meth:`StoreLink.write` and :meth:`StoreLink.fetch`; ``AsyncConversation``
runs them with ``asyncio.to_thread``. Applying their results to the conversation is pure.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ..errors import ConvmemError, UsageError
from ..history import History, Summary, Turn
from ..messages import Message, to_wire
from ..usage import Usage
from .base import CONFLICT_POLICIES, EMPTY, Commit, Head, StoredConversation

if TYPE_CHECKING:
    from ..conversation_core import _Core

_REQUIRED = ("create", "load", "head", "turns", "summaries", "append", "add_summary")
#: Attempts of one write whose outcome is unknown (a dropped connection, a timeout).
WRITE_ATTEMPTS = 3


@dataclass
class _Fetched:
    head: Head
    turns: list[Turn]
    summaries: list[Summary]


@dataclass
class Outcome:
    """What writing one commit to the store returned (applied to the conversation after)."""

    commit: Commit
    catch_up: _Fetched | None = None


class StoreLink:
    """Keeps one conversation and its stored copy in step.

    Args:
        store: Any :class:`~convmem.stores.Store`.
        conversation_id: The stored conversation's id.
        on_conflict: ``"append"``, ``"raise"`` or ``"fork"`` (see :data:`ConflictPolicy`).
        save_plan: Also store the last plan of each call (off by default: plans are large).
    """

    def __init__(
        self,
        store: Any,
        conversation_id: str,
        on_conflict: str,
        *,
        system_given: bool = False,
        save_plan: bool = False,
    ) -> None:
        missing = [m for m in _REQUIRED if not callable(getattr(store, m, None))]
        if missing:
            raise UsageError(
                f"store must implement convmem.stores.Store; {type(store).__name__} has no "
                f"{', '.join(missing)}"
            )
        if on_conflict not in CONFLICT_POLICIES:
            raise UsageError(
                f"on_conflict must be one of {', '.join(CONFLICT_POLICIES)}, got {on_conflict!r}"
            )
        self.store = store
        self.conversation_id = conversation_id
        self.on_conflict = on_conflict
        self.save_plan = save_plan
        self.system_given = system_given
        self.attached = False
        self.head: Head = EMPTY
        self._saved_summaries = 0
        self._saved_usage: dict[str, int] = {}

    # -- opening --------------------------------------------------------------------------------
    def load(self) -> StoredConversation | None:
        """The stored conversation, or None (blocking)."""
        loaded: StoredConversation | None = self.store.load(self.conversation_id)
        return loaded

    def attach(self, core: _Core, stored: StoredConversation | None) -> None:
        """Makes ``core`` the stored conversation, or creates it in the store (blocking)."""
        self.attached = True
        system_given = self.system_given
        if stored is None:
            self.store.create(
                self.conversation_id,
                system=core.history.system,
                model=core.model,
                context_window=core.context_window,
            )
            if len(core.history):  # an import (from_json, history=) into a new stored conversation
                messages = [m for t in core.history.turns for m in t.messages]
                commit = self.write(core, messages).commit
                core.history.restore_tail(commit.turns)  # the store's (dense) ids
                self.head = commit.head
                self._write_summaries(core)  # now that the turns they cover exist
            return
        if len(core.history):
            raise UsageError(
                f"conversation {self.conversation_id!r} already exists in the store: resume it "
                "without history=/from_json, or import under another conversation_id"
            )
        history = History(core.history.system if system_given else stored.system)
        history.restore_tail(stored.turns, summaries=stored.summaries)
        core.history = history
        core.usage = Usage(**{k: v for k, v in stored.usage.items() if k in _USAGE_FIELDS})
        calibration = stored.state.get("calibration")
        if isinstance(calibration, dict):
            from ..tokens import UsageCalibrator

            # A ratio from another version is dropped: learning starts again.
            with contextlib.suppress(ConvmemError, TypeError, ValueError, KeyError):
                core.calibrator = UsageCalibrator.from_dict(calibration)
        self.head = stored.head
        self._saved_summaries = len(stored.summaries)
        self._saved_usage = core.usage.to_dict()
        if system_given and stored.system != history.system and hasattr(self.store, "set_meta"):
            self.store.set_meta(self.conversation_id, system=history.system)

    # -- before a call ----------------------------------------------------------------------------
    def fetch(self) -> _Fetched | None:
        """What other writers committed since this conversation's head (blocking), or None."""
        head = self.store.head(self.conversation_id)
        if head is None or head == self.head:
            return None
        return self._fetch_after(self.head)

    def _fetch_after(self, head: Head) -> _Fetched:
        after = head.turn_id if head.turn_id >= 0 else -1
        if head.turn_id >= 0:
            after -= 1  # the head turn itself may have grown (tool replies)
        turns = self.store.turns(self.conversation_id, after=after)
        summaries = self.store.summaries(self.conversation_id)
        last = turns[-1] if turns else None
        now = Head(last.id, len(last.messages)) if last else head
        return _Fetched(now, turns, summaries)

    def catch_up(self, core: _Core, fetched: _Fetched | None) -> None:
        """Applies what :meth:`fetch` returned (pure)."""
        if fetched is None:
            return
        after = fetched.turns[0].id - 1 if fetched.turns else self.head.turn_id
        core.history.restore_tail(fetched.turns, after=after, summaries=fetched.summaries)
        self.head = fetched.head
        self._saved_summaries = len(fetched.summaries)

    # -- after a call -----------------------------------------------------------------------------
    def write(self, core: _Core, messages: Sequence[Message], key: str | None = None) -> Outcome:
        """Writes pending summaries, then the committed messages as whole turns (blocking)."""
        self._write_summaries(core)
        usage = core.usage.to_dict()
        delta = {
            k: int(v) - int(self._saved_usage.get(k, 0))
            for k, v in usage.items()
            if k in _USAGE_FIELDS and int(v) != int(self._saved_usage.get(k, 0))
        }
        state: dict[str, Any] = {"calibration": core.calibrator.to_dict()}
        if self.save_plan and core.last_plan is not None:
            state["last_plan"] = core.last_plan.to_dict()
        tokens = sum(
            core.counter.count_message(to_wire(m, send_reasoning=core.send_reasoning))
            for m in messages
        )
        key = key or uuid.uuid4().hex
        for attempt in range(WRITE_ATTEMPTS):
            try:
                commit: Commit = self.store.append(
                    self.conversation_id,
                    list(messages),
                    expected_head=self.head,
                    on_conflict=self.on_conflict,
                    idempotency_key=key,
                    tokens=tokens,
                    usage=delta,
                    state=state,
                )
                break
            except ConvmemError:
                raise  # a conflict or bad input: retrying cannot help
            except Exception:
                # The outcome is unknown (the connection dropped before the acknowledgement):
                # the same key makes the retry add nothing if the first write did commit.
                if attempt == WRITE_ATTEMPTS - 1:
                    raise
                time.sleep(0.05 * 2**attempt)
        self._saved_usage = usage
        catch_up = None
        if commit.conversation_id == self.conversation_id and (
            commit.duplicate or commit.base != self.head
        ):
            catch_up = self._fetch_after(self.head)  # others' turns came first
        return Outcome(commit, catch_up)

    def write_messages(self, core: _Core, messages: Sequence[Message]) -> list[Turn]:
        """Writes and applies (blocking): ``extend`` and imports."""
        return self.apply(core, messages, self.write(core, messages))

    def apply(self, core: _Core, messages: Sequence[Message], outcome: Outcome) -> list[Turn]:
        """Applies a written commit to the in-memory history (pure); returns the turns."""
        commit = outcome.commit
        if commit.forked_from is not None:
            # Written to a fork made at this conversation's head: memory is that fork's prefix.
            self.conversation_id = commit.conversation_id
            core.conversation_id = commit.conversation_id
        if outcome.catch_up is not None:
            self.catch_up(core, outcome.catch_up)
            by_id = {t.id: t for t in core.history.turn_list()}
            return [by_id[t.id] for t in commit.turns if t.id in by_id]
        turns = core.history.append(list(messages), created_at=commit.turns[-1].created_at)
        self.head = commit.head
        return turns

    def _write_summaries(self, core: _Core) -> None:
        summaries = core.history.summaries
        while self._saved_summaries < len(summaries):
            summary = summaries[self._saved_summaries]
            written = self.store.add_summary(
                self.conversation_id,
                summary,
                expected_summaries=self._saved_summaries,
                expected_head=self.head,
            )
            if not written:
                break  # another writer's summary won; the next catch-up loads it
            self._saved_summaries += 1

    # -- async ------------------------------------------------------------------------------------
    async def write_async(
        self, core: _Core, messages: Sequence[Message]
    ) -> tuple[Outcome, BaseException | None]:
        """:meth:`write` off the event loop. A cancellation that arrives while the write runs
        cannot stop it: the write is finished (and returned, to be applied), and the
        cancellation is returned too, to be raised once the conversation is consistent."""
        task = asyncio.ensure_future(asyncio.to_thread(self.write, core, list(messages)))
        cancelled: BaseException | None = None
        while True:
            try:
                return await asyncio.shield(task), cancelled
            except asyncio.CancelledError as exc:
                if task.done() and not task.cancelled():
                    return task.result(), exc
                cancelled = exc


_USAGE_FIELDS = frozenset(Usage.__dataclass_fields__)


__all__ = ["Outcome", "StoreLink"]
