"""Fixtures of the Globus Compute tests: a real endpoint engine for the session, a fake Compute
web service per test, and a site (an endpoint, the inference function registered there, the
reference upstream standing in for vLLM, ) to put gateways in front of."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator

import pytest
from first_globus_compute import remote
from globus_compute_support import Site, register

from first_proxy.testing import MakeGateway, ReferenceUpstream
from first_proxy.testing.globus_compute import FakeComputeService, LocalEndpoint


@pytest.fixture(scope="session")
def compute_engine(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalEndpoint]:
    """The endpoint software's engine, its workers started once for the session."""
    with LocalEndpoint(tmp_path_factory.mktemp("endpoint")) as engine:
        yield engine


@pytest.fixture
async def compute_service(compute_engine: LocalEndpoint) -> AsyncIterator[FakeComputeService]:
    async with FakeComputeService(compute_engine) as service:
        yield service


@pytest.fixture
async def site(compute_service: FakeComputeService, make_gateway: MakeGateway) -> AsyncIterator[Site]:
    async with ReferenceUpstream() as upstream:
        endpoint = compute_service.add_endpoint()
        function = await register(compute_service, remote.inference)
        yield Site(compute_service, upstream, make_gateway, endpoint, function)
