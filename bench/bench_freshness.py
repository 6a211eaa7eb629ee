"""Benchmark freshness: how long an edit takes to become searchable through `rp serve`, with `rp watch` running.

(a) The sample corpus (data/raw, 90 documents), the real model: `rp watch` and `rp serve` run as processes of
    their own. Edits, additions and deletions one at a time, then bursts of 10 and 100 edited documents:
    each measured from the file write to the moment `POST /v1/search` returns the new text (a removal: no
    longer returns the document), p50 / p95 / max. No-op cycles (a file touched, its content the same).
    Then `make pipeline` with nothing landed, before (every build run, as the pipeline did before it
    skipped unchanged builds: `watch.skip_unchanged_builds: false`) and after.
(b) A world of at least 100,000 chunks (generated documents, `bench/generate_data.py`), with the index
    filled and kept by a STAND-IN EMBEDDER (hash vectors under the real model's fingerprint,
    bench/bench_embed.py: the real model would take hours here): the single-edit figure again.

Searches are full-text (`mode: fts`) for a word only the change contains, so what is measured is the
data path (land, build, embed, publish, the service's swap), not ranking. Figures are printed, never
asserted; `--json` prints them for machines. Each part builds its own workspace under --workdir.

Example:
    python bench/bench_freshness.py
    make bench-freshness ARGS="--single 5 --skip-large"
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import click
from bench_serve import Service
from bench_warehouse import BIN, REPO_ROOT

from python_jobs.common.settings import workspace_env

SAMPLE = REPO_ROOT / "data" / "raw"
POLL_SECONDS = 0.05
TIMEOUT_SECONDS = 600
GOALS = {"single": 10.0, "burst-100": 60.0, "no-op": 1.0, "large-single": 30.0}


@dataclass
class Figures:
    name: str
    seconds: list[float] = field(default_factory=list)

    def row(self) -> dict:
        values = sorted(self.seconds)
        return {
            "name": self.name,
            "n": len(values),
            "p50": round(statistics.median(values), 2) if values else None,
            "p95": round(_percentile(values, 95), 2) if values else None,
            "max": round(values[-1], 2) if values else None,
        }


def _percentile(values: list[float], percent: float) -> float:
    """Nearest-rank percentile of sorted values."""
    rank = max(1, -(-len(values) * percent // 100))
    return values[int(rank) - 1]


# --- the processes ------------------------------------------------------------------------------


class Watcher:
    """`rp watch --json` (or the stand-in watcher of this file) on a workspace, its lines read as they come."""

    def __init__(self, root: Path, stand_in: bool = False, env: dict[str, str] | None = None):
        self.log = root / ("watch-stand-in.jsonl" if stand_in else "watch.jsonl")
        command = [sys.executable, __file__, "stand-in-watch"] if stand_in else [str(BIN / "rp"), "watch", "--json"]
        self.process = subprocess.Popen(
            command,
            cwd=REPO_ROOT,
            env={**workspace(root), **(env or {})},
            stdout=self.log.open("w", encoding="utf-8"),
            stderr=self.log.with_suffix(".stderr").open("w", encoding="utf-8"),
        )
        self.wait(lambda line: line["event"] == "model_loaded", "the model to load")

    def lines(self) -> list[dict]:
        text = self.log.read_text(encoding="utf-8")
        return [json.loads(line) for line in text.splitlines() if line.strip().startswith("{")]

    def wait(self, check, what: str, after: int = 0, timeout: float = TIMEOUT_SECONDS) -> dict:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise click.ClickException(f"the watcher exited: {self.log.with_suffix('.stderr').read_text()}")
            for line in self.lines()[after:]:
                if check(line):
                    return line
            time.sleep(POLL_SECONDS)
        raise click.ClickException(f"timed out waiting for {what}: {self.log}")

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            self.process.wait(timeout=300)


class Searcher:
    def __init__(self, service: Service):
        import httpx2

        self.client = httpx2.Client(
            base_url=service.url, headers={"Authorization": f"Bearer {service.key}"}, timeout=30
        )

    def doc_ids(self, text: str) -> list[str]:
        response = self.client.post("/v1/search", json={"query": text, "mode": "fts", "k": 10})
        response.raise_for_status()
        return [hit["doc_id"] for hit in response.json()["results"]]

    def until(self, text: str, doc_id: str, present: bool, since: float) -> float:
        """Seconds from `since` (time.monotonic) until searching `text` does (or no longer does) return doc_id."""
        deadline = since + TIMEOUT_SECONDS
        while time.monotonic() < deadline:
            if (doc_id in self.doc_ids(text)) == present:
                return time.monotonic() - since
            time.sleep(POLL_SECONDS)
        raise click.ClickException(f"{doc_id} {'never appeared' if present else 'never left'} for {text!r}")


# --- the changes ------------------------------------------------------------------------------


def token() -> str:
    return "fqz" + secrets.token_hex(5)


def doc_id_of(path: Path) -> str:
    for line in path.read_text(encoding="utf-8").splitlines()[1:20]:
        if line.startswith("doc_id:"):
            return line.split(":", 1)[1].strip().strip("\"'")
    raise click.ClickException(f"{path} has no doc_id")


def append_section(path: Path, word: str) -> float:
    with path.open("a", encoding="utf-8") as handle:
        handle.write(f"\n\n## Freshness probe {word}\n\nThe {word} probe paragraph, added by the benchmark.\n")
    return time.monotonic()


def new_document(folder: Path, number: int, word: str) -> tuple[Path, str, float]:
    doc_id = f"bench-fresh-{number}-{word}"
    path = folder / f"{doc_id}.md"
    path.write_text(
        f'---\ndoc_id: {doc_id}\ntitle: "Freshness probe {number}"\ndoc_type: faq\nowner: customer-support\n'
        f"access_level: public\nupdated_at: 2026-11-01T09:00:00Z\n---\n# Freshness probe {number}\n\n"
        f"## What is {word}?\n\nThe {word} answer, added by the benchmark.\n",
        encoding="utf-8",
    )
    return path, doc_id, time.monotonic()


# --- the parts ----------------------------------------------------------------------------------


def workspace(root: Path) -> dict[str, str]:
    return {**os.environ, **workspace_env(root), "HF_HUB_OFFLINE": "1", "DBT_PROFILES_DIR": str(REPO_ROOT)}


def rp(root: Path, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(BIN / "rp"), *args], cwd=REPO_ROOT, env={**workspace(root), **(env or {})}, capture_output=True, text=True
    )


def sample_part(workdir: Path, single: int, pipeline_runs: int) -> dict:
    root = workdir / "sample"
    shutil.rmtree(root, ignore_errors=True)
    shutil.copytree(SAMPLE, root / "landing")
    click.echo("sample: first load through `rp watch --once` (ingest, full build, embed 1,700 chunks)...", err=True)
    first = _timed(lambda: rp(root, "watch", "--once", "--json"))
    results: dict = {"first_load_seconds": first[1]}
    service = Service(root / "index", workdir, "freshness-sample")
    watcher = Watcher(root)
    search = Searcher(service)
    docs = sorted((root / "landing" / "docs").rglob("*.md"))
    added_dir = root / "landing" / "docs" / "faq"
    figures = {kind: Figures(kind) for kind in ("edit", "add", "delete")}
    try:
        for n in range(single):  # one at a time: each change searchable before the next is made
            word = token()
            path = docs[n % len(docs)]
            figures["edit"].seconds.append(search.until(word, doc_id_of(path), True, append_section(path, word)))
            if n < max(1, single // 2):
                word = token()
                added, doc_id, written = new_document(added_dir, n, word)
                figures["add"].seconds.append(search.until(word, doc_id, True, written))
                added.unlink()
                figures["delete"].seconds.append(search.until(word, doc_id, False, time.monotonic()))
        for size in (10, 100):
            figures[f"burst-{size}"] = _burst(search, docs, added_dir, size)
        noop = Figures("no-op cycle")
        for _ in range(5):
            seen = len(watcher.lines())
            os.utime(docs[0])  # the same content, a new mtime: an event, and nothing to do
            line = watcher.wait(lambda line: line["event"] == "cycle", "a no-op cycle", after=seen)
            noop.seconds.append(line["seconds"])
        figures["no-op"] = noop
        cycles = [line for line in watcher.lines() if line["event"] == "cycle"]
    finally:
        watcher.stop()
        service.stop()
    single_all = Figures(
        "single (edit, add, delete)", [s for k in ("edit", "add", "delete") for s in figures[k].seconds]
    )
    results["figures"] = [single_all.row(), *(f.row() for f in figures.values())]
    results["cycles"] = len(cycles)
    results["burst_cycles"] = [
        {"changes": c["changes"], "seconds": c["seconds"], "timings": c["timings"]}
        for c in cycles
        if sum(c["changes"].values()) >= 10
    ]
    results["marts"] = _marts(root)
    results["pipeline_noop"] = _pipeline_noop(root, pipeline_runs)
    return results


def _burst(search: Searcher, docs: list[Path], new_docs: Path, size: int) -> Figures:
    """`size` files changed at once (existing documents edited, new ones added past the corpus's size); each
    one's seconds from its write to searchable."""
    changes: list[tuple[str, str, float]] = []  # (word, doc id, written), in the order written
    for i in range(size):
        word = token()
        if i < len(docs):
            changes.append((word, doc_id_of(docs[i]), append_section(docs[i], word)))
        else:
            _, doc_id, written = new_document(new_docs, 1000 + i, word)
            changes.append((word, doc_id, written))
    figures = Figures(f"burst of {size} (each document)")
    deadline = changes[0][2] + TIMEOUT_SECONDS
    while changes and time.monotonic() < deadline:
        # A cycle publishes a version with all it landed: look until the first change still missing.
        while changes and changes[0][1] in search.doc_ids(changes[0][0]):
            figures.seconds.append(time.monotonic() - changes.pop(0)[2])
        time.sleep(POLL_SECONDS)
    if changes:
        raise click.ClickException(f"{len(changes)} of the burst of {size} never became searchable")
    return figures


def _marts(root: Path) -> list[dict]:
    """The same latencies as the platform records them (ops_freshness), refreshed by `rp report`."""
    rp(root, "report", "--json")
    ran = rp(root, "sql", "select * from observability.ops_freshness order by published_hour, runner", "--json")
    return json.loads(ran.stdout) if ran.returncode == 0 else [{"error": ran.stderr}]


def _pipeline_noop(root: Path, runs: int) -> dict:
    """`rp pipeline` with nothing landed: before (every build run) and after (unchanged builds skipped)."""
    out = {}
    for label, extra in (("before", {"RP_VARS": "{watch: {skip_unchanged_builds: false}}"}), ("after", {})):
        walls, data_steps = [], []
        for _ in range(runs):
            ran, wall = _timed(lambda extra=extra: rp(root, "pipeline", "--json", env=extra))
            steps = {s["step"]: s["seconds"] for s in json.loads(ran.stdout)["steps"]}
            walls.append(wall)
            data_steps.append(steps["ingest"] + steps["build"] + steps["embed"])
            out.setdefault(f"{label}_steps", steps)
        out[label] = {"pipeline_seconds": round(min(walls), 1), "ingest_build_embed_seconds": round(min(data_steps), 2)}
    return out


def large_part(workdir: Path, scale: int, single: int) -> dict:
    root = workdir / f"large-{scale}"
    # The first load embeds every chunk: more tokens than vars.embedding.max_tokens_per_run allows one run.
    budget = {"RP_VARS": "{embedding: {max_tokens_per_run: 1000000000}}"}
    if not (root / ".ready").is_file():
        if not (root / "landing").is_dir():
            click.echo(f"large: generating {scale:,} documents...", err=True)
            subprocess.run(
                [sys.executable, str(REPO_ROOT / "bench" / "generate_data.py"), "--scale", str(scale), "--out",
                 str(root / "landing")],
                cwd=REPO_ROOT, check=True, capture_output=True,
            )  # fmt: skip
        click.echo("large: first load with the stand-in embedder (ingest, full build, embed)...", err=True)
        first = subprocess.run(
            [sys.executable, __file__, "stand-in-watch", "--once"], cwd=REPO_ROOT, env={**workspace(root), **budget},
            capture_output=True, text=True,
        )  # fmt: skip
        if first.returncode != 0:
            raise click.ClickException(f"the first load failed:\n{first.stdout}\n{first.stderr}")
        (root / ".ready").touch()
    ran = rp(root, "sql", "select count(*) as chunks from knowledge.document_chunks", "--json")
    chunks = json.loads(ran.stdout)[0]["chunks"]
    service = Service(root / "index", workdir, "freshness-large")
    watcher = Watcher(root, stand_in=True, env=budget)
    search = Searcher(service)
    docs = sorted((root / "landing" / "docs").rglob("*.md"))
    edits = Figures(f"single edit, {chunks:,} chunks (stand-in embedder)")
    try:
        for n in range(single):
            word = token()
            path = docs[(n * 7919) % len(docs)]
            edits.seconds.append(search.until(word, doc_id_of(path), True, append_section(path, word)))
        cycles = [line for line in watcher.lines() if line["event"] == "cycle"][1:]
    finally:
        watcher.stop()
        service.stop()
    return {"chunks": chunks, "figures": [edits.row()], "cycle_timings": [c["timings"] for c in cycles]}


def _timed(run):
    started = time.perf_counter()
    result = run()
    return result, round(time.perf_counter() - started, 2)


# --- the report ---------------------------------------------------------------------------------


def report(results: dict) -> str:
    lines = ["", "Edit to searchable through rp serve (/v1/search), rp watch running", ""]
    lines.append("| Change | n | p50 (s) | p95 (s) | max (s) | Goal |")
    lines.append("|---|---:|---:|---:|---:|---|")
    goal = {
        "single (edit, add, delete)": f"p95 < {GOALS['single']:g} s",
        "burst of 100 (each document)": f"all < {GOALS['burst-100']:g} s",
        "no-op cycle": f"< {GOALS['no-op']:g} s",
    }
    rows = list(results.get("sample", {}).get("figures", []))
    rows += results.get("large", {}).get("figures", [])
    for row in rows:
        target = goal.get(row["name"], f"p95 < {GOALS['large-single']:g} s" if "stand-in" in row["name"] else "")
        lines.append(f"| {row['name']} | {row['n']} | {row['p50']} | {row['p95']} | {row['max']} | {target} |")
    noop = results.get("sample", {}).get("pipeline_noop")
    if noop:
        lines += [
            "",
            "`rp pipeline` with nothing landed (best of the runs):",
            "",
            "| | whole pipeline (s) | ingest + build + embed (s) |",
            "|---|---:|---:|",
            f"| before (every build run) | {noop['before']['pipeline_seconds']} | "
            f"{noop['before']['ingest_build_embed_seconds']} |",
            f"| after (unchanged build skipped) | {noop['after']['pipeline_seconds']} | "
            f"{noop['after']['ingest_build_embed_seconds']} |",
        ]
    return "\n".join(lines)


@click.group(invoke_without_command=True)
@click.option("--single", default=10, show_default=True, help="Single edits (and half as many adds and deletes).")
@click.option("--large-single", default=5, show_default=True, help="Single edits on the large world.")
@click.option(
    "--scale", default=8000, show_default=True, help="Generated documents of the large world (~13 chunks each)."
)
@click.option("--pipeline-runs", default=1, show_default=True, help="`rp pipeline` no-op runs, before and after.")
@click.option("--skip-large", is_flag=True, help="Only the sample corpus.")
@click.option("--skip-sample", is_flag=True, help="Only the large world.")
@click.option("--workdir", type=click.Path(path_type=Path, file_okay=False), default=None)
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def main(ctx, single, large_single, scale, pipeline_runs, skip_large, skip_sample, workdir, as_json) -> None:
    if ctx.invoked_subcommand is not None:
        return
    workdir = workdir or Path(tempfile.mkdtemp(prefix="bench-freshness-"))
    workdir.mkdir(parents=True, exist_ok=True)
    results: dict = {"workdir": str(workdir)}
    saved = workdir / "results.json"
    if not skip_sample:
        results["sample"] = sample_part(workdir, single, pipeline_runs)
        saved.write_text(json.dumps(results, indent=2, default=str), encoding="utf-8")
    if not skip_large:
        results["large"] = large_part(workdir, scale, large_single)
        saved.write_text(json.dumps(results, indent=2, default=str), encoding="utf-8")
    click.echo(json.dumps(results, indent=2, default=str) if as_json else report(results))


@main.command(name="stand-in-watch")
@click.option("--once", is_flag=True)
def stand_in_watch(once: bool) -> None:
    """`rp watch --json` with the STAND-IN EMBEDDER (bench/bench_embed.py) instead of the model."""
    from bench_embed import StandInEmbedder

    from python_jobs.common.output import emit, run_job
    from python_jobs.common.settings import Settings
    from python_jobs.watch.watcher import WatchOptions, watch

    settings = Settings.load()
    options = WatchOptions(once=once, as_json=True, progress=False, embedder=StandInEmbedder(settings))
    summary = run_job(lambda: watch(settings, options))
    emit(summary, True)
    sys.exit(summary.exit_code)


if __name__ == "__main__":
    main()
