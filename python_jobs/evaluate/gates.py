"""Release gates on an evaluation: floors per mode and metric (`vars.eval.gates`), and no metric of
`vars.eval.regression_metrics` dropping by more than the tolerance against the last passing run on
the same dataset, compared on the questions both runs asked. A failure names the questions."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from python_jobs.common.settings import EvalSettings, Settings

if TYPE_CHECKING:
    from python_jobs.evaluate.summary import EvalSummary

WORSE_QUESTIONS_SHOWN = 10


@dataclass
class GateFailure:
    kind: str  # threshold | regression
    mode: str
    metric: str
    value: float
    limit: float  # the floor, or the baseline value minus the tolerance
    baseline: float | None = None
    worse_questions: list[dict[str, Any]] = field(default_factory=list)

    def describe(self) -> str:
        if self.kind == "threshold":
            text = f"{self.mode} {self.metric} = {self.value:.4f}, below the threshold {self.limit:.4f}"
        else:
            text = (
                f"{self.mode} {self.metric} fell from {self.baseline:.4f} to {self.value:.4f} "
                f"(more than the tolerance of {self.baseline - self.limit:.4f})"
            )
        if self.worse_questions:
            shown = ", ".join(
                f"{q['question_id']} {q['before']:.2f}->{q['after']:.2f}" if "before" in q else f"{q['question_id']}"
                for q in self.worse_questions[:WORSE_QUESTIONS_SHOWN]
            )
            more = len(self.worse_questions) - WORSE_QUESTIONS_SHOWN
            label = "got worse" if self.kind == "regression" else "lowest"
            text += f"; {label}: {shown}" + (f" and {more} more" if more > 0 else "")
        return text


def check_gates(
    summary: EvalSummary, config: EvalSettings, baseline: dict[str, Any] | None
) -> tuple[list[GateFailure], int]:
    failures, checked = [], 0
    for mode in summary.modes:
        per_question = summary.per_question[mode]
        for key, floor in config.thresholds.get(mode, {}).items():
            checked += 1
            value = summary.aggregate[mode][key]
            if math.isnan(value) or value < floor:
                lowest = sorted(per_question, key=lambda q: (per_question[q][key], q))
                worst = [{"question_id": q, "value": per_question[q][key]} for q in lowest if per_question[q][key] < 1]
                failures.append(GateFailure("threshold", mode, key, value, floor, worse_questions=worst))
        if baseline is None or mode not in baseline["per_question"]:
            continue
        before_all = baseline["per_question"][mode]
        for key in config.regression_metrics:
            common = sorted(q for q in per_question if key in before_all.get(q, {}))
            if not common:
                continue
            checked += 1
            before = math.fsum(before_all[q][key] for q in common) / len(common)
            after = math.fsum(per_question[q][key] for q in common) / len(common)
            if before - after > config.regression_tolerance + 1e-12:
                worse = sorted(
                    (
                        {"question_id": q, "before": before_all[q][key], "after": per_question[q][key]}
                        for q in common
                        if per_question[q][key] < before_all[q][key]
                    ),
                    key=lambda item: (item["after"] - item["before"], item["question_id"]),
                )
                failures.append(
                    GateFailure("regression", mode, key, after, before - config.regression_tolerance, before, worse)
                )
    return failures, checked


def last_passing_run(con, settings: Settings, dataset: str) -> dict[str, Any] | None:
    """The newest passing run on this dataset, with its per-question values."""
    schema = settings.ops_schema
    tables = {
        row[0]
        for row in con.execute(
            "select table_name from information_schema.tables where table_schema = ?", [schema]
        ).fetchall()
    }
    if not {"eval_runs", "eval_question_metrics"} <= tables:
        return None
    row = con.execute(
        f"select run_id from {schema}.eval_runs where dataset = ? and status = 'passed' "
        "order by finished_at desc limit 1",
        [dataset],
    ).fetchone()
    if row is None:
        return None
    per_question: dict[str, dict[str, dict[str, float]]] = {}
    for mode, question_id, metric, k, value in con.execute(
        f"select mode, question_id, metric, k, value from {schema}.eval_question_metrics where run_id = ?", [row[0]]
    ).fetchall():
        per_question.setdefault(mode, {}).setdefault(question_id, {})[f"{metric}@{k}"] = value
    return {"run_id": row[0], "per_question": per_question}
