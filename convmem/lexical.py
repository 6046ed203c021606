"""A keyword (BM25) index of conversation messages, in SQLite FTS5, isolated per conversation.

:class:`LexicalIndex` is the lexical half of :class:`~convmem.strategies.VectorRecall`'s hybrid
retrieval (the dense half is :class:`~convmem.store.TurnStore`). It is SQLite's FTS5 full-text
index (stdlib ``sqlite3``, no extra dependency) with the Porter stemmer, ranked by FTS5's
built-in BM25:

- **Incremental**: a unit is indexed once when its turn is stored; nothing is rebuilt.
  (``bm25s``, the other candidate measured, rebuilds its index to add a document.)
- **Durable**: on a file (next to a persistent Chroma directory by default) it survives
  restarts; in memory otherwise.
- **Isolated per conversation**: each row carries a token derived from its conversation id in
  a column of its own, and every query requires it (``conv : "<token>" AND (...)``), so a query
  only ever ranks and returns its own conversation's units, however many share the index.

A unit is one message of a turn (``part`` is its index in the turn), indexed with the text of
its neighbours; see :mod:`convmem.strategies.recall`. Index and query text go through the same
tokenizer (``porter unicode61``); query words are quoted, so no user text is parsed as FTS5
syntax::

    index = LexicalIndex()                 # in memory; LexicalIndex("lex.sqlite3") persists
    index.add([LexicalUnit("conv-1", 3, 0, "I adopted a puppy called Biscuit", 0.0)])
    index.search("conv-1", "what is my dog called?", k=10)
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import sqlite3
import threading
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from .errors import UsageError

SCHEMA_VERSION = 1

#: English function words left out of queries: they match most units and carry no topic.
STOPWORDS: frozenset[str] = frozenset(
    [
        "a",
        "about",
        "above",
        "after",
        "again",
        "against",
        "all",
        "am",
        "an",
        "and",
        "any",
        "are",
        "aren",
        "as",
        "at",
        "be",
        "because",
        "been",
        "before",
        "being",
        "below",
        "between",
        "both",
        "but",
        "by",
        "can",
        "cannot",
        "could",
        "couldn",
        "did",
        "didn",
        "do",
        "does",
        "doesn",
        "doing",
        "don",
        "down",
        "during",
        "each",
        "few",
        "for",
        "from",
        "further",
        "had",
        "hadn",
        "has",
        "hasn",
        "have",
        "haven",
        "having",
        "he",
        "her",
        "here",
        "hers",
        "herself",
        "him",
        "himself",
        "his",
        "how",
        "i",
        "if",
        "in",
        "into",
        "is",
        "isn",
        "it",
        "its",
        "itself",
        "just",
        "let",
        "me",
        "more",
        "most",
        "my",
        "myself",
        "no",
        "nor",
        "not",
        "now",
        "of",
        "off",
        "on",
        "once",
        "only",
        "or",
        "other",
        "ought",
        "our",
        "ours",
        "ourselves",
        "out",
        "over",
        "own",
        "same",
        "shan",
        "she",
        "should",
        "shouldn",
        "so",
        "some",
        "such",
        "than",
        "that",
        "the",
        "their",
        "theirs",
        "them",
        "themselves",
        "then",
        "there",
        "these",
        "they",
        "this",
        "those",
        "through",
        "to",
        "too",
        "under",
        "until",
        "up",
        "very",
        "was",
        "wasn",
        "we",
        "were",
        "weren",
        "what",
        "when",
        "where",
        "which",
        "while",
        "who",
        "whom",
        "why",
        "will",
        "with",
        "won",
        "would",
        "wouldn",
        "you",
        "your",
        "yours",
        "yourself",
        "yourselves",
        "s",
        "t",
        "ll",
        "re",
        "ve",
        "d",
        "m",
        "o",
        "y",
        "also",
        "get",
        "got",
        "like",
        "really",
        "yeah",
        "oh",
        "ok",
        "okay",
        "well",
        "much",
        "many",
        "thing",
        "things",
        "tell",
        "told",
        "say",
        "said",
        "know",
        "think",
        "one",
        "ever",
    ]
)

_WORD = re.compile(r"[^\W_]+", re.UNICODE)


def query_terms(text: str) -> list[str]:
    """The words of ``text`` a keyword query uses: lowercased, stopwords removed, deduplicated.

    Args:
        text: Any text.

    Returns:
        Words in order of first appearance.
    """
    seen: dict[str, None] = {}
    for word in _WORD.findall(text.lower()):
        if word in STOPWORDS or (len(word) == 1 and not word.isdigit()):
            continue
        seen.setdefault(word, None)
    return list(seen)


@dataclass(frozen=True)
class LexicalUnit:
    """One indexed unit.

    Attributes:
        conversation_id: The conversation it belongs to; searches never cross it.
        turn_id: The turn.
        part: The message's index in the turn.
        text: What is indexed (the message and its neighbours).
        created_at: The turn's time (seconds since the epoch).
    """

    conversation_id: str
    turn_id: int
    part: int
    text: str
    created_at: float


@dataclass(frozen=True)
class LexicalHit:
    """A unit found by :meth:`LexicalIndex.search`; ``score`` is BM25, higher is better."""

    turn_id: int
    part: int
    score: float


def _conv_token(conversation_id: str) -> str:
    # One opaque token per conversation: the tokenizer would split "alice-1" into two words
    # that other ids share. 20 hex digits: collisions need ~10^12 conversations.
    return "c" + hashlib.sha256(conversation_id.encode("utf-8")).hexdigest()[:20]


#: How long a conversation's unit count is trusted before it is counted again.
SIZE_RECOUNT_SECONDS = 30.0


class LexicalIndex:
    """An FTS5 BM25 index of units, shared by many conversations, each searched alone.

    Thread-safe (one connection behind a lock). Writes are transactions: a batch is indexed
    whole or not at all.

    Args:
        path: A SQLite file (created if missing; WAL mode, so readers in other processes are
            not blocked), or None for a private in-memory index.

    Raises:
        UsageError: This SQLite has no FTS5, or the file holds another schema version.
    """

    def __init__(self, path: str | os.PathLike[str] | None = None) -> None:
        self._path = None if path is None else os.fspath(path)
        self._lock = threading.Lock()
        self._df: dict[str, dict[str, int]] = {}
        self._totals: dict[str, int] = {}
        # conversation -> (units counted, when, units this process added since)
        self._sizes: dict[str, tuple[int, float, int]] = {}
        self._db = sqlite3.connect(
            self._path or ":memory:", check_same_thread=False, isolation_level=None, timeout=30
        )
        try:
            self._init_schema()
        except BaseException:
            self._db.close()
            raise
        self._closed = False

    def _init_schema(self) -> None:
        db = self._db
        if self._path is not None:
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA busy_timeout=30000")
        db.execute("BEGIN IMMEDIATE")
        try:
            db.execute("CREATE TABLE IF NOT EXISTS convmem_lexical_meta (version INTEGER)")
            row = db.execute("SELECT version FROM convmem_lexical_meta").fetchone()
            if row is None:
                try:
                    db.execute(
                        "CREATE VIRTUAL TABLE units USING fts5("
                        "conv, body, turn_id UNINDEXED, part UNINDEXED, created_at UNINDEXED, "
                        "tokenize = 'porter unicode61 remove_diacritics 2')"
                    )
                except sqlite3.OperationalError as exc:
                    raise UsageError(
                        f"this Python's SQLite ({sqlite3.sqlite_version}) has no FTS5, which "
                        "keyword recall needs"
                    ) from exc
                # The conversation column only filters: it must not move any score.
                db.execute("INSERT INTO units(units, rank) VALUES ('rank', 'bm25(0.0, 1.0)')")
                db.execute(
                    "CREATE TABLE keys (conv TEXT, turn_id INTEGER, part INTEGER, "
                    "rid INTEGER, PRIMARY KEY (conv, turn_id, part)) WITHOUT ROWID"
                )
                db.execute("INSERT INTO convmem_lexical_meta VALUES (?)", (SCHEMA_VERSION,))
            elif row[0] != SCHEMA_VERSION:
                raise UsageError(
                    f"{self._path!r} holds a keyword index of schema version {row[0]}; this "
                    f"convmem reads version {SCHEMA_VERSION} (delete the file: it is rebuilt "
                    "from the vector store)"
                )
            db.execute("COMMIT")
        except BaseException:
            with contextlib.suppress(sqlite3.Error):
                db.execute("ROLLBACK")
            raise

    @property
    def path(self) -> str | None:
        """The SQLite file, or None in memory."""
        return self._path

    def add(self, units: Sequence[LexicalUnit]) -> None:
        """Indexes units, replacing any stored under the same (conversation, turn, part).

        Raises:
            UsageError: A unit is malformed, or the index is closed.
        """
        for i, unit in enumerate(units):
            if not isinstance(unit, LexicalUnit):
                raise UsageError(f"units[{i}] is {type(unit).__name__}, not LexicalUnit")
            if not isinstance(unit.conversation_id, str) or not unit.conversation_id:
                raise UsageError(f"units[{i}].conversation_id must be a non-empty str")
        with self._lock:
            self._check_open()
            db = self._db
            db.execute("BEGIN IMMEDIATE")
            try:
                for unit in units:
                    conv = unit.conversation_id
                    old = db.execute(
                        "SELECT rid FROM keys WHERE conv = ? AND turn_id = ? AND part = ?",
                        (conv, unit.turn_id, unit.part),
                    ).fetchone()
                    if old is not None:
                        db.execute("DELETE FROM units WHERE rowid = ?", (old[0],))
                    cur = db.execute(
                        "INSERT INTO units (conv, body, turn_id, part, created_at) "
                        "VALUES (?, ?, ?, ?, ?)",
                        (_conv_token(conv), unit.text, unit.turn_id, unit.part, unit.created_at),
                    )
                    db.execute(
                        "INSERT OR REPLACE INTO keys VALUES (?, ?, ?, ?)",
                        (conv, unit.turn_id, unit.part, cur.lastrowid),
                    )
                    known = self._sizes.get(conv)
                    if known is not None and old is None:
                        self._sizes[conv] = (known[0], known[1], known[2] + 1)
                db.execute("COMMIT")
            except BaseException:
                with contextlib.suppress(sqlite3.Error):
                    db.execute("ROLLBACK")
                raise

    def search(self, conversation_id: str, query: str, *, k: int = 50) -> list[LexicalHit]:
        """The conversation's units best matching the query's words (any of them), by BM25.

        Args:
            conversation_id: Whose units to search.
            query: Free text; stopwords are dropped (see :func:`query_terms`).
            k: At most this many hits.

        Returns:
            Hits, best first; empty when the query has no content word.
        """
        terms = query_terms(query)
        if not terms:
            return []
        return self.search_terms(conversation_id, terms, k=k)

    def search_terms(
        self, conversation_id: str, terms: Iterable[str], *, k: int = 50
    ) -> list[LexicalHit]:
        """Like :meth:`search`, with the words given (each matched as a stemmed word)."""
        words = [t.replace('"', "") for t in terms]
        words = [w for w in words if w.strip()]
        if not words:
            return []
        match = (
            f'conv : "{_conv_token(conversation_id)}" AND ('
            + " OR ".join(f'"{w}"' for w in words)
            + ")"
        )
        with self._lock:
            self._check_open()
            rows = self._db.execute(
                "SELECT turn_id, part, rank FROM units WHERE units MATCH ? ORDER BY rank LIMIT ?",
                (match, int(k)),
            ).fetchall()
        # FTS5's bm25() is negative (lower is better); flip it so higher is better everywhere.
        return [LexicalHit(int(t), int(p), -float(r)) for t, p, r in rows]

    def common_terms(self, conversation_id: str, terms: Sequence[str], share: float) -> set[str]:
        """Of ``terms``, those found in more than ``share`` of the conversation's units."""
        size, counts = self.term_counts(conversation_id, terms)
        return {t for t in terms if size and counts.get(t, 0) > share * size}

    def term_counts(self, conversation_id: str, terms: Sequence[str]) -> tuple[int, dict[str, int]]:
        """The conversation's unit count, and how many of its units hold each term.

        Counts are cached per conversation and refreshed when it has grown by a tenth.
        """
        with self._lock:
            self._check_open()
            total = self._totals.get(conversation_id)
            size = self._size(conversation_id)
            cache = self._df.get(conversation_id)
            if cache is None or total is None or size > total * 1.1 + 10:
                cache = self._df[conversation_id] = {}
                self._totals[conversation_id] = size
            token = _conv_token(conversation_id)
            out: dict[str, int] = {}
            for term in terms:
                word = term.replace('"', "")
                if not word.strip():
                    continue
                df = cache.get(word)
                if df is None:
                    df = cache[word] = int(
                        self._db.execute(
                            "SELECT count(*) FROM units WHERE units MATCH ?",
                            (f'conv : "{token}" AND "{word}"',),
                        ).fetchone()[0]
                    )
                out[term] = df
            return size, out

    def _size(self, conversation_id: str) -> int:
        """The conversation's unit count: counted again when this process has added a tenth
        more since, or after :data:`SIZE_RECOUNT_SECONDS` (other processes write too); counting
        200k units took 10 ms, too much for every query. Callers hold the lock."""
        now = time.monotonic()
        known = self._sizes.get(conversation_id)
        if known is not None:
            counted, at, added = known
            if now - at < SIZE_RECOUNT_SECONDS and added <= counted * 0.1 + 10:
                return counted + added
        counted = int(
            self._db.execute(
                "SELECT count(*) FROM keys WHERE conv = ?", (conversation_id,)
            ).fetchone()[0]
        )
        self._sizes[conversation_id] = (counted, now, 0)
        return counted

    def keys(self, conversation_id: str) -> set[tuple[int, int]]:
        """The (turn id, part) pairs indexed for a conversation."""
        with self._lock:
            self._check_open()
            rows = self._db.execute(
                "SELECT turn_id, part FROM keys WHERE conv = ?", (conversation_id,)
            ).fetchall()
        return {(int(t), int(p)) for t, p in rows}

    def delete_conversation(self, conversation_id: str) -> None:
        """Removes every unit of a conversation (others are untouched)."""
        with self._lock:
            self._check_open()
            db = self._db
            db.execute("BEGIN IMMEDIATE")
            try:
                db.execute(
                    "DELETE FROM units WHERE rowid IN (SELECT rid FROM keys WHERE conv = ?)",
                    (conversation_id,),
                )
                db.execute("DELETE FROM keys WHERE conv = ?", (conversation_id,))
                db.execute("COMMIT")
                self._sizes.pop(conversation_id, None)
                self._df.pop(conversation_id, None)
            except BaseException:
                with contextlib.suppress(sqlite3.Error):
                    db.execute("ROLLBACK")
                raise

    def count(self, conversation_id: str | None = None) -> int:
        """How many units are indexed (for one conversation, or all)."""
        with self._lock:
            self._check_open()
            if conversation_id is None:
                row = self._db.execute("SELECT count(*) FROM keys").fetchone()
            else:
                row = self._db.execute(
                    "SELECT count(*) FROM keys WHERE conv = ?", (conversation_id,)
                ).fetchone()
        return int(row[0])

    def close(self) -> None:
        """Closes the database (idempotent)."""
        with self._lock:
            if not self._closed:
                self._closed = True
                self._db.close()

    def _check_open(self) -> None:
        if self._closed:
            raise UsageError("this LexicalIndex is closed")

    def __repr__(self) -> str:
        return f"LexicalIndex({self._path or ':memory:'!r})"


__all__ = ["STOPWORDS", "LexicalHit", "LexicalIndex", "LexicalUnit", "query_terms"]
