"""Benchmark the warehouse stages at scale, in one run, on generated data.

Steps, each a real subprocess timed on its own with its peak memory (from wait4's rusage):
generate the landing zone, first ingest, no-op ingest, `dbt build`, `dbt source freshness`,
mutate 1% of the zone, incremental ingest, `dbt build` again. Prints a table and the ratios
that matter (incremental vs full ingest); `--json` prints the figures for machines.

Example:
    python bench/bench_warehouse.py --scale 100000
    make bench-warehouse SCALE=100000
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import click

REPO_ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent


@dataclass
class Step:
    name: str
    seconds: float
    peak_rss_mb: float
    detail: dict


def timed(name: str, args: list[str], env: dict[str, str], parse_json: bool = False) -> Step:
    """Run one step; wait4 gives this child's own peak RSS, which Popen.wait would discard."""
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        started = time.perf_counter()
        proc = subprocess.Popen(args, cwd=REPO_ROOT, env=env, stdout=out, stderr=err, text=True)
        _, status, usage = os.wait4(proc.pid, 0)
        seconds = time.perf_counter() - started
        proc.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        err.seek(0)
        stdout, stderr = out.read(), err.read()
    if proc.returncode != 0:
        raise click.ClickException(f"{name} failed (exit {proc.returncode}):\n{stdout[-2000:]}\n{stderr[-2000:]}")
    peak_mb = usage.ru_maxrss / 1024
    detail = json.loads(stdout.strip().splitlines()[-1]) if parse_json else {}
    click.echo(f"  {name:<28} {seconds:8.1f} s  {peak_mb:8.0f} MB peak", err=True)
    return Step(name, round(seconds, 2), round(peak_mb, 1), detail)


@click.command()
@click.option("--scale", type=int, default=10_000, show_default=True, help="Documents to generate.")
@click.option(
    "--workdir",
    type=click.Path(path_type=Path),
    default=None,
    help="Scratch directory (default data/generated/bench-<scale>); wiped first.",
)
@click.option(
    "--mutate",
    "fraction",
    type=float,
    default=0.01,
    show_default=True,
    help="Fraction of the zone to edit/add/delete for the incremental step.",
)
@click.option("--json", "as_json", is_flag=True, help="Print the figures as JSON.")
def main(scale: int, workdir: Path | None, fraction: float, as_json: bool) -> None:
    """Time the warehouse stages at SCALE documents (10 x SCALE transactions)."""
    workdir = (workdir or REPO_ROOT / "data" / "generated" / f"bench-{scale}").resolve()
    shutil.rmtree(workdir, ignore_errors=True)
    landing, warehouse = workdir / "landing", workdir / "warehouse.duckdb"
    env = {
        **os.environ,
        "RP_LANDING_DIR": str(landing),
        "RP_DUCKDB_PATH": str(warehouse),
        "DBT_PROFILES_DIR": str(REPO_ROOT),
    }
    python, dbt = str(BIN / "python"), str(BIN / "dbt")
    dbt_paths = ["--target-path", str(workdir / "target"), "--log-path", str(workdir / "logs")]
    ingest = [python, "-m", "python_jobs", "ingest", "--json"]

    click.echo(f"warehouse benchmark at scale {scale:,} in {workdir}", err=True)
    steps = [
        timed("generate", [python, "bench/generate_data.py", "--scale", str(scale), "--out", str(landing)], env, True),
        timed("ingest (first load)", ingest, env, True),
        timed("ingest (no-op)", ingest, env, True),
        timed("dbt build (full)", [dbt, "build", *dbt_paths], env),
        timed("dbt source freshness", [dbt, "source", "freshness", *dbt_paths], env),
        timed(
            f"mutate {fraction:.0%}",
            [python, "bench/generate_data.py", "--out", str(landing), "--mutate", str(fraction), "--seed", "11"],
            env,
            True,
        ),
        timed("ingest (after mutation)", ingest, env, True),
        timed("dbt build (after mutation)", [dbt, "build", *dbt_paths], env),
    ]
    by_name = {s.name: s for s in steps}
    first, incremental = by_name["ingest (first load)"], by_name["ingest (after mutation)"]
    figures = {
        "scale_documents": scale,
        "landing_mb": round(sum(p.stat().st_size for p in landing.rglob("*") if p.is_file()) / 2**20, 1),
        "warehouse_mb": round(warehouse.stat().st_size / 2**20, 1),
        "rows_first_load": first.detail["rows_loaded"],
        "rows_per_second_first_load": round(first.detail["rows_loaded"] / first.seconds),
        "files_reread_after_mutation": incremental.detail["files_new"] + incremental.detail["files_changed"],
        "files_total": first.detail["files_new"],
        "incremental_ingest_vs_full": round(incremental.seconds / first.seconds, 3),
        "noop_ingest_seconds": by_name["ingest (no-op)"].seconds,
        "steps": [asdict(s) for s in steps],
    }
    if as_json:
        click.echo(json.dumps(figures))
        return
    click.echo(f"\nlanding zone {figures['landing_mb']:,} MB -> warehouse {figures['warehouse_mb']:,} MB")
    click.echo(f"first load: {figures['rows_first_load']:,} rows at {figures['rows_per_second_first_load']:,} rows/s")
    click.echo(
        f"after mutating {fraction:.0%}: {figures['files_reread_after_mutation']:,} of "
        f"{figures['files_total']:,} files re-read; incremental ingest took "
        f"{figures['incremental_ingest_vs_full']:.1%} of the first load's time"
    )


if __name__ == "__main__":
    main()
