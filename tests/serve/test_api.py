"""The HTTP API against a real server and a real index: search in every mode, access control that no
request can widen, keys, guardrails and their 4xx, the token-budgeted context, prompt versions and
feedback validation."""

from __future__ import annotations

import re
import time
import uuid

import pytest
from tokenizers import Tokenizer

from python_jobs.chunk.model_files import resolve_model
from python_jobs.common.settings import PROJECT_DIR
from python_jobs.search.filters import access_levels_up_to
from python_jobs.search.retriever import Retriever
from python_jobs.serve.keys import revoke_key
from python_jobs.serve.prompts import load_prompts
from tests.serve.conftest import Server
from tests.worlds import KETTLE_SKU, SECRET_DOC_ID, SECRET_QUERY

MODES = ("vector", "fts", "hybrid")
KETTLE = "faq-brightwater-variable-temp-kettle"
PRICE_MATCH = "faq-price-match"
STAFF_PRICE_MATCH = "faq-staff-price-match-at-register"
PROMPT = "answer_with_citations"
# The confidential note's own words: they must never reach a key below its level, in any form.
SECRET_PHRASE = "goodwill program"


def search(server: Server, key: str = "internal", **body) -> dict:
    response = server.post("/v1/search", body, key=key)
    assert response.status_code == 200, response.text
    return response.json()


def context(server: Server, key: str = "internal", **body) -> dict:
    response = server.post("/v1/context", body, key=key)
    assert response.status_code == 200, response.text
    return response.json()


# --- search ---------------------------------------------------------------------------------------


def test_search_in_every_mode_returns_what_the_library_returns_with_metadata(server):
    ready = server.get("/readyz").json()["index"]
    retriever = Retriever(server.settings)
    for mode in MODES:
        body = search(server, key="public", query="how do I descale the kettle", mode=mode, k=3)
        assert re.fullmatch(r"[0-9a-f]{32}", body["query_id"])
        assert body["index"] == {"table": ready["table"], "version": ready["version"]}
        results = body["results"]
        expected = retriever.search("how do I descale the kettle", mode, 3, access_levels=("public",))
        assert [r["chunk_id"] for r in results] == [h.chunk_id for h in expected.hits], mode
        assert [r["rank"] for r in results] == [1, 2, 3]
        scores = [r["score"] for r in results]
        assert scores == sorted(scores, reverse=True) and scores == pytest.approx([h.score for h in expected.hits])
        top = results[0]
        assert top["doc_id"] == KETTLE and top["doc_type"] == "faq" and top["access_level"] == "public"
        assert top["source_updated_at"].startswith("2026-03-02") and top["heading_path"].startswith(top["doc_title"])
        assert "descale" in top["text"].lower()
        timings = body["timings_ms"]
        assert timings["total"] >= timings["search"] > 0 and (timings["embed"] > 0) == (mode != "fts")


def test_documents_returns_each_documents_best_chunk(server):
    chunks = search(server, query="price match", k=10)["results"]
    documents = search(server, query="price match", k=10, documents=True)["results"]
    doc_ids = [r["doc_id"] for r in documents]
    assert len(doc_ids) == len(set(doc_ids)) > 1
    assert len({r["doc_id"] for r in chunks}) < len(chunks), "chunks of one document, or documents proves nothing"
    assert doc_ids[0] == chunks[0]["doc_id"]


def test_filters_narrow_the_results(server):
    by_sku = search(server, key="public", query="descale", filters={"sku": [KETTLE_SKU]})["results"]
    assert by_sku and {r["doc_id"] for r in by_sku} == {KETTLE}
    older = search(server, query="price match", filters={"updated_to": "2026-01-01"})["results"]
    assert older and {r["doc_id"] for r in older} == {PRICE_MATCH, STAFF_PRICE_MATCH}
    assert all(r["source_updated_at"] < "2026-01-01" for r in older)
    faqs = search(server, key="confidential", query="kettle", filters={"doc_type": ["troubleshooting"]})["results"]
    assert faqs and {r["doc_id"] for r in faqs} == {SECRET_DOC_ID}


# --- access control -------------------------------------------------------------------------------

FILTERS = (
    None,
    {"sku": [KETTLE_SKU]},
    {"doc_type": ["troubleshooting"]},
    {"updated_from": "2026-09-01"},
    {"doc_type": ["faq", "troubleshooting"], "category": [], "updated_from": "2025-01-01", "updated_to": "2027-01-01"},
)


def test_the_confidential_best_match_reaches_a_confidential_key_first(server):
    """Without this, the tests below would prove nothing."""
    for mode in MODES:
        assert (
            search(server, key="confidential", query=SECRET_QUERY, mode=mode)["results"][0]["doc_id"] == SECRET_DOC_ID
        )
        cited = context(server, key="confidential", query=SECRET_QUERY, mode=mode, max_tokens=400)
        assert cited["citations"][0]["doc_id"] == SECRET_DOC_ID and SECRET_PHRASE in cited["context"]


@pytest.mark.parametrize("key", ["public", "internal"])
def test_a_confidential_chunk_never_reaches_a_public_or_internal_key(server, key):
    allowed = set(access_levels_up_to(key))
    for mode in MODES:
        for filters in FILTERS:
            for documents in (False, True):
                body = {"query": SECRET_QUERY, "mode": mode, "k": 50, "documents": documents}
                results = search(server, key=key, **body, **({"filters": filters} if filters else {}))["results"]
                assert SECRET_DOC_ID not in {r["doc_id"] for r in results}, (mode, filters, documents)
                assert {r["access_level"] for r in results} <= allowed
                assert not any(SECRET_PHRASE in r["text"] for r in results)
            body = {
                "query": SECRET_QUERY,
                "mode": mode,
                "max_tokens": 2000,
                **({"filters": filters} if filters else {}),
            }
            for prompt in (PROMPT, f"{PROMPT}:staging"):
                cited = context(server, key=key, **body, prompt=prompt)
                assert SECRET_DOC_ID not in {c["doc_id"] for c in cited["citations"]}, (mode, filters)
                assert SECRET_PHRASE not in cited["context"] and SECRET_PHRASE not in cited["rendered_prompt"]
                assert SECRET_DOC_ID not in cited["rendered_prompt"]


def test_nothing_in_a_request_raises_its_access_level(server):
    for body in (
        {"query": SECRET_QUERY, "access_level": "confidential"},
        {"query": SECRET_QUERY, "access_levels": ["public", "internal", "confidential"]},
        {"query": SECRET_QUERY, "filters": {"access_level": ["confidential"]}},
        {"query": SECRET_QUERY, "filters": {"doc_id": [SECRET_DOC_ID]}},
    ):
        response = server.post("/v1/search", body, key="public")
        assert response.status_code == 422, body
        assert "Extra inputs are not permitted" in response.json()["detail"]
    # A query parameter is not part of the API: ignored, the key's level still applies.
    response = server.session.post(
        server.url + "/v1/search?access_level=confidential",
        json={"query": SECRET_QUERY, "k": 50},
        headers={"Authorization": f"Bearer {server.keys['public']}"},
    )
    assert response.status_code == 200
    assert {r["access_level"] for r in response.json()["results"]} == {"public"}


# --- keys -----------------------------------------------------------------------------------------


def test_a_missing_unknown_or_revoked_key_is_401_without_echoing_it(server):
    wrong = "rp_" + uuid.uuid4().hex
    for headers in ({}, {"Authorization": f"Basic {wrong}"}, {"Authorization": f"Bearer {wrong}"}):
        response = server.session.post(server.url + "/v1/search", json={"query": "kettle"}, headers=headers)
        assert response.status_code == 401, headers
        assert response.headers["WWW-Authenticate"] == "Bearer"
        assert wrong not in response.text
    assert server.post("/v1/context", {"query": "kettle", "max_tokens": 50}, key=None).status_code == 401
    assert (
        server.post("/v1/feedback", {"query_id": "0" * 32, "doc_id": "x", "label": "click"}, key=None).status_code
        == 401
    )

    server.add_key("short-lived", "public")
    assert server.post("/v1/search", {"query": "kettle"}, key="short-lived").status_code == 200
    revoke_key(server.settings.keys_path, "short-lived")
    revoked_at = time.monotonic()
    while server.post("/v1/search", {"query": "kettle"}, key="short-lived").status_code == 200:
        assert time.monotonic() - revoked_at < 5, "a revocation must apply within seconds"
        time.sleep(0.05)
    response = server.post("/v1/search", {"query": "kettle"}, key="short-lived")
    assert response.status_code == 401 and response.json()["detail"] == "unknown or revoked API key"


# --- guardrails -----------------------------------------------------------------------------------


def test_a_keys_request_rate_is_limited_with_retry_after(server):
    server.add_key("slow", "public", rate=1.0)
    statuses = [server.post("/v1/search", {"query": "kettle", "mode": "fts"}, key="slow") for _ in range(3)]
    assert statuses[0].status_code == 200
    refused = [r for r in statuses if r.status_code == 429]
    assert refused, [r.status_code for r in statuses]
    assert int(refused[0].headers["Retry-After"]) >= 1
    assert "rate limit of 1 requests/s for key 'slow'" in refused[0].json()["detail"]
    assert server.metric("rp_serve_refused_total", reason="rate") >= 1


def test_the_daily_context_token_budget_is_refused_by_name(server):
    server.add_key("frugal", "public", daily_tokens=60)
    first = context(server, key="frugal", query="how do I descale the kettle", max_tokens=60)
    assert 50 < first["context_tokens"] <= 60 and first["budget"]["daily_tokens"] == 60
    assert first["budget"]["used_today"] == first["context_tokens"]
    second = server.post("/v1/context", {"query": "how do I descale the kettle", "max_tokens": 60}, key="frugal")
    assert second.status_code == 429
    assert "daily context-token budget of 60 tokens for key 'frugal'" in second.json()["detail"]
    assert 0 < int(second.headers["Retry-After"]) <= 86400
    # Search is not context: the budget does not stop it.
    assert server.post("/v1/search", {"query": "kettle"}, key="frugal").status_code == 200


@pytest.mark.parametrize(
    ("route", "body", "status", "names"),
    [
        ("/v1/search", {"query": "x" * 2001}, 422, "body.query"),
        ("/v1/search", {"query": ""}, 422, "body.query"),
        ("/v1/search", {"query": "   "}, 422, "query is empty"),
        ("/v1/search", {"query": "kettle", "k": 0}, 422, "body.k"),
        ("/v1/search", {"query": "kettle", "k": 101}, 422, "body.k: Input should be less than or equal to 100"),
        ("/v1/search", {"query": "kettle", "k": "5"}, 422, "body.k"),
        ("/v1/search", {"query": "kettle", "mode": "semantic"}, 422, "body.mode"),
        ("/v1/search", {"query": "kettle", "documents": "yes"}, 422, "body.documents"),
        ("/v1/search", {"query": "kettle", "filter": {"sku": ["x"]}}, 422, "body.filter: Extra inputs"),
        ("/v1/search", {"query": "kettle", "filters": {"updated_from": "2026-02-30"}}, 422, "filters.updated_from"),
        ("/v1/search", {"query": "kettle", "filters": {"updated_to": "last week"}}, 422, "filters.updated_to"),
        ("/v1/search", {"query": "kettle", "filters": {"updated_to": 20260101}}, 422, "filters.updated_to"),
        (
            "/v1/search",
            {"query": "kettle", "filters": {"updated_from": "2026-05-01", "updated_to": "2026-01-01"}},
            422,
            "must be before updated_to",
        ),
        ("/v1/search", {"query": "kettle", "filters": {"sku": [""]}}, 422, "filters.sku"),
        ("/v1/context", {"query": "kettle"}, 422, "body.max_tokens: Field required"),
        ("/v1/context", {"query": "kettle", "max_tokens": 0}, 422, "body.max_tokens"),
        ("/v1/context", {"query": "kettle", "max_tokens": 8001}, 422, "less than or equal to 8000"),
        ("/v1/context", {"query": "kettle", "max_tokens": 100, "k": 5}, 422, "body.k: Extra inputs"),
    ],
)
def test_request_limits_are_a_clear_4xx_naming_the_field(server, route, body, status, names):
    response = server.post(route, body)
    assert response.status_code == status, response.text
    assert names in response.json()["detail"]


def test_a_body_over_the_limit_is_413_before_it_is_read(server):
    big = {"query": "kettle", "filters": {"doc_type": ["x" * 150] * 40}}  # ~6 KB, limit 4 KB in these tests
    response = server.post("/v1/search", big)
    assert response.status_code == 413 and "4,096 bytes" in response.json()["detail"]

    def chunked():  # no Content-Length: the server counts what arrives
        yield b'{"query": "'
        for _ in range(10):
            yield b"x" * 1000
        yield b'"}'

    response = server.session.post(
        server.url + "/v1/search",
        data=chunked(),
        headers={"Authorization": f"Bearer {server.keys['internal']}", "Content-Type": "application/json"},
    )
    assert response.status_code == 413
    assert server.metric("rp_serve_refused_total", reason="body_size") >= 2
    assert server.post("/v1/search", {"query": "kettle"}).status_code == 200  # the server is fine


def test_malformed_json_is_a_422(server):
    response = server.session.post(
        server.url + "/v1/search",
        data=b'{"query": "kettle",',
        headers={"Authorization": f"Bearer {server.keys['internal']}", "Content-Type": "application/json"},
    )
    assert response.status_code == 422 and "JSON" in response.json()["detail"]


# --- context and prompts --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tokenizer() -> Tokenizer:
    """The embedding model's tokenizer, loaded here independently of the service."""
    tok = Tokenizer.from_file(str(resolve_model("all-MiniLM-L6-v2").path / "tokenizer.json"))
    tok.no_truncation()
    tok.no_padding()
    return tok


def count(tokenizer: Tokenizer, text: str) -> int:
    return len(tokenizer.encode(text, add_special_tokens=False).ids)


@pytest.mark.parametrize("max_tokens", [60, 120, 300, 1000])
def test_the_context_budget_is_honoured_exactly_with_the_named_tokenizer(server, tokenizer, max_tokens):
    body = context(server, query="how do I descale the kettle and what does E1 mean", max_tokens=max_tokens)
    assert body["tokenizer"] == "all-MiniLM-L6-v2" and body["max_tokens"] == max_tokens
    assert body["context_tokens"] == count(tokenizer, body["context"]) <= max_tokens
    citations = body["citations"]
    assert citations and [c["n"] for c in citations] == list(range(1, len(citations) + 1))
    ranks = [c["rank"] for c in citations]
    assert ranks == sorted(ranks), "citations keep the search's rank order"
    assert sum(c["tokens"] for c in citations) == body["context_tokens"]
    for citation in citations:
        assert f"[{citation['n']}] {citation['heading_path']} ({citation['doc_id']})" in body["context"]
    assert not any(c["truncated"] for c in citations[:-1])
    if citations[-1]["truncated"]:  # a cut chunk fills the budget up to a token or two
        assert body["context_tokens"] >= max_tokens - 2
    else:
        assert max_tokens == 1000 or body["context_tokens"] > max_tokens - 64
    assert body["prompt_tokens"] == count(tokenizer, body["rendered_prompt"])
    assert body["context"] in body["rendered_prompt"] and body["query_id"]


def test_the_context_skips_chunks_whose_text_it_already_has(server):
    body = context(server, key="confidential", query="legal notice warranty terms", max_tokens=4000)
    texts = [block.split("\n", 1)[1] for block in body["context"].split("\n\n[")]
    normalized = [" ".join(text.split()) for text in texts]
    assert len(normalized) == len(set(normalized))


def test_prompt_versions_resolve_by_name_version_and_label(server):
    catalog = load_prompts(PROJECT_DIR / "prompts")
    production, staging = catalog.labels[PROMPT]["production"], catalog.labels[PROMPT]["staging"]
    asked = {
        PROMPT: (production, "production"),
        f"{PROMPT}:production": (production, "production"),
        f"{PROMPT}:staging": (staging, "staging"),
        f"{PROMPT}@v1": ("v1", None),
        f"{PROMPT}@v2": ("v2", None),
    }
    rendered = {}
    for reference, (version, label) in asked.items():
        body = context(server, query="how do I descale the kettle", max_tokens=200, prompt=reference)
        assert body["prompt_version"] == f"{PROMPT}@{version}", reference
        assert (body["prompt"]["version"], body["prompt"]["label"]) == (version, label)
        assert body["prompt"]["release_note"] and body["prompt"]["model"]
        rendered[version] = body["rendered_prompt"]
    assert rendered["v1"] != rendered["v2"] and "list the sources you cited" in rendered["v2"]
    for reference, message in (
        ("no_such_prompt", "prompt 'no_such_prompt' is unknown"),
        (f"{PROMPT}@v99", "has no version 'v99': its versions are v1, v2"),
        (f"{PROMPT}:dev", "has no label 'dev'"),
        ("Answer With Citations", "is not a prompt reference"),
    ):
        response = server.post("/v1/context", {"query": "kettle", "max_tokens": 100, "prompt": reference})
        assert response.status_code == 422 and message in response.json()["detail"], reference


# --- feedback -------------------------------------------------------------------------------------


def test_feedback_is_checked_against_what_the_query_returned(server):
    asked = search(server, query="price match", k=3)
    query_id, results = asked["query_id"], asked["results"]
    accepted = server.post("/v1/feedback", {"query_id": query_id, "doc_id": results[0]["doc_id"], "label": "relevant"})
    assert accepted.status_code == 202 and re.fullmatch(r"[0-9a-f]{32}", accepted.json()["feedback_id"])
    by_chunk = {"query_id": query_id, "chunk_id": results[1]["chunk_id"], "label": "click", "comment": "helpful"}
    assert server.post("/v1/feedback", by_chunk).status_code == 202
    for body, status, message in (
        ({"query_id": query_id, "doc_id": "faq-not-returned", "label": "relevant"}, 422, "is not among the results"),
        ({"query_id": query_id, "chunk_id": "x:y:000", "label": "relevant"}, 422, "is not among the results"),
        (
            {"query_id": query_id, "chunk_id": results[0]["chunk_id"], "doc_id": "faq-other", "label": "click"},
            422,
            "belongs to document",
        ),
        ({"query_id": uuid.uuid4().hex, "doc_id": results[0]["doc_id"], "label": "relevant"}, 422, "is unknown"),
        ({"query_id": "not-a-query-id", "doc_id": results[0]["doc_id"], "label": "relevant"}, 422, "body.query_id"),
        ({"query_id": query_id, "label": "relevant"}, 422, "doc_id or chunk_id"),
        ({"query_id": query_id, "doc_id": results[0]["doc_id"], "label": "meh"}, 422, "body.label"),
        ({"query_id": query_id, "doc_id": results[0]["doc_id"], "label": "click", "rating": 5}, 422, "body.rating"),
    ):
        response = server.post("/v1/feedback", body)
        assert response.status_code == status and message in response.json()["detail"], (body, response.text)
    other_key = server.post(
        "/v1/feedback", {"query_id": query_id, "doc_id": results[0]["doc_id"], "label": "click"}, key="public"
    )
    assert other_key.status_code == 403 and "another key" in other_key.json()["detail"]


# --- operations -----------------------------------------------------------------------------------


def test_health_readiness_and_metrics(server):
    assert server.get("/healthz").json() == {"status": "ok"}
    ready = server.get("/readyz").json()
    assert ready["status"] == "ready" and ready["index"]["table"].startswith("chunks_") and ready["index"]["rows"] > 0
    assert ready["keys"]["active"] >= 3 and ready["keys"]["error"] is None
    assert {p["prompt"] for p in ready["prompts"]} >= {f"{PROMPT}@v1", f"{PROMPT}@v2"}
    search(server, query="kettle", mode="hybrid")
    text = server.get("/metrics").text
    assert 'rp_serve_requests_total{route="/v1/search",status="200"}' in text
    assert 'rp_serve_request_seconds_bucket{le="0.05",mode="hybrid",route="/v1/search"}' in text
    assert server.metric("rp_serve_index_version") == ready["index"]["version"]
    assert 'rp_serve_stage_seconds_count{mode="hybrid",stage="embed"}' in text
    assert "rp_serve_log_queue_depth" in text and "rp_serve_active_keys" in text
    assert server.metric("rp_serve_embedder_loads_total") == 1
