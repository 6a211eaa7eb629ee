"""Run a dbt command against the warehouse the jobs use, with lock conflicts made clear.

dbt-duckdb meets a held DuckDB lock with a 40-line traceback. This wrapper checks the lock
before dbt starts, and if dbt still loses a race for it, replaces the traceback with the
same one-line message every job gives. Everything else dbt prints passes through as is,
and dbt's exit code is this command's exit code.

Example:
    python -m python_jobs.run_dbt build --select customers+
    python -m python_jobs.run_dbt source freshness
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

from python_jobs.cli_support import run_job
from python_jobs.config import Settings
from python_jobs.errors import WarehouseLockedError
from python_jobs.quality_gate import LAST_BUILD_DIR, TESTING_COMMANDS
from python_jobs.warehouse import connect, lock_message

LOCK_ERROR = "Could not set lock on file"


def run_dbt(settings: Settings, args: list[str]) -> int:
    """Run `dbt <args>` in the project; returns dbt's exit code."""
    connect(settings.warehouse_path).close()  # fails fast, and clearly, if another process holds it
    dbt = Path(sys.executable).with_name("dbt")
    proc = subprocess.Popen(
        [str(dbt), *args],
        cwd=settings.project_dir,
        env=settings.dbt_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        bufsize=1,
    )
    traceback: list[str] = []
    assert proc.stdout is not None
    for line in proc.stdout:
        if traceback or line.startswith("Traceback (most recent call last)"):
            traceback.append(line)  # held back until we know whether it is a lock conflict
        else:
            sys.stdout.write(line)
            sys.stdout.flush()
    code = proc.wait()
    text = "".join(traceback)
    if LOCK_ERROR in text:
        raise WarehouseLockedError(lock_message(settings.warehouse_path, text))
    sys.stdout.write(text)
    if args and args[0] in TESTING_COMMANDS:
        _keep_build_artifacts(settings.dbt_target_dir)
    return code


def _keep_build_artifacts(target: Path) -> None:
    """Copy the artifacts of a build aside: `dbt show` or `dbt docs generate` would overwrite them,
    and the embedding job's quality gate needs the results of the last run that tested the chunks."""
    kept = target / LAST_BUILD_DIR
    kept.mkdir(parents=True, exist_ok=True)
    for name in ("run_results.json", "manifest.json"):
        if (target / name).is_file():
            shutil.copy2(target / name, kept / name)


def main() -> None:
    settings = Settings.load()
    sys.exit(run_job(lambda: run_dbt(settings, sys.argv[1:])))


if __name__ == "__main__":
    main()
