"""Load on `rest-fast serve`: 1, 2 and 4 WebRTC callers at once, on loopback, bounded in time.

    pytest bench/test_serve_load.py --benchmark -s

The server runs as users run it (`rest-fast serve --capacity 4`, the bundled weights, --dtype
auto) in its own process; the callers are aiortc clients in this process, each playing the demo
speech (then silence) as its microphone, all on the same machine (on 2 cores the callers' VP8
decoding competes with the server). Per count: each chunk's latency at the server (from the
arrival of the last speech sample the chunk needed to its frames; median and worst over every
caller's chunks), the chunk's compute, and whether every caller held real time: at least 95% of
its speech's frames arrived, with no playout gap (underrun), no frame dropped or skipped.
Printed as a table for BENCHMARKS.md; nothing is asserted (speed targets are not tests).
REST_FAST_SERVE_ARGS adds options to the server's command line (e.g. "--decoder light").
"""
from __future__ import annotations

import asyncio
import time

import numpy as np
import pytest
import soundfile

from bench.serving import serve_process

COUNTS = (1, 2, 4)


@pytest.fixture(scope="module")
def server():
    with serve_process("--capacity", str(max(COUNTS))) as url:
        yield url


def test_serve_load(server, tmp_path):
    from reference.config import get_config
    from reference.media import load_audio
    from reference.pipeline import frames_for_samples
    from rest_fast.cli import demo_asset
    from rest_fast.serve.client import webrtc_call
    speech = load_audio(demo_asset("demo_speech.wav"), 16000)
    wav = tmp_path / "speech.wav"
    soundfile.write(wav, np.concatenate([speech, np.zeros(5 * 16000)]), 16000)
    expected = frames_for_samples(len(speech), get_config("cpu"))

    rows = []
    for count in COUNTS:
        async def callers():
            return await asyncio.gather(*(webrtc_call(server, str(wav), listen_s=-1.0) for _ in range(count)))
        calls = asyncio.run(asyncio.wait_for(callers(), 300))
        latency, compute, held, offsets, faults = [], [], [], [], []
        for call in calls:
            s = call.server["session"]
            timing = call.timing(expected)
            latency += [s["latency_ms_median"], s["latency_ms_worst"]]
            compute.append(s["chunk_ms_median"])
            offsets.append(timing["av_offset_ms_median"])
            held.append(timing["arrived_share"] >= 0.95 and s["underruns"] == s["dropped_frames"]
                        == s["frames_skipped"] == 0)
            faults.append(f'{timing["arrived_share"]:.2f}/{s["underruns"]}/{s["frames_skipped"]}/{s["dropped_frames"]}')
        rows.append((count, float(np.median([c.server["session"]["latency_ms_median"] for c in calls])),
                     max(c.server["session"]["latency_ms_worst"] for c in calls),
                     float(np.median(compute)), sum(held), offsets, faults))
        time.sleep(2.0)
    print("\n| callers | chunk latency median / worst (ms) | tick compute median (ms) | callers in real time | "
          "per caller: frames arrived / gaps / skipped / dropped | A/V offset at receiver, median per caller (ms) |")
    print("|---|---|---|---|---|---|")
    for count, med, worst, comp, ok, offsets, faults in rows:
        print(f"| {count} | {med:.0f} / {worst:.0f} | {comp:.0f} | {ok} of {count} | {', '.join(faults)} | "
              f"{', '.join(f'{o:+.0f}' for o in offsets)} |")
