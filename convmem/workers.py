"""One shared pool of worker threads for the background memory work of every conversation.

Storing turns for recall, and strategy jobs that run with a timeout, go to this pool instead of
a thread per conversation (500 conversations used to make 501 threads). Workers are daemon
threads, started on demand up to :data:`MAX_WORKERS` and stopped after a minute idle, so a job
that hangs (an embedder, a Chroma server) can never keep the process from exiting; at exit the
pool waits up to :data:`EXIT_WAIT_SECONDS` for queued work (turns being stored) to finish.
A second, smaller pool (:func:`query_pool`) runs work a call waits on next to its own (the
keyword search while the vectors are searched), so busy background jobs never delay it.
"""

from __future__ import annotations

import atexit
import queue
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from typing import Any, TypeVar

T = TypeVar("T")

#: Most worker threads the pool runs at once (all conversations together).
MAX_WORKERS = 8
#: How long the interpreter waits at exit for queued background work.
EXIT_WAIT_SECONDS = 10.0
_IDLE_SECONDS = 60.0


class WorkerPool:
    """A small pool of daemon threads (``concurrent.futures`` joins its threads at exit, so one
    hung job there would hang the interpreter's exit)."""

    def __init__(self, max_workers: int = MAX_WORKERS, name: str = "convmem") -> None:
        self.max_workers = max_workers
        self.name = name
        self._queue: queue.SimpleQueue[tuple[Future[Any], Callable[[], Any]] | None] = (
            queue.SimpleQueue()
        )
        self._cond = threading.Condition()
        self._threads: set[threading.Thread] = set()
        self._idle = 0
        self._unfinished = 0

    @property
    def threads(self) -> int:
        """Worker threads alive now."""
        with self._cond:
            return len(self._threads)

    def submit(self, fn: Callable[[], T]) -> Future[T]:
        """Runs ``fn()`` in a worker; its result or exception is in the returned future."""
        fut: Future[T] = Future()
        with self._cond:
            self._unfinished += 1
            start = self._idle == 0 and len(self._threads) < self.max_workers
            if start:
                t = threading.Thread(
                    target=self._work, name=f"{self.name}-{len(self._threads)}", daemon=True
                )
                self._threads.add(t)
            else:
                self._idle -= 1  # that worker is taken; the next submit will not count on it
        self._queue.put((fut, fn))
        if start:
            t.start()
        return fut

    def _work(self) -> None:
        me = threading.current_thread()
        while True:
            try:
                item = self._queue.get(timeout=_IDLE_SECONDS)
            except queue.Empty:
                with self._cond:
                    if self._idle > 0:
                        self._idle -= 1
                        self._threads.discard(me)
                        return
                continue
            if item is None:  # pragma: no cover - not used; kept for shutdown symmetry
                return
            fut, fn = item
            if fut.set_running_or_notify_cancel():
                try:
                    fut.set_result(fn())
                except BaseException as exc:  # the caller sees it through the future
                    fut.set_exception(exc)
            with self._cond:
                self._unfinished -= 1
                self._idle += 1
                self._cond.notify_all()

    def wait_idle(self, timeout: float) -> bool:
        """Waits until no job is queued or running; False when ``timeout`` passed first."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while self._unfinished:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._cond.wait(left)
        return True


#: The pool every conversation shares.
POOL = WorkerPool()


@atexit.register
def _finish_at_exit() -> None:
    POOL.wait_idle(EXIT_WAIT_SECONDS)


def start_daemon(fn: Callable[[], T], name: str) -> Future[T]:
    """Runs ``fn()`` in a fresh daemon thread; its outcome is in the returned future.

    Used for tools under ``tool_timeout``: a fresh thread, so a tool that hangs does not take a
    pool worker for good, and a daemon, so it cannot keep the process from exiting (Python
    cannot stop a thread; after the timeout it is left to finish on its own).
    """
    fut: Future[T] = Future()

    def run() -> None:
        if fut.set_running_or_notify_cancel():
            try:
                fut.set_result(fn())
            except BaseException as exc:
                fut.set_exception(exc)

    threading.Thread(target=run, name=f"convmem-tool-{name}", daemon=True).start()
    return fut


_QUERY_POOL: WorkerPool | None = None
_QUERY_POOL_LOCK = threading.Lock()


def query_pool() -> WorkerPool:
    """Daemon threads for work a call waits on, run next to its own (the keyword search while
    the vectors are searched); apart from :data:`POOL` so busy background jobs never delay it."""
    global _QUERY_POOL
    with _QUERY_POOL_LOCK:
        if _QUERY_POOL is None:
            _QUERY_POOL = WorkerPool(max_workers=4, name="convmem-query")
        return _QUERY_POOL


__all__ = ["EXIT_WAIT_SECONDS", "MAX_WORKERS", "POOL", "WorkerPool", "query_pool", "start_daemon"]
