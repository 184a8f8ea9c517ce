"""Per-user request rate: ``limits.requests_per_minute``, or ``requests_per_minute`` on a key.

A token bucket per user in this process, read from gateway.yaml: the default for everyone,
and each API key's own rate. A bucket left alone for a minute is full again, so it is
forgotten then (at most ``_MAX_USERS`` are kept). Limits shared across gateway instances come
from a plugin answering ``check_limits`` the same way.
"""

from __future__ import annotations

import time

from cachetools import TTLCache

from ..gateway import Gateway
from ..hookspecs import hookimpl
from ..types import Denial, Identity

_STATE = "first_proxy.rate_limit"
#: Buckets kept at most; beyond that the least recently used are forgotten first.
_MAX_USERS = 100_000


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


class _Limiter:
    def __init__(self, gateway: Gateway) -> None:
        config = gateway.config
        self.default = config.limits.requests_per_minute
        self.per_user = {f"key:{key.name}": key.requests_per_minute
                         for key in config.auth.api_keys if key.requests_per_minute is not None}
        # The longest refill is a minute: a bucket unused that long is full, as a new one.
        self.buckets: TTLCache[str, TokenBucket] = TTLCache(_MAX_USERS, ttl=60.0)


@hookimpl(trylast=True)
def check_limits(identity: Identity, gateway: Gateway) -> Denial | None:
    limiter: _Limiter | None = gateway.state.get(_STATE)
    if limiter is None:
        limiter = gateway.state[_STATE] = _Limiter(gateway)
    user = identity.user_id
    rate = limiter.per_user.get(user, limiter.default)
    if rate is None:
        return None
    bucket = limiter.buckets.get(user)
    if bucket is None:
        bucket = TokenBucket(rate)
    limiter.buckets[user] = bucket  # (re)set: the entry lives a minute from its last use
    wait = bucket.take()
    if not wait:
        return None
    return Denial(
        f"Rate limit of {rate:g} requests per minute reached for {identity.name!r}; "
        f"retry in {wait:.1f} s.",
        status=429, code="rate_limit_exceeded", retry_after=wait,
    )
