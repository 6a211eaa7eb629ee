"""Evaluation sets: questions (who asks, with which filters) and their relevance judgments.

Three sources, one shape:
- the dbt seeds `eval_questions` and `eval_judgments`, read from the warehouse, so the set
  evaluated is the one dbt built and tested (the default); with them, the judgments promoted from
  users' feedback (`rp eval promote-feedback`, vars.eval.feedback_judgments_path), read from their
  file so a promotion counts at the next run, under the category `feedback`;
- two CSV files in the seeds' layout (`--questions` / `--judgments`), for a team's own set;
- a BEIR directory (`queries.jsonl`, `qrels/<split>.tsv`), for public benchmarks.
Every bad row is reported with its file (or table) and line.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from python_jobs.common.errors import ExitCode, PipelineError
from python_jobs.search.filters import DEFAULT_ACCESS_LEVELS, FilterError, Filters, access_levels_up_to

QUESTION_COLUMNS = ("question_id", "question", "category", "asker_access_level")
FILTER_COLUMNS = {"filter_doc_type": "doc_type", "filter_product_sku": "product_sku", "filter_category": "category"}
JUDGMENT_COLUMNS = ("question_id", "doc_id", "relevance")
# A promoted judgment carries its question: one row per question and document (evaluate/feedback.py).
FEEDBACK_COLUMNS = ("question_id", "question", "asker_access_level", "doc_id", "relevance")
FEEDBACK_CATEGORY = "feedback"


class EvalSetError(PipelineError):
    """The evaluation set cannot be read; the message names the file or table and the row."""

    exit_code = ExitCode.USAGE


@dataclass(frozen=True)
class Question:
    question_id: str
    text: str
    category: str = "all"
    access_levels: tuple[str, ...] = DEFAULT_ACCESS_LEVELS
    filters: Filters = field(default_factory=Filters)
    needs: str | None = None


@dataclass
class EvalSet:
    name: str  # the dataset: "sample" for the seeds, the directory name for BEIR
    source: str  # where it was read, for messages and the run ledger
    questions: list[Question]
    qrels: dict[str, dict[str, int]]

    @property
    def categories(self) -> list[str]:
        return sorted({q.category for q in self.questions})


def from_warehouse(con, name: str = "sample") -> EvalSet:
    """The seeds as dbt loaded them (`dbt build` or `dbt seed`)."""
    relations = {}
    for table in ("eval_questions", "eval_judgments"):
        schemas = [
            row[0]
            for row in con.execute(
                "select table_schema from information_schema.tables where table_name = ? "
                "order by table_schema = 'main' desc, table_schema",
                [table],
            ).fetchall()
        ]
        if not schemas:
            raise EvalSetError(f"the seed {table} is not in the warehouse: run `make build` (or `dbt seed`) first")
        relations[table] = f'"{schemas[0]}"."{table}"'
    questions = _rows(con, f"select * from {relations['eval_questions']} order by question_id")
    judgments = _rows(con, f"select * from {relations['eval_judgments']}")
    return EvalSet(
        name,
        f"warehouse seeds {relations['eval_questions']}, {relations['eval_judgments']}",
        _questions(questions, relations["eval_questions"]),
        _qrels(judgments, relations["eval_judgments"]),
    )


def from_csv(questions_path: Path, judgments_path: Path, name: str | None = None) -> EvalSet:
    """Two CSV files with the seeds' columns (extra columns are ignored)."""
    return EvalSet(
        name or questions_path.stem,
        f"{questions_path}, {judgments_path}",
        _questions(_csv_rows(questions_path, QUESTION_COLUMNS), str(questions_path)),
        _qrels(_csv_rows(judgments_path, JUDGMENT_COLUMNS), str(judgments_path)),
    )


def with_feedback(evaluation: EvalSet, path: Path) -> EvalSet:
    """`evaluation` plus the judgments promoted from feedback in `path` (none if the file does not exist),
    their questions asked as the category `feedback`."""
    if not path.is_file():
        return evaluation
    rows = _csv_rows(path, FEEDBACK_COLUMNS)
    if not rows:
        return evaluation
    first_rows: dict[str, tuple[str, dict]] = {}  # a question per question_id, from its first row
    for line, row in rows:
        question_id = _text(row.get("question_id")) or f"row {line}"  # no id: _questions names the row
        first_line, first = first_rows.setdefault(question_id, (line, row))
        if _text(first.get("question")) != _text(row.get("question")):
            raise EvalSetError(f"{path} row {line}: {question_id} reads differently on row {first_line}")
    asked = _questions([(line, {**row, "category": FEEDBACK_CATEGORY}) for line, row in first_rows.values()], str(path))
    clashes = {q.question_id for q in asked} & {q.question_id for q in evaluation.questions}
    if clashes:
        raise EvalSetError(f"{path}: question_id {sorted(clashes)[0]!r} is also a seeded question")
    qrels = {**evaluation.qrels, **_qrels(rows, str(path))}
    source = f"{evaluation.source}; {len(rows)} promoted feedback judgments from {path}"
    return EvalSet(evaluation.name, source, [*evaluation.questions, *asked], qrels)


def from_beir(directory: Path, split: str = "test") -> EvalSet:
    """BEIR layout: the queries judged in qrels/<split>.tsv, all asked with public access and no filter."""
    qrels_path = directory / "qrels" / f"{split}.tsv"
    queries_path = directory / "queries.jsonl"
    qrels = _qrels(_tsv_rows(qrels_path), str(qrels_path), allow_zero=True)
    texts: dict[str, str] = {}
    for line_number, record in read_jsonl(queries_path):
        query_id, text = record.get("_id"), record.get("text")
        if not isinstance(query_id, str | int) or not isinstance(text, str) or not text.strip():
            raise EvalSetError(f"{queries_path}:{line_number}: a query needs a string `_id` and a non-empty `text`")
        texts[str(query_id)] = text
    missing = [query_id for query_id in qrels if query_id not in texts]
    if missing:
        raise EvalSetError(
            f"{qrels_path}: {len(missing)} judged queries are not in {queries_path}, e.g. {missing[0]!r}"
        )
    questions = [Question(query_id, texts[query_id]) for query_id in qrels]
    return EvalSet(directory.name, str(directory), questions, qrels)


# --- rows to questions and judgments -----------------------------------------------------------


def _questions(rows: Iterable[tuple[str, Mapping[str, str | None]]], where: str) -> list[Question]:
    questions: dict[str, Question] = {}
    for line, row in rows:
        question_id, text = _text(row.get("question_id")), _text(row.get("question"))
        if not question_id or not text:
            raise EvalSetError(f"{where} row {line}: question_id and question must not be empty")
        if question_id in questions:
            raise EvalSetError(f"{where} row {line}: question_id {question_id!r} appears twice")
        try:
            levels = access_levels_up_to(_text(row.get("asker_access_level")) or DEFAULT_ACCESS_LEVELS[-1])
            filters = Filters.of(**{name: _text(row.get(column)) for column, name in FILTER_COLUMNS.items()})
        except FilterError as exc:
            raise EvalSetError(f"{where} row {line} ({question_id}): {exc}") from None
        category = _text(row.get("category")) or "uncategorized"
        questions[question_id] = Question(question_id, text, category, levels, filters, _text(row.get("needs")))
    if not questions:
        raise EvalSetError(f"{where} has no questions")
    return list(questions.values())


def _qrels(rows: Iterable[tuple[str, Mapping[str, str | None]]], where: str, allow_zero: bool = False):
    qrels: dict[str, dict[str, int]] = {}
    for line, row in rows:
        question_id, doc_id = _text(row.get("question_id")), _text(row.get("doc_id"))
        try:
            relevance = int(str(row.get("relevance")).strip())
        except ValueError:
            relevance = None
        if not question_id or not doc_id or relevance is None or relevance < (0 if allow_zero else 1):
            raise EvalSetError(
                f"{where} row {line}: a judgment needs question_id, doc_id and an integer relevance of at least "
                f"{0 if allow_zero else 1}, got {dict(row)}"
            )
        judged = qrels.setdefault(question_id, {})
        if doc_id in judged:
            raise EvalSetError(f"{where} row {line}: {question_id} judges {doc_id} twice")
        judged[doc_id] = relevance
    if not qrels:
        raise EvalSetError(f"{where} has no judgments: every metric would be undefined (NaN)")
    return qrels


def _text(value) -> str | None:
    if value is None:
        return None
    text = str(value).strip()
    return text or None


def _rows(con, sql: str) -> list[tuple[str, dict]]:
    cursor = con.execute(sql)
    names = [column[0] for column in cursor.description]
    return [(str(i), dict(zip(names, values, strict=True))) for i, values in enumerate(cursor.fetchall(), start=1)]


def _csv_rows(path: Path, required: tuple[str, ...]) -> list[tuple[str, dict]]:
    try:
        with path.open(encoding="utf-8-sig", newline="") as handle:
            reader = csv.DictReader(handle)
            missing = [column for column in required if column not in (reader.fieldnames or ())]
            if missing:
                raise EvalSetError(f"{path}: the header lacks column(s) {', '.join(missing)}")
            # Line numbers count the header as line 1, as an editor shows them.
            return [(str(reader.line_num), row) for row in reader]
    except FileNotFoundError:
        raise EvalSetError(f"{path} not found") from None
    except (UnicodeDecodeError, csv.Error) as exc:
        raise EvalSetError(f"{path} is not a readable UTF-8 CSV file: {exc}") from None


def _tsv_rows(path: Path) -> list[tuple[str, dict]]:
    """BEIR qrels: `query-id  corpus-id  score`, with a header line."""
    rows = []
    try:
        with path.open(encoding="utf-8") as handle:
            for line_number, line in enumerate(handle, start=1):
                fields = line.rstrip("\n").split("\t")
                if line_number == 1 and fields[0] in ("query-id", "query_id", "qid"):
                    continue
                if not line.strip():
                    continue
                if len(fields) != 3:
                    raise EvalSetError(f"{path}:{line_number}: expected 3 tab-separated fields, got {len(fields)}")
                rows.append((str(line_number), dict(zip(JUDGMENT_COLUMNS, fields, strict=True))))
    except FileNotFoundError:
        raise EvalSetError(f"{path} not found: a BEIR dataset has qrels/<split>.tsv") from None
    except UnicodeDecodeError as exc:
        raise EvalSetError(f"{path} is not UTF-8: {exc}") from None
    return rows


def read_jsonl(path: Path) -> Iterable[tuple[int, dict]]:
    """(line number, object) for each non-blank line; a bad line is an error naming it."""
    try:
        with path.open(encoding="utf-8") as handle:
            for line_number, line in enumerate(handle, start=1):
                if not line.strip():
                    continue
                try:
                    record = json.loads(line)
                except json.JSONDecodeError as exc:
                    raise EvalSetError(f"{path}:{line_number}: not valid JSON ({exc.msg})") from None
                if not isinstance(record, dict):
                    raise EvalSetError(f"{path}:{line_number}: expected a JSON object")
                yield line_number, record
    except FileNotFoundError:
        raise EvalSetError(f"{path} not found") from None
    except UnicodeDecodeError as exc:
        raise EvalSetError(f"{path} is not UTF-8: {exc}") from None
