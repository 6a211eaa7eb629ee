"""Any BEIR dataset through the whole pipeline, scored the way published BEIR and MTEB tables are.

`make eval-beir DATA=path/to/dataset` (corpus.jsonl, queries.jsonl, qrels/<split>.tsv) runs,
in a workspace of its own (default data/beir/<dataset name>, with its own landing zone,
warehouse, index and dbt target dir):

1. land: each corpus record becomes a landing document (front matter + text) under
   landing/docs/beir/, written only when new or changed, so a rerun lands nothing
   and a record removed from the corpus leaves the index; the whole corpus is read and
   checked first, so a bad line or a duplicate id writes nothing;
2. ingest, then `dbt build --select +document_chunks` (tests of models outside that
   selection are skipped: `--indirect-selection cautious`); personal data in the corpus
   is redacted by default (`--pii`), and the report says how many matches were;
3. embed: incrementally, with the quality gate, like `make embed`;
4. evaluate every judged query in every mode at document level, public access, no
   filters, and report nDCG@10, recall@100, MAP@100, P@10 and MRR@10 per mode. As in
   BEIR's evaluation, a retrieved document with the query's own id is not counted.

The text the model sees for a record is its title, a blank line and its text (the
chunker's heading path for a document without headings), the same content MTEB embeds
as title + " " + text. Records longer than the chunk target are cut into several
chunks and a document ranks by its best chunk, where MTEB truncates at 256 tokens.

Example:
    rp eval-beir ../shared/benchmarks/nfcorpus
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import re
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import click
import yaml

from python_jobs.common.errors import ConfigError, PipelineError
from python_jobs.common.output import Summary, progress_bar
from python_jobs.common.settings import ENV_VARS, PROJECT_DIR, EvalSettings, PiiAction, Settings, workspace_env
from python_jobs.common.warehouse import connect
from python_jobs.evaluate import datasets as eval_set
from python_jobs.evaluate.run import EvalOptions, run_eval
from python_jobs.evaluate.summary import EvalSummary, summary_json
from python_jobs.search.filters import Filters

# The columns of published BEIR / MTEB tables, in their order.
BEIR_COLUMNS = (("ndcg", 10), ("recall", 100), ("map", 100), ("precision", 10), ("mrr", 10))
BEIR_KS = (1, 3, 5, 10, 100)
LANDING_SUBDIR = Path("docs") / "beir"
DOC_TYPE = "article"
ACCESS_LEVEL = "public"
# Public corpora carry authors' contact addresses in their abstracts: redact them, do not block the build.
DEFAULT_PII_ACTION: PiiAction = "redact"
_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")
_UPDATED_AT = re.compile(r"^updated_at: '?([0-9TZ:-]+)'?$", re.MULTILINE)


@dataclass(frozen=True)
class BeirWorkspace:
    root: Path

    @property
    def landing(self) -> Path:
        return self.root / "landing"

    @property
    def paths(self) -> dict[str, str]:
        return workspace_env(self.root)


@dataclass
class LandingReport:
    documents: int = 0
    written: int = 0
    unchanged: int = 0
    removed: int = 0
    untitled: int = 0


@dataclass
class PiiReport:
    """What the PII policy did with the corpus (vars.retrieval.pii_policy for its documents)."""

    action: str = DEFAULT_PII_ACTION
    redactions: int = 0  # matches replaced, summed over chunks (one in an overlap counts in both)
    chunks: int = 0  # chunks with at least one
    documents: int = 0


@dataclass
class BeirReport(Summary):
    dataset: str
    data_dir: str
    workspace: str
    split: str
    documents: int = 0
    queries: int = 0
    landing: LandingReport = field(default_factory=LandingReport)
    pii: PiiReport = field(default_factory=PiiReport)
    step_seconds: dict[str, float] = field(default_factory=dict)
    table: dict[str, dict[str, float]] = field(default_factory=dict)  # mode -> "ndcg@10" -> value
    eval: EvalSummary | None = None
    total_seconds: float = 0.0

    def to_text(self) -> str:
        return render(self)

    def to_json(self) -> dict[str, Any]:
        return report_json(self)


def check_corpus(corpus: Path) -> int:
    """Read the whole corpus and check every record (valid JSON, a non-empty `_id`, a string `text`, each id
    once); the number of records. Raises EvalSetError naming the line, before anything is written."""
    first_lines: dict[str, int] = {}
    for line_number, record in eval_set.read_jsonl(corpus):
        doc_id = _record_id(corpus, line_number, record)
        if doc_id in first_lines:
            raise eval_set.EvalSetError(
                f"{corpus}:{line_number}: document id {doc_id!r} appears twice (first on line {first_lines[doc_id]})"
            )
        first_lines[doc_id] = line_number
    if not first_lines:
        raise eval_set.EvalSetError(f"{corpus} has no documents")
    return len(first_lines)


def _record_id(corpus: Path, line_number: int, record: dict) -> str:
    doc_id, text = record.get("_id"), record.get("text")
    if not isinstance(doc_id, str | int) or isinstance(doc_id, bool) or not str(doc_id).strip():
        raise eval_set.EvalSetError(f"{corpus}:{line_number}: a corpus record needs a non-empty `_id`")
    if not isinstance(text, str):
        raise eval_set.EvalSetError(f"{corpus}:{line_number}: a corpus record needs a string `text`")
    return str(doc_id)


def land_corpus(corpus: Path, landing: Path, progress: bool | None = None) -> LandingReport:
    """Write each corpus record as a landing document; leave unchanged ones alone, remove the gone.
    The corpus is checked whole first (`check_corpus`): a bad record fails the run with nothing written."""
    check_corpus(corpus)
    directory = landing / LANDING_SUBDIR
    directory.mkdir(parents=True, exist_ok=True)
    # A record's updated_at is when its content last changed as landing saw it: kept from the
    # landed file while the record is the same, so a rerun lands (and embeds) nothing.
    now = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    report, seen = LandingReport(), set()
    records = progress_bar(progress, eval_set.read_jsonl(corpus), desc="landing corpus", unit="doc")
    for line_number, record in records:
        doc_id, title, text = _record_id(corpus, line_number, record), record.get("title") or "", record["text"]
        path = directory / _file_name(doc_id)
        seen.add(path)
        if not str(title).strip():
            report.untitled += 1
        report.documents += 1
        landed = path.read_text(encoding="utf-8") if path.is_file() else None
        previous = _UPDATED_AT.search(landed) if landed else None
        if previous and landed == _document(doc_id, str(title).strip(), text, previous.group(1)):
            report.unchanged += 1
            continue
        temporary = path.with_suffix(".tmp")
        temporary.write_text(_document(doc_id, str(title).strip(), text, now), encoding="utf-8")
        os.replace(temporary, path)
        report.written += 1
    for stale in directory.glob("*.md"):
        if stale not in seen:
            stale.unlink()
            report.removed += 1
    return report


def _file_name(doc_id: str) -> str:
    """A file name per id: readable, and unique even when ids differ only in unsafe characters."""
    digest = hashlib.sha1(doc_id.encode("utf-8")).hexdigest()[:10]
    return f"{_UNSAFE.sub('_', doc_id)[:80]}-{digest}.md"


def _document(doc_id: str, title: str, text: str, updated_at: str) -> str:
    front_matter = {
        "doc_id": doc_id,
        # The landing contract needs a title; an untitled record is titled by its id.
        "title": title or doc_id,
        "doc_type": DOC_TYPE,
        "access_level": "public",
        "owner": "beir",
        "updated_at": updated_at,
    }
    # Plain text, not markdown: a line starting with '#' must not become a heading.
    body = "\n".join("\\" + line if line.lstrip().startswith("#") else line for line in text.splitlines())
    header = yaml.safe_dump(front_matter, sort_keys=False, allow_unicode=True, width=10_000)
    return f"---\n{header}---\n\n{body.strip()}\n"


def run_step(name: str, argv: list[str], env: dict[str, str], report: BeirReport) -> None:
    """One pipeline step as a subprocess, its output passed to stderr (stdout is the report's);
    a failure names the step."""
    click.echo(f"== {name}", err=True)
    started = time.perf_counter()
    completed = subprocess.run(argv, cwd=PROJECT_DIR, env=env, check=False, stdout=_stderr())
    report.step_seconds[name] = time.perf_counter() - started
    if completed.returncode != 0:
        raise PipelineError(
            f"eval-beir step `{name}` failed with exit code {completed.returncode} (command: {' '.join(argv)}); "
            "its output is above"
        )


def _stderr() -> int | None:
    try:
        return sys.stderr.fileno()
    except (AttributeError, OSError, io.UnsupportedOperation):
        return None  # a captured stderr without a file (in-process tests): output stays on stdout


def dataset_vars(vars_yaml: str | None, pii: PiiAction = DEFAULT_PII_ACTION) -> str:
    """RP_VARS for a dataset's pipeline: `vars_yaml` (YAML vars), with a PII policy of one rule, `pii` for
    every document, unless `vars_yaml` gives vars.retrieval.pii_policy itself."""
    try:
        values = yaml.safe_load(vars_yaml) if vars_yaml else {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"--vars is not valid YAML: {exc}") from None
    if not isinstance(values, dict):
        raise ConfigError(
            f"--vars must be a mapping like '{{retrieval: {{chunk_target_tokens: 128}}}}', got {vars_yaml!r}"
        )
    retrieval = {} if values.get("retrieval") is None else values["retrieval"]
    if isinstance(retrieval, dict) and "pii_policy" not in retrieval:
        retrieval = {**retrieval, "pii_policy": [{"action": pii}]}
    return json.dumps({**values, "retrieval": retrieval}, default=str)  # JSON is YAML


def pii_report(settings: Settings) -> PiiReport:
    """What the PII policy did with the dataset's chunks, from the warehouse dbt just built."""
    with connect(settings.warehouse_path, read_only=True) as con:
        redactions, chunks, documents = con.execute(
            "select coalesce(sum(pii_redactions), 0), count(*) filter (where pii_redactions > 0), "
            "count(distinct doc_id) filter (where pii_redactions > 0) from knowledge.document_chunks"
        ).fetchone()
    action = settings.retrieval.pii_action(DOC_TYPE, ACCESS_LEVEL)
    return PiiReport(action, int(redactions), int(chunks), int(documents))


def eval_beir(
    data: Path,
    workspace: Path | None = None,
    split: str = "test",
    modes: tuple[str, ...] = EvalSettings.MODES,
    vars_yaml: str | None = None,
    progress: bool | None = None,
    first_chunk_only: bool = False,
    pii: PiiAction = DEFAULT_PII_ACTION,
) -> BeirReport:
    clock = time.perf_counter()
    data = data.resolve()
    # A bad dataset or bad vars fail before anything is written: queries and qrels and the vars here, the
    # corpus in land_corpus, which reads it whole before it writes a file.
    evaluation = eval_set.from_beir(data, split)
    pipeline_vars = dataset_vars(vars_yaml, pii)
    if first_chunk_only:
        first = Filters(first_chunk_only=True)
        evaluation.questions = [replace(q, filters=first) for q in evaluation.questions]
    ws = BeirWorkspace((workspace or PROJECT_DIR / "data" / "beir" / data.name).resolve())
    report = BeirReport(evaluation.name, str(data), str(ws.root), split, queries=len(evaluation.questions))
    env = {**os.environ, **ws.paths, "DBT_PROFILES_DIR": str(PROJECT_DIR), "HF_HUB_OFFLINE": "1"}
    env[ENV_VARS] = pipeline_vars  # the jobs read it, and `rp dbt` passes it to dbt merged over vars
    settings = Settings.load(env={k: v for k, v in env.items() if k in (*ws.paths, ENV_VARS)})
    python = sys.executable

    click.echo("== land", err=True)
    started = time.perf_counter()
    report.landing = land_corpus(data / "corpus.jsonl", ws.landing, progress)
    report.documents = report.landing.documents
    report.step_seconds["land"] = time.perf_counter() - started
    click.echo(
        f"landed {report.landing.documents:,} documents: {report.landing.written:,} written, "
        f"{report.landing.unchanged:,} unchanged, {report.landing.removed:,} removed",
        err=True,
    )
    run_step("ingest", [python, "-m", "python_jobs", "ingest"], env, report)
    dbt = [python, "-m", "python_jobs", "dbt", "build", "--select", "+document_chunks"]
    dbt += ["--indirect-selection", "cautious", "--log-path", str(ws.root / "logs"), "--quiet"]
    run_step("dbt build", dbt, env, report)
    report.pii = pii_report(settings)
    click.echo(f"personal data: {_pii_line(report.pii)}", err=True)
    embed = [python, "-m", "python_jobs", "embed"]
    if progress is not None:
        embed.append("--progress" if progress else "--no-progress")
    run_step("embed", embed, env, report)

    click.echo("== evaluate", err=True)
    started = time.perf_counter()
    options = EvalOptions(modes=modes, ks=BEIR_KS, gates=False, ignore_identical_ids=True, progress=progress)
    report.eval = run_eval(settings, evaluation, options)
    report.step_seconds["evaluate"] = time.perf_counter() - started
    report.table = {
        mode: {f"{metric}@{k}": report.eval.aggregate[mode][f"{metric}@{k}"] for metric, k in BEIR_COLUMNS}
        for mode in report.eval.modes
    }
    report.total_seconds = time.perf_counter() - clock
    return report


def render(report: BeirReport) -> str:
    from rich.console import Console
    from rich.table import Table

    # Category names, dataset names and paths are data: shown as text, never as markup or emoji codes.
    console = Console(width=120, file=io.StringIO(), markup=False, emoji=False, highlight=False)
    summary = report.eval
    console.print(
        f"{report.dataset} ({report.split}): {summary.questions_evaluated} queries, {report.documents:,} documents; "
        f"index {summary.index_table} v{summary.index_version}, model {summary.model.get('name')}"
    )
    table = Table()
    table.add_column("mode")
    names = {"ndcg": "nDCG", "recall": "Recall", "map": "MAP", "precision": "P", "mrr": "MRR"}
    for metric, k in BEIR_COLUMNS:
        table.add_column(f"{names[metric]}@{k}", justify="right")
    for mode, values in report.table.items():
        table.add_row(mode, *(f"{values[f'{m}@{k}']:.4f}" for m, k in BEIR_COLUMNS))
    console.print(table)
    console.print(f"personal data: {_pii_line(report.pii)}", markup=False, highlight=False)
    steps = ", ".join(f"{name} {seconds:.1f}s" for name, seconds in report.step_seconds.items())
    console.print(f"wall time {report.total_seconds:.1f}s ({steps}); workspace {report.workspace}")
    return console.file.getvalue().rstrip()


def _pii_line(pii: PiiReport) -> str:
    if pii.action != "redact":
        return f"{pii.action} (vars.retrieval.pii_policy), nothing redacted"
    line = (
        f"redact: {_count(pii.redactions, 'match', 'matches')} redacted in {_count(pii.chunks, 'chunk')} of "
        f"{_count(pii.documents, 'document')}"
    )
    return line + " (one in the overlap of two chunks counts in both)" if pii.chunks > 1 else line


def _count(n: int, one: str, many: str | None = None) -> str:
    return f"{n:,} {one if n == 1 else many or one + 's'}"


def report_json(report: BeirReport) -> dict[str, Any]:
    data = asdict(report)
    data["eval"] = summary_json(report.eval) if report.eval else None
    return data
