"""Measure retrieval on the evaluation set, gate the release on it, and keep the history.

A run asks every question of the set (python_jobs.evaluate.datasets) in every configured mode, as
its asker would: with the asker's access levels and the question's filters, for the best
chunk of each document (python_jobs.search.retriever, `per_document`). The document rankings are
scored by python_jobs.evaluate.metrics at every k of `vars.eval.k`, per question, per
category and overall. Then the gates (`vars.eval`):

- thresholds: `thresholds.<mode>.<metric>@<k>` is the lowest passing value;
- regressions: against the last passing run on the same dataset, a metric of
  `regression_metrics` may not drop by more than `regression_tolerance`, compared on the
  questions both runs asked; a failure names the questions that got worse.

Every run lands in the warehouse, declared as dbt sources: `ops.eval_runs` (one row per
run: index version, model fingerprint, chunking config hash, git commit, status),
`ops.eval_metrics` (aggregates per mode and category), `ops.eval_question_metrics` and
`ops.eval_question_results` (what each question retrieved). The index version evaluated is
pinned with the Lance tag `eval`, so version cleanup keeps it for comparison.

Exit codes: 0 passed, 6 a gate failed (the table is printed first), 2 a bad eval set.

Example:
    rp eval                  # the seeded questions, every mode, gates on
    rp eval --mode hybrid --json
"""

from __future__ import annotations

import io
import json
import math
import subprocess
import time
import uuid
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from python_jobs.common.errors import ExitCode
from python_jobs.common.ledger import Ledger, record_run
from python_jobs.common.output import Summary, progress_bar
from python_jobs.common.settings import EvalSettings, Settings
from python_jobs.common.warehouse import connect
from python_jobs.evaluate import datasets as eval_sets
from python_jobs.evaluate.metrics import METRICS, evaluate
from python_jobs.index.store import IndexBusyError, VectorIndex, pin
from python_jobs.search.retriever import Retriever

EVAL_TAG = "eval"  # the index version the last evaluation read; cleanup keeps tagged versions
GATE_FAILED_EXIT = ExitCode.EVAL_GATE
WORSE_QUESTIONS_SHOWN = 10

EVAL_RUNS = {
    "run_id": "varchar",
    "started_at": "timestamptz",
    "finished_at": "timestamptz",
    "status": "varchar",  # passed, failed_gates, measured (no gates applied)
    "dataset": "varchar",
    "eval_source": "varchar",
    "modes": "varchar",
    "ks": "varchar",
    "questions": "integer",
    "questions_evaluated": "integer",
    "questions_skipped": "integer",
    "index_dir": "varchar",
    "index_table": "varchar",
    "index_version": "bigint",
    "model_name": "varchar",
    "model_fingerprint": "varchar",
    "chunking_config_hash": "varchar",
    "git_commit": "varchar",
    "git_dirty": "boolean",
    "baseline_run_id": "varchar",
    "gates_checked": "integer",
    "gate_failures": "integer",
    "gate_report": "varchar",  # JSON list of the failures
    "seconds": "double",
}
EVAL_METRICS = {
    "run_id": "varchar",
    "dataset": "varchar",
    "mode": "varchar",
    "category": "varchar",  # "all", or one category of the questions
    "metric": "varchar",
    "k": "integer",
    "value": "double",
    "questions": "integer",
}
EVAL_QUESTION_METRICS = {
    "run_id": "varchar",
    "mode": "varchar",
    "question_id": "varchar",
    "metric": "varchar",
    "k": "integer",
    "value": "double",
}
EVAL_QUESTION_RESULTS = {
    "run_id": "varchar",
    "mode": "varchar",
    "question_id": "varchar",
    "category": "varchar",
    "question": "varchar",
    "evaluated": "boolean",  # false: no relevant document for this asker
    "relevant_doc_ids": "varchar",  # JSON list
    "retrieved_doc_ids": "varchar",  # JSON list, best first, up to the largest k
    "first_relevant_rank": "integer",
    "latency_ms": "double",
}


def ledgers(settings: Settings) -> dict[str, Ledger]:
    schema = settings.ops_schema
    return {
        "runs": Ledger(schema, "eval_runs", EVAL_RUNS),
        "metrics": Ledger(schema, "eval_metrics", EVAL_METRICS, ("run_id", "mode", "category", "metric", "k")),
        "question_metrics": Ledger(
            schema, "eval_question_metrics", EVAL_QUESTION_METRICS, ("run_id", "mode", "question_id", "metric", "k")
        ),
        "question_results": Ledger(
            schema, "eval_question_results", EVAL_QUESTION_RESULTS, ("run_id", "mode", "question_id")
        ),
    }


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


@dataclass
class EvalOptions:
    modes: tuple[str, ...] | None = None  # default: vars.eval.modes
    ks: tuple[int, ...] | None = None  # default: vars.eval.k
    gates: bool = True  # thresholds and regressions; off for public benchmarks
    ignore_identical_ids: bool = False  # BEIR: a document with the query's id is not a result
    record: bool = True
    progress: bool | None = None


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


def run_eval(
    settings: Settings,
    evaluation: eval_sets.EvalSet | None = None,
    options: EvalOptions | None = None,
    retriever: Retriever | None = None,
) -> EvalSummary:
    """Evaluate the published index on `evaluation` (default: the seeds in the warehouse)."""
    options = options or EvalOptions()
    config = settings.eval
    modes = tuple(options.modes or config.modes)
    ks = tuple(sorted(set(options.ks or config.ks)))
    started_at, clock = datetime.now(UTC), time.perf_counter()
    baseline = None
    with connect(settings.warehouse_path, read_only=True) as con:
        evaluation = evaluation or eval_sets.from_warehouse(con)
        if options.gates:
            baseline = _last_passing_run(con, settings, evaluation.name)
    retriever = retriever or Retriever(settings)
    summary = EvalSummary(
        run_id=f"{started_at:%Y%m%dT%H%M%S}-{uuid.uuid4().hex[:6]}",
        dataset=evaluation.name,
        source=evaluation.source,
        modes=list(modes),
        ks=list(ks),
        questions=len(evaluation.questions),
        index_dir=str(settings.index_dir),
        index_table=retriever.pointer.table,
        index_version=retriever.version,
        model=dict(retriever.pointer.model),
        chunking_config_hash=_chunking_config_hash(retriever),
    )
    summary.git_commit, summary.git_dirty = _git_state(settings.project_dir)

    depth = max(ks)
    results: dict[str, dict[str, dict[str, Any]]] = {}
    if any(mode in ("vector", "hybrid") for mode in modes):
        retriever.embed_queries([q.text for q in evaluation.questions])
    for mode in modes:
        results[mode] = _ask_all(retriever, evaluation, mode, depth, options)
        summary.query_seconds[mode] = sum(r["seconds"] for r in results[mode].values())
        run = {qid: r["ranking"] for qid, r in results[mode].items()}
        scored = evaluate(run, evaluation.qrels, METRICS, ks, min_relevance=config.min_relevance)
        summary.per_question[mode] = scored.per_query
        summary.aggregate[mode] = scored.aggregate
        summary.skipped_questions = scored.skipped_queries
        summary.questions_evaluated = scored.num_evaluated
        summary.by_category[mode] = _by_category(evaluation, scored.per_query)

    if options.gates:
        summary.gate_failures, summary.gates_checked = _check_gates(summary, config, baseline)
        summary.baseline_run_id = baseline["run_id"] if baseline else None
        summary.status = "passed" if summary.passed else "failed_gates"
    else:
        summary.status = "measured"
    summary.seconds = time.perf_counter() - clock
    if options.record:
        record_run(settings.warehouse_path, _ledger_rows(settings, summary, evaluation, results, started_at))
        _pin_evaluated_version(settings, summary)
    return summary


def _ask_all(retriever: Retriever, evaluation, mode: str, depth: int, options: EvalOptions) -> dict[str, dict]:
    answers = {}
    questions = progress_bar(options.progress, evaluation.questions, desc=f"eval {mode}", unit="q")
    for question in questions:
        started = time.perf_counter()
        result = retriever.search(
            question.text,
            mode,
            depth + (1 if options.ignore_identical_ids else 0),
            question.filters,
            question.access_levels,
            per_document=True,
        )
        hits = [h for h in result.hits if not (options.ignore_identical_ids and h.doc_id == question.question_id)]
        answers[question.question_id] = {
            "ranking": [(hit.doc_id, hit.score) for hit in hits[:depth]],
            "seconds": time.perf_counter() - started,
        }
    return answers


def _by_category(evaluation, per_query: dict[str, dict[str, float]]) -> dict[str, dict[str, float]]:
    grouped: dict[str, list[dict[str, float]]] = {}
    for question in evaluation.questions:
        if question.question_id in per_query:
            grouped.setdefault(question.category, []).append(per_query[question.question_id])
    return {
        category: {key: math.fsum(v[key] for v in values) / len(values) for key in values[0]}
        for category, values in sorted(grouped.items())
    }


# --- gates -------------------------------------------------------------------------------------


def _check_gates(
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


def _last_passing_run(con, settings: Settings, dataset: str) -> dict[str, Any] | None:
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


# --- recording ---------------------------------------------------------------------------------


def _ledger_rows(settings: Settings, summary: EvalSummary, evaluation, results, started_at: datetime):
    tables = ledgers(settings)
    run = {
        "run_id": summary.run_id,
        "started_at": started_at,
        "finished_at": datetime.now(UTC),
        "status": summary.status,
        "dataset": summary.dataset,
        "eval_source": summary.source,
        "modes": ",".join(summary.modes),
        "ks": ",".join(str(k) for k in summary.ks),
        "questions": summary.questions,
        "questions_evaluated": summary.questions_evaluated,
        "questions_skipped": len(summary.skipped_questions),
        "index_dir": summary.index_dir,
        "index_table": summary.index_table,
        "index_version": summary.index_version,
        "model_name": summary.model.get("name"),
        "model_fingerprint": summary.model.get("id"),
        "chunking_config_hash": summary.chunking_config_hash,
        "git_commit": summary.git_commit,
        "git_dirty": summary.git_dirty,
        "baseline_run_id": summary.baseline_run_id,
        "gates_checked": summary.gates_checked,
        "gate_failures": len(summary.gate_failures),
        "gate_report": json.dumps([asdict(f) for f in summary.gate_failures]),
        "seconds": summary.seconds,
    }
    metrics, question_metrics, question_results = [], [], []
    for mode in summary.modes:
        scopes = {"all": summary.aggregate[mode], **summary.by_category[mode]}
        for category, values in scopes.items():
            count = (
                summary.questions_evaluated
                if category == "all"
                else sum(
                    1
                    for q in evaluation.questions
                    if q.category == category and q.question_id in summary.per_question[mode]
                )
            )
            for key, value in values.items():
                metric, k = _split_key(key)
                metrics.append(_row(summary, mode, category=category, metric=metric, k=k, value=value, questions=count))
        for question_id, values in summary.per_question[mode].items():
            for key, value in values.items():
                metric, k = _split_key(key)
                question_metrics.append(
                    {"run_id": summary.run_id, "mode": mode, "question_id": question_id, "metric": metric, "k": k}
                    | {"value": value}
                )
        for question in evaluation.questions:
            answer = results[mode][question.question_id]
            relevant = {
                d for d, r in evaluation.qrels.get(question.question_id, {}).items() if r >= settings.eval.min_relevance
            }
            retrieved = [doc_id for doc_id, _ in answer["ranking"]]
            first = next((rank for rank, doc_id in enumerate(retrieved, start=1) if doc_id in relevant), None)
            question_results.append(
                {
                    "run_id": summary.run_id,
                    "mode": mode,
                    "question_id": question.question_id,
                    "category": question.category,
                    "question": question.text,
                    "evaluated": question.question_id in summary.per_question[mode],
                    "relevant_doc_ids": json.dumps(sorted(relevant)),
                    "retrieved_doc_ids": json.dumps(retrieved),
                    "first_relevant_rank": first,
                    "latency_ms": answer["seconds"] * 1000,
                }
            )
    return [
        (tables["runs"], [run]),
        (tables["metrics"], metrics),
        (tables["question_metrics"], question_metrics),
        (tables["question_results"], question_results),
    ]


def _row(summary: EvalSummary, mode: str, **values) -> dict[str, Any]:
    return {"run_id": summary.run_id, "dataset": summary.dataset, "mode": mode, **values}


def _split_key(key: str) -> tuple[str, int]:
    metric, _, k = key.partition("@")
    return metric, int(k)


def _pin_evaluated_version(settings: Settings, summary: EvalSummary) -> None:
    """Tag the evaluated version `eval`, under the index lock: cleanup then keeps it."""
    index = VectorIndex(settings.index_dir)
    try:
        with index.lock(wait_seconds=30):
            table = index.open(summary.index_table)
            if table is not None:
                pin(table, EVAL_TAG, summary.index_version)
    except IndexBusyError:
        summary.warnings.append(
            f"could not pin {summary.index_table} v{summary.index_version} as `{EVAL_TAG}`: an embedding run holds "
            "the index; its version cleanup may remove the version this evaluation read"
        )


def _chunking_config_hash(retriever: Retriever) -> str | None:
    rows = retriever.table.search().select(["chunking_config_hash"]).limit(1).to_arrow()
    return rows.column(0)[0].as_py() if rows.num_rows else None


def _git_state(directory: Path) -> tuple[str | None, bool | None]:
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=directory, capture_output=True, text=True, timeout=10, check=True
        ).stdout.strip()
        status = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=directory,
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return None, None  # not a git checkout (an installed copy): recorded as unknown
    return commit or None, bool(status.strip())


# --- output ------------------------------------------------------------------------------------

SHORT_NAMES = {"precision": "P", "recall": "R", "hit_rate": "hit", "mrr": "MRR", "ndcg": "nDCG", "map": "MAP"}
CATEGORY_COLUMNS = ("hit_rate@5", "ndcg@10", "mrr@10", "recall@10")


def render(summary: EvalSummary) -> str:
    from rich.console import Console
    from rich.table import Table

    console = Console(width=140, file=io.StringIO())
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

    columns = [key for key in CATEGORY_COLUMNS if _split_key(key)[1] in summary.ks]
    if columns and len(next(iter(summary.by_category.values()), {})) > 1:
        categories = Table(title="by category", title_justify="left")
        categories.add_column("category")
        categories.add_column("mode")
        for key in columns:
            metric, k = _split_key(key)
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
