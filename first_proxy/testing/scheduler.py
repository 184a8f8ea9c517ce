"""Stand-ins for a batch scheduler's commands (``qstat``, ``squeue``, ``qsub``, ...) for tests.

A plugin that runs a scheduler's commands as child processes is tested with these: real
executables on ``PATH`` that answer what the test tells them, switched at any time, and record
how they were called.
"""

from __future__ import annotations

import json
import os
import shlex
import sys
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

__all__ = ["FakeScheduler", "SchedulerCall"]

#: The commands made unless others are asked for.
COMMANDS = ("qstat", "pbsnodes", "qsub", "squeue", "sinfo", "sbatch")

_ANSWER = """\
import fcntl, json, sys, time

state, name = sys.argv[1], sys.argv[2]
given = sys.stdin.read() if sys.stdin is not None else ""
with open(f"{state}/{name}.calls", "a") as calls:
    fcntl.flock(calls, fcntl.LOCK_EX)
    calls.write(json.dumps({"argv": sys.argv[3:], "stdin": given}) + "\\n")
try:
    with open(f"{state}/{name}.json") as f:
        answer = json.load(f)
except FileNotFoundError:
    sys.stderr.write(f"{name}: this test set no answer for {name}\\n")
    sys.exit(2)
time.sleep(answer["delay"])
sys.stdout.write(answer["stdout"])
sys.stderr.write(answer["stderr"])
sys.exit(answer["exit_status"])
"""


@dataclass(frozen=True)
class SchedulerCall:
    """How a fake command was called: its arguments (without the name) and its input."""

    argv: list[str]
    stdin: str


class FakeScheduler:
    """Executables named like a scheduler's commands, in ``directory/bin``.

    Put :attr:`bin` first on ``PATH`` (``monkeypatch.setenv("PATH", fake.path)``). Each command
    answers what :meth:`answer` last set for it and records each call; one with no answer set
    exits with status 2 and says so on stderr.
    """

    def __init__(self, directory: Path, commands: Iterable[str] = COMMANDS) -> None:
        self.bin = directory / "bin"
        self._state = directory / "state"
        self.bin.mkdir(parents=True, exist_ok=True)
        self._state.mkdir(parents=True, exist_ok=True)
        script = self._state / "answer.py"
        script.write_text(_ANSWER)
        for name in commands:
            command = self.bin / name
            command.write_text(f"#!/bin/sh\nexec {shlex.quote(sys.executable)} "
                               f"{shlex.quote(str(script))} {shlex.quote(str(self._state))} "
                               f"{shlex.quote(name)} \"$@\"\n")
            command.chmod(0o755)

    @property
    def path(self) -> str:
        """``PATH`` with these commands first."""
        return f"{self.bin}{os.pathsep}{os.environ.get('PATH', '')}"

    def answer(self, command: str, stdout: str = "", *, exit_status: int = 0, stderr: str = "",
               delay: float = 0.0) -> None:
        """From now on ``command`` prints ``stdout`` and ``stderr`` after ``delay`` seconds and
        exits with ``exit_status``."""
        answer = {"stdout": stdout, "stderr": stderr, "exit_status": exit_status, "delay": delay}
        staged = self._state / f"{command}.json.new"
        staged.write_text(json.dumps(answer))
        staged.replace(self._state / f"{command}.json")  # a command never reads half of it

    def calls(self, command: str) -> list[SchedulerCall]:
        """Every call of ``command`` so far, oldest first."""
        try:
            lines = (self._state / f"{command}.calls").read_text().splitlines()
        except FileNotFoundError:
            return []
        return [SchedulerCall(**json.loads(line)) for line in lines]
