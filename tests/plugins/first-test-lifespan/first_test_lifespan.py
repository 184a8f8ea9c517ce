"""first-proxy test plugin ``first_test_lifespan``: runs a child process for the gateway's life.

It stands in for a plugin that manages real processes (a local ``vllm serve``): the child
starts when the gateway starts, and is stopped and reaped when the gateway stops. The child's
pid is written to ``pid_file`` so that a test can look for it afterwards.

gateway.yaml::

    plugins:
      first_test_lifespan:
        pid_file: /tmp/child.pid
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sys
from collections.abc import AsyncIterator
from pathlib import Path

from first_proxy import Gateway, GatewayConfig, hookimpl

NAME = "first_test_lifespan"
#: What the child runs: nothing but waiting to be stopped.
CHILD = "import time\nwhile True:\n    time.sleep(60)"
#: Seconds a child has to exit after SIGTERM before it is killed.
STOP_WITHIN = 5.0

log = logging.getLogger(NAME)


@hookimpl
def check_config(config: GatewayConfig) -> list[tuple[str, str]]:
    pid_file = config.plugins.get(NAME, {}).get("pid_file")
    if not isinstance(pid_file, str) or not pid_file:
        return [(f"plugins.{NAME}.pid_file", "required: the file to write the child's pid to")]
    return []


@hookimpl
@contextlib.asynccontextmanager
async def lifespan(gateway: Gateway) -> AsyncIterator[None]:
    """Start the child; stop and reap it when the gateway stops, however it stops."""
    child = await asyncio.create_subprocess_exec(sys.executable, "-c", CHILD)
    try:
        pid_file = Path(gateway.plugin_config(NAME)["pid_file"])
        await asyncio.to_thread(pid_file.write_text, str(child.pid))
        log.info("child process %d started", child.pid)
        yield
    finally:
        await _stop(child)


async def _stop(child: asyncio.subprocess.Process) -> None:
    if child.returncode is None:
        child.terminate()
        try:
            async with asyncio.timeout(STOP_WITHIN):
                await child.wait()
        except TimeoutError:
            child.kill()
            await child.wait()
    log.info("child process %d stopped", child.pid)
