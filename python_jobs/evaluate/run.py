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

import math
import subprocess
import time
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from python_jobs.common.errors import ExitCode
from python_jobs.common.ledger import record_run
from python_jobs.common.output import progress_bar
from python_jobs.common.settings import Settings
from python_jobs.common.warehouse import connect
from python_jobs.evaluate import datasets as eval_sets
from python_jobs.evaluate.gates import check_gates, last_passing_run
from python_jobs.evaluate.ledger import ledger_rows
from python_jobs.evaluate.metrics import METRICS, evaluate
from python_jobs.evaluate.summary import EvalSummary
from python_jobs.index.store import IndexBusyError, VectorIndex, pin
from python_jobs.search.retriever import Retriever

EVAL_TAG = "eval"  # the index version the last evaluation read; cleanup keeps tagged versions
GATE_FAILED_EXIT = ExitCode.EVAL_GATE


@dataclass
class EvalOptions:
    modes: tuple[str, ...] | None = None  # default: vars.eval.modes
    ks: tuple[int, ...] | None = None  # default: vars.eval.k
    gates: bool = True  # thresholds and regressions; off for public benchmarks
    ignore_identical_ids: bool = False  # BEIR: a document with the query's id is not a result
    record: bool = True
    progress: bool | None = None


def run_eval(
    settings: Settings,
    evaluation: eval_sets.EvalSet | None = None,
    options: EvalOptions | None = None,
    retriever: Retriever | None = None,
) -> EvalSummary:
    """Evaluate the published index on `evaluation` (default: the seeds in the warehouse, with the
    judgments promoted from feedback)."""
    options = options or EvalOptions()
    config = settings.eval
    modes = tuple(options.modes or config.modes)
    ks = tuple(sorted(set(options.ks or config.ks)))
    started_at, clock = datetime.now(UTC), time.perf_counter()
    baseline = None
    with connect(settings.warehouse_path, read_only=True) as con:
        if evaluation is None:  # the seeds, and what users asked that was promoted from their feedback
            feedback = settings.project_dir / settings.eval.feedback_judgments_path
            evaluation = eval_sets.with_feedback(eval_sets.from_warehouse(con), feedback)
        if options.gates:
            baseline = last_passing_run(con, settings, evaluation.name)
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
        summary.gate_failures, summary.gates_checked = check_gates(summary, config, baseline)
        summary.baseline_run_id = baseline["run_id"] if baseline else None
        summary.status = "passed" if summary.passed else "failed_gates"
    else:
        summary.status = "measured"
    summary.seconds = time.perf_counter() - clock
    if options.record:
        record_run(settings.warehouse_path, ledger_rows(settings, summary, evaluation, results, started_at))
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


# --- recording ---------------------------------------------------------------------------------


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
