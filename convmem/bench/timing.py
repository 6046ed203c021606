"""Timing a call: repeat it to a target time, and cut it off in a forked process at a cap.

:func:`measure` times a call in this process; :func:`measure_capped` runs it in a forked
process that is killed when the cap has passed, so one call that takes minutes (LlamaIndex's
buffer at 10k messages) cannot stall a benchmark. Both return raw :class:`Samples`;
:func:`percentile` summarises them. Nothing here knows what is being timed.
"""

from __future__ import annotations

import gc
import math
import multiprocessing
import time
from collections.abc import Callable, Sequence, Sized
from dataclasses import dataclass, field
from typing import Any

DEFAULT_CELL_SECONDS = 0.5
"""Each cell repeats its call for about this long (at least :data:`MIN_CALLS` calls)."""
DEFAULT_CAP_SECONDS = 20.0
"""A capped cell stops after this long, even in the middle of a call."""
MIN_CALLS = 3
MAX_CALLS = 20_000


@dataclass
class Samples:
    """Raw timings of one cell.

    Attributes:
        times_ns: Timed calls, in nanoseconds.
        kept: ``len()`` of what the first call returned.
        capped: The cap stopped the cell early.
        unfinished_ns: How long the call cut by the cap had run (0 if none was cut).
        error: An error the call raised, as text.
        seconds: Wall time of the cell.
    """

    times_ns: list[int] = field(default_factory=list)
    kept: int | None = None
    capped: bool = False
    unfinished_ns: int = 0
    error: str | None = None
    seconds: float = 0.0


def _loop(
    fn: Callable[[], Sized],
    *,
    repeats: int | None,
    target_s: float,
    cap_s: float,
    emit: Callable[[str, int], None],
) -> None:
    """Calls ``fn`` until it has enough samples, emitting ``(kind, value)`` as it goes.

    Kinds: ``kept`` (len of the first result), ``warmup`` and ``sample`` (ns), ``capped``.
    With ``repeats`` None: one warm-up call (unless it took a quarter of the cap), then calls until
    ``target_s`` has passed and at least :data:`MIN_CALLS` were timed. A call whose
    predicted end is past ``cap_s`` is not started.
    """
    start = time.perf_counter_ns()
    cap_ns = int(cap_s * 1e9)
    timed = 0
    first = True
    while True:
        t0 = time.perf_counter_ns()
        result = fn()
        dt = time.perf_counter_ns() - t0
        if first:
            emit("kept", len(result))
        # An expensive first call is kept as a sample: there is no time to throw it away.
        if first and repeats is None and dt < cap_ns / 4:
            emit("warmup", dt)
        else:
            emit("sample", dt)
            timed += 1
        first = False
        elapsed = time.perf_counter_ns() - start
        if repeats is not None:
            done = timed >= repeats
        else:
            done = timed >= MAX_CALLS or (timed >= MIN_CALLS and elapsed >= target_s * 1e9)
        if done:
            return
        if elapsed + dt > cap_ns:
            emit("capped", 0)
            return


def measure(
    fn: Callable[[], Sized],
    *,
    repeats: int | None = None,
    target_s: float = DEFAULT_CELL_SECONDS,
    cap_s: float = DEFAULT_CAP_SECONDS,
) -> Samples:
    """Times ``fn`` in this process (the cap is checked between calls only).

    Args:
        fn: The call; it returns what it built (its ``len()`` is recorded once).
        repeats: Timed calls; None auto-scales to ``target_s``.
        target_s: Target time when auto-scaling.
        cap_s: No call is started that would end after this.
    """
    out = Samples()
    t0 = time.perf_counter()

    def emit(kind: str, value: int) -> None:
        if kind == "kept":
            out.kept = value
        elif kind == "sample":
            out.times_ns.append(value)
        elif kind == "capped":
            out.capped = True

    gc.collect()
    try:
        _loop(fn, repeats=repeats, target_s=target_s, cap_s=cap_s, emit=emit)
    except Exception as exc:  # a failing row is reported, the others still run
        out.error = f"{type(exc).__name__}: {exc}"
    out.seconds = time.perf_counter() - t0
    return out


def _child(
    conn: Any, fn: Callable[[], Sized], repeats: int | None, target_s: float, cap_s: float
) -> None:
    # The child shares the parent's memory copy-on-write; the first full collection writes
    # to every object's header and copies the whole heap (~0.5 s). Pay it before timing.
    gc.collect()
    conn.send(("ready", 0))
    try:
        _loop(
            fn,
            repeats=repeats,
            target_s=target_s,
            cap_s=cap_s,
            emit=lambda kind, value: conn.send((kind, value)),
        )
        conn.send(("done", 0))
    except Exception as exc:
        conn.send(("error", f"{type(exc).__name__}: {exc}"))
    finally:
        conn.close()


def measure_capped(
    fn: Callable[[], Sized],
    *,
    repeats: int | None = None,
    target_s: float = DEFAULT_CELL_SECONDS,
    cap_s: float = DEFAULT_CAP_SECONDS,
) -> Samples:
    """Times ``fn`` in a forked process that is killed when ``cap_s`` has passed.

    A single call can take longer than any sensible benchmark (LlamaIndex's buffer at 10k
    messages): the calls finished by the cap are kept, and when none finished,
    :attr:`Samples.unfinished_ns` says how long the cut call had run (a lower bound). Where
    ``fork`` is not available it falls back to :func:`measure`, which cannot cut a call.
    """
    if "fork" not in multiprocessing.get_all_start_methods():
        return measure(fn, repeats=repeats, target_s=target_s, cap_s=cap_s)
    ctx = multiprocessing.get_context("fork")
    receiver, sender = ctx.Pipe(duplex=False)
    out = Samples()
    gc.collect()
    t0 = time.perf_counter()
    proc = ctx.Process(target=_child, args=(sender, fn, repeats, target_s, cap_s), daemon=True)
    proc.start()
    sender.close()
    deadline = t0 + cap_s
    last = time.perf_counter()
    finished = False
    try:
        while not finished:
            remaining = deadline - time.perf_counter()
            if remaining <= 0 or not receiver.poll(remaining):
                out.capped = True
                out.unfinished_ns = int((time.perf_counter() - last) * 1e9)
                break
            try:
                kind, value = receiver.recv()
            except EOFError:
                out.error = f"the measuring process died (exit code {proc.exitcode})"
                break
            # A call starts right after a message: the cut call ran from the last one.
            last = time.perf_counter()
            if kind == "kept":
                out.kept = int(value)
            elif kind == "sample":
                out.times_ns.append(int(value))
            elif kind == "capped":
                out.capped = True
            elif kind == "error":
                out.error = str(value)
                finished = True
            elif kind == "done":
                finished = True
    finally:
        if proc.is_alive():
            proc.kill()
        proc.join()
        receiver.close()
    out.seconds = time.perf_counter() - t0
    return out


def percentile(sorted_values: Sequence[float], q: float) -> float:
    """Linear-interpolated percentile (``q`` in [0, 1]) of sorted values."""
    if len(sorted_values) == 1:
        return float(sorted_values[0])
    pos = q * (len(sorted_values) - 1)
    lo = math.floor(pos)
    hi = min(lo + 1, len(sorted_values) - 1)
    return float(sorted_values[lo] + (sorted_values[hi] - sorted_values[lo]) * (pos - lo))


__all__ = [
    "DEFAULT_CAP_SECONDS",
    "DEFAULT_CELL_SECONDS",
    "MAX_CALLS",
    "MIN_CALLS",
    "Samples",
    "measure",
    "measure_capped",
    "percentile",
]
