"""Where the gateway keeps what must survive a restart; chosen by the ``store:`` URL."""

from __future__ import annotations

import re
from collections.abc import Sequence

from .base import RequestQuery, Store

__all__ = ["RequestQuery", "Store", "open_store", "store_label"]


def store_label(url: str) -> str:
    """``url`` as it may be shown: a SQLite file's path; a PostgreSQL URL without its password
    or query (which may hold one)."""
    if url.startswith("sqlite:///"):
        return url.removeprefix("sqlite:///")
    scheme, _, rest = url.partition("://")
    place = re.split(r"[?#]", rest, maxsplit=1)[0]
    credentials, at, address = place.rpartition("@")
    user = credentials.split(":", 1)[0]
    return f"{scheme}://{user}{at}{address}"


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
    try:
        await store.open(plugin_migrations)
    except BaseException:  # a migration that failed: close what did open
        await store.close()
        raise
    return store
