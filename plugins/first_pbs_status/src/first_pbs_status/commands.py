"""Running a scheduler's commands: a :class:`CommandRunner` with one async method.

:class:`LocalRunner` runs them here, as child processes without a shell (``qstat``, or
``ssh login1 qstat`` for a scheduler on another host). Another runner can take its place,
e.g. one that runs the command on the cluster through a remote function.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shlex
import signal
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

__all__ = ["CommandError", "CommandResult", "CommandRunner", "LocalRunner", "shown"]


@dataclass(frozen=True, slots=True)
class CommandResult:
    exit_status: int
    stdout: bytes
    stderr: bytes

    def complaint(self) -> str:
        """The last line the command wrote to stderr (or stdout), for a message."""
        for stream in (self.stderr, self.stdout):
            lines = stream.decode("utf-8", "replace").strip().splitlines()
            if lines:
                return lines[-1][:300]
        return "it printed nothing"


class CommandError(Exception):
    """A command could not be run, or did not finish in time; the message says which."""


class CommandRunner(Protocol):
    async def run(self, argv: Sequence[str], *, stdin: bytes | None = None,
                  time_limit: float) -> CommandResult:
        """Run ``argv`` with ``stdin`` as its input; raise :class:`CommandError` if it cannot
        be started or runs longer than ``time_limit`` seconds."""
        ...


class LocalRunner:
    """Runs commands on this host, each in a process group of its own (killed on timeout)."""

    async def run(self, argv: Sequence[str], *, stdin: bytes | None = None,
                  time_limit: float) -> CommandResult:
        try:
            process = await asyncio.create_subprocess_exec(
                *argv, stdin=asyncio.subprocess.PIPE if stdin is not None else
                asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE, start_new_session=True)
        except OSError as e:
            raise CommandError(f"cannot run `{shown(argv)}`: {e.strerror or e}") from None
        try:
            async with asyncio.timeout(time_limit):
                stdout, stderr = await process.communicate(stdin)
        except TimeoutError:
            raise CommandError(f"`{shown(argv)}` did not finish within {time_limit:g} s") from None
        finally:
            if process.returncode is None:  # timed out or cancelled: end it and its children
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(process.pid, signal.SIGKILL)
                await process.wait()
        return CommandResult(process.returncode or 0, stdout, stderr)


class ComputeRunner:
    """Runs commands on the cluster through Globus Compute: each one is a task of the
    first_globus_compute plugin's ``scheduler_status`` function on the cluster's endpoint."""

    def __init__(self, gateway: Any, endpoint: str, function: str) -> None:
        self.gateway, self.endpoint, self.function = gateway, endpoint, function

    async def run(self, argv: Sequence[str], *, stdin: bytes | None = None,
                  time_limit: float) -> CommandResult:
        from first_globus_compute import run_function

        given = stdin.decode() if stdin is not None else None
        try:
            # The task gets the time limit too, and the gateway waits a little longer for it.
            result = await run_function(self.gateway, self.endpoint, self.function,
                                        (list(argv), time_limit, given), time_limit + 30.0)
        except Exception as e:
            raise CommandError(f"`{shown(argv)}` through Globus Compute: {e}") from None
        if not isinstance(result, dict) or not isinstance(result.get("returncode"), int):
            raise CommandError(f"`{shown(argv)}` through Globus Compute gave no result")
        return CommandResult(result["returncode"], str(result.get("stdout", "")).encode(),
                             str(result.get("stderr", "")).encode())


def shown(argv: Sequence[str]) -> str:
    """A command line as one would type it, cut short for messages."""
    line = shlex.join(argv)
    return line if len(line) <= 120 else line[:117] + "..."
