"""Many processes, one conversation; writers killed with SIGKILL; summarisers racing.

Run against SQLite and a real PostgreSQL server. Child processes are forked (each opens the
store again: a store is never shared across a fork).
"""

from __future__ import annotations

import multiprocessing
import os
import random
import signal
import threading
import time
from typing import Any

import pytest

from convmem.history import Summary
from convmem.messages import open_tool_call_ids
from convmem.stores import Head

FORK = multiprocessing.get_context("fork")
WRITERS = 8
APPENDS = 200


def _writer(spec: Any, worker: int, barrier: Any, errors: Any) -> None:
    try:
        store = spec.open()
        barrier.wait(timeout=60)
        head = store.head("shared")
        for i in range(APPENDS):
            head = store.append(
                "shared",
                [
                    {"role": "user", "content": f"w{worker} #{i}"},
                    {"role": "assistant", "content": f"ok w{worker} #{i}"},
                ],
                # The head of its own last write: stale whenever another process wrote since, and
                # the append policy then writes after the new head.
                expected_head=head,
                idempotency_key=f"w{worker}-{i}",
            ).head
        store.close()
    except BaseException as exc:
        errors.put(f"writer {worker}: {type(exc).__name__}: {exc}")
        raise


def test_eight_processes_append_to_one_conversation(store_spec: Any) -> None:
    store = store_spec.open()
    store.create("shared")
    barrier, errors = FORK.Barrier(WRITERS), FORK.Queue()
    procs = [
        FORK.Process(target=_writer, args=(store_spec, w, barrier, errors)) for w in range(WRITERS)
    ]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=120)
    assert errors.empty(), errors.get()
    assert all(p.exitcode == 0 for p in procs)
    turns = store.load("shared").turns
    assert len(turns) == WRITERS * APPENDS
    assert [t.id for t in turns] == list(range(WRITERS * APPENDS))  # dense, no duplicates
    seen: dict[int, list[int]] = {w: [] for w in range(WRITERS)}
    for turn in turns:
        assert len(turn.messages) == 2  # whole turns: never interleaved message by message
        worker, number = turn.messages[0]["content"][1:].split(" #")
        assert turn.messages[1]["content"] == f"ok w{worker} #{number}"
        seen[int(worker)].append(int(number))
    assert all(order == list(range(APPENDS)) for order in seen.values())  # each in its order
    store.close()


# -- kill -9 ---------------------------------------------------------------------------------------


def _turn(n: int) -> list[dict[str, Any]]:
    """Turn n: every third turn runs a tool (assistant call, tool reply, answer) in one write."""
    if n % 3:
        return [{"role": "user", "content": f"u{n}"}, {"role": "assistant", "content": f"a{n}"}]
    cid = f"call{n}"
    return [
        {"role": "user", "content": f"u{n}"},
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {"id": cid, "type": "function", "function": {"name": "f", "arguments": "{}"}}
            ],
        },
        {"role": "tool", "tool_call_id": cid, "content": f"r{n}"},
        {"role": "assistant", "content": f"a{n}"},
    ]


def _resuming_writer(spec: Any, ack_fd: int) -> None:
    """Resumes the conversation and appends forever, writing each acknowledged turn id."""
    store = spec.open()
    loaded = store.load("crash")
    head = loaded.head if loaded is not None else Head()
    n = head.turn_id + 1
    while True:
        commit = store.append(
            "crash", _turn(n), expected_head=head, on_conflict="raise", idempotency_key=f"t{n}"
        )
        head = commit.head
        os.write(ack_fd, f"{commit.turns[-1].id}\n".encode())
        n += 1


def test_kill_9_at_random_points_loses_at_most_the_turn_in_flight(store_spec: Any) -> None:
    rng = random.Random(10)
    acked: list[int] = []
    for _ in range(20):
        read_fd, write_fd = os.pipe()
        proc = FORK.Process(target=_resuming_writer, args=(store_spec, write_fd))
        proc.start()
        os.close(write_fd)
        time.sleep(rng.uniform(0.05, 0.25))
        os.kill(proc.pid, signal.SIGKILL)
        proc.join()
        with os.fdopen(read_fd) as pipe:
            acked.extend(int(line) for line in pipe.read().split())
        store = store_spec.open()  # always opens
        conv = store.load("crash")
        store.close()
        ids = [t.id for t in conv.turns] if conv else []
        assert ids == list(range(len(ids)))
        assert set(acked) <= set(ids)  # nothing acknowledged is lost
        assert len(ids) - len(acked) <= 1  # at most the turn in flight (committed, unacked)
        acked = ids  # a committed but unacknowledged turn is now known; resume continues
        for turn in conv.turns if conv else []:
            assert turn.messages == tuple(_turn(turn.id))  # whole turns, exactly as written
            assert not open_tool_call_ids(turn.messages)  # no orphaned tool call
    assert len(acked) > 20  # the writers did get work done between kills


# -- two summarisers -------------------------------------------------------------------------------


def test_two_summarisers_racing_one_wins(store_spec: Any) -> None:
    store = store_spec.open()
    for i in range(6):
        store.append(
            "c", [{"role": "user", "content": f"q{i}"}, {"role": "assistant", "content": "a"}]
        )
    seen = store.load("c")
    results: list[bool] = []
    start = threading.Barrier(2)

    def summarise(name: str) -> None:
        mine = store_spec.open()
        start.wait()
        results.append(
            mine.add_summary(
                "c",
                Summary(f"summary by {name}", (0, 1, 2, 3)),
                expected_summaries=len(seen.summaries),
                expected_head=seen.head,
            )
        )
        mine.close()

    threads = [threading.Thread(target=summarise, args=(n,)) for n in ("A", "B")]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(results) == [False, True]
    assert len(store.load("c").summaries) == 1
    store.close()


@pytest.mark.parametrize("policy", ["append", "raise", "fork"])
def test_two_processes_with_stale_heads_under_each_policy(store_spec: Any, policy: str) -> None:
    store = store_spec.open()
    head = store.append("p", [{"role": "user", "content": "start"}]).head
    other = store_spec.open()
    other.append(
        "p",
        [{"role": "assistant", "content": "reply"}, {"role": "user", "content": "B"}],
        expected_head=head,
    )
    other.close()
    if policy == "raise":
        from convmem.errors import ConflictError

        with pytest.raises(ConflictError):
            store.append(
                "p",
                [{"role": "assistant", "content": "A"}],
                expected_head=head,
                on_conflict="raise",
            )
        assert store.turn_ids("p") == [0, 1]
    elif policy == "append":
        from convmem.errors import ConflictError

        # An assistant message continuing turn 0 cannot be moved after turn 1.
        with pytest.raises(ConflictError, match="continue turn 0"):
            store.append("p", [{"role": "assistant", "content": "A"}], expected_head=head)
    else:
        commit = store.append(
            "p", [{"role": "assistant", "content": "A"}], expected_head=head, on_conflict="fork"
        )
        assert [m["content"] for m in store.load(commit.conversation_id).turns[0].messages] == [
            "start",
            "A",
        ]
    assert [m["content"] for t in store.load("p").turns for m in t.messages] == [
        "start",
        "reply",
        "B",
    ]
    store.close()
