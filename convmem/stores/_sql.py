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
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import AbstractContextManager
from typing import Any, Protocol, TypeVar

from ..errors import ConflictError, InvalidMessageError, UsageError
from ..history import Summary, Turn
from ..messages import Message, open_tool_call_ids
from .base import (
    EMPTY,
    Commit,
    ConflictPolicy,
    ConversationInfo,
    Head,
    SearchHit,
    StoredConversation,
    add_usage,
    check_id,
    check_key,
    check_message_for_read,
    check_policy,
    check_summary,
    dumps,
    group_for_write,
    new_fork_id,
    now,
    prepare_messages,
    query_words,
    searchable_text,
    summary_from_row,
    title_of,
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


class SQLStore:
    """The shared implementation; subclasses supply transactions, migrations and search."""

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

    # -- writing ----------------------------------------------------------------------------------
    def create(
        self,
        conversation_id: str,
        *,
        system: Message | None = None,
        model: str = "",
        context_window: int | None = None,
        title: str = "",
    ) -> bool:
        check_id(conversation_id)
        system_json = _system_json(system)
        if context_window is not None and (
            not isinstance(context_window, int) or context_window < 1
        ):
            raise UsageError(f"context_window must be a positive int, got {context_window!r}")
        t = now()
        return bool(
            self._transact(
                lambda tx: tx.run(
                    "INSERT INTO convmem_conversations (id, title, model, context_window, "
                    "system, created_at, updated_at) VALUES (?, ?, ?, ?, ?, ?, ?) "
                    "ON CONFLICT (id) DO NOTHING",
                    (conversation_id, str(title), str(model), context_window, system_json, t, t),
                )
            )
        )

    def set_meta(
        self,
        conversation_id: str,
        *,
        system: Message | None = None,
        model: str | None = None,
        context_window: int | None = None,
        title: str | None = None,
    ) -> None:
        """Updates the conversation's system prompt, model, window or title (given ones only)."""
        check_id(conversation_id)
        sets: list[str] = []
        params: list[Any] = []
        if system is not None:
            sets.append("system = ?")
            params.append(_system_json(system))
        for column, value in (
            ("model", model),
            ("context_window", context_window),
            ("title", title),
        ):
            if value is not None:
                sets.append(f"{column} = ?")
                params.append(value)
        if not sets:
            return
        sets.append("updated_at = ?")
        params.extend([now(), conversation_id])
        changed = self._transact(
            lambda tx: tx.run(
                f"UPDATE convmem_conversations SET {', '.join(sets)} WHERE id = ?", params
            )
        )
        if not changed:
            raise UsageError(f"no conversation {conversation_id!r}")

    def append(
        self,
        conversation_id: str,
        messages: Sequence[Mapping[str, Any]],
        *,
        expected_head: Head | None = None,
        on_conflict: ConflictPolicy = "append",
        idempotency_key: str | None = None,
        tokens: int = 0,
        usage: Mapping[str, int] | None = None,
        state: Mapping[str, Any] | None = None,
        created_at: float | None = None,
    ) -> Commit:
        check_id(conversation_id)
        policy = check_policy(on_conflict)
        key = check_key(idempotency_key)
        msgs = prepare_messages(messages)
        if expected_head is not None and not isinstance(expected_head, Head):
            raise UsageError(f"expected_head must be a Head, got {expected_head!r}")
        if not isinstance(tokens, int) or tokens < 0:
            raise UsageError(f"tokens must be a non-negative int, got {tokens!r}")
        add_usage({}, usage)  # validates before the transaction
        state_json = dumps(dict(state)) if state is not None else None
        payload = [(dumps(m), searchable_text(m), str(m["role"])) for m in msgs]
        t = now() if created_at is None else float(created_at)

        def write(tx: Tx) -> Commit:
            lock = (
                "SELECT head, head_len, usage, title, head_open FROM convmem_conversations "
                "WHERE id = ?" + self.lock_row
            )
            row = one(tx, lock, (conversation_id,))
            if row is None:
                _ensure(tx, conversation_id, t)
                row = one(tx, lock, (conversation_id,))
                assert row is not None
            if key is not None:
                dup = one(
                    tx,
                    "SELECT target_id, first_turn, last_turn FROM convmem_commits "
                    "WHERE conversation_id = ? AND idem_key = ?",
                    (conversation_id, key),
                )
                if dup is not None:
                    return self._duplicate(tx, dup)
            current = Head(int(row[0]), int(row[1]))
            base, target, forked_from = current, conversation_id, None
            conflict = expected_head is not None and expected_head != current
            if conflict:
                assert expected_head is not None
                continues = expected_head.turn_id >= 0 and msgs[0]["role"] != "user"
                if policy == "raise":
                    raise ConflictError(conversation_id, expected_head, current)
                if policy == "append" and continues:
                    raise ConflictError(
                        conversation_id,
                        expected_head,
                        current,
                        f"the messages continue turn {expected_head.turn_id}, which another "
                        "writer has moved past; they cannot be moved after it",
                    )
                if policy == "fork":
                    if not _contains(tx, conversation_id, current, expected_head):
                        raise ConflictError(
                            conversation_id,
                            expected_head,
                            current,
                            "the head it was built on is not in the store, so it cannot fork there",
                        )
                    target = new_fork_id(conversation_id)
                    self._fork_tx(tx, conversation_id, target, expected_head, t)
                    forked_from, base = conversation_id, expected_head
            if base.turn_id >= 0 and (msgs[0]["role"] != "user" or target != conversation_id):
                prior = self._turn_messages(tx, target, base)
            else:
                # A new turn after the head: only the head's open tool calls matter, and the
                # row has them, so the lock is held for one query less.
                prior = []
                unanswered = json.loads(row[4]) if base.turn_id >= 0 else []
                if unanswered:
                    raise InvalidMessageError(
                        f"tool calls {sorted(unanswered)} have no tool reply before this user "
                        "message",
                        msgs[0],
                        0,
                    )
            continuation, groups = group_for_write(msgs, base, prior)
            rows: list[tuple[Any, ...]] = []
            turns: list[Turn] = []
            i = 0
            if continuation:
                start = base.length
                for pos, _msg in enumerate(continuation, start):
                    rows.append((target, base.turn_id, pos, t, *payload[i]))
                    i += 1
                turns.append(Turn(id=base.turn_id, messages=(*prior, *continuation), created_at=t))
            next_id = base.turn_id + 1
            for group in groups:
                for pos, _msg in enumerate(group):
                    rows.append((target, next_id, pos, t, *payload[i]))
                    i += 1
                turns.append(Turn(id=next_id, messages=tuple(group), created_at=t))
                next_id += 1
            tx.many(
                "INSERT INTO convmem_messages (conversation_id, turn_id, pos, created_at, "
                "message, text, role) VALUES (?, ?, ?, ?, ?, ?, ?)",
                rows,
            )
            last = turns[-1]
            head = Head(last.id, len(last.messages))
            trow = row[2:4] if target == conversation_id else None
            if trow is None:
                trow = one(
                    tx, "SELECT usage, title FROM convmem_conversations WHERE id = ?", (target,)
                )
                assert trow is not None
            merged = dumps(add_usage(json.loads(trow[0]), usage))
            title = trow[1] or title_of(msgs)
            tx.run(
                "UPDATE convmem_conversations SET head = ?, head_len = ?, head_open = ?, "
                "tokens = tokens + ?, usage = ?, state = COALESCE(?, state), title = ?, "
                "updated_at = ? WHERE id = ?",
                (
                    head.turn_id,
                    head.length,
                    dumps(open_tool_call_ids(last.messages)),
                    tokens,
                    merged,
                    state_json,
                    title,
                    t,
                    target,
                ),
            )
            if key is not None:
                first = turns[0].id
                for owner in {conversation_id, target}:
                    tx.run(
                        "INSERT INTO convmem_commits (conversation_id, idem_key, target_id, "
                        "first_turn, last_turn, created_at) VALUES (?, ?, ?, ?, ?, ?)",
                        (owner, key, target, first, head.turn_id, t),
                    )
            commit = Commit(
                conversation_id=target,
                turns=tuple(turns),
                base=base,
                head=head,
                conflict=conflict,
                forked_from=forked_from,
            )
            self._on_commit(tx, commit)
            return commit

        return self._transact(write)

    def _duplicate(self, tx: Tx, dup: Row) -> Commit:
        target, first, last = dup[0], int(dup[1]), int(dup[2])
        head = _head(tx, target) or EMPTY
        rows = tx.rows(
            "SELECT turn_id, created_at, message FROM convmem_messages WHERE conversation_id = ? "
            "AND turn_id >= ? AND turn_id <= ? ORDER BY turn_id, pos",
            (target, first, last),
        )
        turns = _group(rows, target)
        end = turns[-1] if turns else None
        return Commit(
            conversation_id=target,
            turns=tuple(turns),
            base=Head(first - 1, 0) if turns else EMPTY,
            head=Head(end.id, len(end.messages)) if end else head,
            duplicate=True,
        )

    def _turn_messages(self, tx: Tx, cid: str, head: Head) -> builtins.list[Message]:
        rows = tx.rows(
            "SELECT message FROM convmem_messages WHERE conversation_id = ? AND turn_id = ? "
            "AND pos < ? ORDER BY pos",
            (cid, head.turn_id, head.length),
        )
        return [check_message_for_read(r[0], cid, head.turn_id) for r in rows]

    def add_summary(
        self,
        conversation_id: str,
        summary: Summary,
        *,
        expected_summaries: int,
        expected_head: Head | None = None,
    ) -> bool:
        check_id(conversation_id)
        check_summary(summary)
        if not isinstance(expected_summaries, int) or expected_summaries < 0:
            raise UsageError(f"expected_summaries must be an int >= 0, got {expected_summaries!r}")

        def write(tx: Tx) -> bool:
            row = one(
                tx,
                "SELECT head, head_len, n_summaries FROM convmem_conversations WHERE id = ?"
                + self.lock_row,
                (conversation_id,),
            )
            if row is None:
                return False
            head, count = Head(int(row[0]), int(row[1])), int(row[2])
            if count != expected_summaries:
                return False  # another summariser got there first
            if summary.first < 0 or summary.through > head.turn_id:
                return False  # covers turns that do not exist
            if (
                expected_head is not None
                and summary.through >= expected_head.turn_id
                and head != expected_head
            ):
                return False  # the newest covered turn changed since the summariser read it
            tx.run(
                "INSERT INTO convmem_summaries (conversation_id, seq, text, covers, first_turn, "
                "through_turn, created_at, model, prompt_tokens, completion_tokens) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    conversation_id,
                    count,
                    summary.text,
                    dumps(list(summary.covers)),
                    summary.first,
                    summary.through,
                    summary.created_at,
                    summary.model,
                    summary.prompt_tokens,
                    summary.completion_tokens,
                ),
            )
            tx.run(
                "UPDATE convmem_conversations SET n_summaries = ?, updated_at = ? WHERE id = ?",
                (count + 1, now(), conversation_id),
            )
            return True

        return self._transact(write)

    def delete(self, conversation_id: str) -> bool:
        check_id(conversation_id)

        def write(tx: Tx) -> bool:
            for table in ("convmem_messages", "convmem_summaries", "convmem_commits"):
                tx.run(f"DELETE FROM {table} WHERE conversation_id = ?", (conversation_id,))
            return tx.run("DELETE FROM convmem_conversations WHERE id = ?", (conversation_id,)) > 0

        return self._transact(write)

    def fork(
        self, conversation_id: str, *, at_turn: int | None = None, new_id: str | None = None
    ) -> str:
        check_id(conversation_id)
        target = new_fork_id(conversation_id) if new_id is None else check_id(new_id, "new_id")
        if at_turn is not None and (not isinstance(at_turn, int) or at_turn < -1):
            raise UsageError(f"at_turn must be a turn id (or -1 for none), got {at_turn!r}")

        def write(tx: Tx) -> str:
            head = _head(tx, conversation_id, lock=self.lock_row)
            if head is None:
                raise UsageError(f"no conversation {conversation_id!r} to fork")
            at = head if at_turn is None else at_turn
            if isinstance(at, int):
                if at > head.turn_id:
                    raise UsageError(
                        f"conversation {conversation_id!r} has no turn {at} (head is {head})"
                    )
                at = (
                    head
                    if at == head.turn_id
                    else Head(at, self._turn_length(tx, conversation_id, at))
                )
            self._fork_tx(tx, conversation_id, target, at, now())
            return target

        return self._transact(write)

    def _turn_length(self, tx: Tx, cid: str, turn_id: int) -> int:
        row = one(
            tx,
            "SELECT COUNT(*) FROM convmem_messages WHERE conversation_id = ? AND turn_id = ?",
            (cid, turn_id),
        )
        return int(row[0]) if row else 0

    def _fork_tx(self, tx: Tx, src: str, dst: str, at: Head, t: float) -> None:
        if one(tx, "SELECT 1 FROM convmem_conversations WHERE id = ?", (dst,)) is not None:
            raise UsageError(f"conversation {dst!r} already exists")
        tx.run(
            "INSERT INTO convmem_conversations (id, title, model, context_window, system, head, "
            "head_len, head_open, n_summaries, tokens, usage, state, forked_from, forked_at, "
            "created_at, updated_at) SELECT ?, title, model, context_window, system, ?, ?, ?, 0, "
            "tokens, usage, state, ?, ?, ?, ? FROM convmem_conversations WHERE id = ?",
            (
                dst,
                at.turn_id,
                at.length if at.turn_id >= 0 else 0,
                dumps(
                    open_tool_call_ids(self._turn_messages(tx, src, at)) if at.turn_id >= 0 else []
                ),
                src,
                at.turn_id,
                t,
                t,
                src,
            ),
        )
        tx.run(
            "INSERT INTO convmem_messages (conversation_id, turn_id, pos, created_at, message, "
            "text, role) SELECT ?, turn_id, pos, created_at, message, text, role "
            "FROM convmem_messages WHERE conversation_id = ? "
            "AND (turn_id < ? OR (turn_id = ? AND pos < ?))",
            (dst, src, at.turn_id, at.turn_id, at.length),
        )
        # A summary goes along when every turn it covers went along whole.
        whole = (
            at.turn_id
            if at.turn_id < 0 or self._turn_length(tx, src, at.turn_id) <= at.length
            else at.turn_id - 1
        )
        rows = tx.rows(
            "SELECT text, covers, first_turn, through_turn, created_at, model, prompt_tokens, "
            "completion_tokens FROM convmem_summaries WHERE conversation_id = ? "
            "AND seq < (SELECT n_summaries FROM convmem_conversations WHERE id = ?) ORDER BY seq",
            (src, src),
        )
        kept = [r for r in rows if int(r[3]) <= whole]
        tx.many(
            "INSERT INTO convmem_summaries (conversation_id, seq, text, covers, first_turn, "
            "through_turn, created_at, model, prompt_tokens, completion_tokens) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            [(dst, seq, *r) for seq, r in enumerate(kept)],
        )
        tx.run("UPDATE convmem_conversations SET n_summaries = ? WHERE id = ?", (len(kept), dst))


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


def _group(rows: Sequence[Row], cid: str) -> list[Turn]:
    turns: list[Turn] = []
    current_id: int | None = None
    bucket: list[Message] = []
    created = 0.0
    for turn_id, created_at, raw in rows:
        if turn_id != current_id:
            if current_id is not None:
                turns.append(Turn(id=current_id, messages=tuple(bucket), created_at=created))
            current_id, bucket, created = int(turn_id), [], float(created_at)
        bucket.append(check_message_for_read(raw, cid, int(turn_id)))
    if current_id is not None:
        turns.append(Turn(id=current_id, messages=tuple(bucket), created_at=created))
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


def iter_chunks(items: Sequence[T], size: int) -> Iterator[Sequence[T]]:
    for i in range(0, len(items), size):
        yield items[i : i + size]
