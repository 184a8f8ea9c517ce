"""Per-user request rate: ``limits.requests_per_minute``, or ``requests_per_minute`` on a key.

A token bucket per user in this process. Limits shared across gateway instances come from a
plugin answering ``check_limits`` the same way.
"""

from __future__ import annotations

import time

from ..gateway import Gateway
from ..hookspecs import hookimpl
from ..types import Denial, Identity

_STATE = "first_proxy.rate_limit"


class TokenBucket:
    """``rate`` requests a minute, bursting up to ``rate`` at once."""

    __slots__ = ("capacity", "per_second", "tokens", "updated")

    def __init__(self, per_minute: float) -> None:
        self.capacity = max(per_minute, 1.0)
        self.per_second = per_minute / 60.0
        self.tokens = self.capacity
        self.updated = time.monotonic()

    def take(self) -> float:
        """0 if a request may go now, else the seconds until one may."""
        now = time.monotonic()
        self.tokens = min(self.capacity, self.tokens + (now - self.updated) * self.per_second)
        self.updated = now
        if self.tokens >= 1:
            self.tokens -= 1
            return 0.0
        return (1 - self.tokens) / self.per_second if self.per_second else float("inf")


@hookimpl(trylast=True)
def check_limits(identity: Identity, gateway: Gateway) -> Denial | None:
    rate = identity.extra.get("requests_per_minute", gateway.config.limits.requests_per_minute)
    if rate is None:
        return None
    buckets: dict[str, TokenBucket] = gateway.state.setdefault(_STATE, {})
    bucket = buckets.get(identity.user_id)
    if bucket is None:
        bucket = buckets[identity.user_id] = TokenBucket(rate)
    wait = bucket.take()
    if not wait:
        return None
    return Denial(
        f"Rate limit of {rate:g} requests per minute reached for {identity.name!r}; "
        f"retry in {wait:.1f} s.",
        status=429, code="rate_limit_exceeded", retry_after=wait,
    )
