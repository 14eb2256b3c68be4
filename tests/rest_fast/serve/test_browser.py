"""The page in a real browser: headless Chromium (Debian's package) with a fake microphone that
plays a speech file opens the page, connects, and the page's own figures show the avatar's frames
arriving. Saves the screenshot docs/ shows (REST_FAST_UPDATE_SCREENSHOT=1 writes it there).

Needs /usr/bin/chromium (`apt-get install chromium`; .ci/run installs it). Without it the test
is skipped, unless REST_FAST_REQUIRE_BROWSER=1 (set by CI) makes that a failure."""
import contextlib
import os
import shutil
from pathlib import Path

import pytest

from tests.rest_fast.serve.conftest import ROOT
from tests.rest_fast.serve.test_serve_cli import speech_file

SCREENSHOT = ROOT / "docs" / "images" / "serve-page.png"
pytestmark = pytest.mark.slow


def chromium() -> str:
    path = shutil.which("chromium") or shutil.which("chromium-browser")
    if path is None:
        if os.environ.get("REST_FAST_REQUIRE_BROWSER") == "1":
            pytest.fail("REST_FAST_REQUIRE_BROWSER=1 but no chromium on PATH: apt-get install chromium")
        pytest.skip("no chromium on PATH (apt-get install chromium)")
    return path


@contextlib.contextmanager
def browser(*args: str):
    """Headless Chromium, as root on a closed network: no background requests, no QUIC."""
    from playwright.sync_api import sync_playwright
    flags = ["--autoplay-policy=no-user-gesture-required", "--disable-background-networking",
             "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-quic",
             "--disable-gpu", *args]
    with sync_playwright() as p:
        launched = p.chromium.launch(executable_path=chromium(), args=flags)
        try:
            yield launched
        finally:
            launched.close()


def wait_for_frames(page, count: int) -> None:
    page.wait_for_function(f"Number(document.getElementById('frames').textContent) >= {count}",
                           timeout=90_000)


def test_the_page_shows_the_avatar_talking_in_chromium(bundled_server, tmp_path):
    url, _ = bundled_server
    wav, _ = speech_file(tmp_path, seconds_of_silence_after=0.5)
    fake_microphone = ("--use-fake-ui-for-media-stream", "--use-fake-device-for-media-stream",
                       f"--use-file-for-fake-audio-capture={wav}")
    with browser(*fake_microphone) as chromium_browser:
        page = chromium_browser.new_page(viewport={"width": 960, "height": 640})
        console = []
        page.on("console", lambda msg: console.append(msg.text))
        page.goto(url)
        page.click("#start")
        wait_for_frames(page, 150)
        page.wait_for_function("document.getElementById('latency').textContent.includes('ms')",
                               timeout=30_000)
        figures = {name: page.text_content(f"#{name}") for name in
                   ("status", "frames", "fps", "latency", "chunk-ms", "dropped", "streams", "voice-to-face",
                    "parts")}
        shot = tmp_path / "serve-page.png"
        page.screenshot(path=str(shot))
        page.click("#stop")
        page.wait_for_function("document.getElementById('status').textContent === 'Stopped.'")
    print("page figures:", figures)
    assert figures["status"] == "Live.", (figures, console)
    assert int(figures["frames"]) >= 150
    assert 15 <= float(figures["fps"]) <= 30, figures           # frames arrive at about 25 fps
    assert figures["streams"] == "1 of 2"
    assert figures["latency"].endswith(" ms") and figures["chunk-ms"].endswith(" ms")
    # Voice to face in its five parts; the model's two are known (a 0.96 s chunk's first frame
    # waits 920 ms for the rest of its speech, then the 160 ms lookahead).
    parts = figures["parts"].split(" + ")
    assert len(parts) == 5 and parts[:2] == ["920 ms", "160 ms"], figures
    assert all(p.endswith(" ms") for p in parts[2:4]), figures
    assert shot.stat().st_size > 20_000
    if os.environ.get("REST_FAST_UPDATE_SCREENSHOT") == "1":
        SCREENSHOT.parent.mkdir(parents=True, exist_ok=True)
        tmp = SCREENSHOT.with_suffix(".tmp")
        shutil.copyfile(shot, tmp)
        os.replace(tmp, SCREENSHOT)


def test_the_page_takes_an_uploaded_portrait_and_an_audio_file(bundled_server, tmp_path):
    """The page's other two choices: a portrait uploaded from disk, speech from an audio file."""
    url, _ = bundled_server
    wav, _ = speech_file(tmp_path, seconds_of_silence_after=0.5)
    with browser() as chromium_browser:
        page = chromium_browser.new_page()
        page.goto(url)
        page.check("input[name=portrait][value=upload]")
        page.set_input_files("#portrait-file", str(ROOT / "rest_fast" / "assets" / "demo_portrait.png"))
        page.check("input[name=source][value=file]")
        page.set_input_files("#speech-file", str(wav))
        page.click("#start")
        wait_for_frames(page, 50)
        status = page.text_content("#status")
        # A second Start with a file that is not an image: the server's reason on the page.
        page.click("#stop")
        page.set_input_files("#portrait-file", str(wav))
        page.click("#start")
        page.wait_for_function("document.getElementById('status').className === 'error'",
                               timeout=30_000)
        refusal = page.text_content("#status")
    assert status == "Live."
    assert "not an image" in refusal
