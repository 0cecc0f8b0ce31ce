"""``/api/routes``: routing rules over HTTP (admin only).

A rule forwards every complete study that matches it to its destination nodes
(:mod:`storage.routing`); conditions left empty match anything.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, HTTPException, Request, Response, status
from pydantic import BaseModel, Field

from api.auth import Principal, require_role
from storage.routing import Rule, RuleError, RuleExists, add_rule, list_rules, remove_rule
from storage.users import Role

router = APIRouter(prefix="/api/routes", tags=["forwarding"])
Admin = Annotated[Principal, Depends(require_role(Role.ADMIN))]


class RuleBody(BaseModel):
    """Forward studies from ``calling_ae`` / ``site`` with a series of ``modality`` and
    ``body_part``, and whose index attributes match ``attributes`` (keyword or tag ->
    value, ``*`` and ``?`` wildcards), to each node in ``destinations``."""

    name: str = Field(min_length=1, max_length=64)
    destinations: list[str] = Field(min_length=1, max_length=32)
    calling_ae: str = Field("", max_length=16)
    site: str = Field("", max_length=64)
    modality: str = Field("", max_length=16)
    body_part: str = Field("", max_length=16)
    attributes: dict[str, str] = Field(default_factory=dict, max_length=32)


@router.get("")
def rules(request: Request, _: Admin) -> list[RuleBody]:
    with request.app.state.archive.sessions() as session:
        return [RuleBody(**vars(rule)) for rule in list_rules(session)]


@router.post("", status_code=status.HTTP_201_CREATED)
def add(request: Request, body: RuleBody, _: Admin) -> RuleBody:
    with request.app.state.archive.sessions() as session:
        try:
            rule = add_rule(session, Rule(**body.model_dump()))
        except RuleError as exc:
            taken = isinstance(exc, RuleExists)
            code = status.HTTP_409_CONFLICT if taken else status.HTTP_422_UNPROCESSABLE_CONTENT
            raise HTTPException(code, str(exc)) from exc
        session.commit()
    return RuleBody(**vars(rule))


@router.delete("/{name}", status_code=status.HTTP_204_NO_CONTENT)
def remove(request: Request, name: str, _: Admin) -> Response:
    with request.app.state.archive.sessions() as session:
        try:
            remove_rule(session, name)
        except RuleError as exc:
            raise HTTPException(status.HTTP_404_NOT_FOUND, str(exc)) from exc
        session.commit()
    return Response(status_code=status.HTTP_204_NO_CONTENT)
