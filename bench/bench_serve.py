"""Load benchmark of the retrieval service, in one run, against 127.0.0.1 only.

For each index, `rp serve` runs as its own process on a free port of 127.0.0.1, and a bounded asyncio
client (httpx2, keep-alive connections) sends /v1/search requests for `--duration` seconds per mode
(vector, fts, hybrid) at 1, 4 and 16 concurrent clients. Every request carries a different question
(a seeded eval question with a number appended), so no answer comes from the service's query-vector
cache: each vector and hybrid request embeds its question with the real model.

Indexes:
- the sample index (default: the configured one, RP_INDEX_DIR or data/index, as `make demo` leaves it);
- an index of `--chunks` (default 100,000) synthetic chunks, filled by the STAND-IN EMBEDDER of
  bench/bench_embed.py (hash vectors under the real model's fingerprint: the service loads the real
  model and embeds the questions with it, so the latency is real and only the ranking is meaningless),
  with the ANN index the pipeline builds at that size (vars.embedding.ann_min_rows). It is generated
  once into `--workdir` and reused.

Printed per index, mode and concurrency: requests/s and p50/p95/p99 latency as the client saw it,
errors, the service's CPU time per request (its cost, whatever else the machine is doing) and the
load average when the run started (the machine has 2 cores; other work on it slows every figure but
the CPU time); then whether every request reached the query log (requests sent = rows written, nothing
dropped), and the CLI's time for the same question (`rp query`, a new process: imports, model load,
one search). Figures are printed, and the issue's goals checked, never asserted.

Example:
    python bench/bench_serve.py --chunks 100000 --duration 5
    make bench-serve ARGS="--skip-large"
"""

from __future__ import annotations

import asyncio
import csv
import json
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import click

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_embed import step_env
from bench_warehouse import BIN, REPO_ROOT, timed

from python_jobs.common.settings import (
    ENV_INDEX_DIR,
    ENV_KEYS_PATH,
    ENV_SERVE_LOG_DIR,
    ENV_VARS,
    Settings,
)

MODES = ("vector", "fts", "hybrid")
CONCURRENCY = (1, 4, 16)
QUESTIONS = REPO_ROOT / "seeds" / "eval_questions.csv"
CLI_QUESTION = "how do I descale the kettle"
CHUNKS_PER_DOC = 13  # as bench_embed generates them, on average
WARM_UP_REQUESTS = 20


@dataclass
class Run:
    index: str
    chunks: int
    mode: str
    clients: int
    requests: int
    errors: int
    seconds: float
    rps: float
    p50_ms: float
    p95_ms: float
    p99_ms: float
    server_cpu_ms: float = 0.0  # the service process's CPU time per request (all its threads)
    load: float = 0.0  # the machine's 1-minute load average when the run started (2 cores)


# --- the service as a process -----------------------------------------------------------------


class Service:
    """`rp serve --port 0` on an index, with a bench key, until stopped."""

    def __init__(self, index_dir: Path, workdir: Path, name: str):
        from python_jobs.serve.keys import create_key

        self.log_dir = workdir / f"serve_log-{name}"
        shutil.rmtree(self.log_dir, ignore_errors=True)
        keys = workdir / f"keys-{name}.json"
        keys.unlink(missing_ok=True)
        self.env = {
            **os.environ,
            ENV_INDEX_DIR: str(index_dir),
            ENV_KEYS_PATH: str(keys),
            ENV_SERVE_LOG_DIR: str(self.log_dir),
            # The benchmark measures the service, not its guardrails: limits far above what it sends.
            ENV_VARS: "{serve: {log_queue_size: 200000}}",
            "HF_HUB_OFFLINE": "1",
        }
        self.key = create_key(keys, "bench", "confidential", 1_000_000.0, 10**12).secret
        self.log_file = workdir / f"serve-{name}.log"  # the service's own log, for when it fails
        self._log = self.log_file.open("w", encoding="utf-8")
        self.process = subprocess.Popen(
            [str(BIN / "rp"), "serve", "--port", "0"],
            cwd=REPO_ROOT,
            env=self.env,
            stdout=subprocess.DEVNULL,
            stderr=self._log,
        )
        try:
            self.url = self._address()
            self._wait_ready()
        except BaseException:
            self.stop()  # never leave a server behind
            raise

    def _address(self) -> str:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            match = re.search(r"serving on (http://127\.0\.0\.1:\d+)", self.log_file.read_text(encoding="utf-8"))
            if match:
                return match.group(1)
            self._check_running()
            time.sleep(0.1)
        raise click.ClickException(f"rp serve did not start in 2 minutes; its log: {self.log_file}")

    def _check_running(self) -> None:
        if self.process.poll() is not None:
            raise click.ClickException(f"rp serve exited {self.process.returncode}:\n{self.log_file.read_text()}")

    def _wait_ready(self) -> None:
        import httpx2

        deadline = time.monotonic() + 600
        while time.monotonic() < deadline:
            self._check_running()
            try:
                ready = httpx2.get(self.url + "/readyz", timeout=5)
                if ready.status_code == 200:
                    self.index = ready.json()["index"]
                    return
                if ready.json().get("error"):  # the index cannot be opened: waiting will not help
                    raise click.ClickException(f"rp serve cannot open the index: {ready.json()['error']}")
            except httpx2.TransportError:
                pass
            time.sleep(0.5)
        raise click.ClickException(f"rp serve at {self.url} did not get ready in 10 minutes; its log: {self.log_file}")

    def cpu_seconds(self) -> float:
        """User + system CPU time of the service process so far (all its threads)."""
        fields = Path(f"/proc/{self.process.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def dropped(self) -> float:
        import httpx2
        from prometheus_client.parser import text_string_to_metric_families

        total = 0.0
        for family in text_string_to_metric_families(httpx2.get(self.url + "/metrics", timeout=10).text):
            total += sum(s.value for s in family.samples if s.name == "rp_serve_log_rows_dropped_total")
        return total

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=120)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self._log.close()

    def logged_rows(self) -> int:
        import pyarrow.dataset as ds

        folder = self.log_dir / "query_log"
        return ds.dataset(str(folder), format="parquet").count_rows() if folder.is_dir() else 0


# --- the client -------------------------------------------------------------------------------


def questions() -> list[str]:
    with QUESTIONS.open(encoding="utf-8") as handle:
        return [row["question"] for row in csv.DictReader(handle)]


async def load(url: str, key: str, mode: str, clients: int, duration: float, asked: list[str], counter) -> Run:
    """`clients` workers, each sending one request at a time for `duration` seconds."""
    import httpx2

    latencies: list[float] = []
    errors = 0
    limits = httpx2.Limits(max_connections=clients, max_keepalive_connections=clients)
    async with httpx2.AsyncClient(
        base_url=url, headers={"Authorization": f"Bearer {key}"}, limits=limits, timeout=60
    ) as client:

        async def worker() -> None:
            nonlocal errors
            while time.perf_counter() < deadline:
                number = next(counter)
                question = f"{asked[number % len(asked)]} {number}"
                started = time.perf_counter()
                try:
                    response = await client.post("/v1/search", json={"query": question, "mode": mode, "k": 10})
                    ok = response.status_code == 200
                except httpx2.HTTPError:
                    ok = False
                latencies.append(time.perf_counter() - started)
                errors += not ok

        for _ in range(min(WARM_UP_REQUESTS, 4 * clients)):  # connections opened, code paths warm
            number = next(counter)
            await client.post("/v1/search", json={"query": f"{asked[0]} {number}", "mode": mode, "k": 10})
        started = time.perf_counter()
        deadline = started + duration
        await asyncio.gather(*(worker() for _ in range(clients)))
        seconds = time.perf_counter() - started
    ms = sorted(latency * 1000 for latency in latencies)
    return Run(
        index="",
        chunks=0,
        mode=mode,
        clients=clients,
        requests=len(ms),
        errors=errors,
        seconds=round(seconds, 2),
        rps=round(len(ms) / seconds, 1),
        p50_ms=round(statistics.median(ms), 1),
        p95_ms=round(_percentile(ms, 95), 1),
        p99_ms=round(_percentile(ms, 99), 1),
    )


def _percentile(sorted_values: list[float], percent: float) -> float:
    """Nearest-rank percentile."""
    rank = max(1, -(-len(sorted_values) * percent // 100))
    return sorted_values[int(rank) - 1]


def bench_index(name: str, index_dir: Path, workdir: Path, duration: float, modes, concurrency) -> dict:
    import itertools

    click.echo(f"{name}: starting rp serve on {index_dir}", err=True)
    service = Service(index_dir, workdir, name)
    counter = itertools.count()
    runs: list[Run] = []
    try:
        asked = questions()
        for mode in modes:
            for clients in concurrency:
                load_average, cpu_before = os.getloadavg()[0], service.cpu_seconds()
                run = asyncio.run(load(service.url, service.key, mode, clients, duration, asked, counter))
                cpu = service.cpu_seconds() - cpu_before  # warm-up requests included: a slight overestimate
                run.index, run.chunks, run.load = name, service.index["rows"], round(load_average, 1)
                run.server_cpu_ms = round(cpu * 1000 / max(run.requests, 1), 1)
                runs.append(run)
                click.echo(f"  {_row(run)}", err=True)
        dropped = service.dropped()
    finally:
        service.stop()
    sent = next(counter)
    written = service.logged_rows()
    cli = cli_query_seconds(service.env)
    return {
        "index": name,
        "table": service.index["table"],
        "version": service.index["version"],
        "chunks": service.index["rows"],
        "runs": [asdict(run) for run in runs],
        "requests_sent": sent,
        "log_rows_written": written,
        "log_rows_dropped": dropped,
        "log_rows_lost": sent - written,
        "cli_query_seconds": cli,
    }


def cli_query_seconds(env: dict[str, str]) -> float:
    """`rp query` for CLI_QUESTION, hybrid, as a user runs it: a new process each time."""
    started = time.perf_counter()
    subprocess.run(
        [str(BIN / "rp"), "query", CLI_QUESTION, "--mode", "hybrid", "--access-level", "confidential"],
        cwd=REPO_ROOT,
        env=env,
        check=True,
        capture_output=True,
    )
    return round(time.perf_counter() - started, 2)


# --- the large index --------------------------------------------------------------------------


def large_index(workdir: Path, chunks: int) -> Path:
    """A published index of at least `chunks` synthetic chunks (stand-in vectors), built by the real
    embedding job, which also builds the ANN index from vars.embedding.ann_min_rows rows on, as it would
    for real data."""
    folder = workdir / f"large-{chunks}"
    marker = folder / ".complete"
    # bench_embed's environment, but with the pipeline's own ANN threshold.
    env = step_env(folder, "large") | {ENV_VARS: "{embedding: {max_tokens_per_run: 1000000000}}"}
    index_dir = Path(env[ENV_INDEX_DIR])
    if marker.is_file():
        click.echo(f"large index: reusing {index_dir}", err=True)
        return index_dir
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    bench_embed = [str(BIN / "python"), str(REPO_ROOT / "bench" / "bench_embed.py")]
    click.echo(f"large index: {chunks:,}+ chunks, vectors from the STAND-IN embedder, in {folder}", err=True)
    docs = -(-chunks // (CHUNKS_PER_DOC - 1))  # a little over: documents have 5 to 20 chunks
    generated = timed("generate chunk table", [*bench_embed, "generate", str(docs)], env, parse_json=True)
    if generated.detail["chunks"] < chunks:
        raise click.ClickException(f"generated {generated.detail['chunks']:,} chunks, fewer than {chunks:,}")
    timed("embed (stand-in), index, publish", [*bench_embed, "apply"], env, parse_json=True)
    marker.touch()
    return index_dir


# --- the report -------------------------------------------------------------------------------

HEADER = f"{'index':<8} {'chunks':>8} {'mode':<7} {'clients':>7} {'requests':>8} {'req/s':>7} " + (
    f"{'p50 ms':>7} {'p95 ms':>7} {'p99 ms':>7} {'errors':>6} {'cpu ms/req':>10} {'load':>5}"
)


def _row(run: Run) -> str:
    return (
        f"{run.index:<8} {run.chunks:>8,} {run.mode:<7} {run.clients:>7} {run.requests:>8} {run.rps:>7.1f} "
        f"{run.p50_ms:>7.1f} {run.p95_ms:>7.1f} {run.p99_ms:>7.1f} {run.errors:>6} {run.server_cpu_ms:>10.1f} "
        f"{run.load:>5.1f}"
    )


def report(results: list[dict]) -> str:
    lines = [HEADER, "-" * len(HEADER)]
    for result in results:
        lines += [_row(Run(**run)) for run in result["runs"]]
    lines.append("")
    for result in results:
        lines.append(
            f"{result['index']}: {result['requests_sent']} requests sent, {result['log_rows_written']} query log rows "
            f"written, {result['log_rows_dropped']:.0f} dropped, {result['log_rows_lost']} lost; "
            f"`rp query` (new process, hybrid) {result['cli_query_seconds']:.2f} s"
        )
    sample = next((r for r in results if r["index"] == "sample"), None)
    if sample:
        runs = {(run["mode"], run["clients"]): run for run in sample["runs"]}
        if ("hybrid", 1) in runs:
            p95 = runs["hybrid", 1]["p95_ms"]
            lines.append(f"goal: hybrid p95 < 50 ms, 1 client, sample index: {p95:.1f} ms ({_verdict(p95 < 50)})")
        if ("vector", 4) in runs:
            rps = runs["vector", 4]["rps"]
            lines.append(f"goal: >= 100 vector requests/s, 4 clients, sample index: {rps:.1f} ({_verdict(rps >= 100)})")
    errors = sum(run["errors"] for result in results for run in result["runs"])
    lost = sum(result["log_rows_lost"] + result["log_rows_dropped"] for result in results)
    verdict = _verdict(not errors and not lost)
    lines.append(f"goal: zero errors and zero lost log rows: {errors} errors, {lost:.0f} lost ({verdict})")
    return "\n".join(lines)


def _verdict(ok: bool) -> str:
    return "met" if ok else "NOT met"


@click.command()
@click.option("--sample-index", type=click.Path(path_type=Path, file_okay=False), help="Default: the configured index.")
@click.option(
    "--chunks", type=click.IntRange(min=1), default=100_000, show_default=True, help="Size of the large index."
)
@click.option("--duration", type=click.FloatRange(min=0.5), default=5.0, show_default=True, help="Seconds per run.")
@click.option("--mode", "modes", multiple=True, type=click.Choice(MODES), help="Only these modes (repeatable).")
@click.option("--clients", "concurrency", multiple=True, type=click.IntRange(1, 64), help="Concurrency levels.")
@click.option("--workdir", type=click.Path(path_type=Path), help="Default: data/generated/bench-serve (kept, reused).")
@click.option("--skip-large", is_flag=True, help="Only the sample index.")
@click.option("--skip-sample", is_flag=True, help="Only the large index.")
@click.option("--json", "as_json", is_flag=True, help="Print the figures as JSON.")
def main(sample_index, chunks, duration, modes, concurrency, workdir, skip_large, skip_sample, as_json) -> None:
    """Requests/s and latency percentiles of /v1/search per mode at 1, 4 and 16 clients, on the sample
    index and on a large one; zero errors and zero lost log rows expected."""
    settings = Settings.load()
    workdir = (workdir or REPO_ROOT / "data" / "generated" / "bench-serve").resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    modes, concurrency = tuple(modes) or MODES, tuple(concurrency) or CONCURRENCY
    results = []
    if not skip_sample:
        index = Path(sample_index or settings.index_dir).resolve()
        if not (index / "live.json").is_file():
            raise click.ClickException(f"no published index in {index}: run `make demo` (or pass --sample-index)")
        results.append(bench_index("sample", index, workdir, duration, modes, concurrency))
    if not skip_large:
        index = large_index(workdir, chunks)
        results.append(bench_index("large", index, workdir, duration, modes, concurrency))
    click.echo(json.dumps(results, indent=2) if as_json else report(results))


if __name__ == "__main__":
    main()
