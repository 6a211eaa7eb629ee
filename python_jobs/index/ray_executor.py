"""Embed on a Ray cluster (`vars.embedding.executor: ray`): only the model calls move.

The embedding job stays one process that plans, commits and publishes (python_jobs/index/embed.py). With
this executor it hands over the texts its commit batches will embed, in their order, to a Ray Data
pipeline: `map_batches` over an actor pool in which each actor loads the model once (`load_embedder`, so
the same backend and batch size as a local run), and it reads the vectors back in that same order
(`preserve_order`), one commit batch at a time, while the actors embed the next ones. The vector cache,
the commit batches, the ledger and the publish are the local run's code; so is the crash safety.

What can fail, and what happens then:
- an actor dies mid-batch: Ray restarts it and retries the batch (`vars.embedding.ray.retries`); that
  batch had not reached the committer, so nothing is written twice;
- the job is killed (kill -9): a local Ray started for the run dies with it (Ray's processes share the
  fate of the process that started them), and the rerun plans again from the index and the cache, so
  what the killed run committed is not embedded again;
- Ray missing, a cluster that does not answer, a pool the cluster has no room for (GPUs, CPUs): one
  error naming the setting, exit code 2, within `vars.embedding.ray.timeout_seconds`.

Ray is imported here only, and only when a run has something to embed with `executor: ray` (importing
ray and Ray Data takes a few seconds).

Example:
    RP_VARS='{embedding: {executor: ray}}' rp embed                 # a local Ray on this machine's CPUs
    RP_RAY_ADDRESS=ray://head:10001 RP_VARS='{embedding: {executor: ray, ray: {num_gpus: 1}}}' rp embed
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import sys
import tempfile
import threading
import warnings
from collections.abc import Iterable, Iterator
from pathlib import Path

import numpy as np
import pyarrow as pa

from python_jobs.common.errors import ConfigError, PipelineError
from python_jobs.common.failpoints import ENV_POINT, failpoint
from python_jobs.common.settings import EmbeddingSettings, RaySettings
from python_jobs.index.encoders import Embedder, SentenceTransformerEmbedder, load_embedder

ENV_RAY_ADDRESS = "RP_RAY_ADDRESS"
ADDRESS_SETTING = "vars.embedding.ray.address"
# In an actor, after a batch is embedded and before its vectors are returned: the batch is lost with the actor.
ACTOR_FAILPOINT = "ray_actor_batch"
# A file: when set, the actor failpoint fires in the first actor process that reaches it only (a restarted
# actor is a new process, so a failpoint counted per process would kill every replacement too).
ENV_FAILPOINT_ONCE = "RP_FAILPOINT_ONCE"
INSTALL = ".venv/bin/pip install -c constraints.txt 'ray[data]==2.60.0'"


def on_executor(embedder: Embedder, settings: EmbeddingSettings) -> Embedder:
    """The configured model where vars.embedding.executor runs it: `embedder` itself, or a Ray actor pool."""
    if settings.executor != "ray" or not isinstance(embedder, SentenceTransformerEmbedder):
        return embedder
    return RayEmbedder(embedder)


class RayEmbedder:
    """The model of `local` (same files, settings and fingerprint), run on a Ray actor pool. Nothing starts
    until texts are encoded: a run with nothing to embed never imports Ray."""

    def __init__(self, local: SentenceTransformerEmbedder):
        self.model_name = local.model.name
        self.settings = local.settings
        self.cache_dir = local.cache_dir
        self.fingerprint = local.fingerprint
        self.loaded = False
        self.actors = 0  # the size of the last pool

    def encode(self, texts: list[str]) -> np.ndarray:
        """One list of texts through the pool (a run streams many: `encode_stream`)."""
        stream = self.encode_stream([texts])
        try:
            return next(stream)
        finally:
            stream.close()

    def encode_stream(self, batches: Iterable[list[str]]) -> Iterator[np.ndarray]:
        """The vectors of each list of `batches`, in order, a list at a time, as soon as the pool has them.

        Every list is read first and put into Ray's object store (which spills to disk), so the pool never
        waits on the caller; the caller commits each list's vectors while the pool embeds the next ones.
        """
        pool = self.settings.ray
        if pool.num_gpus and self.settings.backend != "torch":
            raise ConfigError(
                f"vars.embedding.ray.num_gpus is {pool.num_gpus:g} but vars.embedding.backend is "
                f"{self.settings.backend}: the GPU path runs the torch backend; set the backend to torch or "
                "num_gpus to 0"
            )
        ray = _import_ray()
        dimension = self.fingerprint.dimension
        with _connected(ray, self.settings.ray) as where:
            blocks, sizes = _put(ray, batches)
            if not blocks:
                yield from (np.zeros((0, dimension), np.float32) for _ in sizes)
                return
            self.actors = _pool_size(ray, self.settings, where)
            dataset = _dataset(ray, blocks, self)
            for vectors in _in_batches(_vector_blocks(dataset, where), sizes, dimension):
                self.loaded = True
                yield vectors


class _ModelActor:
    """One replica of the model in a Ray actor: loaded once, then a batch of texts per call."""

    def __init__(self, model_name: str, settings: EmbeddingSettings, cache_dir: str, fingerprint_id: str, threads: int):
        if settings.backend == "torch":
            import torch

            torch.set_num_threads(threads)
        embedder = load_embedder(model_name, settings, Path(cache_dir))
        if embedder.fingerprint.id != fingerprint_id:
            raise ConfigError(
                f"vars.retrieval.embedding_model={model_name!r} is another model on the Ray worker "
                f"{socket.gethostname()} (fingerprint {embedder.fingerprint.id}, the job's is {fingerprint_id}): "
                "install the same model files on every node"
            )
        if settings.ray.num_gpus:
            _to_gpu(embedder)
        embedder.encode(["warm up"])  # the model loads now, within the pool's start timeout, not in a batch
        self.embedder = embedder

    def __call__(self, batch: pa.Table) -> pa.Table:
        vectors = self.embedder.encode(batch.column("text").to_pylist())
        _failpoint_once(ACTOR_FAILPOINT)
        flat = pa.array(np.ascontiguousarray(vectors, np.float32).reshape(-1))
        return pa.table(
            {"seq": batch.column("seq"), "vector": pa.FixedSizeListArray.from_arrays(flat, vectors.shape[1])}
        )


# --- the cluster ------------------------------------------------------------------------------


def _import_ray():
    try:
        import ray
        import ray.data
    except ImportError as exc:
        raise ConfigError(
            f"vars.embedding.executor is ray but Ray cannot be imported ({exc}): install it with `{INSTALL}` "
            "(pinned in pyproject.toml), or set vars.embedding.executor to local"
        ) from None
    return ray


@contextlib.contextmanager
def _connected(ray, settings: RaySettings) -> Iterator[str]:
    """Ray for this run: the cluster at RP_RAY_ADDRESS (or vars.embedding.ray.address), else a local Ray
    started now and stopped at the end. Yields how to name it in messages."""
    if ray.is_initialized():  # a caller (a notebook, an orchestrator) connected already: use theirs, keep it
        yield "the Ray cluster this process is connected to"
        return
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")  # never report usage to anyone
    # Ray's C++ core logs to stderr: fatal only (what goes wrong reaches the job as an exception). Set
    # RAY_BACKEND_LOG_LEVEL=info to see it all, and Ray's own logs are in /tmp/ray/session_latest/logs.
    os.environ.setdefault("RAY_BACKEND_LOG_LEVEL", "fatal")
    address = os.environ.get(ENV_RAY_ADDRESS) or settings.address
    setting = ENV_RAY_ADDRESS if os.environ.get(ENV_RAY_ADDRESS) else ADDRESS_SETTING
    quiet = {"include_dashboard": False, "logging_level": logging.ERROR, "log_to_driver": False}
    # Ray prints what goes wrong on the workers (a task retried, an actor restarted) to stdout, which carries
    # the job's results (--json): to stderr with them, from before Ray starts until it is stopped.
    with contextlib.redirect_stdout(sys.stderr):
        if address:
            where = f"the Ray cluster at {address} ({setting})"
            _check_reachable(address, setting, settings.timeout_seconds)
            what = f"{setting}={address!r}"
            session = _init_within(ray, settings.timeout_seconds, what, address=address, **quiet)
        else:
            cpus = settings.actors * settings.threads_per_actor if settings.actors else len(os.sched_getaffinity(0))
            where = f"the local Ray started for this run ({cpus} CPUs)"
            # `local`: a new Ray for this run, never one `ray start` left running. It advertises 127.0.0.1 and
            # asks for Ray's token authentication.
            local = {"address": "local", "num_cpus": cpus, "_node_ip_address": "127.0.0.1"}
            session = _init_within(ray, settings.timeout_seconds, "starting a local Ray", **local, **quiet)
        try:
            yield where
        finally:
            ray.shutdown()
            session.set()


def _check_reachable(address: str, setting: str, timeout: float) -> None:
    """A cluster address that nothing answers on fails now: Ray itself would retry for minutes."""
    if address in ("auto", "local"):
        return
    host, _, port = address.removeprefix("ray://").rpartition(":")
    if not host or not port.isdigit():
        raise ConfigError(f"{setting}={address!r} is not a Ray address: use host:port, ray://host:port or auto")
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=min(timeout, 10.0)).close()
    except OSError as exc:
        raise ConfigError(
            f"{setting}={address!r}: nothing answers at {host}:{port} ({exc.strerror or exc}); start the cluster "
            f"(`ray start --head`), fix the address, or unset it to start a local Ray for the run"
        ) from None


def _init_within(ray, timeout: float, what: str, **options) -> threading.Event:
    """`ray.init`, given up on after `timeout` seconds (a port that answers but is not Ray can hang it).

    It runs in a thread that then waits until the returned event is set, after `ray.shutdown`: a local Ray's
    processes are tied to the thread that started them (PR_SET_PDEATHSIG) and would die with it.
    """
    outcome: list[BaseException | None] = []
    started, finished = threading.Event(), threading.Event()

    def init() -> None:
        try:
            with warnings.catch_warnings():
                # Ray starts its processes with fork + exec: nothing of lancedb's runtime runs in them.
                warnings.filterwarnings("ignore", message="lancedb fork support is experimental")
                ray.init(**options)
            outcome.append(None)
        except BaseException as exc:
            outcome.append(exc)
        started.set()
        finished.wait()

    with _quiet_stderr():
        threading.Thread(target=init, name="ray-init", daemon=True).start()
        ready = started.wait(timeout)
    if not ready:
        finished.set()
        raise ConfigError(
            f"{what}: Ray did not connect within {timeout:g} s (vars.embedding.ray.timeout_seconds); check that "
            "the address is a Ray cluster's and that it runs the same Ray version (2.60.0)"
        )
    if outcome[0] is not None:
        finished.set()
        raise ConfigError(f"{what}: Ray failed to start or connect ({_first_line(outcome[0])})") from None
    return finished


def _pool_size(ray, settings: EmbeddingSettings, where: str) -> int:
    """How many actors the pool gets; a pool the cluster has no room for is a config error, not a wait."""
    pool = settings.ray
    resources = ray.cluster_resources()
    cpus, gpus = resources.get("CPU", 0.0), resources.get("GPU", 0.0)
    if pool.num_gpus > gpus:
        raise ConfigError(
            f"vars.embedding.ray.num_gpus is {pool.num_gpus:g} but {where} has {gpus:g} GPUs: set it to 0 to embed "
            f"on CPUs, or join a cluster with GPUs ({ENV_RAY_ADDRESS})"
        )
    if pool.threads_per_actor > cpus:
        raise ConfigError(
            f"vars.embedding.ray.threads_per_actor is {pool.threads_per_actor} but {where} has {cpus:g} CPUs"
        )
    room = int(cpus // pool.threads_per_actor)
    if pool.num_gpus:
        room = min(room, int(gpus // pool.num_gpus))
    if pool.actors > room:
        raise ConfigError(
            f"vars.embedding.ray.actors is {pool.actors} but {where} has room for {room} ({cpus:g} CPUs, "
            f"{pool.threads_per_actor} per actor"
            + (f"; {gpus:g} GPUs, {pool.num_gpus:g} per actor)" if pool.num_gpus else ")")
        )
    return pool.actors or room


def _to_gpu(embedder: SentenceTransformerEmbedder) -> None:
    import torch

    if not torch.cuda.is_available():
        raise ConfigError(
            f"vars.embedding.ray.num_gpus is set but torch on the Ray worker {socket.gethostname()} sees no CUDA "
            "device: install a CUDA build of torch on the GPU nodes, or set num_gpus to 0"
        )
    embedder._encoder().model.to("cuda")  # the process's one loaded copy (encoders._load_encoder caches it)


# --- the pipeline -----------------------------------------------------------------------------


def _put(ray, batches: Iterable[list[str]]) -> tuple[list, list[int]]:
    """Each list of texts as one block in the object store, numbered across lists; the lists' sizes."""
    blocks, sizes, seq = [], [], 0
    for texts in batches:
        sizes.append(len(texts))
        if texts:
            numbers = pa.array(np.arange(seq, seq + len(texts), dtype=np.int64))
            blocks.append(ray.put(pa.table({"seq": numbers, "text": pa.array(texts, pa.string())})))
            seq += len(texts)
    return blocks, sizes


def _dataset(ray, blocks: list, embedder: RayEmbedder):
    settings, pool = embedder.settings, embedder.settings.ray
    context = ray.data.DataContext.get_current()
    context.execution_options.preserve_order = True  # the committer takes the vectors in the plan's order
    context.enable_progress_bars = False  # the job's own bar counts committed texts
    context.print_on_execution_start = False
    context.wait_for_min_actors_s = max(1, round(pool.timeout_seconds))
    logging.getLogger("ray.data").setLevel(logging.ERROR)
    with warnings.catch_warnings():
        # Ray 2.60 names no parameter for actor restarts; `ray_remote_args` (deprecated) is the way to bound them.
        warnings.filterwarnings("ignore", message="`ray_remote_args` is deprecated")
        return ray.data.from_arrow_refs(blocks).map_batches(
            _ModelActor,
            fn_constructor_kwargs={
                "model_name": embedder.model_name,
                "settings": settings,
                "cache_dir": str(embedder.cache_dir),
                "fingerprint_id": embedder.fingerprint.id,
                "threads": pool.threads_per_actor,
            },
            batch_size=None,  # a whole commit batch per call: the model batches it by batch_size, as a local run does
            batch_format="pyarrow",
            compute=ray.data.ActorPoolStrategy(size=embedder.actors),
            num_cpus=pool.threads_per_actor,
            num_gpus=pool.num_gpus or None,
            max_restarts=pool.retries,
            max_task_retries=pool.retries,
        )


def _vector_blocks(dataset, where: str) -> Iterator[pa.Table]:
    try:
        yield from dataset.iter_batches(batch_size=None, batch_format="pyarrow", prefetch_batches=1)
    except PipelineError:
        raise
    except Exception as exc:  # Ray wraps what went wrong on the workers in its own exception types
        cause = _root_cause(exc)
        if isinstance(cause, ConfigError):
            raise ConfigError(str(cause)) from None
        if "wait_for_min_actors_s" in str(exc) or "Timed out while starting actors" in str(exc):
            raise ConfigError(
                f"the Ray actor pool did not start within vars.embedding.ray.timeout_seconds on {where} "
                f"({_first_line(exc)})"
            ) from None
        raise PipelineError(
            f"embedding on {where} failed ({_first_line(cause)}); nothing uncommitted was written: run "
            "`make embed` again to go on from the last commit"
        ) from None


def _in_batches(blocks: Iterable[pa.Table], sizes: list[int], dimension: int) -> Iterator[np.ndarray]:
    """The vectors of `blocks` (rows numbered 0, 1, ... across them) cut back into lists of `sizes`."""
    wanted = iter(sizes)
    size = next(wanted, None)
    while size == 0:
        yield np.zeros((0, dimension), np.float32)
        size = next(wanted, None)
    parts: list[np.ndarray] = []
    held = expected = 0
    for block in blocks:
        seq = block.column("seq").to_numpy()
        if seq.size and not np.array_equal(seq, np.arange(expected, expected + seq.size)):
            raise PipelineError(f"Ray returned vectors out of order (row {int(seq[0])} where {expected} was due)")
        expected += seq.size
        flat = block.column("vector").combine_chunks().flatten().to_numpy(zero_copy_only=False)
        parts.append(np.asarray(flat, np.float32).reshape(-1, dimension))
        held += seq.size
        while size is not None and held >= size:
            joined = np.concatenate(parts) if len(parts) > 1 else parts[0]
            yield np.ascontiguousarray(joined[:size])
            parts, held = [joined[size:]], held - size
            size = next(wanted, None)
            while size == 0:
                yield np.zeros((0, dimension), np.float32)
                size = next(wanted, None)
    if size is not None:
        raise PipelineError(f"Ray returned {expected} vectors, fewer than the {sum(sizes)} texts sent")


# --- small helpers ----------------------------------------------------------------------------


@contextlib.contextmanager
def _quiet_stderr() -> Iterator[None]:
    """Hold back what Ray's C++ core writes to stderr (fd 2) while it starts, then pass it on without the line
    that says which log level it read from RAY_BACKEND_LOG_LEVEL (printed whatever the level)."""
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as held:
        os.dup2(held.fileno(), 2)
        try:
            yield
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            held.seek(0)
            lines = held.read().decode("utf-8", "replace").splitlines(keepends=True)
            sys.stderr.write("".join(line for line in lines if "RAY_BACKEND_LOG_LEVEL" not in line))


def _failpoint_once(name: str) -> None:
    """`failpoint(name)`, in one process only when RP_FAILPOINT_ONCE names a marker file (see above)."""
    if os.environ.get(ENV_POINT, "").partition(":")[0] != name:
        return
    marker = os.environ.get(ENV_FAILPOINT_ONCE)
    if marker:
        try:
            os.close(os.open(marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY))
        except FileExistsError:
            return
    failpoint(name)


def _root_cause(exc: BaseException) -> BaseException:
    """The worker's own exception inside Ray's wrappers (RayTaskError keeps it as `cause`)."""
    seen = set()
    while id(exc) not in seen:
        seen.add(id(exc))
        inner = getattr(exc, "cause", None) or exc.__cause__
        if not isinstance(inner, BaseException):
            break
        exc = inner
    return exc


def _first_line(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0]
