"""Everything one running service holds: keys, limits, prompts, the tokenizer, the served index and the
log writer, and the background thread that keeps keys, prompts and the index current.

`Service(settings)` reads the key file and the prompts and loads the tokenizer at once, so a broken
one stops `rp serve` before it binds a port, with an error naming the file. The index is opened by the
poller once the service starts (the model takes seconds to load): until then /readyz answers 503.
"""

from __future__ import annotations

import logging
import threading
import time
from pathlib import Path

from python_jobs.common.errors import ConfigError
from python_jobs.common.settings import Settings
from python_jobs.serve import prompts as prompt_files
from python_jobs.serve.context import load_token_counter
from python_jobs.serve.keys import ApiKey, KeyRing
from python_jobs.serve.limits import RateLimiter, TokenBudget
from python_jobs.serve.metrics import ServiceMetrics
from python_jobs.serve.querylog import LogWriter, RecentQueries, tokens_used_today
from python_jobs.serve.swap import IndexHolder, ServedIndex

log = logging.getLogger(__name__)


class Service:
    def __init__(self, settings: Settings):
        self.settings = settings
        self.limits = settings.serve
        self.metrics = ServiceMetrics()
        self.keys = KeyRing(settings.keys_path)
        self.prompts_dir = _resolve(settings, self.limits.prompts_dir)
        self.prompts = prompt_files.load_prompts(self.prompts_dir)
        self._prompts_signature = prompt_files.signature(self.prompts_dir)
        self.tokens = load_token_counter(self.limits.tokenizer, settings.retrieval.embedding_model)
        self.rate = RateLimiter()
        self.budget = TokenBudget()
        self.recent = RecentQueries(self.limits.recent_queries)
        self.log_dir = settings.serve_log_dir
        self.writer = LogWriter(
            self.log_dir,
            self.limits.log_queue_size,
            self.limits.log_flush_seconds,
            on_written=lambda table, rows: self.metrics.log_written.labels(table).inc(rows),
            on_dropped=lambda table, reason, rows: self.metrics.log_dropped.labels(table, reason).inc(rows),
        )
        self.metrics.log_queue_depth.set_function(lambda: self.writer.depth)
        self.metrics.active_keys.set_function(lambda: len(self.keys.active))
        self.index = IndexHolder(
            settings,
            on_swap=self._swapped,
            on_embedder_load=self.metrics.embedder_loads.inc,
            on_embed_batch=self.metrics.embed_batch.observe,
        )
        self.prompts_error: str | None = None
        self._stop = threading.Event()
        self._poller: threading.Thread | None = None
        self._swaps = 0

    # --- lifecycle ------------------------------------------------------------------------------

    def start(self) -> None:
        self.budget.seed(tokens_used_today(self.log_dir))
        self.writer.start()
        self._poller = threading.Thread(target=self._poll, name="rp-serve-poller", daemon=True)
        self._poller.start()

    def stop(self) -> None:
        self._stop.set()
        if self._poller is not None:
            self._poller.join(timeout=60)
        self.writer.stop()

    def _poll(self) -> None:
        index_due = keys_due = 0.0
        tick = min(self.limits.index_poll_seconds, self.limits.keys_poll_seconds, 1.0)
        while not self._stop.is_set():
            now = time.monotonic()
            if now >= keys_due:
                keys_due = now + self.limits.keys_poll_seconds
                self.keys.refresh()
            if now >= index_due:
                index_due = now + self.limits.index_poll_seconds
                self.index.refresh()
                self._refresh_prompts()
            self._stop.wait(tick)

    def _swapped(self, served: ServedIndex) -> None:
        self.metrics.index_version.set(served.version)
        self.metrics.index_rows.set(served.rows)
        if self._swaps:
            self.metrics.index_swaps.inc()
        self._swaps += 1

    def _refresh_prompts(self) -> None:
        try:
            signature = prompt_files.signature(self.prompts_dir)
        except OSError:
            return
        if signature == self._prompts_signature:
            return
        self._prompts_signature = signature
        try:
            self.prompts = prompt_files.load_prompts(self.prompts_dir)
            self.prompts_error = None
            log.info("prompts reloaded from %s", self.prompts_dir)
        except ConfigError as exc:
            self.prompts_error = str(exc)
            log.error("keeping the prompts read before: %s", exc)

    # --- what requests ask ------------------------------------------------------------------------

    def rate_of(self, key: ApiKey) -> float:
        return key.rate_per_second or self.limits.default_rate_per_second

    def daily_tokens_of(self, key: ApiKey) -> int:
        return key.daily_tokens or self.limits.default_daily_tokens

    def readiness(self) -> dict:
        served = self.index.current
        index = None
        if served is not None:
            index = {
                "table": served.table,
                "version": served.version,
                "rows": served.rows,
                "published_at": served.pointer.published_at,
                "model": served.pointer.model.get("name"),
            }
        return {
            "status": "ready" if served is not None else "not ready",
            "index": index,
            "error": self.index.error,
            "keys": {"path": str(self.keys.path), "active": len(self.keys.active), "error": self.keys.error},
            "prompts": [*self.prompts.versions(), *([{"error": self.prompts_error}] if self.prompts_error else [])],
            "log": {
                "directory": str(self.log_dir),
                "queue_depth": self.writer.depth,
                "rows_written": dict(self.writer.written),
                "rows_dropped": dict(self.writer.dropped),
            },
        }


def _resolve(settings: Settings, path: str) -> Path:
    candidate = Path(path).expanduser()
    return candidate if candidate.is_absolute() else settings.project_dir / candidate
