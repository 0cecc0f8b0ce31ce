"""The web viewer (issue 5) in real Chromium, driven by Playwright, against a live server.

One ``pacs serve`` loaded with ``sample_dicom/`` (plus a three-series study whose patient
is called ``<img src=x onerror=alert(1)>``, one series with undecodable pixels) and one
headless Chromium (Debian's, never a downloaded one) serve the whole module; each test
has its own browser context. Screenshots go to ``test-artifacts/``.
"""

from __future__ import annotations

import hashlib
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from playwright.sync_api import Browser, BrowserContext, Page, Request, sync_playwright
from pydicom import dcmread
from pydicom.encaps import encapsulate
from pydicom.uid import generate_uid
from sqlalchemy import select

from storage.models import AuditEvent
from tests.conftest import ADMIN_PASSWORD, ROOT, SAMPLES, Server, require_tool
from viewer.presets import PRESETS

ARTIFACTS = ROOT / "test-artifacts"
HOSTILE = "<img src=x onerror=alert(1)>"
SITE = "BV Đa khoa Hà Giang"
TIMEOUT_MS = 10_000
SCREEN = {"width": 1440, "height": 900}


def hostile_study(folder: Path) -> Path:
    """A CT slice, an MR slice and an MR slice whose JPEG-LS pixel data is garbage,
    re-labelled as a new three-series study of a patient whose name is HTML."""
    folder.mkdir(parents=True)
    study = generate_uid()
    for number, sample in enumerate(("ct_chest", "mr_brain", "mr_brain"), start=1):
        ds = dcmread(sorted((SAMPLES / sample).rglob("*.dcm"))[0])
        ds.SpecificCharacterSet = "ISO_IR 192"
        ds.PatientName = HOSTILE
        ds.PatientID = "XSS0001"
        ds.StudyDescription = '"><script>alert(2)</script>'
        ds.SeriesDescription = f"<b>series {number}</b>"
        ds.StudyInstanceUID, ds.SeriesInstanceUID = study, generate_uid()
        ds.SeriesNumber = number
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
        ds.StudyDate = "20230101"
        if number == 3:  # stored as received; only rendering finds it undecodable
            ds.PixelData = encapsulate([b"\xff\xd8\xff\xf7 not JPEG-LS at all " * 8])
        ds.save_as(folder / f"hostile{number}.dcm", enforce_file_format=True)
    return folder


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    root = tmp_path_factory.mktemp("viewer")
    srv = Server(root / "pacs-data")
    folders = [str(p) for p in sorted(SAMPLES.glob("*/")) if p.is_dir()]
    folders.append(str(hostile_study(root / "hostile")))
    subprocess.run(
        [sys.executable, "-m", "pacs.cli", "import", "--site", SITE, *folders],
        env=srv.env,
        check=True,
        capture_output=True,
    )
    srv.start()
    yield srv
    srv.stop()


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    chromium = require_tool("chromium")
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=chromium, headless=True)
        yield browser
        browser.close()


@pytest.fixture(scope="module")
def token(server: Server) -> str:
    response = httpx.post(
        f"{server.base_url}/api/auth/token",
        json={"username": "admin", "password": ADMIN_PASSWORD},
    )
    response.raise_for_status()
    return str(response.json()["access_token"])


@pytest.fixture
def context(browser: Browser) -> Iterator[BrowserContext]:
    context = browser.new_context(viewport=SCREEN)
    context.set_default_timeout(TIMEOUT_MS)
    yield context
    context.close()


class Watched:
    """A page with its dialogs, page errors and image requests recorded."""

    def __init__(self, page: Page) -> None:
        self.page = page
        self.dialogs: list[str] = []
        self.errors: list[str] = []
        self.requests: list[str] = []
        page.on("dialog", self._dialog)
        page.on("pageerror", lambda error: self.errors.append(str(error)))
        page.on("console", lambda m: m.type == "error" and self.errors.append(m.text))
        page.on("request", self._request)

    def _dialog(self, dialog: Any) -> None:
        self.dialogs.append(dialog.message)
        dialog.dismiss()

    def _request(self, request: Request) -> None:
        if "/rendered" in request.url:
            self.requests.append(request.url)


def holding_token(context: BrowserContext, token: str, username: str) -> Watched:
    """A page of ``context`` already signed in with ``token`` as ``username``."""
    context.add_init_script(
        f"sessionStorage.setItem('pacs.token', {token!r});"
        f"sessionStorage.setItem('pacs.user', {username!r});"
    )
    return Watched(context.new_page())


@pytest.fixture
def signed_in(context: BrowserContext, server: Server, token: str) -> Watched:
    """A page already holding a token (the sign-in form has its own test)."""
    return holding_token(context, token, "admin")


def study_uid(server: Server, name: str) -> str:
    response = httpx.get(
        f"{server.base_url}/api/worklist",
        params={"name": name},
        auth=("admin", ADMIN_PASSWORD),
    )
    response.raise_for_status()
    return str(response.json()["items"][0]["study_instance_uid"])


def open_study(watched: Watched, server: Server, name: str) -> Page:
    page = watched.page
    page.goto(f"{server.base_url}/viewer/#/study/{study_uid(server, name)}")
    page.wait_for_selector(".viewport[data-viewport='1'][data-shown-index='1']")
    return page


def canvas_digest(page: Page, viewport: int = 1) -> str:
    data = page.eval_on_selector(
        f".viewport[data-viewport='{viewport}'] canvas", "canvas => canvas.toDataURL()"
    )
    return hashlib.sha256(data.encode()).hexdigest()


def shown_slices(page: Page) -> list[int]:
    """Slice numbers in the order the viewport painted them (performance marks)."""
    return page.evaluate("performance.getEntriesByName('viewer:slice').map(m => m.detail.index)")


def distinct(slices: list[int]) -> list[int]:
    """Repeats dropped: a slice is marked again when its full-quality image replaces
    the preview."""
    return [n for i, n in enumerate(slices) if i == 0 or n != slices[i - 1]]


def overlay(page: Page, corner: str, viewport: int = 1) -> str:
    return page.inner_text(f".viewport[data-viewport='{viewport}'] .vp-{corner}")


def screenshot(page: Page, name: str) -> None:
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / f"viewer-{name}.png"))


# --- the static site ------------------------------------------------------------------


def test_static_files_are_public_with_a_strict_policy(server: Server) -> None:
    for path in ("/viewer/", "/viewer/js/main.js", "/viewer/css/viewer.css", "/viewer/nope.js"):
        response = httpx.get(server.base_url + path)
        assert response.status_code == (404 if "nope" in path else 200), path
        policy = response.headers["content-security-policy"]
        for directive in (
            "default-src 'self'",
            "script-src 'self'",
            "img-src 'self' blob: data:",
            "frame-ancestors 'none'",
        ):
            assert directive in policy, (path, policy)
        assert "unsafe-inline" not in policy
        assert response.headers["x-content-type-options"] == "nosniff"
    assert httpx.get(server.base_url + "/viewer/").text.startswith("<!doctype html>")
    assert httpx.get(server.base_url + "/viewer").status_code == 307  # to /viewer/
    presets = httpx.get(server.base_url + "/viewer/presets.json").json()
    assert presets["lung"] == {"center": PRESETS["lung"].center, "width": PRESETS["lung"].width}
    # Outside the static folder, nothing is served.
    assert httpx.get(server.base_url + "/viewer/../pyproject.toml").status_code == 404
    assert httpx.get(server.base_url + "/viewer/%2e%2e/%2e%2e/pyproject.toml").status_code == 404


# --- the worklist endpoint --------------------------------------------------------------


def test_worklist_needs_a_reader_and_checks_its_filters(server: Server) -> None:
    url = f"{server.base_url}/api/worklist"
    admin = ("admin", ADMIN_PASSWORD)
    assert httpx.get(url).status_code == 401
    rows = httpx.get(url, auth=admin).json()["items"]
    dates = [row["study_date"] for row in rows]
    assert dates == sorted(dates, reverse=True) and len(rows) == 5  # newest first
    for row in rows:
        assert row["report"] is None  # reports arrive with issue 7
        assert row["source_site"] == SITE
    by_name = {row["patient_id"]: row for row in rows}
    assert by_name["BN0001"]["number_of_instances"] == 24
    assert by_name["BN0001"]["patient_sex"] == "M"
    assert by_name["BN0003"]["modalities"] == ["XA"]

    def ids(**params: str) -> list[str]:
        response = httpx.get(url, params=params, auth=admin)
        assert response.status_code == 200, response.text
        return [row["patient_id"] for row in response.json()["items"]]

    assert ids(name="nguyen") == ["BN0001"]
    assert ids(name="dang") == ["BN0002"]
    assert ids(name="NGUYEN an") == ["BN0001"]
    assert ids(modality="xa") == ["BN0003"]
    assert ids(date_from="2024-03-13", date_to="2024-03-18") == ["BN0003", "BN0002"]
    assert ids(patient_id="BN000", limit="2", offset="1") == ["BN0003", "BN0002"]
    assert ids(site="hà giang") and not ids(site="Cao Bằng")
    page = httpx.get(url, params={"limit": 2}, auth=admin).json()
    assert page["more"] is True and len(page["items"]) == 2
    for bad in ({"date_from": "2024-13"}, {"modality": "C T"}, {"limit": "0"}):
        response = httpx.get(url, params=bad, auth=admin)
        assert 400 <= response.status_code < 500 and response.json()["detail"], bad
    # Every search is in the audit trail (written in batches: give it a moment).
    deadline = time.monotonic() + 5
    while True:
        with server.opened() as archive, archive.sessions() as session:
            events = session.scalars(
                select(AuditEvent).where(AuditEvent.path.like("/api/worklist?name=dang%"))
            ).all()
        if events or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    assert [(e.username, e.action, e.status) for e in events] == [("admin", "search", 200)]


# --- in the browser -----------------------------------------------------------------------


def test_sign_in_search_open_scroll_and_preset(context: BrowserContext, server: Server) -> None:
    watched = Watched(context.new_page())
    page = watched.page
    page.goto(f"{server.base_url}/viewer/")
    page.fill("input[name=username]", "admin")
    page.fill("input[name=password]", "not the password")
    page.click("form.login button[type=submit]")
    page.wait_for_selector(".login-message:has-text('Wrong user name or password')")
    watched.errors.clear()  # the browser logs the 401 it was meant to get
    screenshot(page, "sign-in")
    page.fill("input[name=password]", ADMIN_PASSWORD)
    page.click("form.login button[type=submit]")
    page.wait_for_selector("table.worklist tbody tr")
    assert page.evaluate("sessionStorage.getItem('pacs.token')")
    screenshot(page, "worklist")

    page.fill("input[name=name]", "nguyen")
    page.wait_for_function(
        "() => document.querySelectorAll('table.worklist tbody tr').length === 1"
    )
    row = page.locator("table.worklist tbody tr")
    assert row.locator(".c-patient").inner_text() == "Nguyễn Văn An"
    assert row.locator(".c-report").inner_text() == "—"
    assert row.locator(".c-images").inner_text() == "24"
    row.click()

    page.wait_for_selector(".viewport[data-viewport='1'][data-shown-index='1']")
    page.wait_for_selector(".series-card img[src^='blob:']")  # thumbnail, fetched with the token
    first = canvas_digest(page)
    assert "Im 1 / 24" in overlay(page, "bl")
    assert "Nguyễn Văn An" in overlay(page, "tl")
    for _ in range(9):
        page.keyboard.press("ArrowDown")
    page.wait_for_selector(
        ".viewport[data-viewport='1'][data-shown-index='10'][data-quality='full']"
    )
    assert "Im 10 / 24" in overlay(page, "bl")
    assert page.input_value(".viewport[data-viewport='1'] .vp-scrollbar") == "9"
    assert canvas_digest(page) != first
    assert shown_slices(page)[-1] == 10

    tenth = canvas_digest(page)
    watched.requests.clear()
    page.click("button[data-preset='lung']")
    page.wait_for_selector(".viewport[data-viewport='1'][data-window='-600,1500']")
    assert any("window=-600%2C1500%2CLINEAR" in url for url in watched.requests), watched.requests
    assert "W 1500  L -600" in overlay(page, "br")
    assert canvas_digest(page) != tenth
    screenshot(page, "ct-lung")

    # Right-drag: a new window, asked for once the drag pauses.
    box = page.locator(".viewport[data-viewport='1'] canvas").bounding_box()
    assert box is not None
    x, y = box["x"] + box["width"] / 2, box["y"] + box["height"] / 2
    page.mouse.move(x, y)
    page.mouse.down(button="right")
    page.mouse.move(x + 60, y + 30, steps=5)
    page.mouse.up(button="right")
    page.wait_for_function(
        "() => document.querySelector(\".viewport[data-viewport='1']\").dataset.window"
        " !== '-600,1500' && document.querySelector(\".viewport[data-viewport='1']\")"
        ".dataset.quality === 'full'"
    )
    assert watched.requests[-1].count("window=") == 1
    assert "window=-600%2C1500" not in watched.requests[-1]

    # Two series side by side.
    page.click("button[data-layout='2']")
    page.wait_for_selector(".viewport[data-viewport='2'][data-shown-index='1']")
    assert page.locator(".viewport[data-viewport='2']").is_visible()
    # Linked: the other viewport follows the active one (the second) by slice location.
    page.keyboard.press("l")
    page.wait_for_selector(".viewport[data-viewport='1'][data-shown-index='1']")
    for _ in range(3):
        page.keyboard.press("ArrowDown")
    page.wait_for_selector(
        ".viewport[data-viewport='2'][data-shown-index='4'][data-quality='full']"
    )
    page.wait_for_selector(
        ".viewport[data-viewport='1'][data-shown-index='4'][data-quality='full']"
    )
    screenshot(page, "ct-side-by-side")
    assert not watched.errors and not watched.dialogs

    page.click("#sign-out")
    page.wait_for_selector("form.login")
    assert page.evaluate("sessionStorage.getItem('pacs.token')") is None


def wait_shown(page: Page, index: int) -> None:
    page.wait_for_selector(
        f".viewport[data-viewport='1'][data-shown-index='{index}'][data-quality='full']"
    )


def test_a_study_link_leads_there_after_signing_in(context: BrowserContext, server: Server) -> None:
    page = Watched(context.new_page()).page
    page.goto(f"{server.base_url}/viewer/#/study/{study_uid(server, 'dang')}")
    page.fill("input[name=username]", "admin")
    page.fill("input[name=password]", ADMIN_PASSWORD)
    page.click("form.login button[type=submit]")
    page.wait_for_selector(".viewport[data-viewport='1'][data-shown-index='1']")
    assert "Đặng Thị Hoa" in overlay(page, "tl")


def test_paging_zoom_pan_and_invert(signed_in: Watched, server: Server) -> None:
    page = open_study(signed_in, server, "dang")
    assert "Im 1 / 16" in overlay(page, "bl")
    page.mouse.move(700, 450)
    for _ in range(3):
        page.mouse.wheel(0, 100)
        time.sleep(0.05)
    wait_shown(page, 4)
    page.keyboard.press("PageDown")
    wait_shown(page, 14)
    page.keyboard.press("End")
    wait_shown(page, 16)
    page.keyboard.press("PageUp")
    wait_shown(page, 6)
    page.keyboard.press("Home")
    wait_shown(page, 1)
    page.locator(".viewport[data-viewport='1'] .vp-scrollbar").fill("7")
    wait_shown(page, 8)
    assert "Im 8 / 16" in overlay(page, "bl")

    fitted = canvas_digest(page)
    zoom = overlay(page, "br")
    page.keyboard.down("Control")
    page.mouse.wheel(0, -300)
    page.keyboard.up("Control")
    page.wait_for_function(
        "zoom => document.querySelector(\".viewport[data-viewport='1'] .vp-br\")"
        ".innerText !== zoom",
        arg=zoom,
    )
    zoomed = canvas_digest(page)
    assert zoomed != fitted
    page.mouse.move(700, 450)
    page.mouse.down(button="middle")
    page.mouse.move(780, 500, steps=4)
    page.mouse.up(button="middle")
    time.sleep(0.1)  # the pan is drawn on the next animation frame
    assert canvas_digest(page) not in (fitted, zoomed)
    page.keyboard.press("f")
    time.sleep(0.1)
    assert canvas_digest(page) == fitted
    assert overlay(page, "br") == zoom

    page.keyboard.press("i")
    page.wait_for_function(
        "() => document.querySelector(\".viewport[data-viewport='1'] .vp-br\")"
        ".innerText.includes('inverted')"
    )
    assert canvas_digest(page) != fitted
    screenshot(page, "mr-inverted")
    page.keyboard.press("r")
    time.sleep(0.1)
    assert canvas_digest(page) == fitted
    assert not signed_in.errors


def test_cine_plays_every_frame_of_the_xa_series(signed_in: Watched, server: Server) -> None:
    page = open_study(signed_in, server, "tran")
    assert "Fr 1 / 30" in overlay(page, "bl")
    assert page.inner_text(".series-card .count") == "30 fr"
    # The file's RecommendedDisplayFrameRate.
    page.wait_for_function("() => document.querySelector('select.fps').value === '15'")
    page.click("button[data-action='play']")
    page.wait_for_function(
        "() => Number(document.querySelector(\".viewport[data-viewport='1']\")"
        ".dataset.shownIndex) >= 12"
    )
    page.click("button[data-action='play']")  # pause
    shown = distinct(shown_slices(page))
    assert shown[:12] == list(range(1, 13)), shown  # in order, none skipped
    assert any("/frames/" in url for url in signed_in.requests)
    screenshot(page, "xa-cine")
    assert not signed_in.errors


def test_language_switch(signed_in: Watched, server: Server) -> None:
    page = open_study(signed_in, server, "nguyen")
    page.select_option("#language", "vi")
    page.wait_for_selector("button[data-preset='lung']:has-text('Phổi')")
    assert "Ảnh 1 / 24" in overlay(page, "bl")
    assert page.inner_text("#sign-out") == "Đăng xuất"
    assert page.evaluate("document.documentElement.lang") == "vi"
    page.goto(f"{server.base_url}/viewer/#/worklist")
    page.wait_for_selector("th:has-text('Bệnh nhân')")
    page.wait_for_selector("table.worklist tbody tr")
    screenshot(page, "worklist-vi")
    page.select_option("#language", "en")
    page.wait_for_selector("th:has-text('Patient')")


def test_hostile_patient_name_is_text(signed_in: Watched, server: Server) -> None:
    page = signed_in.page
    page.goto(f"{server.base_url}/viewer/#/worklist")
    page.fill("input[name=patient_id]", "XSS")
    page.wait_for_function(
        "() => document.querySelectorAll('table.worklist tbody tr').length === 1"
    )
    cell = page.locator("table.worklist tbody tr .c-patient")
    assert cell.inner_text() == HOSTILE
    assert page.locator("img[src='x']").count() == 0
    page.locator("table.worklist tbody tr").click()
    page.wait_for_selector(".viewport[data-viewport='1'][data-shown-index='1']")
    assert HOSTILE in overlay(page, "tl")
    assert '"><script>alert(2)</script>' in page.inner_text(".study-title")
    assert page.locator(".series-card .series-desc").all_inner_texts() == [
        "<b>series 1</b>",
        "<b>series 2</b>",
        "<b>series 3</b>",
    ]
    # The second series beside the first, then in place of it.
    first, second, broken = page.locator(".series-card").evaluate_all(
        "cards => cards.map(card => card.dataset.series)"
    )
    page.click("button[data-layout='2']")
    page.wait_for_selector(
        f".viewport[data-viewport='2'][data-series='{second}'][data-shown-index]"
    )
    assert "<b>series 2</b>" in overlay(page, "bl", viewport=2)
    screenshot(page, "hostile-side-by-side")
    page.click("button[data-layout='1']")
    page.locator(".series-card").nth(1).click()
    page.wait_for_selector(
        f".viewport[data-viewport='1'][data-series='{second}'][data-shown-index]"
    )
    assert page.get_attribute(".viewport[data-viewport='1']", "data-series") != first
    # Pixels the server cannot decode: its reason, in the viewport, as text.
    page.locator(".series-card").nth(2).click()
    page.wait_for_selector(f".viewport[data-viewport='1'][data-series='{broken}']")
    page.wait_for_selector(".viewport[data-viewport='1'] .vp-message:has-text('cannot be decoded')")
    assert page.locator(".series-card.no-thumb").count() == 1
    screenshot(page, "undecodable")
    signed_in.errors.clear()  # the browser logs the 422s it was meant to get
    time.sleep(0.3)
    assert page.locator("img[src='x']").count() == 0
    assert page.locator("b, script:not([src])").count() == 0
    assert not signed_in.dialogs and not signed_in.errors
    screenshot(page, "hostile-name")


def test_first_slice_over_a_2_mbit_link(signed_in: Watched, server: Server) -> None:
    page = signed_in.page
    cdp = page.context.new_cdp_session(page)
    cdp.send("Network.enable")
    cdp.send(
        "Network.emulateNetworkConditions",
        {
            "offline": False,
            "latency": 100,
            "downloadThroughput": 2_000_000 / 8,
            "uploadThroughput": 2_000_000 / 8,
        },
    )
    started = time.monotonic()
    open_study(signed_in, server, "nguyen")
    first_slice = time.monotonic() - started
    assert first_slice < 5, f"first slice after {first_slice:.1f} s at 2 Mbit/s"
    # Scrolling on the thin link: previews first, full quality once it stops.
    signed_in.requests.clear()
    for _ in range(4):
        page.keyboard.press("ArrowDown")
    page.wait_for_selector(
        ".viewport[data-viewport='1'][data-shown-index='5'][data-quality='full']",
        timeout=15_000,
    )
    assert any("quality=40" in url for url in signed_in.requests), signed_in.requests
    assert any("quality=90" in url for url in signed_in.requests), signed_in.requests
    screenshot(page, "ct-throttled")
    # A right-drag reshapes the image on screen at once; the new window's image,
    # asked for after the drag rests, takes at least a round trip to replace it.
    shown = canvas_digest(page)
    box = page.locator(".viewport[data-viewport='1'] canvas").bounding_box()
    assert box is not None
    x, y = box["x"] + box["width"] / 2, box["y"] + box["height"] / 2
    page.mouse.move(x, y)
    page.mouse.down(button="right")
    page.mouse.move(x - 40, y - 40, steps=4)
    page.wait_for_timeout(50)
    assert canvas_digest(page) != shown
    assert page.get_attribute(".viewport[data-viewport='1']", "data-window") == ""
    page.mouse.up(button="right")
    page.wait_for_function(
        "() => document.querySelector(\".viewport[data-viewport='1']\").dataset.window !== ''",
        timeout=15_000,
    )
