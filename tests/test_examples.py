"""Every script in examples/ runs as documented (the README quotes them)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
OFFLINE = ["truncate.py", "testing_your_loop.py"]
NEEDS_EMBEDDINGS = ["vector_recall.py"]
NEEDS_LLAMA = [
    "quickstart.py",
    "rolling_summary.py",
    "pipeline.py",
    "wrap_loop.py",
    "wrap_async_stream.py",
]


def run(name: str) -> str:
    env = dict(os.environ, PYTHONWARNINGS="ignore")
    proc = subprocess.run(
        [sys.executable, str(EXAMPLES / name)],
        capture_output=True,
        text=True,
        timeout=600,
        env=env,
        check=False,
    )
    assert proc.returncode == 0, f"{name} failed:\n{proc.stdout}\n{proc.stderr[-3000:]}"
    return proc.stdout


def test_every_example_is_listed() -> None:
    assert sorted(p.name for p in EXAMPLES.glob("*.py")) == sorted(
        OFFLINE + NEEDS_EMBEDDINGS + NEEDS_LLAMA
    )


@pytest.mark.parametrize("name", OFFLINE)
def test_offline_examples(name: str) -> None:
    out = run(name)
    assert out.strip()


@pytest.mark.recall
def test_vector_recall_example() -> None:
    assert "Okonkwo" in run("vector_recall.py")


@pytest.mark.llama
@pytest.mark.parametrize("name", NEEDS_LLAMA)
def test_llama_examples(name: str) -> None:
    out = run(name)
    assert "ContextPlan[" in out
