"""Writes of the shared SQL store: whole turns, summaries, forks, deletes (one transaction each).

Each write first locks its conversation's row (``BEGIN IMMEDIATE`` in SQLite, ``SELECT ... FOR
UPDATE`` in PostgreSQL), then checks the idempotency key and the expected head, then inserts.
"""

from __future__ import annotations

import builtins
import json
from collections.abc import Mapping, Sequence
from typing import Any

from ..errors import ConflictError, InvalidMessageError, UsageError
from ..history import Summary, Turn
from ..messages import Message, open_tool_call_ids
from ._sql import Row as Row
from ._sql import (
    SQLReads,
    Tx,
    _contains,
    _ensure,
    _group,
    _head,
    _system_json,
    one,
)
from .base import (
    EMPTY,
    Commit,
    ConflictPolicy,
    Head,
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
    searchable_text,
    title_of,
)


class SQLStore(SQLReads):
    """The shared implementation; subclasses supply transactions, migrations and search."""

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
