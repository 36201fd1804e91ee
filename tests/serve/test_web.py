"""The chat page in a real headless Chromium (Debian's `chromium`, driven by Playwright): attach and
paste images, ask, watch the streamed answer, go on with the conversation, reset, see errors."""

import os
import shutil

import httpx
import pytest
from playwright.sync_api import sync_playwright


def chromium_path() -> str:
    """Debian's chromium (Playwright cannot download its own here); `make test` installs it."""
    for candidate in (os.environ.get("PICOVLM_CHROMIUM"), "chromium", "chromium-browser", "google-chrome"):
        path = candidate and shutil.which(candidate)
        if path:
            return path
    pytest.fail("no Chromium found: install Debian's `chromium` (apt-get install chromium) or set PICOVLM_CHROMIUM")


@pytest.fixture(scope="module")
def browser():
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium_path(), headless=True, args=["--no-sandbox"])
        yield browser
        browser.close()


def test_chat_page(browser, server, tiny_run, image_url):
    url, _ = server
    image = tiny_run["data"] / "images" / "test_000000.png"
    page = browser.new_page()
    requests, responses = [], []
    page.on("request", lambda r: requests.append(r.post_data_json) if r.url.endswith("/chat/completions") else None)
    page.on("response", lambda r: responses.append(r.headers) if r.url.endswith("/chat/completions") else None)
    page.goto(url)
    page.fill("#api_key", "sekret")
    page.dispatch_event("#api_key", "change")
    page.wait_for_selector("#model:text('tiny')")

    page.set_input_files("#file", str(image))
    page.wait_for_selector("#attached img")
    page.fill("#temperature", "1")
    page.fill("#seed", "0")  # seeded sampling: a repeatable answer, and not an empty one for the tiny model
    page.fill("#max_tokens", "12")
    page.fill("#prompt", "what colour?")
    page.click("#send")
    first = page.wait_for_selector(".msg.assistant[data-state=done]", timeout=20_000)
    shown = first.query_selector(".text").inner_text()

    # the page shows what the API answers to the same request, and it came as server-sent events
    expected = httpx.post(
        f"{url}/v1/chat/completions",
        json={**requests[0], "stream": False},
        headers={"Authorization": "Bearer sekret"},
        timeout=30,
    ).json()["choices"][0]["message"]["content"]
    assert expected and shown == expected
    assert responses[0]["content-type"].startswith("text/event-stream")
    assert int(first.get_attribute("data-chunks")) >= 2  # at least the opening and the closing chunk
    assert requests[0]["messages"][0]["content"][0]["image_url"]["url"] == image_url
    assert page.query_selector_all("#attached img") == []  # the image went with the message

    # paste a second image, ask again: the whole conversation goes with it
    page.evaluate(
        """async (url) => {
            const blob = await (await fetch(url)).blob();
            const data = new DataTransfer();
            data.items.add(new File([blob], "pasted.png", { type: "image/png" }));
            document.getElementById("prompt").dispatchEvent(
                new ClipboardEvent("paste", { clipboardData: data, bubbles: true }));
        }""",
        image_url,
    )
    page.wait_for_selector("#attached img")
    page.fill("#prompt", "and the shape?")
    page.press("#prompt", "Enter")
    page.wait_for_function("document.querySelectorAll('.msg.assistant[data-state=done]').length == 2")
    second = requests[1]["messages"]
    assert [m["role"] for m in second] == ["user", "assistant", "user"]
    assert second[1]["content"] == expected and second[2]["content"][0]["type"] == "image_url"

    # a server error is shown in the conversation, and reset starts over
    page.fill("#api_key", "wrong")
    page.fill("#prompt", "hello")
    page.click("#send")
    error = page.wait_for_selector(".msg.assistant[data-state=error]")
    assert "API key" in error.inner_text()
    page.click("#reset")
    assert page.query_selector_all(".msg") == []
    page.close()


def test_the_page_attaches_videos_and_sounds(browser, tiny_av_run):
    """Attached an .mp4 and a .flac, the page sends them as a video_url and an input_audio part, shows
    them as players, and the av model answers."""
    import base64

    from picovlm.engine.pipeline import Pipeline
    from picovlm.serve.api import create_app
    from picovlm.serve.config import ServeConfig
    from tests.serve.helpers import running

    data = tiny_av_run["data"]
    video, sound = data / "clips" / "test_000000.mp4", data / "sounds" / "test_000000.flac"
    with running(create_app(Pipeline.load(tiny_av_run["model"]), ServeConfig(model_name="av"))) as url:
        page = browser.new_page()
        requests = []
        page.on("request", lambda r: requests.append(r.post_data_json) if r.url.endswith("/chat/completions") else None)
        page.goto(url)
        page.wait_for_selector("#model:text('av')")
        page.set_input_files("#file", [str(video), str(sound)])
        page.wait_for_selector("#attached video")
        page.wait_for_selector("#attached audio")
        page.fill("#max_tokens", "3")
        page.fill("#prompt", "which way?")
        page.click("#send")
        done = page.wait_for_selector(".msg.assistant[data-state=done]", timeout=30_000)
        assert not done.query_selector(".text").inner_text().startswith("Error")
        parts = {p["type"]: p for p in requests[0]["messages"][0]["content"]}
        assert (
            parts["video_url"]["video_url"]["url"]
            == "data:video/mp4;base64," + base64.b64encode(video.read_bytes()).decode()
        )
        assert base64.b64decode(parts["input_audio"]["input_audio"]["data"]) == sound.read_bytes()
        assert parts["text"]["text"] == "which way?"
        assert page.query_selector(".msg.user video") and page.query_selector(".msg.user audio")


def test_the_page_shows_a_drawn_image(browser, tiny_native_run):
    """A native model's drawing arrives as an image part of the stream; the page shows it as an <img>
    where it was drawn, and sends it back with the conversation."""
    from picovlm.serve.api import create_app
    from picovlm.serve.config import ServeConfig
    from tests.native.helpers import drawing_pipeline
    from tests.serve.helpers import running

    with running(create_app(drawing_pipeline(tiny_native_run["model"]), ServeConfig(model_name="native"))) as url:
        page = browser.new_page()
        requests = []
        page.on("request", lambda r: requests.append(r.post_data_json) if r.url.endswith("/chat/completions") else None)
        page.goto(url)
        page.wait_for_selector("#model:text('native')")
        page.fill("#max_tokens", "20")
        page.fill("#prompt", "draw a red circle")
        page.click("#send")
        done = page.wait_for_selector(".msg.assistant[data-state=done]", timeout=20_000)
        img = done.query_selector("img")
        assert img.get_attribute("src").startswith("data:image/png;base64,")
        assert img.evaluate("i => i.complete && i.naturalWidth") == 32
        page.fill("#prompt", "and now?")
        page.click("#send")
        page.wait_for_function("document.querySelectorAll('.msg.assistant[data-state=done]').length == 2")
        answer = requests[1]["messages"][1]["content"]
        assert answer[0] == {"type": "image_url", "image_url": {"url": img.get_attribute("src")}}
        page.close()
