"""Media in and out of a session: speech to 16 kHz mono, and the avatar paced out on one clock.

Speech in: whatever arrives (a WebRTC track's 48 kHz stereo Opus frames, or a WebSocket client's
PCM in the format it announced) is resampled to the model's rate by FFmpeg (``av.AudioResampler``)
and its channels averaged, as the offline loader (reference.media.load_audio) mixes them;
FFmpeg's own downmix would make in-phase stereo 3 dB louder than the same file offline.

Avatar out (WebRTC): ``Playout`` lays the session's chunks on a timeline, and two tracks read it:
the audio track sends the caller's own speech in 20 ms packets, the video track one frame every
40 ms. A chunk is placed when it is made (after a prebuffer, so that the next chunk is made
before this one has played out), right after the previous one when they follow without a gap.
The prebuffer is sized as a jitter buffer is, from what it measures: each chunk's lateness, the
time it was made less the media time of its first frame, varies from chunk to chunk with the
compute and the speech's arrival; the prebuffer covers that spread over the last
``JITTER_WINDOW`` chunks plus a frame (``JITTER_MARGIN_S``), between ``MIN_PREBUFFER_S`` and
``MAX_PREBUFFER_S``. A fixed ``prebuffer_s`` is held instead, grown by 0.1 s after each gap (the
next chunk came too late: an underrun). The frame for media time t goes out ``av_offset_s`` after the speech for t (0: together).
Nothing is queued on either track: a track that is called late skips to the present (the
frames it skipped are counted), so a receiver or encoder that falls behind loses frames instead
of growing a queue. Before the first chunk, and between chunks when speech pauses, the video
holds the last frame (at first the portrait) and the audio is silence.
"""
from __future__ import annotations

import asyncio
import collections
import fractions
import math
import time

import numpy as np

from reference.media import InputError

AUDIO_PACKET_S = 0.02          # WebRTC's usual audio packet (Opus frame) length
VIDEO_CLOCK = 90000            # RTP clock rate of video
PREBUFFER_STEP_S, MAX_PREBUFFER_S = 0.1, 1.0   # a fixed prebuffer: after each gap, this much longer
MIN_PREBUFFER_S = 0.08                         # the measured prebuffer: at least two frames,
JITTER_WINDOW, JITTER_MARGIN_S = 16, 0.04      # the spread over 16 chunks plus a frame
FRAME_TIMES_KEPT = 1500                        # per-frame times of the last minute


class SpeechConverter:
    """Any PCM to float32 mono at ``rate``: FFmpeg resamples, the channels are averaged."""

    def __init__(self, rate: int):
        import av
        self.av, self.rate = av, rate
        self.resampler = av.AudioResampler(format="fltp", rate=rate)   # the input's layout kept

    def convert(self, frame) -> np.ndarray:
        """An ``av.AudioFrame`` (any rate, layout and format) to float32 mono samples."""
        out = self.resampler.resample(frame)
        return _samples(out)

    def flush(self) -> np.ndarray:
        return _samples(self.resampler.resample(None))

    def convert_pcm(self, data: bytes, sample_rate: int, channels: int, sample_format: str) -> np.ndarray:
        """Interleaved PCM bytes (``s16`` little-endian or ``f32`` float) to float32 mono."""
        dtype = {"s16": "<i2", "f32": "<f4"}[sample_format]
        width = np.dtype(dtype).itemsize * channels
        if len(data) % width:
            raise InputError(f"a PCM message of {len(data)} bytes is not a whole number of "
                             f"{channels}-channel {sample_format} samples ({width} bytes each)")
        pcm = np.frombuffer(data, dtype=dtype).astype(np.float32).reshape(-1, channels)
        if sample_format == "s16":
            pcm /= 32768.0
        elif not np.isfinite(pcm).all():
            raise InputError("the PCM message holds NaN or inf samples")
        mono = np.ascontiguousarray(pcm.mean(axis=1))[None]            # channels averaged
        frame = self.av.AudioFrame.from_ndarray(mono, format="flt", layout="mono")
        frame.sample_rate = sample_rate
        return self.convert(frame)


def image_size(data: bytes) -> tuple[int, int] | None:
    """(width, height) from an image file's header, without decoding it: PNG, GIF, BMP, JPEG,
    WebP and TIFF; None for anything else (or a header cut short). A few hundred KB of one
    colour can hold 64 megapixels, which decoding would expand to gigabytes; the header says so
    first. (FFmpeg's probe decodes the image to learn its size, so PyAV cannot be asked.)"""
    import struct
    try:
        if data[:8] == b"\x89PNG\r\n\x1a\n":
            return struct.unpack(">II", data[16:24])
        if data[:6] in (b"GIF87a", b"GIF89a"):
            return struct.unpack("<HH", data[6:10])
        if data[:2] == b"BM":
            width, height = struct.unpack("<ii", data[18:26])
            return abs(width), abs(height)
        if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
            kind = data[12:16]
            if kind == b"VP8X":
                return 1 + int.from_bytes(data[24:27], "little"), 1 + int.from_bytes(data[27:30], "little")
            if kind == b"VP8L":
                bits = int.from_bytes(data[21:25], "little")
                return 1 + (bits & 0x3FFF), 1 + ((bits >> 14) & 0x3FFF)
            if kind == b"VP8 ":
                width, height = struct.unpack("<HH", data[26:30])
                return width & 0x3FFF, height & 0x3FFF
            return None
        if data[:2] == b"\xff\xd8":                  # JPEG: walk the markers to a frame header
            i = 2
            while i + 9 < len(data):
                if data[i] != 0xFF:
                    return None
                marker, length = data[i + 1], int.from_bytes(data[i + 2:i + 4], "big")
                if 0xC0 <= marker <= 0xCF and marker not in (0xC4, 0xC8, 0xCC):
                    height, width = struct.unpack(">HH", data[i + 5:i + 9])
                    return width, height
                i += 2 + length
            return None
        if data[:4] in (b"II*\x00", b"MM\x00*"):      # TIFF: the first directory's width and length
            order = "<" if data[:2] == b"II" else ">"
            ifd = struct.unpack(order + "I", data[4:8])[0]
            (count,) = struct.unpack(order + "H", data[ifd:ifd + 2])
            size = {}
            for k in range(count):
                entry = data[ifd + 2 + 12 * k: ifd + 14 + 12 * k]
                tag, kind = struct.unpack(order + "HH", entry[:4])
                if tag in (256, 257):
                    size[tag] = struct.unpack(order + ("H" if kind == 3 else "I"), entry[8:10 if kind == 3 else 12])[0]
            return (size[256], size[257]) if len(size) == 2 else None
    except (struct.error, IndexError):
        return None
    return None


class PacketArrivals:
    """When each RTP packet of a received track reached this machine (time.monotonic()), by its
    RTP timestamp, which aiortc's decoder keeps as the decoded frame's pts. Speech is timed from
    here rather than from its decoding: aiortc holds received audio in a jitter buffer of four
    packets first (``shorten_audio_prefetch`` makes it one), a wait the caller's voice to face
    includes. (aiortc offers no public hook: its receiver's packet handler is wrapped; without
    one, times are not known.)"""

    KEPT = 256                     # ~5 s of 20 ms packets: a frame is decoded well before that

    def __init__(self, receiver):
        self.times: collections.OrderedDict = collections.OrderedDict()
        handle = getattr(receiver, "_handle_rtp_packet", None)
        if handle is None:
            return

        async def recording(packet, arrival_time_ms):
            self.times[packet.timestamp] = time.monotonic()
            if len(self.times) > self.KEPT:
                self.times.popitem(last=False)
            return await handle(packet, arrival_time_ms)
        receiver._handle_rtp_packet = recording

    def of(self, frame) -> float | None:
        """When the packet of decoded ``frame`` arrived, or None if not known."""
        return self.times.get(frame.pts)


class MediaWatch:
    """When a peer last sent anything: any RTP packet to our receivers, any RTCP packet (a
    receiver report on what we send, a sender report on what it sends) to them or our senders.
    A live browser sends RTCP every second or so even when it sends no media; one that crashed
    or lost its network sends nothing, and ICE's consent check would notice only after 30 s.
    (aiortc has no public hook: the handlers are wrapped, as PacketArrivals does.)"""

    def __init__(self):
        self.last = time.monotonic()
        self.watching = 0                   # handlers wrapped: 0 (another aiortc) watches nothing

    def watch(self, transceivers) -> None:
        """Listen on these aiortc senders and receivers (those without handlers are skipped)."""
        for end in transceivers:
            for name in ("_handle_rtp_packet", "_handle_rtcp_packet"):
                handle = getattr(end, name, None)
                if handle is not None:
                    setattr(end, name, self._heard(handle))
                    self.watching += 1

    def _heard(self, handle):
        async def heard(*args, **kwargs):
            self.last = time.monotonic()
            return await handle(*args, **kwargs)
        return heard

    def silent_for(self) -> float:
        return time.monotonic() - self.last


AUDIO_PREFETCH_PACKETS = 1     # what aiortc's jitter buffer needs to see that a packet's frame ended


def shorten_audio_prefetch(receiver) -> bool:
    """Let an aiortc audio receiver decode each packet as soon as the next one arrives.

    aiortc's receiver holds four audio packets (80 ms) before it decodes the first: a prefetch
    for smooth playback. The server does not play the caller's speech; the hub waits for a
    chunk's speech anyway, and a lost or late packet stalls the buffer the same with either
    prefetch. Holding four only adds 60 ms to every frame's voice to face. aiortc has no setting
    for it, so its buffer's field is set; False where this aiortc has none (nothing changes)."""
    buffer = getattr(receiver, "_RTCRtpReceiver__jitter_buffer", None)
    if buffer is None or not hasattr(buffer, "_prefetch"):
        return False
    buffer._prefetch = AUDIO_PREFETCH_PACKETS
    return True


def _samples(frames) -> np.ndarray:
    parts = [f.to_ndarray().mean(axis=0) for f in frames]              # planar: (channels, n)
    return np.concatenate(parts).astype(np.float32) if parts else np.zeros(0, np.float32)


class Playout:
    """One session's chunks on a wall-clock timeline, read by its audio and video tracks."""

    def __init__(self, session, idle_frame: np.ndarray, *, av_offset_s: float = 0.0,
                 prebuffer_s: float | None = None):
        self.session, self.av_offset_s = session, av_offset_s
        self.fixed_prebuffer = prebuffer_s is not None     # None: sized from the measured jitter
        self.prebuffer_s = prebuffer_s if self.fixed_prebuffer else MIN_PREBUFFER_S
        self.lateness: collections.deque = collections.deque(maxlen=JITTER_WINDOW)
        self._measured_up_to = -1           # the first frame of the last chunk measured
        self.rate, self.fps = session.hub.sample_rate, session.hub.fps
        self.frame_s = 1.0 / self.fps
        self.t0: float | None = None
        self.segments: collections.deque = collections.deque()   # (audio start time, Chunk)
        self.end: float | None = None       # when the last placed chunk's speech ends
        self.last_frame = idle_frame
        self.frames_sent = 0
        self.frames_skipped = 0             # video slots a late track skipped
        self.underruns = 0                  # gaps: the next chunk was not made in time
        # Where the media went (for receivers that measure sync): each placed chunk's first
        # frame and the time of its speech from t0, and the first video slot and audio packet.
        self.placements: collections.deque = collections.deque(maxlen=64)
        self.first_video_slot = self.first_audio_packet = None
        # Per frame, the first time a video slot showed it: (slot, frame, sent, speech arrived),
        # times on the wall clock (time.time()) so that a receiver on this machine can match its
        # own; a receiver adds its arrival and display to measure each frame's voice to face.
        self.frame_times: collections.deque = collections.deque(maxlen=FRAME_TIMES_KEPT)
        self._shown = (None, -1)            # (chunk, index) of the frame video_frame last gave
        self._last_timed_frame = -1

    def clock(self) -> float:
        if self.t0 is None:
            self.t0 = time.monotonic()
        return self.t0

    def _grid(self, t: float) -> float:
        """The first frame boundary (from t0) at or after t."""
        return self.t0 + math.ceil((t - self.t0) / self.frame_s - 1e-6) * self.frame_s

    def place(self, now: float) -> None:
        """Put made chunks on the timeline: right after the last one while it is still playing,
        else ``prebuffer_s`` after the chunk was made; at most two chunks ahead of ``now``."""
        outbox = self.session.outbox
        while outbox:
            ahead = sum(1 for start, c in self.segments if start + len(c.frames) * self.frame_s > now)
            if ahead >= 2:
                break
            chunk = outbox[0]
            self._measure(chunk)
            if self.end is not None and self.end > now:
                start = self.end                                       # seamless
            else:
                if now < chunk.made_at + self.prebuffer_s:
                    break
                if self.end is not None:
                    # A gap: the chunks come less evenly than the prebuffer allows for (a
                    # busy server). Hold more from now on, as a jitter buffer does.
                    self.underruns += 1
                    if self.fixed_prebuffer:
                        self.prebuffer_s = min(self.prebuffer_s + PREBUFFER_STEP_S, MAX_PREBUFFER_S)
                start = self._grid(now + max(0.0, -self.av_offset_s))
            self.session.take()
            self.segments.append((start, chunk))
            self.placements.append((chunk.first_frame, start - self.t0))
            self.end = start + len(chunk.frames) * self.frame_s
        while self.segments and self.segments[0][0] + len(self.segments[0][1].frames) * self.frame_s \
                + abs(self.av_offset_s) + 1.0 < now:
            self.segments.popleft()                                    # long played out

    def _measure(self, chunk) -> None:
        """The chunk's lateness (made, less its first frame's media time) into the window, and
        the prebuffer re-sized to the window's spread (unless fixed)."""
        if chunk.first_frame <= self._measured_up_to:
            return
        self._measured_up_to = chunk.first_frame
        self.lateness.append(chunk.made_at - chunk.first_frame * self.frame_s)
        if not self.fixed_prebuffer:
            spread = max(self.lateness) - min(self.lateness)
            self.prebuffer_s = min(max(spread + JITTER_MARGIN_S, MIN_PREBUFFER_S), MAX_PREBUFFER_S)

    def video_frame(self, t: float) -> np.ndarray:
        """The frame shown at time t: the latest frame whose time has come, else the last one."""
        for start, chunk in reversed(self.segments):
            i = math.floor((t - start - self.av_offset_s) / self.frame_s + 1e-6)
            if i >= 0:
                i = min(i, len(chunk.frames) - 1)
                self.last_frame, self._shown = chunk.frames[i], (chunk, i)
                break
        return self.last_frame

    def record_sent(self, slot: int) -> None:
        """Note the frame video slot ``slot`` carries, the first time a slot carries it."""
        chunk, i = self._shown
        if chunk is None or chunk.first_frame + i <= self._last_timed_frame:
            return
        self._last_timed_frame = chunk.first_frame + i
        wall = time.time() - time.monotonic()               # this moment's monotonic -> wall
        arrived = chunk.speech_arrived_at[i] if chunk.speech_arrived_at is not None else math.nan
        self.frame_times.append((slot, chunk.first_frame + i, time.time(), arrived + wall))

    def speech(self, t: float, n: int) -> np.ndarray:
        """The ``n`` speech samples from time t on (silence where no chunk plays)."""
        out = np.zeros(n, np.float32)
        for start, chunk in self.segments:
            lo = round((t - start) * self.rate)
            a, b = max(lo, 0), min(lo + n, len(chunk.speech))
            if b > a:
                out[a - lo:b - lo] = chunk.speech[a:b]
        return out

    @property
    def stats(self) -> dict:
        return {"frames_sent": self.frames_sent, "frames_skipped": self.frames_skipped,
                "underruns": self.underruns, "prebuffer_s": self.prebuffer_s,
                "prebuffer": "fixed" if self.fixed_prebuffer else "measured", "av_offset_s": self.av_offset_s,
                "first_video_slot": self.first_video_slot, "first_audio_packet": self.first_audio_packet,
                "placements": list(self.placements)}


def _tracks():
    """The aiortc track classes (aiortc is the optional ``serve`` extra: imported on use)."""
    import av
    from aiortc.mediastreams import MediaStreamError, MediaStreamTrack

    class AvatarVideoTrack(MediaStreamTrack):
        kind = "video"

        def __init__(self, playout: Playout):
            super().__init__()
            self.playout, self.slot = playout, -1

        async def recv(self):
            if self.readyState != "live":
                raise MediaStreamError
            p = self.playout
            t0 = p.clock()
            slot = self.slot + 1
            now = time.monotonic()
            due = math.floor((now - t0 - p.av_offset_s) / p.frame_s)
            if due > slot:                            # called late: skip to the present
                p.frames_skipped += due - slot
                slot = due
            self.slot = slot
            if p.first_video_slot is None:
                p.first_video_slot = slot
            t = t0 + p.av_offset_s + slot * p.frame_s
            await asyncio.sleep(max(0.0, t - time.monotonic()))
            p.place(time.monotonic())
            frame = av.VideoFrame.from_ndarray(p.video_frame(t), format="rgb24")
            p.record_sent(slot)
            frame.pts = round(slot * p.frame_s * VIDEO_CLOCK)
            frame.time_base = fractions.Fraction(1, VIDEO_CLOCK)
            p.frames_sent += 1
            return frame

    class AvatarAudioTrack(MediaStreamTrack):
        kind = "audio"

        def __init__(self, playout: Playout):
            super().__init__()
            self.playout, self.packet = playout, -1
            self.samples = round(AUDIO_PACKET_S * playout.rate)

        async def recv(self):
            if self.readyState != "live":
                raise MediaStreamError
            p = self.playout
            t0 = p.clock()
            self.packet = max(self.packet + 1, math.floor((time.monotonic() - t0) / AUDIO_PACKET_S))
            t = t0 + self.packet * AUDIO_PACKET_S
            if p.first_audio_packet is None:
                p.first_audio_packet = self.packet
            await asyncio.sleep(max(0.0, t - time.monotonic()))
            p.place(time.monotonic())
            pcm = np.clip(p.speech(t, self.samples) * 32767, -32768, 32767).astype(np.int16)
            frame = av.AudioFrame.from_ndarray(pcm[None], format="s16", layout="mono")
            frame.sample_rate = p.rate
            frame.pts = self.packet * self.samples
            frame.time_base = fractions.Fraction(1, p.rate)
            return frame

    return AvatarVideoTrack, AvatarAudioTrack


def avatar_tracks(playout: Playout):
    """(video track, audio track) reading ``playout``."""
    video_cls, audio_cls = _tracks()
    return video_cls(playout), audio_cls(playout)
