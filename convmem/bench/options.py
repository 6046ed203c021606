"""Command-line value parsing shared by the benchmark commands."""

from __future__ import annotations

import argparse


def parse_counts(text: str, *, what: str) -> list[int]:
    """Parses ``"100,1k,10_000"`` into positive ints (``k`` = thousands), in the given order.

    Raises:
        argparse.ArgumentTypeError: a part is not a number, is not positive, or nothing is given.
    """
    out: list[int] = []
    for raw in text.split(","):
        part = raw.strip().lower().replace("_", "")
        if not part:
            continue
        scale = 1
        if part.endswith("k"):
            part, scale = part[:-1], 1000
        try:
            value = round(float(part) * scale)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not a {what}: {raw.strip()!r}") from None
        if value < 1:
            raise argparse.ArgumentTypeError(f"a {what} must be positive, got {value}")
        out.append(value)
    if not out:
        raise argparse.ArgumentTypeError(f"no {what} given")
    return out
