"""Benchmark `make report` (ops marts refresh + dashboard) at `--scale` documents, in one run.

The world: bench_embed's generated chunk table (~13 chunks a document) with a documents
table, indexed by its STAND-IN embedder (hash vectors, not a model); then 1% of the documents
mutated and embedded again, so the churn and cost marts have history; then 1% of the chunks
edited and left unembedded, so index freshness has pending chunks to show. Each `make report`
is timed as a subprocess with its peak RSS: the first (its refresh builds the ops marts over
every chunk), a second on the same data, and a render alone (`--no-refresh`).

Figures are printed, never asserted; `--json` prints them for machines.

Example:
    python bench/bench_report.py --scale 100000
    make bench-report SCALE=100000
"""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path

import click
import duckdb
from bench_embed import step_env, this
from bench_warehouse import BIN, timed


def leave_pending(warehouse: Path) -> dict:
    """Edit 1% of the chunks after the last embedding run: stale in the index until the next."""
    with duckdb.connect(str(warehouse)) as con:
        con.execute(
            "update knowledge.document_chunks set text = text || ' (revised)', "
            "content_hash = md5(content_hash || 'revised') where hash(chunk_id) % 100 = 0"
        )
        return {
            "edited": con.execute(
                "select count(*) from knowledge.document_chunks where text like '%(revised)'"
            ).fetchone()[0]
        }


def add_documents(warehouse: Path) -> int:
    """The documents mart the ops marts join for landing times: one row per chunked document."""
    with duckdb.connect(str(warehouse)) as con:
        con.execute(
            "create or replace table knowledge.documents as "
            "select doc_id, any_value(source_updated_at) as updated_at, "
            "now() - interval 1 hour as loaded_at "  # landed an hour ago: pending, within the SLA
            "from knowledge.document_chunks group by doc_id"
        )
        return con.execute("select count(*) from knowledge.documents").fetchone()[0]


@click.command()
@click.option("--scale", type=int, default=10_000, show_default=True, help="Documents.")
@click.option("--workdir", type=click.Path(path_type=Path), help="Keep the generated files here.")
@click.option("--json", "as_json", is_flag=True, help="Print the figures as JSON.")
def main(scale: int, workdir: Path | None, as_json: bool) -> None:
    kept = workdir is not None
    workdir = workdir or Path(tempfile.mkdtemp(prefix="bench-report-"))
    workdir.mkdir(parents=True, exist_ok=True)
    env = step_env(workdir, "report") | {"RP_REPORT_PATH": str(workdir / "dashboard.html")}
    env["RP_ALERTS_FILE"] = str(workdir / "alerts.jsonl")
    job = [str(BIN / "python"), "-m"]
    click.echo(f"make report at {scale:,} documents (index by the STAND-IN embedder)", err=True)
    try:
        steps = {"generate": timed("generate chunk table", this("generate", str(scale)), env, parse_json=True)}
        documents = add_documents(workdir / "report.duckdb")
        steps["full_build"] = timed("full build (stand-in)", this("apply"), env, parse_json=True)
        steps["mutate"] = timed("mutate 1%", this("mutate", str(scale)), env, parse_json=True)
        steps["incremental"] = timed("incremental (stand-in)", this("apply"), env, parse_json=True)
        add_documents(workdir / "report.duckdb")
        pending = leave_pending(workdir / "report.duckdb")
        report = [*job, "python_jobs", "report", "--json"]
        steps["report"] = timed("make report", report, env, parse_json=True)
        steps["report_again"] = timed("make report again", report, env, parse_json=True)
        steps["render_only"] = timed("render only (--no-refresh)", [*report, "--no-refresh"], env, True)
        with duckdb.connect(str(workdir / "report.duckdb"), read_only=True) as con:
            index = con.execute(
                "select chunks_total, chunks_current, chunks_pending from observability.ops_index_freshness"
            ).fetchone()
    finally:
        if not kept:
            shutil.rmtree(workdir, ignore_errors=True)
    first = steps["report"].detail
    figures = {
        "scale": scale,
        "documents": documents,
        "chunks": steps["generate"].detail["chunks"],
        "chunks_left_pending": pending["edited"],
        "index_freshness": dict(zip(("chunks_total", "chunks_current", "chunks_pending"), index, strict=True)),
        "report_seconds": steps["report"].seconds,
        "report_refresh_seconds": round(first["refresh_seconds"], 2),
        "report_render_seconds": round(first["render_seconds"], 2),
        "report_again_seconds": steps["report_again"].seconds,
        "render_only_seconds": steps["render_only"].seconds,
        "page_mb": round(first["bytes"] / 1e6, 2),
        "charts": first["charts"],
        "peak_rss_mb": {name: steps[name].peak_rss_mb for name in ("report", "render_only")},
    }
    click.echo(json.dumps(figures, indent=None if as_json else 2, default=str))


if __name__ == "__main__":
    main()
