"""`prune-explorer app` lets in only who holds its token, checks XSRF, and shows script fields only when allowed.

Against real app processes (the CLI's own Voila command line) and headless Chromium: a request
without the token is sent to the login page or refused; the token in the URL opens the panel; a
POST without the XSRF cookie's value is refused while the page's own beacon (which carries it)
still shuts its kernel down on unload; the training-script fields exist only with --allow-scripts.
"""
from __future__ import annotations

import http.client
import time
import uuid
from urllib.parse import urlsplit

import pytest
from playwright.sync_api import expect

from browser.conftest import _stop, start_app

pytestmark = [pytest.mark.browser, pytest.mark.slow]

RENDER_S = 240_000
SHUTDOWN_S = 60


def request(base: str, method: str, path: str, headers: dict | None = None, body: str | None = None):
    """One HTTP request, redirects not followed: (status, Location header, body)."""
    where = urlsplit(base)
    conn = http.client.HTTPConnection(where.hostname, where.port, timeout=60)
    try:
        conn.request(method, path, body=body, headers=headers or {})
        response = conn.getresponse()
        return response.status, response.getheader("Location") or "", response.read().decode(errors="replace")
    finally:
        conn.close()


def test_without_its_token_the_app_sends_every_request_to_the_login_page_or_refuses_it(voila):
    base, token = voila["base"], voila["token"]
    assert token and len(token) >= 32 and f"?token={token}" in voila["url"]  # a random token, printed in the URL
    for path in ("/", "/?token=wrong", "/anything"):
        status, location, body = request(base, "GET", path)
        assert status in (302, 403), (path, status)
        assert status == 403 or location.startswith("/login"), location
        assert "pe-explorer" not in body and "widget-view" not in body
    status, _, _ = request(base, "GET", f"/api/kernels/{uuid.uuid4()}")  # the kernel API too
    assert status == 403
    status, _, _ = request(base, "POST", f"/voila/api/shutdown/{uuid.uuid4()}")
    assert status == 403


def test_the_token_opens_the_panel_and_a_post_without_the_xsrf_value_is_refused(browser, voila, artifacts):
    context = browser.new_context(viewport={"width": 1500, "height": 1100})
    page = context.new_page()
    page.goto(voila["url"], wait_until="commit")  # Voila runs the notebook while it sends the page
    expect(page.locator(".pe-explorer")).to_be_visible(timeout=RENDER_S)
    expect(page.locator(".pe-script")).to_have_count(0)  # launched without --allow-scripts: no script fields
    expect(page.locator(".pe-source-dir")).to_have_count(0)
    page.locator(".pe-explorer").screenshot(path=str(artifacts / "voila-token.png"))

    kernel = page.evaluate("() => JSON.parse(document.getElementById('jupyter-config-data').textContent).kernelId")
    cookies = {c["name"]: c["value"] for c in context.cookies()}
    assert "_xsrf" in cookies
    login = "; ".join(f"{k}={v}" for k, v in cookies.items() if k != "_xsrf")  # logged in by the token's cookie
    form = {"Content-Type": "application/x-www-form-urlencoded"}
    shutdown = f"/voila/api/shutdown/{kernel}"
    assert request(voila["base"], "POST", shutdown, {"Cookie": login, **form}, "")[0] == 403  # no XSRF at all
    with_cookie = f"{login}; _xsrf={cookies['_xsrf']}"
    assert request(voila["base"], "POST", shutdown, {"Cookie": with_cookie, **form}, "_xsrf=forged")[0] == 403
    assert request(voila["base"], "GET", f"/api/kernels/{kernel}", {"Cookie": login})[0] == 200  # still running

    page.close(run_before_unload=True)  # the page's own beacon carries the cookie's value: the kernel goes
    deadline = time.monotonic() + SHUTDOWN_S
    while request(voila["base"], "GET", f"/api/kernels/{kernel}", {"Cookie": login})[0] != 404:
        assert time.monotonic() < deadline, f"kernel {kernel} still running {SHUTDOWN_S} s after the page closed"
        time.sleep(0.2)  # polling the server for the kernel's end
    context.close()


def test_allow_scripts_shows_the_script_fields_naming_the_one_folder_scripts_run_from(browser, served, tmp_path,
                                                                                         artifacts):
    scripts = tmp_path / "scripts"
    scripts.mkdir()
    proc, app = start_app(served, "--allow-scripts", str(scripts))
    try:
        context = browser.new_context(viewport={"width": 1500, "height": 1100})
        page = context.new_page()
        page.goto(app["url"], wait_until="commit")
        expect(page.locator(".pe-explorer")).to_be_visible(timeout=RENDER_S)
        expect(page.locator(".pe-script")).to_have_count(1)
        expect(page.locator(".pe-source-dir")).to_have_count(1)
        expect(page.locator(".pe-scripts-folder")).to_contain_text(str(scripts))
        page.locator(".pe-explorer").screenshot(path=str(artifacts / "voila-allow-scripts.png"))
        context.close()
    finally:
        _stop(proc)
