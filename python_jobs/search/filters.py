"""Who may see what, and which chunks a query is narrowed to, as one safe filter expression.

Every search carries the caller's access levels and optional metadata filters. Both become
a single SQL predicate that LanceDB applies *before* ranking (a prefilter), in every mode,
so a chunk the caller may not read is never a candidate, let alone a result.

Filters are structured arguments, never SQL: each value is a quoted literal with quotes
doubled, columns come from a fixed list, and dates are parsed before they are written.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, time

from python_jobs.common.errors import ExitCode, PipelineError
from python_jobs.common.sqltext import sql_in

# Lowest to highest, as documents declare them (front matter `access_level`). A caller
# cleared for a level may read it and every level below it.
ACCESS_LEVELS = ("public", "internal", "confidential")
DEFAULT_ACCESS_LEVELS = ("public",)


class FilterError(PipelineError):
    """A filter or access level the index cannot apply; the message names the argument."""

    exit_code = ExitCode.USAGE


def access_levels_up_to(level: str) -> tuple[str, ...]:
    """The levels a caller cleared for `level` may read: `internal` reads public and internal."""
    if level not in ACCESS_LEVELS:
        raise FilterError(f"access level {level!r} is unknown: use one of {', '.join(ACCESS_LEVELS)}")
    return ACCESS_LEVELS[: ACCESS_LEVELS.index(level) + 1]


def checked_access_levels(levels: Iterable[str]) -> tuple[str, ...]:
    levels = tuple(dict.fromkeys(levels))
    if not levels:
        raise FilterError("no access level given: a query must say which levels its caller may read")
    unknown = [level for level in levels if level not in ACCESS_LEVELS]
    if unknown:
        raise FilterError(f"access level {unknown[0]!r} is unknown: use one of {', '.join(ACCESS_LEVELS)}")
    return levels


@dataclass(frozen=True)
class Filters:
    """Metadata a query is narrowed to; an empty field does not narrow. Values of one field are ORed."""

    doc_type: tuple[str, ...] = ()
    product_sku: tuple[str, ...] = ()
    category: tuple[str, ...] = ()
    doc_id: tuple[str, ...] = ()
    updated_from: datetime | None = None  # source_updated_at >= this (UTC)
    updated_to: datetime | None = None  # source_updated_at < this (UTC)
    # Each document's first chunk only: how a benchmark emulates models that truncate documents.
    first_chunk_only: bool = False

    @classmethod
    def of(
        cls,
        doc_type: Sequence[str] | str | None = None,
        product_sku: Sequence[str] | str | None = None,
        category: Sequence[str] | str | None = None,
        doc_id: Sequence[str] | str | None = None,
        updated_from: date | datetime | str | None = None,
        updated_to: date | datetime | str | None = None,
    ) -> Filters:
        """From loose arguments: a string or a list per field, dates as ISO strings or date objects."""
        return cls(
            doc_type=_values("doc_type", doc_type),
            product_sku=_values("product_sku", product_sku),
            category=_values("category", category),
            doc_id=_values("doc_id", doc_id),
            updated_from=_timestamp("updated_from", updated_from),
            updated_to=_timestamp("updated_to", updated_to),
        )

    def __bool__(self) -> bool:
        return (
            any((self.doc_type, self.product_sku, self.category, self.doc_id, self.updated_from, self.updated_to))
            or self.first_chunk_only
        )

    def describe(self) -> str:
        parts = [f"{name} in {list(values)}" for name, values in self._value_filters() if values]
        if self.updated_from:
            parts.append(f"updated from {self.updated_from:%Y-%m-%d %H:%M}")
        if self.updated_to:
            parts.append(f"updated before {self.updated_to:%Y-%m-%d %H:%M}")
        if self.first_chunk_only:
            parts.append("first chunk of each document")
        return ", ".join(parts) or "none"

    def where(self, access_levels: Iterable[str]) -> str:
        """The prefilter: access first (always there), then each metadata filter."""
        clauses = [sql_in("access_level", checked_access_levels(access_levels))]
        clauses += [sql_in(column, values) for column, values in self._value_filters() if values]
        if self.updated_from:
            clauses.append(f"source_updated_at >= {_timestamp_literal(self.updated_from)}")
        if self.updated_to:
            clauses.append(f"source_updated_at < {_timestamp_literal(self.updated_to)}")
        if self.first_chunk_only:
            clauses.append("first_chunk = true")  # positions are not in the index (python_jobs/chunk/schema.py)
        return " AND ".join(f"({clause})" for clause in clauses)

    def _value_filters(self) -> list[tuple[str, tuple[str, ...]]]:
        return [
            ("doc_type", self.doc_type),
            ("product_sku", self.product_sku),
            ("category", self.category),
            ("doc_id", self.doc_id),
        ]


def _values(name: str, value: Sequence[str] | str | None) -> tuple[str, ...]:
    if value is None or value == "":
        return ()
    values = (value,) if isinstance(value, str) else tuple(value)
    for item in values:
        if not isinstance(item, str) or not item.strip():
            raise FilterError(f"filter {name}={item!r}: values must be non-empty strings")
        if "\x00" in item:
            raise FilterError(f"filter {name}={item!r}: values must not contain NUL characters")
    return values


def _timestamp(name: str, value: date | datetime | str | None) -> datetime | None:
    if value is None or value == "":
        return None
    if isinstance(value, str):
        try:
            value = datetime.fromisoformat(value)
        except ValueError:
            raise FilterError(f"filter {name}={value!r} is not a date: use YYYY-MM-DD or an ISO timestamp") from None
    if not isinstance(value, datetime):
        value = datetime.combine(value, time())
    if value.tzinfo is not None:  # source_updated_at is stored as naive UTC
        value = value.astimezone(UTC).replace(tzinfo=None)
    return value


def _timestamp_literal(value: datetime) -> str:
    # isoformat pads the year to four digits (strftime writes year 1 as "1", which no parser reads).
    return f"timestamp '{value.isoformat(sep=' ', timespec='microseconds')}'"
