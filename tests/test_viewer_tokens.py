"""The web viewer renews its access token and revokes its session, in real Chromium."""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Iterator

import httpx
import pytest
from playwright.sync_api import Page, Response, sync_playwright

from tests.conftest import ADMIN_PASSWORD, SAMPLES, Server, require_tool
from tests.test_oidc import CLIENT_ID, CLIENT_SECRET, Provider


@pytest.fixture(scope="module")
def provider() -> Iterator[Provider]:
    idp = Provider()
    yield idp
    idp.stop()


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, provider: Provider) -> Iterator[Server]:
    """One study, the admin, and dr.lan, who may also sign in at the provider."""
    oidc = {
        "PACS_OIDC_ISSUER": provider.issuer,
        "PACS_OIDC_CLIENT_ID": CLIENT_ID,
        "PACS_OIDC_CLIENT_SECRET": CLIENT_SECRET,
    }
    srv = Server(tmp_path_factory.mktemp("viewer-tokens") / "pacs-data", oidc)
    cli = [sys.executable, "-m", "pacs.cli", "import", str(SAMPLES / "ct_latin1")]
    subprocess.run(cli, env=srv.env, check=True, capture_output=True)
    srv.start(timeout=90)  # these browser tests run beside others on two cores
    user = {"username": "dr.lan", "password": "dr-lan-password", "role": "radiologist"}
    added = httpx.post(f"{srv.base_url}/api/users", json=user, auth=("admin", ADMIN_PASSWORD))
    assert added.status_code == 201, added.text
    yield srv
    srv.stop()


@pytest.fixture
def page(server: Server) -> Iterator[Page]:
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=require_tool("chromium"))
        context = browser.new_context()
        context.set_default_timeout(20_000)
        yield context.new_page()
        browser.close()


def stored(page: Page, key: str) -> str:
    return str(page.evaluate(f"sessionStorage.getItem('pacs.{key}')"))


def refused(server: Server, refresh_token: str) -> bool:
    url = f"{server.base_url}/api/auth/refresh"
    return httpx.post(url, json={"refresh_token": refresh_token}).status_code == 401


def search(page: Page, name: str) -> None:
    """Type a worklist filter: a fresh authenticated request, answered 200 in the end."""

    def answered(response: Response) -> bool:
        return "/api/worklist" in response.url and response.status == 200

    with page.expect_response(answered):
        page.fill("input[name=name]", name)


def test_the_viewer_refreshes_its_token_and_revokes_on_sign_out(page: Page, server: Server) -> None:
    unauthorized: list[str] = []

    def watch(response: Response) -> None:
        if response.status == 401:
            unauthorized.append(response.url)

    page.on("response", watch)
    page.goto(f"{server.base_url}/viewer/")
    page.fill("input[name=username]", "admin")
    page.fill("input[name=password]", ADMIN_PASSWORD)
    page.click("form.login button[type=submit]")
    page.wait_for_selector("table.worklist tbody tr")
    first_refresh = stored(page, "refresh")
    assert first_refresh and stored(page, "expires")

    # The server refuses the access token: the viewer renews it once and carries on.
    page.evaluate("sessionStorage.setItem('pacs.token', 'revoked-or-expired')")
    search(page, "a")
    assert [url for url in unauthorized if "/api/worklist" in url]  # it did meet a 401
    assert stored(page, "token").count(".") == 2  # a JWT again
    second_refresh = stored(page, "refresh")
    assert second_refresh != first_refresh
    assert refused(server, first_refresh)  # rotation: the used one is dead
    assert "#/login" not in page.url

    # Shortly before expiry it renews first, so the server never has to refuse it.
    unauthorized.clear()
    page.evaluate("sessionStorage.setItem('pacs.expires', String(Date.now() + 1000))")
    search(page, "b")
    assert unauthorized == []
    third_refresh = stored(page, "refresh")
    assert third_refresh != second_refresh

    page.click("#sign-out")
    page.wait_for_selector("input[name=username]")
    deadline = time.monotonic() + 5
    while not refused(server, third_refresh):  # the revocation is sent as the page goes
        assert time.monotonic() < deadline, "sign-out did not revoke the refresh token"
        time.sleep(0.2)


def test_signing_in_at_the_hospitals_provider(page: Page, server: Server) -> None:
    page.goto(f"{server.base_url}/viewer/")
    sso = page.locator("form.login a.sso")
    sso.wait_for(state="visible")
    assert sso.inner_text() == "Sign in with the hospital account"
    sso.click()  # to the provider, which signs dr.lan in, and back
    page.wait_for_selector("table.worklist tbody tr")
    assert page.url.endswith("/viewer/#/worklist")  # the tokens left the address bar
    assert "access_token" not in str(page.evaluate("location.href"))
    assert page.locator("#user").inner_text() == "dr.lan"
    assert stored(page, "token").count(".") == 2 and stored(page, "refresh")


def test_a_locked_account_is_told_so(page: Page, server: Server) -> None:
    page.goto(f"{server.base_url}/viewer/")
    page.fill("input[name=username]", "dr.lan")
    for _ in range(5):
        page.fill("input[name=password]", "not the password")
        with page.expect_response(lambda r: r.url.endswith("/api/auth/token")):
            page.click("form.login button[type=submit]")
    page.wait_for_selector(".login-message:has-text('locked after repeated failed sign-ins')")
