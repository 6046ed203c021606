"""The store logic shared by SQLite and PostgreSQL: one schema, one algorithm, two dialects.

Each write is one transaction that first locks the conversation's row (``BEGIN IMMEDIATE`` in
SQLite, ``SELECT ... FOR UPDATE`` in PostgreSQL), then checks the idempotency key and the
expected head, then inserts. The primary keys all start with the conversation id and turn ids
are dense per conversation: there is no global serial ordering and no advisory lock, so the same
statements run on distributed Postgres-compatible engines.

Reads need no snapshot: the conversation row says where the head is, and rows past it (a write
that committed after the row was read) are filtered out, so a half turn is never returned.
"""

from __future__ import annotations

import builtins
import json
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager
from typing import Any, Protocol, TypeVar

from ..errors import InvalidHistoryError, UsageError
from ..history import FrozenDict, FrozenList, Summary, Turn
from ..messages import Message
from .base import (
    Commit,
    ConversationInfo,
    Head,
    SearchHit,
    StoredConversation,
    check_id,
    check_message_for_read,
    dumps,
    now,
    query_words,
    summary_from_row,
)

T = TypeVar("T")
Row = tuple[Any, ...]

CONV_COLUMNS = (
    "id, title, model, context_window, system, head, head_len, n_summaries, tokens, usage, "
    "state, forked_from, forked_at, created_at, updated_at"
)


class Tx(Protocol):
    """One open transaction, as the shared logic sees it (``?`` placeholders)."""

    def rows(self, sql: str, params: Sequence[Any] = ()) -> list[Row]: ...

    def run(self, sql: str, params: Sequence[Any] = ()) -> int: ...

    def many(self, sql: str, params: Sequence[Sequence[Any]]) -> None: ...


def one(tx: Tx, sql: str, params: Sequence[Any] = ()) -> Row | None:
    rows = tx.rows(sql, params)
    return rows[0] if rows else None


class SQLReads:
    """Plumbing and reads of the shared implementation (writes: :mod:`._sqlwrites`)."""

    #: Appended to the SELECT that locks a conversation's row in a write transaction.
    lock_row = ""
    #: Ordered schema migrations: migration ``i`` (1-based) brings the schema to version ``i``.
    migrations: Sequence[Sequence[str]] = ()

    # -- supplied by the dialect ----------------------------------------------------------------
    def _transaction(self, *, write: bool) -> AbstractContextManager[Tx]:
        raise NotImplementedError

    def _retryable(self, exc: BaseException) -> bool:
        """True for errors a transaction may be retried after (serialisation failures)."""
        return False

    def _on_commit(self, tx: Tx, commit: Commit) -> None:
        """Called inside a write transaction that added turns (e.g. to send a notification)."""

    def _search_rows(
        self, tx: Tx, words: list[str], conversation_id: str | None, limit: int
    ) -> list[Row]:
        raise NotImplementedError

    def close(self) -> None:
        raise NotImplementedError

    # -- plumbing ---------------------------------------------------------------------------------
    def _transact(self, fn: Callable[[Tx], T], *, write: bool = True) -> T:
        attempts = 0
        while True:
            try:
                with self._transaction(write=write) as tx:
                    return fn(tx)
            except Exception as exc:
                attempts += 1
                if attempts >= 20 or not self._retryable(exc):
                    raise

    def _migrate(self) -> None:
        """Brings the schema to the newest version, one transaction per migration."""
        latest = len(self.migrations)
        while True:

            def step(tx: Tx) -> bool:
                tx.run(
                    "CREATE TABLE IF NOT EXISTS convmem_schema "
                    "(version INTEGER PRIMARY KEY, applied_at DOUBLE PRECISION NOT NULL)"
                )
                row = one(tx, "SELECT MAX(version) FROM convmem_schema")
                version = int(row[0]) if row and row[0] is not None else 0
                if version > latest:
                    raise UsageError(
                        f"this store has schema version {version}, newer than this convmem "
                        f"knows ({latest}): upgrade convmem"
                    )
                if version == latest:
                    return True
                # Claim the version first: a concurrent migrator waits on this key, then fails
                # and retries, so migrations never run twice (DDL is transactional here).
                tx.run(
                    "INSERT INTO convmem_schema (version, applied_at) VALUES (?, ?)",
                    (version + 1, now()),
                )
                for statement in self.migrations[version]:
                    tx.run(statement)
                return False

            if self._transact(step):
                return

    # -- reading ----------------------------------------------------------------------------------
    def load(self, conversation_id: str) -> StoredConversation | None:
        check_id(conversation_id)

        def read(tx: Tx) -> StoredConversation | None:
            row = one(
                tx,
                f"SELECT {CONV_COLUMNS} FROM convmem_conversations WHERE id = ?",
                (conversation_id,),
            )
            if row is None:
                return None
            conv = _conversation(row)
            conv.turns = self._read_turns(tx, conversation_id, conv.head, after=-1)
            rows = tx.rows(
                "SELECT text, covers, created_at, model, prompt_tokens, completion_tokens "
                "FROM convmem_summaries WHERE conversation_id = ? AND seq < ? ORDER BY seq",
                (conversation_id, int(row[7])),
            )
            conv.summaries = [summary_from_row(*r) for r in rows]
            return conv

        return self._transact(read, write=False)

    def head(self, conversation_id: str) -> Head | None:
        check_id(conversation_id)
        row = self._transact(
            lambda tx: one(
                tx,
                "SELECT head, head_len FROM convmem_conversations WHERE id = ?",
                (conversation_id,),
            ),
            write=False,
        )
        return Head(int(row[0]), int(row[1])) if row else None

    def turns(self, conversation_id: str, *, after: int = -1) -> list[Turn]:
        check_id(conversation_id)

        def read(tx: Tx) -> list[Turn]:
            head = _head(tx, conversation_id)
            return [] if head is None else self._read_turns(tx, conversation_id, head, after=after)

        return self._transact(read, write=False)

    def summaries(self, conversation_id: str) -> list[Summary]:
        check_id(conversation_id)
        rows = self._transact(
            lambda tx: tx.rows(
                "SELECT s.text, s.covers, s.created_at, s.model, s.prompt_tokens, "
                "s.completion_tokens FROM convmem_summaries s JOIN convmem_conversations c "
                "ON c.id = s.conversation_id WHERE s.conversation_id = ? AND s.seq < c.n_summaries "
                "ORDER BY s.seq",
                (conversation_id,),
            ),
            write=False,
        )
        return [summary_from_row(*r) for r in rows]

    def turn_ids(self, conversation_id: str) -> list[int]:
        check_id(conversation_id)

        def read(tx: Tx) -> list[int]:
            head = _head(tx, conversation_id)
            if head is None:
                return []
            rows = tx.rows(
                "SELECT turn_id FROM convmem_messages WHERE conversation_id = ? AND pos = 0 "
                "AND turn_id <= ? ORDER BY turn_id",
                (conversation_id, head.turn_id),
            )
            return [int(r[0]) for r in rows]

        return self._transact(read, write=False)

    def _read_turns(self, tx: Tx, cid: str, head: Head, *, after: int) -> list[Turn]:
        rows = tx.rows(
            "SELECT turn_id, created_at, message FROM convmem_messages "
            "WHERE conversation_id = ? AND turn_id > ? "
            "AND (turn_id < ? OR (turn_id = ? AND pos < ?)) ORDER BY turn_id, pos",
            (cid, after, head.turn_id, head.turn_id, head.length),
        )
        return _group(rows, cid)

    def list(self, *, limit: int | None = None) -> list[ConversationInfo]:
        if limit is not None and (not isinstance(limit, int) or limit < 1):
            raise UsageError(f"limit must be a positive int, got {limit!r}")
        sql = (
            "SELECT id, title, model, head + 1, tokens, created_at, updated_at, forked_from "
            "FROM convmem_conversations ORDER BY updated_at DESC, id"
        )
        params: tuple[Any, ...] = ()
        if limit is not None:
            sql += " LIMIT ?"
            params = (limit,)
        rows = self._transact(lambda tx: tx.rows(sql, params), write=False)
        return [
            ConversationInfo(
                id=r[0],
                title=r[1],
                model=r[2],
                turns=int(r[3]),
                tokens=int(r[4]),
                created_at=float(r[5]),
                updated_at=float(r[6]),
                forked_from=r[7],
            )
            for r in rows
        ]

    def search(
        self, query: str, *, conversation_id: str | None = None, limit: int = 20
    ) -> builtins.list[SearchHit]:
        words = query_words(query)
        if conversation_id is not None:
            check_id(conversation_id)
        if not isinstance(limit, int) or limit < 1:
            raise UsageError(f"limit must be a positive int, got {limit!r}")
        if not words:
            return []
        rows = self._transact(
            lambda tx: self._search_rows(tx, words, conversation_id, limit), write=False
        )
        return [
            SearchHit(
                conversation_id=r[0],
                turn_id=int(r[1]),
                index=int(r[2]),
                role=r[3],
                text=r[4],
                score=float(r[5]),
                created_at=float(r[6]),
            )
            for r in rows
        ]


# -- helpers ----------------------------------------------------------------------------------


def _ensure(tx: Tx, cid: str, t: float) -> None:
    tx.run(
        "INSERT INTO convmem_conversations (id, created_at, updated_at) VALUES (?, ?, ?) "
        "ON CONFLICT (id) DO NOTHING",
        (cid, t, t),
    )


def _head(tx: Tx, cid: str, lock: str = "") -> Head | None:
    row = one(tx, "SELECT head, head_len FROM convmem_conversations WHERE id = ?" + lock, (cid,))
    return Head(int(row[0]), int(row[1])) if row else None


def _contains(tx: Tx, cid: str, current: Head, point: Head) -> bool:
    """True when ``point`` is a prefix of the stored conversation (so one can fork there)."""
    if point.turn_id < 0:
        return True
    if point.turn_id > current.turn_id:
        return False
    if point.turn_id == current.turn_id:
        return point.length <= current.length
    row = one(
        tx,
        "SELECT COUNT(*) FROM convmem_messages WHERE conversation_id = ? AND turn_id = ?",
        (cid, point.turn_id),
    )
    return row is not None and 0 < point.length <= int(row[0])


def _frozen(pairs: list[tuple[str, Any]]) -> FrozenDict:
    # json.loads builds objects bottom-up, so nested objects are frozen already; lists are not.
    frozen = FrozenDict(pairs)
    for key, value in pairs:
        if type(value) is list:
            dict.__setitem__(frozen, key, _frozen_list(value))
    return frozen


def _frozen_list(items: list[Any]) -> FrozenList:
    return FrozenList(_frozen_list(v) if type(v) is list else v for v in items)


def decode_messages(raws: Sequence[str], cid: str) -> list[Message]:
    """Parses stored messages straight into the history's read-only form, in one call."""
    try:
        messages: list[Message] = json.loads("[" + ",".join(raws) + "]", object_pairs_hook=_frozen)
    except ValueError:  # a damaged row: find it, and say which
        for raw in raws:
            check_message_for_read(raw, cid, -1)
        raise
    if not all(type(m) is FrozenDict for m in messages):
        raise InvalidHistoryError(
            f"store conversation {cid!r}", "a stored message is not an object"
        )
    return messages


def _group(rows: Sequence[Row], cid: str) -> list[Turn]:
    messages = decode_messages([r[2] for r in rows], cid)
    turns: list[Turn] = []
    start = 0
    for i in range(1, len(rows) + 1):
        if i == len(rows) or rows[i][0] != rows[start][0]:
            turns.append(
                Turn(
                    id=int(rows[start][0]),
                    messages=tuple(messages[start:i]),
                    created_at=float(rows[start][1]),
                )
            )
            start = i
    return turns


def _conversation(row: Row) -> StoredConversation:
    return StoredConversation(
        id=row[0],
        title=row[1],
        model=row[2],
        context_window=int(row[3]) if row[3] is not None else None,
        system=json.loads(row[4]) if row[4] else None,
        head=Head(int(row[5]), int(row[6])),
        tokens=int(row[8]),
        usage={k: int(v) for k, v in json.loads(row[9]).items()},
        state=json.loads(row[10]),
        forked_from=row[11],
        forked_at=int(row[12]) if row[12] is not None else None,
        created_at=float(row[13]),
        updated_at=float(row[14]),
    )


def _system_json(system: Message | None) -> str | None:
    if system is None:
        return None
    from ..history import _system_message

    return dumps(_system_message(system))
