"""GET /metrics: what the gateway counts, read back as Prometheus would read it."""

from __future__ import annotations

import asyncio
from typing import Any

import aiohttp
import openai
import pytest
from prometheus_client.parser import text_string_to_metric_families

from first_proxy import Status, Target
from first_proxy.testing import TEST_KEY, ReferenceBackend, ReferenceUpstream, eventually

AUTH = {"Authorization": f"Bearer {TEST_KEY}"}



async def scrape(url: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    """Every sample of ``GET {url}/metrics``, by name and labels."""
    async with aiohttp.ClientSession() as session, session.get(f"{url}/metrics") as response:
        assert response.status == 200
        assert response.headers["Content-Type"].startswith("text/plain")
        text = await response.text()
    return {(s.name, frozenset(s.labels.items())): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def sample(samples: dict, name: str, **labels: str) -> float | None:
    return samples.get((name, frozenset(labels.items())))


def config(upstream: ReferenceUpstream, *names: str) -> dict[str, Any]:
    return {"models": {"m": {"targets": [
        {"name": name, "backend": "reference", "url": upstream.url, "model": "reference-model"}
        for name in names or ("a",)]}}}


async def test_requests_latency_ttft_and_tokens(
    make_gateway: Any, reference_upstream: ReferenceUpstream
) -> None:
    server = await make_gateway(config(reference_upstream), plugins=[ReferenceBackend()])
    client = openai.OpenAI(base_url=server.base_url, api_key=TEST_KEY, max_retries=0)
    messages = [{"role": "user", "content": "one two three"}]
    plain = await asyncio.to_thread(client.chat.completions.create, model="m", messages=messages)

    def streamed() -> list[Any]:
        return list(client.chat.completions.create(
            model="m", messages=messages, stream=True, stream_options={"include_usage": True}))

    chunks = await asyncio.to_thread(streamed)
    stream_usage = chunks[-1].usage
    reference_upstream.fail_status = 503
    with pytest.raises(openai.APIStatusError):
        await asyncio.to_thread(client.chat.completions.create, model="m", messages=messages)

    samples = await scrape(server.url)
    assert sample(samples, "first_proxy_requests_total", model="m", target="a", status="200") == 2
    assert sample(samples, "first_proxy_requests_total", model="m", target="a", status="502") == 1
    assert sample(samples, "first_proxy_request_seconds_count", model="m", target="a") == 3
    assert sample(samples, "first_proxy_request_seconds_bucket", model="m", target="a",
                  le="+Inf") == 3
    assert sample(samples, "first_proxy_request_seconds_sum", model="m", target="a") > 0
    # Time to first token is measured for streamed answers only.
    assert sample(samples, "first_proxy_time_to_first_token_seconds_count",
                  model="m", target="a") == 1
    assert sample(samples, "first_proxy_tokens_total", model="m", kind="prompt") == (
        plain.usage.prompt_tokens + stream_usage.prompt_tokens)
    assert sample(samples, "first_proxy_tokens_total", model="m", kind="completion") == 6
    assert sample(samples, "first_proxy_upstream_errors_total", model="m", target="a",
                  kind="status") == 1
    assert sample(samples, "first_proxy_in_flight_requests") == 0


async def test_in_flight_gauge_follows_requests(
    make_gateway: Any, reference_upstream: ReferenceUpstream
) -> None:
    server = await make_gateway(config(reference_upstream), plugins=[ReferenceBackend()])
    reference_upstream.hang = True
    async with aiohttp.ClientSession() as session:
        pending = asyncio.create_task(session.post(
            f"{server.base_url}/chat/completions", headers=AUTH,
            json={"model": "m", "messages": [{"role": "user", "content": "hi"}]}))
        await eventually(lambda: reference_upstream.active == 1)
        samples = await scrape(server.url)
        assert sample(samples, "first_proxy_in_flight_requests") == 1
        pending.cancel()  # the caller gives up; the gateway lets go of the request
        await asyncio.gather(pending, return_exceptions=True)
    await eventually(lambda: server.gateway.metrics.registry.get_sample_value(
        "first_proxy_in_flight_requests") == 0)
    samples = await scrape(server.url)
    assert sample(samples, "first_proxy_in_flight_requests") == 0
    assert sample(samples, "first_proxy_requests_total", model="m", target="a", status="499") == 1


class Health:
    """Targets' statuses from a table the test changes."""

    def __init__(self) -> None:
        self.up: dict[str, bool] = {}

    def __call__(self, target: Target, gateway: object) -> Status:
        return Status(reachable=self.up.get(target.name, False))


async def test_target_up_after_refresh(
    make_gateway: Any, reference_upstream: ReferenceUpstream
) -> None:
    health = Health()
    server = await make_gateway(config(reference_upstream, "a", "b"),
                                plugins=[ReferenceBackend(status=health)])
    health.up = {"a": True, "b": False}
    await server.gateway.refresh_statuses()
    samples = await scrape(server.url)
    assert sample(samples, "first_proxy_target_up", model="m", target="a") == 1
    assert sample(samples, "first_proxy_target_up", model="m", target="b") == 0

    health.up = {"a": False, "b": True}
    await server.gateway.refresh_statuses()
    samples = await scrape(server.url)
    assert sample(samples, "first_proxy_target_up", model="m", target="a") == 0
    assert sample(samples, "first_proxy_target_up", model="m", target="b") == 1


async def test_unknown_models_add_no_label_values(
    make_gateway: Any, reference_upstream: ReferenceUpstream
) -> None:
    server = await make_gateway(config(reference_upstream), plugins=[ReferenceBackend()])
    async with aiohttp.ClientSession() as session:
        for i in range(3):
            async with session.post(
                f"{server.base_url}/chat/completions", headers=AUTH,
                json={"model": f"bogus-model-{i}", "messages": [{"role": "user", "content": "x"}]},
            ) as response:
                assert response.status == 404
    samples = await scrape(server.url)
    values = {value for _, labels in samples for _, value in labels}
    assert not any("bogus" in value for value in values)
    not_found = [v for (name, labels), v in samples.items()
                 if name == "first_proxy_requests_total" and ("status", "404") in labels]
    assert not_found == [3]
