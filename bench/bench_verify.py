"""Benchmark `make verify` on a large index: how long reading every row of the published table takes.

A chunk table of `--chunks` rows is generated straight into a DuckDB file (no dbt: the mechanics,
not the chunker, are measured), and an index table of the same rows is written beside it, each
with a RANDOM UNIT VECTOR of the model's dimension (384), NOT A MODEL'S: verify checks vectors,
it does not compare them with a model. The table is published as a run would publish it. Then:

- `keys only`: what verify did before it read the whole table, in-process: the key columns of
  every row, compared with the chunk table by the embedding job's plan;
- `make verify`: the real CLI in a subprocess (`rp verify --json`), which reads every column of
  every row (vectors checked for NaN, infinity and unit length, texts hashed again, the
  full-text columns checked against the access levels), then runs the same comparison. Its wall
  time and peak memory are measured with wait4.

Figures are printed, never asserted; `--json` prints them for machines.

Example:
    python bench/bench_verify.py --chunks 1000000
    python bench/bench_verify.py --chunks 100000 --workdir /tmp/bench-verify --json
"""

from __future__ import annotations

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
from bench_embed import CHUNKS_PER_DOC
from bench_embed import chunk_rows_sql as document_rows_sql
from bench_warehouse import BIN, timed

from python_jobs.common.settings import ENV_DBT_TARGET_PATH, ENV_DUCKDB_PATH, ENV_INDEX_DIR, ENV_LANDING_DIR, Settings

WRITE_ROWS = 100_000  # index rows generated and written at a time


def chunk_rows_sql(chunks: int) -> str:
    """Exactly `chunks` document_chunks rows, generated as the embedding benchmark generates them."""
    docs = chunks // CHUNKS_PER_DOC[0] + 1  # more documents than needed, cut to the row count
    return f"select * from ({document_rows_sql(0, docs)}) limit {chunks}"


def generate(settings: Settings, chunks: int) -> dict:
    """The chunk table in the warehouse, and the same rows with random unit vectors, published as the index."""
    from python_jobs.chunk.chunker import chunking_settings
    from python_jobs.chunk.model_files import resolve_model
    from python_jobs.index.encoders import fingerprint
    from python_jobs.index.plan import CHUNKS_RELATION, metadata_hash_sql
    from python_jobs.index.store import (
        INDEX_COLUMNS,
        VectorIndex,
        clearance_columns,
        clearance_texts,
        index_schema,
        index_table_name,
        vector_type,
    )

    model = fingerprint(resolve_model(settings.retrieval.embedding_model), settings.embedding)
    settings.warehouse_path.parent.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    with duckdb.connect(str(settings.warehouse_path)) as con:
        con.execute("create schema if not exists knowledge")
        con.execute(f"create or replace table {CHUNKS_RELATION} as {chunk_rows_sql(chunks)}")
        settings_row = chunking_settings(settings.retrieval) | {"chunking_config_hash": "bench"}
        con.register("settings_row", pa.Table.from_pylist([settings_row]))
        con.execute("create or replace table knowledge.chunking_settings as select * from settings_row")
        warehouse_seconds = time.perf_counter() - started

        schema = index_schema(model.dimension)
        added = {*INDEX_COLUMNS, *clearance_columns(), "vector"}
        chunk_columns = [name for name in schema.names if name not in added]
        reader = con.execute(
            f"select {', '.join(chunk_columns)}, {metadata_hash_sql()} as metadata_hash from {CHUNKS_RELATION}"
        ).to_arrow_reader(WRITE_ROWS)
        rng = np.random.default_rng(7)
        index = VectorIndex(settings.index_dir)
        table = index.overwrite(index_table_name(model), schema)
        now = pa.scalar(time.time_ns() // 1000, pa.timestamp("us", tz="UTC"))
        for batch in reader:
            rows = pa.Table.from_batches([batch])
            n = rows.num_rows
            vectors = rng.standard_normal((n, model.dimension), dtype=np.float32)
            vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
            columns = {name: rows.column(name) for name in rows.column_names}
            columns |= {
                "model_name": pa.array([model.name] * n),
                "model_fingerprint": pa.array([model.id] * n),
                "model_weights_hash": pa.array([model.weights_hash] * n),
                "model_dimension": pa.array([model.dimension] * n, pa.int32()),
                "model_normalized": pa.array([model.normalized] * n),
                "indexed_at": pa.array([now] * n, pa.timestamp("us", tz="UTC")),
                "run_id": pa.array(["bench"] * n),
                **clearance_texts(columns["access_level"], columns["embedding_text"]),
                "vector": pa.FixedSizeListArray.from_arrays(pa.array(vectors.ravel()), model.dimension).cast(
                    vector_type(model.dimension)
                ),
            }
            table.add(pa.table(columns).select(schema.names).cast(schema))
        index.publish(table, model, "bench")
    return {
        "chunks": chunks,
        "warehouse_seconds": round(warehouse_seconds, 2),
        "index_seconds": round(time.perf_counter() - started - warehouse_seconds, 2),
        "index_bytes": sum(f.stat().st_size for f in Path(settings.index_dir).rglob("*") if f.is_file()),
    }


def keys_only(settings: Settings) -> dict:
    """What verify read before it read the whole table: the key columns, compared by the plan."""
    from python_jobs.chunk.model_files import resolve_model
    from python_jobs.common.warehouse import connect
    from python_jobs.index.encoders import fingerprint
    from python_jobs.index.plan import INDEX_KEY_COLUMNS, make_plan
    from python_jobs.index.store import VectorIndex, read_columns

    model = fingerprint(resolve_model(settings.retrieval.embedding_model), settings.embedding)
    started = time.perf_counter()
    table = VectorIndex(settings.index_dir).open_live()
    keys = read_columns(table, INDEX_KEY_COLUMNS)
    with connect(settings.warehouse_path, read_only=True) as con:
        plan = make_plan(con, model, table.name, keys, None)
    return {"seconds": round(time.perf_counter() - started, 2), "rows": keys.num_rows, **plan.counts}


def step_env(workdir: Path) -> dict[str, str]:
    return {
        **os.environ,
        ENV_DUCKDB_PATH: str(workdir / "warehouse.duckdb"),
        ENV_INDEX_DIR: str(workdir / "index"),
        ENV_LANDING_DIR: str(workdir / "landing"),
        ENV_DBT_TARGET_PATH: str(workdir / "target"),
        "HF_HUB_OFFLINE": "1",
    }


@click.group(invoke_without_command=True)
@click.option("--chunks", type=int, default=1_000_000, show_default=True, help="Rows of the chunk table and index.")
@click.option("--workdir", type=click.Path(path_type=Path), help="Keep the generated files here.")
@click.option("--json", "as_json", is_flag=True, help="Print the figures as JSON.")
@click.pass_context
def main(ctx, chunks: int, workdir: Path | None, as_json: bool) -> None:
    """Time `make verify` on an index of CHUNKS rows (random unit vectors, not a model's)."""
    if ctx.invoked_subcommand:
        return
    keep = workdir is not None
    workdir = (workdir or Path(tempfile.mkdtemp(prefix="bench-verify-"))).resolve()
    shutil.rmtree(workdir, ignore_errors=True)
    workdir.mkdir(parents=True)
    env = step_env(workdir)
    this = [sys.executable, __file__]
    click.echo(f"verify at {chunks:,} chunks (index of RANDOM UNIT VECTORS, dim 384) in {workdir}", err=True)
    try:
        made = timed("generate warehouse and index", [*this, "generate", str(chunks)], env, parse_json=True)
        before = timed("keys only (the old verify)", [*this, "keys-only"], env, parse_json=True)
        command = [str(BIN / "python"), "-m", "python_jobs", "verify", "--json"]
        verify = timed("make verify (whole table)", command, env, parse_json=True)
    finally:
        if not keep:
            shutil.rmtree(workdir, ignore_errors=True)
    figures = {
        "chunks": chunks,
        "generate": made.detail,
        "keys_only_seconds": before.detail["seconds"],
        "verify_wall_seconds": verify.seconds,
        "verify_peak_rss_mb": verify.peak_rss_mb,
        "rows_per_second": round(chunks / verify.seconds),
        "verify_report": verify.detail,
    }
    click.echo(json.dumps(figures, indent=None if as_json else 2, default=str))


@main.command("generate")
@click.argument("chunks", type=int)
def generate_command(chunks: int) -> None:
    click.echo(json.dumps(generate(Settings.load(), chunks)))


@main.command("keys-only")
def keys_only_command() -> None:
    click.echo(json.dumps(keys_only(Settings.load())))


if __name__ == "__main__":
    main()
