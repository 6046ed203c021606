"""Background memory work of a conversation: the shared pool, cold starts, failed-job retries.

Storing turns for recall runs off the call's path, in the worker pool every conversation shares
(:mod:`convmem.workers`). A job that fails is kept in a backlog and retried at the next calls
with back-off (``conv.pending_memory`` lists it; plans say so in their notes). Until a
strategy's first local job has run, its jobs run on the calling thread, one strategy at a time,
so the heavy optional packages they import (chromadb, sentence-transformers) never import in a
worker thread racing another import (issue 7.2). I/O-free apart from handing jobs to the pool.
"""

from __future__ import annotations

import threading
import time
import warnings
import weakref
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any

from .plan import Note
from .redact import describe_error
from .strategy import ContextRequest, Job, LocalJob
from .workers import POOL

#: How often a background job that failed (storing a turn for recall) is tried in all.
MEMORY_ATTEMPTS = 5
#: How many summaries a background summary job (``background_summary=True``) makes in a row at
#: most: another one when the next call would still find one due (a summariser whose window
#: takes only part of the turns to cover at a time).
BACKGROUND_SUMMARY_ROUNDS = 3
#: Seconds before the first retry of a failed background job; doubled after each failure.
MEMORY_RETRY_SECONDS = 1.0


@dataclass
class JobResult:
    """The outcome of a strategy job, handed back in ``ContextRequest.results``.

    Attributes:
        value: What the job returned (a ``ChatCompletion`` for an :class:`LLMJob`).
        error: The exception, when it failed.
        seconds: How long it took.
        model: For LLM jobs, the model it went to.
    """

    value: Any = None
    error: BaseException | None = None
    seconds: float = 0.0
    model: str = ""

    @property
    def ok(self) -> bool:
        return self.error is None


@dataclass
class PendingMemory:
    """A background job (storing turns for recall) that failed and is waiting to be retried.

    Attributes:
        key: The job's key (e.g. ``"recall:store"``).
        turn_ids: The turns it stores.
        attempts: How often it was tried.
        error: The last error, one line (redacted).
        retry_at: ``time.monotonic()`` after which it is tried again, at the next call.
        gave_up: True once it failed :data:`MEMORY_ATTEMPTS` times; it is not tried again
            (``close()`` tries it once more).
    """

    key: str
    turn_ids: tuple[int, ...]
    attempts: int
    error: str
    retry_at: float
    gave_up: bool = False
    job: Job | None = field(default=None, repr=False, compare=False)
    running: bool = field(default=False, repr=False, compare=False)

    def describe(self) -> str:
        turns = ", ".join(map(str, self.turn_ids)) or "-"
        return f"{self.key} (turns {turns}, {self.attempts} attempt(s)): {self.error}"


# Strategies whose first local job already ran. Until then their jobs run on the calling
# thread, one strategy at a time: a first job imports heavy optional packages (chromadb,
# sentence-transformers), and imports racing in worker threads fail with "partially
# initialized module" errors. Keyed by id() with a weak reference to tell a reused id apart.
_WARM: dict[int, Callable[[], Any]] = {}
_COLD_LOCK = threading.RLock()


def _is_warm(strategy: Any) -> bool:
    ref = _WARM.get(id(strategy))
    return ref is not None and ref() is strategy


def _mark_warm(strategy: Any) -> None:
    try:
        _WARM[id(strategy)] = weakref.ref(strategy)
    except TypeError:  # no weak references: keep it alive instead
        _WARM[id(strategy)] = lambda: strategy


def _run_local(job: LocalJob) -> JobResult:
    t0 = time.perf_counter()
    try:
        return JobResult(value=job.fn(), seconds=time.perf_counter() - t0)
    except Exception as exc:  # a store failure must not lose the call; the strategy decides
        return JobResult(error=exc, seconds=time.perf_counter() - t0)


def _timed_out(job: Job, seconds: float) -> JobResult:
    return JobResult(
        error=TimeoutError(f"job {job.key!r} did not finish within {seconds:g} s (job_timeout)"),
        seconds=seconds,
    )


class _Background:
    """The background-work half of ``_Core`` (a mixin: it uses the core's strategy)."""

    strategy: Any
    _memory_lock: threading.Lock
    _memory: list[PendingMemory]
    _futures: list[Future[None]]

    _record_job: Callable[..., None]

    def _warm_key(self) -> Any:
        # A user strategy is wrapped per conversation (CheckedStrategy): what its first job
        # imports is shared by every conversation using the same object.
        return getattr(self.strategy, "inner", self.strategy)

    def _warm(self) -> bool:
        return _is_warm(self._warm_key())

    @property
    def pending_memory(self) -> list[PendingMemory]:
        """Background jobs (storing turns for recall) that failed and wait to be retried.

        Empty when every committed turn reached the strategy's store. A failed job is retried
        at the next calls, with back-off, up to :data:`MEMORY_ATTEMPTS` times; each plan says
        so in its notes while the backlog is not empty.
        """
        with self._memory_lock:
            return [
                PendingMemory(m.key, m.turn_ids, m.attempts, m.error, m.retry_at, m.gave_up)
                for m in self._memory
            ]

    def _run_local_jobs(
        self, request: ContextRequest | None, jobs: Sequence[LocalJob], turn_ids: Sequence[int]
    ) -> None:
        """Runs local jobs here and now (on a pool worker, or cold on the calling thread)."""
        for job in jobs:
            self._record_job(request, job, self._cold_or_inline(job), turn_ids)

    def _cold_or_inline(self, job: LocalJob) -> JobResult:
        if self._warm():
            return _run_local(job)
        with _COLD_LOCK:
            result = _run_local(job)
        if result.ok:
            _mark_warm(self._warm_key())
        return result

    def _spawn_local(self, jobs: Sequence[Job], turn_ids: Sequence[int]) -> None:
        """Stores turns off the call's path: in the shared pool, or here while still cold."""
        local = [j for j in jobs if isinstance(j, LocalJob)]
        if not local:
            return
        if not self._warm():
            # First job of this strategy: on the calling thread, so its imports never race.
            self._run_local_jobs(None, local, turn_ids)
            return
        fut = POOL.submit(lambda: self._run_local_jobs(None, local, turn_ids))
        with self._memory_lock:
            self._futures = [f for f in self._futures if not f.done()]
            self._futures.append(fut)

    def _take_futures(self) -> list[Future[None]]:
        with self._memory_lock:
            futures, self._futures = self._futures, []
        return futures

    def _remember(self, job: Job, result: JobResult, turn_ids: tuple[int, ...]) -> None:
        """Keeps a failed background job for a retry; forgets it once it succeeded."""
        warn = ""
        with self._memory_lock:
            entry = next((m for m in self._memory if m.job is job), None)
            if result.error is None:
                if entry is not None:
                    self._memory.remove(entry)
                return
            if entry is None:
                entry = PendingMemory(job.key, turn_ids, 0, "", 0.0, job=job)
                self._memory.append(entry)
            entry.running = False
            entry.attempts += 1
            entry.error = describe_error(result.error)
            entry.retry_at = time.monotonic() + MEMORY_RETRY_SECONDS * 2 ** (entry.attempts - 1)
            if entry.attempts == 1:
                warn = f"convmem background job failed, will retry: {entry.describe()}"
            elif entry.attempts >= MEMORY_ATTEMPTS and not entry.gave_up:
                entry.gave_up = True
                warn = f"convmem background job failed for good: {entry.describe()}"
        if warn:
            warnings.warn(warn, RuntimeWarning, stacklevel=2)

    def _memory_notes(self) -> list[Note]:
        """Plan notes about the backlog: kinds ``memory_retrying``, ``memory_waiting`` and
        ``memory_gave_up``, with the job's key, turn ids, attempts and last error."""
        now = time.monotonic()
        notes = []
        with self._memory_lock:
            for m in self._memory:
                data: dict[str, Any] = {
                    "key": m.key,
                    "turn_ids": list(m.turn_ids),
                    "attempts": m.attempts,
                    "error": m.error,
                }
                if m.gave_up:
                    kind, text = "memory_gave_up", f"gave up storing {m.describe()}"
                    text += "; recall misses them"
                elif m.running or m.retry_at <= now:
                    kind = "memory_retrying"
                    text = (
                        f"retrying {m.describe()} (attempt {m.attempts + 1} of {MEMORY_ATTEMPTS})"
                    )
                else:
                    kind = "memory_waiting"
                    data["retry_in"] = round(m.retry_at - now, 1)
                    text = f"not yet stored {m.describe()}; next try in {m.retry_at - now:.0f} s"
                notes.append(Note(kind, {**data, "text": f"memory: {text}"}))
        return notes

    def _due_memory(self, *, everything: bool = False) -> list[tuple[LocalJob, tuple[int, ...]]]:
        """Failed background jobs whose back-off has passed; marked running."""
        now = time.monotonic()
        due = []
        with self._memory_lock:
            for m in self._memory:
                ready = everything or (not m.gave_up and m.retry_at <= now)
                if ready and not m.running and isinstance(m.job, LocalJob):
                    m.running = True
                    due.append((m.job, m.turn_ids))
        return due

    def _retry_memory(self, *, everything: bool = False) -> None:
        """Retries due failed jobs in the background (the call does not wait for them)."""
        for job, turn_ids in self._due_memory(everything=everything):
            self._spawn_local([job], turn_ids)
