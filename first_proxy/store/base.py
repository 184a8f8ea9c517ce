"""The one interface every store implements, and the request-log query it answers."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from ..types import RequestRecord

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

    async def open(self, plugin_migrations: Sequence[tuple[str, Sequence[str]]] = ()) -> None:
        """Connect and bring the schema up to date: the core's, then each plugin's."""

    async def close(self) -> None:
        """Release connections; nothing written is lost."""

    async def insert_requests(self, rows: Sequence[RequestRecord]) -> None:
        """Append request-log rows in one transaction."""

    async def recent_requests(self, limit: int = 50) -> list[dict[str, Any]]:
        """The newest request-log rows first."""

    async def find_requests(self, query: RequestQuery) -> list[dict[str, Any]]:
        """The request-log rows ``query`` asks for, newest first."""
    async def execute(self, sql: str, *params: Any) -> int:
        """Run one statement on a plugin's tables (``?`` placeholders); the rows it changed."""

    async def fetch(self, sql: str, *params: Any) -> list[dict[str, Any]]:
        """The rows of one query on a plugin's tables (``?`` placeholders)."""
