"""Errors a user can act on. Every job turns these into one clear line and an exit code."""

from __future__ import annotations


class PipelineError(Exception):
    """A failure the user can fix: the message says what failed, where, and what to do."""

    exit_code = 1


class ConfigError(PipelineError):
    """A setting is missing or invalid; the message names the setting and where it is read from."""

    exit_code = 2


class WarehouseLockedError(PipelineError):
    """Another process holds the DuckDB file; retrying later will work."""

    exit_code = 75  # EX_TEMPFAIL: the caller may retry


class LandingFileError(PipelineError):
    """A landing file cannot be parsed at all; nothing from this run was published."""
