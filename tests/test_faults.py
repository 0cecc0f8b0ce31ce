"""Faults while modalities push: unwritable or full storage, a killed server, many senders.

Every sender is DCMTK's storescu against a real ``pacs serve``.
"""

from __future__ import annotations

import contextlib
import os
import re
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from pydicom import dcmread
from pydicom.uid import generate_uid
from sqlalchemy import select

from storage import Archive
from storage.check import check
from storage.models import Instance, Series, Study
from tests.conftest import Server, require_tool, run
from tests.test_cstore import (
    STATUS_OUT_OF_RESOURCES,
    STATUS_SUCCESS,
    assert_nothing_left,
    assert_stored_as_sent,
    pydicom_file,
    storescu,
)

# --- helpers -------------------------------------------------------------------------------


def ct_series(
    folder: Path, count: int, *, study_uid: str | None = None, series_number: int = 1
) -> list[Path]:
    """``count`` copies of pydicom's CT_small as one new series, each a new instance."""
    folder.mkdir(parents=True, exist_ok=True)
    ds = dcmread(pydicom_file("CT_small.dcm"))
    ds.StudyInstanceUID = study_uid or generate_uid()
    ds.SeriesInstanceUID = generate_uid()
    ds.SeriesNumber = series_number
    paths = []
    for number in range(1, count + 1):
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
        ds.InstanceNumber = number
        path = folder / f"{series_number:02d}-{number:04d}.dcm"
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
    return paths


def sop_uid(path: Path) -> str:
    return str(dcmread(path, stop_before_pixels=True).SOPInstanceUID)


def acknowledged(storescu_verbose_output: str) -> list[Path]:
    """Files storescu -v saw answered with Success, in the order sent."""
    acked = []
    sending: Path | None = None
    for line in storescu_verbose_output.splitlines():
        if match := re.match(r"I: Sending file: (.+)$", line):
            sending = Path(match.group(1))
        elif line.startswith("I: Received Store Response (Success)"):
            assert sending is not None
            acked.append(sending)
            sending = None
    return acked


def assert_consistent(archive: Archive) -> None:
    report = check(archive)
    assert report.consistent, (report.missing, report.corrupt, report.unindexed)


@contextlib.contextmanager
def refusing_new_entries(folders: list[Path]) -> Iterator[str]:
    """Make ``folders`` refuse new entries for real, and say how.

    chmod does not stop root, and tests may run as root: then the folders get the
    immutable attribute (``chattr +i``, which binds root too), or, on a file system
    without it, a read-only bind mount. A probe proves the technique works here.
    """
    if os.geteuid() != 0:
        for folder in folders:
            folder.chmod(0o555)
        technique, undo = "chmod 555", [["chmod", "755", str(f)] for f in folders]
    elif all(run([require_tool("chattr"), "+i", str(f)]).returncode == 0 for f in folders):
        technique, undo = "chattr +i", [["chattr", "-i", str(f)] for f in folders]
    else:
        for folder in folders:
            run(["chattr", "-i", str(folder)])
            run(["mount", "--bind", str(folder), str(folder)])
            run(["mount", "-o", "remount,ro,bind", str(folder)])
        technique, undo = "read-only bind mount", [["umount", str(f)] for f in folders]
    try:
        for folder in folders:
            with pytest.raises(OSError):
                (folder / "probe").mkdir()
        yield technique
    finally:
        for command in undo:
            run(command)


@contextlib.contextmanager
def small_tmpfs(mount_point: Path, size_kib: int) -> Iterator[Path]:
    """A tmpfs of ``size_kib`` KiB mounted at ``mount_point`` (needs root)."""
    mount_point.mkdir(parents=True)
    mount = run(["mount", "-t", "tmpfs", "-o", f"size={size_kib}k", "tmpfs", str(mount_point)])
    if mount.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here (needs root): {mount.stderr.strip()}")
    try:
        yield mount_point
    finally:
        run(["umount", "-l", str(mount_point)])


# --- storage unwritable or full -----------------------------------------------------------------


@pytest.mark.parametrize("staging", [False, True], ids=["blob-folders", "with-staging"])
def test_unwritable_blob_store_answers_out_of_resources(
    server: Server, tmp_path: Path, staging: bool
) -> None:
    """The blob folders refuse new files (the data set is received into .staging, then
    cannot be put in place), or the whole store does (it cannot even be received)."""
    stored_before = ct_series(tmp_path / "before", 1)
    assert [r.status for r in storescu(server, *stored_before)] == [STATUS_SUCCESS]
    blobs = server.data_dir / "blobs"
    folders = [blobs, *(p for p in blobs.rglob("*") if p.is_dir())]
    if not staging:
        folders = [p for p in folders if p.name != ".staging"]
    refused = ct_series(tmp_path / "refused", 3)

    with refusing_new_entries(folders):
        responses = storescu(server, *refused, *stored_before)

    # The instance stored before needs no writing once received: sending it again is a
    # success, unless it cannot even be received.
    again = STATUS_OUT_OF_RESOURCES if staging else STATUS_SUCCESS
    assert [r.status for r in responses] == [STATUS_OUT_OF_RESOURCES] * 3 + [again]
    assert all(r.error_comment for r in responses if r.status != STATUS_SUCCESS)
    with server.opened() as archive:
        assert_nothing_left(archive, *map(sop_uid, refused))
        assert_stored_as_sent(archive, stored_before[0])
        assert_consistent(archive)

    # Writable again: the same server stores the same instances.
    assert [r.status for r in storescu(server, *refused)] == [STATUS_SUCCESS] * 3
    with server.opened() as archive:
        for path in refused:
            assert_stored_as_sent(archive, path)
        assert_consistent(archive)


def test_full_disk_answers_out_of_resources(tmp_path: Path) -> None:
    files = ct_series(tmp_path / "push", 40)  # 40 x 39 KB, more than the disk holds
    with small_tmpfs(tmp_path / "disk", size_kib=1200) as disk:
        srv = Server(disk / "pacs-data")
        srv.start()
        try:
            responses = storescu(srv, *files)
            statuses = [r.status for r in responses]
            assert set(statuses) == {STATUS_SUCCESS, STATUS_OUT_OF_RESOURCES}, statuses
            assert all(r.error_comment for r in responses if r.status != STATUS_SUCCESS)
            with srv.opened() as archive:
                for path, response in zip(files, responses, strict=True):
                    if response.status == STATUS_SUCCESS:
                        assert_stored_as_sent(archive, path)
                refused = [r.sop_instance_uid for r in responses if r.status != STATUS_SUCCESS]
                assert_nothing_left(archive, *refused)
                assert_consistent(archive)
            echo = run([require_tool("echoscu"), "-aec", "PACS", "127.0.0.1", str(srv.dicom_port)])
            assert echo.returncode == 0, "the server stopped answering once the disk was full"
        finally:
            srv.stop()


# --- kill -9 during a push ------------------------------------------------------------------------


def test_kill_9_during_push_loses_no_acknowledged_instance(server: Server, tmp_path: Path) -> None:
    files = ct_series(tmp_path / "push", 300)
    env = {**os.environ, "TCP_NODELAY": "1"}
    command = [require_tool("storescu"), "-v", "-aec", "PACS", "127.0.0.1", str(server.dicom_port)]
    sender = subprocess.Popen(
        [*command, *map(str, files)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=env,
    )
    assert sender.stdout is not None
    output = []
    successes = 0
    for line in sender.stdout:
        output.append(line)
        if line.startswith("I: Received Store Response (Success)"):
            successes += 1
            if successes == 60:
                server.kill()
    sender.wait(60)

    acked = acknowledged("".join(output))
    assert 60 <= len(acked) < len(files), "the kill did not land during the push"
    server.start()
    with server.opened() as archive:
        for path in acked:
            assert_stored_as_sent(archive, path)
        assert_consistent(archive)


# --- concurrent associations ----------------------------------------------------------------------


def test_eight_concurrent_associations_store_eight_series(server: Server, tmp_path: Path) -> None:
    studies = [generate_uid(), generate_uid()]  # 4 series in each, one patient
    series = [
        ct_series(tmp_path / f"s{n}", 20, study_uid=studies[n % 2], series_number=n + 1)
        for n in range(8)
    ]
    results: dict[int, list[int]] = {}

    def push(n: int) -> None:
        results[n] = [r.status for r in storescu(server, *series[n])]

    threads = [threading.Thread(target=push, args=(n,)) for n in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert results == {n: [STATUS_SUCCESS] * 20 for n in range(8)}
    with server.opened() as archive, archive.sessions() as session:
        placed = dict(
            session.execute(
                select(Instance.sop_instance_uid, Series.series_instance_uid).join(
                    Series, Instance.series_pk == Series.id
                )
            ).all()
        )
        for files in series:
            want = dcmread(files[0], stop_before_pixels=True)
            assert {placed[sop_uid(path)] for path in files} == {want.SeriesInstanceUID}
            row = session.scalar(
                select(Series).where(Series.series_instance_uid == want.SeriesInstanceUID)
            )
            assert row is not None and row.number_of_instances == 20
            assert row.study.study_instance_uid == want.StudyInstanceUID
        for study_uid in studies:
            study = session.scalar(select(Study).where(Study.study_instance_uid == study_uid))
            assert study is not None
            assert (study.number_of_series, study.number_of_instances) == (4, 80)
        assert len(placed) == 160
    with server.opened() as archive:
        assert_consistent(archive)
