"""What every route does with an incoming request: its id, its caller, its body."""

from __future__ import annotations

import asyncio
import itertools
import logging
import os
import re

from aiohttp import HttpVersion11, hdrs, web
from aiohttp.web_protocol import RequestPayloadError

from ..errors import (
    AuthenticationError,
    BadRequest,
    ExpectationFailed,
    ProxyError,
    RequestTimeout,
    RequestTooLarge,
    internal_error,
)
from ..gateway import Gateway
from ..headers import API_KEY, REQUEST_ID
from ..inflight import EXPIRED, absorb
from ..keys import GATEWAY, IDENTITY
from ..pipeline import shown
from ..surfaces import OPENAI
from ..types import Identity

__all__ = ["authenticate", "credential", "expect_continue", "expect_no_body", "read_body",
           "request_id"]

log = logging.getLogger("first_proxy")

_SAFE_ID = re.compile(r"[A-Za-z0-9._-]{1,64}")
#: Request ids made here: random per process, then counted (32 hex digits, like a UUID's).
_ID_PREFIX = os.urandom(8).hex()
_id_numbers = itertools.count(1)


def request_id(request: web.Request) -> str:
    """The caller's ``X-Request-Id`` if it is safe to echo and log, else a new id."""
    given = request.headers.get(REQUEST_ID)
    if given is not None and _SAFE_ID.fullmatch(given):
        return given
    return f"{_ID_PREFIX}{next(_id_numbers):016x}"


def credential(request: web.Request, *, x_api_key: bool = False) -> str | None:
    """The token of ``Authorization: Bearer <token>`` (or, where ``x_api_key``, of the
    ``x-api-key`` header Anthropic's clients send), or None."""
    header = request.headers.get(hdrs.AUTHORIZATION)
    if header is not None:
        scheme, _, token = header.partition(" ")
        token = token.strip()
        if scheme.lower() == "bearer" and token:
            return token
    if x_api_key:
        return request.headers.get(API_KEY) or None
    return None


async def authenticate(request: web.Request, gateway: Gateway, *,
                       x_api_key: bool = False) -> Identity:
    """The caller's identity, or a 401 that says how to authenticate."""
    token = credential(request, x_api_key=x_api_key)
    identity = await gateway.hooks.authenticate(request, token)
    if identity is not None:
        return identity
    how = "'Authorization: Bearer <token>'" + (" or 'x-api-key: <key>'" if x_api_key else "")
    if token is None:
        if request.headers.get(hdrs.AUTHORIZATION) is not None:
            raise AuthenticationError(f"The Authorization header must read {how}.",
                                      code="invalid_authorization")
        raise AuthenticationError(f"No credentials were sent. Send your key or access token "
                                  f"as {how}.", code="missing_credentials")
    raise AuthenticationError(
        "The key or access token was not accepted: it is unknown, expired or revoked. "
        "Check it, or get a new one from your gateway administrator.")


async def read_body(request: web.Request, gateway: Gateway) -> bytes:
    """The request body, within ``server.max_body_bytes`` and ``server.body_timeout``; a 4xx
    that says what is wrong otherwise (too large, too slow, or not the encoding it claims)."""
    server = gateway.config.server
    # A body that has arrived whole (most do, with their headers) needs no deadline.
    task = None if request.content.is_eof() else asyncio.current_task(gateway.loop)
    if task is not None:
        gateway.in_flight.expire_in(task, server.body_timeout)
    try:
        return await request.read()
    except web.HTTPRequestEntityTooLarge:
        raise _too_large(gateway) from None
    except asyncio.CancelledError as e:
        if not absorb(e, EXPIRED):
            raise
        error: ProxyError = RequestTimeout(
            f"The request body did not arrive within {server.body_timeout:g} s; send it "
            "again.")
    except RequestPayloadError:
        encoding = request.headers.get(hdrs.CONTENT_ENCODING)
        error = BadRequest(
            f"The request body cannot be read as its Content-Encoding ({shown(encoding)}) says; "
            "send it uncompressed, or compressed as announced." if encoding else
            "The request body is malformed (a broken chunked encoding); send it again.",
            code="invalid_body")
    finally:
        if task is not None:
            gateway.in_flight.clear(task)
    # The rest of the body stays unread: the answer closes the connection.
    request.content.feed_eof()
    error.close_connection = True
    raise error


def _too_large(gateway: Gateway) -> RequestTooLarge:
    return RequestTooLarge(
        f"The request body is larger than the {gateway.config.server.max_body_bytes} bytes this "
        "gateway accepts. Send less, or ask the administrator to raise server.max_body_bytes.")


async def expect_continue(request: web.Request) -> web.StreamResponse | None:
    """Answer ``Expect: 100-continue`` only once the declared size and the credential pass,
    so that a body that would be refused is never sent."""
    gateway = request.app[GATEWAY]
    try:
        _check_expectation(request)
        size = request.content_length
        if size is not None and size > gateway.config.server.max_body_bytes:
            raise _too_large(gateway)
        request[IDENTITY] = await authenticate(request, gateway)
    except ProxyError as e:
        e.close_connection = True  # the body may follow anyway; it is not read
        return OPENAI.response(e, request_id(request), gateway.config.server.server_header)
    except Exception:
        # A plugin's credential check that fails: the 500 an inference request would get.
        rid = request_id(request)
        log.exception("unhandled error checking the credential of %s %s (request %s)",
                      request.method, request.path, rid)
        error = internal_error(rid)
        error.close_connection = True
        return OPENAI.response(error, rid, gateway.config.server.server_header)
    await _continue(request)
    return None


async def expect_no_body(request: web.Request) -> web.StreamResponse | None:
    """``Expect`` on the routes that read no body: ``100-continue`` is answered at once, as
    aiohttp does, and any other expectation gets a 417 in OpenAI's shape, not aiohttp's
    plain text."""
    try:
        _check_expectation(request)
    except ProxyError as e:
        e.close_connection = True
        return OPENAI.response(e, request_id(request),
                               request.app[GATEWAY].config.server.server_header)
    await _continue(request)
    return None


def _check_expectation(request: web.Request) -> None:
    if request.headers.get(hdrs.EXPECT, "").lower() != "100-continue":
        raise ExpectationFailed("Only 'Expect: 100-continue' is understood; leave out the "
                                "Expect header.")


async def _continue(request: web.Request) -> None:
    if request.version >= HttpVersion11:
        await request.writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
        request.writer.output_size = 0  # the answer proper has not begun
