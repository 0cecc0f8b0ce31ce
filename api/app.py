"""The FastAPI application: health, metrics, tokens and users.

DICOMweb (``/dicomweb``), WADO-URI and the viewer mount here as they arrive.
"""

from __future__ import annotations

import secrets
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import timedelta
from typing import Annotated

from fastapi import Depends, FastAPI, HTTPException, Response, status
from fastapi.middleware.cors import CORSMiddleware
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from pydantic import BaseModel, Field
from sqlalchemy import text

from api import (
    accounts,
    audit_trail,
    dicomweb,
    downloads,
    jobs,
    nodes,
    oidc,
    reports,
    routing_rules,
    sessions,
    share_links,
    study_access,
    viewer_site,
    wado_uri,
    worklist,
)
from api.audit import AuditLog, AuditMiddleware
from api.auth import Memory, Principal, current_user, require_role
from api.nul_bytes import RefuseNulBytes
from api.rate_limit import RateLimiter
from api.request_limits import RequestLimits
from api.security_headers import SecurityHeaders
from api.tokens import AccessTokens, signing_secret
from pacs.settings import Settings
from storage import Archive
from storage.users import (
    LOCAL_SITE,
    Role,
    UserError,
    create_user,
    list_users,
)

Authenticated = Annotated[Principal, Depends(current_user)]
Admin = Annotated[Principal, Depends(require_role(Role.ADMIN))]

# What a viewer on another origin sends (OHIF's quoted Accept forces a preflight)...
CORS_REQUEST_HEADERS = [
    "Accept",
    "Authorization",
    "Content-Type",
    "If-None-Match",
    "If-Modified-Since",
]
# ...and the response headers its scripts may read.
CORS_EXPOSED_HEADERS = [
    "Warning",
    "ETag",
    "Last-Modified",
    "Content-Location",
    "Content-Disposition",
    "WWW-Authenticate",
]


class UserIn(BaseModel):
    username: str = Field(min_length=1, max_length=64)
    password: str = Field(min_length=8, max_length=1024)
    role: Role
    # The sites (hospitals) the user works for; "" is this archive's own.
    sites: list[Annotated[str, Field(max_length=64)]] = Field([LOCAL_SITE], max_length=100)
    # For a referring doctor: the ReferringPhysicianName of the studies it may read.
    referring_name: str = Field("", max_length=324)


class UserOut(BaseModel):
    username: str
    role: Role
    sites: list[str] = []


def create_app(archive: Archive, settings: Settings | None = None) -> FastAPI:
    # Without settings (tests, embedding) the app signs tokens with a key of its own
    # instead of writing one into ./pacs-data.
    settings = settings or Settings(jwt_secret=secrets.token_urlsafe(32))
    audit_log = AuditLog(archive.sessions)

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        yield
        audit_log.close()  # the events still gathering are written before we exit

    app = FastAPI(title="Provincial imaging exchange", version="0.1.0", lifespan=lifespan)
    app.state.archive = archive
    app.state.settings = settings
    app.state.audit = audit_log
    app.state.memory = Memory()
    app.state.access_tokens = AccessTokens(
        signing_secret(settings.jwt_secret, settings.data_dir),
        timedelta(seconds=settings.access_token_seconds),
    )
    app.state.sign_in_limiter = RateLimiter(settings.sign_in_per_minute)
    app.add_middleware(AuditMiddleware, audit_log=app.state.audit)
    app.add_middleware(RequestLimits, max_body=settings.max_request_body_bytes)
    app.add_middleware(RefuseNulBytes)
    if settings.cors_origins:  # outermost, so errors (401, 404) carry CORS headers too
        app.add_middleware(
            CORSMiddleware,
            allow_origins=settings.cors_origins,
            allow_methods=["GET", "POST", "OPTIONS"],
            allow_headers=CORS_REQUEST_HEADERS,
            expose_headers=CORS_EXPOSED_HEADERS,
            max_age=600,
        )
    # Outermost: every response, a refusal by the middlewares inside included.
    app.add_middleware(SecurityHeaders, behind_tls_proxy=settings.behind_tls_proxy)
    app.include_router(sessions.router)
    app.include_router(oidc.router)
    app.include_router(accounts.router)
    app.include_router(dicomweb.router)
    app.include_router(wado_uri.router)
    app.include_router(nodes.router)
    app.include_router(jobs.router)
    app.include_router(routing_rules.router)
    app.include_router(worklist.router)
    app.include_router(reports.router)
    app.include_router(downloads.router)
    app.include_router(share_links.router)
    app.include_router(study_access.router)
    app.include_router(audit_trail.router)
    app.mount("/viewer", viewer_site.site())

    @app.get("/healthz", tags=["operations"])
    def healthz() -> dict[str, str]:
        """Liveness and readiness: the index answers a query."""
        with archive.sessions() as session:
            session.execute(text("SELECT 1"))
        return {"status": "ok"}

    @app.get("/metrics", tags=["operations"])
    def metrics(_: Authenticated) -> Response:
        """Prometheus metrics: instances received, bytes, store latency."""
        return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)

    @app.get("/api/me", tags=["auth"])
    def me(principal: Authenticated) -> UserOut:
        return UserOut(
            username=principal.username, role=principal.role, sites=sorted(principal.sites)
        )

    @app.get("/api/users", tags=["users"])
    def users(_: Admin) -> list[UserOut]:
        with archive.sessions() as session:
            return [
                UserOut(username=u.username, role=Role(u.role), sites=[s.site for s in u.sites])
                for u in list_users(session)
            ]

    @app.post("/api/users", status_code=status.HTTP_201_CREATED, tags=["users"])
    def add_user(body: UserIn, _: Admin) -> UserOut:
        with archive.sessions() as session:
            try:
                create_user(
                    session,
                    body.username,
                    body.password,
                    body.role,
                    body.sites,
                    body.referring_name,
                )
            except UserError as exc:
                raise HTTPException(status.HTTP_409_CONFLICT, str(exc)) from exc
            session.commit()
        app.state.memory.forget_callers()
        return UserOut(username=body.username, role=body.role, sites=sorted(set(body.sites)))

    return app
