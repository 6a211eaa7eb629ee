"""The service's Prometheus metrics (`GET /metrics`), in a registry of its own per app.

No label carries a caller, a query or a key: the label values are a few routes, statuses, modes and
reasons, so the number of series stays small whatever the traffic.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

# Requests of a sample index take milliseconds; a big index or a context request tens of them.
LATENCY_BUCKETS = (0.002, 0.005, 0.01, 0.02, 0.03, 0.05, 0.075, 0.1, 0.2, 0.5, 1.0, 2.5, 5.0)


class ServiceMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter(
            "rp_serve_requests", "HTTP requests answered, by route and status.", ["route", "status"], registry=r
        )
        self.latency = Histogram(
            "rp_serve_request_seconds",
            "Time to answer a request, by route and search mode (empty for routes without one).",
            ["route", "mode"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.stage = Histogram(
            "rp_serve_stage_seconds",
            "Time of one stage of a search or context request (embed, search, context), by mode.",
            ["stage", "mode"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.refused = Counter(
            "rp_serve_refused",
            "Requests refused by a guardrail, by reason (unauthenticated, rate, daily_tokens, body_size).",
            ["reason"],
            registry=r,
        )
        self.index_version = Gauge("rp_serve_index_version", "Version of the index table being served.", registry=r)
        self.index_rows = Gauge("rp_serve_index_rows", "Rows (chunks) of the index being served.", registry=r)
        self.index_swaps = Counter("rp_serve_index_swaps", "Index versions swapped in without a restart.", registry=r)
        self.index_swap_failures = Counter(
            "rp_serve_index_swap_failures",
            "Published versions the service could not open (it kept the old one).",
            registry=r,
        )
        self.embedder_loads = Counter(
            "rp_serve_embedder_loads",
            "Query embedders loaded (once, and again only when the model changes).",
            registry=r,
        )
        self.embed_batch = Histogram(
            "rp_serve_embed_batch_size",
            "Questions encoded in one forward pass of the model (concurrent requests share one).",
            buckets=(1, 2, 4, 8, 16, 32),
            registry=r,
        )
        self.active_keys = Gauge("rp_serve_active_keys", "Active API keys in the key file.", registry=r)
        self.log_queue_depth = Gauge(
            "rp_serve_log_queue_depth", "Query log and feedback rows waiting for the log writer.", registry=r
        )
        self.log_written = Counter(
            "rp_serve_log_rows_written", "Rows the log writer wrote to Parquet, by table.", ["table"], registry=r
        )
        self.log_dropped = Counter(
            "rp_serve_log_rows_dropped",
            "Rows the log writer dropped, by table and reason (queue_full, write_failed).",
            ["table", "reason"],
            registry=r,
        )

    def render(self) -> bytes:
        return generate_latest(self.registry)
