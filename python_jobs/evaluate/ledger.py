"""What an evaluation run records in the warehouse: `ops.eval_runs`, `ops.eval_metrics`,
`ops.eval_question_metrics` and `ops.eval_question_results`, declared as dbt sources in
models/staging/ops/_ops__sources.yml (a test holds the two declarations equal)."""

from __future__ import annotations

import json
from dataclasses import asdict
from datetime import UTC, datetime
from typing import Any

from python_jobs.common.ledger import Ledger
from python_jobs.common.settings import Settings
from python_jobs.evaluate.summary import EvalSummary, split_key

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


def ledger_rows(settings: Settings, summary: EvalSummary, evaluation, results, started_at: datetime):
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
                metric, k = split_key(key)
                metrics.append(_row(summary, mode, category=category, metric=metric, k=k, value=value, questions=count))
        for question_id, values in summary.per_question[mode].items():
            for key, value in values.items():
                metric, k = split_key(key)
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
