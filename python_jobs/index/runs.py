"""An embedding run as it is recorded and shown: its summary, its row in `ops.embed_runs` (declared
as a dbt source in models/staging/ops/_ops__sources.yml) and its text for the terminal."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import Any

from python_jobs.common.ledger import Ledger
from python_jobs.common.output import Summary
from python_jobs.common.settings import Settings

EMBED_RUNS = {
    "run_id": "varchar",
    "started_at": "timestamptz",
    "finished_at": "timestamptz",
    # running, success, failed, refused_quality_gate, refused_mass_delete, refused_budget, interrupted
    "status": "varchar",
    "forced": "boolean",
    "model_name": "varchar",
    "model_fingerprint": "varchar",
    "model_backend": "varchar",
    "model_dimension": "integer",
    "chunking_config_hash": "varchar",
    "index_table": "varchar",
    "index_version": "bigint",
    "published": "boolean",
    "swapped_from": "varchar",
    "chunks_total": "bigint",
    "chunks_new": "bigint",
    "chunks_text_changed": "bigint",
    "chunks_metadata_changed": "bigint",
    "chunks_unchanged": "bigint",
    "chunks_deleted": "bigint",
    "duplicates_removed": "bigint",
    "texts_embedded": "bigint",
    "tokens_embedded": "bigint",
    "chunks_reused": "bigint",
    "tokens_reused": "bigint",
    "cache_hit_rate": "double",
    "price_per_million_tokens": "double",
    "estimated_cost_usd": "double",
    "token_budget": "bigint",
    "plan_seconds": "double",
    "embed_seconds": "double",
    "write_seconds": "double",
    "upkeep_seconds": "double",
    "total_seconds": "double",
    "chunks_per_second": "double",
    "error": "varchar",
}


@dataclass
class EmbedSummary(Summary):
    run_id: str
    status: str = "running"
    dry_run: bool = False
    forced: bool = False
    model: dict[str, Any] = field(default_factory=dict)
    model_loaded: bool = False
    chunking_config_hash: str = ""
    index_dir: str = ""
    index_table: str = ""
    index_version: int | None = None
    published: bool = False
    swapped_from: str | None = None
    counts: dict[str, int] = field(default_factory=dict)
    chunks_total: int = 0
    duplicates_removed: int = 0
    texts_embedded: int = 0
    tokens_embedded: int = 0
    chunks_reused: int = 0
    tokens_reused: int = 0
    cache_hit_rate: float | None = None
    price_per_million_tokens: float = 0.0
    estimated_cost_usd: float = 0.0
    token_budget: int = 0
    plan_seconds: float = 0.0
    embed_seconds: float = 0.0
    write_seconds: float = 0.0
    upkeep_seconds: float = 0.0
    total_seconds: float = 0.0
    upkeep: dict[str, Any] | None = None
    quality_gate: str = ""
    warnings: list[str] = field(default_factory=list)
    error: str | None = None

    @property
    def chunks_per_second(self) -> float | None:
        busy = self.embed_seconds + self.write_seconds
        return self.texts_embedded / busy if self.texts_embedded and busy else None

    def ledger_row(self, started_at: datetime) -> dict[str, Any]:
        return {
            "run_id": self.run_id,
            "started_at": started_at,
            "finished_at": None if self.status == "running" else datetime.now(UTC),
            "status": self.status,
            "forced": self.forced,
            "model_name": self.model.get("name"),
            "model_fingerprint": self.model.get("id"),
            "model_backend": self.model.get("backend"),
            "model_dimension": self.model.get("dimension"),
            "chunking_config_hash": self.chunking_config_hash or None,
            "index_table": self.index_table or None,
            "index_version": self.index_version,
            "published": self.published,
            "swapped_from": self.swapped_from,
            "chunks_total": self.chunks_total,
            **{f"chunks_{name}": self.counts.get(name, 0) for name in ("new", "text_changed", "metadata_changed")},
            "chunks_unchanged": self.counts.get("unchanged", 0),
            "chunks_deleted": self.counts.get("deleted", 0),
            "duplicates_removed": self.duplicates_removed,
            "texts_embedded": self.texts_embedded,
            "tokens_embedded": self.tokens_embedded,
            "chunks_reused": self.chunks_reused,
            "tokens_reused": self.tokens_reused,
            "cache_hit_rate": self.cache_hit_rate,
            "price_per_million_tokens": self.price_per_million_tokens,
            "estimated_cost_usd": self.estimated_cost_usd,
            "token_budget": self.token_budget,
            "plan_seconds": self.plan_seconds,
            "embed_seconds": self.embed_seconds,
            "write_seconds": self.write_seconds,
            "upkeep_seconds": self.upkeep_seconds,
            "total_seconds": self.total_seconds,
            "chunks_per_second": self.chunks_per_second,
            "error": self.error,
        }

    def to_text(self) -> str:
        return render(self)

    def to_json(self) -> dict[str, Any]:
        return asdict(self) | {"chunks_per_second": self.chunks_per_second}


def ledger(settings: Settings) -> Ledger:
    return Ledger(settings.ops_schema, "embed_runs", EMBED_RUNS)


def render(summary: EmbedSummary) -> str:
    counts = summary.counts
    head = "plan (dry run, nothing changed)" if summary.dry_run else f"embed {summary.run_id}: {summary.status}"
    lines = [
        f"{head} in {summary.total_seconds:.2f}s",
        f"  model:  {summary.model.get('name')} ({summary.model.get('dimension')}d, {summary.model.get('backend')}, "
        f"fingerprint {summary.model.get('id')})",
        f"  chunks: {summary.chunks_total:,} in document_chunks: {counts.get('new', 0):,} new, "
        f"{counts.get('text_changed', 0):,} text changed, {counts.get('metadata_changed', 0):,} metadata only, "
        f"{counts.get('unchanged', 0):,} unchanged, {counts.get('deleted', 0):,} deleted"
        + (f", {summary.duplicates_removed:,} duplicated" if summary.duplicates_removed else ""),
        f"  {'to embed' if summary.dry_run else 'embedded'}: {summary.texts_embedded:,} texts, "
        f"{summary.tokens_embedded:,} tokens (est. ${summary.estimated_cost_usd:.4f} at "
        f"${summary.price_per_million_tokens}/M tokens; budget {summary.token_budget:,}); reused "
        f"{summary.chunks_reused:,} cached vectors"
        + (f" (cache hit rate {summary.cache_hit_rate:.0%})" if summary.cache_hit_rate is not None else ""),
    ]
    if not summary.dry_run:
        swap = f", swapped in for {summary.swapped_from}" if summary.swapped_from and summary.published else ""
        lines.append(
            f"  index:  {summary.index_table} version {summary.index_version}"
            f"{' published' if summary.published else ' not published'}{swap} ({summary.index_dir})"
        )
        if summary.texts_embedded:
            lines.append(
                f"  time:   plan {summary.plan_seconds:.2f}s, embed {summary.embed_seconds:.1f}s, write "
                f"{summary.write_seconds:.1f}s, upkeep {summary.upkeep_seconds:.1f}s"
            )
    if summary.quality_gate:
        lines.append(f"  quality gate: {summary.quality_gate}")
    lines += [f"  warning: {w}" for w in summary.warnings]
    return "\n".join(lines)
