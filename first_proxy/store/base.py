"""The one interface every store implements."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol

from ..requestlog import RequestRecord

__all__ = ["Store"]


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
