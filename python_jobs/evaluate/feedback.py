"""Feedback becomes evaluation data: `rp eval promote-feedback`.

The retrieval service logs every query and the feedback on its answers (python_jobs/serve/,
Parquet files dbt reads as the `serve` source); dbt turns the feedback into candidate judgments,
`eval_feedback_candidates` (models/marts/ops): one row per question, as people typed it, and
document someone labelled for it, with the votes for and against and a proposed relevance.
Promoting:

1. refreshes the serving marts from the latest log files (`dbt build --select tag:serving`, recorded
   like any build; `--no-refresh` reads the candidates as the last build left them);
2. takes the candidates with at least `--min-votes` votes for, a proposed relevance of 1 or more,
   a document still in the corpus, and not promoted before (by candidate, or by question and document);
3. appends them, with their provenance (source `feedback`, votes, clicks, first and last seen,
   promoted_at), to the promoted judgments file, vars.eval.feedback_judgments_path
   (seeds/eval_feedback_judgments.csv). The rows already there are kept byte for byte: a review
   of the file's diff sees only what is new, and deleting a row drops a judgment for good.

`rp eval` reads that file beside the seeded questions (python_jobs.evaluate.datasets.with_feedback),
so the next evaluation measures retrieval on what users actually asked.

Example:
    rp eval promote-feedback --min-votes 3 --dry-run   # what would be promoted, for review
    rp eval promote-feedback --min-votes 3
"""

from __future__ import annotations

import csv
import io
import os
import sys
import tempfile
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from python_jobs.common.errors import PipelineError
from python_jobs.common.output import Summary
from python_jobs.common.settings import Settings
from python_jobs.common.warehouse import connect
from python_jobs.evaluate.datasets import EvalSetError
from python_jobs.transform.dbt import run_dbt

CANDIDATES = "eval_feedback_candidates"
# The serving marts (models tagged `serving`: the service's files up to the candidates), not the documents.
REFRESH_ARGS = ["build", "--select", "tag:serving", "--quiet"]
PROMOTED_COLUMNS = (
    "question_id",
    "question",
    "asker_access_level",
    "doc_id",
    "relevance",
    "source",
    "votes_for",
    "votes_against",
    "clicks",
    "first_seen_at",
    "last_seen_at",
    "promoted_at",
    "candidate_id",
)
SOURCE = "feedback"


@dataclass
class PromoteSummary(Summary):
    path: str
    min_votes: int
    dry_run: bool = False
    refreshed: bool = False
    candidates: int = 0  # candidates in the mart
    below_min_votes: int = 0  # relevant, but fewer votes for than --min-votes
    not_relevant: int = 0  # proposed relevance 0: as many votes against as for, or more
    document_gone: int = 0  # the document is no longer in the corpus
    already_promoted: int = 0
    promoted: list[dict[str, Any]] = field(default_factory=list)

    def to_text(self) -> str:
        verb = "would promote" if self.dry_run else "promoted"
        lines = [
            f"{self.candidates} candidate judgments from feedback; {verb} {len(self.promoted)} "
            f"(--min-votes {self.min_votes}) to {self.path}",
            f"  not promoted: {self.already_promoted} already promoted, {self.below_min_votes} below "
            f"--min-votes, {self.not_relevant} not relevant by their votes, {self.document_gone} about a "
            "document no longer in the corpus",
        ]
        for row in self.promoted:
            lines.append(
                f"  {row['question_id']}  {row['doc_id']}  relevance {row['relevance']}  "
                f"votes +{row['votes_for']}/-{row['votes_against']}  clicks {row['clicks']}  "
                f"asked as {row['asker_access_level']}: {_short(row['question'])}"
            )
        if self.promoted and self.dry_run:
            lines.append("Nothing written (--dry-run).")
        elif self.promoted:
            lines.append("The next `rp eval` asks these questions too (category feedback).")
        return "\n".join(lines)


def promote_feedback(settings: Settings, min_votes: int, dry_run: bool = False, refresh: bool = True) -> PromoteSummary:
    """Append the eligible feedback candidates to vars.eval.feedback_judgments_path; see the module docstring."""
    if min_votes < 1:
        raise EvalSetError(f"--min-votes must be 1 or more, got {min_votes}")
    path = settings.project_dir / settings.eval.feedback_judgments_path
    summary = PromoteSummary(path=str(path), min_votes=min_votes, dry_run=dry_run)
    existing_text, promoted_keys = _read_promoted(path)  # a broken file stops us before any build
    if refresh:
        code = run_dbt(settings, REFRESH_ARGS, output=sys.stderr).exit_code
        if code != 0:
            raise PipelineError(
                f"refreshing {CANDIDATES} failed (dbt exited {code}, see above); nothing was promoted. "
                "Fix the build, or promote from the last build's candidates with --no-refresh"
            )
        summary.refreshed = True
    candidates = read_candidates(settings)
    now = datetime.now(UTC)
    summary.candidates = len(candidates)
    for row in candidates:
        if row["candidate_id"] in promoted_keys or (row["question_id"], row["doc_id"]) in promoted_keys:
            summary.already_promoted += 1
        elif not row["proposed_relevance"]:
            summary.not_relevant += 1
        elif not row["is_document_current"]:
            summary.document_gone += 1
        elif row["votes_for"] < min_votes:
            summary.below_min_votes += 1
        else:
            summary.promoted.append(_judgment(row, now))
    if summary.promoted and not dry_run:
        _write_atomically(path, existing_text + _csv_lines(summary.promoted, header=not existing_text))
    return summary


def read_candidates(settings: Settings) -> list[dict[str, Any]]:
    """Every row of the candidates mart, most votes first."""
    with connect(settings.warehouse_path, read_only=True) as con:
        schemas = con.execute(
            "select table_schema from information_schema.tables where table_name = ? order by table_schema",
            [CANDIDATES],
        ).fetchall()
        if not schemas:
            raise PipelineError(
                f"{CANDIDATES} is not in the warehouse {settings.warehouse_path}: run `make build` "
                "(or this command without --no-refresh)"
            )
        cursor = con.execute(
            f'select * from "{schemas[0][0]}"."{CANDIDATES}" '
            "where asker_access_level is not null "
            "order by votes_for desc, votes_against, question_id, doc_id"
        )
        names = [column[0] for column in cursor.description]
        return [dict(zip(names, values, strict=True)) for values in cursor.fetchall()]


def _judgment(candidate: dict[str, Any], promoted_at: datetime) -> dict[str, Any]:
    return {
        "question_id": candidate["question_id"],
        "question": candidate["question"],
        "asker_access_level": candidate["asker_access_level"],
        "doc_id": candidate["doc_id"],
        "relevance": candidate["proposed_relevance"],
        "source": SOURCE,
        "votes_for": candidate["votes_for"],
        "votes_against": candidate["votes_against"],
        "clicks": candidate["clicks"],
        "first_seen_at": _timestamp(candidate["first_seen_at"]),
        "last_seen_at": _timestamp(candidate["last_seen_at"]),
        "promoted_at": _timestamp(promoted_at),
        "candidate_id": candidate["candidate_id"],
    }


def _read_promoted(path: Path) -> tuple[str, set]:
    """The file's text as it is, and the candidates and (question, document) pairs it already holds."""
    if not path.is_file():
        return "", set()
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise EvalSetError(f"{path} is not UTF-8: {exc}") from None
    if not text.strip():
        return "", set()
    reader = csv.DictReader(io.StringIO(text))
    missing = [column for column in PROMOTED_COLUMNS if column not in (reader.fieldnames or ())]
    if missing:
        raise EvalSetError(
            f"{path}: the header lacks column(s) {', '.join(missing)}; it should read {','.join(PROMOTED_COLUMNS)}"
        )
    if list(reader.fieldnames or ()) != list(PROMOTED_COLUMNS):
        raise EvalSetError(f"{path}: the columns are out of order; the header should read {','.join(PROMOTED_COLUMNS)}")
    keys: set = set()
    for row in reader:
        keys.add(row["candidate_id"])
        keys.add((row["question_id"], row["doc_id"]))
    return text if text.endswith("\n") else text + "\n", keys


def _csv_lines(rows: list[dict[str, Any]], header: bool) -> str:
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=PROMOTED_COLUMNS, lineterminator="\n")
    if header:
        writer.writeheader()
    writer.writerows(rows)
    return out.getvalue()


def _write_atomically(path: Path, text: str) -> None:
    """A reader (an eval, a dbt seed) sees the old file or the new one, never half of it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(handle, "w", encoding="utf-8", newline="") as file:
            file.write(text)
        os.chmod(temporary, 0o644)
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def _timestamp(value: datetime | None) -> str:
    return "" if value is None else value.astimezone(UTC).isoformat(sep=" ", timespec="seconds")


def _short(text: str, width: int = 70) -> str:
    return text if len(text) <= width else text[: width - 1] + "…"
