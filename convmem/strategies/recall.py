"""VectorRecall: bring back the past messages that matter to the new one (hybrid retrieval).

Every finished turn is stored as *units*, one per message, each indexed with the text of its
neighbours (the message before and after it): as a vector in Chroma (dense) and in a keyword
index (BM25, :mod:`convmem.lexical`). Before a call, the new user message is looked up in both;
the two rankings are fused by reciprocal rank (each list gives ``1 / (RRF_K + rank)``), units
from a time the message mentions ("last May", "two weeks ago", "on 8 May, 2023") get a bonus
(:mod:`convmem.dates`, using the turns' stored times), and the best units are sent with their
neighbours as windows: overlapping windows merge, a tool call travels with its results, and the
windows are quoted in date order under time headers in one "earlier in this conversation"
section. When a recalled message has a later mention of the same thing (a correction, an
update), the later one comes along.

How much of the budget recall gets is a policy, :func:`default_recall_budget`: when the history
no longer fits, recall gets most of it and a small block of the newest turns stays for
short-term coherence. The plan's notes say what the policy decided.

This module holds the strategy (storing units, the recall job, choosing what fits); ranking is
:mod:`~convmem.strategies.recall_fusion`, units and the quoted section
:mod:`~convmem.strategies.recall_units`, the split policy
:mod:`~convmem.strategies.recall_budget`. Their public names are importable from here too.
"""

from __future__ import annotations

import dataclasses
import itertools
import threading
import time
import warnings
import weakref
from collections import OrderedDict
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Literal

from .. import _check
from ..errors import UsageError
from ..history import History, Turn
from ..messages import Message
from ..plan import ContextPlan
from ..quoting import data_section
from ..strategy import ContextRequest, Job, LocalJob
from ..workers import query_pool
from .compose import Composition, compose
from .recall_budget import (
    DEFAULT_RECENT_SHARE,
    DEFAULT_RECENT_TURNS,
    SplitPolicy,
    default_recall_budget,
    recall_reserve,
)
from .recall_fusion import (
    COMMON_TERM_SHARE,
    DEFAULT_DATE_BONUS,
    KEYWORD_MATCH_CAP,
    LATER_MENTION_RANK,
    RRF_K,
    Candidates,
    content_stems,
    fuse,
    later_mention,
    message_stems,
    query_text,
)
from .recall_units import (
    RECALL_HEADER,
    Key,
    message_lines,
    missing_units,
    render_message,
    render_section,
    render_turn,
    session_cost,
    speaker_lines,
    tool_group,
    unit_text,
    units_of,
    window_keys,
    window_line,
)

if TYPE_CHECKING:
    from ..store import TurnStore

RECALL_JOB = "recall"
_instances = itertools.count()

#: Default minimum cosine similarity for a dense match to count. With all-MiniLM-L6-v2,
#: unrelated sentences mostly score below 0.2.
DEFAULT_MIN_SCORE = 0.2

#: Query vectors remembered per VectorRecall (the newest ones).
QUERY_CACHE = 64

#: Candidates taken from each ranking (dense and keyword) before fusion. Measured on the LoCoMo
#: development split: 50 recalls as much evidence as 100 (a little more), in less time.
DEFAULT_CANDIDATES = 50

#: Neighbours on each side sent (and indexed) with a recalled message. Measured on the LoCoMo
#: development split: dropping the one before or the one after loses evidence at 2k and 4k.
DEFAULT_WINDOW = 1


#: Keywords renamed in 0.2 (the old names still work, with a DeprecationWarning).
_RENAMED = {"max_tokens": "max_recall_tokens", "role": "message_role"}


class VectorRecall:
    """Stores every finished message and recalls the ones that matter to the new message.

    Hybrid retrieval over message windows (see the module docstring): dense vectors in Chroma
    and a BM25 keyword index, fused by reciprocal rank, with a bonus for the times the message
    mentions; recalled messages are sent with their neighbours, in date order, with any later
    mention of the same thing. The recalled section and the newest turns share the budget by
    the ``split`` policy.

    A conversation only ever recalls its own messages, even when many share one collection
    (the dense query and the keyword query are both filtered on the conversation id).
    Alone, ``VectorRecall()`` is ``Pipeline(VectorRecall(), Truncate())``.

    Args:
        client: A chromadb client (``EphemeralClient()``, ``PersistentClient(path)``,
            ``HttpClient(...)`` for several processes), a directory path for a persistent
            store, a :class:`~convmem.store.TurnStore`, or None for a private in-memory store.
        collection: The Chroma collection (3+ characters).
        embedder: A model name, a local path, a ``SentenceTransformer``, or any callable from
            texts to vectors. None: the packaged all-MiniLM-L6-v2 (offline), loaded once per
            process and shared.
        k: At most this many messages chosen by rank (their neighbours and later mentions
            come along); None (default): as many as the recall budget holds.
        max_recall_tokens: A cap on the recalled section's tokens (on top of ``split``). (Was
            ``max_tokens``, which on ``Truncate`` caps the whole prompt; the old name works,
            with a warning, for one release.)
        min_score: Minimum cosine similarity for a dense match (default
            :data:`DEFAULT_MIN_SCORE`; None keeps all). Keyword matches need no score.
        include_tool_output: Index and recall tool results' text (default: a tool result is
            shown as omitted; the call and its arguments are kept).
        message_role: Role of the recalled-section message (``"system"`` or ``"user"``). (Was
            ``role``, which is also the component role ``"recall"``; the old keyword works,
            with a warning, for one release.)
        split: The budget policy ``(free, history_fits, newest_turn_tokens) -> recall
            tokens`` (default :func:`default_recall_budget`).
        window: Neighbours on each side of a recalled message (default 1).
        keyword: Use the keyword index (default True); False is dense-only.
        date_bonus: Fused-score bonus for a time the message mentions (0 turns it off).

    Raises:
        UsageError: an argument is out of range.
        MissingExtraError: chromadb or sentence-transformers is not installed (raised on first
            use, naming ``pip install 'convmem[recall]'``).
    """

    role: Literal["recall"] = "recall"

    def __init__(
        self,
        client: Any = None,
        collection: str = "convmem_turns",
        embedder: Any = None,
        k: int | None = None,
        max_recall_tokens: int | None = None,
        min_score: float | None = DEFAULT_MIN_SCORE,
        *,
        include_tool_output: bool = False,
        message_role: str = "system",
        split: SplitPolicy = default_recall_budget,
        window: int = DEFAULT_WINDOW,
        keyword: bool = True,
        date_bonus: float = DEFAULT_DATE_BONUS,
        candidates: int = DEFAULT_CANDIDATES,
        **deprecated: Any,
    ) -> None:
        given: dict[str, Any] = {
            "max_recall_tokens": max_recall_tokens,
            "message_role": message_role,
        }
        given = _check.renamed_keywords("VectorRecall", deprecated, _RENAMED, given)
        max_recall_tokens, message_role = given["max_recall_tokens"], given["message_role"]
        max_tokens = max_recall_tokens
        role = message_role
        if k is not None and (not isinstance(k, int) or isinstance(k, bool) or k < 1):
            raise UsageError(f"VectorRecall(k=...) must be a positive int or None, got {k!r}")
        if max_tokens is not None and (
            not isinstance(max_tokens, int) or isinstance(max_tokens, bool) or max_tokens <= 0
        ):
            raise UsageError(
                f"VectorRecall(max_recall_tokens=...) must be a positive int, got {max_tokens!r}"
            )
        if min_score is not None:
            _check.number_in_range("VectorRecall(min_score=...)", min_score, -1.0, 1.0)
        if role not in ("system", "user"):
            raise UsageError("VectorRecall(message_role=...) must be 'system' or 'user'")
        _check.chroma_collection_name("VectorRecall(collection=...)", collection)
        if not callable(split):
            raise UsageError("VectorRecall(split=...) must be a callable")
        if isinstance(window, bool) or not isinstance(window, int) or not 0 <= window <= 5:
            raise UsageError(f"VectorRecall(window=...) must be an int in 0..5, got {window!r}")
        if (
            isinstance(date_bonus, bool)
            or not isinstance(date_bonus, (int, float))
            or not 0 <= date_bonus < 1
        ):
            raise UsageError(f"VectorRecall(date_bonus=...) must be in [0, 1), got {date_bonus!r}")
        if isinstance(candidates, bool) or not isinstance(candidates, int) or candidates < 1:
            raise UsageError("VectorRecall(candidates=...) must be a positive int")
        # Results are keyed per instance: two VectorRecalls in one Pipeline keep their own.
        self.job_key = f"{RECALL_JOB}#{next(_instances)}"
        self._client_spec = client
        self.collection = collection
        self._embedder_spec = embedder
        self.k = k
        self.max_recall_tokens = max_tokens
        self.min_score = None if min_score is None else float(min_score)
        self.include_tool_output = include_tool_output
        self.message_role = role
        self.split = split
        self.window = window
        self.keyword = keyword
        self.date_bonus = float(date_bonus)
        self.candidates = candidates
        self._store: Any = None
        self._embedder: Any = None
        self._warmed = False
        # The last queries' vectors: a preview and the send that follows it, or a retry, ask
        # the same message, and embedding it is most of a query's time.
        self._query_vectors: OrderedDict[str, Any] = OrderedDict()
        self._lock = threading.Lock()
        # Per conversation: the last stored turn (its last message waits for its neighbour),
        # and whether this process has checked the store against the history.
        self._edges: dict[str, dict[tuple[str, int], Turn]] = {}
        self._checked: set[str] = set()
        self._line_tokens: weakref.WeakKeyDictionary[Turn, dict[Any, tuple[str, int]]] = (
            weakref.WeakKeyDictionary()
        )
        self._words: weakref.WeakKeyDictionary[Turn, dict[int, frozenset[str]]] = (
            weakref.WeakKeyDictionary()
        )

    @property
    def name(self) -> str:
        return "VectorRecall()" if self.k is None else f"VectorRecall(k={self.k})"

    @property
    def max_tokens(self) -> int | None:
        """Deprecated alias of :attr:`max_recall_tokens` (removed in the next release)."""
        warnings.warn(
            "VectorRecall.max_tokens is now max_recall_tokens", DeprecationWarning, stacklevel=2
        )
        return self.max_recall_tokens

    def __repr__(self) -> str:
        return self.name

    # -- heavy parts, created on first use and shared by every conversation using this object --
    @property
    def store(self) -> Any:
        """The :class:`~convmem.store.TurnStore` (created on first use)."""
        with self._lock:
            if self._store is None:
                from ..store import TurnStore

                if isinstance(self._client_spec, TurnStore):
                    self._store = self._client_spec
                else:
                    self._store = TurnStore(
                        self._client_spec,
                        collection=self.collection,
                        lexical=None if self.keyword else False,
                    )
            return self._store

    @property
    def embedder(self) -> Any:
        """The embedder (the model is loaded on first use, once per process)."""
        with self._lock:
            if self._embedder is None:
                from ..embed import resolve_embedder

                self._embedder = resolve_embedder(self._embedder_spec)
            return self._embedder

    # -- units ---------------------------------------------------------------------------------
    def _unit_text(self, msgs: Sequence[Message], i: int) -> str:
        return unit_text(msgs, i, self.window, include_tool_output=self.include_tool_output)

    def _units(
        self,
        conversation_id: str,
        turns: Sequence[Turn],
        before: Sequence[Message],
        after: Sequence[Message] = (),
    ) -> list[Any]:
        """Units of ``turns`` (see :func:`~convmem.strategies.recall_units.units_of`)."""
        return units_of(conversation_id, turns, before, after, self._unit_text)

    def _embed_store(self, units: Sequence[Any]) -> int:
        if not units:
            return 0
        vectors = self.embedder([u.text for u in units])
        self.store.add(list(units), vectors)
        return len(units)

    def _query_vector(self, query: str) -> Any:
        with self._lock:
            vector = self._query_vectors.get(query)
            if vector is not None:
                self._query_vectors.move_to_end(query)
                return vector
        vector = self.embedder([query])[0]
        with self._lock:
            self._query_vectors[query] = vector
            while len(self._query_vectors) > QUERY_CACHE:
                self._query_vectors.popitem(last=False)
        return vector

    def warm(self) -> None:
        """Loads the embedding model (by embedding one text) and opens the Chroma collection.

        What the first call would otherwise do on its critical path; ``conv.warm()`` calls it.
        Idempotent: later calls cost nothing.
        """
        if self._warmed:
            return
        self.embedder(["warm"])
        _ = self.store
        self._warmed = True

    # -- strategy protocol -----------------------------------------------------------------------
    def observe(self, conversation_id: str, turns: Sequence[Turn]) -> list[Job]:
        """Stores the committed turns' messages (run after the reply, off the critical path)."""
        finished = [t for t in turns if t.complete]
        if not finished:
            return []

        def store_turns() -> int:
            from ..store import StoredTurn

            first, last = finished[0], finished[-1]
            # Jobs may run out of order (a shared pool): each batch meets its neighbours
            # through these edges, whichever runs first, so no message is left unstored.
            with self._lock:
                edges = self._edges.setdefault(conversation_id, {})
                prev = edges.pop(("last", first.id - 1), None)
                nxt = edges.pop(("first", last.id + 1), None)
                if prev is None:
                    edges[("first", first.id)] = first
                if nxt is None:
                    edges[("last", last.id)] = last
            before = list(prev.messages) if prev is not None else []
            after = list(nxt.messages[:1]) if nxt is not None else []
            units = self._units(conversation_id, finished, before, after)
            if prev is not None and prev.messages:
                # The previous turn's last message, now with its next neighbour.
                msgs = [*prev.messages, *first.messages]
                i = len(prev.messages) - 1
                text = self._unit_text(msgs, i)
                if text.strip():
                    units.insert(0, StoredTurn(conversation_id, prev.id, text, prev.created_at, i))
            try:
                return self._embed_store(units)
            except BaseException:
                self._checked.discard(conversation_id)  # found and stored at the next call
                raise

        return [LocalJob(f"{self.job_key}:store", store_turns)]

    def mark_complete(self, conversation_id: str) -> None:
        """Says the store already holds every message of this conversation (e.g. it was filled
        in bulk), so its first call does not look for missing ones."""
        self._checked.add(conversation_id)

    def missing(self, conversation_id: str, history: History) -> list[tuple[int, int]]:
        """The ``(turn_id, part)`` units the store should hold for this history but does not.

        Every message of every complete turn is expected except the newest message (it waits
        for its next neighbour). Reads the store (one query).
        """
        stored = self.store.stored_keys(conversation_id)
        turns = [t for t in history.turn_list() if t.complete]
        expected = [(t.id, p) for t in turns for p in range(len(t.messages))]
        if expected:
            expected.pop()
        return [key for key in expected if key not in stored]

    def _repair(self, conversation_id: str, history: History) -> int:
        """Embeds and stores what a crash or a failed store left out; returns how many."""
        gaps = set(self.missing(conversation_id, history))
        units = missing_units(conversation_id, history.turn_list(), gaps, self._unit_text)
        return self._embed_store(units)

    def prepare(self, request: ContextRequest) -> list[Job]:
        """Embeds the new message and searches both indexes (local work, before the build).

        On a conversation's first call in this process (and after a failed store), turns the
        store lacks (a crash, a failed store) are embedded and stored first.
        """
        query = query_text(request).strip()
        if not query or not request.turns:
            return []
        conversation_id = request.conversation_id
        history = request.history
        check = conversation_id not in self._checked

        def search() -> Candidates:
            t0 = time.perf_counter()
            stored = 0
            if check:
                stored = self._repair(conversation_id, history)
                self._checked.add(conversation_id)
            store = self.store
            vector = self._query_vector(query)
            # Keywords are searched in another thread with the vectors (SQLite and BLAS free the
            # GIL); not during the embedding, which it slowed by 2-4 ms on 2 cores.
            find_keywords = lambda: self._keyword_hits(store, conversation_id, query)  # noqa: E731
            job = query_pool().submit(find_keywords) if self.keyword else None
            dense = store.query(
                conversation_id, vector, k=self.candidates, min_score=self.min_score
            )
            keyword = job.result() if job is not None else []
            return Candidates(
                query=query,
                dense=tuple((h.turn_id, h.part, h.score) for h in dense),
                keyword=tuple((h.turn_id, h.part, h.score) for h in keyword),
                seconds=time.perf_counter() - t0,
                stored=stored,
            )

        return [LocalJob(self.job_key, search)]

    def _keyword_hits(self, store: TurnStore, conversation_id: str, query: str) -> list[Any]:
        from ..lexical import query_terms

        terms = store.keyword_terms(
            conversation_id, query_terms(query), COMMON_TERM_SHARE, KEYWORD_MATCH_CAP
        )
        return store.keyword_search(conversation_id, terms, k=self.candidates)

    def build(self, request: ContextRequest) -> ContextPlan:
        return compose(request, [self], name=self.name)

    # -- the budget ------------------------------------------------------------------------------
    def reserve(self, comp: Composition) -> int:
        """Tokens set aside for the recalled section before the newest turns are chosen."""
        return recall_reserve(comp, self.split, self.max_recall_tokens)

    # -- choosing and rendering ------------------------------------------------------------------
    def contribute(self, comp: Composition) -> None:
        """Fills the recalled section with the best windows not already sent."""
        request = comp.request
        result = request.results.get(self.job_key)
        if result is None:
            return
        if not result.ok:
            comp.note("recall_failed", error=f"{type(result.error).__name__}: {result.error}")
            return
        cands = result.value
        if not isinstance(cands, Candidates):  # plain hits (turn_id, score[, part]), dense only
            cands = Candidates(
                query=query_text(request),
                dense=tuple((h.turn_id, getattr(h, "part", 0), h.score) for h in cands),
                keyword=(),
            )
        if cands.stored:
            comp.note(
                "recall_repaired",
                messages=cands.stored,
                text=f"recall stored {cands.stored} messages missing from the store first",
            )
        budget = comp.remaining
        if self.max_recall_tokens is not None:
            budget = min(budget, request.budget.to_estimate(self.max_recall_tokens))
        if budget <= 0:
            return
        history = request.history
        turns = history.turn_list()

        def index_of(turn_id: int) -> int | None:
            idx = history.index_after(turn_id) - 1
            return idx if idx >= 0 and turns[idx].id == turn_id else None

        ranking = fuse(cands, turns, index_of, date_bonus=self.date_bonus)
        order, fused, why = ranking.order, ranking.score, ranking.why

        sent: dict[Key, float] = {}  # message -> score of the unit that brought it
        query_words = content_stems(cands.query)
        reasons: dict[int, list[str]] = {}
        spent = 0
        chosen = 0
        header_cost = request.counter.count_text(data_section("recalled", RECALL_HEADER, "")) + 4
        # A window's "turns 10-11, 14:05:" line, and a session's tags the first time a window
        # of that day is chosen (windows of one day share them).
        per_day = session_cost(request.counter)
        days: set[int] = set()

        def frame(keys: Sequence[Key], new_days: set[int]) -> int:
            day = int(turns[keys[0][0]].created_at // 86_400)
            fresh = day not in days and day not in new_days
            new_days.add(day)
            line = request.counter.count_text(window_line(turns, keys) + "\n")
            return int(line) + (per_day if fresh else 0)

        for key in order:
            if self.k is not None and chosen >= self.k:
                break
            if self._blocked(comp, turns, key) or key in sent:
                continue
            group = self._window(comp, turns, key)
            new = [m for m in group if m not in sent]
            if not new:
                continue
            chosen_days: set[int] = set()
            cost = sum(self._line(request, turns, m)[1] for m in new) + frame(new, chosen_days)
            if (header_cost if not sent else 0) + spent + cost > budget:
                continue  # a shorter window further down may still fit
            # The fact the query asks about may be a neighbour of the unit that ranked (its
            # window matched): look for later mentions of the message sharing most of the
            # query's words.
            anchor = max(new, key=lambda m: (len(self._terms(turns, m) & query_words), m == key, m))
            later = later_mention(
                anchor,
                order,
                lambda m: self._terms(turns, m),
                lambda m: m not in sent and not self._blocked(comp, turns, m),
                query_words,
            )
            if later is not None:
                extra = [
                    m for m in self._window(comp, turns, later) if m not in group and m not in sent
                ]
                group += extra
                new += extra
                cost += sum(self._line(request, turns, m)[1] for m in extra)
                cost += frame(extra, chosen_days) if extra else 0
                if (header_cost if not sent else 0) + spent + cost > budget:
                    continue  # never a recalled fact without its later mention
            spent += cost + (header_cost if not sent else 0)
            days |= chosen_days
            chosen += 1
            for m in new:
                sent[m] = fused[key]
            reasons.setdefault(turns[key[0]].id, []).append(
                f"rank {order.index(key) + 1} ({', '.join(why[key])})"
            )
            if later is not None:
                reasons.setdefault(turns[later[0]].id, []).append(
                    f"later mention of turn {turns[anchor[0]].id}"
                )
        if not sent:
            if order:
                comp.note("recall_nothing_fits")
            return
        message = self._render(request, turns, sent)
        tokens = request.counter.count_message(message)
        while tokens > budget and sent:  # the estimate above was short: drop the weakest
            over = tokens - budget
            while over > 0 and sent:  # as many as the overshoot, then count again
                weakest = min(sent, key=lambda m: (sent[m], m))
                for m in tool_group(turns, weakest):  # a tool call and its results go together
                    if sent.pop(m, None) is not None:
                        over -= self._line(request, turns, m)[1]
            message = self._render(request, turns, sent)
            tokens = request.counter.count_message(message)
        if not sent:
            return
        by_turn: dict[int, list[int]] = {}
        for idx, part in sorted(sent):
            by_turn.setdefault(idx, []).append(part)
        comp.recalled = []
        for idx, parts in by_turn.items():
            turn = turns[idx]
            score = max(sent[(idx, p)] for p in parts)
            comp.recalled.append((turn, score))
            whole = len(parts) == len(turn.messages)
            reason = "; ".join(reasons.get(turn.id, ["neighbour of a recalled message"]))
            if not whole:
                reason += f"; messages {','.join(str(p) for p in parts)} of {len(turn.messages)}"
            comp.decide(turn, "recalled", reason, score)
            if not whole:
                _set_parts(comp, turn.id, tuple(parts))
        comp.recalled_messages = [message]
        comp.recalled_tokens = tokens

    def _blocked(self, comp: Composition, turns: Sequence[Turn], key: Key) -> bool:
        """A message that cannot be recalled: its turn is already sent as a recent turn."""
        decision = comp.decisions.get(turns[key[0]].id)
        return decision is not None and decision.action == "kept"

    def _window(self, comp: Composition, turns: Sequence[Turn], key: Key) -> list[Key]:
        """The message and its neighbours not already sent as recent turns."""
        return [
            m for m in window_keys(turns, key, self.window) if not self._blocked(comp, turns, m)
        ]

    def _terms(self, turns: Sequence[Turn], key: Key) -> frozenset[str]:
        """The message's stemmed content words, cached per turn."""
        turn = turns[key[0]]
        cache = self._words.setdefault(turn, {})
        words = cache.get(key[1])
        if words is None:
            words = cache[key[1]] = message_stems(turn, key[1])
        return words

    def _line(self, request: ContextRequest, turns: Sequence[Turn], key: Key) -> tuple[str, int]:
        """The message's lines in the recalled section and their tokens, cached per turn."""
        turn = turns[key[0]]
        cache = self._line_tokens.setdefault(turn, {})
        ck = (id(request.counter), key[1], self.include_tool_output)
        got = cache.get(ck)
        if got is None:
            text = message_lines(
                turn.messages[key[1]], include_tool_output=self.include_tool_output
            )
            # Counted with its line break: after punctuation the two are one token.
            got = cache[ck] = (text, request.counter.count_text(text + "\n"))
        return got

    def _render(self, request: ContextRequest, turns: Sequence[Turn], keys: Any) -> Message:
        return render_section(
            turns,
            keys,
            role=self.message_role,
            include_tool_output=self.include_tool_output,
            lines=lambda m: self._line(request, turns, m)[0],
        )


def _set_parts(comp: Composition, turn_id: int, parts: tuple[int, ...]) -> None:
    comp.decisions[turn_id] = dataclasses.replace(comp.decisions[turn_id], parts=parts)


__all__ = [
    "COMMON_TERM_SHARE",
    "DEFAULT_CANDIDATES",
    "DEFAULT_DATE_BONUS",
    "DEFAULT_MIN_SCORE",
    "DEFAULT_RECENT_SHARE",
    "DEFAULT_RECENT_TURNS",
    "DEFAULT_WINDOW",
    "KEYWORD_MATCH_CAP",
    "LATER_MENTION_RANK",
    "RECALL_HEADER",
    "RRF_K",
    "Candidates",
    "SplitPolicy",
    "VectorRecall",
    "default_recall_budget",
    "render_message",
    "render_turn",
    "speaker_lines",
]
