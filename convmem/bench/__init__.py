"""Benchmark data: conversations to replay through a context strategy, and questions to ask.

Nothing here calls a model. :func:`load_locomo` reads LoCoMo (bring your own copy; it is
CC BY-NC) and :func:`generate_probe_set` builds a synthetic set with planted facts; both give
:class:`BenchConversation` objects whose questions name their evidence turns.
"""

from convmem.bench.data import (
    STOPWORDS,
    BenchConversation,
    BenchQuestion,
    BenchStats,
    BenchTurn,
    Role,
    bench_stats,
    content_words,
    keyword_recall,
)
from convmem.bench.locomo import CATEGORY_NAMES, load_locomo, parse_evidence
from convmem.bench.probe import PROBE_CATEGORIES, generate_probe_set

__all__ = [
    "CATEGORY_NAMES",
    "PROBE_CATEGORIES",
    "STOPWORDS",
    "BenchConversation",
    "BenchQuestion",
    "BenchStats",
    "BenchTurn",
    "Role",
    "bench_stats",
    "content_words",
    "generate_probe_set",
    "keyword_recall",
    "load_locomo",
    "parse_evidence",
]
