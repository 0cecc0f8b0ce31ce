"""Who may talk to the archive over DICOM, and how: per-node rights on every path,
strict mode (only registered nodes associate), and the DICOM TLS port (PS3.15 B.1),
against a real ``pacs serve`` with DCMTK's TLS-enabled tools as the peers.

Rights on the other paths are tested beside their services: lean C-STORE in
tests/test_nodes.py, C-FIND in tests/test_find.py, C-MOVE in tests/test_move.py.
"""

from __future__ import annotations

import socket
import ssl
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from pydicom import dcmread
from pydicom.uid import ExplicitVRLittleEndian
from pynetdicom import AE
from pynetdicom.sop_class import (
    CTImageStorage,
    StudyRootQueryRetrieveInformationModelFind,
)

from storage.blobs import blob_key
from tests.conftest import ADMIN_PASSWORD, Server, require_tool, run
from tests.test_cstore import (
    assert_stored_as_sent,
    ct_copy,
    dataset_offset,
    stored_path,
)
from tests.test_find import CT_STUDY, MR_STUDY, load_samples
from tests.test_move import _certificates, parse, register

NOT_AUTHORIZED = 0x0124
CALLING_AE_NOT_RECOGNISED = "Calling AE Title Not Recognized"


def dcmtk(tool: str, *args: str | Path, port: int, files: tuple[Path, ...] = ()) -> str:
    """Run a DCMTK tool against 127.0.0.1:``port`` (called AE PACS); its whole output."""
    command = [require_tool(tool), "-d", "-aec", "PACS", *args, "127.0.0.1", port, *files]
    done = run([str(arg) for arg in command])
    return done.stdout + done.stderr


def accepted(output: str) -> bool:
    return "Association Accepted" in output


# --- per-node rights on the paths not covered elsewhere --------------------------------------


@pytest.fixture(scope="module")
def strict_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """Strict mode, holding the sample studies, with four registered nodes."""
    data = tmp_path_factory.mktemp("strict") / "pacs-data"
    load_samples(data)
    srv = Server(data, {"PACS_DICOM_STRICT_NODES": "true"})
    srv.start()
    with httpx.Client(base_url=srv.base_url, auth=("admin", ADMIN_PASSWORD)) as api:
        register(api, "known", "KNOWN", 104)
        register(api, "no-store", "NOSTORE", 104, may_store=False)
        register(api, "no-get", "NOGET", 104, may_retrieve=False)
        register(api, "no-query", "NOQUERY", 104, may_query=False)
    yield srv
    srv.stop()


def test_c_get_needs_the_retrieve_right(strict_server: Server, tmp_path: Path) -> None:
    """C-GET, served by pynetdicom: 0x0124 with the reason, nothing sent."""
    out = tmp_path / "got"
    out.mkdir()
    keys = ["-k", "QueryRetrieveLevel=STUDY", "-k", f"StudyInstanceUID={CT_STUDY}"]
    refused = parse(dcmtk("getscu", "-S", "-aet", "NOGET", "-od", out, *keys,
                          port=strict_server.dicom_port))  # fmt: skip
    assert refused.status == NOT_AUTHORIZED, refused.output[-2000:]
    assert refused.comment == "node no-get (NOGET) may not retrieve"
    assert not any(out.iterdir())
    allowed = parse(dcmtk("getscu", "-S", "-aet", "KNOWN", "-od", out, *keys,
                          port=strict_server.dicom_port))  # fmt: skip
    assert allowed.status == 0 and len(list(out.iterdir())) == 24


def test_store_needs_the_store_right_on_the_pynetdicom_path(
    strict_server: Server, tmp_path: Path
) -> None:
    """An association that also proposes C-FIND is served by pynetdicom, not the lean SCP:
    the store right holds there too, and nothing of the refused instance is kept."""
    path = ct_copy(tmp_path, "ct.dcm")
    uid = str(dcmread(path).SOPInstanceUID)
    statuses = {}
    for ae_title in ("NOSTORE", "KNOWN"):
        ae = AE(ae_title)
        for context in (CTImageStorage, StudyRootQueryRetrieveInformationModelFind):
            ae.add_requested_context(context, ExplicitVRLittleEndian)
        assoc = ae.associate("127.0.0.1", strict_server.dicom_port, ae_title="PACS")
        assert assoc.is_established
        response = assoc.send_c_store(path)
        assoc.release()
        statuses[ae_title] = (response.Status, str(response.get("ErrorComment", "")))
        if ae_title == "NOSTORE":
            with strict_server.opened() as archive:
                assert not archive.blobs.exists(blob_key(uid))
    assert statuses["NOSTORE"] == (NOT_AUTHORIZED, "node no-store (NOSTORE) may not store")
    assert statuses["KNOWN"] == (0, "")
    with strict_server.opened() as archive:
        assert_stored_as_sent(archive, path)


# --- strict mode --------------------------------------------------------------------------


def test_strict_mode_rejects_unknown_calling_ae_titles(
    strict_server: Server, tmp_path: Path
) -> None:
    """PS3.8 9.3.4: A-ASSOCIATE-RJ, permanent, source service user, reason 3, whether
    the association would be served lean (echo, store) or by pynetdicom (find)."""
    port = strict_server.dicom_port
    assert accepted(dcmtk("echoscu", "-aet", "KNOWN", port=port))
    path = ct_copy(tmp_path, "ct.dcm")
    for tool, args, files in (
        ("echoscu", [], ()),
        ("storescu", [], (path,)),
        ("findscu", ["-S", "-k", "QueryRetrieveLevel=STUDY", "-k", "StudyInstanceUID"], ()),
    ):
        output = dcmtk(tool, "-aet", "STRANGER", *args, port=port, files=files)
        assert not accepted(output), output[-2000:]
        assert "Rejected Permanent" in output and "Service User" in output, output[-2000:]
        assert CALLING_AE_NOT_RECOGNISED in output, output[-2000:]
    with strict_server.opened() as archive:
        assert not archive.blobs.exists(blob_key(str(dcmread(path).SOPInstanceUID)))
    # A registered node still gets exactly its own rights.
    found = dcmtk("findscu", "-S", "-aet", "NOQUERY", "-k", "QueryRetrieveLevel=STUDY",
                  "-k", "StudyInstanceUID", port=port)  # fmt: skip
    assert accepted(found) and "0x0124" in found
    log = (strict_server.data_dir / "server.log").read_text()
    assert "rejected association from STRANGER (127.0.0.1): not a registered node" in log


# --- the DICOM TLS port ---------------------------------------------------------------------


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return _certificates(tmp_path_factory.mktemp("tls") / "certs")


@pytest.fixture(scope="module")
def tls_server(
    tmp_path_factory: pytest.TempPathFactory, certs: dict[str, Path]
) -> Iterator[Server]:
    """The sample studies behind a TLS port that requires client certificates; the
    server certificate doubles as our client certificate for outgoing TLS."""
    data = tmp_path_factory.mktemp("tls-server") / "pacs-data"
    load_samples(data)
    srv = Server(data, {"PACS_TLS_CA_FILE": str(certs["ca.crt"]),
                        "PACS_TLS_CERT_FILE": str(certs["server.crt"]),
                        "PACS_TLS_KEY_FILE": str(certs["server.key"]),
                        "PACS_DICOM_TLS_REQUIRE_CLIENT_CERT": "true"})  # fmt: skip
    srv.start()
    yield srv
    srv.stop()


def trusted(certs: dict[str, Path]) -> list[str | Path]:
    """DCMTK options: TLS with the CA-signed client certificate, the server's checked."""
    return ["+tls", certs["client.key"], certs["client.crt"], "+cf", certs["ca.crt"]]


def test_echo_find_and_store_over_tls(
    tls_server: Server, certs: dict[str, Path], tmp_path: Path
) -> None:
    """echoscu and storescu (served lean) and findscu (served by pynetdicom) over TLS."""
    port = tls_server.dicom_tls_port
    echo = dcmtk("echoscu", *trusted(certs), port=port)
    assert accepted(echo) and "Received Echo Response (Success)" in echo, echo[-2000:]
    path = ct_copy(tmp_path, "ct.dcm")
    stored = dcmtk("storescu", *trusted(certs), port=port, files=(path,))
    assert "DIMSE Status                  : 0x0000: Success" in stored, stored[-2000:]
    found = dcmtk("findscu", *trusted(certs), "-S", "-k", "QueryRetrieveLevel=STUDY",
                  "-k", f"StudyInstanceUID={MR_STUDY}", "-k", "PatientName", port=port)  # fmt: skip
    assert accepted(found) and "PN [Đặng^Thị Hoa ]" in found, found[-2000:]
    assert "0x0000: Success: Matching is complete" in found, found[-2000:]
    with tls_server.opened() as archive:
        assert_stored_as_sent(archive, path)


def test_a_data_set_over_tls_is_stored_byte_for_byte(
    tls_server: Server, certs: dict[str, Path], tmp_path: Path
) -> None:
    """pynetdicom as the TLS peer, streaming the file's data set bytes untouched
    (storescu re-encodes): the stored data set is those very bytes."""
    path = ct_copy(tmp_path, "ct.dcm")
    context = ssl.create_default_context(cafile=str(certs["ca.crt"]))
    context.load_cert_chain(certs["client.crt"], certs["client.key"])
    ae = AE("TLSSCU")
    ae.add_requested_context(CTImageStorage, ExplicitVRLittleEndian)
    assoc = ae.associate("127.0.0.1", tls_server.dicom_tls_port, ae_title="PACS",
                         tls_args=(context, "127.0.0.1"))  # fmt: skip
    assert assoc.is_established
    status = assoc.send_c_store(path).Status
    assoc.release()
    assert status == 0
    with tls_server.opened() as archive:
        stored = stored_path(archive, str(dcmread(path).SOPInstanceUID))
        sent = path.read_bytes()[dataset_offset(path) :]
        assert stored.read_bytes()[dataset_offset(stored) :] == sent


def test_who_the_tls_port_refuses(tls_server: Server, certs: dict[str, Path]) -> None:
    """A client certificate the CA did not sign, none at all, a plain DICOM client and
    a peer that connects and says nothing: each fails on its own, and meanwhile the
    server goes on serving on both ports."""
    port = tls_server.dicom_tls_port
    silent = socket.create_connection(("127.0.0.1", port))  # holds a handshake open
    try:
        rogue = ["+tls", certs["rogue.key"], certs["rogue.crt"], "+cf", certs["ca.crt"]]
        anonymous = ["+tla", "+cf", certs["ca.crt"]]
        for options in (rogue, anonymous, []):
            started = time.monotonic()
            output = dcmtk("echoscu", *options, port=port)
            assert not accepted(output), output[-2000:]
            assert time.monotonic() - started < 10, "the refusal should be prompt"
        assert accepted(dcmtk("echoscu", *trusted(certs), port=port))
        assert accepted(dcmtk("echoscu", port=tls_server.dicom_port))
    finally:
        silent.close()
    log = (tls_server.data_dir / "server.log").read_text()
    assert "TLS handshake with 127.0.0.1 failed" in log
    assert tls_server.process is not None and tls_server.process.poll() is None


def test_c_move_to_our_own_tls_port(tls_server: Server, tmp_path: Path) -> None:
    """Our outgoing TLS (pacs.scu, PS3.15 B.1) meets our TLS listener: a C-MOVE to a node
    registered with ``tls`` that is this archive's own TLS port, our certificate checked
    both ways. The instance is already stored (sent by an AE titled PACS, as the
    sub-operation is), so it arrives as an idempotent success."""
    path = ct_copy(tmp_path, "ct.dcm")
    sent = dcmtk("storescu", "-aet", "PACS", port=tls_server.dicom_port, files=(path,))
    assert "0x0000: Success" in sent, sent[-2000:]
    with httpx.Client(base_url=tls_server.base_url, auth=("admin", ADMIN_PASSWORD)) as api:
        body = {"name": "ourselves", "ae_title": "PACS", "host": "127.0.0.1",
                "port": tls_server.dicom_tls_port, "tls": True}  # fmt: skip
        assert api.post("/api/nodes", json=body).status_code == 201
    study = str(dcmread(path).StudyInstanceUID)
    keys = ["-k", "QueryRetrieveLevel=STUDY", "-k", f"StudyInstanceUID={study}"]
    moved = parse(dcmtk("movescu", "-S", "-aem", "PACS", *keys, port=tls_server.dicom_port))
    assert moved.status == 0 and moved.completed == 1 and moved.failed == 0, moved.output[-2000:]
    log = (tls_server.data_dir / "server.log").read_text()
    assert "storage association from PACS" in log


def test_a_certificate_that_cannot_be_loaded_stops_the_start(tmp_path: Path) -> None:
    """A TLS port without its certificate would be a silent hole: ``pacs serve`` says why
    and exits 2."""
    missing = {"PACS_TLS_CERT_FILE": str(tmp_path / "no.crt"), "PACS_TLS_KEY_FILE": "no.key"}
    srv = Server(tmp_path / "pacs-data", missing)
    with pytest.raises(RuntimeError, match="pacs serve exited"):
        srv.start()
    assert srv.process is not None and srv.process.returncode == 2
    assert "error: cannot load the DICOM TLS certificate" in srv.log.read_text()
