"""Recall benchmark: query latency of VectorRecall at 10k and 100k stored turns (query embedding
included) and indexing throughput. Same as ``convmem bench recall``; see ``--help``.

    python benchmarks/bench_recall.py --quick

``convmem bench speed`` also reports TurnStore query latency (embedding excluded) and checks the
approximate index against an exact search (recall@k). Both generate their texts with
:mod:`convmem.bench.synth`, the one generator of synthetic chat.
"""

from __future__ import annotations

import sys

from convmem.bench.recall_speed import main

if __name__ == "__main__":
    sys.exit(main())
