"""Finished conversation turns stored as vectors in Chroma, for vector recall.

A :class:`TurnStore` is one Chroma collection shared by any number of conversations. Each
stored turn carries its ``conversation_id``, and every query filters on it, so a conversation
only ever recalls its own turns, however many others share the collection.

convmem always passes explicit embeddings (see :mod:`convmem.embed`): the collection is
created without an embedding function, because Chroma's default one downloads a model.
Similarity is cosine; a :class:`RecallHit`'s ``score`` is the cosine similarity
(``1 - cosine distance``), higher is closer::

    store = TurnStore()  # private, in memory; TurnStore("path/to/dir") persists
    store.add([StoredTurn("conv-1", 0, "I live in Lyon", time.time())], embed(["I live in Lyon"]))
    hits = store.query("conv-1", embed(["where do I live?"])[0], k=4)

``chromadb`` is imported only when a store is created. Opening Chroma clients (and the lock on
a persistent directory) is :mod:`convmem.chroma`; the in-memory exact search of one
conversation's vectors, and :class:`RecallHit`, are :mod:`convmem.vector_index`.
"""

from __future__ import annotations

import functools
import math
import os
import re
import threading
import uuid
import weakref
from collections.abc import Callable, Iterable, Sequence
from typing import TYPE_CHECKING, Any, TypeVar, cast

from .chroma import (
    DirectoryLock,
    ephemeral_admin,
    ephemeral_client,
    get_all,
    import_chromadb,
    is_http,
    open_client,
    persist_directory,
    release,
)
from .errors import UsageError
from .vector_index import ConversationIndex, RecallHit, StoredTurn, vector

if TYPE_CHECKING:
    from .lexical import LexicalHit, LexicalIndex, LexicalUnit

DEFAULT_COLLECTION = "convmem_turns"
"""The collection a :class:`TurnStore` uses unless told otherwise."""

# Chroma 1.x's rule for collection names; checked here so the error names convmem's argument.
_COLLECTION_NAME = re.compile(r"^[a-zA-Z0-9](?:[a-zA-Z0-9._-]{1,510})[a-zA-Z0-9]$")
# Chroma refuses larger upserts (5461 rows on a local 1.5 client); used when a client can't say.
_FALLBACK_MAX_BATCH = 5000


_F = TypeVar("_F", bound=Callable[..., Any])

#: How long :meth:`TurnStore.close` waits for calls under way in other threads.
CLOSE_WAIT_SECONDS = 30.0


def _in_use(method: _F) -> _F:
    """Counts the call as under way, so :meth:`TurnStore.close` waits for it to finish."""

    @functools.wraps(method)
    def wrapper(self: TurnStore, *args: Any, **kwargs: Any) -> Any:
        with self._idle:
            if self._closed:
                raise UsageError("this TurnStore is closed")
            self._busy += 1
        try:
            return method(self, *args, **kwargs)
        finally:
            with self._idle:
                self._busy -= 1
                if self._busy == 0:
                    self._idle.notify_all()

    return cast(_F, wrapper)


class TurnStore:
    """Stores turns with their embeddings in a Chroma collection and queries them.

    Thread-safe as far as the Chroma client is (the local and HTTP clients are).

    Args:
        client: Where to store:

            * ``None``: a new private in-memory store (Chroma shares one in-memory system per
              process, so this store gets its own database in it, dropped on :meth:`close`
              or when the store is garbage-collected).
            * a ``str`` or path: a ``chromadb.PersistentClient`` on that directory.
            * a Chroma client (``EphemeralClient``, ``PersistentClient``, ``HttpClient``):
              used as is, and left open by :meth:`close`.

            Clients convmem creates use Chroma's default settings, so a client the user
            opens in the same process (before or after) shares the same in-memory system.
        collection: The collection name (3-512 characters from ``[a-zA-Z0-9._-]``,
            starting and ending with a letter or digit). Created with cosine distance and no
            embedding function if missing.
        cache: Keep each queried conversation's vectors in memory and search them exactly
            with numpy. Chroma's per-conversation ``where`` filter costs tens of milliseconds
            on a conversation of 10k turns; the in-memory search takes about one. The cache
            is loaded from Chroma on a conversation's first query and kept up to date by
            :meth:`add` and :meth:`delete_conversation`, so it assumes this store is the only
            writer of the conversations it queries (the usual case: a conversation lives in
            one process). ``None`` (default): on, except for a ``chromadb.HttpClient``, whose
            server other processes may write to (there every query asks the server, and the
            keyword index picks up the units other processes stored).
        lexical: The keyword index kept next to the vectors (see :mod:`convmem.lexical`):
            ``None`` (default) puts it in a SQLite file in the Chroma directory when the
            client is persistent (``convmem_lexical_<collection>.sqlite3``) and in memory
            otherwise (rebuilt from the stored documents when a conversation is first
            searched); a path puts it there; ``False`` keeps none.

    An embedded ``chromadb.PersistentClient`` belongs to one process: Chroma's embedded
    store does not coordinate writers across processes (two writer processes lost vectors in
    a measurement). A store on a persistent directory therefore takes an exclusive lock on
    ``<directory>/convmem.lock``; a second process gets a :class:`UsageError` saying so at
    once, never a silent loss. For several processes, run a Chroma server (``chroma run
    --path DIR``) and pass ``chromadb.HttpClient(host, port)`` with ``cache=False``.

    Raises:
        MissingExtraError: ``chromadb`` is not installed.
        UsageError: The collection name is invalid, ``client`` is not a Chroma client, the
            collection exists with a distance other than cosine, or another process has the
            persistent directory open.
    """

    def __init__(
        self,
        client: Any = None,
        *,
        collection: str = DEFAULT_COLLECTION,
        cache: bool | None = None,
        lexical: str | os.PathLike[str] | bool | None = None,
    ) -> None:
        if not isinstance(collection, str) or not _COLLECTION_NAME.match(collection):
            raise UsageError(
                f"invalid collection name {collection!r}: Chroma needs 3-512 characters "
                "from [a-zA-Z0-9._-], starting and ending with a letter or digit"
            )
        chromadb = import_chromadb()
        owned_admin: Any = None
        database: str | None = None
        owns_client = True
        if client is None:
            owned_admin, settings = ephemeral_admin(chromadb)
            database = f"convmem_{uuid.uuid4().hex}"
            owned_admin.create_database(database)
            client = chromadb.EphemeralClient(settings=settings, database=database)
        elif isinstance(client, (str, os.PathLike)):
            client, _ = open_client(chromadb.PersistentClient, chromadb, path=os.fspath(client))
        elif callable(getattr(client, "get_or_create_collection", None)):
            owns_client = False
        else:
            raise UsageError(
                "client must be None, a directory path or a chromadb client, "
                f"got {type(client).__name__}"
            )
        self._client = client
        self._name = collection
        self._cache_enabled = (not is_http(client)) if cache is None else bool(cache)
        self._indexes: dict[str, ConversationIndex] = {}
        self._index_lock = threading.Lock()
        self._lexical: LexicalIndex | None = None
        self._lexical_synced: set[str] = set()
        directory = persist_directory(client)
        lock = None
        try:
            lock = DirectoryLock.acquire(directory) if directory is not None else None
        except BaseException:
            if owns_client:
                release(client, owned_admin, database)
            raise
        self._finalizer = weakref.finalize(
            self, release, client if owns_client else None, owned_admin, database, lock
        )
        self._closed = False
        self._busy = 0  # calls under way: close() waits for them
        self._idle = threading.Condition()
        try:
            if lexical is not False:
                from .lexical import LexicalIndex

                where: str | None = None
                if lexical is None or lexical is True:
                    if directory is not None:
                        where = os.path.join(directory, f"convmem_lexical_{collection}.sqlite3")
                else:
                    where = os.fspath(lexical)
                self._lexical = LexicalIndex(where)
                self._finalizer.detach()
                self._finalizer = weakref.finalize(
                    self,
                    release,
                    client if owns_client else None,
                    owned_admin,
                    database,
                    lock,
                    self._lexical,
                )
            self._collection = client.get_or_create_collection(
                collection,
                configuration={"hnsw": {"space": "cosine"}},
                embedding_function=None,
            )
            self._check_space()
        except BaseException:
            self.close()
            raise
        batch = getattr(client, "get_max_batch_size", None)
        self._max_batch = int(batch()) if callable(batch) else _FALLBACK_MAX_BATCH

    def _check_space(self) -> None:
        # get_or_create_collection returns an existing collection as it is, whatever
        # configuration we passed; scores are only cosine similarities if its space is cosine.
        space: Any = None
        config = getattr(self._collection, "configuration", None) or {}
        for index in ("hnsw", "spann"):
            section = config.get(index) if hasattr(config, "get") else None
            if section and section.get("space"):
                space = section["space"]
                break
        if space is None:
            space = (self._collection.metadata or {}).get("hnsw:space")
        if space is not None and str(space) != "cosine":
            raise UsageError(
                f"collection {self._name!r} already exists with distance {space!r}; "
                "convmem needs cosine: use another collection name"
            )

    @property
    def client(self) -> Any:
        """The Chroma client."""
        return self._client

    @property
    def collection(self) -> Any:
        """The Chroma collection (for inspection; write through the store)."""
        return self._collection

    @property
    def name(self) -> str:
        """The collection name."""
        return self._name

    @_in_use
    def add(self, turns: Sequence[StoredTurn], embeddings: Sequence[Sequence[float]]) -> None:
        """Stores turns with their embeddings, replacing any stored under the same ids.

        A turn's id is ``(conversation_id, turn_id)``, so adding the same turn again is a
        no-op, and adding a changed one replaces it. Within one call the last of duplicate
        ids wins.

        Args:
            turns: The turns.
            embeddings: One vector per turn, in the same order, all of the collection's
                dimension.

        Raises:
            UsageError: Counts differ, a turn is malformed, or Chroma refused the vectors
                (e.g. a dimension different from the ones already stored).
        """
        self._check_open()
        if len(turns) != len(embeddings):
            raise UsageError(f"{len(turns)} turns but {len(embeddings)} embeddings")
        rows: dict[str, tuple[StoredTurn, Sequence[float]]] = {}
        for i, turn in enumerate(turns):
            if not isinstance(turn, StoredTurn):
                raise UsageError(f"turns[{i}] is {type(turn).__name__}, not StoredTurn")
            _check_conversation_id(turn.conversation_id)
            if isinstance(turn.turn_id, bool) or not isinstance(turn.turn_id, int):
                raise UsageError(f"turns[{i}].turn_id must be an int, got {turn.turn_id!r}")
            if not isinstance(turn.text, str):
                raise UsageError(f"turns[{i}].text must be a str")
            if isinstance(turn.part, bool) or not isinstance(turn.part, int) or turn.part < 0:
                raise UsageError(f"turns[{i}].part must be an int >= 0, got {turn.part!r}")
            rows[_turn_key(turn.conversation_id, turn.turn_id, turn.part)] = (
                turn,
                embeddings[i],
            )
        items = list(rows.items())
        for start in range(0, len(items), self._max_batch):
            chunk = items[start : start + self._max_batch]
            self._call(
                self._collection.upsert,
                ids=[key for key, _ in chunk],
                embeddings=[vector(vec) for _, (_, vec) in chunk],
                metadatas=[
                    {
                        "conversation_id": turn.conversation_id,
                        "turn_id": turn.turn_id,
                        "part": turn.part,
                        "created_at": float(turn.created_at),
                    }
                    for _, (turn, _) in chunk
                ],
                documents=[turn.text for _, (turn, _) in chunk],
            )
        # The vectors are the truth; the keyword index follows them (and is topped up from
        # them if this write is lost, see keyword_search).
        if self._lexical is not None:
            self._lexical.add([_lexical_unit(turn) for turn, _ in rows.values()])
        with self._index_lock:
            for turn, vec in rows.values():
                index = self._indexes.get(turn.conversation_id)
                if index is not None:
                    index.upsert(turn.turn_id, turn.part, turn.text, float(turn.created_at), vec)

    @_in_use
    def query(
        self,
        conversation_id: str,
        embedding: Sequence[float],
        *,
        k: int = 8,
        min_score: float | None = None,
        exclude_turn_ids: Iterable[int] = (),
    ) -> list[RecallHit]:
        """Finds a conversation's stored turns closest to ``embedding``.

        Only turns of ``conversation_id`` are searched: exactly, in memory, when the store
        caches (the default), else by Chroma with a ``where`` filter. Excluded turns are
        filtered before the top ``k`` are taken, so up to ``k`` hits come back even when the
        best matches are excluded.

        Args:
            conversation_id: Whose turns to search.
            embedding: The query vector.
            k: At most this many hits; fewer when the conversation has fewer turns.
            min_score: Drop hits whose cosine similarity is below this.
            exclude_turn_ids: Turns never to return (e.g. those already in the context); any
                iterable of ids.

        Returns:
            Hits, best first (ties by ascending ``turn_id``).

        Raises:
            UsageError: ``k`` is not a positive int, ``min_score`` is not a number, or Chroma
                refused the vector (e.g. wrong dimension).
        """
        self._check_open()
        _check_conversation_id(conversation_id)
        if isinstance(k, bool) or not isinstance(k, int) or k < 1:
            raise UsageError(f"k must be a positive int, got {k!r}")
        if min_score is not None and (
            isinstance(min_score, bool)
            or not isinstance(min_score, (int, float))
            or math.isnan(min_score)
        ):
            raise UsageError(f"min_score must be a number or None, got {min_score!r}")
        excluded = sorted({int(t) for t in exclude_turn_ids})
        if self._cache_enabled:
            return self._index(conversation_id).search(
                conversation_id, vector(embedding), k=k, min_score=min_score, excluded=excluded
            )
        where: dict[str, Any] = {"conversation_id": conversation_id}
        if excluded:
            where = {"$and": [where, {"turn_id": {"$nin": excluded}}]}
        # Chroma 1.x returns fewer than n_results, without a warning, when the filter matches
        # fewer rows (0.4.x warned); an empty result is [[]].
        result = self._call(
            self._collection.query,
            query_embeddings=[vector(embedding)],
            n_results=k,
            where=where,
            include=["documents", "metadatas", "distances"],
        )
        hits = [
            RecallHit(
                conversation_id=str(meta["conversation_id"]),
                turn_id=int(meta["turn_id"]),
                text=doc if doc is not None else "",
                created_at=float(meta.get("created_at") or 0.0),
                # Float error can push 1 - distance a hair outside [-1, 1].
                score=max(-1.0, min(1.0, 1.0 - float(distance))),
                part=int(meta.get("part") or 0),
            )
            for doc, meta, distance in zip(
                (result.get("documents") or [[]])[0],
                (result.get("metadatas") or [[]])[0],
                (result.get("distances") or [[]])[0],
                strict=True,
            )
        ]
        if min_score is not None:
            hits = [hit for hit in hits if hit.score >= min_score]
        hits.sort(key=lambda hit: (-hit.score, hit.turn_id, hit.part))
        return hits

    @_in_use
    def keyword_search(
        self, conversation_id: str, query: str | Sequence[str], *, k: int = 50
    ) -> list[LexicalHit]:
        """Finds a conversation's stored units by keyword (BM25 over the keyword index).

        On a conversation's first search in this process, units stored in Chroma but missing
        from the keyword index (an in-memory index after a restart, a write lost in a crash)
        are indexed from Chroma's documents first.

        Args:
            conversation_id: Whose units to search.
            query: Free text, or the words to match (see :mod:`convmem.lexical`).
            k: At most this many hits.

        Returns:
            Hits, best first; empty when the store keeps no keyword index.
        """
        self._check_open()
        _check_conversation_id(conversation_id)
        lexical = self._lexical
        if lexical is None:
            return []
        if conversation_id not in self._lexical_synced or not self._cache_enabled:
            # Without the cache other processes may write the conversation: pick up their units.
            self._sync_lexical(conversation_id)
        if isinstance(query, str):
            return lexical.search(conversation_id, query, k=k)
        return lexical.search_terms(conversation_id, query, k=k)

    @_in_use
    def keyword_terms(
        self,
        conversation_id: str,
        terms: Sequence[str],
        common_share: float,
        max_matches: int | None = None,
    ) -> list[str]:
        """The ``terms`` worth a keyword search, in order: without those in more than
        ``common_share`` of the conversation's units (speaker names, the standing topic) unless
        none would be left; with ``max_matches``, rarest first while the units they are found
        in add up to at most that many (the rarest always): ranking costs per matching unit."""
        self._check_open()
        lexical = self._lexical
        if lexical is None or not terms:
            return list(terms)
        if conversation_id not in self._lexical_synced:
            self._sync_lexical(conversation_id)
        size, counts = lexical.term_counts(conversation_id, terms)
        kept = [t for t in terms if not (size and counts.get(t, 0) > common_share * size)]
        kept = kept or list(terms)
        if max_matches is None:
            return kept
        chosen: set[str] = set()
        matches = 0
        for term in sorted(kept, key=lambda t: counts.get(t, 0)):
            df = counts.get(term, 0)
            if chosen and matches + df > max_matches:
                break
            chosen.add(term)
            matches += df
        return [t for t in kept if t in chosen]

    @property
    def lexical(self) -> LexicalIndex | None:
        """The keyword index, or None."""
        return self._lexical

    def _sync_lexical(self, conversation_id: str) -> None:
        lexical = self._lexical
        assert lexical is not None
        have = lexical.keys(conversation_id)
        if self._cache_enabled:
            index = self._index(conversation_id)
            missing = [
                StoredTurn(conversation_id, t, index.texts[row], index.created[row], p)
                for (t, p), row in index.row_of.items()
                if (t, p) not in have
            ]
        else:
            where = {"conversation_id": conversation_id}
            listed = get_all(self._collection, where=where, include=["metadatas"])
            ids = [
                key
                for key, meta in zip(
                    listed.get("ids") or [], listed.get("metadatas") or [], strict=True
                )
                if (int(meta["turn_id"]), int(meta.get("part") or 0)) not in have
            ]
            missing = []
            if ids:
                result = get_all(self._collection, ids=ids, include=["documents", "metadatas"])
                missing = [
                    StoredTurn(
                        conversation_id,
                        int(meta["turn_id"]),
                        doc or "",
                        float(meta.get("created_at") or 0.0),
                        int(meta.get("part") or 0),
                    )
                    for doc, meta in zip(
                        result.get("documents") or [], result.get("metadatas") or [], strict=True
                    )
                ]
        if missing:
            lexical.add([_lexical_unit(t) for t in missing])
        self._lexical_synced.add(conversation_id)

    @_in_use
    def stored_keys(self, conversation_id: str) -> set[tuple[int, int]]:
        """The ``(turn_id, part)`` units stored for a conversation (from Chroma, the truth).

        Args:
            conversation_id: The conversation.
        """
        self._check_open()
        _check_conversation_id(conversation_id)
        where = {"conversation_id": conversation_id}
        result = get_all(self._collection, where=where, include=["metadatas"])
        return {
            (int(meta["turn_id"]), int(meta.get("part") or 0))
            for meta in result.get("metadatas") or []
        }

    @_in_use
    def stored_turn_ids(self, conversation_id: str) -> set[int]:
        """The turn ids stored for a conversation.

        Args:
            conversation_id: The conversation.

        Returns:
            Its stored turn ids (empty if none).
        """
        self._check_open()
        _check_conversation_id(conversation_id)
        where = {"conversation_id": conversation_id}
        result = get_all(self._collection, where=where, include=["metadatas"])
        return {int(meta["turn_id"]) for meta in result.get("metadatas") or []}

    @_in_use
    def delete_conversation(self, conversation_id: str) -> None:
        """Deletes every stored turn of a conversation (others are untouched).

        Args:
            conversation_id: The conversation.
        """
        self._check_open()
        _check_conversation_id(conversation_id)
        self._collection.delete(where={"conversation_id": conversation_id})
        if self._lexical is not None:
            self._lexical.delete_conversation(conversation_id)
        with self._index_lock:
            self._indexes.pop(conversation_id, None)

    @_in_use
    def count(self, conversation_id: str | None = None) -> int:
        """How many units are stored (turns, when each turn is stored as one unit).

        Args:
            conversation_id: Count only this conversation's units; ``None`` counts all.

        Returns:
            The number of stored units.
        """
        self._check_open()
        if conversation_id is None:
            return int(self._collection.count())
        _check_conversation_id(conversation_id)
        result = get_all(self._collection, where={"conversation_id": conversation_id}, include=[])
        return len(result["ids"])

    def close(self) -> None:
        """Releases what the store opened: drops a private in-memory database, closes a client
        it created from a path. A client passed in is left open. Idempotent; the store cannot
        be used afterwards."""
        with self._idle:
            self._closed = True
            # A call under way (a background store job) finishes before the indexes close,
            # rather than failing half-way with "this LexicalIndex is closed".
            self._idle.wait_for(lambda: self._busy == 0, timeout=CLOSE_WAIT_SECONDS)
        self._finalizer()

    def __enter__(self) -> TurnStore:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"TurnStore(collection={self._name!r}, client={type(self._client).__name__})"

    def _index(self, conversation_id: str) -> ConversationIndex:
        """The conversation's in-memory index, loaded from Chroma on first use."""
        with self._index_lock:
            index = self._indexes.get(conversation_id)
            if index is None:
                result = get_all(
                    self._collection,
                    where={"conversation_id": conversation_id},
                    include=["embeddings", "documents", "metadatas"],
                )
                index = ConversationIndex()
                embeddings = result.get("embeddings")
                if embeddings is None:
                    embeddings = []
                for doc, meta, vec in zip(
                    result.get("documents") or [],
                    result.get("metadatas") or [],
                    embeddings,
                    strict=True,
                ):
                    index.upsert(
                        int(meta["turn_id"]),
                        int(meta.get("part") or 0),
                        doc if doc is not None else "",
                        float(meta.get("created_at") or 0.0),
                        vec,
                    )
                self._indexes[conversation_id] = index
            return index

    def _check_open(self) -> None:
        if self._closed:
            raise UsageError("this TurnStore is closed")

    def _call(self, method: Callable[..., Any], **kwargs: Any) -> Any:
        # Chroma reports bad vectors (wrong dimension, NaN) as InvalidArgumentError; they are
        # the caller's mistake, so they surface as UsageError with Chroma's message.
        errors = import_chromadb().errors
        try:
            return method(**kwargs)
        except errors.InvalidArgumentError as exc:
            raise UsageError(f"Chroma refused the request on {self._name!r}: {exc}") from exc


def _turn_key(conversation_id: str, turn_id: int, part: int = 0) -> str:
    return f"{conversation_id}:{turn_id}:{part}"


def _lexical_unit(turn: StoredTurn) -> LexicalUnit:
    from .lexical import LexicalUnit

    return LexicalUnit(
        turn.conversation_id, turn.turn_id, turn.part, turn.text, float(turn.created_at)
    )


def _check_conversation_id(conversation_id: Any) -> None:
    if not isinstance(conversation_id, str) or not conversation_id:
        raise UsageError(f"conversation_id must be a non-empty str, got {conversation_id!r}")


__all__ = ["DEFAULT_COLLECTION", "RecallHit", "StoredTurn", "TurnStore", "ephemeral_client"]
