"""The ``pacs`` command as an IT admin uses it."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from pacs.settings import load_settings
from tests.conftest import SAMPLES

STUDY_DIRS = sorted(str(p) for p in SAMPLES.iterdir() if p.is_dir() and p.name != "__pycache__")

SAMPLE_COUNT = len(list(SAMPLES.rglob("*.dcm")))


def pacs(data_dir: Path, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "pacs.cli", "--data-dir", str(data_dir), *args],
        capture_output=True,
        text=True,
        env={**os.environ, **env},
        timeout=300,
    )


@pytest.mark.parametrize(
    "verb", ["serve", "import", "check", "db", "user", "db upgrade", "user add", "user passwd"]
)
def test_every_verb_has_help(tmp_path: Path, verb: str) -> None:
    result = pacs(tmp_path, *verb.split(), "--help")
    assert result.returncode == 0 and "usage:" in result.stdout


def test_import_then_import_again(tmp_path: Path) -> None:
    first = pacs(tmp_path, "import", *STUDY_DIRS)
    assert first.returncode == 0, first.stderr
    assert f"stored {SAMPLE_COUNT}, duplicate 0, rejected 0" in first.stdout
    second = pacs(tmp_path, "import", *STUDY_DIRS)
    assert f"stored 0, duplicate {SAMPLE_COUNT}, rejected 0" in second.stdout
    assert pacs(tmp_path, "check").returncode == 0


def test_import_reports_rejects_with_reasons_in_a_log(tmp_path: Path) -> None:
    tree = tmp_path / "old-pacs"
    (tree / "a" / "b").mkdir(parents=True)
    shutil.copy(next(SAMPLES.rglob("*.dcm")), tree / "a" / "good.dcm")
    (tree / "a" / "b" / "notes.txt").write_text("not an image")
    good = next(SAMPLES.rglob("*.dcm")).read_bytes()
    (tree / "a" / "b" / "cut.dcm").write_bytes(good[: len(good) // 2])
    result = pacs(tmp_path / "data", "import", str(tree))
    assert result.returncode == 1
    assert "stored 1, duplicate 0, rejected 2" in result.stdout
    log_file = next((tmp_path / "data" / "logs").glob("import-*.log"))
    log_text = log_file.read_text()
    assert "notes.txt" in log_text and "cut.dcm" in log_text and "truncated" in log_text


def test_import_if_empty_only_loads_once(tmp_path: Path) -> None:
    assert pacs(tmp_path, "import", "--if-empty", *STUDY_DIRS).returncode == 0
    again = pacs(tmp_path, "import", "--if-empty", *STUDY_DIRS)
    assert again.returncode == 0 and "stored" not in again.stdout


def test_check_reports_damage_and_rebuild_repairs_the_index(tmp_path: Path) -> None:
    pacs(tmp_path, "import", str(SAMPLES / "ct_chest"))
    index = tmp_path / "index.sqlite"
    index.unlink()
    for suffix in ("-wal", "-shm"):
        Path(f"{index}{suffix}").unlink(missing_ok=True)
    damaged = pacs(tmp_path, "check")
    assert damaged.returncode == 1
    assert damaged.stdout.count("file not indexed") == 24
    rebuilt = pacs(tmp_path, "check", "--rebuild")
    assert rebuilt.returncode == 0 and "rebuilt from 24 files" in rebuilt.stdout
    assert "consistent" in pacs(tmp_path, "check").stdout


def test_users(tmp_path: Path) -> None:
    added = pacs(
        tmp_path, "user", "add", "lan", "--role", "radiologist", PACS_NEW_PASSWORD="pw-123456"
    )
    assert added.returncode == 0, added.stderr
    duplicate = pacs(tmp_path, "user", "add", "lan", "--role", "admin", PACS_NEW_PASSWORD="x" * 9)
    assert duplicate.returncode == 1 and "already exists" in duplicate.stderr
    listed = pacs(tmp_path, "user", "list")
    assert "lan\tradiologist" in listed.stdout
    changed = pacs(tmp_path, "user", "passwd", "lan", PACS_NEW_PASSWORD="new-pw-123456")
    assert changed.returncode == 0
    assert pacs(tmp_path, "user", "passwd", "nobody", PACS_NEW_PASSWORD="x" * 9).returncode == 1


def test_db_upgrade_is_repeatable(tmp_path: Path) -> None:
    for _ in range(2):
        result = pacs(tmp_path, "db", "upgrade")
        assert result.returncode == 0 and "current" in result.stdout


def test_settings_precedence_file_env_flags(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = tmp_path / "pacs.toml"
    config.write_text('ae_title = "FROMFILE"\ndicom_port = 104\nhttp_port = 8080\n')
    monkeypatch.setenv("PACS_DICOM_PORT", "4242")
    monkeypatch.setenv("PACS_DATA_DIR", str(tmp_path / "d"))
    settings = load_settings(config, http_port=9000)
    assert settings.ae_title == "FROMFILE"  # file beats the default
    assert settings.dicom_port == 4242  # environment beats the file
    assert settings.http_port == 9000  # a flag beats everything
    assert settings.database_url == f"sqlite:///{(tmp_path / 'd').resolve()}/index.sqlite"
    assert settings.storage_url == (tmp_path / "d" / "blobs").resolve().as_uri()
