"""Forwarding and routing: the durable job queue, ``pacs send``, ``pacs jobs``,
``/api/jobs``, ``/api/routes``, against real peers: DCMTK storescp processes and
Orthanc (checked through its REST API), including a destination that is down, one
that refuses an instance, and our server killed with SIGKILL in the middle of a job.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient
from pydicom import dcmread
from pydicom.uid import generate_uid

from api.app import create_app
from pacs.forward import Forwarder
from pacs.settings import Settings
from storage import Archive, Source
from storage.jobs import (
    JobError,
    JobState,
    claim_next,
    enqueue,
    fail_attempt,
    get_job,
    record_sent,
    requeue_running,
    retry,
    sent_uids,
)
from storage.nodes import Node, add_node, remove_node
from storage.routing import Rule, RuleError, add_rule, route_quiet_studies
from storage.users import Role, create_user
from tests.conftest import (
    ADMIN_PASSWORD,
    SAMPLES,
    Server,
    free_port,
    migrated_archive,
    require_tool,
    run,
    storescp,
)
from tests.test_find import CT_STUDY, MR_STUDY, load_samples

SIEMENS_CSA_NON_IMAGE = "1.3.12.2.1107.5.9.1"  # a vendor-private SOP class storescp refuses
FAST_RETRIES = {
    "PACS_FORWARD_RETRY_SECONDS": "0.3",
    "PACS_FORWARD_MAX_ATTEMPTS": "5",
    "PACS_ROUTE_QUIET_SECONDS": "1",
}


# -- the queue and the rules, on SQLite and PostgreSQL --------------------------------


def _ingest_ct(archive: Archive, ae_title: str = "CTSCANNER", site: str = "") -> list[str]:
    uids = []
    for path in sorted((SAMPLES / "ct_chest").rglob("*.dcm"))[:3]:
        result = archive.ingest(path, Source(ae_title=ae_title, site=site))
        assert result.ok, result.reason
        uids.append(result.sop_instance_uid)
    return uids


def _add_node(archive: Archive, name: str) -> None:
    with archive.sessions() as session:
        add_node(session, Node(name=name, ae_title=name.upper(), host="127.0.0.1", port=104))
        session.commit()


def test_each_job_is_claimed_once_and_backs_off(archive: Archive) -> None:
    """Four threads race for three jobs: each job is claimed by exactly one; a failed
    attempt waits retry * 2**(attempts-1); the last attempt makes it dead."""
    _ingest_ct(archive)
    _add_node(archive, "central")
    with archive.sessions() as session:
        ids = {enqueue(session, CT_STUDY, "central").id for _ in range(3)}
        with pytest.raises(JobError, match="no node 'nowhere'"):
            enqueue(session, CT_STUDY, "nowhere")
        with pytest.raises(JobError, match="not in the archive"):
            enqueue(session, "1.2.3.4", "central")
        session.commit()
    claimed: list[int] = []
    lock = threading.Lock()

    def worker() -> None:
        while True:
            with archive.sessions() as session:
                job = claim_next(session)
            if job is None:
                return
            with lock:
                claimed.append(job.id)

    threads = [threading.Thread(target=worker) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(claimed) == sorted(ids)

    first = min(ids)
    with archive.sessions() as session:
        job = fail_attempt(session, first, "refused", retry_after=30, max_attempts=2)
        assert job.state is JobState.RETRYING and job.attempts == 1
        wait = job.next_attempt_at - job.updated_at
        assert timedelta(seconds=29) < wait <= timedelta(seconds=30)
        assert claim_next(session) is None  # not due yet
        record_sent(session, first, "1.2.3")
        session.commit()
        assert requeue_running(session) == 2  # the other two were left running
        job = fail_attempt(session, first, "still refused", retry_after=30, max_attempts=1)
        assert job.state is JobState.DEAD
        assert job.last_error == "gave up after 1 attempts: still refused"
        job = retry(session, first)
        assert (job.state, job.attempts, job.sent) == (JobState.QUEUED, 0, 1)
        assert sent_uids(session, first) == {"1.2.3"}  # progress survives a retry
        with pytest.raises(JobError, match="only dead or failed"):
            retry(session, first)


def test_rules_match_on_the_index_rows(archive: Archive) -> None:
    """Calling AE and site (with wildcards), modality, body part and any indexed
    attribute; only studies that changed after the rule and fell quiet are routed."""
    _add_node(archive, "central")
    _add_node(archive, "other")
    rules = [
        Rule("ct-chest", ["central"], calling_ae="CT*", modality="CT", body_part="CHEST"),
        Rule(
            "by-site",
            ["central", "other"],
            site="BV-*",
            attributes={"PatientName": "nguyen*", "00081030": "*"},
        ),
        Rule("mr-only", ["central"], modality="MR"),
        Rule("other-ae", ["other"], calling_ae="MRSCANNER"),
        Rule("by-description", ["other"], attributes={"StudyDescription": "no such*"}),
    ]
    with archive.sessions() as session:
        for rule in rules:
            add_rule(session, rule)
        for bad, message in (
            (Rule("x", ["nowhere"]), "not a registered node"),
            (Rule("x", ["central"], attributes={"NoSuchKeyword": "1"}), "not a DICOM keyword"),
            (Rule("x", ["central"], attributes={"StudyDate": "2024"}), "not a valid DA"),
            (Rule("x", ["central"], attributes={"PixelData": "1"}), "not an attribute"),
            (Rule("ct-chest", ["central"]), "already exists"),
            (Rule("bad name", ["central"]), "rule name"),
        ):
            with pytest.raises(RuleError, match=message):
                add_rule(session, bad)
        session.commit()
    _ingest_ct(archive, ae_title="CT01", site="BV-HUE")
    with archive.sessions() as session:
        assert route_quiet_studies(session, timedelta(seconds=60)) == []  # not quiet yet
        jobs = route_quiet_studies(session, timedelta(0))
        # by-site -> central is not doubled: the ct-chest job to it has not started yet.
        assert [(j.origin, j.node) for j in jobs] == [
            ("route:ct-chest", "central"),
            ("route:by-site", "other"),
        ]
        assert {j.study_instance_uid for j in jobs} == {CT_STUDY}
        assert route_quiet_studies(session, timedelta(0)) == []  # nothing changed since


def test_a_job_that_can_never_run_is_dead_at_once(archive: Archive, tmp_path: Path) -> None:
    """Its node was removed after it was queued: no retries, dead with the reason."""
    _ingest_ct(archive)
    _add_node(archive, "central")
    with archive.sessions() as session:
        job = enqueue(session, CT_STUDY, "central")
        remove_node(session, "central")
        session.commit()
    ended = Forwarder(archive, Settings(data_dir=tmp_path)).run_once()
    assert ended is not None and ended.id == job.id
    assert (ended.state, ended.attempts) == (JobState.DEAD, 1)
    assert ended.last_error == "node 'central' is no longer registered"


# -- against real peers ---------------------------------------------------------------


@pytest.fixture(scope="module")
def archive_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    data = tmp_path_factory.mktemp("forward") / "pacs-data"
    load_samples(data)
    srv = Server(data, FAST_RETRIES)
    srv.start()
    yield srv
    srv.stop()


@pytest.fixture(scope="module")
def api(archive_server: Server) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=archive_server.base_url, auth=("admin", ADMIN_PASSWORD)) as client:
        yield client


@contextmanager
def orthanc(folder: Path) -> Iterator[tuple[int, str]]:
    """Orthanc with a JSON configuration in ``folder``; yields its DICOM port and REST base."""
    dicom_port, http_port = free_port(), free_port()
    config = {
        "Name": "central",
        "DicomAet": "ORTHANC",
        "DicomPort": dicom_port,
        "HttpPort": http_port,
        "StorageDirectory": str(folder / "storage"),
        "IndexDirectory": str(folder / "index"),
        "RemoteAccessAllowed": False,
        "AuthenticationEnabled": False,
        "Plugins": [],
        "DicomCheckCalledAet": False,
        "DefaultEncoding": "Utf8",
        "SaveJobs": False,
    }
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "orthanc.json").write_text(json.dumps(config))
    with (folder / "orthanc.log").open("wb") as log:
        proc = subprocess.Popen(
            [require_tool("Orthanc"), str(folder / "orthanc.json")],
            stdout=log,
            stderr=subprocess.STDOUT,
            env={"TCP_NODELAY": "1"},
        )
    base = f"http://127.0.0.1:{http_port}"
    try:
        _until(lambda: _orthanc_up(base), 30, "Orthanc did not start")
        yield dicom_port, base
    finally:
        proc.terminate()
        proc.wait(20)


def _orthanc_up(base: str) -> bool:
    try:
        return httpx.get(f"{base}/system", timeout=1).status_code == 200
    except httpx.TransportError:
        return False


def orthanc_study(base: str, study_uid: str) -> dict[str, Any] | None:
    """Orthanc's study resource for ``study_uid``, with the list of its instances."""
    found = httpx.post(f"{base}/tools/lookup", content=study_uid, timeout=10).json()
    if not found:
        return None
    study = httpx.get(f"{base}/studies/{found[0]['ID']}", timeout=10).json()
    study["instances"] = httpx.get(f"{base}/studies/{found[0]['ID']}/instances", timeout=30).json()
    return study


def register(api: httpx.Client, name: str, ae_title: str, port: int) -> None:
    body = {"name": name, "ae_title": ae_title, "host": "127.0.0.1", "port": port}
    response = api.post("/api/nodes", json=body)
    assert response.status_code == 201, response.text


def queue(api: httpx.Client, study: str, node: str) -> int:
    response = api.post("/api/jobs", json={"study_instance_uid": study, "node": node})
    assert response.status_code == 201, response.text
    return int(response.json()["id"])


def wait_job(api: httpx.Client, job_id: int, *states: str, timeout: float = 30) -> dict[str, Any]:
    job: dict[str, Any] = {}

    def reached() -> bool:
        nonlocal job
        job = api.get(f"/api/jobs/{job_id}").json()
        return job["state"] in states

    _until(reached, timeout, lambda: f"job {job_id} never reached {states}: {job}")
    return job


def _until(check: Any, timeout: float, message: Any) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.05)
    raise AssertionError(message() if callable(message) else message)


def pacs(server: Server, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "pacs.cli", *args],
        env=server.env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def push(server: Server, folder: Path, calling_ae: str) -> None:
    """storescu a folder to our server, proposing JPEG-LS (the MR) and uncompressed."""
    args = ["-aet", calling_ae, "-aec", "PACS", "+sd", "-xt"]
    done = run([require_tool("storescu"), *args, "127.0.0.1", str(server.dicom_port), str(folder)])
    assert done.returncode == 0, done.stderr


def sop_uids(folder: Path) -> list[str]:
    return sorted(str(dcmread(p, stop_before_pixels=True).SOPInstanceUID) for p in folder.iterdir())


def sample_uids(name: str) -> list[str]:
    files = (SAMPLES / name).rglob("*.dcm")
    return sorted(str(dcmread(f, stop_before_pixels=True).SOPInstanceUID) for f in files)


def test_pacs_send_delivers_every_instance(
    archive_server: Server, api: httpx.Client, tmp_path: Path
) -> None:
    with storescp(tmp_path / "in", "CENTRAL") as port:
        register(api, "central", "CENTRAL", port)
        done = pacs(archive_server, "send", CT_STUDY, "--to", "central", "--wait")
        assert done.returncode == 0, done.stdout + done.stderr
    assert re.search(r"job \d+ queued", done.stdout)
    assert re.search(r"job \d+: done 24/24 sent", done.stdout)
    assert sop_uids(tmp_path / "in") == sample_uids("ct_chest")
    listed = pacs(archive_server, "jobs", "--state", "done")
    assert re.search(
        rf"\tdone\t{CT_STUDY}\t-> central\t24/24 sent\tattempts=1\tmanual", listed.stdout
    )
    unknown = api.post("/api/jobs", json={"study_instance_uid": CT_STUDY, "node": "nowhere"})
    assert unknown.status_code == 422 and "no node 'nowhere'" in unknown.json()["detail"]


def test_a_down_destination_is_retried_until_it_comes_back(
    archive_server: Server, api: httpx.Client, tmp_path: Path
) -> None:
    port = free_port()  # nothing listens there yet
    register(api, "late", "LATE", port)
    job_id = queue(api, MR_STUDY, "late")
    _until(lambda: api.get(f"/api/jobs/{job_id}").json()["attempts"] >= 2, 10, "no retries")
    waiting = api.get(f"/api/jobs/{job_id}").json()
    assert waiting["state"] in ("retrying", "running", "queued")
    assert "Connection refused" in waiting["last_error"]
    metrics = api.get("/metrics").text
    assert re.search(r"pacs_forward_retries_total [1-9]", metrics)
    with storescp(tmp_path / "in", "LATE", port=port):
        job = wait_job(api, job_id, "done", "dead", timeout=15)
    assert job["state"] == "done" and job["sent"] == 16 and job["last_error"] == ""
    assert sop_uids(tmp_path / "in") == sample_uids("mr_brain")


def test_dead_letter_after_the_last_attempt_then_retry(
    archive_server: Server, api: httpx.Client, tmp_path: Path
) -> None:
    """Five attempts 0.3, 0.6, 1.2, 2.4 s apart, then dead with the reason; a dead job
    can be retried (``POST /api/jobs/{id}/retry``) and then completes."""
    port = free_port()
    register(api, "gone", "GONE", port)
    job_id = queue(api, CT_STUDY, "gone")
    job = wait_job(api, job_id, "dead", timeout=15)
    assert job["attempts"] == 5
    assert job["last_error"].startswith("gave up after 5 attempts: gone (GONE@127.0.0.1:")
    assert "Connection refused" in job["last_error"]
    assert api.get("/api/jobs", params={"state": "dead", "node": "gone"}).json()[0]["id"] == job_id
    assert api.post(f"/api/jobs/{job_id + 1000}/retry").status_code == 404
    # The queue-depth gauges are refreshed by the router's passes (every 0.5 s here).
    dead_gauge = re.compile(r'pacs_forward_jobs\{state="dead"\} [1-9]')
    _until(lambda: dead_gauge.search(api.get("/metrics").text), 5, "no dead jobs in /metrics")
    assert re.search(r"pacs_forward_dead_total [1-9]", api.get("/metrics").text)
    with storescp(tmp_path / "in", "GONE", port=port):
        again = api.post(f"/api/jobs/{job_id}/retry")
        assert again.status_code == 200 and again.json()["state"] == "queued"
        assert api.post(f"/api/jobs/{job_id}/retry").status_code == 409
        assert wait_job(api, job_id, "done", "dead")["state"] == "done"
    assert len(sop_uids(tmp_path / "in")) == 24


def test_refused_instances_are_listed(
    archive_server: Server, api: httpx.Client, tmp_path: Path
) -> None:
    """storescp negotiates no context for a vendor-private SOP class: that instance is
    refused, the other two arrive, and the job ends failed, naming it."""
    study, series = generate_uid(), generate_uid()
    uids = []
    with archive_server.opened() as archive:
        for index, path in enumerate(sorted((SAMPLES / "ct_chest").rglob("*.dcm"))[:3]):
            ds = dcmread(path)
            ds.StudyInstanceUID, ds.SeriesInstanceUID = study, series
            ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
            if index == 1:
                ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID = SIEMENS_CSA_NON_IMAGE
            ds.save_as(tmp_path / f"{index}.dcm")
            uids.append(str(ds.SOPInstanceUID))
            assert archive.ingest(tmp_path / f"{index}.dcm").ok
    with storescp(tmp_path / "in", "PICKY") as port:
        register(api, "picky", "PICKY", port)
        job = wait_job(api, queue(api, study, "picky"), "failed", "done", "dead")
    assert job["state"] == "failed"
    assert (job["sent"], job["failed"], job["failed_uids"]) == (2, 1, [uids[1]])
    assert job["last_error"].startswith("1 instance(s) refused by the destination: 0x0122")
    assert SIEMENS_CSA_NON_IMAGE in job["last_error"]
    assert sop_uids(tmp_path / "in") == sorted([uids[0], uids[2]])


def test_a_rule_forwards_a_study_after_the_quiet_time(
    archive_server: Server, api: httpx.Client, tmp_path: Path
) -> None:
    """A rule for MR from MRSCANNER: the MR sent by MRSCANNER is forwarded once no
    instance arrived for a second; the CT sent by another AE is not."""
    with storescp(tmp_path / "in", "READING") as port:
        register(api, "reading", "READING", port)
        rule = {
            "name": "mr-to-reading",
            "calling_ae": "MRSCAN*",
            "modality": "MR",
            "destinations": ["reading"],
        }
        created = api.post("/api/routes", json=rule)
        assert created.status_code == 201, created.text
        assert api.post("/api/routes", json=rule).status_code == 409
        bad = api.post("/api/routes", json={**rule, "name": "x", "destinations": ["nowhere"]})
        assert bad.status_code == 422 and "nowhere" in bad.json()["detail"]
        mr_study, ct_study = _restudied(tmp_path, "mr_brain"), _restudied(tmp_path, "ct_chest")
        push(archive_server, ct_study, "CTSCANNER")
        push(archive_server, mr_study, "MRSCANNER")  # last: the quiet time starts here
        arrived = time.monotonic()
        mr_uid = str(dcmread(next(mr_study.iterdir())).StudyInstanceUID)
        jobs: list[dict[str, Any]] = []

        def routed() -> bool:
            nonlocal jobs
            jobs = api.get("/api/jobs", params={"node": "reading"}).json()
            return bool(jobs)

        _until(routed, 10, "the rule queued nothing")
        assert time.monotonic() - arrived > 0.5  # not before the study fell quiet
        job = wait_job(api, jobs[0]["id"], "done", "failed", "dead")
    assert [j["study_instance_uid"] for j in jobs] == [mr_uid]
    assert job["state"] == "done" and job["origin"] == "route:mr-to-reading"
    assert sorted(sop_uids(tmp_path / "in")) == sop_uids(mr_study)
    assert [r["name"] for r in api.get("/api/routes").json()] == ["mr-to-reading"]
    assert api.delete("/api/routes/mr-to-reading").status_code == 204
    assert api.delete("/api/routes/mr-to-reading").status_code == 404


def _restudied(tmp_path: Path, sample: str) -> Path:
    """Copies of a sample study under new UIDs (so it is new to the archive)."""
    folder = tmp_path / f"{sample}-copy"
    folder.mkdir()
    study, series = generate_uid(), generate_uid()
    for path in sorted((SAMPLES / sample).rglob("*.dcm")):
        ds = dcmread(path)
        ds.StudyInstanceUID, ds.SeriesInstanceUID = study, series
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
        ds.save_as(folder / path.name)
    return folder


def test_routing_into_orthanc(archive_server: Server, api: httpx.Client, tmp_path: Path) -> None:
    """A CHEST CT rule on a description wildcard forwards the CT into Orthanc, checked
    through Orthanc's REST API: the study, its 24 instances, the Vietnamese name."""
    with orthanc(tmp_path / "orthanc") as (dicom_port, base):
        register(api, "orthanc", "ORTHANC", dicom_port)
        rule = {
            "name": "chest-to-orthanc",
            "body_part": "CHEST",
            "modality": "CT",
            "attributes": {"PatientName": "nguyen*"},
            "destinations": ["orthanc"],
        }
        assert api.post("/api/routes", json=rule).status_code == 201
        ct_study = _restudied(tmp_path, "ct_chest")
        push(archive_server, ct_study, "CTSCANNER")
        study_uid = str(dcmread(next(ct_study.iterdir())).StudyInstanceUID)
        _until(lambda: api.get("/api/jobs", params={"study": study_uid}).json(), 10, "not routed")
        job_id = api.get("/api/jobs", params={"study": study_uid}).json()[0]["id"]
        assert wait_job(api, job_id, "done", "failed", "dead")["state"] == "done"
        study = orthanc_study(base, study_uid)
        assert study is not None and len(study["instances"]) == 24
        assert study["PatientMainDicomTags"]["PatientName"] == "Nguyễn^Văn An"
        assert api.delete("/api/routes/chest-to-orthanc").status_code == 204


def test_jobs_and_routes_api_are_for_admins(archive: Archive) -> None:
    with archive.sessions() as session:
        create_user(session, "doctor", "doctor-password", Role.RADIOLOGIST)
        session.commit()
    with TestClient(create_app(archive)) as client:
        for method, url in (
            ("GET", "/api/jobs"),
            ("GET", "/api/routes"),
            ("POST", "/api/jobs/1/retry"),
            ("DELETE", "/api/routes/x"),
        ):
            assert client.request(method, url).status_code == 401
            doctor = client.request(method, url, auth=("doctor", "doctor-password"))
            assert doctor.status_code == 403


def test_killed_mid_forward_resumes_and_delivers_each_instance_once(tmp_path: Path) -> None:
    """A 300-instance study queued for Orthanc, then for storescp, with one worker: our
    server is killed (SIGKILL) in the middle of each job in turn; after each restart the
    job resumes from its recorded progress, and both peers end with every instance
    exactly once. Then a graceful stop (SIGTERM) in the middle of a job."""
    study = _small_study(tmp_path / "study", 300)
    data = tmp_path / "pacs-data"
    data.mkdir()
    archive = migrated_archive(f"sqlite:///{data / 'index.sqlite'}", data)  # the server's own
    assert all(archive.ingest(path).ok for path in sorted(study.iterdir()))
    archive.sessions.kw["bind"].dispose()
    study_uid = str(dcmread(next(study.iterdir())).StudyInstanceUID)
    server = Server(data, {**FAST_RETRIES, "PACS_FORWARD_WORKERS": "1"})  # one job at a time
    server.start()
    try:
        with (
            orthanc(tmp_path / "orthanc") as (dicom_port, base),
            storescp(tmp_path / "in", "STORESCP") as scp_port,
            httpx.Client(base_url=server.base_url, auth=("admin", ADMIN_PASSWORD)) as api,
        ):
            register(api, "orthanc", "ORTHANC", dicom_port)
            register(api, "storescp", "STORESCP", scp_port)
            ids = [queue(api, study_uid, "orthanc"), queue(api, study_uid, "storescp")]
            interrupted = []
            for job_id in ids:
                _until(lambda i=job_id: _sent(api, i) >= 20, 30, f"job {job_id} did not start")
                server.kill()
                with server.opened() as archive, archive.sessions() as session:
                    job = get_job(session, job_id)
                assert job is not None and job.state is JobState.RUNNING
                assert 20 <= job.sent < 300, job
                interrupted.append(job)
                server.start()
            jobs = [wait_job(api, i, "done", "failed", "dead", timeout=60) for i in ids]
            assert [(j["state"], j["sent"]) for j in jobs] == [("done", 300)] * 2
            log = server.log.read_text()
            assert log.count("resuming 1 forwarding job(s)") == 2
            for job in interrupted:
                resumed = re.search(rf"job {job.id}: (\d+) of 300 instances already sent", log)
                assert resumed and int(resumed.group(1)) >= job.sent
            found = orthanc_study(base, study_uid)
            assert found is not None and len(found["instances"]) == 300
            assert httpx.get(f"{base}/statistics").json()["CountInstances"] == 300
        want = sorted(str(dcmread(p).SOPInstanceUID) for p in study.iterdir())
        assert sop_uids(tmp_path / "in") == want
        _stopping_puts_the_job_back(server, study_uid, tmp_path / "slow")
    finally:
        server.stop()


def _sent(api: httpx.Client, job_id: int) -> int:
    return int(api.get(f"/api/jobs/{job_id}").json()["sent"])


def _stopping_puts_the_job_back(server: Server, study_uid: str, folder: Path) -> None:
    """SIGTERM in the middle of a job to a slow peer (a second per instance): the
    server finishes the instance in flight, puts the job back in the queue without
    spending an attempt, and exits."""
    with (
        storescp(folder, "SLOW", "--sleep-during", "1") as port,
        httpx.Client(base_url=server.base_url, auth=("admin", ADMIN_PASSWORD)) as api,
    ):
        register(api, "slow", "SLOW", port)
        job_id = queue(api, study_uid, "slow")
        _until(lambda: _sent(api, job_id) >= 1, 10, "nothing sent")
        server.stop()
    assert server.process is not None and server.process.returncode == 128 + 15
    with server.opened() as archive, archive.sessions() as session:
        job = get_job(session, job_id)
    assert job is not None and (job.state, job.attempts) == (JobState.QUEUED, 0)
    assert 1 <= job.sent < 300


def _small_study(folder: Path, count: int) -> Path:
    """``count`` small CT slices (64x64) of one new study: quick to send, many messages."""
    folder.mkdir()
    template = dcmread(sorted((SAMPLES / "ct_chest").rglob("*.dcm"))[0])
    template.Rows = template.Columns = 64
    template.PixelData = bytes(64 * 64 * 2)
    template.StudyInstanceUID, template.SeriesInstanceUID = generate_uid(), generate_uid()
    for number in range(1, count + 1):
        template.SOPInstanceUID = template.file_meta.MediaStorageSOPInstanceUID = generate_uid()
        template.InstanceNumber = number
        template.save_as(folder / f"{number:04d}.dcm")
    return folder
