"""The built-in per-user request rate: buckets from gateway.yaml, and forgotten once idle."""

from __future__ import annotations

import pytest

from first_proxy.builtin import rate_limit
from first_proxy.config import parse_config
from first_proxy.gateway import Gateway
from first_proxy.plugins import get_plugin_manager
from first_proxy.testing import api_keys
from first_proxy.types import Denial, Identity


def gateway(**limits: float) -> Gateway:
    config = parse_config({"limits": limits, "auth": api_keys(
        {"name": "slow", "key": "sk-slow-0123456789", "requests_per_minute": 1})})
    return Gateway(config, get_plugin_manager(load_entrypoints=False))


def test_a_keys_own_rate_comes_from_gateway_yaml() -> None:
    gw = gateway(requests_per_minute=100)
    slow = Identity("key:slow")
    assert rate_limit.check_limits(slow, gw) is None
    denial = rate_limit.check_limits(slow, gw)
    assert isinstance(denial, Denial) and denial.status == 429 and "1 requests" in denial.reason
    # What an Identity carries is no limiter's setting.
    assert rate_limit.check_limits(Identity("key:other", extra={"requests_per_minute": 1}),
                                   gw) is None


def test_buckets_left_alone_are_forgotten(monkeypatch: pytest.MonkeyPatch) -> None:
    gw = gateway(requests_per_minute=100)
    for user in ("a", "b", "c"):
        rate_limit.check_limits(Identity(user), gw)
    limiter = gw.state["first_proxy.rate_limit"]
    assert set(limiter.buckets) == {"a", "b", "c"}
    monkeypatch.setattr(rate_limit, "_IDLE", 0.0)
    limiter.until_sweep = 1
    rate_limit.check_limits(Identity("d"), gw)
    assert set(limiter.buckets) == {"d"}
