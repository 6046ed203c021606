"""Speed benchmark: per-call context build cost as the history grows, against LangChain and
LlamaIndex, plus recall latency. Same as ``convmem bench speed``; see ``--help``.

    python benchmarks/bench_speed.py --quick
"""

from __future__ import annotations

import sys

from convmem.bench.speed import main

if __name__ == "__main__":
    sys.exit(main())
