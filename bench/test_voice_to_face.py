"""Voice to face over `rest-fast serve`: how long a caller waits for each frame, over the
WebSocket and over WebRTC to headless Chromium.

    pytest bench/test_voice_to_face.py --benchmark -s

The server runs as users run it (`rest-fast serve --capacity 1 --checkpoint NAME`, --dtype auto)
in its own process; the caller, in this process, sends the demo speech (repeated to a 30 s call)
at real-time pace in 20 ms pieces and records, for every frame, how long after the end of its
own 40 ms of speech was sent the frame arrived: the rest of its chunk's speech, Whisper's
lookahead, the compute, the server's queue and the transport (loopback). Frames made by the flush
after the call's end are left out. Per bundled checkpoint: the median, the 95th percentile and
the worst, and the parts (the chunk's speech wait and the lookahead from its config, the
compute the server reports per chunk, the rest). Printed as rows for BENCHMARKS.md; nothing is
asserted (speed targets are not tests). Run it on idle cores: anything else running shows up
in the figures.
"""
from __future__ import annotations

import asyncio
import os
from pathlib import Path

import numpy as np
import pytest

from bench.serving import serve_process

CALL_S, PIECE_S = 30.0, 0.02
# Bundled names or checkpoint directories, comma-separated (REST_FAST_SERVE_ARGS adds server
# options to every run, e.g. "--steps 2 --guidance none" for an undistilled student timed at the
# distilled sampler's cost).
CHECKPOINTS = os.environ.get("REST_FAST_CHECKPOINTS", "default,low-latency").split(",")


def call_speech(checkpoint: str, rate: int = 16000) -> np.ndarray:
    """The demo speech repeated to a CALL_S call; skips a bundled name this installation lacks."""
    from reference.media import load_audio
    from rest_fast.cli import demo_asset
    from rest_fast.streaming import BUNDLED, bundled_checkpoint
    if not Path(checkpoint).is_dir() and (checkpoint not in BUNDLED or bundled_checkpoint(checkpoint) is None):
        pytest.skip(f"the bundled checkpoint {checkpoint!r} is not in this installation")
    return np.resize(load_audio(demo_asset("demo_speech.wav"), rate), round(CALL_S * rate)).astype(np.float32)


@pytest.mark.parametrize("checkpoint", CHECKPOINTS)
def test_voice_to_face(checkpoint):
    from reference.speech import samples_needed
    from rest_fast.serve.client import WebSocketTimeline, websocket_call
    from rest_fast.streaming import load_named_checkpoint
    call = call_speech(checkpoint)
    cfg = load_named_checkpoint(checkpoint).cfg            # its speech is 16 kHz, as sent
    timeline = WebSocketTimeline()
    with serve_process("--capacity", "1", "--checkpoint", checkpoint) as url:
        asyncio.run(asyncio.wait_for(websocket_call(url, call, piece_s=PIECE_S, pace=1.0, timeline=timeline),
                                     CALL_S + 120))
    chunks = sum(1 for j in range(10_000) if samples_needed(j, cfg) <= len(call))
    delays = timeline.voice_to_face(cfg.samples_per_frame, chunks * cfg.frames_per_chunk)
    compute = np.median([ms for _, _, ms in timeline.frames])
    frame_ms = 1000.0 / cfg.fps
    waits = frame_ms * (cfg.frames_per_chunk - 1 - np.arange(len(delays)) % cfg.frames_per_chunk)
    rest = delays - waits - cfg.speech.lookahead_ms - compute
    print("\n| checkpoint | chunk | frames | voice to face median / p95 / worst (ms) | "
          "speech wait median / worst + lookahead + compute (median) + queue and transport (median) |")
    print("|---|---|---|---|---|")
    print(f"| {checkpoint} | {cfg.frames_per_chunk / cfg.fps:.2f} s, W = {cfg.prev_chunks} | {len(delays)} | "
          f"{np.median(delays):.0f} / {np.percentile(delays, 95):.0f} / {delays.max():.0f} | "
          f"{np.median(waits):.0f} / {waits.max():.0f} + {cfg.speech.lookahead_ms:.0f} + {compute:.0f} + "
          f"{np.median(rest):.0f} |")


# Every frame the page's <video> shows: (RTP timestamp, arrival, display), wall-clock seconds.
COLLECT_SHOWN_FRAMES = """() => {
  window.framesShown = [];
  const video = document.getElementById("avatar");
  const seen = (now, m) => {
    if (m.rtpTimestamp !== undefined && m.receiveTime !== undefined) {
      const wall = (t) => (performance.timeOrigin + t) / 1000;
      window.framesShown.push([m.rtpTimestamp, wall(m.receiveTime), wall(m.expectedDisplayTime)]);
    }
    video.requestVideoFrameCallback(seen);
  };
  video.requestVideoFrameCallback(seen);
}"""


@pytest.mark.parametrize("checkpoint", CHECKPOINTS)
def test_voice_to_face_webrtc(checkpoint, tmp_path):
    """The same call over WebRTC: the serve page in headless Chromium, whose fake microphone
    plays the call, and for every frame the page shows, the moment Chromium expects it on screen
    less the moment its own 40 ms of speech had reached the server (loopback: as Chromium sent
    it). The server says which slot carried which frame and when (/stats?frame_times=1), the page
    when each RTP frame arrived and is shown (requestVideoFrameCallback); both are this machine's
    wall clock (rest_fast.serve.client.webrtc_voice_to_face matches them). On top of the
    WebSocket's parts: the prebuffer, VP8 and Opus, and Chromium's jitter buffer and display.
    Not counted: Chromium's capture buffer before the speech is sent (a real microphone has one)."""
    import json
    import urllib.request

    import soundfile

    from rest_fast.serve.client import webrtc_voice_to_face
    from tests.rest_fast.serve.test_browser import browser
    wav = tmp_path / "call.wav"
    soundfile.write(wav, call_speech(checkpoint), 16000)
    fake_microphone = ("--use-fake-ui-for-media-stream", "--use-fake-device-for-media-stream",
                       f"--use-file-for-fake-audio-capture={wav}")
    with serve_process("--capacity", "1", "--checkpoint", checkpoint) as url, \
            browser(*fake_microphone) as chromium:
        page = chromium.new_page()
        page.goto(url)
        with page.expect_response("**/offer") as offer:
            page.click("#start")
        session = offer.value.json()["session"]
        page.evaluate(COLLECT_SHOWN_FRAMES)
        page.wait_for_timeout(1000 * CALL_S)
        shown = page.evaluate("window.framesShown")
        with urllib.request.urlopen(f"{url}stats?session={session}&frame_times=1") as r:
            server = json.load(r)["session"]
        page.click("#stop")
    parts = webrtc_voice_to_face(server["frame_times"], shown)
    delays = parts.sum(axis=1)
    server_ms, transport_ms, browser_ms = np.median(parts, axis=0)
    print("\n| checkpoint | frames shown | voice to face median / p95 / worst (ms) | "
          "server (prebuffer) + transport + browser, medians (ms) |")
    print("|---|---|---|---|")
    print(f"| {checkpoint} | {len(delays)} | {np.median(delays):.0f} / {np.percentile(delays, 95):.0f} / "
          f"{delays.max():.0f} | {server_ms:.0f} ({1000 * server['prebuffer_s']:.0f}) + {transport_ms:.0f} + "
          f"{browser_ms:.0f} |")
