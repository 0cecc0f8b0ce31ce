"""``/api/studies/{study}/access``: who else a study is shared with.

A radiologist (or an administrator) who sees a study can share it with another
site (its radiologists then read it, e.g. a second opinion at a central hospital)
or with one user (a referring doctor). Forwarding to a node with a site adds such
a grant by itself (``reason: forwarded``). See :mod:`storage.scope`.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, HTTPException, Request, Response, status
from pydantic import BaseModel, Field

from api.audit import audited
from api.auth import Principal, memory, require_role
from api.params import RowId
from storage.scope import Grant, GrantError, NoSuchStudy, Reason, grant, grants, revoke
from storage.users import Role

router = APIRouter(prefix="/api", tags=["study access"])
Sharer = Annotated[Principal, Depends(require_role(Role.ADMIN, Role.RADIOLOGIST))]


class GrantIn(BaseModel):
    """A site or a user (exactly one)."""

    site: str = Field("", max_length=64)
    username: str = Field("", max_length=64)


@router.get("/studies/{study}/access", dependencies=[Depends(audited("access-list"))])
def list_grants(request: Request, study: str, _: Sharer) -> list[Grant]:
    with request.app.state.archive.sessions() as session:
        return grants(session, study)  # storage's rows, as they are


@router.post(
    "/studies/{study}/access",
    status_code=status.HTTP_201_CREATED,
    dependencies=[Depends(audited("access-grant"))],
)
def add_grant(request: Request, study: str, body: GrantIn, _: Sharer) -> Grant:
    """Share the study with ``site`` or ``username``; granting twice changes nothing."""
    with request.app.state.archive.sessions() as session:
        try:
            added = grant(
                session, study, Reason.SHARED, site=body.site.strip(), username=body.username
            )
        except NoSuchStudy as exc:
            raise HTTPException(status.HTTP_404_NOT_FOUND, str(exc)) from exc
        except GrantError as exc:
            raise HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT, str(exc)) from exc
        session.commit()
    return added


@router.delete(
    "/studies/{study}/access/{grant_id}",
    status_code=status.HTTP_204_NO_CONTENT,
    dependencies=[Depends(audited("access-revoke"))],
)
def remove_grant(request: Request, study: str, grant_id: RowId, _: Sharer) -> Response:
    with request.app.state.archive.sessions() as session:
        if not revoke(session, study, grant_id):
            raise HTTPException(status.HTTP_404_NOT_FOUND, f"no grant {grant_id} on this study")
        session.commit()
    memory(request).studies.clear()  # who saw the study through this grant stops now
    return Response(status_code=status.HTTP_204_NO_CONTENT)
