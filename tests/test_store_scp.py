"""The lean Storage SCP (pacs.store_scp) and the routing in front of it (pacs.listener).

Storage-only associations (every storescu push in tests/test_cstore.py and
tests/test_faults.py) are served lean; these tests cover what those do not: the
file meta bytes, peers that break the protocol or vanish mid data set, the
association limit, and an association mixing storage with queries, which
pynetdicom serves.
"""

from __future__ import annotations

import io
import socket
import struct
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from pydicom import dcmread
from pydicom.filewriter import write_file_meta_info
from pydicom.uid import UID, ExplicitVRLittleEndian
from pynetdicom import AE, PYNETDICOM_IMPLEMENTATION_UID, evt
from pynetdicom.dsutils import create_file_meta
from pynetdicom.pdu import A_ASSOCIATE_RQ
from pynetdicom.pdu_primitives import (
    A_ASSOCIATE,
    ImplementationClassUIDNotification,
    MaximumLengthNotification,
)
from pynetdicom.presentation import PresentationContext
from pynetdicom.sop_class import CTImageStorage, StudyRootQueryRetrieveInformationModelFind

from pacs.dimse import Command, file_meta_prefix
from storage.blobs import blob_key
from tests.conftest import Server, require_tool, run
from tests.test_cstore import STATUS_SUCCESS, assert_stored_as_sent, ct_copy, storescu

STORAGE_ONLY = [CTImageStorage]


@pytest.fixture(scope="module")
def pacs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    srv = Server(tmp_path_factory.mktemp("lean") / "pacs-data")
    srv.start()
    yield srv
    srv.stop()


def scu(contexts: list[str]) -> AE:
    ae = AE("TESTSCU")
    for context in contexts:
        ae.add_requested_context(context, ExplicitVRLittleEndian)
    return ae


def echo_works(server: Server) -> bool:
    echo = run([require_tool("echoscu"), "-aec", "PACS", "127.0.0.1", str(server.dicom_port)])
    return echo.returncode == 0


@pytest.mark.parametrize("ae_title", ["STORESCU", "CT1", ""])
def test_file_meta_is_what_pydicom_writes(ae_title: str) -> None:
    command = Command(1, 0x0001, 7, True, CTImageStorage, "1.2.826.0.1.3680043.2.1143.12345")
    meta = create_file_meta(
        sop_class_uid=UID(command.sop_class_uid),
        sop_instance_uid=UID(command.sop_instance_uid),
        transfer_syntax=ExplicitVRLittleEndian,
    )
    if ae_title:
        meta.SourceApplicationEntityTitle = ae_title
    expected = io.BytesIO()
    expected.write(b"\x00" * 128 + b"DICM")
    write_file_meta_info(expected, meta)
    assert file_meta_prefix(command, ExplicitVRLittleEndian, ae_title) == expected.getvalue()


def test_stored_file_names_the_sender(pacs: Server, tmp_path: Path) -> None:
    path = ct_copy(tmp_path, "ct.dcm")
    [sent] = storescu(pacs, "-aet", "CT_HAGIANG", path)
    assert sent.status == STATUS_SUCCESS
    with pacs.opened() as archive:
        uid = str(dcmread(path).SOPInstanceUID)
        stored = archive.blobs.local_path(blob_key(uid))
        assert stored is not None
        meta = dcmread(stored, stop_before_pixels=True).file_meta
        assert meta.SourceApplicationEntityTitle == "CT_HAGIANG"
        assert meta.MediaStorageSOPInstanceUID == uid
        assert_stored_as_sent(archive, path)


def test_a_peer_vanishing_mid_data_set_leaves_nothing(pacs: Server, tmp_path: Path) -> None:
    path = ct_copy(tmp_path, "ct.dcm")
    ds = dcmread(path)
    assoc = scu(STORAGE_ONLY).associate("127.0.0.1", pacs.dicom_port, ae_title="PACS")
    assert assoc.is_established
    raw = assoc.dul.socket.socket  # type: ignore[union-attr]
    assert raw is not None
    command = _c_store_rq(ds)
    raw.sendall(_p_data(1, 0x03, command))  # the whole command set
    raw.sendall(_p_data(1, 0x00, b"\x08\x00\x05\x00" + b"\x00" * 2000))  # first fragment only
    raw.close()
    assoc.abort()
    time.sleep(0.5)
    with pacs.opened() as archive:
        assert not archive.blobs.exists(blob_key(str(ds.SOPInstanceUID)))
        assert list(archive.blobs.staging_dir().iterdir()) == []
    assert echo_works(pacs)


def test_garbage_after_association_is_aborted_and_the_server_goes_on(pacs: Server) -> None:
    with raw_association(pacs.dicom_port) as raw:
        raw.sendall(b"\x09\x00\x00\x00\x00\x04junk")  # no such PDU type
        assert raw.recv(64)[:1] == b"\x07"  # A-ABORT
    assert echo_works(pacs)


def test_a_command_on_an_unaccepted_context_is_aborted(pacs: Server) -> None:
    with raw_association(pacs.dicom_port) as raw:
        raw.sendall(_p_data(99, 0x03, b"\x00" * 16))
        assert raw.recv(64)[:1] == b"\x07"
    assert echo_works(pacs)


@contextmanager
def raw_association(port: int) -> Iterator[socket.socket]:
    """An accepted storage association on a plain socket that only the test reads
    (pynetdicom's reader thread would race it for the server's answer)."""
    context = PresentationContext()
    context.context_id, context.abstract_syntax = 1, CTImageStorage
    context.transfer_syntax = [ExplicitVRLittleEndian]
    maximum = MaximumLengthNotification()
    maximum.maximum_length_received = 16384
    implementation = ImplementationClassUIDNotification()
    implementation.implementation_class_uid = PYNETDICOM_IMPLEMENTATION_UID
    primitive = A_ASSOCIATE()
    primitive.application_context_name = "1.2.840.10008.3.1.1.1"
    primitive.calling_ae_title, primitive.called_ae_title = "TESTSCU", "PACS"
    primitive.presentation_context_definition_list = [context]
    primitive.user_information = [maximum, implementation]
    request = A_ASSOCIATE_RQ()
    request.from_primitive(primitive)
    with socket.create_connection(("127.0.0.1", port), timeout=5) as raw:
        raw.sendall(request.encode())
        header = _read_exactly(raw, 6)
        assert header[0] == 0x02, "association not accepted"  # A-ASSOCIATE-AC
        _read_exactly(raw, struct.unpack(">I", header[2:])[0])
        yield raw


def _read_exactly(raw: socket.socket, size: int) -> bytes:
    data = b""
    while len(data) < size:
        chunk = raw.recv(size - len(data))
        assert chunk, "the server closed the connection"
        data += chunk
    return data


def test_storage_with_queries_is_served_by_pynetdicom(pacs: Server, tmp_path: Path) -> None:
    path = ct_copy(tmp_path, "ct.dcm")
    ae = scu([CTImageStorage, StudyRootQueryRetrieveInformationModelFind])
    assoc = ae.associate("127.0.0.1", pacs.dicom_port, ae_title="PACS")
    assert assoc.is_established
    status = assoc.send_c_store(dcmread(path))
    assoc.release()
    assert status.Status == 0x0000
    with pacs.opened() as archive:
        assert archive.blobs.exists(blob_key(str(dcmread(path).SOPInstanceUID)))


def test_the_association_limit_holds_on_the_lean_path(tmp_path: Path) -> None:
    server = Server(tmp_path / "pacs-data", {"PACS_MAX_ASSOCIATIONS": "1"})
    server.start()
    try:
        first = scu(STORAGE_ONLY).associate("127.0.0.1", server.dicom_port, ae_title="PACS")
        assert first.is_established
        rejected: list[str] = []
        second_ae = scu(STORAGE_ONLY)
        second = second_ae.associate(
            "127.0.0.1",
            server.dicom_port,
            ae_title="PACS",
            evt_handlers=[(evt.EVT_REJECTED, lambda event: rejected.append("rejected"))],
        )
        assert second.is_rejected
        assert rejected == ["rejected"]
        first.release()
        third = scu(STORAGE_ONLY).associate("127.0.0.1", server.dicom_port, ae_title="PACS")
        assert third.is_established
        third.release()
    finally:
        server.stop()


def _c_store_rq(ds: object) -> bytes:
    """A C-STORE-RQ command set (PS3.7 §9.3.1.1) in Implicit VR Little Endian."""
    sop_class = str(ds.SOPClassUID).encode()  # type: ignore[attr-defined]
    sop_instance = str(ds.SOPInstanceUID).encode()  # type: ignore[attr-defined]

    def element(tag: int, value: bytes) -> bytes:
        value = value + b"\x00" if len(value) % 2 else value
        return struct.pack("<HHI", 0, tag, len(value)) + value

    body = b"".join(
        [
            element(0x0002, sop_class),
            element(0x0100, struct.pack("<H", 0x0001)),
            element(0x0110, struct.pack("<H", 1)),
            element(0x0700, struct.pack("<H", 0)),
            element(0x0800, struct.pack("<H", 0x0000)),
            element(0x1000, sop_instance),
        ]
    )
    return element(0x0000, struct.pack("<I", len(body))) + body


def _p_data(context_id: int, control: int, data: bytes) -> bytes:
    item = struct.pack(">IBB", len(data) + 2, context_id, control) + data
    return struct.pack(">BBI", 0x04, 0, len(item)) + item
