"""Refuse NUL characters (U+0000) in URLs and JSON bodies: 400, before any route.

No identifier, match value, name or report text this server takes can contain
U+0000, and PostgreSQL text cannot hold one at all: passed on to a query, it failed
inside the driver as a 500. One check at the edge covers every path segment, query
parameter and JSON field, today's and future routes' alike:

- the URL: a raw NUL, or ``%00`` (decoded, it is the same character);
- a JSON body (``application/json``, ``*+json``): the escape ``\\u0000`` (RFC 8259 §7;
  a raw NUL is already invalid JSON), found while the body is read, chunk by chunk.
"""

from __future__ import annotations

import re

from fastapi import status
from starlette.types import ASGIApp, Receive, Scope, Send

from api.request_limits import BodyRefused, refuse, run_checking_body

# An escaped NUL: "\u0000" after an even run of backslashes (an odd one would make
# the first backslash of it part of an escaped "\\", followed by plain "u0000").
_ESCAPED_NUL = re.compile(rb"(?<!\\)(?:\\\\)*\\u0000")
_CARRY = 64  # bytes kept from one body chunk to the next, for a match across them


class NulInBody(BodyRefused):
    """An escaped NUL in a JSON body: 400."""

    def __init__(self) -> None:
        super().__init__(status.HTTP_400_BAD_REQUEST, "a NUL character (\\u0000) is not allowed")


class RefuseNulBytes:
    """ASGI middleware: 400 Bad Request for a NUL in the URL or in a JSON body."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        query: bytes = scope.get("query_string", b"")
        if "\x00" in scope["path"] or b"\x00" in query or b"%00" in query:
            await refuse(send, 400, "a NUL byte (%00) is not allowed in the URL", close=False)
            return
        if not _is_json(scope):
            await self.app(scope, receive, send)
            return
        tail = b""

        def look(chunk: bytes) -> None:
            nonlocal tail
            window = tail + chunk
            if _ESCAPED_NUL.search(window):
                raise NulInBody
            tail = window[-_CARRY:]

        await run_checking_body(self.app, scope, receive, send, look, close=False)


def _is_json(scope: Scope) -> bool:
    for name, value in scope["headers"]:
        if name == b"content-type":
            media = value.split(b";")[0].strip().lower()
            return media == b"application/json" or media.endswith(b"+json")
    return False
