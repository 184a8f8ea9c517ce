"""Limits as leases: what an admitted call holds while it runs, settled when it ends."""

from __future__ import annotations

import inspect
import logging
from collections.abc import Awaitable, Mapping
from typing import Any, Protocol, runtime_checkable

__all__ = ["Lease", "Leases"]

log = logging.getLogger("first_proxy")


@runtime_checkable
class Lease(Protocol):
    """What ``check_limits`` returns for a call it admits under a limit.

    Exactly one of the two methods is called, once: ``settle`` with the usage the upstream
    reported when the call ends (``{}`` if it reported none), ``release`` when the call
    fails, is cancelled, or the gateway shuts down. Either may be ``async``.
    """

    def settle(self, usage: Mapping[str, Any]) -> Awaitable[None] | None: ...

    def release(self) -> Awaitable[None] | None: ...


class Leases:
    """The leases one call holds; ended together, once. A limiter that fails while ending
    its lease is logged and never fails the call."""

    __slots__ = ("_held",)

    def __init__(self, held: list[Lease]) -> None:
        self._held = held

    async def settle(self, usage: Mapping[str, Any] | None) -> None:
        await self._end("settle", usage or {})

    async def release(self) -> None:
        await self._end("release")

    async def _end(self, how: str, *args: Any) -> None:
        held, self._held = self._held, []
        for lease in held:
            try:
                result = getattr(lease, how)(*args)
                if inspect.isawaitable(result):
                    await result
            except Exception:
                log.exception("a limit's lease failed to %s", how)
