"""Benchmark the edit workload: what each kind of change costs the index, next to the ideal.

A workload of multi-section markdown documents (500 by default) is generated from NFCorpus abstracts
(`../shared/benchmarks/nfcorpus/corpus.jsonl`): each document is a run of consecutive abstracts, one
`##` section per abstract, under the first abstract's title. Then, with the real pipeline (`rp ingest`,
`rp dbt build --select +document_chunks`, `rp embed`) and the real model, in a workspace of its own:

    initial      every document landed, built and embedded
    no-op        the same pipeline again, nothing changed
    insert       a new paragraph at the top of the first section of 1% of the documents
    metadata     another owner in the front matter of 1% (text unchanged)
    delete       1% of the documents removed
    footer       the same 81-word footer under a `## Legal` heading added to every document left

For each step it prints the texts the model embedded and the index rows the run wrote (the rows of the
published table stamped with the run's id, and the plan's count of them), the rows it deleted, and the
chunks that really changed: chunks of `document_chunks` whose document, embedding text and metadata
were not there before (positions and ids left out), next to the ideal number of texts embedded (the
documents edited for an insert, one for the shared footer, none for the rest). Rows written should be
about the chunks changed. Figures are printed, never asserted; `--json` prints them for machines.

Example:
    python bench/bench_edits.py --docs 100
    make bench-edits ARGS="--docs 100 --json"
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import click
import duckdb
import yaml

REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_CORPUS = REPO_ROOT.parent / "shared" / "benchmarks" / "nfcorpus" / "corpus.jsonl"
SUBDIR = Path("docs") / "edits"
UPDATED_AT = "2026-01-05T09:00:00Z"
FOOTER_HEADING = "Legal"
FOOTER = (
    "This summary is provided for general information only and does not constitute medical advice. "
    "Always consult a qualified health professional before changing your diet, medication or treatment. "
    "The abstracts reproduced here remain the work of their authors and publishers, who retain all rights. "
    "Quotation for research and teaching is permitted with attribution. To report an error, request a "
    "correction or ask about reuse, write to the editorial office, quoting the identifier shown "
    "at the top of this page, within thirty days."
)
assert len(FOOTER.split()) == 81, len(FOOTER.split())
# What makes a chunk the same chunk for the "changed" count: its document, the text the model sees and
# the metadata copied onto it; not its id or its position in the document.
CHUNK_IDENTITY = (
    "doc_id, content_hash, doc_title, doc_type, product_sku, category, access_level, owner, source_updated_at"
)


@dataclass
class StepFigures:
    step: str
    documents_changed: int
    ideal_texts: int
    texts_embedded: int
    rows_written: int  # rows of the published table stamped with this run's id
    rows_planned: int  # the plan's new + text_changed + metadata_changed (+ duplicates)
    rows_deleted: int
    chunks_changed: int  # chunks new in content or metadata
    chunks_gone: int  # chunks no longer there in content or metadata
    chunks_total: int
    counts: dict[str, int] = field(default_factory=dict)
    seconds: dict[str, float] = field(default_factory=dict)


@dataclass
class Workload:
    """The documents of the workload, each a list of (heading, text) sections, and the spare abstracts that
    inserted paragraphs come from."""

    documents: dict[str, dict]
    spare: list[str]

    @classmethod
    def from_corpus(cls, corpus: Path, docs: int, sections: int) -> Workload:
        records = []
        with corpus.open(encoding="utf-8") as lines:
            for line in lines:
                record = json.loads(line)
                title, text = " ".join(str(record.get("title") or "").split()), " ".join(record["text"].split())
                if title and len(text.split()) >= 40:
                    records.append((title, text))
        needed = docs * sections + docs
        if len(records) < needed:
            raise click.ClickException(f"{corpus} has {len(records):,} usable abstracts; {needed:,} are needed")
        documents = {}
        for n in range(docs):
            chunk = records[n * sections : (n + 1) * sections]
            documents[f"edits-{n:04d}"] = {
                "title": chunk[0][0],
                "owner": "research-library",
                "sections": [list(section) for section in chunk],
            }
        spare = [text for _, text in records[docs * sections : docs * sections + docs]]
        return cls(documents, spare)

    def write(self, landing: Path) -> None:
        directory = landing / SUBDIR
        directory.mkdir(parents=True, exist_ok=True)
        wanted = {f"{doc_id}.md" for doc_id in self.documents}
        for path in directory.glob("*.md"):
            if path.name not in wanted:
                path.unlink()
        for doc_id, document in self.documents.items():
            path = directory / f"{doc_id}.md"
            text = render(doc_id, document)
            if not path.is_file() or path.read_text(encoding="utf-8") != text:
                path.write_text(text, encoding="utf-8")


def render(doc_id: str, document: dict) -> str:
    front = {
        "doc_id": doc_id,
        "title": document["title"],
        "doc_type": "article",
        "owner": document["owner"],
        "access_level": "public",
        "updated_at": UPDATED_AT,
    }
    header = yaml.safe_dump(front, sort_keys=False, allow_unicode=True, width=10_000)
    body = "\n\n".join(f"## {heading}\n\n{text}" for heading, text in document["sections"])
    return f"---\n{header}---\n\n{body}\n"


def first_sentences(text: str, words: int = 45) -> str:
    """About `words` words of `text`, ending at a sentence end where there is one."""
    cut = " ".join(text.split()[:words])
    end = cut.rfind(". ")
    return cut[: end + 1] if end > len(cut) // 2 else cut


class Pipeline:
    """The real jobs (`python -m python_jobs ...`) in a workspace of their own."""

    def __init__(self, root: Path):
        from python_jobs.common.settings import ENV_VARS, workspace_env
        from python_jobs.evaluate.beir import dataset_vars

        self.root = root
        self.paths = workspace_env(root)
        self.env = {
            **os.environ,
            **self.paths,
            "DBT_PROFILES_DIR": str(REPO_ROOT),
            "HF_HUB_OFFLINE": "1",
            # Public abstracts carry authors' e-mail addresses: redacted, as `make eval-beir` does.
            ENV_VARS: dataset_vars(None),
        }

    @property
    def landing(self) -> Path:
        return Path(self.paths["RP_LANDING_DIR"])

    @property
    def warehouse(self) -> Path:
        return Path(self.paths["RP_DUCKDB_PATH"])

    @property
    def index(self) -> Path:
        return Path(self.paths["RP_INDEX_DIR"])

    def job(self, *args: str) -> str:
        completed = subprocess.run(
            [sys.executable, "-m", "python_jobs", *args], cwd=REPO_ROOT, env=self.env, capture_output=True, text=True
        )
        if completed.returncode != 0:
            raise click.ClickException(
                f"rp {' '.join(args)} failed (exit {completed.returncode}):\n{completed.stdout[-3000:]}\n"
                f"{completed.stderr[-3000:]}"
            )
        return completed.stdout

    def run(self) -> tuple[dict, dict[str, float]]:
        """Ingest, build the document chain, embed: the embedding run's summary and each step's seconds."""
        seconds = {}
        started = time.perf_counter()
        self.job("ingest", "--json")
        seconds["ingest"] = time.perf_counter() - started
        started = time.perf_counter()
        dbt = ("dbt", "build", "--select", "+document_chunks", "--indirect-selection", "cautious", "--quiet")
        self.job(*dbt, "--log-path", str(self.root / "logs"))
        seconds["build"] = time.perf_counter() - started
        started = time.perf_counter()
        summary = json.loads(self.job("embed", "--json", "--no-progress").strip().splitlines()[-1])
        seconds["embed"] = time.perf_counter() - started
        return summary, {name: round(value, 1) for name, value in seconds.items()}

    def chunk_identities(self) -> dict[tuple, int]:
        """Every chunk of document_chunks by its identity (CHUNK_IDENTITY), counted."""
        with duckdb.connect(str(self.warehouse), read_only=True) as con:
            rows = con.execute(
                f"select {CHUNK_IDENTITY}, count(*) from knowledge.document_chunks group by all"
            ).fetchall()
        return {tuple(row[:-1]): row[-1] for row in rows}

    def rows_written_by(self, run_id: str) -> int:
        """Rows of the published index table that this run wrote (each written row carries the run's id)."""
        from python_jobs.common.sqltext import sql_string
        from python_jobs.index.store import VectorIndex

        table = VectorIndex(self.index).open_live()
        return table.count_rows(f"run_id = {sql_string(run_id)}")


def difference(after: dict[tuple, int], before: dict[tuple, int]) -> int:
    return sum(max(0, count - before.get(key, 0)) for key, count in after.items())


def measure(pipeline: Pipeline, step: str, changed: int, ideal: int, before: dict[tuple, int]) -> StepFigures:
    click.echo(f"== {step}", err=True)
    summary, seconds = pipeline.run()
    after = pipeline.chunk_identities()
    counts = summary.get("counts", {})
    planned = sum(counts.get(name, 0) for name in ("new", "text_changed", "metadata_changed"))
    figures = StepFigures(
        step=step,
        documents_changed=changed,
        ideal_texts=ideal,
        texts_embedded=summary["texts_embedded"],
        rows_written=pipeline.rows_written_by(summary["run_id"]),
        rows_planned=planned + summary.get("duplicates_removed", 0),
        rows_deleted=counts.get("deleted", 0),
        chunks_changed=difference(after, before),
        chunks_gone=difference(before, after),
        chunks_total=summary["chunks_total"],
        counts=counts,
        seconds=seconds,
    )
    click.echo(
        f"   texts embedded {figures.texts_embedded:,} (ideal {ideal:,}), rows written {figures.rows_written:,}, "
        f"deleted {figures.rows_deleted:,}; chunks changed {figures.chunks_changed:,}, gone {figures.chunks_gone:,} "
        f"({', '.join(f'{k} {v:.0f} s' for k, v in seconds.items())})",
        err=True,
    )
    return figures


def run_workload(pipeline: Pipeline, workload: Workload, share: float) -> list[StepFigures]:
    documents = workload.documents
    some = max(1, round(len(documents) * share))
    ids = sorted(documents)
    # Disjoint sets of documents for each edit, spread over the workload.
    stride = max(1, len(ids) // (3 * some))
    picked = ids[::stride]
    inserted, relabelled, deleted = picked[:some], picked[some : 2 * some], picked[2 * some : 3 * some]

    steps = []
    workload.write(pipeline.landing)
    state = {}
    steps.append(measure(pipeline, "initial", len(documents), -1, state))
    state = pipeline.chunk_identities()
    steps[0].ideal_texts = len({key[1] for key in state})  # every distinct text, once

    steps.append(measure(pipeline, "no-op", 0, 0, state))
    state = pipeline.chunk_identities()

    for n, doc_id in enumerate(inserted):
        heading, text = documents[doc_id]["sections"][0]
        documents[doc_id]["sections"][0] = [heading, first_sentences(workload.spare[n]) + "\n\n" + text]
    workload.write(pipeline.landing)
    steps.append(measure(pipeline, "insert", len(inserted), len(inserted), state))
    state = pipeline.chunk_identities()

    for doc_id in relabelled:
        documents[doc_id]["owner"] = "nutrition-desk"
    workload.write(pipeline.landing)
    steps.append(measure(pipeline, "metadata", len(relabelled), 0, state))
    state = pipeline.chunk_identities()

    for doc_id in deleted:
        del documents[doc_id]
    workload.write(pipeline.landing)
    steps.append(measure(pipeline, "delete", len(deleted), 0, state))
    state = pipeline.chunk_identities()

    for document in documents.values():
        document["sections"].append([FOOTER_HEADING, FOOTER])
    workload.write(pipeline.landing)
    steps.append(measure(pipeline, "footer", len(documents), 1, state))
    return steps


def render_table(steps: list[StepFigures]) -> str:
    header = (
        f"{'step':<10} {'docs':>6} {'texts embedded':>15} {'ideal':>6} {'rows written':>13} "
        f"{'chunks changed':>15} {'rows deleted':>13} {'chunks gone':>12}"
    )
    lines = [header, "-" * len(header)]
    for s in steps:
        lines.append(
            f"{s.step:<10} {s.documents_changed:>6,} {s.texts_embedded:>15,} {s.ideal_texts:>6,} "
            f"{s.rows_written:>13,} {s.chunks_changed:>15,} {s.rows_deleted:>13,} {s.chunks_gone:>12,}"
        )
    return "\n".join(lines)


@click.command()
@click.option("--docs", type=click.IntRange(10, 1000), default=500, show_default=True, help="Documents.")
@click.option("--sections", type=click.IntRange(1, 6), default=3, show_default=True, help="Abstracts per document.")
@click.option("--share", type=click.FloatRange(0.001, 0.3), default=0.01, show_default=True, help="Share edited.")
@click.option(
    "--corpus",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    default=DEFAULT_CORPUS,
    show_default=True,
    help="A BEIR corpus.jsonl (titles and abstracts).",
)
@click.option(
    "--workdir", type=click.Path(path_type=Path), default=None, help="Workspace (default: a temp dir, removed)."
)
@click.option("--json", "as_json", is_flag=True, help="Print the figures as JSON.")
def main(docs: int, sections: int, share: float, corpus: Path, workdir: Path | None, as_json: bool) -> None:
    """Run the edit workload through the real pipeline and print what each step cost."""
    workload = Workload.from_corpus(corpus, docs, sections)
    scratch = workdir is None
    root = Path(tempfile.mkdtemp(prefix="bench-edits-")) if scratch else workdir.resolve()
    if not scratch:
        shutil.rmtree(root, ignore_errors=True)
    click.echo(f"edit workload: {docs:,} documents of {sections} sections from {corpus}, in {root}", err=True)
    started = time.perf_counter()
    try:
        steps = run_workload(Pipeline(root), workload, share)
    finally:
        if scratch:
            shutil.rmtree(root, ignore_errors=True)
    figures = {
        "documents": docs,
        "sections_per_document": sections,
        "corpus": str(corpus),
        "total_seconds": round(time.perf_counter() - started, 1),
        "steps": [asdict(s) for s in steps],
    }
    if as_json:
        click.echo(json.dumps(figures))
        return
    click.echo(render_table(steps))
    click.echo(f"\ntotal {figures['total_seconds']:,} s")


if __name__ == "__main__":
    main()
