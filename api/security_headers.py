"""Security headers on every HTTP response, errors included.

- ``Content-Security-Policy: default-src 'none'; frame-ancestors 'none'`` on API,
  DICOMweb and WADO responses: they are data, never pages, so nothing in them may
  run or load, and no page may frame them (CSP Level 3 ``frame-ancestors``). The
  viewer sets its own, stricter-for-a-page policy (:mod:`api.viewer_site`), which is
  kept; ``/docs`` gets one that lets Swagger UI load from its CDN.
- ``X-Content-Type-Options: nosniff``, ``X-Frame-Options: DENY`` (for browsers without
  ``frame-ancestors``), ``Referrer-Policy: no-referrer`` (URLs name studies).
- ``Strict-Transport-Security`` (RFC 6797) only over TLS, or when ``behind_tls_proxy``
  says a TLS-terminating proxy is in front: over plain HTTP browsers ignore it, and
  sending it from a test server on http://localhost would be a lie.
- ``Cache-Control: no-store`` on ``/api/`` responses that do not set their own: JSON
  with patient data must not stay in shared or disk caches.

A header the route already set is left alone.
"""

from __future__ import annotations

from starlette.datastructures import MutableHeaders
from starlette.types import ASGIApp, Message, Receive, Scope, Send

API_POLICY = "default-src 'none'; frame-ancestors 'none'"
# FastAPI's Swagger UI and ReDoc pages: inline start-up script, assets from jsDelivr.
DOCS_POLICY = "; ".join(
    (
        "default-src 'none'",
        "script-src 'self' 'unsafe-inline' https://cdn.jsdelivr.net",
        "style-src 'self' 'unsafe-inline' https://cdn.jsdelivr.net",
        "img-src 'self' data: https://fastapi.tiangolo.com",
        "connect-src 'self'",
        "frame-ancestors 'none'",
    )
)
HSTS = "max-age=31536000; includeSubDomains"
COMMON = {
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
}


class SecurityHeaders:
    """ASGI middleware adding the headers above to every HTTP response."""

    def __init__(self, app: ASGIApp, behind_tls_proxy: bool = False) -> None:
        self.app = app
        self.behind_tls_proxy = behind_tls_proxy

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path: str = scope["path"]
        policy = DOCS_POLICY if path in ("/docs", "/redoc") else API_POLICY
        tls = self.behind_tls_proxy or scope.get("scheme") == "https"
        no_store = path.startswith("/api/")

        async def with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = MutableHeaders(scope=message)
                for name, value in COMMON.items():
                    headers.setdefault(name, value)
                headers.setdefault("Content-Security-Policy", policy)
                if tls:
                    headers.setdefault("Strict-Transport-Security", HSTS)
                if no_store:
                    headers.setdefault("Cache-Control", "no-store")
            await send(message)

        await self.app(scope, receive, with_headers)
