"""`make report`: the ops dashboard, one self-contained HTML file.

1. refresh the ops marts (`dbt build --select tag:ops`, recorded like any build), so they
   include the runs that just happened; `--no-refresh` skips it
2. read the marts, read-only (python_jobs/observe/marts.py)
3. draw the charts with Plotly (python_jobs/observe/charts.py) and write the page: plotly.js
   and the styles are inlined, so it opens from disk with no server and no network

What needs attention comes first: failing nodes with their owners, stale sources, a stale
index, eval regressions, budget overruns and flaky tests (python_jobs/observe/findings.py), then the
recent alerts, then freshness, retrieval quality, tests, volume and cost.

Example:
    rp report                 # writes vars.ops.report_path
    rp report --out /tmp/ops.html --no-refresh --json
"""

from __future__ import annotations

import os
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import plotly.io as pio
from jinja2 import Environment, FileSystemLoader, select_autoescape
from plotly.offline import get_plotlyjs

from python_jobs.common.output import Summary
from python_jobs.common.settings import Settings
from python_jobs.observe import charts as report_charts
from python_jobs.observe import findings, marts
from python_jobs.observe.alerts import Alert, read_alerts
from python_jobs.transform.dbt import run_dbt

TEMPLATES = Path(__file__).with_name("templates")
RECENT_ALERTS = 15
REFRESH_ARGS = ["build", "--select", "tag:ops", "--quiet"]


@dataclass
class ReportSummary(Summary):
    path: str
    bytes: int = 0
    refreshed: bool = False
    refresh_exit_code: int | None = None
    attention: dict[str, int] = field(default_factory=dict)  # level -> count
    charts: list[str] = field(default_factory=list)  # ids of the charts drawn
    findings: list[Alert] = field(default_factory=list, repr=False)  # what needs attention, errors first
    refresh_seconds: float = 0.0
    render_seconds: float = 0.0

    def to_text(self) -> str:
        return render(self)

    def to_json(self) -> dict[str, Any]:
        return {key: value for key, value in asdict(self).items() if key != "findings"}


def build_report(settings: Settings, out: Path | None = None, refresh: bool = True) -> ReportSummary:
    out = out or settings.report_path
    summary = ReportSummary(path=str(out))
    if refresh:
        clock = time.perf_counter()
        summary.refresh_exit_code = run_dbt(settings, REFRESH_ARGS, output=sys.stderr).exit_code
        summary.refresh_seconds = time.perf_counter() - clock
        summary.refreshed = True
    clock = time.perf_counter()
    data = marts.load(settings.warehouse_path)
    attention = findings.from_marts(data, findings.Owners.load(settings))
    charts = {key: fig for key, fig in report_charts.all_charts(data).items() if fig is not None}
    html = render_page(settings, data, attention, charts)
    _write_atomically(out, html)
    summary.render_seconds = time.perf_counter() - clock
    summary.bytes = len(html.encode("utf-8"))
    summary.charts = sorted(charts)
    summary.attention = {level: sum(a.level == level for a in attention) for level in ("error", "warn")}
    summary.findings = attention
    return summary


def render_page(settings: Settings, data, attention, charts) -> str:
    environment = Environment(loader=FileSystemLoader(TEMPLATES), autoescape=select_autoescape(["html", "j2"]))
    environment.filters["num"] = _number
    environment.filters["pct"] = lambda v: "–" if v is None else f"{v:.0%}"
    chart_html = {
        key: pio.to_html(
            fig, full_html=False, include_plotlyjs=False, div_id=f"chart-{key}", config={"displaylogo": False}
        )
        for key, fig in charts.items()
    }
    return environment.get_template("dashboard.html.j2").render(
        generated_at=datetime.now(UTC),
        warehouse=settings.warehouse_path,
        index_dir=settings.index_dir,
        data=data,
        attention=[a.to_json() for a in attention],
        errors=sum(a.level == "error" for a in attention),
        warnings=sum(a.level == "warn" for a in attention),
        alerts=_recent_alerts(settings.alerts.jsonl_path),
        charts=chart_html,
        plotly_js=get_plotlyjs(),
    )


def _recent_alerts(path: Path) -> list[dict[str, Any]]:
    return list(reversed(read_alerts(path)[-RECENT_ALERTS:])) if path.is_file() else []


def _write_atomically(out: Path, html: str) -> None:
    """The old page stays whole until the new one is complete."""
    out.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(dir=out.parent, prefix=f".{out.name}.", suffix=".tmp")
    try:
        with os.fdopen(handle, "w", encoding="utf-8") as file:
            file.write(html)
        os.chmod(temporary, 0o644)  # mkstemp makes it private; the page is for everyone who reads the repo
        os.replace(temporary, out)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def _number(value: Any, digits: int = 0) -> str:
    if value is None:
        return "–"
    if isinstance(value, int):
        return f"{value:,}"
    return f"{value:,.{digits}f}"


def render(summary: ReportSummary) -> str:
    errors, warnings = summary.attention.get("error", 0), summary.attention.get("warn", 0)
    refresh = (
        f"ops marts refreshed in {summary.refresh_seconds:.1f} s"
        + ("" if summary.refresh_exit_code == 0 else f" (dbt exited {summary.refresh_exit_code}: see above)")
        if summary.refreshed
        else "ops marts not refreshed (--no-refresh)"
    )
    return (
        f"Dashboard: {summary.path} ({summary.bytes / 1e6:.1f} MB, {len(summary.charts)} charts, "
        f"rendered in {summary.render_seconds:.1f} s; {refresh})\n"
        f"Needs attention: {errors} error(s), {warnings} warning(s)"
    )
