"""Run a dbt command against the warehouse the jobs use, with lock conflicts made clear.

dbt-duckdb meets a held DuckDB lock with a 40-line traceback. This wrapper checks the lock
before dbt starts, and if dbt still loses a race for it, replaces the traceback with the
same one-line message every job gives. Everything else dbt prints passes through as is,
and dbt's exit code is this command's exit code.

After a build, run, test, seed, snapshot or `source freshness`, whatever its outcome, the
results are recorded in the ops tables (python_jobs/transform/results.py) for the ops marts,
the dashboard and the alerts.

Example:
    rp dbt build --select customers+
    rp dbt source freshness
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TextIO

from python_jobs.common.errors import WarehouseLockedError
from python_jobs.common.settings import Settings
from python_jobs.common.warehouse import connect, lock_message
from python_jobs.transform import results as dbt_results
from python_jobs.transform.results import LAST_BUILD_DIR, TESTING_COMMANDS

LOCK_ERROR = "Could not set lock on file"


@dataclass
class DbtRun:
    exit_code: int
    captured: dbt_results.Captured | None  # what was recorded; None for commands not recorded


def run_dbt(settings: Settings, args: list[str], output: TextIO | None = None) -> DbtRun:
    """Run `dbt <args>` in the project: dbt's exit code, and the results recorded in the ops tables.

    dbt's output goes to `output` (stdout by default; stderr for a job whose stdout is --json)."""
    output = output or sys.stdout
    connect(settings.warehouse_path).close()  # fails fast, and clearly, if another process holds it
    dbt = Path(sys.executable).with_name("dbt")
    log_dir = settings.dbt_log_dir
    log_file = log_dir / "dbt.log"
    started = datetime.now(UTC)
    offset = log_file.stat().st_size if log_file.is_file() else 0
    env = settings.dbt_env() | {"DBT_LOG_PATH": str(log_dir), "DBT_LOG_FORMAT_FILE": "json"}
    if settings.vars_override and args[:1] != ["deps"] and "--vars" not in args:
        args = [*args, "--vars", settings.dbt_vars()]  # what the Python jobs read, dbt reads too
    proc = subprocess.Popen(
        [str(dbt), *args],
        cwd=settings.project_dir,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        bufsize=1,
    )
    traceback: list[str] = []
    assert proc.stdout is not None
    for line in proc.stdout:
        if traceback or "Traceback (most recent call last)" in line:
            traceback.append(line)  # held back until we know whether it is a lock conflict
        else:
            output.write(line)
            output.flush()
    code = proc.wait()
    text = "".join(traceback)
    if LOCK_ERROR in text:
        raise WarehouseLockedError(lock_message(settings.warehouse_path, text))
    output.write(text)
    if args and args[0] in TESTING_COMMANDS:
        _keep_build_artifacts(settings.dbt_target_dir)
    if not dbt_results.is_recorded(args) or _asks_for_help(args):
        return DbtRun(code, None)
    run = dbt_results.Invocation(args, proc.pid, log_file, offset, started, exit_code=code)
    captured = dbt_results.capture(settings.warehouse_path, settings.ops_schema, settings.dbt_target_dir, run)
    table = "dbt_source_freshness" if run.command == "source freshness" else "dbt_node_results"
    output.write(
        f"Recorded {len(captured.nodes) + len(captured.freshness)} results of dbt invocation "
        f"{captured.invocation['invocation_id']} in {settings.ops_schema}.{table}\n"
    )
    return DbtRun(code, captured)


def _asks_for_help(args: list[str]) -> bool:
    return bool({"-h", "--help"} & set(args))


def _keep_build_artifacts(target: Path) -> None:
    """Copy the artifacts of a build aside: `dbt show` or `dbt docs generate` would overwrite them,
    and the embedding job's quality gate needs the results of the last run that tested the chunks."""
    kept = target / LAST_BUILD_DIR
    kept.mkdir(parents=True, exist_ok=True)
    for name in ("run_results.json", "manifest.json"):
        if (target / name).is_file():
            shutil.copy2(target / name, kept / name)
