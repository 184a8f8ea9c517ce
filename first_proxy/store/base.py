"""The one interface every store implements, and the request-log query it answers."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from ..requestlog import RequestRecord

__all__ = ["RequestQuery", "Store"]


@dataclass(frozen=True)
class RequestQuery:
    """Which request-log rows to read: each field that is set must match; newest first."""

    request_id: str | None = None
    user: str | None = None
    model: str | None = None
    #: The lowest and the highest status, both included: ``(404, 404)``, ``(500, 599)``.
    statuses: tuple[int, int] | None = None
    #: Only rows from this Unix time on.
    since: float | None = None
    limit: int = 50


class Store(Protocol):
    """Durable storage: opened once per gateway, used only off the request path."""

    async def open(self) -> None:
        """Connect and bring the schema up to date."""

    async def close(self) -> None:
        """Release connections; nothing written is lost."""

    async def insert_requests(self, rows: Sequence[RequestRecord]) -> None:
        """Append request-log rows in one transaction."""

    async def recent_requests(self, limit: int = 50) -> list[dict[str, Any]]:
        """The newest request-log rows first."""

    async def find_requests(self, query: RequestQuery) -> list[dict[str, Any]]:
        """The request-log rows ``query`` asks for, newest first."""
