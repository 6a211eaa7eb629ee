"""What every command shares: one error line and an exit code instead of a traceback, progress on
stderr, and one renderer that prints a job's summary as text for people or as JSON for machines."""

from __future__ import annotations

import dataclasses
import io
import json
import re
import sys
from collections.abc import Callable
from typing import Any, TypeVar

import click

from python_jobs.common.errors import ExitCode, PipelineError

T = TypeVar("T")


class Summary:
    """What a job returns: `to_text()` for a terminal, `to_json()` for `--json` (by default the
    dataclass's fields). Every library function a command calls returns one of these."""

    def to_json(self) -> Any:
        return dataclasses.asdict(self)  # type: ignore[call-overload]

    def to_text(self) -> str:
        raise NotImplementedError


def emit(summary: Summary, as_json: bool) -> None:
    """Print a summary as one JSON document (for machines) or as text (for people). The JSON is built from
    `to_json()` alone, never from the text; the text goes out with its control characters escaped."""
    if as_json:
        click.echo(json.dumps(summary.to_json(), default=str, sort_keys=True))
    else:
        click.echo(terminal_safe(summary.to_text()))


# Characters that move the cursor, clear or retitle the screen, ring the bell or reorder the text around
# them (C0 and C1 controls but newline and tab, and the bidirectional overrides and isolates).
_CONTROL = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069]")


def terminal_safe(text: str) -> str:
    """`text` with every control character written as an escape (ESC as \\x1b), so that text from the data
    (a document, a query result, a file name) can only ever show as text on a terminal."""
    return _CONTROL.sub(
        lambda m: f"\\x{ord(m.group()):02x}" if ord(m.group()) < 0x100 else f"\\u{ord(m.group()):04x}", text
    )


def text_console(width: int):
    """A rich console that renders into a string (`console.file.getvalue()`) and shows every string as the
    text it is: no markup (`[red]`, `[/]`), no emoji codes (`:x:`), no highlighting, no colour codes. Text
    from the data goes through `terminal_safe` before it is printed, so column widths count what is shown."""
    from rich.console import Console

    return Console(width=width, file=io.StringIO(), markup=False, emoji=False, highlight=False, color_system=None)


def run_job(job: Callable[[], T]) -> T:
    """Run a job; a PipelineError becomes one `error:` message and its exit code, never a traceback."""
    try:
        return job()
    except PipelineError as exc:
        click.secho(f"error: {terminal_safe(str(exc))}", fg="red", err=True)
        sys.exit(exc.exit_code)
    except KeyboardInterrupt:
        click.secho("interrupted", fg="yellow", err=True)
        sys.exit(130)
    except OSError as exc:  # a path that vanished, is read-only, or is not what it should be
        where = f"{exc.filename}: " if exc.filename else ""
        click.secho(f"error: {where}{exc.strerror or exc} (check the path and its permissions)", fg="red", err=True)
        sys.exit(ExitCode.FAILED)


def progress_bar(enabled: bool | None, iterable=None, **options):
    """A tqdm bar on stderr (stdout carries results and --json); `enabled` None means on a terminal only."""
    from tqdm import tqdm

    disable = not sys.stderr.isatty() if enabled is None else not enabled
    return tqdm(iterable, file=sys.stderr, disable=disable, **options)
