"""C-MOVE and C-GET against a real ``pacs serve`` (PS3.4 C.4.2, C.4.3): DCMTK's movescu
into DCMTK storescp processes started here, getscu, and Orthanc as the other PACS
querying and retrieving from us through its REST API."""

from __future__ import annotations

import json
import re
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import numpy as np
import pytest
from pydicom import Dataset, dcmread
from pydicom.uid import ExplicitVRLittleEndian, JPEGLSLossless, generate_uid

from tests.conftest import ADMIN_PASSWORD, SAMPLES, Server, free_port, require_tool, run, storescp
from tests.test_find import CT_STUDY, MR_STUDY, load_samples

XA_STUDY = "1.2.826.0.1.3680043.8.498.95047800243056758839409522840463329261"
SIEMENS_CSA_NON_IMAGE = "1.3.12.2.1107.5.9.1"  # a vendor-private storage SOP class


@dataclass
class Responses:
    status: int
    comment: str
    remaining: list[int]  # of each pending response, in order
    completed: int
    failed: int
    failed_uids: list[str]
    output: str


@pytest.fixture(scope="module")
def archive_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    data = tmp_path_factory.mktemp("move") / "pacs-data"
    load_samples(data)
    srv = Server(data)
    srv.start()
    yield srv
    srv.stop()


@pytest.fixture(scope="module")
def api(archive_server: Server) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=archive_server.base_url, auth=("admin", ADMIN_PASSWORD)) as client:
        yield client


def register(api: httpx.Client, name: str, ae_title: str, port: int, **rights: bool) -> None:
    body = {"name": name, "ae_title": ae_title, "host": "127.0.0.1", "port": port, **rights}
    response = api.post("/api/nodes", json=body)
    assert response.status_code == 201, response.text


def parse(output: str) -> Responses:
    blocks = output.split("INCOMING DIMSE MESSAGE")[1:]
    statuses = re.findall(r"DIMSE Status\s*: 0x([0-9a-fA-F]{4})", output)
    remaining = [int(n) for n in re.findall(r"Remaining Suboperations\s*: (\d+)", output)]
    completed = re.findall(r"Completed Suboperations\s*: (\d+)", blocks[-1] if blocks else "")
    failed = re.findall(r"Failed Suboperations\s*: (\d+)", blocks[-1] if blocks else "")
    comment = re.search(r"\(0000,0902\) LO \[(.*?)\]\s+#", output)
    failed_list = re.search(r"\(0008,0058\) UI \[(.*?)\]\s+#", output)
    return Responses(
        status=int(statuses[-1], 16),
        comment=comment.group(1).rstrip() if comment else "",
        remaining=remaining,
        completed=int(completed[0]) if completed else 0,
        failed=int(failed[0]) if failed else 0,
        failed_uids=failed_list.group(1).rstrip("\x00 ").split("\\") if failed_list else [],
        output=output,
    )


def movescu(
    server: Server, destination: str, *keys: str, aet: str = "MOVESCU", extra=()
) -> Responses:
    args = [require_tool("movescu"), "-d", "-S", "-aet", aet, "-aec", "PACS", "-aem", destination]
    for key in keys:
        args += ["-k", key]
    done = run([*args, *extra, "127.0.0.1", str(server.dicom_port)])
    return parse(done.stdout + done.stderr)


def received(folder: Path) -> dict[str, Dataset]:
    return {str(ds.SOPInstanceUID): ds for ds in map(dcmread, sorted(folder.iterdir()))}


def sample_files(name: str) -> dict[str, Path]:
    files = sorted((SAMPLES / name).rglob("*.dcm"))
    return {str(dcmread(f, stop_before_pixels=True).SOPInstanceUID): f for f in files}


def test_move_a_study_into_storescp(
    archive_server: Server, api: httpx.Client, tmp_path: Path
) -> None:
    """24 sub-operations, pending responses with the counts (PS3.4 C.4.2.1.4), and the
    instances arrive as stored."""
    with storescp(tmp_path / "in", "CENTRAL") as port:
        register(api, "central", "CENTRAL", port)
        result = movescu(archive_server, "CENTRAL", "QueryRetrieveLevel=STUDY",
                         f"StudyInstanceUID={CT_STUDY}")  # fmt: skip
    assert result.status == 0x0000, result.output[-3000:]
    pending = result.remaining
    assert pending[0] == 23 and pending[-1] == 0 and pending == sorted(pending, reverse=True)
    assert result.completed == 24 and result.failed == 0
    originals = sample_files("ct_chest")
    got = received(tmp_path / "in")
    assert got.keys() == originals.keys()
    for uid, path in list(originals.items())[:3]:
        want = dcmread(path)
        assert got[uid].PixelData == want.PixelData
        assert str(got[uid].PatientName) == "Nguyễn^Văn An"


def test_move_transcodes_only_when_the_destination_needs_it(
    archive_server: Server, api: httpx.Client, tmp_path: Path
) -> None:
    """The MR is stored JPEG-LS: a storescp accepting only uncompressed syntaxes (its
    default) gets Explicit VR Little Endian with the same pixels; one accepting
    everything (+xa) gets the stored bitstream."""
    keys = ("QueryRetrieveLevel=SERIES", f"StudyInstanceUID={MR_STUDY}")
    series = dcmread(next(iter(sample_files("mr_brain").values())), stop_before_pixels=True)
    keys += (f"SeriesInstanceUID={series.SeriesInstanceUID}",)
    with (
        storescp(tmp_path / "plain", "PLAIN") as plain_port,
        storescp(tmp_path / "all", "ALLSYNTAX", "+xa") as all_port,
    ):
        register(api, "plain", "PLAIN", plain_port)
        register(api, "all-syntaxes", "ALLSYNTAX", all_port)
        assert movescu(archive_server, "PLAIN", *keys).status == 0
        assert movescu(archive_server, "ALLSYNTAX", *keys).status == 0
    originals = sample_files("mr_brain")
    plain, kept = received(tmp_path / "plain"), received(tmp_path / "all")
    assert plain.keys() == kept.keys() == originals.keys()
    uid, path = next(iter(originals.items()))
    assert plain[uid].file_meta.TransferSyntaxUID == ExplicitVRLittleEndian
    assert kept[uid].file_meta.TransferSyntaxUID == JPEGLSLossless
    assert np.array_equal(plain[uid].pixel_array, dcmread(path).pixel_array)
    assert kept[uid].PixelData == dcmread(path).PixelData


def test_unknown_destination_is_0xA801_with_its_name(archive_server: Server) -> None:
    result = movescu(archive_server, "NOWHERE", "QueryRetrieveLevel=STUDY",
                     f"StudyInstanceUID={CT_STUDY}")  # fmt: skip
    assert result.status == 0xA801
    assert result.comment == "move destination NOWHERE is not a known node"
    log = (archive_server.data_dir / "server.log").read_text()
    assert "C-MOVE from MOVESCU to unknown destination 'NOWHERE' refused" in log


def test_bad_identifiers_and_rights(
    archive_server: Server, api: httpx.Client, tmp_path: Path
) -> None:
    with storescp(tmp_path / "in", "RIGHTS") as port:
        register(api, "rights", "RIGHTS", port)
        register(api, "no-retrieve", "NORETRIEVE", 104, may_retrieve=False)
        refused = movescu(archive_server, "RIGHTS", "QueryRetrieveLevel=STUDY",
                          f"StudyInstanceUID={CT_STUDY}", aet="NORETRIEVE")  # fmt: skip
        assert refused.status == 0x0124
        assert refused.comment == "node no-retrieve (NORETRIEVE) may not retrieve"
        no_key = movescu(archive_server, "RIGHTS", "QueryRetrieveLevel=SERIES",
                         f"StudyInstanceUID={CT_STUDY}")  # fmt: skip
        assert no_key.status == 0xA900 and "needs SeriesInstanceUID" in no_key.comment
        bad_uid = movescu(archive_server, "RIGHTS", "QueryRetrieveLevel=STUDY",
                          "StudyInstanceUID=1.2.x")  # fmt: skip
        assert bad_uid.status == 0xA900
        nothing = movescu(archive_server, "RIGHTS", "QueryRetrieveLevel=STUDY",
                          "StudyInstanceUID=1.2.3.4")  # fmt: skip
        assert nothing.status == 0 and nothing.completed == 0
    assert not any((tmp_path / "in").iterdir())


def test_refused_instances_are_listed(
    archive_server: Server, api: httpx.Client, tmp_path: Path
) -> None:
    """storescp negotiates no context for a vendor-private SOP class: that sub-operation
    fails, the others complete, and the final status is 0xB000 with the Failed SOP
    Instance UID List (PS3.4 C.4.2.1.4.2)."""
    study = generate_uid()
    series = generate_uid()
    folder = tmp_path / "mixed"
    folder.mkdir()
    uids = []
    for index, path in enumerate(sorted((SAMPLES / "ct_chest").rglob("*.dcm"))[:3]):
        ds = dcmread(path)
        ds.StudyInstanceUID, ds.SeriesInstanceUID = study, series
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
        if index == 1:
            ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID = SIEMENS_CSA_NON_IMAGE
        ds.save_as(folder / f"{index}.dcm")
        uids.append(str(ds.SOPInstanceUID))
    with archive_server.opened() as archive:
        for path in sorted(folder.iterdir()):
            assert archive.ingest(path).ok
    with storescp(tmp_path / "in", "PICKY") as port:
        register(api, "picky", "PICKY", port)
        result = movescu(archive_server, "PICKY", "QueryRetrieveLevel=STUDY",
                         f"StudyInstanceUID={study}")  # fmt: skip
    assert result.status == 0xB000, result.output[-3000:]
    assert (result.completed, result.failed) == (2, 1)
    assert result.failed_uids == [uids[1]]
    assert set(received(tmp_path / "in")) == {uids[0], uids[2]}


def test_cancel_a_move(archive_server: Server, api: httpx.Client, tmp_path: Path) -> None:
    """movescu --cancel 2: C-CANCEL after the second pending response (PS3.7 9.3.4.3)
    to a slow destination (a second per instance); the rest is not sent and the final
    status is 0xFE00."""
    with storescp(tmp_path / "in", "CANCELME", "--sleep-after", "1") as port:
        register(api, "cancel-me", "CANCELME", port)
        result = movescu(archive_server, "CANCELME", "QueryRetrieveLevel=STUDY",
                         f"StudyInstanceUID={CT_STUDY}", extra=["--cancel", "2"])  # fmt: skip
    assert result.status == 0xFE00, result.output[-3000:]
    assert 2 <= len(list((tmp_path / "in").iterdir())) < 24


def test_getscu_on_the_same_association(archive_server: Server, tmp_path: Path) -> None:
    """C-GET: sub-operations over the requestor's association, on the storage contexts
    it proposed with the SCP role (PS3.4 C.4.3). getscu proposes uncompressed syntaxes
    only, so the J2K angiography arrives decoded, all its frames there."""
    out = tmp_path / "got"
    out.mkdir()
    for study in (CT_STUDY, XA_STUDY):
        done = run([require_tool("getscu"), "-d", "-S", "-aec", "PACS", "-od", str(out),
                    "-k", "QueryRetrieveLevel=STUDY", "-k", f"StudyInstanceUID={study}",
                    "127.0.0.1", str(archive_server.dicom_port)])  # fmt: skip
        result = parse(done.stdout + done.stderr)
        assert result.status == 0, result.output[-3000:]
    got = received(out)
    assert len(got) == 25
    xa_uid, xa_path = next(iter(sample_files("xa_coronary").items()))
    original = dcmread(xa_path)
    assert got[xa_uid].file_meta.TransferSyntaxUID == ExplicitVRLittleEndian
    assert got[xa_uid].NumberOfFrames == original.NumberOfFrames
    assert np.array_equal(got[xa_uid].pixel_array, original.pixel_array)


def test_orthanc_queries_and_retrieves_from_us(
    archive_server: Server, api: httpx.Client, tmp_path: Path
) -> None:
    """Orthanc as the other PACS: C-FIND through /modalities/{name}/query, then C-MOVE
    to itself through /queries/{id}/retrieve; checked through Orthanc's REST API."""
    orthanc = require_tool("Orthanc")
    dicom_port, http_port = free_port(), free_port()
    config = {
        "Name": "central", "DicomAet": "ORTHANC", "DicomPort": dicom_port, "HttpPort": http_port,
        "StorageDirectory": str(tmp_path / "storage"), "IndexDirectory": str(tmp_path / "index"),
        "RemoteAccessAllowed": False, "AuthenticationEnabled": False, "Plugins": [],
        "DicomModalities": {"pacs": ["PACS", "127.0.0.1", archive_server.dicom_port]},
        # Orthanc re-encodes C-FIND answers into its DefaultEncoding (Latin1 unless set),
        # which has no Vietnamese letters; a Vietnamese site sets UTF-8.
        "DefaultEncoding": "Utf8",
    }  # fmt: skip
    (tmp_path / "orthanc.json").write_text(json.dumps(config))
    register(api, "orthanc", "ORTHANC", dicom_port)
    with (tmp_path / "orthanc.log").open("wb") as log:
        proc = subprocess.Popen([orthanc, str(tmp_path / "orthanc.json")], stdout=log,
                                stderr=subprocess.STDOUT, env={"TCP_NODELAY": "1"})  # fmt: skip
    base = f"http://127.0.0.1:{http_port}"
    try:
        _wait_for(base)
        query = httpx.post(f"{base}/modalities/pacs/query", timeout=30, json={
            "Level": "Study", "Query": {"PatientName": "nguyen*", "StudyInstanceUID": CT_STUDY,
                                        "ModalitiesInStudy": ""},
        }).json()  # fmt: skip
        answers = httpx.get(f"{base}/queries/{query['ID']}/answers?expand&simplify").json()
        assert len(answers) == 1
        assert answers[0]["PatientName"] == "Nguyễn^Văn An"
        assert answers[0]["StudyInstanceUID"] == CT_STUDY
        retrieve = httpx.post(f"{base}/queries/{query['ID']}/retrieve", content="ORTHANC",
                              timeout=120)  # fmt: skip
        assert retrieve.status_code == 200, retrieve.text
        stats = httpx.get(f"{base}/statistics").json()
        assert stats["CountInstances"] == 24 and stats["CountStudies"] == 1
        study = httpx.get(f"{base}/studies?expand").json()[0]
        assert study["MainDicomTags"]["StudyInstanceUID"] == CT_STUDY
        assert study["PatientMainDicomTags"]["PatientName"] == "Nguyễn^Văn An"
    finally:
        proc.terminate()
        proc.wait(20)


def _wait_for(base: str) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{base}/system", timeout=1).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.1)
    raise AssertionError("Orthanc did not start")


def test_a_destination_that_is_down_or_refuses(archive_server: Server, api: httpx.Client) -> None:
    """Nothing listening, or an association rejected (our own listener, called by a
    title that is not ours): 0xA702 with the reason, every instance listed as failed."""
    register(api, "down", "DOWN", free_port())
    register(api, "wrong-title", "NOTPACS", archive_server.dicom_port)
    for destination, reason in (("DOWN", "refused"), ("NOTPACS", "rejected")):
        result = movescu(archive_server, destination, "QueryRetrieveLevel=STUDY",
                         f"StudyInstanceUID={MR_STUDY}")  # fmt: skip
        assert result.status == 0xA702, result.output[-2000:]
        assert reason in result.comment.lower()
        assert result.failed == 16 and len(result.failed_uids) == 16


def _certificates(folder: Path) -> dict[str, Path]:
    """A CA, a certificate it signs for 127.0.0.1 (the destination), one for us (the
    client), and a self-signed one nobody vouches for."""
    openssl = require_tool("openssl")
    folder.mkdir()

    def call(*args: str) -> None:
        done = subprocess.run([openssl, *args], cwd=folder, capture_output=True, text=True)
        assert done.returncode == 0, done.stderr

    (folder / "san.ext").write_text("subjectAltName=IP:127.0.0.1\n")
    call("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "ca.key", "-out", "ca.crt",
         "-days", "2", "-subj", "/CN=Test hospital CA")  # fmt: skip
    for name in ("server", "client"):
        call("req", "-newkey", "rsa:2048", "-nodes", "-keyout", f"{name}.key", "-out",
             f"{name}.csr", "-subj", f"/CN={name}")  # fmt: skip
        call("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.crt", "-CAkey", "ca.key",
             "-CAcreateserial", "-out", f"{name}.crt", "-days", "2",
             "-extfile", "san.ext")  # fmt: skip
    call("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "rogue.key", "-out",
         "rogue.crt", "-days", "2", "-subj", "/CN=127.0.0.1")  # fmt: skip
    return {name: folder / name for name in (
        "ca.crt", "server.key", "server.crt", "client.key", "client.crt", "rogue.key", "rogue.crt"
    )}  # fmt: skip


def test_move_over_tls(tmp_path: Path) -> None:
    """A node registered with --tls is reached over TLS (PS3.15 B.1): its certificate
    checked against PACS_TLS_CA_FILE, ours presented from PACS_TLS_CERT_FILE. A
    destination whose certificate nobody signed gets nothing: 0xA702 with the reason."""
    certs = _certificates(tmp_path / "certs")
    data = tmp_path / "pacs-data"
    load_samples(data)
    srv = Server(data, {"PACS_TLS_CA_FILE": str(certs["ca.crt"]),
                        "PACS_TLS_CERT_FILE": str(certs["client.crt"]),
                        "PACS_TLS_KEY_FILE": str(certs["client.key"])})  # fmt: skip
    srv.start()
    trusted = ["+tls", str(certs["server.key"]), str(certs["server.crt"]),
               "+cf", str(certs["ca.crt"])]  # fmt: skip
    rogue = ["+tls", str(certs["rogue.key"]), str(certs["rogue.crt"]), "-ic"]
    try:
        with (
            httpx.Client(base_url=srv.base_url, auth=("admin", ADMIN_PASSWORD)) as api,
            storescp(tmp_path / "secure", "SECURE", *trusted) as secure_port,
            storescp(tmp_path / "rogue", "ROGUE", *rogue) as rogue_port,
        ):
            register(api, "secure", "SECURE", secure_port, tls=True)
            register(api, "rogue", "ROGUE", rogue_port, tls=True)
            keys = ("QueryRetrieveLevel=STUDY", f"StudyInstanceUID={MR_STUDY}")
            secure = movescu(srv, "SECURE", *keys)
            refused = movescu(srv, "ROGUE", *keys)
        assert secure.status == 0 and secure.completed == 16, secure.output[-2000:]
        assert len(list((tmp_path / "secure").iterdir())) == 16
        assert refused.status == 0xA702 and "CERTIFICATE_VERIFY_FAILED" in refused.comment
        assert not any((tmp_path / "rogue").iterdir())
    finally:
        srv.stop()
