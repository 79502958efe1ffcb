"""The history site in a real browser (headless Chromium through Playwright): the charts and tables are
drawn, nothing is logged to the console, no request leaves the site's own files, and a model answer that
is a script shows as text."""

from __future__ import annotations

import shutil

import pytest
from test_history import SCRIPT, git, history_repo  # noqa: F401  (the fixture)

from oig.history import build


def chromium() -> str:
    path = shutil.which("chromium") or shutil.which("chromium-browser")
    if not path:
        pytest.skip("no chromium executable on PATH (Debian: apt-get install chromium); browsers are never downloaded")
    return path


def test_index_and_run_page_in_chromium(history_repo, tmp_path):  # noqa: F811
    sync_playwright = pytest.importorskip("playwright.sync_api", reason="the playwright package is not installed").sync_playwright
    executable = chromium()
    out = tmp_path / "site"
    build.build_site(history_repo, out)
    run3 = out / "runs" / (git(history_repo, "rev-parse", "HEAD")[:12] + ".html")
    problems: list[str] = []
    requests: list[str] = []
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=executable, args=["--no-sandbox", "--disable-gpu"])
        try:
            page = browser.new_page()
            page.on("console", lambda m: problems.append(f"console {m.type}: {m.text}"))
            page.on("pageerror", lambda e: problems.append(f"page error: {e}"))
            page.on("dialog", lambda d: (problems.append(f"dialog: {d.message}"), d.dismiss()))

            def record(route):
                requests.append(route.request.url)
                if route.request.url.startswith(out.as_uri() + "/"):
                    route.continue_()
                else:
                    route.abort()

            page.route("**/*", record)
            page.goto((out / "index.html").as_uri())
            assert page.locator("svg.chart").count() == 3 and page.locator("svg.chart polyline").count() >= 3
            assert page.locator("table tbody tr").count() == 3
            # The inline style sheet applied: its hash matches the CSP (a mismatch would be a console error too).
            assert page.eval_on_selector("svg.chart", "e => getComputedStyle(e).maxWidth") == "760px"
            page.locator("tbody a", has_text="run-000000000003").click()
            page.wait_for_url(run3.as_uri())
            assert page.locator("svg.chart polyline").count() >= 1 and page.locator("table").count() >= 4
            assert page.locator("td", has_text=SCRIPT).count() == 1  # the answer, shown as text
            assert page.locator("script").count() == 0
            page.locator("nav a", has_text="Bugs").click()
            page.wait_for_url((out / "bugs.html").as_uri())
            assert page.locator("table tbody tr").count() == 2
        finally:
            browser.close()
    assert not problems, problems
    assert requests and all(u.startswith(out.as_uri() + "/") for u in requests), requests
