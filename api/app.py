"""The FastAPI application: health, metrics, tokens and users.

DICOMweb (``/dicomweb``), WADO-URI and the viewer mount here as they arrive.
"""

from __future__ import annotations

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
    dicomweb,
    downloads,
    jobs,
    nodes,
    reports,
    routing_rules,
    share_links,
    viewer_site,
    wado_uri,
    worklist,
)
from api.audit import AuditLog, AuditMiddleware
from api.auth import Principal, current_user, principal_cache, require_role
from pacs.settings import Settings
from storage import Archive
from storage.users import Role, UserError, authenticate, create_user, issue_token, list_users

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


class TokenRequest(BaseModel):
    username: str = Field(max_length=64)
    password: str = Field(max_length=1024)


class TokenResponse(BaseModel):
    access_token: str
    token_type: str = "bearer"
    expires_at: str


class UserIn(BaseModel):
    username: str = Field(min_length=1, max_length=64)
    password: str = Field(min_length=8, max_length=1024)
    role: Role


class UserOut(BaseModel):
    username: str
    role: Role


def create_app(archive: Archive, settings: Settings | None = None) -> FastAPI:
    settings = settings or Settings()
    token_ttl = timedelta(seconds=settings.token_ttl_seconds)
    audit_log = AuditLog(archive.sessions)

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        yield
        audit_log.close()  # the events still gathering are written before we exit

    app = FastAPI(title="Provincial imaging exchange", version="0.1.0", lifespan=lifespan)
    app.state.archive = archive
    app.state.settings = settings
    app.state.audit = audit_log
    app.add_middleware(AuditMiddleware, audit_log=app.state.audit)
    if settings.cors_origins:  # outermost, so errors (401, 404) carry CORS headers too
        app.add_middleware(
            CORSMiddleware,
            allow_origins=settings.cors_origins,
            allow_methods=["GET", "POST", "OPTIONS"],
            allow_headers=CORS_REQUEST_HEADERS,
            expose_headers=CORS_EXPOSED_HEADERS,
            max_age=600,
        )
    app.include_router(dicomweb.router)
    app.include_router(wado_uri.router)
    app.include_router(nodes.router)
    app.include_router(jobs.router)
    app.include_router(routing_rules.router)
    app.include_router(worklist.router)
    app.include_router(reports.router)
    app.include_router(downloads.router)
    app.include_router(share_links.router)
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

    @app.post("/api/auth/token", tags=["auth"])
    def token(body: TokenRequest) -> TokenResponse:
        """Exchange a username and password for a bearer token."""
        with archive.sessions() as session:
            user = authenticate(session, body.username, body.password)
            if user is None:
                raise HTTPException(status.HTTP_401_UNAUTHORIZED, "wrong username or password")
            value, expires = issue_token(session, user, token_ttl)
            session.commit()
        return TokenResponse(access_token=value, expires_at=expires.isoformat())

    @app.get("/api/me", tags=["auth"])
    def me(principal: Authenticated) -> UserOut:
        return UserOut(username=principal.username, role=principal.role)

    @app.get("/api/users", tags=["users"])
    def users(_: Admin) -> list[UserOut]:
        with archive.sessions() as session:
            return [UserOut(username=u.username, role=Role(u.role)) for u in list_users(session)]

    @app.post("/api/users", status_code=status.HTTP_201_CREATED, tags=["users"])
    def add_user(body: UserIn, _: Admin) -> UserOut:
        with archive.sessions() as session:
            try:
                create_user(session, body.username, body.password, body.role)
            except UserError as exc:
                raise HTTPException(status.HTTP_409_CONFLICT, str(exc)) from exc
            session.commit()
        principal_cache.clear()
        return UserOut(username=body.username, role=body.role)

    return app
