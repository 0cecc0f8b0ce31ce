"""Size limits on what a request may send, checked before a route sees it.

- The URL (path and query) at most :data:`MAX_URL_BYTES`: 414 URI Too Long
  (RFC 9110 §15.5.15). QIDO queries are short; a longer one is an attack or a bug.
- All header lines together at most :data:`MAX_HEADER_BYTES`: 431 Request Header
  Fields Too Large (RFC 6585 §5).
- A request body at most ``max_body`` bytes (the ``max_request_body_bytes`` setting):
  413 Content Too Large (RFC 9110 §15.5.14), at once when Content-Length says so,
  else as soon as the bytes read pass it (chunked bodies). STOW-RS
  (``POST /dicomweb/studies[/{study}]``) is exempt: it streams to disk under its own
  ``max_upload_bytes``.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable

from fastapi import HTTPException, status
from starlette.types import ASGIApp, Message, Receive, Scope, Send

MAX_URL_BYTES = 8 * 1024
MAX_HEADER_BYTES = 32 * 1024
_STOW = re.compile(r"^/dicomweb/studies(/[^/]+)?/?$")


class BodyRefused(HTTPException):
    """Raised from ``receive`` by a body check (:func:`run_checking_body`); FastAPI lets
    an HTTPException from body reading through, so the client gets its status."""


class BodyTooLarge(BodyRefused):
    """The body passed the limit: 413."""

    def __init__(self, limit: int) -> None:
        super().__init__(
            status.HTTP_413_CONTENT_TOO_LARGE,
            f"the request body is over the limit of {limit} bytes",
        )


class RequestLimits:
    """ASGI middleware enforcing the limits above."""

    def __init__(self, app: ASGIApp, max_body: int) -> None:
        self.app = app
        self.max_body = max_body

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        url_bytes = len(scope.get("raw_path") or scope["path"].encode()) + len(
            scope.get("query_string", b"")
        )
        if url_bytes > MAX_URL_BYTES:
            await refuse(send, 414, f"the URL is over the limit of {MAX_URL_BYTES} bytes")
            return
        headers: list[tuple[bytes, bytes]] = scope["headers"]
        if sum(len(name) + len(value) + 4 for name, value in headers) > MAX_HEADER_BYTES:
            await refuse(send, 431, f"the headers are over the limit of {MAX_HEADER_BYTES} bytes")
            return
        if scope["method"] == "POST" and _STOW.match(scope["path"]):
            await self.app(scope, receive, send)
            return
        declared = dict(headers).get(b"content-length", b"")
        if declared.isdigit() and int(declared) > self.max_body:
            await refuse(send, 413, BodyTooLarge(self.max_body).detail)
            return

        seen = 0

        def count(chunk: bytes) -> None:
            nonlocal seen
            seen += len(chunk)
            if seen > self.max_body:
                raise BodyTooLarge(self.max_body)

        await run_checking_body(self.app, scope, receive, send, count)


BodyCheck = Callable[[bytes], None]  # sees each body chunk; raises BodyRefused to refuse


async def run_checking_body(
    app: ASGIApp,
    scope: Scope,
    receive: Receive,
    send: Send,
    check: BodyCheck,
    *,
    close: bool = True,
) -> None:
    """Run ``app`` with every body chunk passed to ``check`` as it is read.

    A route reading the body gets the refusal's status from FastAPI; anything else
    reading it is answered here, unless its response has begun (then it is raised).
    ``close`` as for :func:`refuse`.
    """
    started = False

    async def checked() -> Message:
        message = await receive()
        if message["type"] == "http.request":
            check(message.get("body", b""))
        return message

    async def tracked(message: Message) -> None:
        nonlocal started
        started = started or message["type"] == "http.response.start"
        await send(message)

    try:
        await app(scope, checked, tracked)
    except BodyRefused as exc:
        if started:
            raise
        await refuse(send, exc.status_code, exc.detail, close=close)


async def refuse(send: Send, code: int, detail: str, *, close: bool = True) -> None:
    """Answer ``{"detail": ...}`` with ``code`` from ASGI middleware, before any route.

    ``close``: the rest of the request is not read, so the connection cannot be reused.
    """
    body = json.dumps({"detail": detail}).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    if close:
        headers.append((b"connection", b"close"))
    await send({"type": "http.response.start", "status": code, "headers": headers})
    await send({"type": "http.response.body", "body": body})
