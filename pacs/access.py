"""Who is calling on a DICOM association, and what they may do.

The calling AE title (PS3.8 §9.3.2) is looked up once per association in the node
registry. A registered node gets its site (the issuer of the patients it sends)
and exactly the rights it was registered with; an AE that is not registered may
store (modalities push without being registered), and may query and retrieve
unless the settings say otherwise. In strict mode an AE that is not registered
may not even associate (:meth:`Access.admits`).
"""

from __future__ import annotations

import logging
import threading
import weakref
from enum import StrEnum

from pynetdicom import evt
from pynetdicom.association import Association

from pacs.settings import Settings
from storage import Archive
from storage.nodes import Node, node_for_ae

log = logging.getLogger(__name__)

NOT_AUTHORIZED = 0x0124  # PS3.7 C.5.x "Refused: Not Authorized"


class Right(StrEnum):
    STORE = "store"
    QUERY = "query"
    RETRIEVE = "retrieve"


class Access:
    """The calling node of each association, looked up once and remembered."""

    def __init__(self, archive: Archive, settings: Settings) -> None:
        self.archive = archive
        self.settings = settings
        self._nodes: weakref.WeakKeyDictionary[Association, Node | None] = (
            weakref.WeakKeyDictionary()
        )
        self._lock = threading.Lock()

    def node(self, event: evt.Event) -> Node | None:
        """The registered node behind the association, ``None`` for an unknown AE."""
        assoc = event.assoc
        with self._lock:
            if assoc in self._nodes:
                return self._nodes[assoc]
        node = self.lookup(str(assoc.requestor.ae_title), str(assoc.requestor.address))
        with self._lock:
            self._nodes[assoc] = node
        return node

    def lookup(self, ae_title: str, address: str) -> Node | None:
        """The registered node for a calling AE title at ``address`` (not remembered)."""
        with self.archive.sessions() as session:
            return node_for_ae(session, ae_title.strip(), address)

    def admits(self, ae_title: str, address: str) -> bool:
        """Strict mode (``PACS_DICOM_STRICT_NODES``): may this caller associate at all?
        Only a registered node's AE title may.

        The peer's address is not compared with the node's host: that host is where we
        send to (C-MOVE, forwarding), which for a modality behind NAT, a cluster or a
        multi-homed machine is not the address its calls come from, and a host name
        would need a DNS look-up on every association. An AE title is a name, not a
        credential; callers are authenticated by client certificates on the TLS port
        (``PACS_DICOM_TLS_REQUIRE_CLIENT_CERT``)."""
        return self.lookup(ae_title, address) is not None

    def refusal(self, event: evt.Event, right: Right) -> str | None:
        """Why the caller may not do ``right`` (an ErrorComment), ``None`` if it may."""
        return self.refusal_for(self.node(event), str(event.assoc.requestor.ae_title), right)

    def refusal_for(self, node: Node | None, ae_title: str, right: Right) -> str | None:
        """:meth:`refusal` for a caller already looked up."""
        ae_title = ae_title.strip()
        if node is None:
            allowed = {
                Right.STORE: True,
                Right.QUERY: self.settings.unknown_nodes_may_query,
                Right.RETRIEVE: self.settings.unknown_nodes_may_retrieve,
            }[right]
            reason = f"AE {ae_title} is not a registered node"
        else:
            allowed = getattr(node, f"may_{right.value}")
            reason = f"node {node.name} ({ae_title}) may not {right.value}"
        if allowed:
            return None
        log.warning("refused %s from %s: %s", right.value, ae_title, reason)
        return reason[:64]
