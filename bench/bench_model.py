"""Benchmark the model backends and the ANN index, in one run, on real text.

Figures printed, not asserted:
- speed: texts/s of the `torch` backend (fp32), `onnx` (fp32), int8 as first shipped (recipe
  int8-v1: unfused graph, int8 MatMul weights) and `onnx-int8` now, each through the path the
  pipeline uses (`load_embedder(...).encode`), on N chunk texts of NFCorpus cut by the project's
  chunker. The backends take turns on each slice of texts (the order rotating), so a change of load
  on the shared cores hits them alike; the ratio to torch is given both as total time and as the
  median of the per-slice ratios, with the load average before and after. One call per commit batch
  (`commit_rows` texts), as the embed step calls the model; each backend batches by
  `embedding.batch_size` inside the call. `--batch-sizes 32,16` measures torch and onnx-int8 again at
  those batch sizes, the same way;
- quality: cosine of each ONNX backend's vectors to torch's on those texts (min / p1 / p50) and over
  the whole corpus to `onnx` fp32; nDCG@10 of exact vector search on NFCorpus (test split) with
  each backend's vectors, the queries embedded by the same backend, chunks ranked by cosine and
  documents by their best chunk, as `make eval-beir` does (python_jobs.evaluate.metrics scores it).
  Vectors are cached per backend recipe in the work dir: a rerun embeds only texts not seen before;
- ANN: build time of the index `build_ann_index` makes, at 100,000 vectors (more with --ann-rows),
  and recall@10 against exact search on the same queries, searched with the parameters the retriever
  uses; then 10% more rows folded in by `optimize()` (no retraining), timed, and recall again. Two
  vector sets, said in the output: NFCorpus chunk vectors plus Gaussian noise (the distribution of
  real embeddings; queries are NFCorpus's) and uniform random unit vectors (random queries).

Example:
    python bench/bench_model.py
    make bench-model ARGS="--texts 400 --ann-rows 100000,1000000 --json"
    make bench-model ARGS="--skip ndcg --skip ann --batch-sizes 32,16,4"
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import shutil
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import click
import numpy as np
from tqdm import tqdm

from python_jobs.chunk.chunker import build_chunker, chunking_settings
from python_jobs.chunk.markdown import normalize_markdown
from python_jobs.chunk.model_files import resolve_model
from python_jobs.common.output import Summary, emit
from python_jobs.common.settings import PROJECT_DIR, Settings
from python_jobs.evaluate import datasets
from python_jobs.evaluate.metrics import evaluate
from python_jobs.index.encoders import load_embedder
from python_jobs.index.onnx_encoder import LEGACY_INT8, OnnxEncoder
from python_jobs.index.upkeep import ANN_SEARCH, build_ann_index

NFCORPUS = PROJECT_DIR.parent / "shared" / "benchmarks" / "nfcorpus"
# The figure `rp eval-beir ../shared/benchmarks/nfcorpus` published for vector mode (torch, docs/benchmarks.md).
PUBLISHED_VECTOR_NDCG10 = 0.3321
BACKENDS = ("torch", "onnx", "int8-v1", "onnx-int8")
SEED = 7
ENCODE_BLOCK = 256  # texts per encode call while filling the vector cache; the cache is saved every 8 blocks
BATCH_DEPENDENCE_TEXTS = 32
EXACT_TIMED_QUERIES = 30  # queries whose exact (full-scan) search is timed
NOISE = 0.04  # per-dimension sigma of the noise added to real vectors: cosine ~0.79 to the vector it came from


@dataclass
class Speed:
    backend: str
    texts_per_second: float
    vs_torch: float  # total-time ratio
    vs_torch_paired_median: float  # median over slices of torch's time / this backend's time
    cosine_to_torch: dict[str, float] = field(default_factory=dict)  # min / p1 / p50
    # A text's vector encoded alone against the same text encoded in its batch (min / p1 / p50): 1.0 unless
    # the vectors depend on the batch, as dynamic int8 quantization's shared activation scale makes them.
    alone_vs_batched: dict[str, float] = field(default_factory=dict)


@dataclass
class BatchSpeed:
    batch_size: int  # texts per model call
    speed: list[Speed] = field(default_factory=list)  # torch and onnx-int8


@dataclass
class Quality:
    backend: str
    ndcg_at_10: float
    texts_embedded: int  # by this run (the rest came from the work dir's cache)
    cosine_to_fp32: dict[str, float] = field(default_factory=dict)  # over every chunk of the corpus


@dataclass
class AnnFigures:
    vectors: str  # which vector set
    rows: int
    index: str
    build_seconds: float
    recall_at_10: float
    exact_ms_p50: float
    ann_ms_p50: float
    added_rows: int = 0
    optimize_seconds: float = 0.0
    recall_at_10_after_optimize: float = 0.0


@dataclass
class ModelBench(Summary):
    chunks: int
    documents: int
    sample_texts: int
    load_before: list[float]
    load_after: list[float] = field(default_factory=list)
    batch_size: int = 0  # embedding.batch_size of the `speed` figures
    speed: list[Speed] = field(default_factory=list)
    batch_sizes: list[BatchSpeed] = field(default_factory=list)
    quality: list[Quality] = field(default_factory=list)
    ann: list[AnnFigures] = field(default_factory=list)
    seconds: float = 0.0

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    def to_text(self) -> str:
        lines = [
            f"NFCorpus: {self.documents:,} documents, {self.chunks:,} chunks; speed sample {self.sample_texts} texts; "
            f"load average {_load(self.load_before)} before, {_load(self.load_after)} after ({os.cpu_count()} cores)"
        ]
        runs = [BatchSpeed(self.batch_size, self.speed)] if self.speed else []
        for run in [*runs, *self.batch_sizes]:
            lines += [
                "",
                f"batch {run.batch_size:<3d}     texts/s  vs torch (total / paired median)  "
                "cosine to torch min / p1 / p50   alone vs in a batch min / p50",
            ]
            for s in run.speed:
                cosine = " / ".join(f"{s.cosine_to_torch[q]:.4f}" for q in ("min", "p1", "p50"))
                alone = " / ".join(f"{s.alone_vs_batched[q]:.4f}" for q in ("min", "p50"))
                lines.append(
                    f"{s.backend:12s} {s.texts_per_second:8.1f}  {s.vs_torch:5.2f}x / {s.vs_torch_paired_median:5.2f}x"
                    f"{'':20s}{cosine}   {alone}"
                )
        if self.quality:
            lines += ["", f"backend       nDCG@10  (published torch pipeline: {PUBLISHED_VECTOR_NDCG10})"]
            for q in self.quality:
                cosine = " / ".join(f"{q.cosine_to_fp32[k]:.4f}" for k in ("min", "p1", "p50"))
                lines.append(
                    f"{q.backend:12s} {q.ndcg_at_10:8.4f}  cosine to onnx fp32 over the corpus min / p1 / p50: "
                    f"{cosine}; {q.texts_embedded:,} texts embedded now"
                )
        if self.ann:
            lines += ["", "ANN vectors        rows       index                  build s  recall@10  exact/ann ms p50"]
            for a in self.ann:
                lines.append(
                    f"{a.vectors:18s} {a.rows:>9,}  {a.index:22s} {a.build_seconds:7.1f}  {a.recall_at_10:9.3f}  "
                    f"{a.exact_ms_p50:.1f} / {a.ann_ms_p50:.1f}"
                )
                if a.added_rows:
                    lines.append(
                        f"{'':30s}+{a.added_rows:,} rows folded in by optimize(): {a.optimize_seconds:.1f} s, "
                        f"recall@10 {a.recall_at_10_after_optimize:.3f}"
                    )
        lines.append(f"\nwall time {self.seconds:.0f} s")
        return "\n".join(lines)


def _load(values: list[float]) -> str:
    return " ".join(f"{v:.1f}" for v in values)


# --- the corpus --------------------------------------------------------------------------------------


def chunk_corpus(data: Path, workdir: Path) -> tuple[list[str], list[str]]:
    """(doc_id, embedding_text) of every chunk, cut as `make eval-beir` cuts NFCorpus: the landing body
    (lines starting with '#' escaped: plain text), normalized, chunked with personal data redacted.
    Cached under the chunking settings' hash."""
    retrieval = Settings.load().retrieval
    key = chunking_settings(retrieval)["chunking_config_hash"]
    cached = workdir / f"chunks-{key}.json"
    if cached.is_file():
        doc_ids, texts = json.loads(cached.read_text(encoding="utf-8"))
        return doc_ids, texts
    chunker = build_chunker(retrieval)
    doc_ids, texts = [], []
    lines = (data / "corpus.jsonl").read_text(encoding="utf-8").splitlines()
    for line in tqdm(lines, desc="chunking NFCorpus", unit="doc", file=sys.stderr, mininterval=2):
        record = json.loads(line)
        doc_id = str(record["_id"])
        title = str(record.get("title") or "").strip() or doc_id
        body = "\n".join("\\" + row if row.lstrip().startswith("#") else row for row in record["text"].splitlines())
        for chunk in chunker.chunk(doc_id, title, normalize_markdown(body.strip()), redact_pii=True):
            doc_ids.append(doc_id)
            texts.append(chunk.embedding_text)
    workdir.mkdir(parents=True, exist_ok=True)
    cached.write_text(json.dumps([doc_ids, texts]), encoding="utf-8")
    return doc_ids, texts


# --- the backends ------------------------------------------------------------------------------------


class Backend:
    """One backend as the pipeline calls it, with a name for its vectors' cache."""

    def __init__(self, name: str, settings: Settings, cache_dir: Path):
        model_name = settings.retrieval.embedding_model
        self.name = name
        if name == "int8-v1":
            model = resolve_model(model_name)
            self.encoder = OnnxEncoder(
                model.path,
                cache_dir,
                recipe=LEGACY_INT8,
                max_seq_length=model.max_seq_length,
                normalize=settings.embedding.normalize,
            )
            self.batch_size = settings.embedding.batch_size
            self.key = f"{name}-{self.encoder.model_path.stem}"
        else:
            embedding = settings.embedding.model_copy(update={"backend": name})
            self.embedder = load_embedder(model_name, embedding, cache_dir)
            self.key = f"{name}-{self.embedder.fingerprint.id}"
        self.encode([""])  # load the model (and export it, the first time) outside the timings

    def encode(self, texts: list[str]) -> np.ndarray:
        if self.name == "int8-v1":
            return self.encoder.encode(texts, batch_size=self.batch_size)
        return self.embedder.encode(texts)


def cosine_summary(a: np.ndarray, b: np.ndarray) -> dict[str, float]:
    cosines = (a * b).sum(axis=1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))
    return {
        "min": float(cosines.min()),
        "p1": float(np.percentile(cosines, 1)),
        "p50": float(np.median(cosines)),
    }


def measure_speed(backends: dict[str, Backend], texts: list[str], rounds: int, slice_size: int) -> list[Speed]:
    """Each slice goes through every backend, in an order rotating from slice to slice."""
    names = list(backends)
    slices = [texts[i : i + slice_size] for i in range(0, len(texts), slice_size)]
    seconds: dict[str, dict[tuple[int, int], float]] = {name: {} for name in names}
    vectors: dict[str, list[np.ndarray]] = {name: [] for name in names}
    with tqdm(total=rounds * len(texts) * len(names), desc="speed", unit="text", file=sys.stderr) as bar:
        for round_ in range(rounds):
            for j, piece in enumerate(slices):
                turn = (j + round_) % len(names)
                for name in names[turn:] + names[:turn]:
                    started = time.perf_counter()
                    encoded = backends[name].encode(piece)
                    seconds[name][round_, j] = time.perf_counter() - started
                    if round_ == 0:
                        vectors[name].append(encoded)
                    bar.update(len(piece))
    torch = seconds["torch"]
    reference = np.vstack(vectors["torch"])
    figures = []
    for name in names:
        total = sum(seconds[name].values())
        paired = [torch[key] / value for key, value in seconds[name].items()]
        figures.append(
            Speed(
                name,
                rounds * len(texts) / total,
                sum(torch.values()) / total,
                float(np.median(paired)),
                cosine_summary(np.vstack(vectors[name]), reference),
            )
        )
    alone_texts = slices[0][:BATCH_DEPENDENCE_TEXTS]
    for figure in figures:
        backend = backends[figure.backend]
        alone = np.vstack([backend.encode([text]) for text in alone_texts])
        figure.alone_vs_batched = cosine_summary(alone, vectors[figure.backend][0][: len(alone_texts)])
    return figures


class VectorCache:
    """Vectors of one backend, keyed by the hash of the text, in an .npz in the work dir."""

    def __init__(self, path: Path):
        self.path = path
        self.vectors: dict[str, np.ndarray] = {}
        if path.is_file():
            with np.load(path) as saved:
                self.vectors = dict(zip(saved["keys"].tolist(), saved["vectors"], strict=True))

    def save(self) -> None:
        keys = list(self.vectors)
        temporary = self.path.with_suffix(".tmp.npz")
        np.savez(temporary, keys=np.array(keys), vectors=np.vstack([self.vectors[k] for k in keys]))
        os.replace(temporary, self.path)

    def fill(self, backend: Backend, texts: list[str]) -> tuple[np.ndarray, int]:
        """Vectors for texts, in their order, embedding only the ones not cached; how many were embedded."""
        keys = [hashlib.md5(text.encode("utf-8")).hexdigest() for text in texts]
        todo = list(dict.fromkeys(k for k in keys if k not in self.vectors))
        text_of = dict(zip(keys, texts, strict=True))
        blocks = [todo[i : i + ENCODE_BLOCK] for i in range(0, len(todo), ENCODE_BLOCK)]
        with tqdm(total=len(todo), desc=f"embedding NFCorpus, {backend.name}", unit="text", file=sys.stderr) as bar:
            for n, block in enumerate(blocks, start=1):
                self.vectors.update(zip(block, backend.encode([text_of[k] for k in block]), strict=True))
                bar.update(len(block))
                if n % 8 == 0 or n == len(blocks):
                    self.save()
        return np.vstack([self.vectors[k] for k in keys]), len(todo)


def ndcg_at_10(
    chunk_vectors: np.ndarray, doc_ids: list[str], query_vectors: np.ndarray, evaluation: datasets.EvalSet
) -> float:
    """Exact cosine search over the chunks, each document at the rank of its best chunk, a document with
    the query's own id left out (BEIR's convention, as eval-beir does)."""
    documents = np.array(doc_ids)
    scores = query_vectors @ chunk_vectors.T
    run = {}
    for row, question in enumerate(evaluation.questions):
        order = np.argsort(-scores[row], kind="stable")
        ranking, seen = [], set()
        for index in order:
            doc_id = documents[index]
            if doc_id in seen or doc_id == question.question_id:
                continue
            seen.add(doc_id)
            ranking.append((str(doc_id), float(scores[row, index])))
            if len(ranking) == 10:
                break
        run[question.question_id] = ranking
    return evaluate(run, evaluation.qrels, metrics=("ndcg",), ks=(10,)).aggregate["ndcg@10"]


# --- the ANN index -----------------------------------------------------------------------------------


def noisy_copies(base: np.ndarray, rows: int, rng: np.random.Generator) -> np.ndarray:
    picked = base[rng.integers(0, len(base), rows)]
    vectors = picked + rng.normal(0.0, NOISE, picked.shape).astype(np.float32)
    return vectors / np.linalg.norm(vectors, axis=1, keepdims=True)


def random_unit(rows: int, dimension: int, rng: np.random.Generator) -> np.ndarray:
    vectors = rng.normal(size=(rows, dimension)).astype(np.float32)
    return vectors / np.linalg.norm(vectors, axis=1, keepdims=True)


def exact_top10(vectors: np.ndarray, queries: np.ndarray) -> np.ndarray:
    top = []
    for start in range(0, len(queries), 64):
        scores = queries[start : start + 64] @ vectors.T
        part = np.argpartition(-scores, 10, axis=1)[:, :10]
        top.append(part)
    return np.vstack(top)


def ann_figures(name: str, vectors: np.ndarray, queries: np.ndarray, workdir: Path, add_fraction: float) -> AnnFigures:
    import lancedb
    import pyarrow as pa

    rows = round(len(vectors) / (1 + add_fraction))
    base, extra = vectors[:rows], vectors[rows:]
    added = len(extra)
    directory = workdir / "ann"
    shutil.rmtree(directory, ignore_errors=True)
    db = lancedb.connect(str(directory))
    kind = pa.list_(pa.float32(), vectors.shape[1])

    def batch(start: int, part: np.ndarray) -> pa.Table:
        flat = pa.array(part.reshape(-1), pa.float32())
        return pa.table(
            {
                "id": pa.array(range(start, start + len(part)), pa.int64()),
                "vector": pa.FixedSizeListArray.from_arrays(flat, vectors.shape[1]),
            },
            schema=pa.schema([("id", pa.int64()), ("vector", kind)]),
        )

    table = db.create_table("vectors", batch(0, base[:100_000]))
    for start in range(100_000, len(base), 100_000):
        table.add(batch(start, base[start : start + 100_000]))

    def search(exact: bool) -> tuple[np.ndarray, float]:
        found, times = [], []
        # Exact search only times the query (recall's truth is exact_top10, in numpy): a sample is enough,
        # and a full scan of 1,000,000 rows per query would take the run's time.
        for query in queries[:EXACT_TIMED_QUERIES] if exact else queries:
            started = time.perf_counter()
            builder = table.search(query, vector_column_name="vector").distance_type("cosine").limit(10)
            builder = builder.bypass_vector_index() if exact else ANN_SEARCH.apply(builder)
            result = builder.select(["id"]).to_arrow()
            times.append(time.perf_counter() - started)
            found.append(result.column("id").to_numpy())
        return found, 1000 * float(np.median(times))

    def recall(found: list[np.ndarray], truth: np.ndarray) -> float:
        return float(np.mean([len(set(f.tolist()) & set(t.tolist())) / 10 for f, t in zip(found, truth, strict=True)]))

    click.echo(f"ANN: {name}, {len(base):,} rows: building the index", err=True)
    build_seconds = build_ann_index(table)
    index = next(i.index_type for i in table.list_indices() if tuple(i.columns) == ("vector",))
    _, exact_ms = search(exact=True)
    found, ann_ms = search(exact=False)
    figures = AnnFigures(
        name, len(base), index, build_seconds, recall(found, exact_top10(base, queries)), exact_ms, ann_ms
    )
    if added:
        table.add(batch(len(base), extra))
        started = time.perf_counter()
        table.optimize()  # what upkeep runs once enough rows are unindexed: the new rows join the index
        figures.added_rows, figures.optimize_seconds = added, time.perf_counter() - started
        found, _ = search(exact=False)
        figures.recall_at_10_after_optimize = recall(found, exact_top10(vectors, queries))
    shutil.rmtree(directory, ignore_errors=True)
    return figures


# --- the command ---------------------------------------------------------------------------------------


@click.command()
@click.option("--data", type=click.Path(path_type=Path, file_okay=False), default=NFCORPUS, show_default=True)
@click.option(
    "--workdir",
    type=click.Path(path_type=Path),
    default=PROJECT_DIR / "data" / "bench" / "model",
    show_default=True,
    help="Chunks, exported models and vector caches live here between runs.",
)
@click.option(
    "--chunks",
    "chunks_file",
    type=click.Path(path_type=Path, dir_okay=False, exists=True),
    default=None,
    help="Score these chunks ([doc_ids, texts] JSON) instead of cutting the corpus with the current chunker, "
    "e.g. an earlier chunker's, to compare with a figure published for it.",
)
@click.option("--texts", "sample_size", type=int, default=1024, show_default=True, help="Texts in the speed sample.")
@click.option("--rounds", type=int, default=2, show_default=True, help="Passes over the speed sample.")
@click.option(
    "--ndcg-backends",
    default="onnx,onnx-int8,int8-v1",
    show_default=True,
    help="Backends whose NFCorpus vectors are scored (torch gives onnx's vectors: cosine >= 0.99999).",
)
@click.option("--ann-rows", default="100000", show_default=True, help="Comma-separated ANN table sizes.")
@click.option(
    "--batch-sizes",
    default="",
    help="Also measure torch and onnx-int8 at these texts per model call (comma-separated), e.g. 32,16,4.",
)
@click.option("--skip", multiple=True, type=click.Choice(["speed", "ndcg", "ann"]), help="Leave a part out.")
@click.option("--json", "as_json", is_flag=True, help="Print the figures as JSON.")
def main(
    data: Path,
    workdir: Path,
    chunks_file: Path | None,
    sample_size: int,
    rounds: int,
    ndcg_backends: str,
    ann_rows: str,
    batch_sizes: str,
    skip: tuple[str, ...],
    as_json: bool,
) -> None:
    """int8 and fp32 texts/s, nDCG@10 and cosine distribution on NFCorpus; ANN build time and recall@10."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    clock = time.perf_counter()
    workdir = workdir.resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    settings = Settings.load()
    if chunks_file:
        doc_ids, texts = json.loads(chunks_file.read_text(encoding="utf-8"))
    else:
        doc_ids, texts = chunk_corpus(data, workdir)
    rng = np.random.default_rng(SEED)
    report = ModelBench(len(texts), len(set(doc_ids)), min(sample_size, len(texts)), list(os.getloadavg()))
    report.batch_size = settings.embedding.batch_size
    cache_dir = workdir / "_models"
    loaded: dict[str, Backend] = {}

    def backend(name: str) -> Backend:
        if name not in loaded:
            click.echo(f"loading {name}", err=True)
            loaded[name] = Backend(name, settings, cache_dir)
        return loaded[name]

    if "speed" not in skip:
        sample = [texts[i] for i in rng.choice(len(texts), report.sample_texts, replace=False)]
        backends = {name: backend(name) for name in BACKENDS}
        # One call per commit batch, as the pipeline's embed step calls the model (`_texts_in_commit_order`).
        report.speed = measure_speed(backends, sample, rounds, settings.embedding.commit_rows)
        for size in (int(b) for b in batch_sizes.split(",") if b.strip()):
            at_size = dataclasses.replace(
                settings, embedding=settings.embedding.model_copy(update={"batch_size": size})
            )
            pair = {name: Backend(name, at_size, cache_dir) for name in ("torch", "onnx-int8")}
            report.batch_sizes.append(
                BatchSpeed(size, measure_speed(pair, sample, rounds, settings.embedding.commit_rows))
            )

    fp32_vectors = None
    if "ndcg" not in skip or "ann" not in skip:
        evaluation = datasets.from_beir(data, "test")
        names = [n.strip() for n in ndcg_backends.split(",") if n.strip()] if "ndcg" not in skip else ["onnx"]
        names = ["onnx", *(n for n in names if n != "onnx")]  # the fp32 reference first
        for name in names:
            model = backend(name)
            chunk_vectors, embedded = VectorCache(workdir / f"vectors-{model.key}.npz").fill(model, texts)
            query_vectors = model.encode([q.text for q in evaluation.questions])
            if name == "onnx":
                fp32_vectors, fp32_queries = chunk_vectors, query_vectors
            if "ndcg" not in skip:
                report.quality.append(
                    Quality(
                        name,
                        ndcg_at_10(chunk_vectors, doc_ids, query_vectors, evaluation),
                        embedded,
                        cosine_summary(chunk_vectors, fp32_vectors),
                    )
                )

    if "ann" not in skip:
        for rows in (int(r) for r in ann_rows.split(",") if r.strip()):
            real = noisy_copies(fp32_vectors, round(rows * 1.1), rng)
            report.ann.append(ann_figures("NFCorpus + noise", real, fp32_queries, workdir, 0.1))
            del real
            uniform = random_unit(round(rows * 1.1), fp32_vectors.shape[1], rng)
            report.ann.append(
                ann_figures("random unit", uniform, random_unit(200, uniform.shape[1], rng), workdir, 0.1)
            )
            del uniform

    report.load_after = list(os.getloadavg())
    report.seconds = time.perf_counter() - clock
    emit(report, as_json)


if __name__ == "__main__":
    main()
