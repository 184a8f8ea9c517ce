"""Streamed answers posted back by the remote function, relayed to the caller as they come.

Each streamed request opens a :class:`Stream`: an id for the callback URL, a secret only its
task is given, and a queue the caller's response reads from. The function POSTs SSE bytes to
``{callback_url}/globus_compute/streams/{id}`` with ``Authorization: Bearer <secret>`` and
``X-Stream-Offset`` (bytes it sent before), and says ``X-Stream-Done: 1`` on the last one.
The task's own result, when it comes, ends the stream too, and brings whatever the callback
could not deliver. Nothing here polls or waits for silence.
"""

from __future__ import annotations

import asyncio
import hmac
import secrets
from dataclasses import dataclass

from aiohttp import web

from first_proxy import OPENAI, UpstreamResponse
from first_proxy.api.incoming import request_id
from first_proxy.errors import AuthenticationError, BadRequest, NotFound, ProxyError, UpstreamError

__all__ = ["CALLBACK_ROUTE", "MAX_POST_BYTES", "End", "Stream", "Streams"]

#: The callback route, below the gateway's public base URL (``callback_url``).
CALLBACK_ROUTE = "/globus_compute/streams/{stream}"
#: The largest POST the callback takes; the function sends at most this much at once.
MAX_POST_BYTES = 64 * 1024


@dataclass(frozen=True, slots=True)
class End:
    """How a stream ended: cleanly, with an error, or with an answer that was not streamed."""

    error: UpstreamError | None = None
    answer: UpstreamResponse | None = None


class Stream:
    """One streamed answer on its way from a task to a caller."""

    __slots__ = ("ended", "id", "queue", "received", "secret")

    def __init__(self) -> None:
        self.id = secrets.token_urlsafe(16)
        self.secret = secrets.token_urlsafe(32)
        self.queue: asyncio.Queue[bytes | End] = asyncio.Queue()
        #: Bytes of the answer passed on so far.
        self.received = 0
        self.ended = False

    def feed(self, offset: int, data: bytes) -> bool:
        """Pass on ``data``, which starts ``offset`` bytes into the answer, less what came
        already (a POST may be sent again). False when bytes before it are missing."""
        if offset > self.received:
            return False
        fresh = data[self.received - offset:]
        if fresh and not self.ended:
            self.received += len(fresh)
            self.queue.put_nowait(fresh)
        return True

    def end(self, how: End) -> None:
        """The answer is complete, or failed; only the first end counts."""
        if not self.ended:
            self.ended = True
            self.queue.put_nowait(how)


class Streams:
    """The streams open on this gateway instance, and the callback route that feeds them."""

    def __init__(self) -> None:
        self._open: dict[str, Stream] = {}

    def __len__(self) -> int:
        return len(self._open)

    def open(self) -> Stream:
        stream = Stream()
        self._open[stream.id] = stream
        return stream

    def is_open(self, stream: Stream) -> bool:
        return self._open.get(stream.id) is stream

    def close(self, stream: Stream) -> None:
        """Forget ``stream``: its task's later posts are answered 404, which stops it."""
        self._open.pop(stream.id, None)

    async def handle(self, request: web.Request) -> web.Response:
        """``POST CALLBACK_ROUTE``: take the bytes a task posts for its stream."""
        try:
            return await self._take(request)
        except ProxyError as e:
            return OPENAI.response(e, request_id(request))

    async def _take(self, request: web.Request) -> web.Response:
        stream = self._open.get(request.match_info["stream"])
        if stream is None:  # the code tells the function to stop (remote.inference)
            raise NotFound("This stream is unknown or has ended; stop sending.",
                           code="stream_not_found")
        scheme, _, secret = request.headers.get("Authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(secret.encode(),
                                                                  stream.secret.encode()):
            raise AuthenticationError("Send the stream's secret as 'Authorization: Bearer "
                                      "<secret>'.", code="invalid_stream_secret")
        length = request.content_length
        if length is None or length > MAX_POST_BYTES:
            error = BadRequest(f"Send at most {MAX_POST_BYTES} bytes per POST, with a "
                               "Content-Length.", code="stream_post_too_large")
            error.status = 413
            raise error
        offset = request.headers.get("X-Stream-Offset", "")
        if not offset.isdigit():
            raise BadRequest("X-Stream-Offset must say how many bytes of the answer came "
                             "before these.", code="invalid_stream_offset")
        data = await request.read()
        if not stream.feed(int(offset), data):
            error = BadRequest(f"Bytes {stream.received} to {offset} of the answer never "
                               "arrived.", code="stream_gap")
            error.status = 409
            raise error
        if request.headers.get("X-Stream-Done") == "1":
            stream.end(End())
            self.close(stream)
        return web.Response(status=204)
