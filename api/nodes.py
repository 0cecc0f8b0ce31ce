"""``/api/nodes``: the remote DICOM node registry over HTTP (admin only).

The same registry as ``pacs node add|list|remove`` (:mod:`storage.nodes`).
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, HTTPException, Request, Response, status
from pydantic import BaseModel, Field

from api.auth import Principal, require_role
from storage.nodes import Node, NodeError, NodeExists, add_node, list_nodes, remove_node
from storage.users import Role

router = APIRouter(prefix="/api/nodes", tags=["nodes"])
Admin = Annotated[Principal, Depends(require_role(Role.ADMIN))]


class NodeBody(BaseModel):
    """A remote node: its DICOM address, its site, what it may do with us."""

    name: str = Field(min_length=1, max_length=64)
    ae_title: str = Field(min_length=1, max_length=16)
    host: str = Field(min_length=1, max_length=255)
    port: int = Field(ge=1, le=65535)
    site: str = Field("", max_length=64)
    tls: bool = False
    may_store: bool = True
    may_query: bool = True
    may_retrieve: bool = True


@router.get("")
def nodes(request: Request, _: Admin) -> list[NodeBody]:
    with request.app.state.archive.sessions() as session:
        return [NodeBody(**vars(node)) for node in list_nodes(session)]


@router.post("", status_code=status.HTTP_201_CREATED)
def add(request: Request, body: NodeBody, _: Admin) -> NodeBody:
    with request.app.state.archive.sessions() as session:
        try:
            node = add_node(session, Node(**body.model_dump()))
        except NodeError as exc:
            taken = isinstance(exc, NodeExists)
            code = status.HTTP_409_CONFLICT if taken else status.HTTP_422_UNPROCESSABLE_CONTENT
            raise HTTPException(code, str(exc)) from exc
        session.commit()
    return NodeBody(**vars(node))


@router.delete("/{name}", status_code=status.HTTP_204_NO_CONTENT)
def remove(request: Request, name: str, _: Admin) -> Response:
    with request.app.state.archive.sessions() as session:
        try:
            remove_node(session, name)
        except NodeError as exc:
            raise HTTPException(status.HTTP_404_NOT_FOUND, str(exc)) from exc
        session.commit()
    return Response(status_code=status.HTTP_204_NO_CONTENT)
