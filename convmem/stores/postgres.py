"""PostgreSQL for conversations served from many machines (``pip install 'convmem[postgres]'``).

The same schema and guarantees as :class:`~convmem.stores.SQLiteStore`, through psycopg 3 and a
connection pool. Only features that also run on distributed Postgres-compatible engines are
used: every primary key starts with the conversation id, a write locks its conversation's row
(``SELECT ... FOR UPDATE``) and checks the expected head instead of taking an advisory lock,
there is no global serial ordering, and a transaction that hits a serialisation failure or a
deadlock is retried. No session state is kept between transactions and no server-side prepared
statements are made, so it works through PgBouncer in transaction mode.

With ``notify=True`` every commit also sends ``NOTIFY convmem, '<conversation id>'`` so other
processes can learn of new turns without polling (:meth:`PostgresStore.listen`).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

from ..errors import MissingExtraError, UsageError
from ._sql import Row, Tx
from ._sqlwrites import SQLStore
from .base import Commit

NOTIFY_CHANNEL = "convmem"

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
        " tokens BIGINT NOT NULL DEFAULT 0,"
        " usage TEXT NOT NULL DEFAULT '{}',"
        " state TEXT NOT NULL DEFAULT '{}',"
        " forked_from TEXT,"
        " forked_at INTEGER,"
        " created_at DOUBLE PRECISION NOT NULL,"
        " updated_at DOUBLE PRECISION NOT NULL)",
        "CREATE INDEX convmem_conversations_updated ON convmem_conversations (updated_at)",
        "CREATE TABLE convmem_messages ("
        " conversation_id TEXT NOT NULL,"
        " turn_id INTEGER NOT NULL,"
        " pos INTEGER NOT NULL,"
        " role TEXT NOT NULL,"
        " created_at DOUBLE PRECISION NOT NULL,"
        " message TEXT NOT NULL,"
        " text TEXT NOT NULL,"
        " PRIMARY KEY (conversation_id, turn_id, pos))",
        "CREATE INDEX convmem_messages_fts ON convmem_messages"
        " USING GIN (to_tsvector('simple', text))",
        "CREATE TABLE convmem_summaries ("
        " conversation_id TEXT NOT NULL,"
        " seq INTEGER NOT NULL,"
        " text TEXT NOT NULL,"
        " covers TEXT NOT NULL,"
        " first_turn INTEGER NOT NULL,"
        " through_turn INTEGER NOT NULL,"
        " created_at DOUBLE PRECISION NOT NULL,"
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
        " created_at DOUBLE PRECISION NOT NULL,"
        " PRIMARY KEY (conversation_id, idem_key))",
    ),
)


def _import_psycopg() -> tuple[Any, Any]:
    try:
        import psycopg
        import psycopg_pool
    except ImportError as exc:
        missing = "psycopg_pool" if "pool" in str(exc) else "psycopg"
        raise MissingExtraError("PostgresStore", "postgres", missing) from exc
    return psycopg, psycopg_pool


class _PgTx:
    __slots__ = ("cur",)

    def __init__(self, cur: Any) -> None:
        self.cur = cur

    def rows(self, sql: str, params: Sequence[Any] = ()) -> list[Row]:
        self.cur.execute(_pg(sql), params)
        return list(self.cur.fetchall()) if self.cur.description is not None else []

    def run(self, sql: str, params: Sequence[Any] = ()) -> int:
        self.cur.execute(_pg(sql), params)
        return int(self.cur.rowcount)

    def many(self, sql: str, params: Sequence[Sequence[Any]]) -> None:
        if params:
            self.cur.executemany(_pg(sql), params)


_PG_SQL: dict[str, str] = {}


def _pg(sql: str) -> str:
    # The shared SQL uses "?" placeholders and no literal "?" or "%".
    out = _PG_SQL.get(sql)
    if out is None:
        out = _PG_SQL[sql] = sql.replace("?", "%s")
    return out


class PostgresStore(SQLStore):
    """Conversations in PostgreSQL, for many processes on many machines.

    Args:
        conninfo: A libpq connection string or URL
            (``"postgresql://user:pass@host:5432/db"``). Ignored when ``pool`` is given.
        pool: An open ``psycopg_pool.ConnectionPool`` to use instead (this store does not
            close it).
        min_size: Connections the pool keeps open.
        max_size: The most connections the pool opens.
        notify: Send ``NOTIFY convmem, '<conversation id>'`` with every commit.
        timeout: Seconds to wait for a connection from the pool.

    Raises:
        MissingExtraError: psycopg or psycopg-pool is not installed.
    """

    lock_row = " FOR UPDATE"

    def __init__(
        self,
        conninfo: str = "",
        *,
        pool: Any = None,
        min_size: int = 1,
        max_size: int = 8,
        notify: bool = False,
        timeout: float = 30.0,
    ) -> None:
        psycopg, psycopg_pool = _import_psycopg()
        self._psycopg = psycopg
        self.migrations = MIGRATIONS
        self.notify = bool(notify)
        if pool is None:
            if not isinstance(conninfo, str):
                raise UsageError("conninfo must be a libpq connection string or URL")
            if not (1 <= min_size <= max_size):
                raise UsageError(f"need 1 <= min_size <= max_size, got {min_size}, {max_size}")
            # prepare_threshold=None: no server-side prepared statements (PgBouncer-safe);
            # autocommit: writes open their transaction explicitly, reads need none.
            self._pool = psycopg_pool.ConnectionPool(
                conninfo,
                min_size=min_size,
                max_size=max_size,
                kwargs={"prepare_threshold": None, "autocommit": True},
                timeout=timeout,
                open=False,
            )
            self._pool.open(wait=True, timeout=timeout)
            self._owns_pool = True
        else:
            self._pool = pool
            self._owns_pool = False
        self.conninfo = conninfo
        self._retry_types = (
            psycopg.errors.SerializationFailure,
            psycopg.errors.DeadlockDetected,
            psycopg.errors.UniqueViolation,  # two first migrations or creates racing
            psycopg.errors.DuplicateTable,
            psycopg.errors.DuplicateObject,
        )
        self._migrate()

    def __repr__(self) -> str:
        return "PostgresStore(...)"

    def __enter__(self) -> PostgresStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @contextmanager
    def _transaction(self, *, write: bool) -> Iterator[Tx]:
        with self._pool.connection() as conn:
            if not write:
                # Reads need no snapshot (rows past the head are filtered out), so each runs
                # on its own: no BEGIN/COMMIT round trips.
                with conn.cursor() as cur:
                    yield _PgTx(cur)
                return
            with conn.transaction(), conn.cursor() as cur:
                yield _PgTx(cur)

    def _retryable(self, exc: BaseException) -> bool:
        if isinstance(exc, self._psycopg.errors.UniqueViolation):
            # Only the schema table and conversation creation race on keys; a duplicate turn
            # key would mean a broken head check, which must not be retried into silence.
            return "convmem_messages" not in str(exc)
        return isinstance(exc, self._retry_types)

    def _on_commit(self, tx: Tx, commit: Commit) -> None:
        if self.notify:  # delivered when the transaction commits, never for a rolled-back one
            tx.rows("SELECT pg_notify(?, ?)", (NOTIFY_CHANNEL, commit.conversation_id))

    def listen(self, *, timeout: float | None = None, ready: Any = None) -> Iterator[str]:
        """Yields the ids of conversations that other writers committed to (``notify=True``).

        Uses a connection of its own, outside the pool (``LISTEN`` holds session state, so it
        must not go through PgBouncer in transaction mode). Stops after ``timeout`` seconds
        without a notification, when given. ``ready`` (a ``threading.Event``) is set once
        listening has started.
        """
        conn = self._psycopg.connect(self.conninfo, autocommit=True)
        try:
            conn.execute(f"LISTEN {NOTIFY_CHANNEL}")
            if ready is not None:
                ready.set()
            for note in conn.notifies(timeout=timeout):
                yield str(note.payload)
        finally:
            conn.close()

    def _search_rows(
        self, tx: Tx, words: list[str], conversation_id: str | None, limit: int
    ) -> list[Row]:
        sql = (
            "SELECT conversation_id, turn_id, pos, role, text, "
            "ts_rank(to_tsvector('simple', text), q), created_at "
            "FROM convmem_messages, plainto_tsquery('simple', ?) AS q "
            "WHERE to_tsvector('simple', text) @@ q"
        )
        params: list[Any] = [" ".join(words)]
        if conversation_id is not None:
            sql += " AND conversation_id = ?"
            params.append(conversation_id)
        sql += " ORDER BY 6 DESC, conversation_id, turn_id, pos LIMIT ?"
        params.append(limit)
        return tx.rows(sql, params)

    def close(self) -> None:
        """Closes the pool (unless it was given)."""
        if self._owns_pool:
            self._pool.close()
