"""Chroma clients for the turn store: opening them, private in-memory databases, the directory lock.

What :class:`~convmem.store.TurnStore` needs from Chroma before it touches a collection:
importing ``chromadb`` lazily (a missing extra names its ``pip install``), opening clients with
settings that coexist with a user's own clients in the same process, one admin client to create
and drop private in-memory databases, the exclusive lock on an embedded persistent directory,
and releasing all of it (from ``close()`` or the garbage collector, never raising).
"""

from __future__ import annotations

import contextlib
import os
import threading
from collections.abc import Callable
from typing import Any

from .errors import MissingExtraError, UsageError


def import_chromadb() -> Any:
    try:
        import chromadb
    except ImportError as exc:
        raise MissingExtraError("vector recall", "recall", "chromadb") from exc
    return chromadb


def open_client(factory: Callable[..., Any], chromadb: Any, **kwargs: Any) -> tuple[Any, Any]:
    """Calls a Chroma client factory with default settings; returns ``(client, settings)``.

    Chroma keeps one system per store per process and refuses a second client whose settings
    differ ("An instance of Chroma already exists ... with different settings"). Default
    settings let a user's own ``chromadb.EphemeralClient()`` (opened before or after ours)
    share the system. Telemetry is a no-op in the Chroma versions convmem supports (1.5+).
    If the user opened the store with telemetry off, share that instead.
    """
    settings = chromadb.config.Settings()
    try:
        return factory(settings=settings, **kwargs), settings
    except ValueError as exc:
        if "different settings" not in str(exc):
            raise
        fallback = chromadb.config.Settings(anonymized_telemetry=False)
        try:
            return factory(settings=fallback, **kwargs), fallback
        except ValueError:
            raise UsageError(
                "this Chroma store is already open in this process with other settings; "
                "pass that client as TurnStore(client=...)"
            ) from exc


def ephemeral_client() -> Any:
    """A Chroma in-memory client that coexists with any other opened in this process.

    Raises:
        MissingExtraError: ``chromadb`` is not installed.
    """
    chromadb = import_chromadb()
    client, _ = open_client(chromadb.EphemeralClient, chromadb)
    return client


def is_http(client: Any) -> bool:
    get = getattr(client, "get_settings", None)
    try:
        impl = str(getattr(get(), "chroma_api_impl", "")) if callable(get) else ""
    except Exception:
        return False
    return impl.endswith("FastAPI")


def persist_directory(client: Any) -> str | None:
    """The directory of an embedded persistent Chroma client; None for any other client."""
    get = getattr(client, "get_settings", None)
    if not callable(get):
        return None
    try:
        settings = get()
    except Exception:
        return None
    if not getattr(settings, "is_persistent", False):
        return None
    if getattr(settings, "chroma_api_impl", "") == "chromadb.api.fastapi.FastAPI":
        return None  # an HttpClient: the server owns the directory
    directory = getattr(settings, "persist_directory", None)
    return os.path.abspath(directory) if directory else None


class DirectoryLock:
    """An exclusive lock on a persistent Chroma directory, shared within this process.

    ``flock`` on ``<directory>/convmem.lock``: released by the kernel when the process dies,
    so a crash never leaves the directory locked. Every store of this process on the same
    directory shares one lock (Chroma shares one system per directory in a process, too).
    """

    _held: dict[str, tuple[Any, int]] = {}  # noqa: RUF012 - process-wide registry
    _guard = threading.Lock()

    def __init__(self, directory: str) -> None:
        self.directory = directory
        self._released = False

    @classmethod
    def acquire(cls, directory: str) -> DirectoryLock:
        with cls._guard:
            held = cls._held.get(directory)
            if held is not None:
                cls._held[directory] = (held[0], held[1] + 1)
                return cls(directory)
            try:
                import fcntl
            except ImportError:  # no flock (Windows): Chroma's own file locking applies
                cls._held[directory] = (None, 1)
                return cls(directory)
            os.makedirs(directory, exist_ok=True)
            f = open(os.path.join(directory, "convmem.lock"), "a+")  # noqa: SIM115
            try:
                fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                f.close()
                raise UsageError(
                    f"the Chroma directory {directory!r} is open in another process; an "
                    "embedded PersistentClient serves one process only (two writers lose "
                    "vectors). For several processes run `chroma run --path DIR` and pass "
                    "chromadb.HttpClient(host=..., port=...) with TurnStore(cache=False)"
                ) from None
            f.seek(0)
            f.truncate()
            f.write(str(os.getpid()))
            f.flush()
            cls._held[directory] = (f, 1)
            return cls(directory)

    def release(self) -> None:
        with self._guard:
            if self._released:
                return
            self._released = True
            f, n = self._held[self.directory]
            if n > 1:
                self._held[self.directory] = (f, n - 1)
                return
            del self._held[self.directory]
            if f is not None:
                f.close()  # closing the descriptor releases the flock


# One admin client for the process, to create and drop the private in-memory databases of
# TurnStore(client=None). Chroma admin clients have no close(), so one per store would leak.
_ADMIN: tuple[Any, Any] | None = None
_ADMIN_LOCK = threading.Lock()


def ephemeral_admin(chromadb: Any) -> tuple[Any, Any]:
    global _ADMIN
    with _ADMIN_LOCK:
        if _ADMIN is None:
            _ADMIN = open_client(chromadb.AdminClient, chromadb)
        return _ADMIN


def release(
    client: Any, admin: Any, database: str | None, lock: Any = None, lexical: Any = None
) -> None:
    # Runs from close() or the garbage collector, possibly at interpreter exit: never raise.
    # Best effort is enough: what is left behind is in memory and dies with the process.
    if lexical is not None:
        with contextlib.suppress(Exception):
            lexical.close()
    if lock is not None:
        with contextlib.suppress(Exception):
            lock.release()
    if admin is not None and database is not None:
        with contextlib.suppress(Exception):
            admin.delete_database(database)
    close = getattr(client, "close", None)
    if close is not None:
        with contextlib.suppress(Exception):
            close()


#: Rows per Chroma ``get``: one get of a 100k-turn conversation (200k rows) fails inside
#: Chroma with "too many SQL variables", so reads are paged.
GET_PAGE = 5_000


def get_all(
    collection: Any,
    *,
    include: list[str],
    where: dict[str, Any] | None = None,
    ids: list[str] | None = None,
) -> dict[str, list[Any]]:
    """``collection.get`` of every matching row, read in pages of :data:`GET_PAGE`.

    Returns ``{"ids": [...], <each included field>: [...]}``, rows in Chroma's order.
    """
    out: dict[str, list[Any]] = {"ids": [], **{field: [] for field in include}}

    def take(page: Any) -> int:
        got = list(page.get("ids") or [])
        out["ids"] += got
        for field in include:
            values = page.get(field)
            out[field] += list(values) if values is not None else [None] * len(got)
        return len(got)

    if ids is not None:
        for start in range(0, len(ids), GET_PAGE):
            take(collection.get(ids=ids[start : start + GET_PAGE], include=include))
        return out
    offset = 0
    while True:
        n = take(collection.get(where=where, include=include, limit=GET_PAGE, offset=offset))
        if n < GET_PAGE:
            return out
        offset += n


__all__ = [
    "GET_PAGE",
    "DirectoryLock",
    "ephemeral_admin",
    "ephemeral_client",
    "get_all",
    "import_chromadb",
    "is_http",
    "open_client",
    "persist_directory",
    "release",
]
