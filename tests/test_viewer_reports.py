"""The viewer's report panel, downloads and share-link page (issue 7) in real Chromium.

The live server, the browser and the page helpers are those of :mod:`tests.test_viewer`
(``sample_dicom/`` imported as sent by one site). A radiologist of that site and a
referring doctor named as the XA study's ReferringPhysicianName are added through
``/api/users``. Downloads are caught as the browser saves them and read back:
``pdftotext`` for report PDFs, ``zipfile`` for study ZIPs.
"""

from __future__ import annotations

import io
import re
import zipfile
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from playwright.sync_api import Browser, BrowserContext, Download, Page

from tests import test_viewer
from tests.conftest import ADMIN_PASSWORD, Server, pdftotext
from tests.test_viewer import (
    HOSTILE,
    SCREEN,
    SITE,
    TIMEOUT_MS,
    Watched,
    holding_token,
    screenshot,
    study_uid,
)

# The viewer tests' fixtures; module-scoped ones start again for this module.
server = test_viewer.server
browser = test_viewer.browser
context = test_viewer.context

RADIOLOGIST = ("rad", "radiologist-password")
REFERRING = ("ref", "referring-password")
SIGNER = "BS. Trần Minh Đức"
FINDINGS = "Nốt mờ 4 mm thùy trên phổi phải."
IMPRESSION = "Theo dõi sau 6 tháng."
XA_REFERRER = "Hoàng^Văn Sơn"  # the XA sample's ReferringPhysicianName
STENOSIS = f"Hẹp 70% đoạn giữa LAD. {HOSTILE}"


@pytest.fixture(scope="module")
def users(server: Server) -> dict[str, str]:
    """Bearer tokens of a radiologist of the sending site and of a referring doctor."""
    admin = ("admin", ADMIN_PASSWORD)
    for (name, password), role, extra in (
        (RADIOLOGIST, "radiologist", {"sites": [SITE]}),
        (REFERRING, "referring", {"referring_name": XA_REFERRER}),
    ):
        body = {"username": name, "password": password, "role": role, **extra}
        created = httpx.post(f"{server.base_url}/api/users", json=body, auth=admin)
        assert created.status_code == 201, created.text
    tokens = {}
    for name, password in (RADIOLOGIST, REFERRING):
        answer = httpx.post(
            f"{server.base_url}/api/auth/token", json={"username": name, "password": password}
        )
        answer.raise_for_status()
        tokens[name] = str(answer.json()["access_token"])
    return tokens


@pytest.fixture
def radiologist(context: BrowserContext, users: dict[str, str]) -> Watched:
    return holding_token(context, users[RADIOLOGIST[0]], RADIOLOGIST[0])


@pytest.fixture
def stranger(browser: Browser) -> Iterator[Page]:
    """A fresh browser context with no account: the share link's recipient."""
    context = browser.new_context(viewport=SCREEN)
    context.set_default_timeout(TIMEOUT_MS)
    yield context.new_page()
    context.close()


def open_with_panel(watched: Watched, server: Server, name: str) -> Page:
    page = watched.page
    page.goto(f"{server.base_url}/viewer/#/study/{study_uid(server, name)}")
    page.wait_for_selector(".viewport[data-viewport='1'][data-shown-index='1']")
    page.wait_for_selector(".report-panel[data-role]")
    return page


def signed_report(server: Server, study: str, findings: str) -> int:
    """A report written and signed over the API (what the panel is tested to do)."""
    auth = ("admin", ADMIN_PASSWORD)
    base = server.base_url
    created = httpx.post(
        f"{base}/api/studies/{study}/reports", json={"findings": findings}, auth=auth
    )
    assert created.status_code == 201, created.text
    rid = int(created.json()["id"])
    signed = httpx.post(
        f"{base}/api/reports/{rid}/finalize", json={"signer": SIGNER}, auth=auth, timeout=30
    )
    assert signed.status_code == 200, signed.text
    return rid


def pdf_text(download: Download, tmp_path: Path) -> str:
    path = tmp_path / download.suggested_filename
    download.save_as(path)
    assert path.read_bytes().startswith(b"%PDF-")
    return pdftotext(path)


def test_a_radiologist_writes_signs_and_downloads(
    radiologist: Watched, server: Server, tmp_path: Path
) -> None:
    page = open_with_panel(radiologist, server, "nguyen")
    editor = page.locator(".rp-editor[data-report='new']")
    # A CT of the chest: the CT chest template, its structured fields.
    assert editor.locator("select[name=template]").input_value() == "ct-chest"
    editor.locator("input[name=field-lungs]").fill("Phổi phải có nốt mờ nhỏ")
    editor.locator("textarea[name=findings]").fill(FINDINGS)
    editor.locator("textarea[name=impression]").fill(IMPRESSION)
    page.locator(".viewport[data-viewport='1']").click()
    page.keyboard.press("ArrowDown")  # the second slice becomes a key image
    page.wait_for_selector(".viewport[data-viewport='1'][data-shown-index='2']")
    editor.locator("[data-action=add-key]").click()
    assert editor.locator(".rp-keylist li").inner_text().startswith("Se ")
    screenshot(page, "report-editor")
    editor.locator("[data-action=save]").click()
    page.wait_for_selector(".rp-row[data-status=draft]")
    assert page.inner_text(".report-panel .rp-message") == "Draft saved."
    assert page.input_value(".rp-editor textarea[name=findings]") == FINDINGS  # as saved

    page.click(".rp-editor [data-action=finalize]")
    page.fill(".rp-confirm input[name=signer]", SIGNER)
    page.click(".rp-confirm [data-action=sign]")
    reader = page.locator(".rp-reader[data-status=final]")
    reader.wait_for()
    assert reader.locator(".rp-status").inner_text() == "FINAL"
    assert SIGNER in reader.locator(".rp-signed").inner_text()
    assert reader.locator(".rp-findings p").inner_text() == FINDINGS
    page.wait_for_function("() => document.querySelector('.rp-key')?.naturalWidth > 0")
    assert page.locator(".rp-editor").count() == 0  # a signed report is not edited
    screenshot(page, "report-final")

    with page.expect_download() as pdf:
        reader.locator("[data-action=download-pdf]").click()
    text = pdf_text(pdf.value, tmp_path)
    for expected in (FINDINGS, IMPRESSION, "Status: FINAL", SIGNER, "Key images"):
        assert expected in text, expected

    with page.expect_download() as study_zip:
        page.click(".toolbar [data-action=download-study]")
    saved = tmp_path / study_zip.value.suggested_filename
    study_zip.value.save_as(saved)
    assert saved.suffix == ".zip"
    with zipfile.ZipFile(io.BytesIO(saved.read_bytes())) as archive:
        names = archive.namelist()
    assert "DICOMDIR" in names and len(names) >= 25  # 24 slices, the report, DICOMDIR

    with page.expect_download() as jpeg:
        page.click(".toolbar [data-action=download-jpeg]")
    assert jpeg.value.suggested_filename.endswith("-im2.jpg")

    # The worklist says the study's report is final.
    page.click("a.back")
    row = page.locator(f"tr[data-study='{study_uid(server, 'nguyen')}']")
    assert row.locator(".c-report").inner_text() == "Final"
    assert radiologist.errors == []


def test_a_share_link_with_a_pin_opens_without_an_account(
    radiologist: Watched, server: Server, stranger: Page, tmp_path: Path
) -> None:
    study = study_uid(server, "dang")
    signed_report(server, study, FINDINGS)
    page = open_with_panel(radiologist, server, "dang")
    share = page.locator(".report-panel .sl")
    share.locator("select[name=expires]").select_option(str(24 * 60))
    share.locator("input[name=pin]").fill("2468")
    share.locator("[data-action=share]").click()
    url = share.locator(".sl-url").input_value()
    token = re.fullmatch(rf"{re.escape(server.base_url)}/viewer/#/share/([\w-]+)", url)
    assert token, url
    assert share.locator(".sl-list li[data-state=active]").count() == 1

    images: list[str] = []
    stranger.on("request", lambda r: "/rendered" in r.url and images.append(r.url))
    stranger.goto(url)
    stranger.fill(".share-pin input[name=pin]", "1111")
    stranger.click(".share-pin button[type=submit]")
    stranger.wait_for_selector(".share-pin .login-message")  # wrong PIN: asked again
    screenshot(stranger, "share-pin")
    stranger.fill(".share-pin input[name=pin]", "2468")
    stranger.click(".share-pin button[type=submit]")
    stranger.wait_for_function(
        "() => document.querySelector('.share-image[data-index=\"0\"]')?.naturalWidth > 0"
    )
    stranger.keyboard.press("ArrowDown")
    stranger.wait_for_selector(".share-image[data-index='1']")
    assert images and all(f"/api/share/{token[1]}/instances/" in u for u in images)
    report = stranger.locator(".rp-reader[data-status=final]")
    assert report.locator(".rp-findings p").inner_text() == FINDINGS
    assert stranger.locator(".share .rp-editor, .share .sl").count() == 0
    screenshot(stranger, "share-page")
    with stranger.expect_download() as pdf:
        report.locator("[data-action=download-pdf]").click()
    assert FINDINGS in pdf_text(pdf.value, tmp_path)
    with stranger.expect_download() as study_zip:
        stranger.click(".share [data-action=download-study]")
    assert study_zip.value.suggested_filename.endswith(".zip")

    # Revoked: the same link now says so.
    share.locator(".sl-list li[data-state=active] [data-action=revoke]").click()
    page.wait_for_selector(".sl-list li[data-state=revoked]")
    stranger.reload()
    assert (
        stranger.locator(".share-notice[data-state=gone]")
        .inner_text()
        .endswith("This link has expired or was revoked. Ask the sender for a new one.")
    )
    stranger.goto(f"{server.base_url}/viewer/#/share/not-a-token")
    stranger.wait_for_selector(".share-notice[data-state=unknown]")
    assert radiologist.errors == []


def test_amending_and_what_a_referring_doctor_sees(
    radiologist: Watched, server: Server, browser: Browser, users: dict[str, str]
) -> None:
    study = study_uid(server, "tran")
    first = signed_report(server, study, STENOSIS)
    page = open_with_panel(radiologist, server, "tran")
    page.click(f".rp-reader[data-report='{first}'] [data-action=amend]")
    editor = page.locator(".rp-editor")
    editor.wait_for()
    assert editor.locator("textarea[name=findings]").input_value() == STENOSIS
    assert editor.locator("select[name=template]").input_value() == "none"
    editor.locator("textarea[name=impression]").fill("Bệnh một thân động mạch vành.")
    editor.locator("[data-action=finalize]").click()
    page.click(".rp-confirm [data-action=sign]")
    page.wait_for_selector(".rp-reader[data-status=final]")
    statuses = page.locator(".rp-row").evaluate_all("rows => rows.map(r => r.dataset.status)")
    assert statuses == ["final", "amended"]  # newest first

    # The referring doctor of this study reads both versions and writes nothing.
    context = browser.new_context(viewport=SCREEN)
    context.set_default_timeout(TIMEOUT_MS)
    try:
        watched = holding_token(context, users[REFERRING[0]], REFERRING[0])
        referring = open_with_panel(watched, server, "tran")
        referring.wait_for_selector(".rp-reader[data-status=final]")
        assert referring.locator(".rp-row").count() == 2
        assert referring.locator(".rp-editor, .sl, [data-action=amend]").count() == 0
        assert "Bệnh một thân" in referring.inner_text(".rp-reader .rp-impression")
        # The server's text stays text: the findings hold HTML.
        assert referring.inner_text(".rp-reader .rp-findings p") == STENOSIS
        assert referring.locator(".rp-reader .rp-findings img").count() == 0
        assert watched.dialogs == []
        referring.click(".rp-row[data-status=amended]")
        referring.wait_for_selector(f".rp-reader[data-report='{first}'][data-status=amended]")
        assert watched.errors == []
    finally:
        context.close()


def test_the_panel_and_its_messages_speak_vietnamese(radiologist: Watched, server: Server) -> None:
    page = open_with_panel(radiologist, server, "muller")
    page.select_option("#language", "vi")
    assert page.inner_text(".report-panel .panel-title") == "Kết quả"
    assert page.inner_text(".rp-editor [data-action=save]") == "Lưu nháp"
    assert page.inner_text(".sl [data-action=share]") == "Tạo liên kết"
    page.select_option("#language", "en")
