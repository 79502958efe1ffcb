"""oig serve's chat page in a real browser: Debian's chromium, headless, driven by Playwright (no
browser is ever downloaded). Type a question, see the answer stream in, no console errors, no request
leaving the server, model output shown as text, the API key applied, --no-ui turning it off."""

from __future__ import annotations

import asyncio
import shutil

import httpx
import pytest
from test_serve import ANSWER, QUESTION, ServerThread, model_dir  # noqa: F401 (a fixture)

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def chromium() -> str:
    path = shutil.which("chromium") or shutil.which("chromium-browser")
    if path is None:
        pytest.skip("no chromium executable on PATH (Debian: apt-get install chromium); browsers are never downloaded")
    return path


@pytest.fixture(scope="module")
def browser():
    sync_playwright = pytest.importorskip("playwright.sync_api", reason="the playwright package is not installed")
    executable = chromium()
    with sync_playwright.sync_playwright() as p:
        b = p.chromium.launch(executable_path=executable, args=["--no-sandbox", "--disable-gpu"])
        yield b
        b.close()


def expect(locator):
    from playwright.sync_api import expect as playwright_expect

    # Playwright's own waits: the page's CSP (script-src 'self') refuses the eval that
    # wait_for_function would need, as it should.
    return playwright_expect(locator)


def open_page(browser, url: str):
    """A page at ``url`` that records console errors and every request it makes."""
    page = browser.new_page()
    page.problems, page.requested = [], []
    page.on("console", lambda m: m.type == "error" and page.problems.append(m.text))
    page.on("pageerror", lambda e: page.problems.append(str(e)))
    page.on("request", lambda r: page.requested.append(r.url))
    page.goto(url)
    return page


def ask(page, text: str):
    page.fill("#question", text)
    page.click("#send")
    return page.locator(".turn.assistant, .turn.error").last


def test_a_question_gets_the_models_streamed_answer(browser, model_dir):  # noqa: F811
    from oig.serve.inference import LocalModel
    from oig.serve.server import create_app

    lm = LocalModel.load(model_dir, name="tiny-test")
    with ServerThread(create_app(lm)) as s:
        page = open_page(browser, s.url)
        expect(page.locator("#model")).to_have_text("tiny-test")
        answer = ask(page, QUESTION)
        expect(answer).to_have_text(ANSWER)
        assert page.locator(".turn.user").inner_text() == QUESTION
        assert answer.inner_text() == ANSWER
        assert not page.problems
        assert all(u.startswith(s.url) for u in page.requested), page.requested
        assert {u.removeprefix(s.url) for u in page.requested} >= {"/", "/chat.js", "/chat.css", "/v1/models",
                                                                   "/v1/chat/completions"}
        page.screenshot(path=str(model_dir.parent / "chat.png"))
        page.close()


def test_model_output_is_shown_as_text_and_arrives_piece_by_piece(browser, model_dir, monkeypatch):  # noqa: F811
    from oig.serve.inference import LocalModel
    from oig.serve.server import create_app

    lm = LocalModel.load(model_dir, name="tiny-test")
    hostile = ["<img src=x onerror=\"document.title='owned'\">", " <script>document.title='owned'</script>",
               " done"]

    async def agenerate(messages, *, result=None, **options):
        for piece in hostile:
            await asyncio.sleep(0.4)
            result.completion_tokens += 1
            yield piece
        result.finish_reason = "stop"

    monkeypatch.setattr(lm, "agenerate", agenerate)
    with ServerThread(create_app(lm)) as s:
        page = open_page(browser, s.url)
        expect(page.locator("#model")).to_have_text("tiny-test")
        answer = ask(page, "hi")
        expect(answer).to_contain_text("<img")
        assert "done" not in answer.inner_text()  # the first piece is shown before the last is generated
        expect(answer).to_contain_text("done", timeout=10_000)
        assert answer.inner_text() == "".join(hostile)
        assert page.locator(".turn.assistant img, .turn.assistant script").count() == 0
        assert page.title() == "oig chat" and not page.problems
        page.close()


def test_the_api_key_applies_to_the_pages_calls_and_no_ui_turns_it_off(browser, model_dir):  # noqa: F811
    from oig.serve.inference import LocalModel
    from oig.serve.server import ServeSettings, create_app

    lm = LocalModel.load(model_dir, name="tiny-test")
    with ServerThread(create_app(lm, settings=ServeSettings(api_key="k-page"))) as s:
        assert httpx.get(s.url).status_code == 200  # the page itself holds nothing
        assert httpx.get(f"{s.url}/v1/models").status_code == 401
        page = open_page(browser, s.url)
        expect(page.locator("#model")).to_contain_text("API key")
        assert "owned" not in page.title()
        page.fill("#key", "k-page")
        page.dispatch_event("#key", "change")
        expect(page.locator("#model")).to_have_text("tiny-test")
        answer = ask(page, QUESTION)
        expect(answer).to_have_text(ANSWER)
        assert answer.inner_text() == ANSWER
        # The console shows the 401 of the first /v1/models call, made before the key was typed.
        assert all("401" in p for p in page.problems), page.problems
        page.close()
    with ServerThread(create_app(lm, settings=ServeSettings(ui=False))) as s:
        assert httpx.get(s.url).status_code == 404
        assert httpx.get(f"{s.url}/chat.js").status_code == 404
