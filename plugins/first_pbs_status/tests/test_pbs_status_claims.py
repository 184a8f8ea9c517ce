"""Claims in the gateway's store: one holder per claim until it expires, shared by every
gateway process that opens the same store (here two stores on one SQLite file)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from first_pbs_status import NAME
from first_pbs_status.claims import MIGRATIONS, MemoryClaims, StoreClaims

from first_proxy.store import Store, open_store


class Clock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
async def stores(tmp_path: Path) -> AsyncIterator[tuple[Store, Store]]:
    url = f"sqlite:///{tmp_path}/shared.db"
    one = await open_store(url, [(NAME, MIGRATIONS)])
    two = await open_store(url, [(NAME, MIGRATIONS)])  # migrated already: nothing to do
    yield one, two
    await one.close()
    await two.close()


async def test_one_holder_until_the_claim_expires(stores: tuple[Store, Store]) -> None:
    clock = Clock()
    one, two = StoreClaims(stores[0], clock), StoreClaims(stores[1], clock)
    assert await one.claim("polaris/llama", "gateway-1", ttl=600)
    assert not await two.claim("polaris/llama", "gateway-2", ttl=600)
    assert await two.claim("sophia/llama", "gateway-2", ttl=600)  # another claim
    assert await one.claim("polaris/llama", "gateway-1", ttl=600)  # its holder renews it
    clock.now += 599
    assert not await two.claim("polaris/llama", "gateway-2", ttl=600)
    clock.now += 1
    assert await two.claim("polaris/llama", "gateway-2", ttl=600)  # expired: taken over
    assert not await one.claim("polaris/llama", "gateway-1", ttl=600)


async def test_a_claim_given_back_is_free(stores: tuple[Store, Store]) -> None:
    one, two = StoreClaims(stores[0]), StoreClaims(stores[1])
    assert await one.claim("polaris/llama", "gateway-1", ttl=600)
    await two.release("polaris/llama", "gateway-2")  # not its own: nothing happens
    assert not await two.claim("polaris/llama", "gateway-2", ttl=600)
    await one.release("polaris/llama", "gateway-1")
    assert await two.claim("polaris/llama", "gateway-2", ttl=600)
    assert await stores[0].fetch("SELECT claim, owner FROM first_pbs_status_claims") == [
        {"claim": "polaris/llama", "owner": "gateway-2"}]


async def test_memory_claims_behave_the_same() -> None:
    clock = Clock()
    claims = MemoryClaims(clock)
    assert await claims.claim("polaris/llama", "gateway-1", ttl=10)
    assert not await claims.claim("polaris/llama", "gateway-2", ttl=10)
    clock.now += 10
    assert await claims.claim("polaris/llama", "gateway-2", ttl=10)
    await claims.release("polaris/llama", "gateway-2")
    assert await claims.claim("polaris/llama", "gateway-1", ttl=10)
