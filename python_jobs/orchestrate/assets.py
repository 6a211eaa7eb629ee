"""The Python stages as assets, each a call of the library function its `rp` command calls, with that
function's summary as materialization metadata:

    raw/<table>    `ingest`      python_jobs.land.ingest.ingest            rp ingest
    vector_index   `embed`       python_jobs.index.embed.embed, then       rp embed, rp verify
                                 python_jobs.index.verify.verify
    evaluation     `eval`        python_jobs.evaluate.run.run_eval          rp eval
    dashboard      `report`      python_jobs.observe.report.build_report    rp report --no-refresh
                                 (the ops_marts assets refreshed the marts)

The index's checks are the embedding job's own: its quality gate (the certificates a dbt run recorded
for the current document_chunks; python_jobs/index/gate.py), its token budget, and `verify` clean.
The evaluation's are its release gates: the thresholds, and no regression against the last passing run.
All are blocking: nothing downstream runs on an index or an evaluation that failed them.
"""

import math
from collections.abc import Mapping
from typing import Any

import dagster as dg
from dagster import AssetExecutionContext

from python_jobs.common.settings import Settings
from python_jobs.evaluate.run import run_eval
from python_jobs.evaluate.summary import EvalSummary
from python_jobs.index import gate as quality_gate
from python_jobs.index.embed import BudgetExceededError, embed
from python_jobs.index.runs import EmbedSummary
from python_jobs.index.verify import VerifyReport, verify
from python_jobs.land.ingest import IngestSummary, ingest
from python_jobs.observe import findings
from python_jobs.observe.report import build_report
from python_jobs.orchestrate.alerts import RETRY, alert_failure, deliver, step_failures
from python_jobs.orchestrate.keys import DASHBOARD, EVALUATION, INDEX
from python_jobs.orchestrate.project import OPS_TAG, Project, raw_key
from python_jobs.pipeline import REPORT_KINDS

EVAL_SEEDS = ("eval_questions", "eval_judgments", "eval_feedback_judgments")
HEADLINE_METRICS = ("ndcg@10", "hit_rate@5", "mrr@10", "recall@10")
INDEX_STALE = "index_stale"  # the report's index finding: the index_freshness check raises it (checks.py)


class IngestConfig(dg.Config):
    full_refresh: bool = False  # re-read every landing file, changed or not (`rp pipeline --full-refresh`)


def python_assets(project: Project) -> list[dg.AssetsDefinition]:
    return [ingest_asset(project), index_asset(project), evaluation_asset(project), dashboard_asset(project)]


def ingest_asset(project: Project) -> dg.AssetsDefinition:
    settings = project.settings
    specs = [
        dg.AssetSpec(
            raw_key(table, settings.raw_schema),
            description=project.raw_description(table),
            group_name=project.raw_group(table),
            owners=project.owner_emails(project.raw_group(table)),
            kinds={"duckdb", "python"},
        )
        for table in project.raw_tables
    ]

    @dg.multi_asset(specs=specs, name="ingest", retry_policy=RETRY)
    def landed_tables(context: AssetExecutionContext, config: IngestConfig):
        """New and changed landing files into the raw schema, in one transaction (`rp ingest`)."""
        settings = Settings.load()
        with step_failures("ingest", settings):
            ran = ingest(settings, full_refresh=config.full_refresh, quiet=True)
        context.log.info(ran.to_text())
        for table in project.raw_tables:
            yield dg.MaterializeResult(
                asset_key=raw_key(table, settings.raw_schema), metadata=ingest_metadata(ran, table)
            )

    return landed_tables


def ingest_metadata(ran: IngestSummary, table: str) -> dict[str, Any]:
    counts = ran.per_table.get(table, {})
    return {
        "rows_loaded": counts.get("loaded", 0),
        "rows_deleted": counts.get("deleted", 0),
        "rows_quarantined": counts.get("quarantined", 0),
        "run_files_new": ran.files_new,
        "run_files_changed": ran.files_changed,
        "run_files_removed": ran.files_removed,
        "run_files_unchanged": ran.files_unchanged,
        "ingest_run_id": ran.run_id,
        "landing_dir": dg.MetadataValue.path(ran.landing_dir),
    }


INDEX_CHECKS = {
    "quality_gate": "The chunks' tests passed in a dbt run of this exact state of document_chunks "
    "(the certificates in audit.chunk_certificates; python_jobs/index/gate.py). Nothing is indexed otherwise.",
    "token_budget": "The run embeds no more tokens than vars.embedding.max_tokens_per_run; otherwise nothing is "
    "embedded.",
    "verify_clean": "`rp verify` finds the published index in line with document_chunks: no missing, orphaned, "
    "stale or damaged rows.",
}


def index_asset(project: Project) -> dg.AssetsDefinition:
    checks = [
        dg.AssetCheckSpec(name, asset=INDEX, description=text, blocking=True) for name, text in INDEX_CHECKS.items()
    ]

    @dg.asset(
        key=INDEX,
        deps=[project.node_key(quality_gate.GATED_MODEL)],
        check_specs=checks,
        group_name=findings.RETRIEVAL_GROUP,
        owners=project.owner_emails(findings.RETRIEVAL_GROUP),
        kinds={"lancedb", "python"},
        retry_policy=RETRY,
    )
    def vector_index(context: AssetExecutionContext):
        """The LanceDB index of document_chunks, embedding only new and changed texts, then published
        (`rp embed`), and compared with the chunks (`rp verify`)."""
        settings = Settings.load()
        with step_failures("embed", settings):
            try:
                ran = embed(settings)
            except quality_gate.QualityGateError as exc:
                yield dg.AssetCheckResult(check_name="quality_gate", passed=False, description=str(exc))
                raise
            except BudgetExceededError as exc:
                yield dg.AssetCheckResult(check_name="token_budget", passed=False, description=str(exc))
                raise
            context.log.info(ran.to_text())
            report = verify(settings)
        yield dg.MaterializeResult(metadata=index_metadata(ran), check_results=index_checks(ran, report))
        if not report.healthy:
            alert = findings.job_failure("verify", RuntimeError(report.to_text()), project.owners, kind="index_broken")
            raise alert_failure(alert)

    return vector_index


def index_metadata(ran: EmbedSummary) -> dict[str, Any]:
    counts = ran.counts
    return _clean(
        {
            "index_table": ran.index_table,
            "index_version": ran.index_version,
            "published": ran.published,
            "model": ran.model.get("name"),
            "model_fingerprint": ran.model.get("id"),
            "chunks_total": ran.chunks_total,
            **{f"chunks_{name}": counts.get(name, 0) for name in ("new", "text_changed", "metadata_changed")},
            "chunks_unchanged": counts.get("unchanged", 0),
            "chunks_deleted": counts.get("deleted", 0),
            "texts_embedded": ran.texts_embedded,
            "tokens_embedded": ran.tokens_embedded,
            "estimated_cost_usd": ran.estimated_cost_usd,
            "cache_hit_rate": ran.cache_hit_rate,
            "quality_gate": ran.quality_gate,
            "embed_run_id": ran.run_id,
            "seconds": round(ran.total_seconds, 2),
            "index_dir": dg.MetadataValue.path(ran.index_dir) if ran.index_dir else None,
            "warnings": "\n".join(ran.warnings) or None,
        }
    )


def index_checks(ran: EmbedSummary, report: VerifyReport) -> list[dg.AssetCheckResult]:
    problems = {name: count for name, count in report.problems.items() if count}
    return [
        dg.AssetCheckResult(
            check_name="quality_gate",
            passed=True,
            description=ran.quality_gate,
            metadata={"forced": ran.forced},
        ),
        dg.AssetCheckResult(
            check_name="token_budget",
            passed=ran.tokens_embedded <= ran.token_budget,
            metadata={
                "tokens_embedded": ran.tokens_embedded,
                "token_budget": ran.token_budget,
                "estimated_cost_usd": ran.estimated_cost_usd,
            },
        ),
        dg.AssetCheckResult(
            check_name="verify_clean",
            passed=report.healthy,
            description="; ".join(f"{count} {name}" for name, count in problems.items()) or None,
            metadata=_clean(
                {
                    "chunks": report.chunks,
                    "index_rows": report.index_rows,
                    "problems": problems or None,
                    "notes": "\n".join(report.notes) or None,
                }
            ),
        ),
    ]


EVAL_CHECKS = {
    "gates": "Every metric of vars.eval.gates reaches its threshold in its mode.",
    "no_regression": "No metric of vars.eval.regression_metrics drops by more than the tolerance against the last "
    "passing run, on the questions both asked.",
}


def evaluation_asset(project: Project) -> dg.AssetsDefinition:
    checks = [
        dg.AssetCheckSpec(name, asset=EVALUATION, description=text, blocking=True) for name, text in EVAL_CHECKS.items()
    ]

    @dg.asset(
        key=EVALUATION,
        deps=[INDEX, *(project.node_key(seed) for seed in EVAL_SEEDS)],
        check_specs=checks,
        group_name=findings.RETRIEVAL_GROUP,
        owners=project.owner_emails(findings.RETRIEVAL_GROUP),
        kinds={"python"},
        retry_policy=RETRY,
    )
    def evaluation(context: AssetExecutionContext):
        """The seeded questions (and the judgments promoted from feedback) asked of the published index in
        every mode, scored, gated, and recorded in ops.eval_* (`rp eval`)."""
        settings = Settings.load()
        with step_failures("eval", settings):
            ran = run_eval(settings)
        context.log.info(ran.to_text())
        yield dg.MaterializeResult(metadata=eval_metadata(ran), check_results=eval_checks(ran))
        if not ran.passed:
            raise alert_failure(findings.eval_failure("eval", ran, ran.run_id, project.owners))

    return evaluation


def eval_metadata(ran: EvalSummary) -> dict[str, Any]:
    metrics = {
        f"{mode} {key}": value
        for mode in ran.modes
        for key, value in ran.aggregate.get(mode, {}).items()
        if key in HEADLINE_METRICS
    }
    return _clean(
        {
            "eval_run_id": ran.run_id,
            "status": ran.status,
            "dataset": ran.dataset,
            "questions": ran.questions_evaluated,
            "index_table": ran.index_table,
            "index_version": ran.index_version,
            "gates_checked": ran.gates_checked,
            "gate_failures": len(ran.gate_failures),
            "baseline_run_id": ran.baseline_run_id,
            **metrics,
            "seconds": round(ran.seconds, 2),
        }
    )


def eval_checks(ran: EvalSummary) -> list[dg.AssetCheckResult]:
    results = []
    for name, kind in (("gates", "threshold"), ("no_regression", "regression")):
        failed = [f for f in ran.gate_failures if f.kind == kind]
        results.append(
            dg.AssetCheckResult(
                check_name=name,
                passed=not failed,
                description="; ".join(f.describe() for f in failed) or None,
                metadata=_clean(
                    {
                        "failed": len(failed),
                        "question_ids": ", ".join(sorted({q["question_id"] for f in failed for q in f.worse_questions}))
                        or None,
                        "baseline_run_id": ran.baseline_run_id if kind == "regression" else None,
                        "eval_run_id": ran.run_id,
                    }
                ),
            )
        )
    return results


def dashboard_asset(project: Project) -> dg.AssetsDefinition:
    @dg.asset(
        key=DASHBOARD,
        deps=project.model_keys(OPS_TAG),
        group_name=findings.PLATFORM_GROUP,
        owners=project.owner_emails(findings.PLATFORM_GROUP),
        kinds={"html", "python"},
        retry_policy=RETRY,
    )
    def dashboard(context: AssetExecutionContext):
        """The ops dashboard, one self-contained HTML page, from the ops marts just built (`rp report
        --no-refresh`). What `rp pipeline`'s report step raises it raises too: its warnings (chunks waiting
        for the index, the weekly budget spent, flaky tests) go to the alert sinks, an error fails the step
        with its alert once the page is written. A breached index SLA is the `index_freshness` check's."""
        settings = Settings.load()
        with step_failures("report", settings):
            ran = build_report(settings, refresh=False)
        context.log.info(ran.to_text())
        found = [a for a in ran.findings if a.kind in REPORT_KINDS]
        errors = [a for a in found if a.level == "error" and a.kind != INDEX_STALE]
        for alert in [a for a in found if a.level != "error"] + errors[1:]:
            deliver(alert, settings, context.log)
        yield dg.MaterializeResult(
            metadata={
                "path": dg.MetadataValue.path(ran.path),
                "bytes": ran.bytes,
                "charts": len(ran.charts),
                "needs_attention_errors": ran.attention.get("error", 0),
                "needs_attention_warnings": ran.attention.get("warn", 0),
                "render_seconds": round(ran.render_seconds, 2),
            }
        )
        if errors:
            raise alert_failure(errors[0])

    return dashboard


def _clean(metadata: Mapping[str, Any]) -> dict[str, Any]:
    """Metadata without empty values or NaN (a metric no question defined), which Dagster cannot show."""
    return {
        key: value
        for key, value in metadata.items()
        if value is not None and not (isinstance(value, float) and math.isnan(value))
    }
