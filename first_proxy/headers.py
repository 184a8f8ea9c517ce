"""The names of the headers the request path reads and writes, as multidict's ``istr``.

aiohttp's header maps ignore case: looked up or set with a plain ``str``, a name has its case
folded on every request; an ``istr`` carries its folded form from the start.
"""

from __future__ import annotations

from aiohttp import hdrs
from multidict import istr

__all__ = ["API_KEY", "AUTHORIZATION", "CONTENT_ENCODING", "CONTENT_TYPE", "FIRST_TARGET",
           "REQUEST_ID", "SERVER"]

AUTHORIZATION = hdrs.AUTHORIZATION
CONTENT_ENCODING = hdrs.CONTENT_ENCODING
CONTENT_TYPE = hdrs.CONTENT_TYPE
SERVER = hdrs.SERVER
#: The request's id: the caller's if it sent one, else the gateway's; on every answer.
REQUEST_ID = istr("X-Request-Id")
#: The target that answered, unless ``server.expose_target`` is off.
FIRST_TARGET = istr("X-First-Target")
#: Where Anthropic's clients send their key.
API_KEY = istr("x-api-key")
