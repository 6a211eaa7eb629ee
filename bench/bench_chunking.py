"""Benchmark the chunker at scale, in one run, on generated documents.

Figures printed, not asserted:
- throughput of the chunking step the `document_chunks` model runs (normalize, then
  chunk), in documents/s and MB/s, with the process's peak memory;
- chunk count and token-count distribution (p50 / p95 / max);
- edit locality: insert one paragraph at the top of a fraction of the documents, then
  count the chunk hashes that changed, for our section-scoped chunker and, in the same
  run, for a plain fixed-size token window over the whole document (the usual
  baseline), next to the number of chunks that really contain the inserted text.

Example:
    python bench/bench_chunking.py --scale 100000
    make bench-chunking SCALE=100000
"""

from __future__ import annotations

import hashlib
import json
import random
import resource
import sys
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import click
import pyarrow as pa
import pyarrow.compute as pc
from tqdm import tqdm

sys.path.insert(0, str(Path(__file__).resolve().parent))
import generate_data

from python_jobs.chunk.chunker import Chunker, build_chunker, chunk_table, chunking_settings
from python_jobs.chunk.markdown import normalize_markdown
from python_jobs.common.settings import PROJECT_DIR, Settings


@dataclass
class Document:
    doc_id: str
    title: str
    body: str


class FixedWindowChunker:
    """The baseline: windows of N tokens with overlap over the whole document, no structure."""

    def __init__(self, chunker: Chunker):
        self.tokenizer = chunker.tokenizer
        self.size = chunker.config.target_tokens - 2  # room for the special tokens
        self.overlap = chunker.config.overlap_tokens

    def spans(self, body: str) -> list[tuple[int, int]]:
        offsets = self.tokenizer.encode(body, add_special_tokens=False).offsets
        starts = range(0, max(1, len(offsets) - self.overlap), self.size - self.overlap)
        return [(offsets[i][0], offsets[min(i + self.size, len(offsets)) - 1][1]) for i in starts if offsets]

    def hashes(self, body: str) -> list[str]:
        return [hashlib.md5(body[a:b].encode()).hexdigest() for a, b in self.spans(body)]


def load_documents(docs_dir: Path) -> list[Document]:
    documents = []
    for path in sorted(docs_dir.rglob("*.md")):
        _, front, body = path.read_text(encoding="utf-8").split("---\n", 2)
        fields = dict(line.split(": ", 1) for line in front.splitlines() if ": " in line)
        documents.append(Document(fields["doc_id"], json.loads(fields["title"]), body))
    return documents


def insert_at_top(body: str, paragraph: str) -> tuple[str, int, int]:
    """Insert a paragraph right after the title line; returns the body and the paragraph's span."""
    title_end = body.index("\n") + 1 if body.startswith("# ") else 0
    inserted = f"\n{paragraph}\n" if title_end else f"{paragraph}\n\n"
    start = title_end + (1 if title_end else 0)
    return body[:title_end] + inserted + body[title_end:], start, start + len(paragraph)


def changed(before: list[str], after: list[str]) -> int:
    """Chunks of the new version whose hash the old version did not have (a multiset difference)."""
    return sum((Counter(after) - Counter(before)).values())


def percentile(sorted_values: list[int], q: float) -> int:
    return sorted_values[min(len(sorted_values) - 1, int(q * len(sorted_values)))]


@click.command()
@click.option("--scale", type=int, default=10_000, show_default=True, help="Documents to generate.")
@click.option("--edit-fraction", type=float, default=0.01, show_default=True, help="Documents edited at the top.")
@click.option("--workdir", type=click.Path(path_type=Path), default=None, help="Default data/generated/chunks-<scale>.")
@click.option("--json", "as_json", is_flag=True, help="Print the figures as JSON.")
def main(scale: int, edit_fraction: float, workdir: Path | None, as_json: bool) -> None:
    """Chunking throughput, token distribution and edit locality at SCALE documents."""
    workdir = (workdir or PROJECT_DIR / "data" / "generated" / f"chunks-{scale}").resolve()
    docs_dir = workdir / "docs"
    rng = random.Random(scale)
    text_model = generate_data.TextModel(generate_data.SAMPLE_DOCS, rng, pool_size=20_000)
    if not docs_dir.exists():
        click.echo(f"generating {scale:,} documents in {docs_dir}", err=True)
        products = generate_data.build_products(rng, 100)
        generate_data.write_documents(docs_dir, text_model, rng, scale, products)
    documents = load_documents(docs_dir)
    retrieval = Settings.load().retrieval
    chunker, settings = build_chunker(retrieval), chunking_settings(retrieval)
    baseline = FixedWindowChunker(chunker)
    megabytes = sum(len(d.body.encode()) for d in documents) / 1e6

    # The two steps of the dbt models, as they run them: int_documents_normalized, then
    # document_chunks (a worker per core at this size).
    started = time.perf_counter()
    rows = [{"doc_id": d.doc_id, "title": d.title, "body": normalize_markdown(d.body)} for d in documents]
    normalize_seconds = time.perf_counter() - started
    started = time.perf_counter()
    with tqdm(total=len(rows), desc="chunking", unit="doc", file=sys.stderr, mininterval=5) as bar:
        table = chunk_table(retrieval, rows, settings["chunking_config_hash"], progress=bar.update)
    seconds = time.perf_counter() - started
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    worker_peak_mb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    token_counts = table["token_count"].to_pylist()
    bodies = {row["doc_id"]: row["body"] for row in rows}

    started = time.perf_counter()
    baseline_total = sum(len(baseline.spans(body)) for body in bodies.values())
    baseline_seconds = time.perf_counter() - started

    edited = rng.sample(documents, max(1, int(len(documents) * edit_fraction)))
    edited_ids = pa.array([doc.doc_id for doc in edited])
    before = table.filter(pc.is_in(table["doc_id"], value_set=edited_ids)).select(["doc_id", "content_hash"])
    per_doc: dict[str, list[str]] = {}
    for doc_id, chunk_hash in zip(before["doc_id"].to_pylist(), before["content_hash"].to_pylist(), strict=True):
        per_doc.setdefault(doc_id, []).append(chunk_hash)
    ours = {"changed": 0, "contain_edit": 0}
    theirs = {"changed": 0, "contain_edit": 0}
    for doc in edited:
        old_body = bodies[doc.doc_id]
        new_body, start, end = insert_at_top(old_body, text_model.paragraph())
        new_chunks = chunker.chunk(doc.doc_id, doc.title, new_body)
        ours["changed"] += changed(per_doc[doc.doc_id], [c.content_hash for c in new_chunks])
        ours["contain_edit"] += sum(1 for c in new_chunks if c.start < end and c.end > start)
        theirs["changed"] += changed(baseline.hashes(old_body), baseline.hashes(new_body))
        theirs["contain_edit"] += sum(1 for a, b in baseline.spans(new_body) if a < end and b > start)

    token_counts.sort()
    total_chunks = len(token_counts)
    figures = {
        "documents": len(documents),
        "megabytes": round(megabytes, 1),
        "chunks": total_chunks,
        "normalize_seconds": round(normalize_seconds, 1),
        "chunk_seconds": round(seconds, 1),
        "documents_per_second": round(len(documents) / seconds, 1),
        "megabytes_per_second": round(megabytes / seconds, 2),
        "peak_rss_mb": round(peak_mb),
        "worker_peak_rss_mb": round(worker_peak_mb),
        "tokens_p50": percentile(token_counts, 0.5),
        "tokens_p95": percentile(token_counts, 0.95),
        "tokens_max": token_counts[-1],
        "settings": settings,
        "edited_documents": len(edited),
        "ours_changed_chunks": ours["changed"],
        "ours_chunks_containing_edit": ours["contain_edit"],
        "ours_changed_fraction": round(ours["changed"] / total_chunks, 5),
        "baseline_chunks": baseline_total,
        "baseline_seconds": round(baseline_seconds, 1),
        "baseline_changed_chunks": theirs["changed"],
        "baseline_chunks_containing_edit": theirs["contain_edit"],
        "baseline_changed_fraction": round(theirs["changed"] / baseline_total, 5),
    }
    if as_json:
        click.echo(json.dumps(figures))
        return
    click.echo(
        f"\nChunking {figures['documents']:,} documents ({megabytes:,.1f} MB) into {total_chunks:,} chunks\n"
        f"  normalize       {normalize_seconds:,.1f} s (int_documents_normalized)\n"
        f"  chunk           {figures['documents_per_second']:,.1f} docs/s, {figures['megabytes_per_second']} MB/s "
        f"({seconds:,.1f} s, document_chunks)\n"
        f"  peak RSS        {figures['peak_rss_mb']:,} MB in the main process, {figures['worker_peak_rss_mb']:,} MB "
        f"per worker\n"
        f"  tokens/chunk    p50 {figures['tokens_p50']}, p95 {figures['tokens_p95']}, max {figures['tokens_max']} "
        f"(limit {settings['model_max_tokens']})\n"
        f"\nEdit locality: one paragraph inserted at the top of {len(edited):,} documents ({edit_fraction:.0%})\n"
        f"  {'chunker':<28}{'chunks':>10}{'changed':>10}{'of all':>10}{'contain edit':>14}\n"
        f"  {'section-scoped (ours)':<28}{total_chunks:>10,}{ours['changed']:>10,}"
        f"{figures['ours_changed_fraction']:>10.3%}{ours['contain_edit']:>14,}\n"
        f"  {'fixed token window':<28}{baseline_total:>10,}{theirs['changed']:>10,}"
        f"{figures['baseline_changed_fraction']:>10.3%}{theirs['contain_edit']:>14,}\n"
        f"  ratio: the fixed window changes {theirs['changed'] / max(1, ours['changed']):.1f}x as many chunks"
    )


if __name__ == "__main__":
    main()
