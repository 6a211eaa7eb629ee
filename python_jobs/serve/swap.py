"""Serve the published index, and swap in a newly published version without a restart.

The service polls live.json (`vars.serve.index_poll_seconds`). When it names another table or
version, the new version is opened beside the one being served, warmed up (a search in each mode, so
the first real request does not pay for first-time work), and then swapped in with one reference
assignment. A request takes the served version once, when it starts, and keeps it to the end: requests
in flight finish on the version they started with, and new requests get the new one. If the new version
cannot be opened, the old one stays served and the failure is reported on /readyz and in /metrics.

The query embedder is the expensive part (the model): it is reused across swaps when the new version
was built by the same model fingerprint, and loaded again only when the model changed (a new table).

Searches run in a small pool of `Retriever`s per version, one request per retriever at a time: a
retriever keeps per-search state, so one instance is not shared between threads. All of them share
one embedder, which batches the questions of concurrent requests (`SharedEmbedder`).
"""

from __future__ import annotations

import contextlib
import logging
import queue
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import numpy as np

from python_jobs.common.errors import PipelineError
from python_jobs.common.settings import Settings
from python_jobs.index.encoders import Embedder, ModelFingerprint, load_embedder
from python_jobs.index.store import MODEL_CACHE_DIR, LivePointer, VectorIndex
from python_jobs.search.retriever import MODES, Retriever

log = logging.getLogger(__name__)

POOL_SIZE = 4  # searches of one version that run at once; more requests wait for a free retriever
# A retriever remembers the vector of every question it embedded; past this many it forgets them.
QUERY_VECTORS_KEPT = 2048
WARM_UP_QUERY = "warm up the index"


class SharedEmbedder:
    """One loaded model for every retriever of every version, encoding one batch at a time.

    Questions that arrive while the model is busy are encoded together in the next batch (group commit):
    the first waiting request encodes everything queued, the others take their rows. A forward pass of
    a few short questions costs little more than one, so concurrent requests share it, and one encode at
    a time also keeps the tokenizer, which is not thread-safe, to one thread.
    """

    def __init__(self, embedder: Embedder, on_batch: Callable[[int], None] | None = None):
        self._embedder = embedder
        self._on_batch = on_batch or (lambda size: None)
        self.fingerprint: ModelFingerprint = embedder.fingerprint
        self._ready = threading.Condition()
        self._queue: list[_Pending] = []
        self._busy = False

    def encode(self, texts: list[str]) -> np.ndarray:
        mine = _Pending(list(texts))
        with self._ready:
            self._queue.append(mine)
            while not mine.done and self._busy:
                self._ready.wait()
            if mine.done:  # a batch run by another request held it
                return mine.result()
            self._busy, batch, self._queue = True, self._queue, []
        try:
            texts = [text for pending in batch for text in pending.texts]
            self._on_batch(len(texts))
            vectors = self._embedder.encode(texts)
            start = 0
            for pending in batch:
                pending.vectors = vectors[start : start + len(pending.texts)]
                start += len(pending.texts)
        except Exception as exc:  # every request of the batch gets the error, as its own
            for pending in batch:
                pending.error = exc
        finally:
            with self._ready:
                for pending in batch:
                    pending.done = True
                self._busy = False
                self._ready.notify_all()
        return mine.result()


@dataclass
class _Pending:
    texts: list[str]
    vectors: np.ndarray | None = None
    error: BaseException | None = None
    done: bool = False

    def result(self) -> np.ndarray:
        if self.error is not None:
            raise PipelineError(f"embedding the question failed: {self.error}") from self.error
        assert self.vectors is not None
        return self.vectors


@dataclass
class ServedIndex:
    """One published version, open, with its pool of retrievers."""

    pointer: LivePointer
    rows: int
    embedder: SharedEmbedder
    opened_at: float
    _pool: queue.Queue = field(default_factory=queue.Queue, repr=False)

    @property
    def table(self) -> str:
        return self.pointer.table

    @property
    def version(self) -> int:
        return self.pointer.version

    @contextlib.contextmanager
    def retriever(self) -> Iterator[Retriever]:
        retriever = self._pool.get()
        try:
            yield retriever
        finally:
            # Bounded memory: Retriever caches every question's vector for the evaluation's many passes.
            if len(retriever._query_vectors) > QUERY_VECTORS_KEPT:
                retriever._query_vectors.clear()
            self._pool.put(retriever)


class IndexHolder:
    """The version being served, and the poller's work of replacing it."""

    def __init__(
        self,
        settings: Settings,
        pool_size: int = POOL_SIZE,
        on_swap: Callable[[ServedIndex], None] | None = None,
        on_embedder_load: Callable[[], None] | None = None,
        on_embed_batch: Callable[[int], None] | None = None,
    ):
        self.settings = settings
        self.pool_size = pool_size
        self.current: ServedIndex | None = None
        self.error: str | None = None
        self._embedder: SharedEmbedder | None = None
        self._on_swap = on_swap or (lambda served: None)
        self._on_embedder_load = on_embedder_load or (lambda: None)
        self._on_embed_batch = on_embed_batch
        self._lock = threading.Lock()  # one refresh at a time

    def refresh(self) -> bool:
        """Open and swap in the published version if it is not the one served; whether it swapped."""
        with self._lock:
            try:
                pointer = VectorIndex(self.settings.index_dir).live()
            except PipelineError as exc:
                return self._failed(str(exc))
            if pointer is None:
                if self.current is None:
                    self.error = f"no published index in {self.settings.index_dir}: run `make embed` first"
                return False
            current = self.current
            if current is not None and (current.table, current.version) == (pointer.table, pointer.version):
                return False
            try:
                served = self._open(pointer)
            except PipelineError as exc:
                return self._failed(str(exc))
            except Exception as exc:  # a half-written or removed table: keep serving the old version
                log.exception("cannot open index %s v%s", pointer.table, pointer.version)
                return self._failed(f"cannot open index {pointer.table} v{pointer.version}: {exc}")
            self.current, self.error = served, None
        log.info("serving index %s v%s (%d chunks)", served.table, served.version, served.rows)
        self._on_swap(served)
        return True

    def _failed(self, message: str) -> bool:
        if message != self.error:
            log.error("%s%s", message, "; still serving the version before" if self.current else "")
        self.error = message
        return False

    def _open(self, pointer: LivePointer) -> ServedIndex:
        embedder = self._shared_embedder(pointer)
        pool: queue.Queue = queue.Queue()
        retrievers = []
        for _ in range(self.pool_size):
            retriever = Retriever(self.settings, embedder=embedder)
            # Each retriever reads live.json itself: if it moved meanwhile, open this round again later.
            if (retriever.pointer.table, retriever.pointer.version) != (pointer.table, pointer.version):
                raise PipelineError(
                    f"live.json moved from {pointer.table} v{pointer.version} while it was being opened; retrying"
                )
            retrievers.append(retriever)
        for mode in MODES:  # the first search of each kind does one-time work (index files, the model)
            retrievers[0].search(WARM_UP_QUERY, mode, k=1)
        for retriever in retrievers:
            pool.put(retriever)
        return ServedIndex(pointer, retrievers[0].row_count, embedder, time.time(), pool)

    def _shared_embedder(self, pointer: LivePointer) -> SharedEmbedder:
        """The loaded model if it is the one that built this version, else the right one, loaded."""
        model = pointer.model
        if self._embedder is not None and self._embedder.fingerprint.id == model["id"]:
            return self._embedder
        # As Retriever loads it: the configured settings where they match the index's model.
        settings = self.settings.embedding.model_copy(
            update={"backend": model["backend"], "normalize": model["normalized"]}
        )
        embedder = load_embedder(model["name"], settings, self.settings.index_dir.scratch / MODEL_CACHE_DIR)
        if embedder.fingerprint.id != model["id"]:
            raise PipelineError(
                f"the index {pointer.table} was built with {model['name']} fingerprint {model['id']}, but that "
                f"model now has fingerprint {embedder.fingerprint.id} (its files changed): run `make embed`"
            )
        self._embedder = SharedEmbedder(embedder, self._on_embed_batch)
        self._on_embedder_load()
        return self._embedder
