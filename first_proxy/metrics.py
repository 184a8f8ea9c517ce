"""Prometheus metrics, one registry per gateway (no process-wide globals)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

if TYPE_CHECKING:
    from .requestlog import RequestRecord

__all__ = ["Metrics"]

_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)


class Metrics:
    """The gateway's counters and histograms, exposed at ``GET /metrics``."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.requests = Counter(
            "first_proxy_requests", "Inference requests answered.",
            ("model", "target", "status"), registry=r)
        self.latency = Histogram(
            "first_proxy_request_seconds", "Time from request to the last byte of the answer.",
            ("model", "target"), buckets=_LATENCY_BUCKETS, registry=r)
        self.ttft = Histogram(
            "first_proxy_time_to_first_token_seconds",
            "Time from request to the first byte of a streamed answer.",
            ("model", "target"), buckets=_LATENCY_BUCKETS, registry=r)
        self.tokens = Counter(
            "first_proxy_tokens", "Tokens reported by upstreams.",
            ("model", "kind"), registry=r)
        self.upstream_errors = Counter(
            "first_proxy_upstream_errors", "Failed attempts to reach a target (each one failed over).",
            ("model", "target", "kind"), registry=r)
        self.in_flight = Gauge(
            "first_proxy_in_flight_requests", "Requests being answered now.", registry=r)
        self.target_up = Gauge(
            "first_proxy_target_up", "1 if the target's last status check found it reachable.",
            ("model", "target"), registry=r)
        self.log_dropped = Counter(
            "first_proxy_request_log_dropped", "Log rows dropped because the store was unreachable "
            "for too long.", registry=r)
        # labels() takes a lock and builds a tuple; remember the children per label set.
        self._children: dict[tuple[str, str, int], tuple] = {}

    def observe(self, row: RequestRecord) -> None:
        key = (row.model or "", row.target or "", row.status)
        children = self._children.get(key)
        if children is None:
            children = (
                self.requests.labels(key[0], key[1], str(row.status)),
                self.latency.labels(key[0], key[1]),
                self.ttft.labels(key[0], key[1]),
                self.tokens.labels(key[0], "prompt"),
                self.tokens.labels(key[0], "completion"),
            )
            self._children[key] = children
        requests, latency, ttft, prompt, completion = children
        requests.inc()
        latency.observe(row.latency_ms / 1000)
        if row.ttft_ms is not None:
            ttft.observe(row.ttft_ms / 1000)
        if row.prompt_tokens:
            prompt.inc(row.prompt_tokens)
        if row.completion_tokens:
            completion.inc(row.completion_tokens)

    def upstream_error(self, model: str, target: str, kind: str) -> None:
        self.upstream_errors.labels(model, target, kind).inc()

    def render(self) -> bytes:
        return generate_latest(self.registry)
