"""Waiting for something to become true, without sleeping a fixed time."""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import Callable
from typing import Any

__all__ = ["eventually"]


async def eventually(condition: Callable[[], Any], *, within: float = 10.0) -> Any:
    """Poll ``condition`` (sync or async) until it is truthy and return its value.

    Raises ``TimeoutError`` naming the condition after ``within`` seconds.
    """
    try:
        async with asyncio.timeout(within):
            while True:
                value = condition()
                if inspect.isawaitable(value):
                    value = await value
                if value:
                    return value
                await asyncio.sleep(0.01)
    except TimeoutError:
        raise TimeoutError(f"still false after {within} s: {condition}") from None
