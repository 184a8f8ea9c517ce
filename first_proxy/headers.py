"""The gateway's own header names, as multidict's ``istr``, beside aiohttp's ``hdrs``.

aiohttp's header maps ignore case: looked up or set with a plain ``str``, a name has its case
folded on every request; an ``istr`` (like every name in ``aiohttp.hdrs``) carries its folded
form from the start.
"""

from __future__ import annotations

from multidict import istr

__all__ = ["API_KEY", "FIRST_TARGET", "REQUEST_ID"]

#: The request's id: the caller's if it sent one, else the gateway's; on every answer.
REQUEST_ID = istr("X-Request-Id")
#: The target that answered, unless ``server.expose_target`` is off.
FIRST_TARGET = istr("X-First-Target")
#: Where Anthropic's clients send their key.
API_KEY = istr("x-api-key")
