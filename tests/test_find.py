"""C-FIND against a real ``pacs serve``, asked by DCMTK's findscu (PS3.4 C.4.1).

The archive holds the sample studies: CT "Nguyễn^Văn An" (24 slices, UTF-8), MR
"Đặng^Thị Hoa" (16, JPEG-LS), XA "Trần^Minh Đức" (one multi-frame, J2K) and a
Latin-1 CT "Müller^Jürgen". findscu's responses are extracted to files (``-X``)
and read back with pydicom, so what is checked is what went over the wire.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from pydicom import Dataset, dcmread

from tests.conftest import ADMIN_PASSWORD, SAMPLES, Server, require_tool, run

CT_STUDY = "1.2.826.0.1.3680043.8.498.10370521667092446275804229257105587926"
MR_STUDY = "1.2.826.0.1.3680043.8.498.10852187841397030210016674020578427062"
PATIENT_ROOT = "-P"
STUDY_ROOT = "-S"


@dataclass
class FindResult:
    matches: list[Dataset]
    status: int
    comment: str
    output: str


@pytest.fixture(scope="module")
def archive_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """A server holding the sample studies, shared by this module's read-only tests."""
    data = tmp_path_factory.mktemp("find") / "pacs-data"
    load_samples(data)
    srv = Server(data)
    srv.start()
    yield srv
    srv.stop()


def load_samples(data_dir: Path, env: dict[str, str] | None = None) -> None:
    folders = [str(p) for p in sorted(SAMPLES.iterdir()) if p.is_dir() and p.name != "__pycache__"]
    done = subprocess.run(
        [sys.executable, "-m", "pacs.cli", "--data-dir", str(data_dir), "import", *folders],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, **(env or {})},
    )
    assert done.returncode == 0, done.stderr


def findscu(
    server: Server, tmp_path: Path, model: str, *keys: str, aet: str = "FINDSCU", extra=()
) -> FindResult:
    tool = require_tool("findscu")
    out = tmp_path / f"find-{len(list(tmp_path.iterdir()))}"
    out.mkdir()
    args = [tool, "-d", model, "-aet", aet, "-aec", "PACS", "-X", "-od", str(out), *extra]
    for key in keys:
        args += ["-k", key]
    done = run([*args, "127.0.0.1", str(server.dicom_port)])
    output = done.stdout + done.stderr
    assert "Association Accepted" in output, output[-3000:]
    statuses = re.findall(r"DIMSE Status\s*: 0x([0-9a-fA-F]{4})", output)
    comment = re.search(r"\(0000,0902\) LO \[(.*?)\]\s+#", output)
    matches = [dcmread(path) for path in sorted(out.glob("rsp*.dcm"))]
    return FindResult(
        matches, int(statuses[-1], 16), comment.group(1).rstrip() if comment else "", output
    )


def test_vietnamese_names_survive_the_round_trip(archive_server: Server, tmp_path: Path) -> None:
    """A folded query finds the accented name, and the answer carries ISO_IR 192 (PS3.5
    6.1.2.3) so findscu decodes every Vietnamese letter."""
    found = findscu(
        archive_server, tmp_path, STUDY_ROOT,
        "QueryRetrieveLevel=STUDY", "PatientName=nguyen*", "StudyInstanceUID",
        "ModalitiesInStudy", "NumberOfStudyRelatedInstances", "PatientID",
    )  # fmt: skip
    assert found.status == 0x0000
    assert len(found.matches) == 1
    match = found.matches[0]
    assert match.SpecificCharacterSet == "ISO_IR 192"
    assert str(match.PatientName) == "Nguyễn^Văn An"
    assert match.StudyInstanceUID == CT_STUDY
    assert match.ModalitiesInStudy == "CT" and match.NumberOfStudyRelatedInstances == 24
    assert match.RetrieveAETitle == "PACS"
    # Only what was asked comes back (PS3.4 C.4.1.1.3.2), plus the level and charset.
    assert "StudyDate" not in match and "IssuerOfPatientID" not in match
    # `dang` finds Đặng: case- and accent-insensitive, đ folded by hand.
    dang = findscu(archive_server, tmp_path, STUDY_ROOT, "QueryRetrieveLevel=STUDY",
                   "PatientName=DANG", "StudyInstanceUID")  # fmt: skip
    assert [m.StudyInstanceUID for m in dang.matches] == [MR_STUDY]
    assert str(dang.matches[0].PatientName) == "Đặng^Thị Hoa"


def test_a_latin1_query_matches_too(archive_server: Server, tmp_path: Path) -> None:
    found = findscu(
        archive_server, tmp_path, PATIENT_ROOT,
        "QueryRetrieveLevel=PATIENT", "SpecificCharacterSet=ISO_IR 100", "PatientName=Müller*",
        "PatientID",
    )  # fmt: skip
    assert [str(m.PatientName) for m in found.matches] == ["Müller^Jürgen"]


def test_patient_root_at_every_level(archive_server: Server, tmp_path: Path) -> None:
    patients = findscu(archive_server, tmp_path, PATIENT_ROOT, "QueryRetrieveLevel=PATIENT",
                       "PatientID", "PatientName", "IssuerOfPatientID")  # fmt: skip
    assert sorted(m.PatientID for m in patients.matches) == ["BN0001", "BN0002", "BN0003", "BN0004"]
    assert {m.IssuerOfPatientID for m in patients.matches} == {"BV-TINH-HAGIANG"}
    studies = findscu(archive_server, tmp_path, PATIENT_ROOT, "QueryRetrieveLevel=STUDY",
                      "PatientID=BN0002", "StudyInstanceUID", "StudyDate")  # fmt: skip
    assert [m.StudyInstanceUID for m in studies.matches] == [MR_STUDY]
    series = findscu(archive_server, tmp_path, PATIENT_ROOT, "QueryRetrieveLevel=SERIES",
                     "PatientID=BN0002", f"StudyInstanceUID={MR_STUDY}", "SeriesInstanceUID",
                     "Modality", "NumberOfSeriesRelatedInstances")  # fmt: skip
    assert [(m.Modality, m.NumberOfSeriesRelatedInstances) for m in series.matches] == [("MR", 16)]
    images = findscu(archive_server, tmp_path, PATIENT_ROOT, "QueryRetrieveLevel=IMAGE",
                     "PatientID=BN0002", f"StudyInstanceUID={MR_STUDY}",
                     f"SeriesInstanceUID={series.matches[0].SeriesInstanceUID}",
                     "SOPInstanceUID", "InstanceNumber")  # fmt: skip
    assert [m.InstanceNumber for m in images.matches] == list(range(1, 17))
    assert len({m.SOPInstanceUID for m in images.matches}) == 16


def test_study_root_at_every_level(archive_server: Server, tmp_path: Path) -> None:
    studies = findscu(archive_server, tmp_path, STUDY_ROOT, "QueryRetrieveLevel=STUDY",
                      "ModalitiesInStudy=MR\\XA", "StudyInstanceUID", "PatientName")  # fmt: skip
    assert {str(m.PatientName) for m in studies.matches} == {"Đặng^Thị Hoa", "Trần^Minh Đức"}
    series = findscu(archive_server, tmp_path, STUDY_ROOT, "QueryRetrieveLevel=SERIES",
                     f"StudyInstanceUID={CT_STUDY}", "SeriesInstanceUID", "Modality",
                     "BodyPartExamined")  # fmt: skip
    assert [m.Modality for m in series.matches] == ["CT"]
    images = findscu(archive_server, tmp_path, STUDY_ROOT, "QueryRetrieveLevel=IMAGE",
                     f"StudyInstanceUID={CT_STUDY}", "SOPInstanceUID", "SOPClassUID",
                     "InstanceNumber=3")  # fmt: skip
    assert [m.InstanceNumber for m in images.matches] == [3]
    # PATIENT is not a level of the Study Root model (PS3.4 C.6.2).
    refused = findscu(archive_server, tmp_path, STUDY_ROOT, "QueryRetrieveLevel=PATIENT",
                      "PatientID")  # fmt: skip
    assert refused.status == 0xA900 and "not in this model" in refused.comment


def test_keys_the_index_lacks(archive_server: Server, tmp_path: Path) -> None:
    """Asked only to be returned: returned empty, with pending status 0xFF01. Asked to
    match: refused (0xA900), never answered with a broader result."""
    returned = findscu(archive_server, tmp_path, STUDY_ROOT, "QueryRetrieveLevel=STUDY",
                       f"StudyInstanceUID={CT_STUDY}", "AdmittingDiagnosesDescription")  # fmt: skip
    assert len(returned.matches) == 1 and returned.matches[0].AdmittingDiagnosesDescription == ""
    assert "0xff01" in returned.output.lower()
    refused = findscu(archive_server, tmp_path, STUDY_ROOT, "QueryRetrieveLevel=STUDY",
                      "AdmittingDiagnosesDescription=flu", "StudyInstanceUID")  # fmt: skip
    assert refused.status == 0xA900 and "AdmittingDiagnosesDescription" in refused.comment
    bad_uid = findscu(archive_server, tmp_path, STUDY_ROOT, "QueryRetrieveLevel=STUDY",
                      "StudyInstanceUID=1.2.abc")  # fmt: skip
    assert bad_uid.status == 0xA900 and bad_uid.matches == []


def test_cancel_stops_the_stream(archive_server: Server, tmp_path: Path) -> None:
    """findscu --cancel 3: C-CANCEL after the third pending response (PS3.7 9.3.2.3).

    A cancel that arrives after the last match is too late to stop anything (the
    search ends with success), and on a busy machine the 24 matches can all be out
    before findscu's cancel comes in; so the query is tried a few times, and one
    cancel must stop it."""
    for _ in range(5):
        found = findscu(archive_server, tmp_path, STUDY_ROOT, "QueryRetrieveLevel=IMAGE",
                        f"StudyInstanceUID={CT_STUDY}", "SOPInstanceUID",
                        extra=["--cancel", "3"])  # fmt: skip
        if found.status != 0x0000 or len(found.matches) != 24:
            break
    assert found.status == 0xFE00, found.output[-2000:]
    assert 3 <= len(found.matches) < 24


def test_a_node_without_query_rights_is_refused(archive_server: Server, tmp_path: Path) -> None:
    api = httpx.Client(base_url=archive_server.base_url, auth=("admin", ADMIN_PASSWORD))
    body = {"name": "store-only", "ae_title": "STOREONLY", "host": "127.0.0.1", "port": 104,
            "may_query": False}  # fmt: skip
    assert api.post("/api/nodes", json=body).status_code == 201
    try:
        refused = findscu(archive_server, tmp_path, STUDY_ROOT, "QueryRetrieveLevel=STUDY",
                          "StudyInstanceUID", aet="STOREONLY")  # fmt: skip
        assert refused.status == 0x0124 and refused.matches == []
        assert refused.comment == "node store-only (STOREONLY) may not query"
        # An AE nobody registered may query (PACS_UNKNOWN_NODES_MAY_QUERY defaults to true).
        anyone = findscu(archive_server, tmp_path, STUDY_ROOT, "QueryRetrieveLevel=STUDY",
                         "StudyInstanceUID", aet="SOMEONE")  # fmt: skip
        assert anyone.status == 0 and len(anyone.matches) == 4
    finally:
        api.delete("/api/nodes/store-only")


def test_unknown_nodes_may_be_barred(tmp_path: Path) -> None:
    srv = Server(tmp_path / "pacs-data", {"PACS_UNKNOWN_NODES_MAY_QUERY": "false"})
    srv.start()
    try:
        refused = findscu(srv, tmp_path, STUDY_ROOT, "QueryRetrieveLevel=STUDY",
                          "StudyInstanceUID", aet="STRANGER")  # fmt: skip
        assert refused.status == 0x0124
        assert refused.comment == "AE STRANGER is not a registered node"
    finally:
        srv.stop()


def test_find_and_get_on_postgresql(postgres_database: str, tmp_path: Path) -> None:
    """The same planner on PostgreSQL, where matches stream from a server-side cursor."""
    from tests.conftest import _reset_postgres

    _reset_postgres(postgres_database)
    env = {"PACS_DATABASE_URL": postgres_database}
    data = tmp_path / "pacs-data"
    load_samples(data, env)
    srv = Server(data, env)
    srv.start()
    try:
        found = findscu(srv, tmp_path, STUDY_ROOT, "QueryRetrieveLevel=STUDY",
                        "PatientName=dang", "StudyInstanceUID")  # fmt: skip
        assert [m.StudyInstanceUID for m in found.matches] == [MR_STUDY]
        images = findscu(srv, tmp_path, PATIENT_ROOT, "QueryRetrieveLevel=IMAGE",
                         "PatientID=BN0001", f"StudyInstanceUID={CT_STUDY}",
                         "SOPInstanceUID")  # fmt: skip
        assert len(images.matches) == 24
        out = tmp_path / "got"
        out.mkdir()
        got = run([require_tool("getscu"), "-S", "-aec", "PACS", "-od", str(out), "-k",
                   "QueryRetrieveLevel=STUDY", "-k", f"StudyInstanceUID={MR_STUDY}",
                   "127.0.0.1", str(srv.dicom_port)])  # fmt: skip
        assert got.returncode == 0 and len(list(out.iterdir())) == 16
    finally:
        srv.stop()


@pytest.mark.filterwarnings("ignore:.*(exceeds the maximum length|Invalid value for VR)")
def test_hostile_identifiers_get_a_status_not_a_crash(archive_server: Server) -> None:
    """Sent with pynetdicom, which sends what it is given: no level, undecodable bytes
    under ISO_IR 192, a 10 kB value, a wildcard where a retrieve needs a unique key."""
    from pynetdicom import AE
    from pynetdicom.sop_class import (
        StudyRootQueryRetrieveInformationModelFind,
        StudyRootQueryRetrieveInformationModelGet,
    )

    ae = AE(ae_title="HOSTILE")
    ae.add_requested_context(StudyRootQueryRetrieveInformationModelFind)
    ae.add_requested_context(StudyRootQueryRetrieveInformationModelGet)
    assoc = ae.associate("127.0.0.1", archive_server.dicom_port, ae_title="PACS")
    assert assoc.is_established
    try:

        def find(ds: Dataset) -> list[tuple[int, Dataset | None]]:
            model = StudyRootQueryRetrieveInformationModelFind
            return [(int(st.Status), ident) for st, ident in assoc.send_c_find(ds, model)]

        no_level = Dataset()
        no_level.PatientName = "*"
        ((status, _),) = find(no_level)
        assert status == 0xA900
        garbage = Dataset()
        garbage.QueryRetrieveLevel = "STUDY"
        garbage.SpecificCharacterSet = "ISO_IR 192"
        garbage.add_new(0x00100010, "PN", b"\xff\xfe\xc3(*")
        garbage.StudyInstanceUID = ""
        assert find(garbage)[-1][0] == 0x0000  # decoded leniently, matches nothing
        huge = Dataset()
        huge.QueryRetrieveLevel = "STUDY"
        huge.StudyDescription = "x" * 10_000
        huge.StudyInstanceUID = ""
        assert find(huge) == [(0x0000, None)]
        wildcard = Dataset()
        wildcard.QueryRetrieveLevel = "STUDY"
        wildcard.StudyInstanceUID = "1.2.*"
        ((status, _),) = [
            (int(st.Status), ident)
            for st, ident in assoc.send_c_get(wildcard, StudyRootQueryRetrieveInformationModelGet)
        ]
        assert status == 0xA900
        assert assoc.is_established
    finally:
        assoc.release()
