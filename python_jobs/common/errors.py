"""Errors a user can act on, and every exit code the commands return, in one table.

Every command turns a `PipelineError` into one `error:` line and its exit code, never a traceback
(python_jobs/common/output.py). The README's exit-code table is this one.
"""

from __future__ import annotations

from enum import IntEnum


class ExitCode(IntEnum):
    """What a command's exit status means; a wrapper may retry on BUSY and nothing else."""

    OK = 0
    FAILED = 1  # a job failed, a verify found problems, a dbt node failed
    USAGE = 2  # a setting, an option or an input file is invalid: fix it and run again
    QUALITY_GATE = 3  # the chunks' tests failed or did not run, or the run would delete too much: nothing was indexed
    BUDGET = 4  # the run would embed more tokens than allowed: nothing was embedded
    EVAL_GATE = 6  # an evaluation gate failed or a metric regressed
    BUSY = 75  # EX_TEMPFAIL: the warehouse or the index is held by another process; retry later
    INTERRUPTED = 130  # Ctrl-C; a command killed by signal N exits 128 + N


class PipelineError(Exception):
    """A failure the user can fix: the message says what failed, where, and what to do."""

    exit_code: int = ExitCode.FAILED


class ConfigError(PipelineError):
    """A setting is missing or invalid; the message names the setting and where it is read from."""

    exit_code = ExitCode.USAGE


class WarehouseLockedError(PipelineError):
    """Another process holds the DuckDB file; retrying later will work."""

    exit_code = ExitCode.BUSY


class LandingFileError(PipelineError):
    """A landing file cannot be parsed at all; nothing from this run was published."""


class MassQuarantineError(LandingFileError):
    """A run would quarantine most of a source: a broken export or a wrong setting; nothing was loaded."""
