"""Benchmark the chunker at scale, in one run, on generated documents.

Figures printed, not asserted:
- throughput of the chunking step the `document_chunks` model runs (normalize, then
  chunk), in documents/s and MB/s at SCALE, with the CPU seconds it took (workers and
  main process: on a shared machine, documents per CPU-second is the steadier figure),
  the load average beside it, and the processes' peak memory;
- chunk count and token-count distribution (mean / p50 / p95 / max), and the share of
  chunks that start at a cut the size bound forced (python_jobs/chunk/layout.py);
- edit locality: insert one paragraph at the top of a random section of a fraction of the
  documents, then count the chunks that changed (texts to embed, ids to write, ids to
  delete) against the ideal (the chunks that contain the inserted text), and the edits
  that changed a chunk beyond one neighbour on each side; the same insertion at the top of
  the document for a plain fixed-size token window over the whole document (the usual
  baseline);
- with --profile N: where a single process spends its time chunking N documents (cProfile).

Example:
    python bench/bench_chunking.py --scale 100000
    make bench-chunking SCALE=100000
    python bench/bench_chunking.py --scale 10000 --profile 2000
"""

from __future__ import annotations

import cProfile
import hashlib
import io
import json
import os
import pstats
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

from python_jobs.chunk.chunker import Chunk, Chunker, build_chunker, chunk_table, chunking_settings
from python_jobs.chunk.markdown import normalize_markdown, split_sections
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


def insert_at_section_top(body: str, title: str, paragraph: str, rng: random.Random) -> tuple[str, int, int]:
    """Insert a paragraph at the top of a random section (before its first line of text)."""
    sections = split_sections(body, title)
    section = rng.choice(sections)
    at = section.start + len(section.text) - len(section.text.lstrip())
    return body[:at] + paragraph + "\n\n" + body[at:], at, at + len(paragraph)


def beyond_neighbours(before: list[Chunk], after: list[Chunk], start: int, end: int) -> bool:
    """Whether chunks changed beyond the ones holding the insertion and one neighbour on each side
    (chunks of other sections included)."""
    old = {(c.chunk_id, c.text) for c in before}
    new_changed = [n for n, c in enumerate(after) if (c.chunk_id, c.text) not in old]
    holding = [n for n, c in enumerate(after) if c.start <= end and c.end >= start]
    if not holding:
        return bool(new_changed)
    return any(n < holding[0] - 1 or n > holding[-1] + 1 for n in new_changed)


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
@click.option("--profile", "profile_documents", type=int, default=0, help="Also profile chunking N documents.")
def main(scale: int, edit_fraction: float, workdir: Path | None, as_json: bool, profile_documents: int) -> None:
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
    load_before = os.getloadavg()
    started, cpu_started, children_started = time.perf_counter(), time.process_time(), _children_cpu()
    with tqdm(total=len(rows), desc="chunking", unit="doc", file=sys.stderr, mininterval=5) as bar:
        table = chunk_table(retrieval, rows, settings["chunking_config_hash"], progress=bar.update)
    seconds = time.perf_counter() - started
    main_cpu, worker_cpu = time.process_time() - cpu_started, _children_cpu() - children_started
    load_after = os.getloadavg()
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
    ours = Counter()
    theirs = Counter()
    for doc in edited:
        old_body = bodies[doc.doc_id]
        paragraph = text_model.paragraph()
        new_body, start, end = insert_at_section_top(old_body, doc.title, paragraph, rng)
        old_chunks, new_chunks = (
            chunker.chunk(doc.doc_id, doc.title, old_body),
            chunker.chunk(doc.doc_id, doc.title, new_body),
        )
        assert [c.content_hash for c in old_chunks] == per_doc[doc.doc_id]  # the pool made the same chunks
        old_ids, new_ids = Counter(c.chunk_id for c in old_chunks), Counter(c.chunk_id for c in new_chunks)
        ours["chunks"] += len(old_chunks)
        ours["forced"] += sum(c.forced_cut for c in old_chunks)
        ours["changed"] += changed(per_doc[doc.doc_id], [c.content_hash for c in new_chunks])
        ours["ids_written"] += sum((new_ids - old_ids).values())
        ours["ids_deleted"] += sum((old_ids - new_ids).values())
        ours["contain_edit"] += sum(1 for c in new_chunks if c.start < end and c.end > start)
        ours["beyond_neighbours"] += beyond_neighbours(old_chunks, new_chunks, start, end)
        top_body, top_start, top_end = insert_at_top(old_body, paragraph)
        theirs["changed"] += changed(baseline.hashes(old_body), baseline.hashes(top_body))
        theirs["contain_edit"] += sum(1 for a, b in baseline.spans(top_body) if a < top_end and b > top_start)

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
        "chunk_cpu_seconds_workers": round(worker_cpu, 1),
        "chunk_cpu_seconds_main": round(main_cpu, 1),
        "documents_per_cpu_second": round(len(documents) / max(1e-9, worker_cpu + main_cpu), 1),
        "load_average_before_after": [round(load_before[0], 2), round(load_after[0], 2)],
        "cores": os.cpu_count(),
        "peak_rss_mb": round(peak_mb),
        "worker_peak_rss_mb": round(worker_peak_mb),
        "tokens_mean": round(sum(token_counts) / total_chunks, 1),
        "tokens_p50": percentile(token_counts, 0.5),
        "tokens_p95": percentile(token_counts, 0.95),
        "tokens_max": token_counts[-1],
        "settings": settings,
        "edited_documents": len(edited),
        "ours_forced_cut_share": round(ours["forced"] / max(1, ours["chunks"]), 4),
        "ours_changed_chunks": ours["changed"],
        "ours_ids_written": ours["ids_written"],
        "ours_ids_deleted": ours["ids_deleted"],
        "ours_chunks_containing_edit": ours["contain_edit"],
        "ours_edits_beyond_one_neighbour": ours["beyond_neighbours"],
        "ours_changed_fraction": round(ours["changed"] / total_chunks, 5),
        "baseline_chunks": baseline_total,
        "baseline_seconds": round(baseline_seconds, 1),
        "baseline_changed_chunks": theirs["changed"],
        "baseline_chunks_containing_edit": theirs["contain_edit"],
        "baseline_changed_fraction": round(theirs["changed"] / baseline_total, 5),
    }
    profile = _profile(chunker, rows[:profile_documents]) if profile_documents else ""
    if as_json:
        click.echo(json.dumps({**figures, "profile": profile} if profile else figures))
        return
    edits = len(edited)
    click.echo(
        f"\nChunking {figures['documents']:,} documents ({megabytes:,.1f} MB) into {total_chunks:,} chunks "
        f"on {figures['cores']} cores (load average {load_before[0]:.1f} before, {load_after[0]:.1f} after)\n"
        f"  normalize       {normalize_seconds:,.1f} s (int_documents_normalized)\n"
        f"  chunk           {figures['documents_per_second']:,.1f} docs/s, {figures['megabytes_per_second']} MB/s "
        f"({seconds:,.1f} s, document_chunks)\n"
        f"  chunk CPU       {worker_cpu:,.1f} s in workers + {main_cpu:,.1f} s in the main process: "
        f"{figures['documents_per_cpu_second']:,.1f} docs per CPU-second\n"
        f"  peak RSS        {figures['peak_rss_mb']:,} MB in the main process, {figures['worker_peak_rss_mb']:,} MB "
        f"per worker\n"
        f"  tokens/chunk    mean {figures['tokens_mean']}, p50 {figures['tokens_p50']}, p95 {figures['tokens_p95']}, "
        f"max {figures['tokens_max']} (limit {settings['model_max_tokens']}, "
        f"target {settings['chunk_target_tokens']})\n"
        f"  forced cuts     {figures['ours_forced_cut_share']:.2%} of chunks start where the size bound forced a cut\n"
        f"\nEdit locality: one paragraph inserted at the top of a random section of {edits:,} documents "
        f"({edit_fraction:.0%})\n"
        f"  {'':<34}{'ours':>10}{'ideal':>10}\n"
        f"  {'texts to embed (new hashes)':<34}{ours['changed']:>10,}{ours['contain_edit']:>10,}\n"
        f"  {'chunk ids written':<34}{ours['ids_written']:>10,}{ours['contain_edit']:>10,}\n"
        f"  {'chunk ids deleted':<34}{ours['ids_deleted']:>10,}{'':>10}\n"
        f"  {'edits beyond one neighbour/side':<34}{ours['beyond_neighbours']:>10,}{0:>10,}\n"
        f"\nThe same paragraph at the top of the document, against the usual baseline\n"
        f"  {'chunker':<28}{'chunks':>10}{'changed':>10}{'of all':>10}{'contain edit':>14}\n"
        f"  {'fixed token window':<28}{baseline_total:>10,}{theirs['changed']:>10,}"
        f"{figures['baseline_changed_fraction']:>10.3%}{theirs['contain_edit']:>14,}"
    )
    if profile:
        click.echo(f"\nWhere one process spends its time chunking {profile_documents:,} documents\n{profile}")


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def _profile(chunker: Chunker, rows: list[dict]) -> str:
    """cProfile of chunking `rows` in this process (the word cache warmed first, as in a worker)."""
    for row in rows[:200]:
        chunker.chunk(row["doc_id"], row["title"], row["body"])
    profiler = cProfile.Profile()
    profiler.enable()
    for row in rows:
        chunker.chunk(row["doc_id"], row["title"], row["body"])
    profiler.disable()
    out = io.StringIO()
    pstats.Stats(profiler, stream=out).sort_stats("tottime").print_stats(15)
    return out.getvalue()


if __name__ == "__main__":
    main()
