"""The bundled gateway.yaml's demo model, called the way the FIRST user guide calls a model."""

from __future__ import annotations

import shutil
from collections.abc import AsyncIterator
from pathlib import Path

import openai
import pytest

from first_proxy.config import load_config
from first_proxy.testing import GatewayServer, ReferenceUpstream

REPO = Path(__file__).resolve().parent.parent
DEMO_KEY = "demo-key-change-me"  # the bundled file's key when FIRST_PROXY_API_KEY is unset
#: The user guide's chat request, sent to the demo model.
GUIDE_CHAT = {"model": "demo-model", "max_tokens": 150, "messages": [
    {"role": "user", "content": "Explain the concept of Globus Compute in simple terms."}]}


@pytest.fixture
async def demo(tmp_path: Path) -> AsyncIterator[GatewayServer]:
    """A gateway from the bundled gateway.yaml, its demo target a reference upstream."""
    pytest.importorskip("first_openai_direct")  # the demo target's backend, `openai`
    config_path = tmp_path / "gateway.yaml"  # so that its SQLite store lands in tmp_path
    shutil.copy(REPO / "gateway.yaml", config_path)
    async with ReferenceUpstream(models=["demo-model"]) as upstream:
        config = load_config(config_path, environ={"FIRST_PROXY_DEMO_URL": upstream.url})
        async with GatewayServer(config, load_entrypoints=True) as server:
            yield server


async def test_the_user_guides_pinned_path_reaches_the_demo_model(demo: GatewayServer) -> None:
    client = openai.AsyncOpenAI(base_url=f"{demo.url}/resource_server/local/vllm/v1",
                                api_key=DEMO_KEY, max_retries=0)
    raw = await client.chat.completions.with_raw_response.create(**GUIDE_CHAT)
    assert raw.headers["X-First-Target"] == "demo"
    assert raw.parse().choices[0].message.content == GUIDE_CHAT["messages"][0]["content"]
    stream = await client.chat.completions.create(**GUIDE_CHAT, stream=True)
    text = "".join([chunk.choices[0].delta.content or "" async for chunk in stream])
    assert text == GUIDE_CHAT["messages"][0]["content"]


async def test_the_federated_path_serves_the_same_model(demo: GatewayServer) -> None:
    client = openai.AsyncOpenAI(base_url=f"{demo.url}/resource_server/v1", api_key=DEMO_KEY,
                                max_retries=0)
    answer = await client.completions.create(model="demo-model", prompt="The future of AI is",
                                             max_tokens=100)
    assert answer.choices[0].text == "The future of AI is"
