"""RestFastVideoService in Pipecat pipelines, run with Pipecat's own test utilities (on a tiny
random model): TTS audio in, images out at 25 fps each beside the audio it shows, a living face
between utterances, an interruption that empties the queue, two pipelines on one generator."""
import asyncio
import time

import numpy as np
import pytest

pytest.importorskip("pipecat")

from pipecat.frames.frames import (InterruptionFrame, OutputImageRawFrame, TTSAudioRawFrame,  # noqa: E402
                                   TTSStartedFrame, TTSStoppedFrame)
from pipecat.pipeline.pipeline import Pipeline  # noqa: E402
from pipecat.processors.frame_processor import FrameDirection, FrameProcessor  # noqa: E402
from pipecat.tests.utils import SleepFrame, run_test  # noqa: E402

from rest_fast.integrations.pipecat import RestFastVideoService  # noqa: E402
from rest_fast.serve.hub import AvatarHub  # noqa: E402
from tests.conftest import speech_like  # noqa: E402
from tests.rest_fast.serve.conftest import PORTRAIT, tiny_generator  # noqa: E402

RATE = 24000                       # a TTS's usual rate: resampled in, given back as it came


class Arrivals(FrameProcessor):
    """Notes when each image and audio frame went by."""

    def __init__(self):
        super().__init__()
        self.images, self.audio, self.audio_after_image = [], [], []

    async def process_frame(self, frame, direction):
        await super().process_frame(frame, direction)
        if isinstance(frame, OutputImageRawFrame):
            self.images.append((time.monotonic(), frame))
        elif isinstance(frame, TTSAudioRawFrame):
            self.audio.append((time.monotonic(), frame))
            self.audio_after_image.append(len(self.images) - 1)   # the image this audio is beside
        await self.push_frame(frame, direction)


def tts_frames(seconds: float, seed: int, piece_s: float = 0.02):
    """An utterance as a TTS pushes it: started, 20 ms pieces of s16 mono at 24 kHz, stopped."""
    speech = np.interp(np.arange(round(seconds * RATE)) / RATE, np.arange(round(seconds * 16000)) / 16000,
                       speech_like(seconds, seed=seed))
    pcm = (np.clip(speech, -1, 1) * 32767).astype("<i2")
    step = round(piece_s * RATE)
    return pcm, [TTSStartedFrame(), *(TTSAudioRawFrame(audio=pcm[i:i + step].tobytes(), sample_rate=RATE,
                                                       num_channels=1) for i in range(0, len(pcm), step)),
                 TTSStoppedFrame()]


def run_service(frames, hub=None, seed=0):
    hub = hub or AvatarHub(tiny_generator(1))
    service = RestFastVideoService(portrait=PORTRAIT, hub=hub, seed=seed)
    arrivals = Arrivals()
    return service, arrivals, run_test(Pipeline([service, arrivals]), frames_to_send=frames)


def test_tts_audio_in_gives_images_at_25_fps_each_beside_its_audio():
    pcm, utterance = tts_frames(2.0, seed=1)
    service, arrivals, test = run_service([*utterance, SleepFrame(sleep=5.0)])
    speech_fed_at = []                                          # 16 kHz samples fed before the speech
    feed = service._feed

    def noting_feed(pcm16, audio, received_at):
        if audio is not None and not speech_fed_at:
            speech_fed_at.append(service._fed)
        feed(pcm16, audio, received_at)
    service._feed = noting_feed
    asyncio.run(test)
    times = np.array([t for t, _ in arrivals.images])
    # From the first frame (a chunk and its lookahead after the speech began, 1.2 s at the tiny
    # model, plus the compute) on, a frame every 40 ms: through the 2 s utterance and the
    # silence after it, the face never stops.
    steps = np.diff(times)
    # (A chunk that came late would hold the face for about a second; 0.5 s leaves a loaded
    # machine its hiccups.)
    assert np.median(steps) == pytest.approx(0.04, abs=0.005) and steps.max() < 0.5, steps.max()
    assert len(times) >= 0.9 * 25 * (times[-1] - times[0]) and times[-1] - times[0] > 3.0
    _, image = arrivals.images[0]
    assert image.size == (64, 64) and image.format == "RGB" and len(image.image) == 64 * 64 * 3
    # Each image is followed by the 40 ms of audio it shows (960 samples at 24 kHz), so the
    # transport gets them in step; the speech comes back whole and in order, once.
    assert len(arrivals.audio) == len(arrivals.images)
    assert all(a.sample_rate == RATE and len(a.audio) == 960 * 2 for _, a in arrivals.audio)
    out = np.frombuffer(b"".join(a.audio for _, a in arrivals.audio), "<i2")
    lead = int(np.flatnonzero(pcm)[0])                          # the utterance's first sound
    begin = int(np.flatnonzero(out)[0]) - lead                  # where it starts in the output
    assert begin >= 0 and begin % 960 == 0                      # on a frame boundary
    np.testing.assert_array_equal(out[begin:begin + len(pcm)], pcm)
    assert not out[begin + len(pcm):].any()                     # then silence
    # ... and beside the image of the frame the stream made from it: the silence fed before the
    # first utterance (at 16 kHz, before its rate was known) is held as long in its format.
    assert arrivals.audio_after_image[begin // 960] == speech_fed_at[0] // 640
    assert service.frame_latency_ms and min(service.frame_latency_ms) > 0


def test_an_interruption_drops_the_queued_speech_and_frames():
    pcm, utterance = tts_frames(8.0, seed=2)
    speak, _ = utterance[:-1], utterance[-1]
    service, arrivals, test = run_service([*speak, SleepFrame(sleep=1.5), InterruptionFrame(),
                                           SleepFrame(sleep=6.0)])
    asyncio.run(test)
    out = np.frombuffer(b"".join(a.audio for _, a in arrivals.audio), "<i2")
    spoken = np.count_nonzero(out) / RATE
    # 8 s went in at once, the first frames came after ~1.3 s, the interruption at 1.5 s: what
    # was shown by then came out and nothing after it (uninterrupted, 6 s more would have).
    assert 0 < spoken < 1.0, spoken
    assert not service._speech                                  # the queue is empty
    times = np.array([t for t, _ in arrivals.images])
    assert np.diff(times).max() < 1.5 and times[-1] - times[0] > 2.5   # and the face went on


def test_two_pipelines_share_one_generator():
    hub = AvatarHub(tiny_generator(2))
    steps = []
    step = hub.gen.step

    def counting_step(streams=None):
        made = step(streams)
        steps.append(len(made))
        return made
    hub.gen.step = counting_step
    runs = []
    for seed in (3, 4):
        _, utterance = tts_frames(1.5, seed=seed)
        runs.append(run_service([*utterance, SleepFrame(sleep=3.0)], hub=hub, seed=seed))

    async def both():
        await asyncio.gather(*(test for _, _, test in runs))
    asyncio.run(both())
    assert max(steps) == 2                                      # one batched step for both
    for _, arrivals, _ in runs:
        times = np.array([t for t, _ in arrivals.images])
        assert np.median(np.diff(times)) == pytest.approx(0.04, abs=0.005) and times[-1] - times[0] > 1.5


def test_an_utterance_at_another_rate_comes_out_at_the_first_ones():
    """The output is one audio stream: a second utterance at 16 kHz stereo comes out as the first
    one's 24 kHz mono, as long as it went in (40 ms of audio beside every image)."""
    _, first = tts_frames(0.5, seed=5)
    stereo16 = (np.clip(speech_like(1.0, seed=6), -1, 1) * 32767).astype("<i2").repeat(2)
    second = [TTSStartedFrame(), *(TTSAudioRawFrame(audio=stereo16[i:i + 640].tobytes(), sample_rate=16000,
                                                    num_channels=2) for i in range(0, len(stereo16), 640)),
              TTSStoppedFrame()]
    service, arrivals, test = run_service([*first, *second, SleepFrame(sleep=4.0)])
    asyncio.run(test)
    assert {(a.sample_rate, a.num_channels, len(a.audio)) for _, a in arrivals.audio} == {(RATE, 1, 960 * 2)}
    out = np.frombuffer(b"".join(a.audio for _, a in arrivals.audio), "<i2")
    voiced = np.flatnonzero(np.abs(out) > 200)
    assert 1.2 < (voiced[-1] - voiced[0]) / RATE < 1.7      # 0.5 s, then 1 s, back to back
