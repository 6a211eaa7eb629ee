"""The landing zone: which files belong to which raw table, and how each format is read.

Readers turn one file into raw rows (every value kept as text, so a bad value is the
staging layer's to judge, never silently coerced here) plus quarantine records for the
records that cannot be read. A file that cannot be read at all raises LandingFileError
naming the file; the ingest job then publishes nothing from that run.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import yaml

from python_jobs.common.errors import LandingFileError

try:  # libyaml is ~10x faster on 100k front-matter blocks
    from yaml import CSafeLoader as _BaseLoader
except ImportError:  # pragma: no cover - pyyaml wheels ship libyaml
    from yaml import SafeLoader as _BaseLoader


class YamlLoader(_BaseLoader):
    """YAML's safe loader, except that a key repeated in one mapping is an error, not "the last one wins".

    `access_level: confidential` followed by `access_level: public` must not publish a document.
    """

    def construct_mapping(self, node, deep=False):
        seen: dict = {}
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=True)
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    None,
                    None,
                    f"key {key!r} appears twice (lines {seen[key] + 2} and {key_node.start_mark.line + 2}): "
                    "which value is meant is ambiguous",
                    key_node.start_mark,
                )
            seen[key] = key_node.start_mark.line
        return super().construct_mapping(node, deep)


def _unique_object(pairs: list[tuple[str, object]]) -> dict:
    """A JSON object hook that refuses a key given twice (json.loads would keep the last silently)."""
    record = {}
    for key, value in pairs:
        if key in record:
            raise DuplicateKeyError(key)
        record[key] = value
    return record


class DuplicateKeyError(ValueError):
    def __init__(self, key: str):
        super().__init__(key)
        self.key = key


@dataclass(frozen=True)
class LandingSource:
    """One raw table and the landing files that feed it."""

    table: str  # raw table name, <source>_<entity>s
    pattern: str  # glob relative to the landing directory
    format: Literal["csv", "jsonl", "markdown"]
    columns: tuple[str, ...]


SOURCES: tuple[LandingSource, ...] = (
    LandingSource(
        "shop_customers",
        "shop/customers*.csv",
        "csv",
        (
            "customer_id",
            "first_name",
            "last_name",
            "email",
            "phone",
            "city",
            "state",
            "country_code",
            "segment",
            "signup_date",
            "updated_at",
        ),
    ),
    LandingSource(
        "shop_products",
        "shop/products*.jsonl",
        "jsonl",
        (
            "sku",
            "name",
            "brand",
            "category",
            "subcategory",
            "list_price",
            "currency",
            "status",
            "launched_on",
            "updated_at",
        ),
    ),
    LandingSource(
        "shop_transactions",
        "shop/transactions/*.csv",
        "csv",
        (
            "transaction_id",
            "customer_id",
            "product_sku",
            "quantity",
            "unit_price",
            "discount",
            "amount",
            "currency",
            "status",
            "channel",
            "ordered_at",
            "updated_at",
        ),
    ),
    LandingSource(
        "docs_documents",
        "docs/**/*.md",
        "markdown",
        ("doc_id", "title", "doc_type", "product_sku", "owner", "access_level", "updated_at", "front_matter", "body"),
    ),
)

REQUIRED_FRONT_MATTER = ("doc_id", "title", "doc_type", "access_level", "updated_at")


@dataclass
class Quarantined:
    line: int
    reason: str
    raw_record: str


@dataclass
class ParsedFile:
    """Rows (value lists per column, with their line numbers) and quarantined records."""

    rows: list[tuple[int, list[str | None]]] = field(default_factory=list)
    quarantined: list[Quarantined] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    lines: int | None = None  # data lines of a CSV file (after the header), for the accounting check


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def decode(path: Path, data: bytes, encoding: str, display: str) -> str:
    """Decode a whole file, naming the file, line and byte on failure (as sqlite-utils does)."""
    try:
        text = data.decode("utf-8-sig" if encoding.lower().replace("_", "-") in ("utf-8", "utf8") else encoding)
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        raise LandingFileError(
            f"{display}: not valid {encoding} (byte 0x{data[exc.start]:02x} at offset {exc.start}, "
            f"line {line}). Re-export the file as UTF-8, or if every landing file uses another "
            'encoding, run the ingest with --encoding (for example `make ingest ARGS="--encoding latin-1"`).'
        ) from None
    except LookupError:
        raise LandingFileError(f"unknown encoding {encoding!r} (from --encoding or vars.ingest.encoding)") from None
    if "\x00" in text:
        raise LandingFileError(f"{display}: contains NUL bytes; it looks like a binary file, not {path.suffix[1:]}")
    return text


def read_csv(text: str, source: LandingSource, display: str) -> ParsedFile:
    """Rows of a CSV file. Every line after the header ends up in exactly one place: a loaded row,
    a quarantined record, or a blank line; `ParsedFile.lines` says how many there were."""
    if not text.strip():
        raise LandingFileError(
            f"{display}: the file is empty (no header row). An export that lost its contents must "
            "not replace the last good load: restore the file or delete it to remove its rows."
        )
    lines = text.split("\n")
    if lines and lines[-1] == "":
        lines.pop()  # the newline that ends the last line
    reader = csv.reader(io.StringIO(text, newline=""), strict=True)
    try:
        header = [name.strip() for name in next(reader)]
    except csv.Error as exc:
        raise LandingFileError(f"{display}: the header row cannot be parsed as CSV ({exc})") from None
    missing = [c for c in source.columns if c not in header]
    if missing:
        raise LandingFileError(
            f"{display}: header lacks column(s) {', '.join(missing)}; expected {', '.join(source.columns)}"
        )
    parsed = ParsedFile(lines=len(lines) - reader.line_num)
    repeated = sorted({c for c in header if header.count(c) > 1 and c in source.columns})
    extra = [c for c in dict.fromkeys(header) if c not in source.columns]
    if extra:
        parsed.warnings.append(f"{display}: ignored unknown column(s) {', '.join(extra)}")
    positions = [header.index(c) for c in source.columns]
    previous_end = reader.line_num
    while True:
        start = previous_end + 1
        try:
            record = next(reader)
        except StopIteration:
            break
        except csv.Error as exc:
            end = reader.line_num
            _quarantine_span(parsed, lines, start, end, f"malformed CSV: {exc}", header, positions)
            previous_end = end
            continue
        previous_end = reader.line_num
        if not record or (len(record) == 1 and not record[0].strip()):
            continue  # blank line
        if repeated:
            columns = ", ".join(f"{c} (fields {_fields(header, c)})" for c in repeated)
            reason = f"the header repeats column(s) {columns}: which one is meant is ambiguous"
            parsed.quarantined.append(Quarantined(start, reason, "\n".join(lines[start - 1 : previous_end])))
            continue
        if len(record) != len(header):
            reason = f"expected {len(header)} fields, found {len(record)}"
            _quarantine_span(parsed, lines, start, previous_end, reason, header, positions)
            continue
        parsed.rows.append((start, [_blank_to_none(record[i]) for i in positions]))
    return parsed


def _quarantine_span(
    parsed: ParsedFile, lines: list[str], start: int, end: int, reason: str, header, positions
) -> None:
    """Quarantine a bad record; when it spans several lines (a stray quote swallows the lines after it),
    quarantine only its first line and read the others again one by one, so one stray quote cannot drop
    the good records behind it."""
    if end <= start:
        parsed.quarantined.append(Quarantined(start, reason, lines[start - 1] if start <= len(lines) else ""))
        return
    parsed.quarantined.append(
        Quarantined(
            start,
            f"{reason} (an unbalanced quote joins lines {start}-{end}; the others are read alone)",
            lines[start - 1],
        )
    )
    for number in range(start + 1, end + 1):
        line = lines[number - 1] if number <= len(lines) else ""
        if not line.strip():
            continue
        try:
            fields = next(csv.reader([line], strict=True))
        except (csv.Error, StopIteration) as exc:
            parsed.quarantined.append(Quarantined(number, f"malformed CSV: {exc}", line))
            continue
        if len(fields) != len(header):
            parsed.quarantined.append(Quarantined(number, f"expected {len(header)} fields, found {len(fields)}", line))
            continue
        parsed.rows.append((number, [_blank_to_none(fields[i]) for i in positions]))


def _fields(header: list[str], column: str) -> str:
    return " and ".join(str(i + 1) for i, name in enumerate(header) if name == column)


def read_jsonl(text: str, source: LandingSource, display: str) -> ParsedFile:
    parsed = ParsedFile()
    if not text.strip():
        raise LandingFileError(f"{display}: the file is empty. Restore it, or delete it to remove its rows.")
    for number, line in enumerate(text.split("\n"), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line, object_pairs_hook=_unique_object)
        except json.JSONDecodeError as exc:
            parsed.quarantined.append(Quarantined(number, f"invalid JSON: {exc.msg} at column {exc.colno}", line))
            continue
        except DuplicateKeyError as exc:
            parsed.quarantined.append(
                Quarantined(number, f"key {exc.key!r} appears twice: which value is meant is ambiguous", line)
            )
            continue
        if not isinstance(record, dict):
            parsed.quarantined.append(
                Quarantined(number, f"expected a JSON object, found {type(record).__name__}", line)
            )
            continue
        parsed.rows.append((number, [_to_text(record.get(c)) for c in source.columns]))
    return parsed


def read_markdown(text: str, source: LandingSource, display: str, max_bytes: int) -> ParsedFile:
    """One document per file: YAML front matter between `---` lines, then the body."""
    parsed = ParsedFile()
    size = len(text.encode("utf-8"))
    if size > max_bytes:
        parsed.quarantined.append(
            Quarantined(
                1,
                f"document is {size:,} bytes, above the {max_bytes:,}-byte limit (vars.ingest.max_document_bytes)",
                text[:500],
            )
        )
        return parsed
    if not text.strip():
        parsed.quarantined.append(Quarantined(1, "empty document", ""))
        return parsed
    lines = text.split("\n")
    if lines[0].strip() != "---":
        parsed.quarantined.append(
            Quarantined(1, "no front matter: a document must start with a `---` line", text[:500])
        )
        return parsed
    try:
        closing = next(i for i in range(1, len(lines)) if lines[i].strip() == "---")
    except StopIteration:
        parsed.quarantined.append(Quarantined(1, "front matter is not closed by a `---` line", text[:500]))
        return parsed
    front_text = "\n".join(lines[1:closing])
    try:
        front = yaml.load(front_text, Loader=YamlLoader) or {}
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = mark.line + 2 if mark is not None else 1
        problem = getattr(exc, "problem", None) or str(exc)
        parsed.quarantined.append(Quarantined(line, f"front matter is not valid YAML: {problem}", front_text))
        return parsed
    if not isinstance(front, dict):
        parsed.quarantined.append(Quarantined(2, "front matter must be a mapping of key: value", front_text))
        return parsed
    missing = [k for k in REQUIRED_FRONT_MATTER if front.get(k) in (None, "")]
    if missing:
        parsed.quarantined.append(
            Quarantined(2, f"front matter lacks required key(s): {', '.join(missing)}", front_text)
        )
        return parsed
    body = "\n".join(lines[closing + 1 :]).strip("\n")
    if not body.strip():
        parsed.quarantined.append(Quarantined(closing + 2, "document has front matter but no body text", front_text))
        return parsed
    values = {k: _to_text(front.get(k)) for k in source.columns if k not in ("front_matter", "body")}
    values["front_matter"] = json.dumps(front, default=str, sort_keys=True, ensure_ascii=False)
    values["body"] = body
    parsed.rows.append((1, [values[c] for c in source.columns]))
    return parsed


def read_file(path: Path, source: LandingSource, display: str, *, encoding: str, max_document_bytes: int) -> ParsedFile:
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise LandingFileError(f"{display}: cannot be read ({exc.strerror or exc})") from None
    text = decode(path, data, encoding, display)
    if source.format == "csv":
        return read_csv(text, source, display)
    if source.format == "jsonl":
        return read_jsonl(text, source, display)
    return read_markdown(text, source, display, max_document_bytes)


def discover(landing_dir: Path, source: LandingSource) -> Iterator[Path]:
    yield from sorted(p for p in landing_dir.glob(source.pattern) if p.is_file())


def _blank_to_none(value: str) -> str | None:
    return value if value != "" else None


def _to_text(value: object) -> str | None:
    if value is None:
        return None
    if isinstance(value, str):
        return value
    if isinstance(value, (dict, list)):
        return json.dumps(value, sort_keys=True, ensure_ascii=False)
    if hasattr(value, "isoformat"):  # YAML turns bare dates and timestamps into objects
        return value.isoformat()
    return str(value)
