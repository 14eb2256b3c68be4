"""examples/pipecat_avatar.py end to end: the example bot (SmallWebRTC, espeak-ng, the avatar with
the bundled low-latency weights) in its own process, its page in headless Chromium, which starts
a call, types a line and receives the avatar's frames saying it."""
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request

import pytest

pytest.importorskip("pipecat")
pytest.importorskip("cv2")                 # pipecat's SmallWebRTC transport (pipecat-ai[webrtc])

from tests.rest_fast.serve.conftest import ROOT  # noqa: E402
from tests.rest_fast.serve.test_browser import browser  # noqa: E402

pytestmark = pytest.mark.slow


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_the_example_bot_says_a_typed_line_in_chromium():
    if shutil.which("espeak-ng") is None:
        if os.environ.get("REST_FAST_REQUIRE_BROWSER") == "1":
            pytest.fail("REST_FAST_REQUIRE_BROWSER=1 but no espeak-ng: apt-get install espeak-ng")
        pytest.skip("no espeak-ng (apt-get install espeak-ng)")
    port = free_port()
    url = f"http://127.0.0.1:{port}/"
    bot = subprocess.Popen([sys.executable, str(ROOT / "examples" / "pipecat_avatar.py"), "--port", str(port)],
                           cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                urllib.request.urlopen(url, timeout=1).close()
                break
            except OSError:
                assert bot.poll() is None and time.monotonic() < deadline, bot.stdout.read()[-3000:]
                time.sleep(0.5)
        with browser() as chromium:
            page = chromium.new_page()
            page.goto(url)
            page.click("#start")
            page.wait_for_function("document.getElementById('status').textContent.startsWith('Live')",
                                   timeout=60_000)
            page.fill("#line", "Hello, I am a face on your own machine.")
            page.click("#say")
            page.wait_for_function("document.getElementById('status').textContent.startsWith('Saying')")
            page.wait_for_function("Number(document.getElementById('frames').textContent) >= 100", timeout=90_000)
            frames = int(page.text_content("#frames"))
            video = page.evaluate("""() => { const v = document.getElementById('avatar');
                                     return [v.videoWidth, v.videoHeight]; }""")
    finally:
        bot.terminate()
        try:
            bot.wait(timeout=20)
        except subprocess.TimeoutExpired:
            bot.kill()
    assert frames >= 100 and video == [256, 256], (frames, video)
