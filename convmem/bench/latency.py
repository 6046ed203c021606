"""Turn latency benchmark: how long a user waits for each reply over a long conversation.

A 50-turn conversation runs through ``Pipeline(RollingSummary(), VectorRecall(), Truncate())``
against the local llama.cpp model (SmolLM2-135M, 2,048-token window), and every ``send`` is
timed from the call to the returned reply. What makes a turn slow is not the model's reply but
work convmem does on the critical path: loading the embedding model and the tokenizer on the
first call, and making a summary when the context crosses 70% of the window. The benchmark
runs the same conversation in up to three set-ups and prints p50 / p95 / max per set-up:

* ``blocking``: no warm-up, the summary made in the call that needs it;
* ``warm``: ``conv.warm()`` before the first call (embedding model and tokenizer loaded);
* ``warm+background``: also ``background_summary=True``, so the next summary is made after a
  reply, while the user reads and types (here: a pause of ``--think`` seconds between turns).

Only the public API is used. Run it with ``convmem bench latency`` (``--turns``, ``--setups``).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

SETUPS = ("blocking", "warm", "warm+background")

#: User messages of the benchmark conversation: a trip being planned, with facts to remember.
TOPICS = (
    "I'm planning a trip to {place} in {month}; what should I pack?",
    "My budget for {place} is about {money} euros. Is that enough for a week?",
    "I love {food}. Where can I find good {food} in {place}?",
    "Can you suggest a day hike near {place} that is not too crowded?",
    "What is a polite way to greet people in {place}?",
    "Remind me what budget I mentioned for {place}.",
)
PLACES = ("Kyoto", "Lisbon", "Oaxaca", "Tbilisi", "Hanoi", "Bergen", "Cusco", "Tallinn")
MONTHS = ("April", "May", "September", "October")
FOODS = ("ramen", "pastries", "mole", "khachapuri", "pho", "seafood", "ceviche", "rye bread")


def messages(turns: int) -> list[str]:
    """The ``turns`` user messages of the benchmark conversation (deterministic)."""
    out = []
    for i in range(turns):
        topic = TOPICS[i % len(TOPICS)]
        j = i // len(TOPICS)
        out.append(
            topic.format(
                place=PLACES[j % len(PLACES)],
                month=MONTHS[j % len(MONTHS)],
                money=1500 + 250 * (j % 7),
                food=FOODS[j % len(FOODS)],
            )
        )
    return out


@dataclass
class SetupResult:
    """One set-up's latencies (seconds per turn) and what happened on the way."""

    setup: str
    latencies: list[float] = field(default_factory=list)
    warm_seconds: float | None = None
    summaries: int = 0
    summary_calls_blocking: int = 0
    #: Per turn: seconds, summariser calls made in the call and their seconds, the prompt
    #: tokens the server reported and how many of them it served from its prompt cache.
    turns: list[dict[str, Any]] = field(default_factory=list)

    def row(self) -> dict[str, Any]:
        lat = sorted(self.latencies)
        return {
            "setup": self.setup,
            "turns": len(lat),
            "first_s": round(self.latencies[0], 3) if lat else None,
            "p50_s": round(statistics.median(lat), 3) if lat else None,
            "p95_s": round(_percentile(lat, 0.95), 3) if lat else None,
            "max_s": round(lat[-1], 3) if lat else None,
            "warm_s": None if self.warm_seconds is None else round(self.warm_seconds, 3),
            "summaries": self.summaries,
            "summary_calls_in_a_turn": self.summary_calls_blocking,
        }


def _percentile(sorted_values: Sequence[float], q: float) -> float:
    if not sorted_values:
        return float("nan")
    k = min(len(sorted_values) - 1, max(0, round(q * (len(sorted_values) - 1))))
    return sorted_values[k]


def run_setup(
    client: Any,
    model: str,
    setup: str,
    turns: int,
    *,
    reply_tokens: int = 48,
    think: float = 0.0,
    out: Any = None,
    strategy: Any = None,
    context_window: int | None = None,
) -> SetupResult:
    """Holds the benchmark conversation in one set-up and times every ``send``.

    ``strategy`` defaults to ``Pipeline(RollingSummary(), VectorRecall(), Truncate())`` (a
    fresh one per set-up, so every set-up starts cold); ``context_window`` to the server's.
    """
    import convmem
    from convmem.strategies import Pipeline, RollingSummary, Truncate, VectorRecall

    if setup not in SETUPS:
        raise convmem.UsageError(f"unknown set-up {setup!r}; choose from {', '.join(SETUPS)}")
    out = out or sys.stdout
    result = SetupResult(setup)
    options: dict[str, Any] = {}
    if setup == "warm+background":
        options["background_summary"] = True
    conv = convmem.Conversation(
        client,
        model=model,
        system="You are a concise travel assistant. Answer in two sentences.",
        strategy=strategy or Pipeline(RollingSummary(), VectorRecall(), Truncate()),
        context_window=context_window,
        **options,
    )
    try:
        if setup != "blocking":
            t0 = time.perf_counter()
            conv.warm()
            result.warm_seconds = time.perf_counter() - t0
        for i, text in enumerate(messages(turns)):
            before = conv.usage.summary_calls
            t0 = time.perf_counter()
            conv.send(text, max_tokens=reply_tokens, temperature=0)
            elapsed = time.perf_counter() - t0
            result.latencies.append(elapsed)
            plan = conv.last_plan
            calls = plan.summary_calls if plan is not None else []
            if conv.usage.summary_calls > before:
                result.summary_calls_blocking += len(calls)
            turn = {
                "turn": i + 1,
                "seconds": round(elapsed, 3),
                "summary_calls": len(calls),
                "summary_seconds": round(sum(c.seconds for c in calls), 3),
                "prompt_tokens": plan.reported_prompt_tokens if plan is not None else None,
                "cached_tokens": plan.cached_tokens if plan is not None else None,
            }
            result.turns.append(turn)
            detail = f"prompt {turn['prompt_tokens']} tokens, {turn['cached_tokens']} cached"
            if calls:
                detail += f"; summary in this call: {turn['summary_seconds']:.2f} s"
            print(
                f"  {setup:<16} turn {i + 1:>3}: {elapsed:6.2f} s  ({detail})", file=out, flush=True
            )
            if think:
                time.sleep(think)
        conv.drain()
        result.summaries = len(conv.to_dict().get("summaries", []))
    finally:
        conv.close()
    return result


def _load() -> str:
    """The 1/5/15-minute load averages when the set-up ended (other jobs share the CPUs)."""
    try:
        return "/".join(f"{x:.1f}" for x in os.getloadavg())
    except OSError:
        return "n/a"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="convmem bench latency",
        description="Turn latency p50/p95 over a long conversation with the local model.",
    )
    parser.add_argument("--turns", type=int, default=50, help="turns per set-up (default 50)")
    parser.add_argument(
        "--setups",
        default=",".join(SETUPS),
        help=f"comma-separated, from {', '.join(SETUPS)} (default all)",
    )
    parser.add_argument(
        "--think",
        type=float,
        default=2.0,
        help="seconds the user 'reads and types' between turns (default 2)",
    )
    parser.add_argument("--reply-tokens", type=int, default=48)
    parser.add_argument("--json", help="also write the results to this JSON file")
    return parser


def main(argv: list[str] | None = None) -> int:
    """``convmem bench latency``: runs the set-ups and prints one row each."""
    args = build_parser().parse_args(argv)
    setups = [s.strip() for s in args.setups.split(",") if s.strip()]
    bad = [s for s in setups if s not in SETUPS]
    if bad or args.turns < 1:
        print(f"convmem bench latency: bad --setups {bad} or --turns {args.turns}", file=sys.stderr)
        return 2
    from convmem.localserver import LocalModelServer

    rows = []
    per_turn: dict[str, list[dict[str, Any]]] = {}
    print("convmem bench latency: starting the local model (llama.cpp, SmolLM2-135M) ...")
    with LocalModelServer() as server:
        for setup in setups:
            result = run_setup(
                server.client(),
                server.model,
                setup,
                args.turns,
                reply_tokens=args.reply_tokens,
                think=args.think if setup == "warm+background" else 0.0,
            )
            row = result.row()
            row["load_avg"] = _load()
            rows.append(row)
            per_turn[setup] = result.turns
    print()
    header = list(rows[0])
    print(" | ".join(header))
    print(" | ".join("---" for _ in header))
    for row in rows:
        print(" | ".join("" if row[k] is None else str(row[k]) for k in header))
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump({"rows": rows, "turns": args.turns, "per_turn": per_turn}, f, indent=2)
    return 0


__all__ = ["SETUPS", "SetupResult", "build_parser", "main", "messages", "run_setup"]
