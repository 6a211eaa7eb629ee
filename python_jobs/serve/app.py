"""The HTTP API (FastAPI): search, context and feedback for applications, health, readiness and metrics.

    POST /v1/search    ranked chunks (or documents) for a question: vector, fts or hybrid, with filters
    POST /v1/context   a token-budgeted context with citations, rendered into a versioned prompt
    POST /v1/feedback  a judgment on a result of an earlier query (202); feeds the evaluation set
    GET  /healthz      the process is up
    GET  /readyz       the index is open: its table and version (503 until then)
    GET  /metrics      Prometheus text format
    GET  /openapi.json this API's schema

Every /v1 route needs `Authorization: Bearer <key>` (python_jobs/serve/keys.py). The caller's access
level comes from the key alone and becomes the search's access prefilter (python_jobs/search/filters.py):
no field of a request can widen it, and unknown fields are refused. Every /v1/search and /v1/context
request, answered or refused, is queued for the query log (python_jobs/serve/querylog.py) with its
query_id, which the response carries and feedback refers to.

Endpoints are plain functions (FastAPI runs them in its thread pool): the search itself is the
library's `Retriever.search`, the same call `rp query` makes.
"""

# No `from __future__ import annotations`: the endpoints are defined inside create_app() with request
# models built there, and FastAPI must see those types as objects.
import json
import logging
import time
import uuid
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from typing import Annotated, Any

from fastapi import Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from prometheus_client import CONTENT_TYPE_LATEST
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from python_jobs.common.errors import PipelineError
from python_jobs.common.settings import Settings
from python_jobs.search.filters import FilterError, Filters, access_levels_up_to
from python_jobs.search.retriever import SearchResult
from python_jobs.serve import schemas
from python_jobs.serve.context import build_context
from python_jobs.serve.keys import ApiKey
from python_jobs.serve.limits import seconds_until_utc_midnight
from python_jobs.serve.prompts import PromptError
from python_jobs.serve.querylog import FEEDBACK, QUERY_LOG, QUERY_LOG_SCHEMA, QueryRecord, find_query
from python_jobs.serve.service import Service
from python_jobs.serve.swap import ServedIndex

log = logging.getLogger(__name__)

LOGGED_ROUTES = frozenset({"/v1/search", "/v1/context"})
ROUTES = frozenset({*LOGGED_ROUTES, "/v1/feedback", "/healthz", "/readyz", "/metrics", "/openapi.json"})
ERRORS: dict[int | str, dict[str, Any]] = {
    status: {"model": schemas.ErrorBody, "description": description}
    for status, description in {
        400: "The body cannot be read as JSON text (for example, it is not UTF-8).",
        401: "No API key, or an unknown or revoked one.",
        413: "The request body is larger than vars.serve.max_body_bytes.",
        422: "A field is missing, unknown, of the wrong type or out of range (the message names it).",
        429: "The key's request rate or daily context-token budget is used up (see Retry-After).",
        503: "No index is open yet (see /readyz).",
    }.items()
}


def create_app(settings: Settings, service: Service | None = None) -> FastAPI:
    """The app for one service; `Service(settings)` reads the keys, prompts and tokenizer now."""
    service = service or Service(settings)
    limits = settings.serve
    models = schemas.api_models(limits)
    SearchRequest, ContextRequest = models.search, models.context

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        service.start()
        try:
            yield
        finally:
            await run_in_threadpool(service.stop)  # drains the log queue to Parquet

    app = FastAPI(
        title="Retrieval Platform",
        version="1",
        summary="Search and token-budgeted context over the published index, for applications.",
        lifespan=lifespan,
        docs_url=None,  # the Swagger page loads its scripts from a CDN; /openapi.json is the reference
        redoc_url=None,
    )
    app.state.service = service
    app.add_middleware(GuardMiddleware, service=service)
    bearer = HTTPBearer(auto_error=False, description="An API key from `rp keys create`.")

    # --- errors ---------------------------------------------------------------------------------

    def refuse(status: int, detail: str, reason: str | None = None, headers: dict[str, str] | None = None):
        if reason:
            service.metrics.refused.labels(reason).inc()
        return HTTPException(status, detail, headers)

    def error_response(request: Request, status: int, detail: str, headers=None, errors=None) -> JSONResponse:
        body: dict[str, Any] = {"detail": detail}
        if errors is not None:
            body["errors"] = errors
        if request.url.path in LOGGED_ROUTES and request.method == "POST":
            body["query_id"] = log_query(request, status, detail)
        return JSONResponse(body, status_code=status, headers=headers)

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, exc: HTTPException) -> JSONResponse:
        detail = str(exc.detail)
        if exc.status_code == 400 and detail == "There was an error parsing the body":  # FastAPI's words
            detail = "the request body cannot be read as JSON text: send UTF-8 JSON with Content-Type application/json"
        return error_response(request, exc.status_code, detail, headers=exc.headers)

    @app.exception_handler(RequestValidationError)
    async def invalid_request(request: Request, exc: RequestValidationError) -> JSONResponse:
        errors = [{"loc": list(e["loc"]), "msg": e["msg"], "type": e["type"]} for e in exc.errors()]
        detail = "; ".join(f"{'.'.join(str(part) for part in e['loc'])}: {e['msg']}" for e in errors)
        if isinstance(exc.body, dict):  # what can be told of the request, for its query log row
            request.state.draft = _draft_from(exc.body)
        return error_response(request, 422, detail or "invalid request", errors=errors)

    @app.exception_handler(Exception)
    async def crashed(request: Request, exc: Exception) -> JSONResponse:
        log.error("%s %s failed", request.method, request.url.path, exc_info=exc)
        return error_response(request, 500, f"internal error ({type(exc).__name__}); the service log has the details")

    # --- the caller -----------------------------------------------------------------------------

    async def authorized(
        request: Request, credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)]
    ) -> ApiKey:
        """The key's holder, allowed one more request by its rate; 401 or 429 otherwise. Async: it only
        hashes and counts in memory, so it runs on the event loop, not a worker thread."""
        challenge = {"WWW-Authenticate": "Bearer"}
        if credentials is None:
            raise refuse(
                401,
                "missing API key: send `Authorization: Bearer <key>` (keys are made with `rp keys create`)",
                "unauthenticated",
                challenge,
            )
        key = service.keys.authenticate(credentials.credentials)
        if key is None:
            raise refuse(401, "unknown or revoked API key", "unauthenticated", challenge)
        request.state.key = key
        rate = service.rate_of(key)
        wait = service.rate.hit(key.name, rate)
        if wait is not None:
            retry_after = max(int(wait + 0.999), 1)
            raise refuse(
                429,
                f"rate limit of {rate:g} requests/s for key {key.name!r} exceeded: retry after {retry_after} s",
                "rate",
                {"Retry-After": str(retry_after)},
            )
        return key

    def served_index() -> ServedIndex:
        served = service.index.current
        if served is None:
            reason = service.index.error or "the index is still being opened"
            raise refuse(503, f"not ready: {reason}", headers={"Retry-After": "1"})
        return served

    # --- the query log --------------------------------------------------------------------------

    def log_query(request: Request, status: int, error: str | None, **fields: Any) -> str:
        state = request.state
        key: ApiKey | None = getattr(state, "key", None)
        row: dict[str, Any] = dict.fromkeys(QUERY_LOG_SCHEMA.names)
        row.update(getattr(state, "draft", {}))
        row.update(fields)
        query_id = getattr(state, "query_id", None) or uuid.uuid4().hex
        row.update(
            query_id=query_id,
            logged_at=getattr(state, "received_at", None) or datetime.now(UTC),
            caller=key.name if key else None,
            access_level=key.access_level if key else None,
            route=request.url.path,
            status=status,
            error=error,
            total_ms=(time.perf_counter() - state.started) * 1000 if hasattr(state, "started") else None,
        )
        service.writer.log(QUERY_LOG, row)
        return query_id

    def begin(request: Request, body: Any, **draft: Any) -> str:
        query_id = uuid.uuid4().hex
        request.state.query_id = query_id
        request.state.mode = body.mode
        filters = body.filters.model_dump(mode="json", exclude_defaults=True) if body.filters else {}
        request.state.draft = {
            "mode": body.mode,
            "query": body.query,
            "filters": json.dumps(filters, sort_keys=True),
            **draft,
        }
        return query_id

    def search(
        served: ServedIndex, body: Any, k: int, key: ApiKey, per_document: bool = False
    ) -> tuple[SearchResult, float, float]:
        if not body.query.strip():
            raise refuse(422, "query: the query is empty (only whitespace)")
        filters = body.filters or schemas.SearchFilters()
        try:
            narrowed = Filters.of(
                doc_type=filters.doc_type,
                product_sku=filters.sku,
                category=filters.category,
                updated_from=filters.updated_from,
                updated_to=filters.updated_to,
            )
        except FilterError as exc:
            raise refuse(422, f"filters: {exc}") from None
        levels = access_levels_up_to(key.access_level)
        with served.retriever() as retriever:
            started = time.perf_counter()
            try:
                if body.mode != "fts":
                    retriever.embed_query(body.query)
                embedded = time.perf_counter()
                result = retriever.search(
                    body.query, body.mode, k, filters=narrowed, access_levels=levels, per_document=per_document
                )
            except FilterError as exc:
                raise refuse(422, str(exc)) from None
            except PipelineError as exc:
                raise refuse(503, f"not ready: {exc}") from None
            searched = time.perf_counter()
        embed_ms = (embedded - started) * 1000 if body.mode != "fts" else 0.0
        search_ms = (searched - embedded) * 1000
        if body.mode != "fts":
            service.metrics.stage.labels("embed", body.mode).observe(embed_ms / 1000)
        service.metrics.stage.labels("search", body.mode).observe(search_ms / 1000)
        return result, embed_ms, search_ms

    def answered(request: Request, query_id: str, key: ApiKey, served, body, returned, embed_ms, search_ms, **extra):
        """Log a served request with what it returned (ranked chunks), and remember it for feedback."""
        results = [{"rank": r.rank, "chunk_id": r.chunk_id, "doc_id": r.doc_id, "score": r.score} for r in returned]
        log_query(
            request,
            200,
            None,
            index_table=served.table,
            index_version=served.version,
            results=json.dumps(results),
            embed_ms=embed_ms if body.mode != "fts" else None,
            search_ms=search_ms,
            **extra,
        )
        service.recent.add(QueryRecord(query_id, key.name, tuple((r.chunk_id, r.doc_id) for r in returned)))

    # --- routes ---------------------------------------------------------------------------------

    @app.post(
        "/v1/search",
        response_model=schemas.SearchResponse,
        responses=ERRORS,
        tags=["retrieval"],
        summary="Search the published index",
    )
    def search_route(body: SearchRequest, request: Request, key: Annotated[ApiKey, Depends(authorized)]):  # type: ignore[valid-type]
        """The best chunks for a question (or with `documents`, each document's best chunk), in rank order."""
        query_id = begin(request, body, k=body.k, per_document=body.documents)
        served = served_index()
        result, embed_ms, search_ms = search(served, body, body.k, key, body.documents)
        hits = [
            schemas.SearchHit(
                rank=hit.rank,
                chunk_id=hit.chunk_id,
                doc_id=hit.doc_id,
                score=hit.score,
                doc_title=hit.doc_title,
                heading_path=hit.heading_path,
                text=hit.text,
                doc_type=hit.metadata.get("doc_type"),
                access_level=hit.metadata["access_level"],
                source_updated_at=hit.metadata.get("source_updated_at"),
            )
            for hit in result.hits
        ]
        total_ms = (time.perf_counter() - request.state.started) * 1000
        answered(request, query_id, key, served, body, hits, embed_ms, search_ms)
        return schemas.SearchResponse(
            query_id=query_id,
            index=schemas.IndexInfo(table=served.table, version=served.version),
            results=hits,
            timings_ms=schemas.SearchTimings(
                embed=round(embed_ms, 3), search=round(search_ms, 3), total=round(total_ms, 3)
            ),
        )

    @app.post(
        "/v1/context",
        response_model=schemas.ContextResponse,
        responses=ERRORS,
        tags=["retrieval"],
        summary="A token-budgeted context, rendered into a prompt",
    )
    def context_route(body: ContextRequest, request: Request, key: Annotated[ApiKey, Depends(authorized)]):  # type: ignore[valid-type]
        """The best chunks, deduplicated, as numbered citations cut to `max_tokens`, rendered into a prompt
        template; counts the context tokens against the key's daily budget."""
        candidates = min(limits.max_k, max(10, body.max_tokens // 32))
        query_id = begin(request, body, k=candidates, per_document=False, prompt_name=body.prompt)
        daily = service.daily_tokens_of(key)
        before = service.budget.state(key.name, daily)
        if before.remaining == 0:
            raise budget_refusal(key, before.used, daily, body.max_tokens)
        try:
            prompt = service.prompts.resolve(body.prompt)
        except PromptError as exc:
            raise refuse(422, f"prompt: {exc}") from None
        request.state.draft.update(prompt_name=prompt.name, prompt_version=prompt.version)
        served = served_index()
        result, embed_ms, search_ms = search(served, body, candidates, key)
        started = time.perf_counter()
        context = build_context(result.hits, body.max_tokens, service.tokens)
        chunks = [
            {
                "n": c.n,
                "doc_id": c.doc_id,
                "chunk_id": c.chunk_id,
                "doc_title": c.doc_title,
                "heading_path": c.heading_path,
                "text": c.text,
            }
            for c in context.citations
        ]
        rendered = prompt.render(body.query, chunks, context.text)
        context_ms = (time.perf_counter() - started) * 1000
        service.metrics.stage.labels("context", body.mode).observe(context_ms / 1000)
        after = service.budget.try_charge(key.name, context.tokens, daily)
        if after is None:
            raise budget_refusal(key, service.budget.state(key.name, daily).used, daily, context.tokens)
        total_ms = (time.perf_counter() - request.state.started) * 1000
        answered(
            request, query_id, key, served, body, context.citations, embed_ms, search_ms, context_tokens=context.tokens
        )
        return schemas.ContextResponse(
            query_id=query_id,
            index=schemas.IndexInfo(table=served.table, version=served.version),
            prompt_version=prompt.ref,
            prompt=schemas.PromptInfo(
                name=prompt.name,
                version=prompt.version,
                label=prompt.label,
                model=prompt.model,
                release_note=prompt.release_note,
            ),
            tokenizer=service.tokens.name,
            max_tokens=body.max_tokens,
            context_tokens=context.tokens,
            prompt_tokens=service.tokens.count(rendered),
            context=context.text,
            citations=[
                schemas.CitationOut(
                    n=c.n,
                    rank=c.rank,
                    score=c.score,
                    doc_id=c.doc_id,
                    chunk_id=c.chunk_id,
                    doc_title=c.doc_title,
                    heading_path=c.heading_path,
                    tokens=c.tokens,
                    truncated=c.truncated,
                )
                for c in context.citations
            ],
            rendered_prompt=rendered,
            budget=schemas.Budget(daily_tokens=daily, used_today=after.used, remaining_today=after.remaining),
            timings_ms=schemas.ContextTimings(
                embed=round(embed_ms, 3),
                search=round(search_ms, 3),
                context=round(context_ms, 3),
                total=round(total_ms, 3),
            ),
        )

    def budget_refusal(key: ApiKey, used: int, daily: int, needed: int) -> HTTPException:
        retry_after = seconds_until_utc_midnight()
        return refuse(
            429,
            f"daily context-token budget of {daily:,} tokens for key {key.name!r} exceeded: {used:,} used today, "
            f"this context needs {needed:,}; the budget resets at 00:00 UTC (in {retry_after} s)",
            "daily_tokens",
            {"Retry-After": str(retry_after)},
        )

    @app.post(
        "/v1/feedback",
        status_code=202,
        response_model=schemas.FeedbackAccepted,
        responses={**ERRORS, 403: {"model": schemas.ErrorBody, "description": "The query was asked with another key."}},
        tags=["feedback"],
        summary="Judge a result of an earlier query",
    )
    def feedback_route(body: schemas.FeedbackRequest, request: Request, key: Annotated[ApiKey, Depends(authorized)]):
        """Whether a document or chunk that a query returned was relevant (or clicked); only the key that asked
        the query may judge its results. Accepted feedback becomes candidate evaluation judgments in dbt."""
        record = service.recent.get(body.query_id) or find_query(service.log_dir, body.query_id)
        if record is None:
            raise refuse(
                422,
                f"query_id {body.query_id} is unknown: send feedback on a query_id that a successful "
                "/v1/search or /v1/context response returned",
            )
        if record.caller != key.name:
            raise refuse(
                403, f"query {body.query_id} was asked with another key: only the key that asked it may judge it"
            )
        doc_id = body.doc_id
        if body.chunk_id is not None:
            chunk_doc = record.doc_of(body.chunk_id)
            if chunk_doc is None:
                raise refuse(422, f"chunk_id {body.chunk_id!r} is not among the results of query {body.query_id}")
            if doc_id is not None and doc_id != chunk_doc:
                raise refuse(422, f"chunk_id {body.chunk_id!r} belongs to document {chunk_doc!r}, not {doc_id!r}")
            doc_id = chunk_doc
        elif not record.returned_doc(doc_id):
            raise refuse(422, f"doc_id {doc_id!r} is not among the results of query {body.query_id}")
        feedback_id = uuid.uuid4().hex
        queued = service.writer.log(
            FEEDBACK,
            {
                "feedback_id": feedback_id,
                "query_id": body.query_id,
                "logged_at": request.state.received_at,
                "caller": key.name,
                "doc_id": doc_id,
                "chunk_id": body.chunk_id,
                "label": body.label,
                "comment": body.comment,
            },
        )
        if not queued:
            raise refuse(503, "the feedback queue is full: retry shortly", headers={"Retry-After": "1"})
        return schemas.FeedbackAccepted(feedback_id=feedback_id, query_id=body.query_id)

    @app.get("/healthz", response_model=schemas.Health, tags=["operations"], summary="The process is up")
    def healthz():
        return schemas.Health(status="ok")

    @app.get(
        "/readyz",
        response_model=schemas.Readiness,
        responses={503: {"model": schemas.Readiness, "description": "No index is open yet."}},
        tags=["operations"],
        summary="The index is open: which table and version",
    )
    def readyz():
        readiness = service.readiness()
        if readiness["index"] is None:
            return JSONResponse(readiness, status_code=503)
        return readiness

    @app.get(
        "/metrics",
        tags=["operations"],
        summary="Prometheus metrics",
        response_class=Response,
        responses={200: {"content": {CONTENT_TYPE_LATEST.split(";")[0]: {"schema": {"type": "string"}}}}},
    )
    def metrics():
        return Response(service.metrics.render(), media_type=CONTENT_TYPE_LATEST)

    return app


def _draft_from(body: dict[str, Any]) -> dict[str, Any]:
    """The fields of a refused request worth logging, where they have the right type."""
    draft: dict[str, Any] = {}
    if isinstance(body.get("query"), str):
        draft["query"] = body["query"][:10_000]
    if body.get("mode") in ("vector", "fts", "hybrid"):
        draft["mode"] = body["mode"]
    if isinstance(body.get("k"), int) and not isinstance(body.get("k"), bool) and abs(body["k"]) < 2**31:
        draft["k"] = body["k"]
    if isinstance(body.get("prompt"), str):
        draft["prompt_name"] = body["prompt"][:200]
    return draft


class GuardMiddleware:
    """Refuses bodies over vars.serve.max_body_bytes (413) before they are parsed, and counts every request
    and its latency in /metrics. Plain ASGI: no per-request task or copy of the response."""

    def __init__(self, app: ASGIApp, service: Service):
        self.app = app
        self.service = service
        self.max_body = service.limits.max_body_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        state = scope.setdefault("state", {})
        state["started"], state["received_at"] = started, datetime.now(UTC)
        path = scope["path"]
        route = path if path in ROUTES else "other"
        status = [500]

        async def send_counted(message: Message) -> None:
            if message["type"] == "http.response.start":
                status[0] = message["status"]
            await send(message)

        try:
            receive = await self._limited(scope, receive, send_counted)
            if receive is not None:
                await self.app(scope, receive, send_counted)
        finally:
            metrics = self.service.metrics
            metrics.requests.labels(route, str(status[0])).inc()
            metrics.latency.labels(route, state.get("mode", "")).observe(time.perf_counter() - started)

    async def _limited(self, scope: Scope, receive: Receive, send: Send) -> Receive | None:
        """`receive` if the body is within the limit, else None after answering 413 (or 400)."""
        headers = dict(scope["headers"])
        length = headers.get(b"content-length")
        if length is not None:
            if not length.isdigit():
                await self._answer(scope, send, 400, "Content-Length is not a number")
                return None
            if int(length) > self.max_body:
                await self._too_large(scope, send, f"{int(length):,} bytes")
                return None
            return receive
        if scope["method"] not in ("POST", "PUT", "PATCH"):
            return receive
        # No length given (chunked): read up to the limit, then hand the body on as one message.
        chunks, size = [], 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return None
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_body:
                await self._too_large(scope, send, f"more than {self.max_body:,} bytes")
                return None
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        body, sent = b"".join(chunks), False

        async def replay() -> Message:
            nonlocal sent
            if not sent:
                sent = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        return replay

    async def _too_large(self, scope: Scope, send: Send, size: str) -> None:
        self.service.metrics.refused.labels("body_size").inc()
        detail = f"the request body ({size}) is larger than {self.max_body:,} bytes (vars.serve.max_body_bytes)"
        if scope["path"] in LOGGED_ROUTES:
            row = dict.fromkeys(QUERY_LOG_SCHEMA.names)
            row.update(
                query_id=uuid.uuid4().hex,
                logged_at=scope["state"]["received_at"],
                route=scope["path"],
                status=413,
                error=detail,
            )
            self.service.writer.log(QUERY_LOG, row)
        await self._answer(scope, send, 413, detail)

    @staticmethod
    async def _answer(scope: Scope, send: Send, status: int, detail: str) -> None:
        response = JSONResponse({"detail": detail}, status_code=status, headers={"Connection": "close"})
        await response(scope, _no_body, send)


async def _no_body() -> Message:
    return {"type": "http.disconnect"}
