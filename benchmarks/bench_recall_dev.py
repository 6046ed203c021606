"""Evidence recall of ``Pipeline(VectorRecall(), Truncate(max_tokens=B))`` on LoCoMo, fast.

What ``convmem bench locomo`` measures for its recall rows, without replaying the conversation
turn by turn: each conversation's history is built at once, its messages are stored through
``VectorRecall.observe`` in one batch (one embedding call instead of one per turn), and every
question is previewed and scored with the benchmark's own ``score_question``. The units stored
are the same (each message with its neighbours; the newest message held back), and the figures
came within 0.004 of the replay's on the development split (the replay's ``Truncate`` has been
through every earlier call); a run takes minutes instead of most of an hour, which is what
tuning needs.

Usage::

    python benchmarks/bench_recall_dev.py --data ../shared/data/locomo/locomo_dev.json
    python benchmarks/bench_recall_dev.py --data ... --budgets 2000,4000 --conversations 2

Needs the ``recall`` and ``bench`` extras and the packaged all-MiniLM-L6-v2 (offline).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from convmem import Conversation, History, LocalJob, TiktokenCounter
from convmem.bench.locomo import CATEGORY_NAMES, load_locomo
from convmem.bench.runner import (
    FULL_WINDOW,
    REPLAY_MODEL,
    ContextWords,
    MemoEmbedder,
    RowResult,
    RowSpec,
    score_question,
    turn_groups,
)
from convmem.embed import resolve_embedder
from convmem.strategies import Pipeline, Truncate, VectorRecall


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", required=True, help="path of locomo10.json (or a subset)")
    p.add_argument("--budgets", default="2000,4000", help="comma-separated prompt budgets")
    p.add_argument("--conversations", type=int, default=None, help="only the first N")
    args = p.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    budgets = [int(b) for b in args.budgets.split(",")]
    convs = load_locomo(args.data)[: args.conversations]
    t0 = time.perf_counter()
    recall = VectorRecall(embedder=MemoEmbedder(resolve_embedder(None)))
    counter = TiktokenCounter(encoding="cl100k_base")
    rows = {b: RowResult(RowSpec("recall", b)) for b in budgets}
    words = ContextWords()
    for conv in convs:
        history = History()
        turn_map = [0] * len(conv.turns)
        part_map = [0] * len(conv.turns)
        for group in turn_groups(conv):
            added = history.append(
                [{"role": conv.turns[i].role, "content": conv.turns[i].text} for i in group],
                created_at=conv.turns[group[-1]].timestamp,
            )
            for position, i in enumerate(group):
                turn_map[i], part_map[i] = added[-1].id, position
        cid = conv.conversation_id
        for job in recall.observe(cid, history.turn_list()):  # every message, one batch
            assert isinstance(job, LocalJob)
            job.fn()
        recall.mark_complete(cid)
        for budget, row in rows.items():
            chat = Conversation(
                None,
                model=REPLAY_MODEL,
                strategy=Pipeline(recall, Truncate(max_tokens=budget)),
                context_window=FULL_WINDOW,
                counter=counter,
                conversation_id=cid,
                history=history,
            )
            for index, question in enumerate(conv.questions):
                plan = chat.preview(question.question)
                row.questions.append(
                    score_question(
                        plan,
                        question,
                        turn_map,
                        conversation_id=cid,
                        index=index,
                        words=words,
                        part_map=part_map,
                    )
                )
    recall.store.close()
    cats = [
        c
        for c in CATEGORY_NAMES.values()
        if any(q.category == c for q in rows[budgets[0]].questions)
    ]
    print(
        f"{len(convs)} conversations, {sum(len(c.questions) for c in convs)} questions, "
        f"{time.perf_counter() - t0:.0f} s"
    )
    print("budget  tokens/call  evidence  all ev.  " + "  ".join(cats))
    for budget, row in rows.items():
        per = "  ".join(f"{row.evidence_recall(c) or 0:.3f}".rjust(len(c)) for c in cats)
        print(
            f"{budget:>6,}  {row.mean_tokens:>11,.0f}  {row.evidence_recall() or 0:>8.3f}  "
            f"{row.all_evidence() or 0:>7.3f}  {per}"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
