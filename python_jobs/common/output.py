"""What every job's command line shares: clean errors, exit codes and --json output."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from typing import Any, TypeVar

import click

from python_jobs.common.errors import PipelineError

T = TypeVar("T")


def run_job(job: Callable[[], T]) -> T:
    """Run a job; a PipelineError becomes one `error:` message and its exit code, never a traceback."""
    try:
        return job()
    except PipelineError as exc:
        click.secho(f"error: {exc}", fg="red", err=True)
        sys.exit(exc.exit_code)
    except KeyboardInterrupt:
        click.secho("interrupted", fg="yellow", err=True)
        sys.exit(130)


def progress_bar(enabled: bool | None, iterable=None, **options):
    """A tqdm bar on stderr (stdout carries results and --json); `enabled` None means on a terminal only."""
    from tqdm import tqdm

    disable = not sys.stderr.isatty() if enabled is None else not enabled
    return tqdm(iterable, file=sys.stderr, disable=disable, **options)


def emit(summary: dict[str, Any], text: str, as_json: bool) -> None:
    """Print the summary as one JSON document (for machines) or as text (for people)."""
    if as_json:
        click.echo(json.dumps(summary, default=str, sort_keys=True))
    else:
        click.echo(text)
