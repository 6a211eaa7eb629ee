"""An evaluation run as it is shown: its summary, the terminal tables and the JSON form."""

from __future__ import annotations

import io
import math
from dataclasses import asdict, dataclass, field
from typing import Any

from python_jobs.common.output import Summary
from python_jobs.evaluate.gates import GateFailure
from python_jobs.evaluate.metrics import METRICS


@dataclass
class EvalSummary(Summary):
    run_id: str
    dataset: str
    source: str
    status: str = "running"
    modes: list[str] = field(default_factory=list)
    ks: list[int] = field(default_factory=list)
    questions: int = 0
    questions_evaluated: int = 0
    skipped_questions: list[str] = field(default_factory=list)
    index_dir: str = ""
    index_table: str = ""
    index_version: int = 0
    model: dict[str, Any] = field(default_factory=dict)
    chunking_config_hash: str | None = None
    git_commit: str | None = None
    git_dirty: bool | None = None
    aggregate: dict[str, dict[str, float]] = field(default_factory=dict)  # mode -> metric@k -> mean
    by_category: dict[str, dict[str, dict[str, float]]] = field(default_factory=dict)  # mode -> category -> ...
    per_question: dict[str, dict[str, dict[str, float]]] = field(default_factory=dict)  # mode -> question -> ...
    query_seconds: dict[str, float] = field(default_factory=dict)
    baseline_run_id: str | None = None
    gates_checked: int = 0
    gate_failures: list[GateFailure] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def passed(self) -> bool:
        return not self.gate_failures

    def to_text(self) -> str:
        return render(self)

    def to_json(self) -> dict[str, Any]:
        return summary_json(self)


SHORT_NAMES = {"precision": "P", "recall": "R", "hit_rate": "hit", "mrr": "MRR", "ndcg": "nDCG", "map": "MAP"}
CATEGORY_COLUMNS = ("hit_rate@5", "ndcg@10", "mrr@10", "recall@10")


def render(summary: EvalSummary) -> str:
    from rich.console import Console
    from rich.table import Table

    # Category names, dataset names and paths are data: shown as text, never as markup or emoji codes.
    console = Console(width=140, file=io.StringIO(), markup=False, emoji=False, highlight=False)
    skipped = len(summary.skipped_questions)
    title = (
        f"eval {summary.run_id} on {summary.dataset}: {summary.questions_evaluated} questions"
        + (f" ({skipped} without a relevant document not scored)" if skipped else "")
        + f", document level; {summary.index_table} v{summary.index_version}"
    )
    console.print(title, markup=False)
    overall = Table()
    overall.add_column("mode")
    overall.add_column("metric")
    for k in summary.ks:
        overall.add_column(f"@{k}", justify="right")
    for mode in summary.modes:
        for metric in METRICS:
            values = [summary.aggregate[mode].get(f"{metric}@{k}", math.nan) for k in summary.ks]
            overall.add_row(mode if metric == METRICS[0] else "", SHORT_NAMES[metric], *(f"{v:.3f}" for v in values))
        overall.add_section()
    console.print(overall)

    columns = [key for key in CATEGORY_COLUMNS if split_key(key)[1] in summary.ks]
    if columns and len(next(iter(summary.by_category.values()), {})) > 1:
        categories = Table(title="by category", title_justify="left")
        categories.add_column("category")
        categories.add_column("mode")
        for key in columns:
            metric, k = split_key(key)
            categories.add_column(f"{SHORT_NAMES[metric]}@{k}", justify="right")
        for category in sorted({c for by in summary.by_category.values() for c in by}):
            for i, mode in enumerate(summary.modes):
                values = summary.by_category[mode].get(category, {})
                categories.add_row(
                    category if i == 0 else "", mode, *(f"{values.get(key, math.nan):.3f}" for key in columns)
                )
            categories.add_section()
        console.print(categories)

    if summary.status == "measured":
        console.print("gates: not applied (--no-gates, or a benchmark)")
    elif summary.passed:
        baseline = f", no regression against {summary.baseline_run_id}" if summary.baseline_run_id else ""
        console.print(f"gates: PASSED ({summary.gates_checked} checked{baseline})")
    else:
        console.print(f"gates: FAILED ({len(summary.gate_failures)} of {summary.gates_checked})")
        for failure in summary.gate_failures:
            console.print(f"  - {failure.describe()}", markup=False)
    for warning in summary.warnings:
        console.print(f"warning: {warning}", markup=False)
    return console.file.getvalue().rstrip()


def summary_json(summary: EvalSummary) -> dict[str, Any]:
    data = asdict(summary)
    data["passed"] = summary.passed
    data["gate_failures"] = [asdict(f) | {"message": f.describe()} for f in summary.gate_failures]
    return _json_safe(data)


def _json_safe(value: Any) -> Any:
    """NaN (a metric no question could define) as null: JSON has no NaN."""
    if isinstance(value, float) and math.isnan(value):
        return None
    if isinstance(value, dict):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_json_safe(v) for v in value]
    return value


def split_key(key: str) -> tuple[str, int]:
    """ "ndcg@10" -> ("ndcg", 10)."""
    metric, _, k = key.partition("@")
    return metric, int(k)
