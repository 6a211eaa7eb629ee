"""The API's request and response bodies, which are also its OpenAPI schema (`GET /openapi.json`).

Requests forbid unknown fields (a typo such as `"filter"` or an attempt to send `"access_level"` is a
422 naming the field, never silently ignored), and numbers and flags are strict JSON types (`"k": "5"`
is a 422). The limits (query length, k, max_tokens) come from `vars.serve`, so the request models are
built per app by `api_models`, and the schema shows the limits the running service enforces.
"""

# No `from __future__ import annotations`: the request models are built inside api_models(), and
# pydantic and FastAPI must see their field types as objects, not strings.
import re
from dataclasses import dataclass
from datetime import date, datetime
from typing import Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, Strict, StringConstraints, model_validator

from python_jobs.common.settings import ServeSettings

Mode = Literal["vector", "fts", "hybrid"]
Label = Literal["relevant", "not_relevant", "click"]
FilterValue = Annotated[str, StringConstraints(min_length=1, max_length=200)]
FilterValues = Annotated[list[FilterValue], Field(max_length=50)]


def _iso_date(value: Any) -> Any:
    """Only a YYYY-MM-DD string (or a date): not a number of seconds, not a timestamp with a time."""
    if isinstance(value, date) and not isinstance(value, datetime):
        return value
    if not isinstance(value, str) or not re.fullmatch(r"\d{4}-\d{2}-\d{2}", value):
        raise ValueError(f"must be a date as YYYY-MM-DD, got {value!r}")
    return value


IsoDate = Annotated[date, BeforeValidator(_iso_date)]
QueryId = Annotated[str, StringConstraints(pattern=r"^[0-9a-f]{32}$")]
Identifier = Annotated[str, StringConstraints(min_length=1, max_length=300)]
DEFAULT_PROMPT = "answer_with_citations"


class _Request(BaseModel):
    model_config = ConfigDict(extra="forbid")


class SearchFilters(_Request):
    """Metadata a search is narrowed to; values of one field are ORed, fields are ANDed. Access levels
    are not a filter: they come from the API key."""

    doc_type: FilterValues = Field(default_factory=list, description="Only these document types, e.g. faq, manual.")
    sku: FilterValues = Field(default_factory=list, description="Only documents about these product SKUs.")
    category: FilterValues = Field(default_factory=list, description="Only documents of these product categories.")
    updated_from: IsoDate | None = Field(None, description="Only documents updated on or after this date (UTC).")
    updated_to: IsoDate | None = Field(None, description="Only documents updated before this date (UTC).")

    @model_validator(mode="after")
    def _dates_in_order(self) -> "SearchFilters":
        if self.updated_from and self.updated_to and self.updated_from >= self.updated_to:
            raise ValueError(
                f"updated_from ({self.updated_from}) must be before updated_to ({self.updated_to}): "
                "the range is [updated_from, updated_to)"
            )
        return self


class FeedbackRequest(_Request):
    query_id: QueryId = Field(description="The query_id a /v1/search or /v1/context response carried.")
    doc_id: Identifier | None = Field(None, description="A document that query returned.")
    chunk_id: Identifier | None = Field(None, description="A chunk that query returned (its document is implied).")
    label: Label
    comment: Annotated[str, StringConstraints(max_length=2000)] | None = None

    @model_validator(mode="after")
    def _names_a_result(self) -> "FeedbackRequest":
        if self.doc_id is None and self.chunk_id is None:
            raise ValueError("name the result the feedback is about: doc_id or chunk_id")
        return self


@dataclass(frozen=True)
class ApiModels:
    search: type[BaseModel]
    context: type[BaseModel]


def api_models(limits: ServeSettings) -> ApiModels:
    """The request models with this service's limits."""
    Query = Annotated[
        str,
        StringConstraints(min_length=1, max_length=limits.max_query_chars),
        Field(description="The question, as the user asked it."),
    ]

    class SearchRequest(_Request):
        query: Query
        mode: Mode = "hybrid"
        k: Annotated[int, Strict(), Field(ge=1, le=limits.max_k, description="How many results.")] = 10
        filters: SearchFilters | None = None
        documents: Annotated[bool, Strict(), Field(description="The best chunk of each document only.")] = False

    class ContextRequest(_Request):
        query: Query
        max_tokens: Annotated[
            int,
            Strict(),
            Field(
                ge=1,
                le=limits.max_context_tokens,
                description="Budget of the context, in the named tokenizer's tokens.",
            ),
        ]
        prompt: Annotated[str, StringConstraints(min_length=1, max_length=200)] = Field(
            DEFAULT_PROMPT, description="A prompt as name (its production label), name@version or name:label."
        )
        mode: Mode = "hybrid"
        filters: SearchFilters | None = None

    return ApiModels(SearchRequest, ContextRequest)


# --- responses ----------------------------------------------------------------------------------


class IndexInfo(BaseModel):
    table: str
    version: int


class SearchHit(BaseModel):
    rank: int
    chunk_id: str
    doc_id: str
    score: float
    doc_title: str
    heading_path: str
    text: str
    doc_type: str | None
    access_level: str
    source_updated_at: str | None


class SearchTimings(BaseModel):
    embed: float
    search: float
    total: float


class SearchResponse(BaseModel):
    query_id: str
    index: IndexInfo
    results: list[SearchHit]
    timings_ms: SearchTimings


class CitationOut(BaseModel):
    n: int = Field(description="The citation number, as [n] in the context.")
    rank: int = Field(description="The chunk's rank in the search.")
    score: float
    doc_id: str
    chunk_id: str
    doc_title: str
    heading_path: str
    tokens: int = Field(description="Tokens of this citation block, header included.")
    truncated: bool = Field(description="Whether the chunk was cut to fit the budget (only ever the last one).")


class PromptInfo(BaseModel):
    name: str
    version: str
    label: str | None
    model: dict[str, Any] = Field(description="The model settings the template was written for.")
    release_note: str


class Budget(BaseModel):
    daily_tokens: int
    used_today: int
    remaining_today: int


class ContextTimings(BaseModel):
    embed: float
    search: float
    context: float
    total: float


class ContextResponse(BaseModel):
    query_id: str
    index: IndexInfo
    prompt_version: str = Field(description="name@version of the template rendered.")
    prompt: PromptInfo
    tokenizer: str = Field(description="The tokenizer the tokens are counted with.")
    max_tokens: int
    context_tokens: int = Field(description="Tokens of `context`; never more than max_tokens.")
    prompt_tokens: int = Field(description="Tokens of `rendered_prompt`.")
    context: str = Field(description="The chunks as numbered citation blocks, best first.")
    citations: list[CitationOut]
    rendered_prompt: str
    budget: Budget
    timings_ms: ContextTimings


class FeedbackAccepted(BaseModel):
    feedback_id: str
    query_id: str


class ErrorBody(BaseModel):
    detail: str
    query_id: str | None = None
    errors: list[dict[str, Any]] | None = None


class Health(BaseModel):
    status: str


class Readiness(BaseModel):
    status: str
    index: dict[str, Any] | None = None
    error: str | None = None
    keys: dict[str, Any]
    prompts: list[dict[str, Any]]
    log: dict[str, Any]
