"""Where the gateway keeps what must survive a restart; chosen by the ``store:`` URL."""

from __future__ import annotations

from collections.abc import Sequence

from .base import Store

__all__ = ["Store", "open_store"]


async def open_store(url: str, plugin_migrations: Sequence[tuple[str, Sequence[str]]] = ()) -> Store:
    """Open the store at ``url`` (``sqlite:///PATH`` or ``postgresql://...``) and bring its
    schema up to date: the core's, then each plugin's ``(name, migrations)``."""
    if url.startswith("sqlite:///"):
        from .sqlite import SQLiteStore

        store: Store = SQLiteStore(url.removeprefix("sqlite:///"))
    elif url.startswith(("postgresql://", "postgres://")):
        from .postgres import PostgresStore

        store = PostgresStore(url)
    else:
        raise ValueError(f"unsupported store URL {url!r}: use sqlite:///PATH or postgresql://...")
    await store.open(plugin_migrations)
    return store
