"""The registry of remote DICOM nodes: other archives, workstations and modalities.

A node is a name the operators use (``central-hue``), the DICOM address of its
Application Entity (AE title, host, port; PS3.8 §7.1), the site whose patients it
sends (the issuer given to a patient without IssuerOfPatientID) and what it may
ask of us: store, query, retrieve. C-MOVE only ever sends to registered nodes.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, datetime

from sqlalchemy import select
from sqlalchemy.orm import Session

from storage.models import RemoteNode

_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
_HOST = re.compile(r"[A-Za-z0-9.:_-]{1,255}")


class NodeError(ValueError):
    """A node that cannot be added (bad field, name taken) or is not there."""


class NodeExists(NodeError):
    """The name is already registered."""


@dataclass(frozen=True)
class Node:
    """A registered node, detached from the database session."""

    name: str
    ae_title: str
    host: str
    port: int
    site: str = ""
    tls: bool = False
    may_store: bool = True
    may_query: bool = True
    may_retrieve: bool = True


def check_ae_title(value: str) -> str:
    """An AE title as PS3.5 §6.2 allows it (1-16 characters of the default repertoire,
    no backslash, not only spaces), stripped of padding; else NodeError."""
    title = value.strip()
    if not 1 <= len(title) <= 16:
        raise NodeError(f"AE title {value!r} must be 1 to 16 characters")
    if not title.isascii() or not title.isprintable() or "\\" in title:
        raise NodeError(f"AE title {value!r} may hold only printable ASCII without '\\'")
    return title


def add_node(session: Session, node: Node) -> Node:
    """Register ``node``; NodeError when a field is malformed or the name is taken."""
    if not _NAME.fullmatch(node.name):
        raise NodeError(f"node name {node.name!r}: 1 to 64 of letters, digits, '.', '_' and '-'")
    if not _HOST.fullmatch(node.host):
        raise NodeError(f"host {node.host!r} is not a host name or address")
    if not 1 <= node.port <= 65535:
        raise NodeError(f"port {node.port} is not between 1 and 65535")
    if len(node.site) > 64 or not node.site.isprintable():
        raise NodeError("a site is at most 64 printable characters")
    ae_title = check_ae_title(node.ae_title)
    if get_node(session, node.name) is not None:
        raise NodeExists(f"node {node.name!r} already exists")
    row = RemoteNode(
        name=node.name,
        ae_title=ae_title,
        host=node.host,
        port=node.port,
        site=node.site.strip(),
        tls=node.tls,
        may_store=node.may_store,
        may_query=node.may_query,
        may_retrieve=node.may_retrieve,
        created_at=datetime.now(UTC),
    )
    session.add(row)
    session.flush()
    return _detached(row)


def list_nodes(session: Session) -> list[Node]:
    return [_detached(row) for row in session.scalars(select(RemoteNode).order_by(RemoteNode.name))]


def get_node(session: Session, name: str) -> Node | None:
    row = session.scalar(select(RemoteNode).where(RemoteNode.name == name))
    return _detached(row) if row else None


def remove_node(session: Session, name: str) -> None:
    row = session.scalar(select(RemoteNode).where(RemoteNode.name == name))
    if row is None:
        raise NodeError(f"no node {name!r}")
    session.delete(row)


def node_for_ae(session: Session, ae_title: str, peer_host: str = "") -> Node | None:
    """The node a calling AE title belongs to, ``None`` when it is not registered.

    Two nodes may share an AE title (the same console model at two sites): the one
    registered at the peer's address wins, then the first by name.
    """
    rows = session.scalars(
        select(RemoteNode).where(RemoteNode.ae_title == ae_title.strip()).order_by(RemoteNode.name)
    ).all()
    if not rows:
        return None
    at_peer = [row for row in rows if row.host == peer_host]
    return _detached((at_peer or rows)[0])


def _detached(row: RemoteNode) -> Node:
    return Node(
        name=row.name,
        ae_title=row.ae_title,
        host=row.host,
        port=row.port,
        site=row.site,
        tls=row.tls,
        may_store=row.may_store,
        may_query=row.may_query,
        may_retrieve=row.may_retrieve,
    )
