"""rest_fast.serve.media: speech in at any rate and layout; the avatar's timeline out."""
import asyncio
import collections
import time
import types

import av
import numpy as np
import pytest

from reference.media import InputError
from rest_fast.serve.hub import Chunk
from rest_fast.serve.media import MediaWatch, PacketArrivals, Playout, SpeechConverter, shorten_audio_prefetch


def tone(rate, seconds, hz=440.0):
    t = np.arange(round(rate * seconds)) / rate
    return (0.5 * np.sin(2 * np.pi * hz * t)).astype(np.float32)


def dominant_hz(x, rate):
    spectrum = np.abs(np.fft.rfft(x * np.hanning(len(x))))
    return np.argmax(spectrum) * rate / len(x)


def test_webrtc_audio_becomes_16k_mono():
    """48 kHz stereo s16 (what Opus decodes to): mixed to mono and resampled, pitch kept."""
    left, right = tone(48000, 1.0, 440), tone(48000, 1.0, 440)
    stereo = (np.stack([left, right], 1).reshape(1, -1) * 32767).astype(np.int16)
    converter = SpeechConverter(16000)
    out = []
    for i in range(0, stereo.shape[1], 960 * 2):                  # 20 ms frames
        frame = av.AudioFrame.from_ndarray(stereo[:, i:i + 1920], format="s16", layout="stereo")
        frame.sample_rate = 48000
        out.append(converter.convert(frame))
    out.append(converter.flush())
    mono = np.concatenate(out)
    assert mono.dtype == np.float32 and abs(len(mono) - 16000) <= 32
    assert dominant_hz(mono, 16000) == pytest.approx(440, abs=2)
    assert np.abs(mono).max() == pytest.approx(0.5, abs=0.03)     # averaged, as offline


@pytest.mark.parametrize("fmt, channels, rate", [("f32", 1, 16000), ("s16", 2, 44100), ("f32", 1, 8000)])
def test_websocket_pcm_in_any_announced_format(fmt, channels, rate):
    x = np.repeat(tone(rate, 0.5, 300)[:, None], channels, axis=1)
    data = (x * 32767).astype("<i2").tobytes() if fmt == "s16" else x.astype("<f4").tobytes()
    converter = SpeechConverter(16000)
    mono = np.concatenate([converter.convert_pcm(data, rate, channels, fmt), converter.flush()])
    assert abs(len(mono) - 8000) <= 32
    assert dominant_hz(mono, 16000) == pytest.approx(300, abs=3)


def test_websocket_pcm_that_does_not_fit_its_format_is_refused():
    converter = SpeechConverter(16000)
    with pytest.raises(InputError, match="not a whole number"):
        converter.convert_pcm(b"\0" * 6, 16000, 2, "s16")          # 1.5 stereo samples
    with pytest.raises(InputError, match="NaN"):
        converter.convert_pcm(np.array([np.nan], "<f4").tobytes(), 16000, 1, "f32")


def fake_session():
    hub = types.SimpleNamespace(sample_rate=16000, fps=25)
    session = types.SimpleNamespace(hub=hub, outbox=collections.deque())
    session.take = session.outbox.popleft
    return session


def chunk(first, made_at, n=24):
    frames = np.arange(first, first + n, dtype=np.uint8)[:, None, None, None] * np.ones((1, 2, 2, 3), np.uint8)
    speech = np.arange(first * 640, (first + n) * 640, dtype=np.float32)
    return Chunk(first, frames, speech, 1.0, made_at)


def test_playout_places_chunks_back_to_back_after_the_prebuffer():
    session = fake_session()
    idle = np.full((2, 2, 3), 255, np.uint8)
    p = Playout(session, idle, prebuffer_s=0.3)
    p.t0 = 100.0
    session.outbox.append(chunk(0, made_at=101.0))
    p.place(101.2)                                      # within the prebuffer: not yet
    assert not p.segments and (p.video_frame(101.2) == idle).all()
    p.place(101.31)
    (start, _), = p.segments
    assert start == pytest.approx(101.32)               # the next frame boundary from t0
    session.outbox.append(chunk(24, made_at=101.9))
    p.place(101.95)                                     # the first still plays: seamless
    assert p.segments[1][0] == pytest.approx(start + 0.96) and p.underruns == 0
    # Frame k shows from its speech's start; its speech is the chunk's samples from there.
    for k in (0, 5, 23, 24, 40):
        t = start + k * 0.04
        assert p.video_frame(t + 0.001)[0, 0, 0] == k
        np.testing.assert_array_equal(p.speech(t, 320), np.arange(k * 640, k * 640 + 320))
    assert (p.video_frame(start + 3.0) == 47).all()     # after the end: the last frame held
    assert not p.speech(start + 3.0, 320).any()         # and silence
    session.outbox.append(chunk(48, made_at=start + 2.5))
    p.place(start + 2.9)                                # arrived after a gap: an underrun
    assert p.underruns == 1 and p.placements[-1] == (48, pytest.approx(start + 2.92 - 100.0))
    assert p.prebuffer_s == pytest.approx(0.4)          # a gap: hold chunks longer from now on


def test_playout_sends_video_after_its_speech_by_the_offset():
    session = fake_session()
    p = Playout(session, np.zeros((2, 2, 3), np.uint8), av_offset_s=0.08, prebuffer_s=0.0)
    p.t0 = 0.0
    session.outbox.append(chunk(0, made_at=0.0))
    p.place(0.0)
    assert p.video_frame(0.079)[0, 0, 0] == 0 and (p.video_frame(0.079) == 0).all()
    assert p.video_frame(0.081 + 0.04 * 3)[0, 0, 0] == 3
    np.testing.assert_array_equal(p.speech(0.12, 320), np.arange(3 * 640, 3 * 640 + 320))


def test_playout_keeps_at_most_two_chunks_ahead():
    session = fake_session()
    p = Playout(session, np.zeros((2, 2, 3), np.uint8), prebuffer_s=0.0)
    p.t0 = 0.0
    for i in range(5):
        session.outbox.append(chunk(24 * i, made_at=0.0))
    p.place(0.0)
    assert len(p.segments) == 2 and len(session.outbox) == 3
    p.place(10.0)                                       # long after: old segments forgotten
    assert len(p.segments) <= 2


def test_the_prebuffer_is_sized_from_the_measured_jitter():
    """Chunks of 8 frames (0.32 s) made on the media clock with a lateness that varies by 50 ms:
    the measured prebuffer covers that spread and a frame, and no chunk comes too late for it;
    a steady stream keeps the floor of two frames. A fixed prebuffer stays as given."""
    session = fake_session()
    p = Playout(session, np.zeros((2, 2, 3), np.uint8))
    assert p.prebuffer_s == pytest.approx(0.08) and p.stats["prebuffer"] == "measured"
    p.t0 = 0.0
    lateness = [0.50, 0.52, 0.55, 0.50, 0.53, 0.51, 0.55, 0.50, 0.54, 0.52]
    now = 0.0
    for i, late in enumerate(lateness):
        made = i * 0.32 + late
        session.outbox.append(chunk(8 * i, made_at=made, n=8))
        while session.outbox:                   # the tracks call place() every 20 ms
            now = max(now, made)
            p.place(now)
            now += 0.02
    assert p.prebuffer_s == pytest.approx(0.05 + 0.04) and p.underruns == 0
    steady = Playout(fake_session(), np.zeros((2, 2, 3), np.uint8))
    steady.t0 = 0.0
    for i in range(5):
        steady.session.outbox.append(chunk(8 * i, made_at=i * 0.32 + 0.5, n=8))
        steady.place(i * 0.32 + 0.6)
    assert steady.prebuffer_s == pytest.approx(0.08)
    fixed = Playout(fake_session(), np.zeros((2, 2, 3), np.uint8), prebuffer_s=0.3)
    fixed.t0 = 0.0
    fixed.session.outbox.append(chunk(0, made_at=0.5, n=8))
    fixed.place(0.9)
    assert fixed.prebuffer_s == 0.3 and fixed.stats["prebuffer"] == "fixed"


def test_playout_times_each_frame_once_on_the_wall_clock():
    """The first slot that carries a frame records it: (slot, frame, sent, its speech's arrival),
    the arrival moved from time.monotonic() to the wall clock; slots that hold a frame again
    (the idle portrait, or the last frame of a chunk) add nothing."""
    session = fake_session()
    p = Playout(session, np.zeros((2, 2, 3), np.uint8), prebuffer_s=0.0)
    p.t0 = 0.0
    c = chunk(0, made_at=0.0, n=4)
    c.speech_arrived_at = time.monotonic() - 0.5 + 0.04 * np.arange(4)
    p.record_sent(0)                                           # the portrait: not timed
    session.outbox.append(c)
    p.place(0.0)
    for slot in range(7):                                      # 4 frames, then the last held
        p.video_frame(slot * 0.04)
        p.record_sent(slot)
    rows = np.array(p.frame_times)
    assert [(int(s), int(f)) for s, f, _, _ in rows] == [(0, 0), (1, 1), (2, 2), (3, 3)]
    sent_to_speech = rows[:, 2] - rows[:, 3]
    np.testing.assert_allclose(sent_to_speech, 0.5 - 0.04 * np.arange(4), atol=0.05)
    assert abs(rows[0, 2] - time.time()) < 1.0


def test_packet_arrivals_time_a_decoded_frame_by_its_packet():
    """The receiver's packet handler is wrapped, not replaced: packets still reach it, and a
    decoded frame (its pts is its packet's RTP timestamp) finds when its packet came."""
    handled = []

    class Receiver:
        async def _handle_rtp_packet(self, packet, arrival_time_ms):
            handled.append(packet.timestamp)

    receiver = Receiver()
    arrivals = PacketArrivals(receiver)
    before = time.monotonic()
    for ts in (960, 1920, 2880):
        asyncio.run(receiver._handle_rtp_packet(types.SimpleNamespace(timestamp=ts), 0))
    assert handled == [960, 1920, 2880]
    assert before <= arrivals.of(types.SimpleNamespace(pts=1920)) <= time.monotonic()
    assert arrivals.of(types.SimpleNamespace(pts=4800)) is None
    for ts in range(PacketArrivals.KEPT + 10):                # bounded
        asyncio.run(receiver._handle_rtp_packet(types.SimpleNamespace(timestamp=10_000 + ts), 0))
    assert len(arrivals.times) == PacketArrivals.KEPT
    assert PacketArrivals(object()).of(types.SimpleNamespace(pts=0)) is None   # no hook: unknown


def test_an_aiortc_audio_receiver_decodes_a_packet_once_the_next_arrives():
    """aiortc holds four audio packets before the first decodes (80 ms); shortened, a packet's
    frame comes out when the next packet shows it ended (20 ms)."""
    from aiortc.rtcrtpreceiver import RTCRtpReceiver
    from aiortc.rtp import RtpPacket

    async def receivers():
        transport = types.SimpleNamespace(state="new", _register_rtp_receiver=lambda *a: None)
        return RTCRtpReceiver("audio", transport), RTCRtpReceiver("audio", transport)

    as_shipped, shortened = asyncio.run(receivers())
    assert shorten_audio_prefetch(shortened) and not shorten_audio_prefetch(object())

    def first_decoded(receiver):
        buffer = receiver._RTCRtpReceiver__jitter_buffer
        for seq in range(8):
            packet = RtpPacket(sequence_number=seq, timestamp=960 * seq, payload=b"x")
            packet._data = packet.payload                # the receiver's depayloading, for Opus
            _, frame = buffer.add(packet)
            if frame is not None:
                return seq
    assert first_decoded(as_shipped) == 4 and first_decoded(shortened) == 1


def test_a_media_watch_hears_every_packet_and_says_when_it_has_nothing_to_watch():
    class End:
        async def _handle_rtcp_packet(self, packet):
            return packet

    watch, end = MediaWatch(), End()
    watch.watch([end, object()])
    assert watch.watching == 1
    watch.last -= 10.0
    assert watch.silent_for() >= 10.0
    assert asyncio.run(end._handle_rtcp_packet("report")) == "report" and watch.silent_for() < 1.0
    nothing = MediaWatch()
    nothing.watch([object()])
    assert nothing.watching == 0          # the server then leaves a silent caller to ICE
