"""The Pipecat service's frame latency, from TTS audio in to image out, and the CPU it takes.

    pytest bench/test_pipecat.py --benchmark -s

A pipeline of RestFastVideoService (a bundled checkpoint) and a sink, run by Pipecat's own test
runner; a streaming TTS's speech: the demo speech at 24 kHz, repeated to a 30 s utterance, in
20 ms TTSAudioRawFrames pushed at real-time pace. Per frame shown: the time from its speech's
arrival at the service to its image being pushed (the rest of its chunk's speech, the lookahead,
the compute, the playout's pacing). CPU: the process's CPU seconds (Pipecat's loop, the service
and the generator) over the wall seconds of the call, in cores. Printed as rows for
BENCHMARKS.md; nothing asserted (speed targets are not tests). Run on idle cores.
"""
import asyncio
import os
import time

import numpy as np
import pytest

CALL_S = 30.0
CHECKPOINTS = os.environ.get("REST_FAST_CHECKPOINTS", "low-latency,default").split(",")


@pytest.mark.parametrize("checkpoint", CHECKPOINTS)
def test_pipecat_frame_latency(checkpoint):
    pytest.importorskip("pipecat")
    from pipecat.frames.frames import TTSAudioRawFrame, TTSStartedFrame, TTSStoppedFrame
    from pipecat.tests.utils import SleepFrame, run_test

    from reference.media import load_audio
    from rest_fast.cli import demo_asset
    from rest_fast.integrations.pipecat import RestFastVideoService

    speech = np.resize(load_audio(demo_asset("demo_speech.wav"), 24000), round(CALL_S * 24000))
    pcm = (np.clip(speech, -1, 1) * 32767).astype("<i2")
    hub = RestFastVideoService.shared_hub(checkpoint, capacity=1)
    service = RestFastVideoService(hub=hub)
    frames = [TTSStartedFrame()]
    for i in range(0, len(pcm), 480):                       # 20 ms, paced by the sleeps
        frames += [TTSAudioRawFrame(audio=pcm[i:i + 480].tobytes(), sample_rate=24000, num_channels=1),
                   SleepFrame(sleep=0.02)]
    frames += [TTSStoppedFrame(), SleepFrame(sleep=3.0)]
    cpu0, wall0 = time.process_time(), time.perf_counter()
    asyncio.run(run_test(service, frames_to_send=frames))
    cores = (time.process_time() - cpu0) / (time.perf_counter() - wall0)
    latency = np.array(service.frame_latency_ms)
    cfg = hub.gen.cfg
    print("\n| checkpoint | chunk | frames | TTS audio to image median / p95 / worst (ms) | CPU (cores) |")
    print("|---|---|---|---|---|")
    print(f"| {checkpoint} | {cfg.frames_per_chunk / cfg.fps:.2f} s, W = {cfg.prev_chunks} | {len(latency)} | "
          f"{np.median(latency):.0f} / {np.percentile(latency, 95):.0f} / {latency.max():.0f} | {cores:.2f} |")
