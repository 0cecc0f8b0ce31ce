"""The web viewer's static files at ``/viewer/``, public and locked down.

The files hold no patient data (that comes from ``/dicomweb`` and ``/api`` with the
user's token), so they need no user, like ``/docs``. Every response carries a strict
Content-Security-Policy: scripts and styles only from our origin, no inline script,
images only from our origin or the ``blob:`` URLs the viewer makes from
authenticated fetches, no framing. With every DICOM string inserted as text, a
patient named ``<img src=x onerror=alert(1)>`` stays a name.

``/viewer/presets.json`` is the window presets of :mod:`viewer.presets`, so the
viewer's buttons and the ``preset=`` parameter of ``rendered`` share one table.
"""

from __future__ import annotations

from pathlib import Path

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from viewer.presets import PRESETS

STATIC = Path(__file__).resolve().parents[1] / "viewer" / "static"

CONTENT_SECURITY_POLICY = "; ".join(
    (
        "default-src 'self'",
        "script-src 'self'",
        "style-src 'self'",
        "img-src 'self' blob: data:",
        "connect-src 'self'",
        "object-src 'none'",
        "base-uri 'none'",
        "form-action 'self'",
        "frame-ancestors 'none'",
    )
)
SECURITY_HEADERS = {
    "Content-Security-Policy": CONTENT_SECURITY_POLICY,
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
}


class SecurityHeaders:
    """ASGI middleware: :data:`SECURITY_HEADERS` on every response, errors included;
    files are revalidated (a 304 when unchanged) so a new release shows at once."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        async def with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = [
                    (name, value)
                    for name, value in message.get("headers", [])
                    if name.lower() != b"cache-control"
                ]
                headers += [(k.lower().encode(), v.encode()) for k, v in SECURITY_HEADERS.items()]
                headers.append((b"cache-control", b"no-cache"))
                message["headers"] = headers
            await send(message)

        await self.app(scope, receive, with_headers)


async def presets(_: Request) -> JSONResponse:
    table = {name: {"center": w.center, "width": w.width} for name, w in PRESETS.items()}
    return JSONResponse(table)


def site() -> ASGIApp:
    """The ASGI app to mount at ``/viewer``."""
    app = Starlette(
        routes=[
            Route("/presets.json", presets),
            Mount("/", StaticFiles(directory=STATIC, html=True)),
        ]
    )
    return SecurityHeaders(app)
