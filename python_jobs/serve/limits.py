"""Per-key guardrails: a request rate (the `limits` library, moving window) and a daily context-token budget.

Both live in the service's memory: one service process is one set of counters. The rate limit is a
moving window, so a key allowed 10/s never gets 20 requests through across a window edge. The token
budget counts the context tokens a key was served per UTC day; at startup it is seeded from the query
log of the day, so a restart does not hand out a second budget.
"""

from __future__ import annotations

import math
import threading
import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from fractions import Fraction

from limits import RateLimitItem, RateLimitItemPerSecond
from limits.storage import MemoryStorage
from limits.strategies import MovingWindowRateLimiter


def rate_item(rate_per_second: float) -> RateLimitItem:
    """`rate_per_second` as a whole number of requests per whole number of seconds: 2.5/s is 5 per 2 s,
    0.1/s is 1 per 10 s (`limits` counts whole requests)."""
    fraction = Fraction(rate_per_second).limit_denominator(3600)
    amount, seconds = fraction.numerator, fraction.denominator
    if amount < 1:  # slower than one request an hour: one an hour
        amount, seconds = 1, 3600
    return RateLimitItemPerSecond(amount, seconds)


class RateLimiter:
    """Requests per key, refused with the seconds to wait once the key's rate is used up."""

    def __init__(self) -> None:
        self._limiter = MovingWindowRateLimiter(MemoryStorage())
        self._items: dict[float, RateLimitItem] = {}

    def hit(self, name: str, rate_per_second: float) -> float | None:
        """Count one request of key `name`; None if allowed, else the seconds until one more is."""
        item = self._items.get(rate_per_second)
        if item is None:
            item = self._items[rate_per_second] = rate_item(rate_per_second)
        if self._limiter.hit(item, name):
            return None
        stats = self._limiter.get_window_stats(item, name)
        return max(stats.reset_time - time.time(), 0.0)


@dataclass(frozen=True)
class BudgetState:
    daily_tokens: int
    used: int

    @property
    def remaining(self) -> int:
        return max(self.daily_tokens - self.used, 0)


class TokenBudget:
    """Context tokens served per key per UTC day."""

    def __init__(self) -> None:
        self._used: dict[str, int] = {}
        self._day = _today()
        self._lock = threading.Lock()

    def seed(self, used_today: dict[str, int]) -> None:
        with self._lock:
            self._roll()
            for name, tokens in used_today.items():
                self._used[name] = self._used.get(name, 0) + tokens

    def state(self, name: str, daily_tokens: int) -> BudgetState:
        with self._lock:
            self._roll()
            return BudgetState(daily_tokens, self._used.get(name, 0))

    def try_charge(self, name: str, tokens: int, daily_tokens: int) -> BudgetState | None:
        """Charge `tokens` if they fit in what is left today: the state after, or None (nothing charged)."""
        with self._lock:
            self._roll()
            used = self._used.get(name, 0)
            if used + tokens > daily_tokens:
                return None
            self._used[name] = used + tokens
            return BudgetState(daily_tokens, used + tokens)

    def _roll(self) -> None:
        today = _today()
        if today != self._day:
            self._day, self._used = today, {}


def _today():
    return datetime.now(UTC).date()


def seconds_until_utc_midnight() -> int:
    now = datetime.now(UTC)
    midnight = datetime.combine(now.date() + timedelta(days=1), datetime.min.time(), tzinfo=UTC)
    return max(math.ceil((midnight - now).total_seconds()), 1)
