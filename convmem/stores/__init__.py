"""Durable conversations: a store of whole turns.

::

    from convmem.stores import SQLiteStore, PostgresStore
    store = SQLiteStore("chats.db")        # the default: stdlib sqlite3, one file, no server
    conv = Conversation(client, model="gpt-4o-mini", store=store, conversation_id="alice-1")
    store.list()                            # id, title, model, turns, tokens, updated
    store.search("tea")                     # keyword search (SQLite FTS5 / PostgreSQL full text)
    store.fork("alice-1", at_turn=12, new_id="alice-1b"); store.delete("alice-1")

A turn is written in one transaction after the call that produced it succeeded; every write
says which head it was built on, and a conflict follows the ``on_conflict`` policy
(``"append"``, ``"raise"`` or ``"fork"``). :class:`Store` is the protocol a store of your own
implements. ``PostgresStore`` needs ``pip install 'convmem[postgres]'`` (psycopg 3 and its pool),
imported only when it is used.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ..errors import ConflictError
from .base import (
    CONFLICT_POLICIES,
    Commit,
    ConflictPolicy,
    ConversationInfo,
    Head,
    SearchHit,
    Store,
    StoredConversation,
)
from .sqlite import SQLiteStore

if TYPE_CHECKING:
    from .postgres import PostgresStore

__all__ = [
    "CONFLICT_POLICIES",
    "Commit",
    "ConflictError",
    "ConflictPolicy",
    "ConversationInfo",
    "Head",
    "PostgresStore",
    "SQLiteStore",
    "SearchHit",
    "Store",
    "StoredConversation",
]


def __getattr__(name: str) -> Any:
    if name == "PostgresStore":
        from .postgres import PostgresStore

        return PostgresStore
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
