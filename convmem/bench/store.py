"""``convmem bench store``: what durability costs, per store.

For each store (SQLite with ``synchronous=FULL`` and ``NORMAL``, and PostgreSQL: the server given
with ``--postgres``, else a throwaway local one when PostgreSQL is installed):

- **commit latency**: one turn (a user message and a reply, ~300 characters) written with its
  expected head and an idempotency key, as a conversation commits it; p50 and p95;
- **appends per second** with 1 and 8 processes writing to one conversation (start barrier, the
  ``append`` conflict policy: each process's turns land in order after the others');
- **resume**: ``Conversation(client, model=..., store=store, conversation_id=...)`` on a
  10,000-turn conversation (load and rebuild the history), and the bare ``store.load``.

Nothing calls a model. Figures depend on the disk and the machine; the header says which.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import platform
import statistics
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from typing import Any

from convmem import Conversation, UsageError
from convmem.stores import Head, SQLiteStore

REPLY = (
    "Sure. Green tea keeps best in an airtight tin, away from light and strong smells; use it "
    "within six months of opening, and brew at 75-80 °C for two minutes."
)


@dataclass
class StoreFigures:
    """One store's results (milliseconds, appends per second)."""

    store: str
    commit_p50_ms: float = 0.0
    commit_p95_ms: float = 0.0
    appends_per_s: dict[str, float] = field(default_factory=dict)
    resume_turns: int = 0
    resume_conversation_ms: float = 0.0
    resume_load_ms: float = 0.0


def _turn(n: int, worker: int = 0) -> list[dict[str, Any]]:
    return [
        {"role": "user", "content": f"[{worker}] How should I keep green tea? ({n})"},
        {"role": "assistant", "content": REPLY},
    ]


def _open(kind: str, where: str) -> Any:
    if kind.startswith("sqlite"):
        return SQLiteStore(where, synchronous="NORMAL" if kind.endswith("NORMAL") else "FULL")
    from convmem.stores import PostgresStore

    return PostgresStore(where)


def _commit_latency(store: Any, cid: str, commits: int) -> tuple[float, float]:
    head = Head()
    times = []
    for n in range(commits):
        t0 = time.perf_counter()
        head = store.append(
            cid, _turn(n), expected_head=head, idempotency_key=f"{cid}-{n}", tokens=60
        ).head
        times.append((time.perf_counter() - t0) * 1000)
    times.sort()
    return statistics.median(times), times[min(len(times) - 1, int(0.95 * len(times)))]


def _writer(kind: str, where: str, cid: str, worker: int, appends: int, barrier: Any) -> None:
    store = _open(kind, where)
    head = store.head(cid)
    barrier.wait(timeout=120)
    for n in range(appends):
        head = store.append(
            cid, _turn(n, worker), expected_head=head, idempotency_key=f"{worker}-{n}"
        ).head
    store.close()


def _throughput(kind: str, where: str, processes: int, appends: int) -> float:
    ctx = multiprocessing.get_context("fork")
    cid = f"throughput-{processes}"
    store = _open(kind, where)
    store.create(cid)
    barrier = ctx.Barrier(processes + 1)
    procs = [
        ctx.Process(target=_writer, args=(kind, where, cid, w, appends, barrier))
        for w in range(processes)
    ]
    for p in procs:
        p.start()
    barrier.wait(timeout=120)
    t0 = time.perf_counter()
    for p in procs:
        p.join()
    elapsed = time.perf_counter() - t0
    if any(p.exitcode != 0 for p in procs):
        raise RuntimeError(f"a writer process failed ({kind}, {processes} processes)")
    turns = store.turn_ids(cid)
    store.close()
    if turns != list(range(processes * appends)):
        raise RuntimeError(f"{kind}: expected {processes * appends} dense turns, got {len(turns)}")
    return processes * appends / elapsed


def _resume(store: Any, turns: int) -> tuple[float, float]:
    import openai

    cid = "resume"
    store.create(cid, system={"role": "system", "content": "Be helpful."}, model="gpt-4o-mini")
    head = Head()
    for start in range(0, turns, 500):  # one transaction per 500 turns
        batch = [m for n in range(start, min(turns, start + 500)) for m in _turn(n)]
        head = store.append(cid, batch, expected_head=head).head
    t0 = time.perf_counter()
    loaded = store.load(cid)
    load_ms = (time.perf_counter() - t0) * 1000
    assert loaded is not None and len(loaded.turns) == turns
    client = openai.OpenAI(api_key="unused", base_url="http://127.0.0.1:9/v1")
    Conversation(client, model="gpt-4o-mini")  # loads the tokenizer once, outside the timing
    t0 = time.perf_counter()
    conv = Conversation(client, model="gpt-4o-mini", store=store, conversation_id=cid)
    conv_ms = (time.perf_counter() - t0) * 1000
    assert len(conv.turns) == turns
    return conv_ms, load_ms


def run_store(
    kind: str, where: str, *, commits: int, appends: int, processes: list[int], turns: int
) -> StoreFigures:
    """Measures one store; ``where`` is a fresh SQLite path or a PostgreSQL connection string."""
    figures = StoreFigures(store=kind)
    store = _open(kind, where)
    figures.commit_p50_ms, figures.commit_p95_ms = _commit_latency(store, "latency", commits)
    for n in processes:
        figures.appends_per_s[str(n)] = _throughput(kind, where, n, appends)
    figures.resume_turns = turns
    figures.resume_conversation_ms, figures.resume_load_ms = _resume(store, turns)
    store.close()
    return figures


def format_table(rows: list[StoreFigures], processes: list[int]) -> str:
    head = ["store", "commit p50 ms", "commit p95 ms"]
    head += [f"appends/s x{n}" for n in processes]
    head += ["resume ms (Conversation)", "store.load ms"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        cells = [r.store, f"{r.commit_p50_ms:.2f}", f"{r.commit_p95_ms:.2f}"]
        cells += [f"{r.appends_per_s[str(n)]:.0f}" for n in processes]
        cells += [f"{r.resume_conversation_ms:.0f}", f"{r.resume_load_ms:.0f}"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def build_parser(prog: str = "convmem bench store") -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=prog, description=__doc__.split("\n\n")[0])
    p.add_argument("--commits", type=int, default=300, help="commits timed per store")
    p.add_argument("--appends", type=int, default=200, help="appends per process")
    p.add_argument("--processes", default="1,8", help="writer processes, comma-separated")
    p.add_argument("--turns", type=int, default=10_000, help="turns of the resumed conversation")
    p.add_argument("--postgres", default=None, help="a PostgreSQL connection string to use")
    p.add_argument(
        "--stores",
        default="sqlite,sqlite-NORMAL,postgres",
        help="stores to measure (sqlite, sqlite-NORMAL, postgres)",
    )
    p.add_argument("--json", default=None, help="also write the figures to this file")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        processes = [int(x) for x in args.processes.split(",") if x.strip()]
    except ValueError:
        raise UsageError(
            f"--processes: expected numbers like 1,8, got {args.processes!r}"
        ) from None
    if not processes or min(processes) < 1 or min(args.commits, args.appends, args.turns) < 1:
        raise UsageError("--processes, --commits, --appends and --turns must be positive")
    kinds = [k.strip() for k in args.stores.split(",") if k.strip()]
    unknown = set(kinds) - {"sqlite", "sqlite-NORMAL", "postgres"}
    if unknown:
        raise UsageError(f"--stores: unknown store {sorted(unknown)[0]!r}")
    rows: list[StoreFigures] = []
    notes: list[str] = []
    with tempfile.TemporaryDirectory(prefix="convmem-bench-store-") as tmp:
        for kind in kinds:
            print(f"measuring {kind} ...", file=sys.stderr, flush=True)
            if kind != "postgres":
                rows.append(
                    run_store(
                        kind,
                        os.path.join(tmp, f"{kind}.db"),
                        commits=args.commits,
                        appends=args.appends,
                        processes=processes,
                        turns=args.turns,
                    )
                )
                continue
            rows_pg, note = _postgres(args, processes)
            rows.extend(rows_pg)
            notes.append(note)
    print(
        f"convmem bench store: {platform.machine()}, {os.cpu_count()} CPUs, Python "
        f"{platform.python_version()}; {args.commits} commits timed, {args.appends} appends "
        f"per process, resume of {args.turns} turns"
    )
    for note in notes:
        print(note)
    print(format_table(rows, processes))
    if args.json:
        with open(args.json, "w") as f:
            json.dump([asdict(r) for r in rows], f, indent=2)
    return 0


def _postgres(args: argparse.Namespace, processes: list[int]) -> tuple[list[StoreFigures], str]:
    from convmem.bench.pgserver import TempPostgres, find_bindir

    options = dict(commits=args.commits, appends=args.appends, processes=processes)
    if args.postgres:
        row = run_store("postgres", args.postgres, **options, turns=args.turns)
        return [row], "postgres: the server given with --postgres"
    if find_bindir() is None:
        return [], "postgres: skipped (PostgreSQL is not installed; pass --postgres DSN)"
    with TempPostgres(fsync=True) as server:
        row = run_store("postgres", server.conninfo, **options, turns=args.turns)
    return [row], (
        "postgres: a throwaway local server (fsync on) on 127.0.0.1, started for the run"
    )


if __name__ == "__main__":
    sys.exit(main())
