"""What one worker of each stage does per second on this machine, in one run: the table of docs/scale.md.

Stages, each kept short. The machine is shared, so beside every wall-clock figure are the load average
and the CPU seconds the stage used: on a busy machine, work per CPU second is the steadier figure (torch
and ONNX Runtime use both cores, so an idle 2-core machine gives them up to 2 CPU seconds a second).

  chunking   the chunker on generated documents in one process, document by document, as one worker
             of the `document_chunks` model runs it: documents/s and chunks/s (normalizing included)
  embedding  the real model on ~500 real chunk texts (the sample corpus, chunked in-process), per
             backend (torch, onnx, onnx-int8), batched as the pipeline batches (texts sorted by token
             count, `embedding.batch_size`): texts/s; loading the model is timed apart
  committer  a full `make embed` of a generated chunk table with bench_embed's STAND-IN embedder (hash
             vectors, NOT a model) at each `--chunks` count: rows/s the single committer writes (the
             cache and index commits), and end to end without the model
  plan       the plan alone against that full index (bench_embed's `plan` step): seconds and peak RSS
  ann        the ANN index (IVF-HNSW-SQ) built on the published table at the first `--chunks` count

The committer, plan and ann steps are bench_embed.py's own subcommands, run as subprocesses and timed
with their peak RSS (bench_warehouse.timed); nothing is copied from there. Figures are printed, never
asserted; `--json` prints them for machines.

Example:
    python bench/bench_stages.py                          # 100,000 chunks for the committer and plan
    python bench/bench_stages.py --chunks 100000 --chunks 1000000 --json
"""

from __future__ import annotations

import json
import math
import os
import platform
import resource
import shutil
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

import click

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_embed
import generate_data
from bench_chunking import load_documents
from bench_warehouse import REPO_ROOT, timed

from python_jobs.common.settings import ENV_INDEX_DIR, Settings

BACKENDS = ("torch", "onnx", "onnx-int8")
SAMPLE_DOCS = REPO_ROOT / "data" / "raw" / "docs"
CHUNKS_PER_DOC = sum(bench_embed.CHUNKS_PER_DOC) / 2 - 0.5  # bench_embed draws 5..20 chunks a document: 12.5

# NOT MEASURED HERE (no GPU on this machine): all-MiniLM-L6-v2 on one data-centre GPU (V100 / A10G class,
# fp16), texts of ~125 tokens. sbert.net's pretrained-models table gives 14,200 sentences/s on a V100 for
# sentences of ~15-20 tokens; the model's cost is linear in tokens at these lengths (6 layers, 384 wide:
# attention is ~3% of the work at 128 tokens), so ~125-token chunks come to ~2,000 texts/s.
GPU_TEXTS_PER_SECOND = 2_000.0
# On-demand list prices, AWS us-east-1, as published in 2024-2025 (the last we could read; no network here):
# g5.xlarge (1 A10G, 4 vCPU) $1.006/h; c7i.2xlarge (8 vCPU) $0.357/h, i.e. $0.0446 per vCPU-hour;
# S3 Standard $0.023 per GB-month. Check them before budgeting: the arithmetic is in `projection`.
PRICES = {"gpu_hour": 1.006, "vcpu_hour": 0.357 / 8, "s3_gb_month": 0.023}
PLAN_MEMORY_GB = 32.0  # the planning machine's memory budget (a 64 GB box, half for DuckDB and Arrow)


def load() -> float:
    """The 1-minute load average: how busy the 2 shared cores were."""
    return round(os.getloadavg()[0], 2)


def cpu_of_children() -> float:
    """CPU seconds (user + system) of every child process this one has waited for."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def chunking(workdir: Path, documents: int) -> dict:
    """One process chunking generated documents one by one, normalization included."""
    import random

    from python_jobs.chunk.chunker import build_chunker
    from python_jobs.chunk.markdown import normalize_markdown

    rng = random.Random(documents)
    docs_dir = workdir / "docs"
    if not docs_dir.exists():
        text_model = generate_data.TextModel(generate_data.SAMPLE_DOCS, rng, pool_size=5_000)
        generate_data.write_documents(docs_dir, text_model, rng, documents, generate_data.build_products(rng, 100))
    corpus = load_documents(docs_dir)
    chunker = build_chunker(Settings.load().retrieval)
    chunker.chunk(corpus[0].doc_id, corpus[0].title, normalize_markdown(corpus[0].body))  # warm up the tokenizer
    before = load()
    started, cpu = time.perf_counter(), time.process_time()
    chunks = sum(len(chunker.chunk(d.doc_id, d.title, normalize_markdown(d.body))) for d in corpus)
    seconds, cpu = time.perf_counter() - started, time.process_time() - cpu
    megabytes = sum(len(d.body.encode()) for d in corpus) / 1e6
    return {
        "documents": len(corpus),
        "chunks": chunks,
        "megabytes": round(megabytes, 2),
        "seconds": round(seconds, 2),
        "documents_per_second": round(len(corpus) / seconds, 1),
        "chunks_per_second": round(chunks / seconds, 1),
        "cpu_seconds": round(cpu, 2),
        "chunks_per_cpu_second": round(chunks / cpu, 1),
        "load_before": before,
        "load_after": load(),
    }


def sample_texts(count: int) -> list[str]:
    """`count` distinct embedding texts of the sample corpus, spread over it, sorted by token count
    (the pipeline stages its rows that way, so a batch holds texts of about one length)."""
    from python_jobs.chunk.chunker import build_chunker
    from python_jobs.chunk.markdown import normalize_markdown

    chunker = build_chunker(Settings.load().retrieval)
    by_hash = {}
    for doc in load_documents(SAMPLE_DOCS):
        for chunk in chunker.chunk(doc.doc_id, doc.title, normalize_markdown(doc.body)):
            by_hash.setdefault(chunk.content_hash, chunk)
    chunks = [by_hash[key] for key in sorted(by_hash)]
    step = max(1, len(chunks) // count)
    picked = chunks[::step][:count]
    return [chunk.embedding_text for chunk in sorted(picked, key=lambda c: (c.token_count, c.content_hash))]


def embedding(workdir: Path, texts: list[str], backends: tuple[str, ...]) -> dict:
    """Texts/s of the real model with each backend, on the same texts, model loaded beforehand."""
    from python_jobs.index.encoders import load_embedder

    settings = Settings.load()
    results: dict = {"texts": len(texts), "batch_size": settings.embedding.batch_size}
    for backend in backends:
        config = settings.embedding.model_copy(update={"backend": backend})
        embedder = load_embedder(settings.retrieval.embedding_model, config, workdir / "model-cache")
        started = time.perf_counter()
        embedder.encode(texts[:8])  # load (and for ONNX, export and quantize once) before the clock
        load_seconds = time.perf_counter() - started
        before = load()
        started, cpu = time.perf_counter(), time.process_time()
        embedder.encode(texts)
        seconds, cpu = time.perf_counter() - started, time.process_time() - cpu
        results[backend] = {
            "seconds": round(seconds, 2),
            "texts_per_second": round(len(texts) / seconds, 1),
            "cpu_seconds": round(cpu, 2),
            "texts_per_cpu_second": round(len(texts) / cpu, 1),
            "model_load_seconds": round(load_seconds, 1),
            "load_before": before,
            "load_after": load(),
        }
        click.echo(f"  embedding ({backend}): {results[backend]}", err=True)
    return results


def committer_and_plan(workdir: Path, chunks: int, ann: bool, commit_rows: int | None = None) -> dict:
    """A full stand-in build at `chunks` chunks, then the plan against it (and the ANN index if asked);
    `commit_rows` overrides `embedding.commit_rows` (rows per index commit)."""
    documents = max(1, round(chunks / CHUNKS_PER_DOC))
    folder = workdir / (f"chunks-{chunks}" + (f"-commit-{commit_rows}" if commit_rows else ""))
    folder.mkdir(parents=True, exist_ok=True)
    env = bench_embed.step_env(folder, "stages")
    if commit_rows:  # bench_embed's RP_VARS mapping, with one more embedding setting
        env["RP_VARS"] = env["RP_VARS"].replace("{embedding: {", f"{{embedding: {{commit_rows: {commit_rows}, ", 1)
    before = load()
    generated = timed(f"generate {chunks:,} chunks", bench_embed.this("generate", str(documents)), env, True)
    cpu = cpu_of_children()
    build = timed("full build (STAND-IN embedder)", bench_embed.this("apply"), env, parse_json=True)
    build_cpu, cpu = cpu_of_children() - cpu, cpu_of_children()
    during_build = load()
    plan = timed("plan against the full index", bench_embed.this("plan"), env, parse_json=True)
    plan_cpu = cpu_of_children() - cpu
    summary = build.detail
    index_bytes = sum(f.stat().st_size for f in Path(env[ENV_INDEX_DIR]).rglob("*") if f.is_file())
    rows = summary["texts_embedded"]
    stand_in_seconds = summary["embed_seconds"]  # hashing texts: what the model's time would be
    commit_rows = commit_rows or Settings.load().embedding.commit_rows
    result = {
        "chunks": generated.detail["chunks"],
        "documents": documents,
        "full_build_seconds": build.seconds,
        "full_build_peak_rss_mb": build.peak_rss_mb,
        "full_build_cpu_seconds": round(build_cpu, 1),
        "index_bytes_per_chunk": round(index_bytes / generated.detail["chunks"]),  # chunk rows and vector cache
        "rows_written": rows,
        "commit_rows": commit_rows,
        "write_seconds": round(summary["write_seconds"], 2),
        "stand_in_embed_seconds": round(summary["embed_seconds"], 2),
        "build_plan_seconds": round(summary["plan_seconds"], 2),
        "upkeep_seconds": round(summary["upkeep_seconds"], 2),
        "committer_rows_per_second": round(rows / summary["write_seconds"], 1),
        # each commit batch is two commits: its texts to the vector cache, its rows to the index
        "index_commits_per_second": round(rows / commit_rows / summary["write_seconds"], 2),
        "end_to_end_rows_per_second_without_model": round(rows / (summary["total_seconds"] - stand_in_seconds), 1),
        "plan_seconds": round(plan.detail["plan_seconds"], 2),
        "plan_read_index_keys_seconds": round(plan.detail["read_index_keys_seconds"], 2),
        "plan_step_seconds": plan.seconds,
        "plan_step_peak_rss_mb": plan.peak_rss_mb,
        "plan_step_cpu_seconds": round(plan_cpu, 1),
        "parent_peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),  # a floor of the above
        "load_before": before,
        "load_after_build": during_build,
        "load_after": load(),
    }
    if ann:
        cpu = cpu_of_children()
        built = timed("ANN index (IVF-HNSW-SQ)", bench_embed.this("ann"), env, parse_json=True)
        result["ann_step_cpu_seconds"] = round(cpu_of_children() - cpu, 1)
        result["ann_rows"] = built.detail["rows"]
        result["ann_build_seconds"] = round(built.detail["seconds"], 1)
        result["ann_vectors_per_second"] = round(built.detail["rows"] / built.detail["seconds"], 1)
        result["ann_peak_rss_mb"] = built.peak_rss_mb
        result["load_after_ann"] = load()
    return result


@click.command()
@click.option("--documents", type=int, default=400, show_default=True, help="Generated documents to chunk.")
@click.option("--texts", type=int, default=500, show_default=True, help="Sample chunk texts to embed per backend.")
@click.option("--backend", "backends", multiple=True, type=click.Choice(BACKENDS), help="Default: all three.")
@click.option(
    "--chunks",
    "chunk_counts",
    multiple=True,
    type=int,
    help="Chunk counts for the committer and the plan (repeatable; default 100000); ANN index at the first.",
)
@click.option("--commit-rows", type=int, help="Rows per index commit for the committer (default: the setting).")
@click.option("--skip", multiple=True, type=click.Choice(["chunking", "embedding", "committer", "ann"]))
@click.option("--workdir", type=click.Path(path_type=Path), help="Keep the generated files here.")
@click.option("--project-chunks", type=float, default=100e6, show_default=True, help="Chunks the projection is for.")
@click.option("--gpus", type=int, default=10, show_default=True, help="GPU workers in the projection.")
@click.option("--vcpus", type=int, default=64, show_default=True, help="CPU cores for chunking and ANN builds.")
@click.option(
    "--gpu-texts-per-second",
    type=float,
    default=GPU_TEXTS_PER_SECOND,
    show_default=True,
    help="ASSUMED throughput of one GPU (not measured here).",
)
@click.option(
    "--figures",
    "figures_file",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="Measure nothing: project from the --json output of an earlier run.",
)
@click.option("--json", "as_json", is_flag=True, help="Print the figures as JSON.")
def main(
    documents: int,
    texts: int,
    backends: tuple[str, ...],
    chunk_counts: tuple[int, ...],
    commit_rows: int | None,
    skip: tuple[str, ...],
    workdir: Path | None,
    project_chunks: float,
    gpus: int,
    vcpus: int,
    gpu_texts_per_second: float,
    figures_file: Path | None,
    as_json: bool,
) -> None:
    """Per-stage throughput of one worker on this machine, and what it means for --project-chunks chunks."""
    if figures_file:
        figures = json.loads(figures_file.read_text(encoding="utf-8"))
        figures["projection"] = projection(figures, project_chunks, gpus, gpu_texts_per_second, vcpus)
        click.echo(json.dumps(figures) if as_json else report(figures))
        return
    scratch = workdir or Path(tempfile.mkdtemp(prefix="bench-stages-"))
    scratch.mkdir(parents=True, exist_ok=True)
    figures: dict = {
        "measured_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": {"cpus": os.cpu_count(), "processor": platform.processor() or platform.machine()},
        "load_at_start": load(),
    }
    try:
        # The subprocess steps first, while this process is small: Linux counts the RSS a child had when
        # it was forked from this process into the child's peak (wait4), so a model loaded here first
        # would show in every step's peak memory.
        if "committer" not in skip:
            figures["committer"] = [
                committer_and_plan(scratch, count, ann=index == 0 and "ann" not in skip, commit_rows=commit_rows)
                for index, count in enumerate(chunk_counts or (100_000,))
            ]
        if "chunking" not in skip:
            click.echo(f"chunking {documents:,} generated documents in one process", err=True)
            figures["chunking"] = chunking(scratch / "chunking", documents)
            click.echo(f"  {figures['chunking']}", err=True)
        if "embedding" not in skip:
            click.echo(f"embedding {texts} sample chunk texts with the real model", err=True)
            figures["embedding"] = embedding(scratch, sample_texts(texts), backends or BACKENDS)
    finally:
        if workdir is None:
            shutil.rmtree(scratch, ignore_errors=True)
    figures["load_at_end"] = load()
    figures["projection"] = projection(figures, project_chunks, gpus, gpu_texts_per_second, vcpus)
    click.echo(json.dumps(figures) if as_json else report(figures))


# --- from one worker to 100 M chunks: arithmetic on the figures above, with stated assumptions ------------


def projection(figures: dict, chunks: float, gpus: int, gpu_rate: float, vcpus: int, prices: dict = PRICES) -> dict:
    """What `chunks` chunks take, from this run's per-stage figures: CPU and GPU hours, the committer's and
    the plan's limits, shards, wall time on `gpus` GPUs and `vcpus` CPU cores, and cost. A vCPU elsewhere
    is taken as one core here."""
    out: dict = {
        "chunks": chunks,
        "gpus": gpus,
        "vcpus": vcpus,
        "gpu_texts_per_second_assumed": gpu_rate,
        "prices": prices,
    }
    if chunk := figures.get("chunking"):
        out["chunking_cpu_hours"] = chunks / chunk["chunks_per_cpu_second"] / 3600
    embedding = figures.get("embedding", {})
    out["embedding_cpu_hours"] = {
        backend: chunks / run["texts_per_cpu_second"] / 3600
        for backend, run in embedding.items()
        if backend in BACKENDS
    }
    out["embedding_gpu_hours"] = chunks / gpu_rate / 3600
    out["embedding_wall_hours"] = chunks / (gpus * gpu_rate) / 3600
    runs = figures.get("committer") or []
    if runs:
        largest = max(runs, key=lambda run: run["chunks"])
        committer = largest["committer_rows_per_second"]
        out["committer_rows_per_second"] = committer
        out["single_committer_hours"] = chunks / committer / 3600
        out["gpus_one_committer_feeds"] = committer / gpu_rate
        out["shards_for_committer"] = max(1, math.ceil(gpus * gpu_rate / committer))
        out["plan_seconds_single"] = largest["plan_seconds"] * chunks / largest["chunks"]
        smallest = min(runs, key=lambda run: run["chunks"])
        if largest["chunks"] > smallest["chunks"]:
            slope = (largest["plan_step_peak_rss_mb"] - smallest["plan_step_peak_rss_mb"]) / (
                largest["chunks"] - smallest["chunks"]
            )
            base = smallest["plan_step_peak_rss_mb"] - slope * smallest["chunks"]
            out["plan_memory_mb_per_million_chunks"] = slope * 1e6
            out["plan_peak_gb_single"] = (base + slope * chunks) / 1024
            out["shards_for_plan_memory"] = max(1, math.ceil((base + slope * chunks) / 1024 / PLAN_MEMORY_GB))
        shards = max(out["shards_for_committer"], out.get("shards_for_plan_memory", 1))
        out["shards"] = shards
        out["plan_seconds_per_shard"] = out["plan_seconds_single"] / shards
        out["commit_hours_sharded"] = chunks / (committer * shards) / 3600
        ann = next((run for run in runs if "ann_build_seconds" in run), None)
        if ann:
            # HNSW inserts cost ~log n each: scaled from the measured size, a lower bound for IVF training too
            per_cpu_second = ann["ann_rows"] / ann["ann_step_cpu_seconds"]
            growth = math.log(chunks / shards) / math.log(ann["ann_rows"])
            out["ann_cpu_hours"] = chunks / per_cpu_second * growth / 3600
        out["storage_gb"] = (
            largest["index_bytes_per_chunk"] * chunks / 1e9 if "index_bytes_per_chunk" in largest else None
        )
    wall = {"embed_and_commit": max(out["embedding_wall_hours"], out.get("commit_hours_sharded", 0.0))}
    if "chunking_cpu_hours" in out:
        wall["chunking"] = out["chunking_cpu_hours"] / vcpus
    if "plan_seconds_per_shard" in out:
        wall["plan"] = out["plan_seconds_per_shard"] / 3600
    if "ann_cpu_hours" in out:
        wall["ann"] = out["ann_cpu_hours"] / vcpus
    wall["total"] = sum(wall.values())
    out["wall_hours"] = wall
    cost = {"embedding_gpu": out["embedding_gpu_hours"] * prices["gpu_hour"]}
    if "chunking_cpu_hours" in out:
        cost["chunking"] = out["chunking_cpu_hours"] * prices["vcpu_hour"]
    if "onnx-int8" in out["embedding_cpu_hours"]:
        cost["embedding_cpu_int8_instead"] = out["embedding_cpu_hours"]["onnx-int8"] * prices["vcpu_hour"]
    if "ann_cpu_hours" in out:
        cost["ann"] = out["ann_cpu_hours"] * prices["vcpu_hour"]
    if out.get("storage_gb"):
        cost["storage_per_month"] = out["storage_gb"] * prices["s3_gb_month"]
    out["cost_usd"] = cost
    return out


def report(figures: dict) -> str:
    lines = [f"Per-stage throughput of one worker, {figures['measured_at']} (load {figures['load_at_start']} at start)"]
    if chunk := figures.get("chunking"):
        lines.append(
            f"  chunking    {chunk['documents_per_second']:>10,.1f} documents/s "
            f"{chunk['chunks_per_second']:>10,.1f} chunks/s   "
            f"({chunk['documents']:,} documents, {chunk['chunks']:,} chunks, load {chunk['load_before']})"
        )
    for backend in BACKENDS:
        if run := figures.get("embedding", {}).get(backend):
            lines.append(
                f"  embed {backend:<10}{run['texts_per_second']:>10,.1f} texts/s"
                f"   ({figures['embedding']['texts']} texts; model load {run['model_load_seconds']} s apart; "
                f"load {run['load_before']})"
            )
    for run in figures.get("committer", []):
        lines.append(
            f"  committer   {run['committer_rows_per_second']:>10,.0f} rows/s   "
            f"{run['index_commits_per_second']:,.1f} commit batches/s of {run['commit_rows']} rows "
            f"at {run['chunks']:,} chunks; end to end without the model "
            f"{run['end_to_end_rows_per_second_without_model']:,.0f} rows/s (load {run['load_after_build']})"
        )
        lines.append(
            f"  plan        {run['plan_seconds']:>10,.2f} s at {run['chunks']:,} chunks "
            f"(step {run['plan_step_seconds']} s, peak {run['plan_step_peak_rss_mb']:,.0f} MB)"
        )
        if "ann_build_seconds" in run:
            lines.append(
                f"  ANN index   {run['ann_vectors_per_second']:>10,.0f} vectors/s   ({run['ann_rows']:,} vectors in "
                f"{run['ann_build_seconds']} s, peak {run['ann_peak_rss_mb']:,.0f} MB, load {run['load_after_ann']})"
            )
    if plan := figures.get("projection"):
        lines += [
            f"Projection to {plan['chunks']:,.0f} chunks: {plan['gpus']} GPUs at an ASSUMED "
            f"{plan['gpu_texts_per_second_assumed']:,.0f} texts/s each (not measured), {plan['vcpus']} CPU cores",
            f"  embedding   {plan['embedding_gpu_hours']:,.1f} GPU-hours; on CPU "
            + ", ".join(f"{name} {hours:,.0f} core-hours" for name, hours in plan["embedding_cpu_hours"].items()),
        ]
        if "committer_rows_per_second" in plan:
            lines += [
                f"  committer   one feeds {plan['gpus_one_committer_feeds']:.1f} GPUs; alone it needs "
                f"{plan['single_committer_hours']:,.1f} h; {plan['shards']} shard(s) by document hash "
                f"({plan['shards_for_committer']} for the committer, {plan.get('shards_for_plan_memory', '-')} for "
                f"the plan's memory)",
                f"  plan        {plan['plan_seconds_single']:,.0f} s unsharded, "
                f"{plan.get('plan_peak_gb_single', float('nan')):,.1f} GB peak (linear in chunks)",
            ]
        wall = plan["wall_hours"]
        lines.append("  wall hours  " + ", ".join(f"{name} {hours:,.2f}" for name, hours in wall.items()))
        lines.append("  cost USD    " + ", ".join(f"{name} {usd:,.2f}" for name, usd in plan["cost_usd"].items()))
    return "\n".join(lines)


if __name__ == "__main__":
    main()
