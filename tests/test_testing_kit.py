"""The testing kit: its library part needs no pytest, and pytest finds its fixtures by itself."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

import first_proxy.testing.pytest_plugin

#: Runs with pytest made unimportable, as in a gateway's environment without the test tools:
#: the kit serves a completion through a gateway, which is what ``serve --demo`` relies on.
WITHOUT_PYTEST = textwrap.dedent("""
    import asyncio
    import sys

    sys.modules["pytest"] = None  # any `import pytest` now raises ImportError

    import aiohttp

    import first_proxy.cli
    import first_proxy.testing.upstream
    from first_proxy.testing import (
        TEST_KEY, GatewayServer, MakeGateway, ReferenceBackend, ReferenceUpstream, api_keys,
        eventually)

    try:
        import first_proxy.testing.pytest_plugin
    except ImportError:
        pass
    else:
        sys.exit("the pytest guard did not work: the fixtures module imported")


    async def main():
        async with ReferenceUpstream() as upstream:
            config = {"auth": api_keys(), "store": "sqlite:///:memory:", "models": {"m": {
                "targets": [{"name": "a", "backend": "reference", "url": upstream.url,
                             "model": "reference-model"}]}}}
            async with GatewayServer(config, plugins=[ReferenceBackend()]) as server, \\
                    aiohttp.ClientSession() as session:
                async with session.post(
                        f"{server.base_url}/chat/completions",
                        headers={"Authorization": f"Bearer {TEST_KEY}"},
                        json={"model": "m", "messages": [{"role": "user", "content": "hi"}]},
                ) as response:
                    body = await response.json()
                await eventually(lambda: upstream.received)
        print(response.status, body["choices"][0]["message"]["content"])


    asyncio.run(main())
""")


def test_the_kit_works_where_pytest_cannot_be_imported() -> None:
    result = subprocess.run([sys.executable, "-c", WITHOUT_PYTEST], capture_output=True,
                            text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["200", "hi"]


def test_pytest_loads_the_fixtures_through_the_entry_point(
        pytestconfig: pytest.Config) -> None:
    loaded = {plugin: dist.metadata["Name"]
              for plugin, dist in pytestconfig.pluginmanager.list_plugin_distinfo()}
    assert loaded.get(first_proxy.testing.pytest_plugin) == "first-proxy"
