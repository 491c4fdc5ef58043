"""A request-body limit for an ASGI app, enforced while the body streams in (nothing is buffered here).

A body over the limit (declared by Content-Length or counted) makes the app's next read raise
ServeError("upload_too_large") -> 413. The rest of the body is read and dropped first (up to DRAIN_BYTES),
so that the client, still sending, gets the 413 instead of a reset connection.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from cfa_anomaly.serve.errors import ServeError

Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[MutableMapping[str, Any], Receive, Send], Awaitable[None]]
DRAIN_BYTES = 64 << 20


def _declared_length(scope: MutableMapping[str, Any]) -> int | None:
    for key, value in scope.get("headers", []):
        if key == b"content-length":
            try:
                return int(value)
            except ValueError:
                return None
    return None


class BodyLimit:
    """Wraps `receive` of HTTP requests: at most limit_for(path) bytes of body."""

    def __init__(self, app: ASGIApp, limit_for: Callable[[str], int]) -> None:
        self.app = app
        self.limit_for = limit_for

    async def __call__(self, scope: MutableMapping[str, Any], receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit = self.limit_for(scope["path"])
        declared = _declared_length(scope)
        received = 0
        finished = False

        async def limited_receive() -> Message:
            nonlocal received, finished
            if declared is not None and declared > limit and not finished:
                await drain()
                raise _too_large(declared, limit)
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                finished = not message.get("more_body", False)
                if received > limit:
                    partial = not finished
                    await drain()
                    raise _too_large(received, limit, at_least=partial)
            return message

        async def drain() -> None:
            nonlocal finished
            if not finished:
                await drain_body(receive)
            finished = True

        await self.app(scope, limited_receive, send)


async def drain_body(receive: Receive, most: int = DRAIN_BYTES) -> None:
    """Read and drop the rest of a request body (up to `most` bytes), so that a client still sending gets
    the answer instead of a reset connection."""
    dropped = 0
    while dropped < most:
        message = await receive()
        if message["type"] != "http.request":
            return
        dropped += len(message.get("body", b""))
        if not message.get("more_body", False):
            return


def _too_large(size: int, limit: int, at_least: bool = False) -> ServeError:
    more = "more than " if at_least else ""
    return ServeError("upload_too_large", f"the request body is {more}{size} bytes; this endpoint accepts at "
                                          f"most {limit} (--max-upload-mb)")
