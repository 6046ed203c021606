"""The replay runner: replays conversations through each row's strategy and scores every question.

Each :class:`~convmem.bench.data.BenchConversation` is replayed through a
:class:`~convmem.Conversation` one convmem turn at a time (a user message and the messages up to
the next user message, via ``conv.extend``); strategies that summarise get ``conv.prepare_next()``
after every turn, which makes the summary the next call would need, as a live chat would. After
the last turn every question is previewed as the next user message (``conv.preview``: no model
call), and the :class:`~convmem.plan.ContextPlan` is scored (tokens, evidence recall, answer
keywords, stale values: see :mod:`convmem.bench.scoring`), every row's tokens counted by one
``cl100k_base`` counter. Before each turn is added, the call a live chat would make for it is
previewed too, to measure the share of prompt tokens a provider's prompt cache could serve
(:mod:`convmem.bench.caching`).

Rows (:class:`RowSpec`): the full history (``KeepAll``), ``Truncate(max_tokens=B)`` (its
default block truncation) and next to it the sliding window ``Truncate(max_tokens=B,
cache_policy=None)``, ``Pipeline(VectorRecall(), Truncate(max_tokens=B))``, ``RollingSummary``
in a window of
``B + reply_reserve`` (so every row's prompt budget is ``B``; the summary fires at 70% of the
window) and ``Pipeline(RollingSummary(), VectorRecall(), Truncate(max_tokens=B))``.

LoCoMo (:func:`~convmem.bench.load_locomo`): ``speaker_a`` plays the user role and
``speaker_b`` the assistant role, each turn rendered as ``"Speaker: text"`` plus
``" [image: caption]"``, each session's first turn headed by its date; the questions are asked
after the last session. Questions without resolvable evidence count for tokens and answer
keywords but not for evidence recall.

Nothing here is random: probe sets are seeded by their generator, rows and questions run in a
fixed order, the summariser is called at temperature 0. Identical summariser requests (the
summary with and without recall asks the same questions in the same order) are answered once
and the reply reused; the reused calls are still counted, with their original time, so every
row reports what it would cost on its own.

The replay's parts live next to it, one concept each: the rows and the strategy each builds in
:mod:`convmem.bench.rows`, feeding a conversation in :mod:`convmem.bench.replay`, scoring a
question in :mod:`convmem.bench.scoring`, the figures (per question, per row, per run) in
:mod:`convmem.bench.results`, the counted and memoised summariser and embedder in
:mod:`convmem.bench.memo`, and the tables and files in :mod:`convmem.bench.report`. This module
re-exports their public names, so ``from convmem.bench.runner import build_rows, run_replay``
keeps working.
"""

from __future__ import annotations

import contextlib
import sys
import threading
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

from convmem import (
    ContextOverflowError,
    RunError,
    Strategy,
    TiktokenCounter,
    TokenCounter,
    UsageError,
)
from convmem.bench.caching import PrefixMeter
from convmem.bench.data import BenchConversation
from convmem.bench.memo import CallStats, CountingClient, Memo, MemoEmbedder
from convmem.bench.replay import replay_conversation, turn_groups
from convmem.bench.results import BenchReport, QuestionResult, RowResult, savings
from convmem.bench.rows import (
    DEFAULT_ENCODING,
    DEFAULT_REPLY_RESERVE,
    FULL_WINDOW,
    RECALL_COLLECTION,
    REPLAY_MODEL,
    ROW_KINDS,
    ROW_LABELS,
    RowSpec,
    Summarizer,
    build_rows,
    row_strategy,
)
from convmem.bench.scoring import ContextWords, score_question


class _Cancelled(Exception):
    """Stops a summary thread when the main thread failed."""


class _NoBar:
    def update(self, n: int = 1) -> None:
        pass

    def set_postfix_str(self, s: str) -> None:
        pass

    def close(self) -> None:
        pass


def _bar(enabled: bool, total: int, desc: str, *, leave: bool = True) -> Any:
    if not enabled:
        return _NoBar()
    try:
        from tqdm import tqdm
    except ImportError:  # progress bars are a nicety of the bench extra, not a requirement
        return _NoBar()

    return tqdm(total=total, desc=desc, leave=leave, file=sys.stderr)


def default_chroma_client() -> Any:
    """An in-memory Chroma client (default settings, so it coexists with any other).

    Raises:
        MissingExtraError: ``chromadb`` is not installed.
    """
    from convmem.store import ephemeral_client

    return ephemeral_client()


class ReplayRunner:
    """Replays conversations through the rows and scores every question.

    Args:
        rows: What to run (see :func:`build_rows`).
        summarizer: The summariser for summary rows (required when there are some).
        embedder: The embedder for recall rows: any value ``VectorRecall(embedder=...)``
            accepts; None loads the packaged all-MiniLM-L6-v2 offline. It is wrapped in a
            :class:`MemoEmbedder`.
        chroma_client: The Chroma client recall rows share (default: a private in-memory one).
        counter: Counts tokens for every row (default ``cl100k_base``).
        recall_k: ``VectorRecall(k=...)`` (default None: the default, no fixed count).
        reply_reserve: Room for the reply in summary rows (their window is budget + this).
        progress: Show tqdm progress bars on stderr.
        concurrent: Run the summary rows in a second thread while the others run. The
            summariser works in its own process (or remotely), so on a small machine this
            overlaps its wait with loading the embedding model and the other rows. Results are
            the same either way; each row's wall time is measured in its own thread.
        log: Called with a line when each row finishes (for logs where bars are off).

    Raises:
        UsageError: Summary rows without a summariser.
    """

    def __init__(
        self,
        rows: Sequence[RowSpec],
        *,
        summarizer: Summarizer | None = None,
        embedder: Any = None,
        chroma_client: Any = None,
        counter: TokenCounter | None = None,
        recall_k: int | None = None,
        reply_reserve: int = DEFAULT_REPLY_RESERVE,
        progress: bool = False,
        concurrent: bool = True,
        log: Callable[[str], None] | None = None,
    ) -> None:
        if not rows:
            raise UsageError("no rows to run")
        if len({r.key for r in rows}) != len(rows):
            raise UsageError("rows must be distinct")
        if any(r.uses_summary for r in rows) and summarizer is None:
            raise UsageError("summary rows need a summarizer")
        self.rows = list(rows)
        self.summarizer = summarizer
        self._embedder_spec = embedder
        self._chroma_client = chroma_client
        self.counter: TokenCounter = counter or TiktokenCounter(encoding=DEFAULT_ENCODING)
        self.recall_k = recall_k
        self.reply_reserve = reply_reserve
        self.progress = progress
        self.words = ContextWords()
        self.concurrent = concurrent
        self.log = log
        self.memo_embedder: MemoEmbedder | None = None
        self._recall: Any = None
        self._summary_memo: dict[str, Memo] = {}
        self._setup_lock = threading.Lock()
        self._cancel = threading.Event()
        self._client: Any = None
        self._collection: str | None = None

    # -- setup --------------------------------------------------------------------------------
    def setup(self) -> float:
        """Loads the embedding model and opens the store, if recall rows need them.

        Returns:
            Seconds spent (reported apart from the rows' wall time).
        """
        with self._setup_lock:
            if self._recall is not None or not any(r.uses_recall for r in self.rows):
                return 0.0
            return self._setup()

    def _setup(self) -> float:
        t0 = time.perf_counter()
        from convmem.embed import resolve_embedder
        from convmem.strategies import VectorRecall

        base = resolve_embedder(self._embedder_spec)
        self.memo_embedder = MemoEmbedder(base)
        self.memo_embedder(["warm up the embedding model"])
        client = self._chroma_client if self._chroma_client is not None else default_chroma_client()
        # Chroma's in-memory clients share one database per process: a collection of its own
        # keeps this run from seeing another run's turns (or its embedding size).
        self._collection = f"{RECALL_COLLECTION}_{uuid.uuid4().hex[:12]}"
        self._client = client
        self._recall = VectorRecall(
            client=client,
            collection=self._collection,
            embedder=self.memo_embedder,
            k=self.recall_k,
        )
        return time.perf_counter() - t0

    def close(self) -> None:
        """Drops the run's Chroma collection (the embedding model stays loaded for reuse)."""
        with self._setup_lock:
            recall, self._recall = self._recall, None
            if recall is None:
                return
            recall.store.close()
            # Already gone, or a client that cannot drop collections: nothing worth failing for.
            with contextlib.suppress(Exception):
                self._client.delete_collection(self._collection)

    def strategy(self, spec: RowSpec, client: Any = None) -> tuple[Strategy, int, int | None]:
        """The strategy of a row, the context window and reply reserve to run it with.

        Loads the shared recall store first when the row recalls (see
        :func:`~convmem.bench.rows.row_strategy`).

        Args:
            spec: The row.
            client: The summariser client to give a summary strategy (default: the
                summariser's own).
        """
        if spec.uses_recall and self._recall is None:
            self.setup()
        return row_strategy(
            spec,
            recall=self._recall,
            summarizer=self.summarizer,
            client=client,
            reply_reserve=self.reply_reserve,
        )

    # -- running ------------------------------------------------------------------------------
    def run_row(
        self,
        spec: RowSpec,
        conversations: Sequence[BenchConversation],
        bar: Any = None,
        turn_bar: Any = None,
    ) -> RowResult:
        """Replays every conversation through one row.

        Args:
            spec: The row.
            conversations: What to replay.
            bar: A progress bar advanced once per conversation.
            turn_bar: A progress bar advanced once per turn (default: none, or a transient
                one per conversation for summary rows when progress is on).
        """
        from convmem import Conversation

        stats = CallStats()
        summ_client = (
            CountingClient(self.summarizer.client, self._summary_memo, stats)
            if spec.uses_summary and self.summarizer is not None
            else None
        )
        result = RowResult(spec)
        t0 = time.perf_counter()
        for conv in conversations:
            strategy, window, reserve = self.strategy(spec, summ_client)
            result.strategy = str(getattr(strategy, "name", type(strategy).__name__))
            chat = Conversation(
                summ_client,
                model=REPLAY_MODEL,
                strategy=strategy,
                context_window=window,
                reply_reserve=reserve,
                counter=self.counter,
                conversation_id=f"{spec.key}/{conv.conversation_id}",
            )
            inner = turn_bar
            if inner is None:
                inner = _bar(
                    self.progress and spec.uses_summary,
                    len(turn_groups(conv)),
                    f"  {conv.conversation_id}",
                    leave=False,
                )

            def on_turn(progress: Any = inner) -> None:
                if self._cancel.is_set():
                    raise _Cancelled
                progress.update()

            meter = PrefixMeter(self.counter)

            def before_turn(text: str, chat: Any = chat, meter: PrefixMeter = meter) -> None:
                # The call a live chat makes for this turn: its prefix shared with the last.
                try:
                    plan = chat.preview(text)
                except ContextOverflowError:
                    return  # a live chat's call would fail here: nothing sent, nothing cached
                meter.measure(plan.messages)

            turn_map = replay_conversation(
                chat, conv, prepare=spec.uses_summary, on_turn=on_turn, before_turn=before_turn
            )
            result.replayed_calls += meter.calls
            result.replayed_prompt_tokens += meter.prompt_tokens
            result.replayed_shared_tokens += meter.shared_tokens
            part_map = [0] * len(conv.turns)
            for group in turn_groups(conv):
                for position, i in enumerate(group):
                    part_map[i] = position
            if turn_bar is None:
                inner.close()
            if spec.uses_recall:
                chat.drain()  # turns are stored in a worker thread
                self._check_stored(chat.conversation_id, chat.history)
            for index, question in enumerate(conv.questions):
                plan = chat.preview(question.question)
                failed = plan.notes_of("recall_failed")
                if failed:  # a row that silently recalls nothing would report nonsense
                    raise RunError(f"{spec.key}/{conv.conversation_id}: {failed[0]}")
                result.questions.append(
                    score_question(
                        plan,
                        question,
                        turn_map,
                        conversation_id=conv.conversation_id,
                        index=index,
                        words=self.words,
                        part_map=part_map,
                    )
                )
            chat.close()
            if bar is not None:
                bar.update()
        result.summary_calls = stats.calls
        result.summary_failures = stats.failures
        result.summary_prompt_tokens = stats.prompt_tokens
        result.summary_completion_tokens = stats.completion_tokens
        result.summary_reused = stats.reused
        result.summary_seconds = stats.seconds
        result.wall_seconds = time.perf_counter() - t0 + stats.saved_seconds
        if self.log is not None:
            share = result.evidence_recall()
            line = (
                f"{spec.key}: {result.mean_tokens:,.0f} tokens/call, evidence "
                f"{'-' if share is None else f'{share:.2f}'}"
            )
            if spec.uses_summary:
                line += f", {stats.calls} summariser calls ({stats.failures} failed)"
            self.log(f"{line}, {result.wall_seconds:.1f} s")
        return result

    def _check_stored(self, conversation_id: str, history: Any) -> None:
        missing = self._recall.missing(conversation_id, history)
        if missing:
            raise RunError(
                f"{conversation_id}: the recall store lacks {len(missing)} messages "
                "(storing failed; see the RuntimeWarning above)"
            )

    def _run_rows(
        self, specs: Sequence[RowSpec], conversations: Sequence[BenchConversation], bar: Any
    ) -> list[RowResult]:
        try:
            return [self.run_row(spec, conversations, turn_bar=bar) for spec in specs]
        finally:
            bar.close()

    def run(
        self,
        conversations: Sequence[BenchConversation],
        *,
        name: str,
        dataset: str,
        categories: Sequence[str] | None = None,
        settings: Mapping[str, Any] | None = None,
        command: str | None = None,
    ) -> BenchReport:
        """Runs every row over every conversation.

        Args:
            conversations: What to replay.
            name: Names the report (and its files).
            dataset: Describes what was replayed.
            categories: Question categories in report order (default: sorted as found).
            settings: Extra settings to record.
            command: The command line, for the record.

        Returns:
            The report.

        Raises:
            UsageError: No conversations.
        """
        if not conversations:
            raise UsageError("no conversations to replay")
        t0 = time.perf_counter()
        cats = (
            list(categories)
            if categories is not None
            else sorted({q.category for c in conversations for q in c.questions})
        )
        summary_rows = [r for r in self.rows if r.uses_summary]
        other_rows = [r for r in self.rows if not r.uses_summary]
        concurrent = self.concurrent and bool(summary_rows) and bool(other_rows)
        main_rows = other_rows if concurrent else self.rows
        results: dict[str, RowResult] = {}
        setup = 0.0
        bar = _bar(self.progress, len(main_rows) * len(conversations), "replay")
        pool: ThreadPoolExecutor | None = None
        future: Future[list[RowResult]] | None = None
        try:
            if concurrent:
                turns = sum(len(turn_groups(c)) for c in conversations) * len(summary_rows)
                sbar = _bar(self.progress, turns, "summary rows", leave=True)
                pool = ThreadPoolExecutor(1, thread_name_prefix="convmem-bench-summary")
                future = pool.submit(self._run_rows, summary_rows, conversations, sbar)
            setup = self.setup()
            for spec in main_rows:
                bar.set_postfix_str(f"{spec.label} {spec.budget or ''}".strip())
                results[spec.key] = self.run_row(spec, conversations, bar)
            if future is not None:
                for row in future.result():
                    results[row.spec.key] = row
        finally:
            self._cancel.set()  # a summary thread still running stops at its next turn
            if pool is not None:
                pool.shutdown(wait=True)
            self._cancel.clear()
            bar.close()
            self.close()
        rows = [results[r.key] for r in self.rows]
        recorded = {
            "rows": [r.key for r in self.rows],
            "token_counter": self.counter.name,
            "reply_reserve": self.reply_reserve,
            "full_window": FULL_WINDOW,
            "conversations": [c.conversation_id for c in conversations],
            "turns": sum(len(c.turns) for c in conversations),
            "questions": sum(len(c.questions) for c in conversations),
            "unresolved_evidence": sum(
                len(q.unresolved_evidence) for c in conversations for q in c.questions
            ),
            "questions_without_evidence": sum(
                1 for c in conversations for q in c.questions if not q.evidence_turn_ids
            ),
        }
        if any(r.uses_recall for r in self.rows):
            recorded["recall_k"] = self.recall_k
            split = getattr(self._recall, "split", None) if self._recall is not None else None
            recorded["recall_split"] = getattr(split, "__name__", None) or "default_recall_budget"
            recorded["embedder"] = (
                "all-MiniLM-L6-v2 (packaged, offline)"
                if self._embedder_spec is None
                else repr(self._embedder_spec)
            )
            if self.memo_embedder is not None:
                recorded["texts_embedded"] = self.memo_embedder.embedded
        if self.summarizer is not None and any(r.uses_summary for r in self.rows):
            recorded["max_summary_tokens"] = self.summarizer.max_summary_tokens
            recorded["summarizer_window"] = self.summarizer.context_window
            recorded["summary_trigger"] = 0.7
        recorded.update(settings or {})
        return BenchReport(
            name=name,
            dataset=dataset,
            categories=cats,
            rows=rows,
            settings=recorded,
            summarizer=(
                self.summarizer.description
                if self.summarizer is not None and any(r.uses_summary for r in self.rows)
                else None
            ),
            command=command,
            seconds=time.perf_counter() - t0,
            setup_seconds=setup,
        )


def run_replay(
    conversations: Sequence[BenchConversation],
    rows: Sequence[RowSpec],
    *,
    name: str,
    dataset: str,
    categories: Sequence[str] | None = None,
    summarizer: Summarizer | None = None,
    embedder: Any = None,
    chroma_client: Any = None,
    recall_k: int | None = None,
    reply_reserve: int = DEFAULT_REPLY_RESERVE,
    progress: bool = False,
    concurrent: bool = True,
    log: Callable[[str], None] | None = None,
    settings: Mapping[str, Any] | None = None,
    command: str | None = None,
) -> BenchReport:
    """Replays ``conversations`` through ``rows`` and scores every question.

    See the module docstring for what is measured. Example::

        from convmem.bench import generate_probe_set
        from convmem.bench.runner import build_rows, run_replay

        convs = generate_probe_set(conversations=2, turns=120)
        report = run_replay(convs, build_rows([1000, 2000], summary=False, recall=False),
                            name="probe", dataset="probe set")
        print(report.row("truncate-2000").evidence_recall())

    Args:
        conversations: What to replay.
        rows: The rows (see :func:`build_rows`).
        name: Names the report and its files.
        dataset: Describes what was replayed.
        categories: Question categories, in report order.
        summarizer: Required when a row summarises.
        embedder: For recall rows (None: the packaged all-MiniLM-L6-v2).
        chroma_client: For recall rows (None: a private in-memory client).
        recall_k: ``VectorRecall(k=...)`` (default None: the default, no fixed count).
        reply_reserve: Room for the reply in summary rows.
        progress: tqdm progress bars on stderr.
        concurrent: Run summary rows in a second thread (see :class:`ReplayRunner`).
        log: Called with a line as each row finishes.
        settings: Extra settings to record in the report.
        command: The command line, for the record.

    Returns:
        The :class:`BenchReport`.

    Raises:
        UsageError: Bad rows, no conversations, or summary rows without a summariser.
        MissingExtraError: Recall rows without the ``recall`` extra.
    """
    runner = ReplayRunner(
        rows,
        summarizer=summarizer,
        embedder=embedder,
        chroma_client=chroma_client,
        recall_k=recall_k,
        reply_reserve=reply_reserve,
        progress=progress,
        concurrent=concurrent,
        log=log,
    )
    return runner.run(
        conversations,
        name=name,
        dataset=dataset,
        categories=categories,
        settings=settings,
        command=command,
    )


__all__ = [
    "DEFAULT_ENCODING",
    "DEFAULT_REPLY_RESERVE",
    "FULL_WINDOW",
    "RECALL_COLLECTION",
    "REPLAY_MODEL",
    "ROW_KINDS",
    "ROW_LABELS",
    "BenchReport",
    "ContextWords",
    "MemoEmbedder",
    "QuestionResult",
    "ReplayRunner",
    "RowResult",
    "RowSpec",
    "Summarizer",
    "build_rows",
    "default_chroma_client",
    "replay_conversation",
    "row_strategy",
    "run_replay",
    "savings",
    "score_question",
    "turn_groups",
]
