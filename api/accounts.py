"""Account changes that end sessions: passwords, disabling, enabling.

A new password or a disabled account bumps the user's ``token_version`` and deletes
its refresh tokens (:func:`storage.users.end_sessions`); this process also forgets
every remembered caller, so the old access and refresh tokens and the old Basic
password are refused from the next request on. Other processes catch up within
``api.auth._BEARER_REMEMBER_SECONDS`` for tokens and a minute for Basic.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated

from fastapi import APIRouter, Depends, HTTPException, Request, Response, status
from pydantic import BaseModel, Field
from sqlalchemy.orm import Session

from api.auth import Principal, checked_sign_in, current_user, memory, require_role
from storage.users import Role, UserError, set_disabled, set_password

router = APIRouter(prefix="/api", tags=["users"])

Admin = Annotated[Principal, Depends(require_role(Role.ADMIN))]
Authenticated = Annotated[Principal, Depends(current_user)]


class NewPassword(BaseModel):
    password: str = Field(min_length=8, max_length=1024)


class PasswordChange(BaseModel):
    current_password: str = Field(max_length=1024)
    new_password: str = Field(min_length=8, max_length=1024)


@router.post("/users/{username}/disable", status_code=status.HTTP_204_NO_CONTENT)
def disable_user(request: Request, username: str, caller: Admin) -> Response:
    """Disable an account: every session ends at once and no sign-in works."""
    if username == caller.username:
        raise HTTPException(status.HTTP_409_CONFLICT, "an admin may not disable itself")
    _change(request, lambda session: set_disabled(session, username, True))
    return Response(status_code=status.HTTP_204_NO_CONTENT)


@router.post("/users/{username}/enable", status_code=status.HTTP_204_NO_CONTENT)
def enable_user(request: Request, username: str, _: Admin) -> Response:
    """Enable a disabled account again (its old sessions stay ended)."""
    _change(request, lambda session: set_disabled(session, username, False))
    return Response(status_code=status.HTTP_204_NO_CONTENT)


@router.put("/users/{username}/password", status_code=status.HTTP_204_NO_CONTENT)
def reset_password(request: Request, username: str, body: NewPassword, _: Admin) -> Response:
    """Set a user's password (an admin's reset); the user's sessions end."""
    _change(request, lambda session: set_password(session, username, body.password))
    return Response(status_code=status.HTTP_204_NO_CONTENT)


@router.post("/me/password", status_code=status.HTTP_204_NO_CONTENT)
def change_own_password(request: Request, body: PasswordChange, caller: Authenticated) -> Response:
    """Change one's own password, proving the current one (it counts towards the
    lock-out like any sign-in). Every session ends, this one included."""
    if caller.user_id is None:
        raise HTTPException(status.HTTP_403_FORBIDDEN, "only a user has a password")
    with request.app.state.archive.sessions() as session:
        try:
            checked_sign_in(request, session, caller.username, body.current_password)
        except HTTPException as exc:
            # 403, not 401: the caller is signed in; a client must not take this for an
            # expired session (the viewer would sign out).
            raise HTTPException(status.HTTP_403_FORBIDDEN, exc.detail) from exc
    _change(request, lambda session: set_password(session, caller.username, body.new_password))
    return Response(status_code=status.HTTP_204_NO_CONTENT)


def _change(request: Request, change: Callable[[Session], object]) -> None:
    with request.app.state.archive.sessions() as session:
        try:
            change(session)
        except UserError as exc:
            raise HTTPException(status.HTTP_404_NOT_FOUND, str(exc)) from exc
        session.commit()
    memory(request).forget_callers()
