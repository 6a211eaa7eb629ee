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

import contextlib
import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TextIO

from python_jobs.common.errors import PipelineError, WarehouseLockedError
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
    run = dbt_results.Invocation(args, proc.pid, log_file, offset, started, exit_code=code)
    return _recorded(settings, args, run, output)


def _recorded(settings: Settings, args: list[str], run: dbt_results.Invocation, output: TextIO) -> DbtRun:
    """Keep a build's artifacts aside and record the results of a recorded command in the ops tables."""
    code = run.exit_code
    if args and args[0] in TESTING_COMMANDS:
        keep_build_artifacts(settings.dbt_target_dir)
    if not dbt_results.is_recorded(args) or _asks_for_help(args):
        return DbtRun(code, None)
    captured = dbt_results.capture(settings.warehouse_path, settings.ops_schema, settings.dbt_target_dir, run)
    table = "dbt_source_freshness" if run.command == "source freshness" else "dbt_node_results"
    output.write(
        f"Recorded {len(captured.nodes) + len(captured.freshness)} results of dbt invocation "
        f"{captured.invocation['invocation_id']} in {settings.ops_schema}.{table}\n"
    )
    return DbtRun(code, captured)


def _asks_for_help(args: list[str]) -> bool:
    return bool({"-h", "--help"} & set(args))


def keep_build_artifacts(target: Path) -> None:
    """Copy the artifacts of a build aside: `dbt show` or `dbt docs generate` would overwrite them,
    and the embedding job's quality gate needs the results of the last run that tested the chunks."""
    kept = target / LAST_BUILD_DIR
    kept.mkdir(parents=True, exist_ok=True)
    for name in ("run_results.json", "manifest.json"):
        if (target / name).is_file():
            shutil.copy2(target / name, kept / name)


# --- dbt in this process, for the watcher -----------------------------------------------------


class DbtSession:
    """dbt in this process (its programmatic runner, `dbtRunner`) for a long-running job: the project is
    parsed once (partial parsing: only changed files again) and the manifest is kept while the project's
    files, vars and versions stay as they were, so a command pays neither the interpreter's start nor the
    parse. Results are recorded as `run_dbt` records them. After every command the DuckDB file is released:
    dbt-duckdb keeps its database open in the process, which would lock every other job out.

    Example:
        session = DbtSession(settings)
        ran = session.invoke(["build", "--select", "source:docs.documents+", "--exclude", "tag:ops"])
    """

    def __init__(self, settings: Settings, output: TextIO | None = None):
        self.settings = settings
        self.output = output
        self.parsed_for: str | None = None  # the project fingerprint the kept manifest was parsed from
        self.parse_seconds = 0.0
        self._manifest = None

    def invoke(self, args: list[str]) -> DbtRun:
        """Run `dbt <args>`: its exit code (0, 1 for failing nodes, 2 when dbt itself failed) and the results
        recorded in the ops tables."""
        output = self.output or sys.stdout
        connect(self.settings.warehouse_path).close()  # fails fast, and clearly, if another process holds it
        log_file = self.settings.dbt_log_dir / "dbt.log"
        with _dbt_environment(self.settings), contextlib.redirect_stdout(output):
            manifest = self._parsed()
            from dbt.cli.main import dbtRunner

            offset = log_file.stat().st_size if log_file.is_file() else 0  # this command's lines start here
            started = datetime.now(UTC)
            try:
                result = dbtRunner(manifest=manifest).invoke([*args, *self._common_args()])
            finally:
                release_warehouse()
        error = str(result.exception or "")
        if LOCK_ERROR in error:
            raise WarehouseLockedError(lock_message(self.settings.warehouse_path, error))
        if result.exception is not None:
            output.write(f"dbt {' '.join(args)} failed: {error}\n")
        code = 0 if result.success else (1 if result.exception is None else 2)
        run = dbt_results.Invocation(args, os.getpid(), log_file, offset, started, exit_code=code)
        return _recorded(self.settings, args, run, output)

    def parse(self) -> None:
        """Parse the project now (a watcher does it at start, so its first build does not wait for it)."""
        with _dbt_environment(self.settings), contextlib.redirect_stdout(self.output or sys.stdout):
            self._parsed()

    def _parsed(self):
        """The manifest, parsed again (partially) when the project changed since it was parsed."""
        from python_jobs.transform.build_state import project_fingerprint

        current = project_fingerprint(self.settings)
        if self._manifest is None or current != self.parsed_for:
            from dbt.cli.main import dbtRunner

            clock = time.perf_counter()
            try:
                result = dbtRunner().invoke(["parse", *self._common_args()])
            finally:
                release_warehouse()
            if not result.success:
                raise PipelineError(
                    f"dbt cannot parse the project: {result.exception or 'see the messages above'}; its log is "
                    f"{self.settings.dbt_log_dir / 'dbt.log'}"
                )
            self._manifest, self.parsed_for = result.result, current
            self.parse_seconds = time.perf_counter() - clock
        return self._manifest

    def _common_args(self) -> list[str]:
        settings = self.settings
        args = [
            "--project-dir",
            str(settings.project_dir),
            "--target-path",
            str(settings.dbt_target_dir),
            "--log-path",
            str(settings.dbt_log_dir),
            "--log-format-file",
            "json",
            "--log-level-file",
            "info",
            "--quiet",
        ]
        if settings.vars_override:
            # The watcher's own settings are not dbt's: passing them would only make dbt parse everything again.
            given = {key: value for key, value in json.loads(settings.dbt_vars()).items() if key != "watch"}
            args += ["--vars", json.dumps(given)] if given else []
        return args


def release_warehouse() -> None:
    """Close the DuckDB database dbt-duckdb keeps open in this process, so other processes can open it."""
    try:
        from dbt.adapters.duckdb.connections import DuckDBConnectionManager as manager
    except ImportError:  # pragma: no cover - dbt-duckdb is a dependency
        return
    with manager._LOCK:
        if manager._ENV is not None:
            with contextlib.suppress(Exception):
                manager._ENV.close()
        manager.close_all_connections()


@contextlib.contextmanager
def _dbt_environment(settings: Settings) -> Iterator[None]:
    """The environment profiles.yml and the models read (the workspace's paths), for the duration of a call."""
    wanted = {key: value for key, value in settings.dbt_env().items() if os.environ.get(key) != value}
    saved = {key: os.environ.get(key) for key in wanted}
    os.environ.update(wanted)
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
