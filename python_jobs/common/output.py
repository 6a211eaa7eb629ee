"""What every command shares: one error line and an exit code instead of a traceback, progress on
stderr, and one renderer that prints a job's summary as text for people or as JSON for machines."""

from __future__ import annotations

import dataclasses
import json
import sys
from collections.abc import Callable
from typing import Any, TypeVar

import click

from python_jobs.common.errors import PipelineError

T = TypeVar("T")


class Summary:
    """What a job returns: `to_text()` for a terminal, `to_json()` for `--json` (by default the
    dataclass's fields). Every library function a command calls returns one of these."""

    def to_json(self) -> Any:
        return dataclasses.asdict(self)  # type: ignore[call-overload]

    def to_text(self) -> str:
        raise NotImplementedError


def emit(summary: Summary, as_json: bool) -> None:
    """Print a summary as one JSON document (for machines) or as text (for people)."""
    if as_json:
        click.echo(json.dumps(summary.to_json(), default=str, sort_keys=True))
    else:
        click.echo(summary.to_text())


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
