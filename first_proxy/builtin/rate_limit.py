"""Per-user request rate: ``limits.requests_per_minute``, or ``requests_per_minute`` on a key.

A token bucket per user in this process, read from gateway.yaml: the default for everyone,
and each API key's own rate. A bucket left alone for a minute is full again, as a new one
would be, so such buckets are forgotten by a sweep every ``_SWEEP_EVERY`` requests. Limits
shared across gateway instances come from a plugin answering ``check_limits`` the same way.
"""

from __future__ import annotations

import time

from ..gateway import Gateway
from ..hookspecs import hookimpl
from ..types import Denial, Identity

_STATE = "first_proxy.rate_limit"
#: Requests between two sweeps of the buckets left alone for a minute.
_SWEEP_EVERY = 4096
#: Seconds after which a bucket left alone is full again (the longest refill is a minute).
_IDLE = 60.0


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
        self.buckets: dict[str, TokenBucket] = {}
        self.until_sweep = _SWEEP_EVERY

    def sweep(self) -> None:
        self.until_sweep = _SWEEP_EVERY
        idle = time.monotonic() - _IDLE
        for user in [u for u, bucket in self.buckets.items() if bucket.updated < idle]:
            del self.buckets[user]


@hookimpl(trylast=True)
def check_limits(identity: Identity, gateway: Gateway) -> Denial | None:
    limiter: _Limiter | None = gateway.state.get(_STATE)
    if limiter is None:
        limiter = gateway.state[_STATE] = _Limiter(gateway)
    user = identity.user_id
    rate = limiter.per_user.get(user, limiter.default)
    if rate is None:
        return None
    limiter.until_sweep -= 1
    if not limiter.until_sweep:
        limiter.sweep()
    bucket = limiter.buckets.get(user)
    if bucket is None:
        bucket = limiter.buckets[user] = TokenBucket(rate)
    wait = bucket.take()
    if not wait:
        return None
    return Denial(
        f"Rate limit of {rate:g} requests per minute reached for {identity.name!r}; "
        f"retry in {wait:.1f} s.",
        status=429, code="rate_limit_exceeded", retry_after=wait,
    )
