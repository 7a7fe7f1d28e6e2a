"""The web page in headless Chromium against a real uvicorn server: text search shows results with thumbnails,
an uploaded image searches by image, a classify round trip draws label bars, errors from the API are shown,
the API key field, and panels that follow the model's capabilities."""
from __future__ import annotations

import os

import pytest

from vlmkit.serve import create_app
from vlmkit.serve.runner import serve_in_thread

CHROMIUM = "/usr/bin/chromium"
if not os.path.exists(CHROMIUM):
    pytest.skip(f"no {CHROMIUM}: install Debian's chromium (make browser) to run the browser tests",
                allow_module_level=True)
playwright = pytest.importorskip("playwright.sync_api", reason="the playwright python package is not installed")
TIMEOUT_MS = 20_000


@pytest.fixture(scope="module")
def browser():
    with playwright.sync_playwright() as driver:
        chromium = driver.chromium.launch(executable_path=CHROMIUM, args=[
            "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"])
        yield chromium
        chromium.close()


@pytest.fixture()
def page(browser):
    context = browser.new_context(viewport={"width": 1200, "height": 900})
    page = context.new_page()
    page.set_default_timeout(TIMEOUT_MS)
    outside = []
    page.on("request", lambda request: outside.append(request.url)
            if not request.url.startswith(("http://127.0.0.1", "blob:", "data:")) else None)
    yield page
    context.close()
    assert not outside, f"the page fetched outside resources: {outside}"


@pytest.fixture(scope="module")
def index_server(clip_model, scene_index):
    with serve_in_thread(create_app(clip_model, scene_index, model_name="tiny-clip")) as url:
        yield url


@pytest.fixture(scope="module")
def plain_server(clip_model):
    with serve_in_thread(create_app(clip_model, model_name="tiny-clip", api_key="page-key")) as url:
        yield url


def test_typing_a_query_shows_results_with_thumbnails(page, index_server, scene_index):
    page.goto(index_server)
    page.wait_for_selector("#search-panel:not([hidden])")
    assert "tiny-clip" in page.inner_text("#model-info")
    page.fill("#search-k", "5")
    page.fill("#search-input", "a red circle")
    page.press("#search-input", "Enter")
    page.wait_for_selector("#search-results .result")
    assert page.locator("#search-results .result").count() == 5
    page.wait_for_function("() => [...document.querySelectorAll('#search-results img')]"
                           ".every((image) => image.complete && image.naturalWidth > 0)")
    scores = [float(text) for text in page.locator("#search-results .score").all_inner_texts()]
    assert scores == sorted(scores, reverse=True)
    assert "5 results" in page.inner_text("#search-status")


def test_picking_or_dropping_an_image_searches_by_image(page, index_server, scenes):
    image = sorted((scenes / "images").rglob("*.png"))[3]
    page.goto(index_server)
    page.wait_for_selector("#search-drop:not([hidden])")
    page.set_input_files("#search-file", str(image))
    page.wait_for_selector("#search-results .result")
    assert page.locator("#search-results .result").count() == 12
    assert float(page.locator("#search-results .score").first.inner_text()) == pytest.approx(1.0, abs=1e-3)
    first = page.locator("#search-results .result").first.get_attribute("data-id")

    dropped = sorted((scenes / "images").rglob("*.png"))[7]
    transfer = page.evaluate_handle("""(bytes) => {
        const transfer = new DataTransfer();
        transfer.items.add(new File([new Uint8Array(bytes)], "dropped.png", { type: "image/png" }));
        return transfer;
    }""", list(dropped.read_bytes()))
    page.dispatch_event("#search-drop", "drop", {"dataTransfer": transfer})
    page.wait_for_function(f"() => document.querySelector('#search-results .result').dataset.id !== '{first}'")
    assert float(page.locator("#search-results .score").first.inner_text()) == pytest.approx(1.0, abs=1e-3)


def test_classify_round_trip_and_errors_with_the_api_key(page, plain_server, scenes, tmp_path):
    page.goto(plain_server)
    page.wait_for_selector("#global-error:not([hidden])")
    assert page.is_visible("#key-form") and "API key" in page.inner_text("#global-error")
    page.fill("#api-key", "page-key")
    page.click("#key-form button")
    page.wait_for_selector("#classify-panel:not([hidden])")
    assert page.is_visible("#no-index-panel") and not page.is_visible("#search-panel")
    assert not page.is_visible("#caption-panel") and not page.is_visible("#ask-panel")

    page.fill("#classify-labels", "red circle, blue square, green triangle")
    page.click("#classify-form button")
    page.wait_for_selector("#classify-error:not([hidden])")
    assert "choose an image first" in page.inner_text("#classify-error")

    broken = tmp_path / "broken.png"
    broken.write_bytes(b"\x89PNG not really")
    page.set_input_files("#classify-file", str(broken))
    page.click("#classify-form button")
    page.wait_for_function("() => document.querySelector('#classify-error').textContent.includes('broken.png')")
    assert "not a readable image" in page.inner_text("#classify-error")

    page.set_input_files("#classify-file", str(sorted((scenes / "images").rglob("*.png"))[0]))
    page.click("#classify-form button")
    page.wait_for_selector("#classify-bars .bar")
    assert page.locator("#classify-bars .bar").count() == 3
    assert page.is_hidden("#classify-error")
    labels = page.locator("#classify-bars .bar-label").all_inner_texts()
    assert sorted(labels) == ["blue square", "green triangle", "red circle"]
    assert page.evaluate("localStorage.getItem('vlmkit.apiKey')") == "page-key"


def test_caption_and_ask_panels_follow_the_capabilities(page, generative_model, scenes):
    image = str(sorted((scenes / "images").rglob("*.png"))[0])
    with serve_in_thread(create_app(generative_model, model_name="tiny-lm")) as url:
        page.goto(url)
        page.wait_for_selector("#caption-panel:not([hidden])")
        assert page.is_visible("#ask-panel")
        assert not page.is_visible("#classify-panel") and not page.is_visible("#search-panel")
        assert not page.is_visible("#no-index-panel")
        page.set_input_files("#caption-file", image)
        page.click("#caption-form button")
        page.wait_for_function("() => document.querySelector('#caption-output').textContent.length > 0")
        page.set_input_files("#ask-file", image)
        page.fill("#ask-question", "what color is the circle?")
        page.click("#ask-form button")
        page.wait_for_function("() => document.querySelector('#ask-output').textContent.length > 0")
        assert page.is_hidden("#caption-error") and page.is_hidden("#ask-error")
