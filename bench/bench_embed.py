"""Benchmark the embedding job, in one run, in two parts.

(a) Model path, with the real model on the sample corpus (~1,700 chunks): a full build
    through `python_jobs.index.embed` next to raw `SentenceTransformer.encode` on the same texts
    and batch size, so the pipeline's overhead is a measured ratio; then the ONNX backends
    (fp32 and int8) through the same pipeline, with their throughput and how close their
    vectors are to torch's.
(b) Mechanics at `--scale` documents (~13 chunks each, like the real chunker makes), where
    the model would take hours: the index is filled by a STAND-IN EMBEDDER (hash vectors
    under the real model's fingerprint, so the real CLI sees an index it can use). Measured:
    full build, plan time in-process, the no-op `rp embed` wall time,
    a 1% mutation (edits, metadata changes, deletions, additions) applied incrementally,
    `make verify`, and peak memory of a full build at `--scale` and at a tenth of it.

Each step of (b) is a subprocess timed with its own peak RSS (wait4). Figures are printed,
never asserted; `--json` prints them for machines.

Example:
    python bench/bench_embed.py --scale 100000
    make bench-embed SCALE=100000 ARGS="--skip-model"
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import click
import duckdb
import numpy as np
import pyarrow as pa
from bench_warehouse import BIN, REPO_ROOT, timed

from python_jobs.common.settings import ENV_DBT_TARGET_PATH, ENV_DUCKDB_PATH, ENV_INDEX_DIR, ENV_LANDING_DIR, Settings

CHUNKS_PER_DOC = (5, 21)  # a document has 5 to 20 chunks, 13 on average, as the real chunker cuts them
FILLER = (
    "The appliance ships with a quick start card, a warranty leaflet and the accessories listed on the box. "
    "Before first use, rinse removable parts in warm soapy water, dry them fully and run one cycle empty. "
    "If the display shows an error code, unplug the unit for thirty seconds and restart it; when the code "
    "comes back, contact support with the model number printed under the base and your order number ready. "
)


# --- the stand-in embedder ------------------------------------------------------------------


class StandInEmbedder:
    """NOT A MODEL: deterministic hash vectors, thousands of times faster, for the mechanics only."""

    def __init__(self, settings: Settings):
        from python_jobs.chunk.model_files import resolve_model
        from python_jobs.index.encoders import fingerprint

        self.fingerprint = fingerprint(resolve_model(settings.retrieval.embedding_model), settings.embedding)
        self.loaded = False

    def encode(self, texts: list[str]) -> np.ndarray:
        dimension = self.fingerprint.dimension
        digests = b"".join(hashlib.shake_256(t.encode("utf-8")).digest(dimension) for t in texts)
        vectors = np.frombuffer(digests, np.uint8).reshape(len(texts), dimension).astype(np.float32) - 127.5
        return vectors / np.linalg.norm(vectors, axis=1, keepdims=True)


# --- synthetic chunk tables -----------------------------------------------------------------


def chunk_rows_sql(first_doc: int, docs: int, salt: str = "") -> str:
    """document_chunks rows for documents first_doc .. first_doc + docs - 1, like the dbt model's."""
    low, high = CHUNKS_PER_DOC
    return f"""
        with docs as (
            select i as d, 'doc-' || lpad(i::varchar, 7, '0') as doc_id, ({low} + hash(i) % {high - low})::bigint as n
            from range({first_doc}, {first_doc + docs}) t(i)
        ),
        chunks as (select docs.*, unnest(range(n)) as c from docs),
        texts as (
            select *,
                'Guide ' || d || ' > Section ' || (c // 3) as heading_path,
                'Passage ' || d || '.' || c || '{salt} ' || md5(d || '.' || c) || '. {FILLER}' as text
            from chunks
        )
        select
            doc_id || ':' || substr(md5(doc_id || (c // 3)), 1, 10) || ':' || lpad((c % 3)::varchar, 3, '0')
                as chunk_id,
            doc_id,
            c::integer as chunk_index,
            c = 0 as first_chunk,
            substr(md5(doc_id || (c // 3)), 1, 10) as section_id,
            heading_path,
            text,
            heading_path || chr(10) || chr(10) || text as embedding_text,
            (length(text) // 4 + 12)::integer as token_count,
            -- as the chunker hashes embedding_text: whitespace runs collapsed, ends trimmed (make verify checks it)
            md5(heading_path || ' ' || rtrim(text)) as content_hash,
            'Guide ' || d as doc_title,
            ['manual', 'faq', 'policy', 'troubleshooting', 'guide'][1 + d % 5] as doc_type,
            'SKU-' || (d % 5000) as product_sku,
            'Category ' || (d % 12) as category,
            ['public', 'public', 'internal', 'confidential'][1 + d % 4] as access_level,
            'team-' || (d % 7) as owner,
            timestamp '2026-01-01' + to_seconds(d) as source_updated_at,
            md5(doc_id) as document_fingerprint,
            'bench' as chunking_config_hash
        from texts
    """


def generate(warehouse: Path, docs: int, settings: Settings) -> dict:
    from python_jobs.chunk.chunker import chunking_settings

    warehouse.parent.mkdir(parents=True, exist_ok=True)
    row = chunking_settings(settings.retrieval) | {"chunking_config_hash": "bench"}
    with duckdb.connect(str(warehouse)) as con:
        con.execute("create schema if not exists knowledge")
        con.execute(f"create or replace table knowledge.document_chunks as {chunk_rows_sql(0, docs)}")
        con.register("settings_row", pa.Table.from_pylist([row]))
        con.execute("create or replace table knowledge.chunking_settings as select * from settings_row")
        chunks = con.execute("select count(*) from knowledge.document_chunks").fetchone()[0]
    return {"documents": docs, "chunks": chunks}


def mutate(warehouse: Path, docs: int) -> dict:
    """1% of documents: a third get one chunk edited, a third a new owner, a third deleted; as many added."""
    step = 300
    with duckdb.connect(str(warehouse)) as con:
        relation = "knowledge.document_chunks"
        edited = con.execute(
            f"""update {relation} set
                    text = text || ' Edited.',
                    embedding_text = embedding_text || ' Edited.',
                    content_hash = md5(heading_path || ' ' || rtrim(text) || ' Edited.')
                where hash(doc_id) % {step} = 0 and chunk_index = 0"""
        ).fetchone()[0]
        owners = con.execute(f"update {relation} set owner = 'new-owner' where hash(doc_id) % {step} = 1").fetchone()[0]
        deleted = con.execute(f"delete from {relation} where hash(doc_id) % {step} = 2").fetchone()[0]
        con.execute(f"insert into {relation} {chunk_rows_sql(docs, docs // step)}")
        added = con.execute(f"select count(*) from {relation} where doc_id >= 'doc-{docs:07d}'").fetchone()[0]
    return {"chunks_edited": edited, "chunks_metadata": owners, "chunks_deleted": deleted, "chunks_added": added}


# --- steps run as subprocesses ----------------------------------------------------------------


def step_env(workdir: Path, name: str) -> dict[str, str]:
    return {
        **os.environ,
        ENV_DUCKDB_PATH: str(workdir / f"{name}.duckdb"),
        ENV_INDEX_DIR: str(workdir / f"{name}-index"),
        ENV_LANDING_DIR: str(workdir / "landing"),
        ENV_DBT_TARGET_PATH: str(workdir / "target"),
        # No ANN index inside the builds: its build time is measured on its own, in the `ann` step.
        "RP_VARS": "{embedding: {max_tokens_per_run: 1000000000, ann_min_rows: 1000000000}}",
        "HF_HUB_OFFLINE": "1",
    }


# The mechanics part writes its chunk table directly, not through dbt, so no dbt run has tested it and
# the quality gate would refuse it: the runs are forced (the gate's cost is in the plan step either way).
UNGATED = ("--force",)


def this(*args: str) -> list[str]:
    return [sys.executable, __file__, *args]


@click.group(invoke_without_command=True)
@click.option("--scale", type=int, default=10_000, show_default=True, help="Documents for the mechanics part.")
@click.option("--workdir", type=click.Path(path_type=Path), help="Keep the generated files here.")
@click.option("--skip-model", is_flag=True, help="Only the mechanics part (b).")
@click.option("--skip-mechanics", is_flag=True, help="Only the model path part (a).")
@click.option("--json", "as_json", is_flag=True, help="Print the figures as JSON.")
@click.pass_context
def main(ctx, scale: int, workdir: Path | None, skip_model: bool, skip_mechanics: bool, as_json: bool) -> None:
    if ctx.invoked_subcommand:
        return
    workdir = workdir or Path(tempfile.mkdtemp(prefix="bench-embed-"))
    figures: dict = {"scale": scale}
    try:
        if not skip_model:
            figures["model_path"] = model_path(workdir / "model")
        if not skip_mechanics:
            figures["mechanics"] = mechanics(workdir / "mechanics", scale)
    finally:
        if not ctx.params["workdir"]:
            shutil.rmtree(workdir, ignore_errors=True)
    click.echo(json.dumps(figures, indent=None if as_json else 2, default=str))


def mechanics(workdir: Path, scale: int) -> dict:
    workdir.mkdir(parents=True, exist_ok=True)
    env = step_env(workdir, "scale")
    small_env = step_env(workdir, "tenth")
    job = [str(BIN / "python"), "-m"]
    click.echo(f"(b) mechanics at {scale:,} documents, index filled by the STAND-IN embedder", err=True)
    steps = {
        "generate": timed("generate chunk table", this("generate", str(scale)), env, parse_json=True),
        "full_build": timed("full build (stand-in)", this("apply"), env, parse_json=True),
        "plan": timed("plan in-process", this("plan"), env, parse_json=True),
        "noop": timed("no-op make embed (real CLI)", [*job, "python_jobs", "embed", *UNGATED, "--json"], env, True),
        "mutate": timed("mutate 1% of documents", this("mutate", str(scale)), env, parse_json=True),
        "incremental": timed("incremental build (stand-in)", this("apply"), env, parse_json=True),
        "noop_after": timed("no-op again", [*job, "python_jobs", "embed", *UNGATED, "--json"], env, True),
        "verify": timed("make verify", [*job, "python_jobs", "verify", "--json"], env, True),
        "generate_tenth": timed("generate, a tenth", this("generate", str(scale // 10)), small_env, True),
        "full_build_tenth": timed("full build, a tenth", this("apply"), small_env, parse_json=True),
        "ann_tenth": timed("ANN index (IVF-HNSW-SQ), a tenth", this("ann"), small_env, parse_json=True),
    }
    full, incremental = steps["full_build"].detail, steps["incremental"].detail
    chunks = steps["generate"].detail["chunks"]

    def non_model(summary: dict) -> float:
        return summary["total_seconds"] - summary["embed_seconds"]

    return {
        "chunks": chunks,
        "steps": {name: {"seconds": s.seconds, "peak_rss_mb": s.peak_rss_mb} for name, s in steps.items()},
        "full_build_texts": full["texts_embedded"],
        "plan_seconds": steps["plan"].detail["plan_seconds"],
        "plan_seconds_per_100k_chunks": steps["plan"].detail["plan_seconds"] * 100_000 / chunks,
        "noop_wall_seconds": steps["noop"].seconds,
        "noop_model_loaded": steps["noop"].detail["model_loaded"],
        "mutation": steps["mutate"].detail,
        "incremental_texts_embedded": incremental["texts_embedded"],
        "incremental_counts": incremental["counts"],
        "incremental_non_model_fraction_of_full": non_model(incremental) / non_model(full),
        "full_non_model_seconds": non_model(full),
        "full_breakdown": _breakdown(full),
        "incremental_breakdown": _breakdown(incremental),
        "incremental_non_model_seconds": non_model(incremental),
        "verify_healthy": steps["verify"].detail["healthy"],
        "peak_rss_full_mb": steps["full_build"].peak_rss_mb,
        "peak_rss_tenth_mb": steps["full_build_tenth"].peak_rss_mb,
        "ann_build_seconds_tenth": steps["ann_tenth"].detail["seconds"],
        "ann_rows_tenth": steps["ann_tenth"].detail["rows"],
    }


def _breakdown(summary: dict) -> dict:
    keys = ("plan_seconds", "embed_seconds", "write_seconds", "upkeep_seconds", "total_seconds")
    return {key: round(summary[key], 2) for key in keys} | {"upkeep": summary.get("upkeep")}


@main.command("generate")
@click.argument("docs", type=int)
def generate_command(docs: int) -> None:
    settings = Settings.load()
    click.echo(json.dumps(generate(settings.warehouse_path, docs, settings)))


@main.command("mutate")
@click.argument("docs", type=int)
def mutate_command(docs: int) -> None:
    click.echo(json.dumps(mutate(Settings.load().warehouse_path, docs)))


@main.command("apply")
def apply_command() -> None:
    from python_jobs.index.embed import EmbedOptions, embed

    settings = Settings.load()
    summary = embed(settings, EmbedOptions(progress=True, force=True), embedder=StandInEmbedder(settings))
    click.echo(json.dumps({**summary.__dict__}, default=str))


@main.command("ann")
def ann_command() -> None:
    """Build the ANN index on the published table, as a run does once the table reaches ann_min_rows."""
    from python_jobs.index.store import VectorIndex
    from python_jobs.index.upkeep import build_ann_index

    table = VectorIndex(Settings.load().index_dir).open_live()
    table.checkout_latest()
    click.echo(json.dumps({"seconds": build_ann_index(table), "rows": table.count_rows()}))


@main.command("plan")
def plan_command() -> None:
    """The plan alone, in-process, against the full index: what every run pays before deciding anything."""
    from python_jobs.common.warehouse import connect
    from python_jobs.index.plan import INDEX_KEY_COLUMNS, make_plan
    from python_jobs.index.store import VectorIndex, cache_table_name, index_table_name, read_columns

    settings = Settings.load()
    model = StandInEmbedder(settings).fingerprint
    index = VectorIndex(settings.index_dir)
    started = time.perf_counter()
    keys = read_columns(index.open(index_table_name(model)), INDEX_KEY_COLUMNS)
    cache = read_columns(index.open(cache_table_name(model)), ["content_hash"])
    read_seconds = time.perf_counter() - started
    with connect(settings.warehouse_path, read_only=True) as con:
        plan = make_plan(con, model, index_table_name(model), keys, cache)
    click.echo(json.dumps({"plan_seconds": plan.seconds, "read_index_keys_seconds": read_seconds, **plan.counts}))


# --- (a) the model path ---------------------------------------------------------------------


def model_path(workdir: Path) -> dict:
    """Real model on the sample corpus: pipeline vs raw encode, then the ONNX backends."""
    from python_jobs.index.embed import EmbedOptions, embed

    click.echo("(a) model path: real model on the sample corpus", err=True)
    env = step_env(workdir, "sample") | {ENV_LANDING_DIR: str(REPO_ROOT / "data" / "raw")}
    timed("ingest sample", [str(BIN / "python"), "-m", "python_jobs", "ingest"], env)
    timed("dbt build sample", [str(BIN / "python"), "-m", "python_jobs", "dbt", "build", "--quiet"], env)
    settings = Settings.load(env={k: env[k] for k in (ENV_DUCKDB_PATH, ENV_INDEX_DIR, ENV_DBT_TARGET_PATH)})
    with duckdb.connect(str(settings.warehouse_path), read_only=True) as con:
        texts = [
            row[0]
            for row in con.execute(
                "select any_value(embedding_text order by chunk_id) from knowledge.document_chunks "
                "group by content_hash order by content_hash"
            ).fetchall()
        ]

    results: dict = {"texts": len(texts), "batch_size": settings.embedding.batch_size}
    # Model loading (and ONNX export) is timed apart: raw `encode` below starts from a loaded model too.
    results["model_load_seconds"] = {"torch": _load_model(settings)}
    torch_run = embed(settings, EmbedOptions(progress=True))
    results["pipeline_torch"] = _throughput(torch_run)
    click.echo(f"  pipeline (torch): {results['pipeline_torch']}", err=True)

    from sentence_transformers import SentenceTransformer

    from python_jobs.chunk.model_files import resolve_model

    model = SentenceTransformer(str(resolve_model(settings.retrieval.embedding_model).path), device="cpu")
    started = time.perf_counter()
    reference = model.encode(texts, batch_size=settings.embedding.batch_size, normalize_embeddings=True)
    raw_seconds = time.perf_counter() - started
    results["raw_encode"] = {"seconds": raw_seconds, "texts_per_second": len(texts) / raw_seconds}
    results["pipeline_overhead"] = torch_run.total_seconds / raw_seconds - 1
    click.echo(f"  raw encode: {results['raw_encode']}; overhead {results['pipeline_overhead']:.1%}", err=True)

    for backend in ("onnx", "onnx-int8"):
        try:
            import onnxruntime  # noqa: F401
        except ImportError:
            results[backend] = "onnxruntime not installed"
            continue
        other = Settings.load(
            env={
                ENV_DUCKDB_PATH: str(settings.warehouse_path),
                ENV_INDEX_DIR: str(workdir / f"index-{backend}"),
                ENV_DBT_TARGET_PATH: str(settings.dbt_target_dir),
                "RP_VARS": f"{{embedding: {{backend: {backend}}}}}",
            }
        )
        results["model_load_seconds"][backend] = _load_model(other)
        run = embed(other, EmbedOptions(progress=True))
        vectors = _vectors_by_text(other, texts)
        cosine = np.sum(vectors * reference, axis=1)
        results[backend] = _throughput(run) | {
            "cosine_to_torch_min": float(cosine.min()),
            "cosine_to_torch_mean": float(cosine.mean()),
            "speedup_vs_torch_pipeline": torch_run.total_seconds / run.total_seconds,
        }
        click.echo(f"  pipeline ({backend}): {results[backend]}", err=True)
    return results


def _load_model(settings: Settings) -> float:
    """Load the configured model into this process (cached there), and say how long it took."""
    from python_jobs.index.encoders import load_embedder
    from python_jobs.index.store import MODEL_CACHE_DIR

    started = time.perf_counter()
    model_cache = settings.index_dir.scratch / MODEL_CACHE_DIR
    load_embedder(settings.retrieval.embedding_model, settings.embedding, model_cache).encode(["warm up"])
    seconds = time.perf_counter() - started
    click.echo(f"  model load ({settings.embedding.backend}): {seconds:.1f} s", err=True)
    return seconds


def _throughput(summary) -> dict:
    return {
        "texts": summary.texts_embedded,
        "seconds": summary.total_seconds,
        "texts_per_second": summary.texts_embedded / summary.total_seconds,
        "model_seconds": summary.embed_seconds,
    }


def _vectors_by_text(settings: Settings, texts: list[str]) -> np.ndarray:
    from python_jobs.index.store import VectorIndex

    table = VectorIndex(settings.index_dir).open_live().to_arrow()
    by_text = dict(zip(table.column("embedding_text").to_pylist(), table.column("vector").to_pylist(), strict=True))
    return np.array([by_text[t] for t in texts], dtype=np.float32)


if __name__ == "__main__":
    main()
