"""Benchmark scaling out the embedding job (issue 17), in one run, in two parts.

(a) Executors, real model: --texts distinct texts (default 2,000) of the chunks the real chunker cuts
    from generated documents (bench/generate_data.py), written as a `document_chunks` table, each
    configuration embedding all of them through the real job (`embed`) into an index of its own, in
    a process of its own, the configurations interleaved round by round so that the machine's load
    falls on them alike. At parity of cores (this machine has 2):
        local            the job's own process, torch with 2 threads
        ray 1 actor x 2  a local Ray started by the job, one actor computing with 2 threads
        ray 2 actors x 1 two actors, 1 thread each
    Figures: the job's wall time (Ray's start and the model loads included), the time to the first
    vectors, and the steady texts/s after them (what a long run gets); Ray's overhead is the local
    texts/s over Ray's, minus one.
(b) The single committer at --committer-chunks (default 1,000,000): bench_embed's synthetic chunk table,
    embedded as bench_embed's `apply` step does, by its STAND-IN EMBEDDER (hash vectors, NOT A MODEL,
    thousands of times faster than one), for each --committer-commit-rows (default 512, the setting's
    default, and 4096). Figures: rows/s of the commit loop (stand-in batch, cache commit, index commit,
    ledger checkpoint, batch after batch), of the commits alone, and of the whole job (plan, upkeep and
    publish included); into a local directory and into the local S3 server (tests/s3server.py, moto on
    127.0.0.1) next to it, plus any --index-dir URI given.

Every step is a subprocess timed with its own peak RSS (bench_warehouse.timed); the load average is
printed with each step, since the 2 cores are shared. `--json` prints the figures for machines.

Example:
    python bench/bench_scale.py
    make bench-scale ARGS="--texts 4000 --rounds 2"
    make bench-scale ARGS="--skip-executors --index-dir s3://bucket/prefix"
"""

from __future__ import annotations

import json
import math
import os
import random
import shutil
import sys
import tempfile
import time
from pathlib import Path

import click
import duckdb
import pyarrow as pa
from bench_embed import StandInEmbedder, generate, step_env
from bench_warehouse import BIN, REPO_ROOT, timed

from python_jobs.common.settings import ENV_INDEX_DIR, ENV_INDEX_SCRATCH_DIR, Settings

# (name, executor, actors, threads): at parity of this machine's 2 cores.
EXECUTORS = (
    ("local", "local", 1, 2),
    ("ray 1 actor x 2 threads", "ray", 1, 2),
    ("ray 2 actors x 1 thread", "ray", 2, 1),
)
CHUNKS_PER_DOC = 12.5  # bench_embed's synthetic documents have 5 to 20 chunks


def this(*args: str) -> list[str]:
    return [str(BIN / "python"), __file__, *args]


def load() -> str:
    return "load average " + " ".join(f"{x:.2f}" for x in os.getloadavg())


@click.group(invoke_without_command=True)
@click.option("--texts", type=int, default=2000, show_default=True, help="Distinct texts the executors embed.")
@click.option("--rounds", type=int, default=1, show_default=True, help="Interleaved rounds of the executors.")
@click.option("--commit-rows", type=int, default=128, show_default=True, help="Rows per commit in part (a).")
@click.option("--committer-chunks", type=int, default=1_000_000, show_default=True, help="Chunks for part (b).")
@click.option(
    "--committer-commit-rows",
    "committer_commit_rows",
    type=int,
    multiple=True,
    default=(512, 4096),
    show_default=True,
    help="vars.embedding.commit_rows of part (b)'s runs (repeat the option for several).",
)
@click.option("--index-dir", "index_dirs", multiple=True, help="Also run part (b) into this index location (URI).")
@click.option("--no-s3", is_flag=True, help="Part (b) without the local S3 server.")
@click.option("--skip-executors", is_flag=True, help="Only part (b).")
@click.option("--skip-committer", is_flag=True, help="Only part (a).")
@click.option("--workdir", type=click.Path(path_type=Path), help="Keep the generated files here.")
@click.option("--json", "as_json", is_flag=True, help="Print the figures as JSON.")
@click.pass_context
def main(
    ctx,
    texts: int,
    rounds: int,
    commit_rows: int,
    committer_chunks: int,
    committer_commit_rows: tuple[int, ...],
    index_dirs: tuple[str, ...],
    no_s3: bool,
    skip_executors: bool,
    skip_committer: bool,
    workdir: Path | None,
    as_json: bool,
) -> None:
    """Local executor against Ray at parity of cores (real model), and the committer at 1 M chunks."""
    if ctx.invoked_subcommand:
        return
    workdir = (workdir or Path(tempfile.mkdtemp(prefix="bench-scale-"))).resolve()
    figures: dict = {"cpus": os.cpu_count(), "load_at_start": os.getloadavg()}
    try:
        if not skip_executors:
            figures["executors"] = executors(workdir / "executors", texts, rounds, commit_rows)
        if not skip_committer:
            figures["committer"] = committer(
                workdir / "committer", committer_chunks, committer_commit_rows, index_dirs, not no_s3
            )
    finally:
        if not ctx.params["workdir"]:
            shutil.rmtree(workdir, ignore_errors=True)
    figures["load_at_end"] = os.getloadavg()
    click.echo(json.dumps(figures) if as_json else report(figures))


# --- (a) executors ----------------------------------------------------------------------------


def executors(workdir: Path, texts: int, rounds: int, commit_rows: int) -> dict:
    workdir.mkdir(parents=True, exist_ok=True)
    env = step_env(workdir, "chunks")
    click.echo(f"(a) executors: the real model on {texts:,} texts of generated documents, {load()}", err=True)
    prepared = timed("generate and chunk documents", this("prepare", str(texts)), env, parse_json=True).detail
    runs: dict[str, list[dict]] = {name: [] for name, *_ in EXECUTORS}
    for round_ in range(1, rounds + 1):
        for name, executor, actors, threads in EXECUTORS:
            ray = f", ray: {{actors: {actors}, threads_per_actor: {threads}}}" if executor == "ray" else ""
            run_env = env | {
                ENV_INDEX_DIR: str(workdir / f"index-{executor}-{actors}x{threads}-{round_}"),
                "RP_VARS": f"{{embedding: {{executor: {executor}, commit_rows: {commit_rows}, "
                f"max_tokens_per_run: 1000000000{ray}}}}}",
            }
            step = timed(f"round {round_}: {name}", this("executor", "--threads", str(threads)), run_env, True)
            runs[name].append(step.detail | {"peak_rss_mb": step.peak_rss_mb, "load": os.getloadavg()})
            detail = step.detail
            click.echo(
                f"    {detail['steady_texts_per_second']:.2f} texts/s steady, first vectors after "
                f"{detail['first_vectors_seconds']:.1f} s, job {detail['job_seconds']:.1f} s; {load()}",
                err=True,
            )
    best = {name: max(results, key=lambda r: r["steady_texts_per_second"]) for name, results in runs.items()}
    local = best["local"]
    return {
        "texts": prepared["texts"],
        "documents": prepared["documents"],
        "mean_tokens": prepared["mean_tokens"],
        "commit_rows": commit_rows,
        "runs": runs,
        "best": best,
        "ray_overhead_steady": {
            name: local["steady_texts_per_second"] / result["steady_texts_per_second"] - 1
            for name, result in best.items()
            if name != "local"
        },
        "ray_overhead_job": {
            name: local["texts_per_second"] / result["texts_per_second"] - 1
            for name, result in best.items()
            if name != "local"
        },
    }


@main.command("prepare")
@click.argument("texts", type=int)
def prepare_command(texts: int) -> None:
    """Write a document_chunks table of TEXTS distinct chunks the real chunker cut from generated documents."""
    import bench_chunking
    import generate_data

    from python_jobs.chunk.chunker import build_chunker
    from python_jobs.chunk.markdown import normalize_markdown

    settings = Settings.load()
    rng = random.Random(texts)
    text_model = generate_data.TextModel(generate_data.SAMPLE_DOCS, rng, pool_size=20_000)
    products = generate_data.build_products(rng, 100)
    chunker = build_chunker(settings.retrieval)
    docs_dir = settings.warehouse_path.parent / "docs"
    chunks: dict[str, dict] = {}
    documents = 0
    while len(chunks) < texts:
        batch = max(10, math.ceil((texts - len(chunks)) / 8))
        shutil.rmtree(docs_dir, ignore_errors=True)
        generate_data.write_documents(docs_dir, text_model, rng, batch, products, first=documents + 1)
        documents += batch
        for doc in bench_chunking.load_documents(docs_dir):
            for chunk in chunker.chunk(doc.doc_id, doc.title, normalize_markdown(doc.body)):
                chunks.setdefault(chunk.content_hash, _columns(chunk))
    rows = list(chunks.values())[:texts]
    # bench_embed's synthetic table gives every other column; its texts are replaced by the chunker's.
    generate(settings.warehouse_path, math.ceil(texts / 5), settings)
    table = pa.Table.from_pylist([{"n": n, **row} for n, row in enumerate(rows, 1)])
    with duckdb.connect(str(settings.warehouse_path)) as con:
        con.register("chunker_texts", table)
        con.execute(
            """create or replace table knowledge.document_chunks as
            select c.* exclude (n) replace (
                t.heading_path as heading_path, t.text as text, t.embedding_text as embedding_text,
                t.token_count::integer as token_count, t.content_hash as content_hash
            )
            from (select *, row_number() over (order by chunk_id) as n from knowledge.document_chunks) c
            join chunker_texts t using (n)"""
        )
    tokens = sum(row["token_count"] for row in rows) / len(rows)
    click.echo(json.dumps({"texts": len(rows), "documents": documents, "mean_tokens": round(tokens, 1)}))


def _columns(chunk) -> dict:
    names = ("heading_path", "text", "embedding_text", "token_count", "content_hash")
    return {name: getattr(chunk, name) for name in names}


class Clocked:
    """The job's embedder, noting when each batch of vectors reached the committer (wall clock, and the CPU time
    this process had used by then: on a shared machine, work per CPU second is what other load cannot change)."""

    def __init__(self, inner):
        self.inner, self.fingerprint = inner, inner.fingerprint
        self.arrivals: list[tuple[float, int]] = []
        self.cpu: list[float] = []
        if hasattr(inner, "encode_stream"):
            self.encode_stream = self._stream

    @property
    def loaded(self) -> bool:
        return self.inner.loaded

    def encode(self, texts: list[str]):
        vectors = self.inner.encode(texts)
        self._arrived(len(texts))
        return vectors

    def _stream(self, batches):
        for vectors in self.inner.encode_stream(batches):
            self._arrived(len(vectors))
            yield vectors

    def _arrived(self, texts: int) -> None:
        self.arrivals.append((time.perf_counter(), texts))
        self.cpu.append(time.process_time())


@main.command("executor")
@click.option("--threads", type=int, default=2, help="torch threads of the local executor.")
def executor_command(threads: int) -> None:
    """One full build with the configured executor (RP_VARS), timed batch by batch."""
    from python_jobs.index.embed import EmbedOptions, embed
    from python_jobs.index.encoders import load_embedder
    from python_jobs.index.ray_executor import on_executor
    from python_jobs.index.store import MODEL_CACHE_DIR, VectorIndex

    settings = Settings.load()
    if settings.embedding.executor == "local":
        import torch

        torch.set_num_threads(threads)
    cache_dir = VectorIndex(settings.index_dir).location.scratch / MODEL_CACHE_DIR
    local = load_embedder(settings.retrieval.embedding_model, settings.embedding, cache_dir)
    embedder = Clocked(on_executor(local, settings.embedding))
    started = time.perf_counter()
    summary = embed(settings, EmbedOptions(force=True, progress=False), embedder=embedder)
    job = time.perf_counter() - started
    (first, first_texts), (last, _) = embedder.arrivals[0], embedder.arrivals[-1]
    texts = summary.texts_embedded
    click.echo(
        json.dumps(
            {
                "texts": texts,
                "batches": len(embedder.arrivals),
                "job_seconds": job,
                "texts_per_second": texts / job,
                "first_vectors_seconds": first - started,
                "steady_texts_per_second": (texts - first_texts) / (last - first) if last > first else None,
                "embed_seconds": summary.embed_seconds,
                "write_seconds": summary.write_seconds,
                "actors": getattr(embedder.inner, "actors", 0),
                "arrivals": [(round(at - started, 2), n) for at, n in embedder.arrivals],
                "job_cpu_seconds_after_first_vectors": embedder.cpu[-1] - embedder.cpu[0],
            }
        )
    )


# --- (b) the committer ------------------------------------------------------------------------


def committer(
    workdir: Path, chunks: int, commit_rows: tuple[int, ...], index_dirs: tuple[str, ...], with_s3: bool
) -> dict:
    workdir.mkdir(parents=True, exist_ok=True)
    env = step_env(workdir, "committer")
    docs = round(chunks / CHUNKS_PER_DOC)
    click.echo(f"(b) the committer at ~{chunks:,} chunks, fed by the STAND-IN embedder, {load()}", err=True)
    generate_step = [str(BIN / "python"), "bench/bench_embed.py", "generate", str(docs)]
    generated = timed("generate chunk table (bench_embed)", generate_step, env, parse_json=True).detail
    targets: list[tuple[str, str, dict]] = [("local directory", str(workdir / "index-local"), {})]
    targets += [(uri, uri, {}) for uri in index_dirs]
    results: dict[str, dict] = {}
    s3 = _s3_server(workdir) if with_s3 else None
    try:
        if s3 is not None:
            targets.insert(1, ("local S3 server (moto)", s3.uri("bench-committer"), s3.env))
        for rows in commit_rows:
            for name, location, extra in targets:
                run = f"{name}, commits of {rows}"
                run_env = (
                    env
                    | extra
                    | {
                        ENV_INDEX_DIR: f"{location}-{rows}",
                        ENV_INDEX_SCRATCH_DIR: str(workdir / f"scratch-{rows}"),
                        "RP_VARS": f"{{embedding: {{commit_rows: {rows}, max_tokens_per_run: 1000000000000, "
                        "ann_min_rows: 1000000000}}",
                    }
                )
                step = timed(f"full build into {run}", this("commit"), run_env, parse_json=True)
                results[run] = step.detail | {
                    "index": name,
                    "location": run_env[ENV_INDEX_DIR],
                    "wall_seconds": step.seconds,
                    "load": os.getloadavg(),
                }
                click.echo(
                    f"    {results[run]['apply_rows_per_second']:,.0f} rows/s apply phase, "
                    f"{results[run]['commit_rows_per_second']:,.0f} rows/s commits alone; {load()}",
                    err=True,
                )
    finally:
        if s3 is not None:
            s3.__exit__(None, None, None)
    return {"chunks": generated["chunks"], "runs": results}


def _s3_server(workdir: Path):
    """The local S3 server of the tests (moto on 127.0.0.1), or None when it cannot start here."""
    sys.path.insert(0, str(REPO_ROOT))
    try:
        from tests.s3server import S3Server

        return S3Server(log=workdir / "moto.log").__enter__()
    except (ImportError, OSError, RuntimeError) as exc:
        click.echo(f"    no local S3 server ({exc}): part (b) runs on the local directory only", err=True)
        return None


@main.command("commit")
def commit_command() -> None:
    """A full build fed by bench_embed's stand-in embedder (its `apply` step), timed commit by commit."""
    from python_jobs.index.embed import EmbedOptions, embed

    settings = Settings.load()
    embedder = Clocked(StandInEmbedder(settings))
    started = time.perf_counter()
    summary = embed(settings, EmbedOptions(progress=True, force=True), embedder=embedder)
    job = time.perf_counter() - started
    (first, first_rows), (last, _) = embedder.arrivals[0], embedder.arrivals[-1]
    rows = summary.texts_embedded  # every chunk of the synthetic table is new and has a text of its own
    click.echo(
        json.dumps(
            {
                "rows": rows,
                "commit_rows": settings.embedding.commit_rows,
                "commits": 2 * len(embedder.arrivals),  # the cache's and the index's
                "job_seconds": job,
                "plan_seconds": summary.plan_seconds,
                "stand_in_seconds": summary.embed_seconds,
                "write_seconds": summary.write_seconds,
                "upkeep_seconds": summary.upkeep_seconds,
                # Each interval: the stand-in's batch, its cache commit, its index commit, the ledger checkpoint.
                "commit_loop_seconds": last - first,
                "commit_loop_cpu_seconds": embedder.cpu[-1] - embedder.cpu[0],
                "apply_rows_per_second": (rows - first_rows) / (last - first),
                "apply_rows_per_cpu_second": (rows - first_rows) / (embedder.cpu[-1] - embedder.cpu[0]),
                "commit_rows_per_second": rows / summary.write_seconds,
                "job_rows_per_second": rows / job,
            }
        )
    )


# --- the report -------------------------------------------------------------------------------


def report(figures: dict) -> str:
    lines = [f"\nScaling out the embedding job ({figures['cpus']} CPUs; {_loads(figures)})"]
    if "executors" in figures:
        part = figures["executors"]
        lines += [
            f"\n(a) Executors, real model: {part['texts']:,} texts ({part['mean_tokens']} tokens on average) of "
            f"{part['documents']:,} generated documents, commits of {part['commit_rows']}; best of "
            f"{len(next(iter(part['runs'].values())))} round(s)",
            f"  {'executor':<26}{'steady texts/s':>16}{'job texts/s':>13}{'first vectors':>15}{'job':>9}",
        ]
        for name, best in part["best"].items():
            lines.append(
                f"  {name:<26}{best['steady_texts_per_second']:>16.2f}{best['texts_per_second']:>13.2f}"
                f"{best['first_vectors_seconds']:>14.1f}s{best['job_seconds']:>8.1f}s"
            )
        for name, overhead in part["ray_overhead_steady"].items():
            job = part["ray_overhead_job"][name]
            lines.append(f"  Ray overhead, {name}: {overhead:+.1%} steady, {job:+.1%} whole job (goal < 15%)")
    if "committer" in figures:
        lines.append("\n(b) The single committer, fed by the STAND-IN embedder (hash vectors, not a model)")
        header = f"{'index, commit size':<42}{'rows':>11}{'loop rows/s':>13}{'per CPU s':>11}{'writes rows/s':>15}"
        lines.append(f"  {header}{'job rows/s':>12}{'job':>9}")
        for name, run in figures["committer"]["runs"].items():
            lines.append(
                f"  {name:<42}{run['rows']:>11,}{run['apply_rows_per_second']:>13,.0f}"
                f"{run['apply_rows_per_cpu_second']:>11,.0f}{run['commit_rows_per_second']:>15,.0f}"
                f"{run['job_rows_per_second']:>12,.0f}{run['job_seconds']:>8.1f}s"
            )
        lines.append(
            "  loop: stand-in batch + cache commit + index commit + ledger checkpoint, batch after batch (per CPU s: "
            "per second of the job's CPU time); writes: the two commits alone; job: plan, upkeep and publish included"
        )
        lines.append("  goal: >= 20,000 rows/s, so that 10 GPU workers never wait on the committer")
    return "\n".join(lines)


def _loads(figures: dict) -> str:
    start, end = figures["load_at_start"], figures["load_at_end"]
    return f"load average {start[0]:.2f} at the start, {end[0]:.2f} at the end"


if __name__ == "__main__":
    main()
