"""How each target fares for this gateway: a circuit breaker, and the calls it answers now.

The pipeline tells :class:`Health` how each attempt went (:meth:`Health.failed`,
:meth:`Health.succeeded`); the built-in selection ranks a target that is cooled down last.
After ``cooldown_failures`` failures in a row a target is cooled down for ``cooldown_seconds``;
once that is over it is tried again, and each retry that fails doubles the cool-down, up to
``cooldown_max_seconds``. Its first success forgets it all.

It also counts the calls each target is answering for this gateway (:meth:`Health.began`,
:meth:`Health.ended`): a target's reported load is as old as its last status check, and
between two checks the built-in selection would send every call to the target that was the
least loaded at the last one.

No I/O and no lock: the gateway runs on one event loop, and the request path pays a few dict
lookups.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

from .types import Target

__all__ = ["Health"]


@dataclass(slots=True)
class _Failing:
    #: Failures in a row.
    count: int = 0
    #: The cool-down earned last, in seconds; 0 until the first.
    backoff: float = 0.0
    #: The clock's time at which the cool-down ends.
    until: float = 0.0


class Health:
    """Consecutive failures per target (by :attr:`Target.key`), and the cool-downs they earn."""

    def __init__(self, failures: int = 3, seconds: float = 30.0, max_seconds: float = 600.0,
                 *, clock: Callable[[], float] = time.monotonic) -> None:
        self.threshold = failures
        self.seconds = seconds
        self.max_seconds = max(max_seconds, seconds)
        self.clock = clock
        self._failing: dict[str, _Failing] = {}
        #: Target key -> the calls it is answering for this gateway now.
        self.busy: dict[str, int] = {}

    def began(self, target: Target) -> None:
        """A call was sent to ``target``; :meth:`ended` follows once, when it is over."""
        busy = self.busy
        busy[target.key] = busy.get(target.key, 0) + 1

    def ended(self, target: Target) -> None:
        """The call sent to ``target`` is over: answered, failed or given up."""
        self.busy[target.key] -= 1

    def failed(self, target: Target) -> None:
        """An attempt at ``target`` failed (a connection error, a timeout, a 5xx, ...)."""
        if not self.threshold:
            return
        entry = self._failing.get(target.key)
        if entry is None:
            entry = self._failing[target.key] = _Failing()
        entry.count += 1
        if entry.count < self.threshold:
            return
        now = self.clock()
        if entry.until > now:
            return  # tried while cooled down, as the last resort: the cool-down stands
        entry.backoff = (self.seconds if not entry.backoff
                         else min(entry.backoff * 2, self.max_seconds))
        entry.until = now + entry.backoff

    def succeeded(self, target: Target) -> None:
        """An attempt at ``target`` got an answer: its failures are forgotten."""
        if self._failing:
            self._failing.pop(target.key, None)

    def cooled(self) -> frozenset[str]:
        """The keys of the targets cooled down now."""
        if not self._failing:
            return _NONE
        now = self.clock()
        return frozenset(key for key, entry in self._failing.items() if entry.until > now)

    def state(self, target: Target) -> dict[str, float] | None:
        """For people: ``target``'s failures in a row and the seconds its cool-down has left
        (0 when it is not cooled down); None when its last attempt succeeded."""
        entry = self._failing.get(target.key)
        if entry is None:
            return None
        return {"failures": entry.count,
                "cooldown_left": round(max(0.0, entry.until - self.clock()), 3)}


_NONE: frozenset[str] = frozenset()
