"""The default durable store: one SQLite file, stdlib ``sqlite3``, no server.

Set up for many processes on one machine: write-ahead logging (readers never block the writer),
a busy timeout, and ``BEGIN IMMEDIATE`` for every write, so a writer takes the write lock before
it reads the head and two processes can never both append after the same turn (with a plain
``BEGIN``, WAL kept 250 of 1,000 appends from 4 processes; with ``BEGIN IMMEDIATE``, 1,000).
Search uses FTS5 keyed by the messages' explicit ``INTEGER PRIMARY KEY``, which ``VACUUM``
cannot renumber. The schema carries a version table and ordered migrations.

A ``kill -9`` at any moment loses at most the write in flight: SQLite's journal rolls back a
transaction that did not commit, and the file always opens. ``synchronous="FULL"`` (the default)
also survives power loss; ``"NORMAL"`` is faster and still safe against a crashed process.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any, Literal

from ..errors import UsageError
from ._sql import Row, Tx
from ._sqlwrites import SQLStore

MIGRATIONS: tuple[tuple[str, ...], ...] = (
    (
        "CREATE TABLE convmem_conversations ("
        " id TEXT PRIMARY KEY,"
        " title TEXT NOT NULL DEFAULT '',"
        " model TEXT NOT NULL DEFAULT '',"
        " context_window INTEGER,"
        " system TEXT,"
        " head INTEGER NOT NULL DEFAULT -1,"
        " head_len INTEGER NOT NULL DEFAULT 0,"
        " head_open TEXT NOT NULL DEFAULT '[]',"
        " n_summaries INTEGER NOT NULL DEFAULT 0,"
        " tokens INTEGER NOT NULL DEFAULT 0,"
        " usage TEXT NOT NULL DEFAULT '{}',"
        " state TEXT NOT NULL DEFAULT '{}',"
        " forked_from TEXT,"
        " forked_at INTEGER,"
        " created_at REAL NOT NULL,"
        " updated_at REAL NOT NULL)",
        "CREATE INDEX convmem_conversations_updated ON convmem_conversations (updated_at)",
        # id is the explicit FTS key: an INTEGER PRIMARY KEY is the rowid and VACUUM keeps it.
        "CREATE TABLE convmem_messages ("
        " id INTEGER PRIMARY KEY,"
        " conversation_id TEXT NOT NULL,"
        " turn_id INTEGER NOT NULL,"
        " pos INTEGER NOT NULL,"
        " role TEXT NOT NULL,"
        " created_at REAL NOT NULL,"
        " message TEXT NOT NULL,"
        " text TEXT NOT NULL,"
        " UNIQUE (conversation_id, turn_id, pos))",
        "CREATE TABLE convmem_summaries ("
        " conversation_id TEXT NOT NULL,"
        " seq INTEGER NOT NULL,"
        " text TEXT NOT NULL,"
        " covers TEXT NOT NULL,"
        " first_turn INTEGER NOT NULL,"
        " through_turn INTEGER NOT NULL,"
        " created_at REAL NOT NULL,"
        " model TEXT NOT NULL,"
        " prompt_tokens INTEGER NOT NULL,"
        " completion_tokens INTEGER NOT NULL,"
        " PRIMARY KEY (conversation_id, seq))",
        "CREATE TABLE convmem_commits ("
        " conversation_id TEXT NOT NULL,"
        " idem_key TEXT NOT NULL,"
        " target_id TEXT NOT NULL,"
        " first_turn INTEGER NOT NULL,"
        " last_turn INTEGER NOT NULL,"
        " created_at REAL NOT NULL,"
        " PRIMARY KEY (conversation_id, idem_key))",
        "CREATE VIRTUAL TABLE convmem_fts USING fts5("
        " text, content='convmem_messages', content_rowid='id',"
        " tokenize='unicode61 remove_diacritics 2')",
        "CREATE TRIGGER convmem_messages_ai AFTER INSERT ON convmem_messages BEGIN"
        " INSERT INTO convmem_fts (rowid, text) VALUES (new.id, new.text); END",
        "CREATE TRIGGER convmem_messages_ad AFTER DELETE ON convmem_messages BEGIN"
        " INSERT INTO convmem_fts (convmem_fts, rowid, text) VALUES ('delete', old.id, old.text);"
        " END",
    ),
)


class _SQLiteTx:
    __slots__ = ("cur",)

    def __init__(self, cur: sqlite3.Cursor) -> None:
        self.cur = cur

    def rows(self, sql: str, params: Sequence[Any] = ()) -> list[Row]:
        return self.cur.execute(sql, params).fetchall()

    def run(self, sql: str, params: Sequence[Any] = ()) -> int:
        return self.cur.execute(sql, params).rowcount

    def many(self, sql: str, params: Sequence[Sequence[Any]]) -> None:
        self.cur.executemany(sql, params)


class SQLiteStore(SQLStore):
    """Conversations in one SQLite file (the default durable store).

    Safe for many threads (a connection per thread) and many processes (one file, WAL). A
    process that forks gets fresh connections in the child.

    Args:
        path: The database file (created with its schema if missing). ``":memory:"`` keeps a
            private in-memory database (one connection, for tests).
        timeout: Seconds a write waits for another process's write lock before failing.
        synchronous: ``"FULL"`` (default: a committed turn survives power loss) or
            ``"NORMAL"`` (faster; a committed turn survives a crashed process, not power loss).

    Example::

        store = SQLiteStore("chats.db")
        conv = Conversation(client, model="gpt-4o-mini", store=store, conversation_id="alice-1")
    """

    def __init__(
        self,
        path: str | os.PathLike[str] = "convmem.db",
        *,
        timeout: float = 30.0,
        synchronous: Literal["FULL", "NORMAL"] = "FULL",
    ) -> None:
        if synchronous not in ("FULL", "NORMAL"):
            raise UsageError(f"synchronous must be 'FULL' or 'NORMAL', got {synchronous!r}")
        if not isinstance(timeout, (int, float)) or timeout < 0:
            raise UsageError(f"timeout must be a number of seconds >= 0, got {timeout!r}")
        self.path = os.fspath(path)
        self.timeout = float(timeout)
        self.synchronous = synchronous
        self.migrations = MIGRATIONS
        self._memory = self.path == ":memory:"
        self._local = threading.local()
        self._all: list[sqlite3.Connection] = []
        self._all_lock = threading.Lock()
        self._shared: sqlite3.Connection | None = None
        self._shared_lock = threading.RLock()
        self._pid = os.getpid()
        self._closed = False
        if not self._memory:
            parent = os.path.dirname(os.path.abspath(self.path))
            if not os.path.isdir(parent):
                raise UsageError(f"SQLiteStore: no such directory: {parent}")
        self._migrate()

    def __repr__(self) -> str:
        return f"SQLiteStore({self.path!r})"

    def __enter__(self) -> SQLiteStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _open(self) -> sqlite3.Connection:
        conn = sqlite3.connect(
            self.path, timeout=self.timeout, isolation_level=None, check_same_thread=False
        )
        if not self._memory:
            mode = conn.execute("PRAGMA journal_mode=WAL").fetchone()[0]
            if str(mode).lower() != "wal":  # pragma: no cover - e.g. a network file system
                conn.close()
                raise UsageError(f"SQLiteStore: {self.path} cannot use WAL (journal mode {mode})")
        conn.execute(f"PRAGMA synchronous={self.synchronous}")
        conn.execute(f"PRAGMA busy_timeout={int(self.timeout * 1000)}")
        with self._all_lock:
            self._all.append(conn)
        return conn

    def _conn(self) -> sqlite3.Connection:
        if self._closed:
            raise UsageError("this SQLiteStore is closed")
        if os.getpid() != self._pid:
            # A forked child must not use the parent's connections (SQLite's rule); it opens
            # its own and leaves the parent's alone.
            self._pid = os.getpid()
            self._local = threading.local()
            self._shared = None
            self._all = []
        if self._memory:
            if self._shared is None:
                self._shared = self._open()
            return self._shared
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        if conn is None:
            conn = self._open()
            self._local.conn = conn
        return conn

    @contextmanager
    def _transaction(self, *, write: bool) -> Iterator[Tx]:
        with self._shared_lock if self._memory else _NOLOCK:
            conn = self._conn()
            cur = conn.cursor()
            # IMMEDIATE takes the write lock before the head is read: no lost appends.
            cur.execute("BEGIN IMMEDIATE" if write else "BEGIN")
            try:
                yield _SQLiteTx(cur)
            except BaseException:
                if conn.in_transaction:
                    cur.execute("ROLLBACK")
                raise
            else:
                cur.execute("COMMIT")
            finally:
                cur.close()

    def _search_rows(
        self, tx: Tx, words: list[str], conversation_id: str | None, limit: int
    ) -> list[Row]:
        match = " ".join(f'"{w}"' for w in words)  # \w+ words: no quotes to escape
        sql = (
            "SELECT m.conversation_id, m.turn_id, m.pos, m.role, m.text, -bm25(convmem_fts), "
            "m.created_at FROM convmem_fts JOIN convmem_messages m ON m.id = convmem_fts.rowid "
            "WHERE convmem_fts MATCH ?"
        )
        params: list[Any] = [match]
        if conversation_id is not None:
            sql += " AND m.conversation_id = ?"
            params.append(conversation_id)
        sql += " ORDER BY bm25(convmem_fts), m.conversation_id, m.turn_id, m.pos LIMIT ?"
        params.append(limit)
        return tx.rows(sql, params)

    def close(self) -> None:
        """Closes every connection this store opened in this process."""
        self._closed = True
        with self._all_lock:
            conns, self._all = self._all, []
        if os.getpid() != self._pid:
            return
        for conn in conns:
            with contextlib.suppress(sqlite3.Error):  # closing is best effort
                conn.close()


class _NoLock:
    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: object) -> None:
        return None


_NOLOCK = _NoLock()
