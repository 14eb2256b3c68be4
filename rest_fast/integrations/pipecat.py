"""A face for a Pipecat voice agent: ``RestFastVideoService``, a video service on your own machine.

    pip install -e ".[pipecat]"

    from rest_fast.integrations.pipecat import RestFastVideoService
    avatar = RestFastVideoService(portrait="me.png")            # the bundled low-latency weights
    pipeline = Pipeline([transport.input(), stt, llm, tts, avatar, transport.output()])

As Pipecat's avatar services do, it sits after the TTS. It takes the ``TTSAudioRawFrame``s (any
rate and channels: resampled to the model's 16 kHz mono), and pushes the avatar's
``OutputImageRawFrame``s at 25 fps with the same speech as ``TTSAudioRawFrame``s beside them,
each frame with the 40 ms of audio it shows, so that the transport plays the two in step (the
speech is delayed by the avatar's latency: the rest of a chunk's speech, the lookahead, the
compute). Between utterances silence is fed in real time, so the face keeps living instead of
freezing. An ``InterruptionFrame`` drops the speech and frames not yet shown (at most a chunk and
its lookahead were already in the generator) and keeps the stream: the face goes on from where
it is. Several services (pipelines) in one process can share one generator, batched in one step:
``RestFastVideoService.shared_hub(...)`` and ``hub=`` (capacity = how many pipelines at once).
"""
from __future__ import annotations

import asyncio
import collections
import time

import numpy as np

from pipecat.frames.frames import (CancelFrame, EndFrame, Frame, InterruptionFrame, OutputImageRawFrame,
                                   StartFrame, TTSAudioRawFrame)
from pipecat.processors.frame_processor import FrameDirection, FrameProcessor

from reference.speech import samples_needed
from rest_fast.serve.hub import AvatarHub
from rest_fast.serve.media import SpeechConverter

DEFAULT_CHECKPOINT = "low-latency"      # the one made for live use (README: which checkpoint when)
TICK_S = 0.02                           # how often silence is fed and frames are paced out
PREBUFFER_S = 0.08                      # the first frame waits this long after its chunk is made


class RestFastVideoService(FrameProcessor):
    """Pipecat video service: TTS audio in, the avatar's frames and the delayed audio out.

    Settings: ``checkpoint`` (a bundled name or a directory; default the low-latency weights),
    ``portrait`` (a path, bytes or array; default the demo portrait), ``device`` ("auto", "cpu",
    "cuda"), ``dtype`` (None: the device's default), ``seed`` (the stream's noise), or ``hub``: a
    shared ``AvatarHub`` from ``shared_hub`` (then checkpoint, device and dtype are its own)."""

    def __init__(self, *, checkpoint: str = DEFAULT_CHECKPOINT, portrait=None, device: str = "auto",
                 dtype=None, seed: int = 0, hub: AvatarHub | None = None, **kwargs):
        super().__init__(**kwargs)
        self._checkpoint, self._device, self._dtype = checkpoint, device, dtype
        self._portrait_source, self._seed, self._hub = portrait, seed, hub
        self._session = None
        self._converter: SpeechConverter | None = None
        self._to_output = None                   # av.AudioResampler to the output's format, if needed
        self._speech = collections.deque()       # (16 kHz mono float32, the audio as received, when) not fed
        self._speech_rate = self._speech_channels = self._input_format = None
        self._out_audio = bytearray()            # the received audio of the speech fed, in order
        self._fed = 0                            # 16 kHz samples fed to the stream
        self._shown = 0                          # frames pushed (or dropped by an interruption)
        self._drop_before_frame = 0              # frames before this showed interrupted speech
        self._tasks: list[asyncio.Task] = []
        self.frames_pushed = 0
        self.frame_latency_ms: collections.deque = collections.deque(maxlen=1500)

    # ---- generator ------------------------------------------------------------------------
    @staticmethod
    def shared_hub(checkpoint: str = DEFAULT_CHECKPOINT, *, capacity: int = 2, device: str = "auto",
                   dtype=None) -> AvatarHub:
        """One generator for several services in this process (each service a stream of it)."""
        from rest_fast.streaming import StreamingGenerator
        gen = StreamingGenerator.from_pretrained(checkpoint, device=device, dtype=dtype, capacity=capacity)
        gen.warmup()
        return AvatarHub(gen)

    def _own_hub(self) -> AvatarHub:
        return self.shared_hub(self._checkpoint, capacity=1, device=self._device, dtype=self._dtype)

    # ---- lifetime -------------------------------------------------------------------------
    async def _start(self, frame: StartFrame) -> None:
        from reference.media import load_image
        from rest_fast.cli import demo_asset
        loop = asyncio.get_running_loop()
        if self._hub is None:
            self._hub = await loop.run_in_executor(None, self._own_hub)
            self._owns_hub = True
        else:
            self._owns_hub = False
        hub = self._hub
        image = load_image(self._portrait_source if self._portrait_source is not None
                           else demo_asset("demo_portrait.png"), hub.resolution)
        self._session = await hub.open(image, self._seed)
        self._spf = hub.samples_per_frame
        # Speech ahead of the frames shown: silence to the next chunk and its lookahead, two
        # frames' margin; the TTS's speech a chunk more (the chunk after, made as this one plays).
        cfg = hub.gen.cfg
        self._silence_lead = samples_needed(0, cfg) + 2 * self._spf
        self._speech_lead = self._silence_lead + cfg.samples_per_chunk
        self._tasks = [self.create_task(self._feed_forever()), self.create_task(self._show_forever())]

    async def _stop(self) -> None:
        for task in self._tasks:
            await self.cancel_task(task)
        self._tasks = []
        if self._session is not None:
            await self._hub.close(self._session)
            self._session = None
        if getattr(self, "_owns_hub", False):
            await self._hub.stop()

    async def process_frame(self, frame: Frame, direction: FrameDirection):
        await super().process_frame(frame, direction)
        if isinstance(frame, StartFrame):
            await self.push_frame(frame, direction)
            await self._start(frame)
        elif isinstance(frame, (EndFrame, CancelFrame)):
            await self._stop()
            await self.push_frame(frame, direction)
        elif isinstance(frame, TTSAudioRawFrame) and direction == FrameDirection.DOWNSTREAM:
            self._receive(frame)                     # pushed again, delayed, beside its frames
        elif isinstance(frame, InterruptionFrame):
            self._interrupt()
            await self.push_frame(frame, direction)
        else:
            await self.push_frame(frame, direction)

    # ---- speech in ------------------------------------------------------------------------
    @property
    def _out_format(self) -> tuple[int, int]:
        """Rate and channels of the audio pushed: the first utterance's (16 kHz mono before it)."""
        return self._speech_rate or self._hub.sample_rate, self._speech_channels or 1

    def _receive(self, frame: TTSAudioRawFrame) -> None:
        fmt = (frame.sample_rate, frame.num_channels)
        if self._speech_rate is None:
            # The audio held so far is the silence fed before any speech, at 16 kHz mono: the
            # same length of silence in the output's format, so that it stays beside its frames.
            held = len(self._out_audio) // 2
            self._speech_rate, self._speech_channels = fmt
            self._out_audio = bytearray(round(held * frame.sample_rate / self._hub.sample_rate) * frame.num_channels * 2)
        if fmt != self._input_format:              # FFmpeg's resamplers are set up for one input format
            import av
            self._input_format = fmt
            self._converter = SpeechConverter(self._hub.sample_rate)
            rate, channels = self._out_format    # a later utterance in another format: as the first
            self._to_output = None if fmt == (rate, channels) else av.AudioResampler(
                format="s16", layout="mono" if channels == 1 else "stereo", rate=rate)
        pcm = self._converter.convert_pcm(frame.audio, frame.sample_rate, frame.num_channels, "s16")
        self._speech.append((pcm, self._as_output(frame), time.monotonic()))

    def _as_output(self, frame: TTSAudioRawFrame) -> bytes:
        """The frame's audio in the output's format (the output is one stream)."""
        if self._to_output is None:
            return frame.audio
        import av
        pcm = np.frombuffer(frame.audio, "<i2").reshape(-1, frame.num_channels).T.copy()
        src = av.AudioFrame.from_ndarray(pcm, format="s16p", layout="mono" if frame.num_channels == 1 else "stereo")
        src.sample_rate = frame.sample_rate
        width = 2 * self._out_format[1]
        return b"".join(bytes(f.planes[0])[:f.samples * width] for f in self._to_output.resample(src))

    def _interrupt(self) -> None:
        """Drop the speech not fed yet and every frame of the speech fed so far (made or not)."""
        self._speech.clear()
        self._drop_before_frame = -(-self._fed // self._spf) if self._session is not None else 0

    async def _feed_forever(self) -> None:
        """Keep the stream's speech ahead of the frames shown: the TTS's speech as soon as it
        comes, up to a chunk and its lookahead ahead of the next chunk (so that an interruption
        drops little), and silence when there is none, to a chunk and its lookahead ahead (so
        that the next chunk is made while this one plays, and a new utterance waits no more)."""
        spf = self._spf
        while True:
            ahead = self._fed - self._shown * spf
            while self._speech and ahead < self._speech_lead:
                self._feed(*self._speech.popleft())
                ahead = self._fed - self._shown * spf
            if not self._speech and ahead < self._silence_lead:
                missing = self._silence_lead - ahead
                self._feed(np.zeros(-(-missing // spf) * spf, np.float32), None, time.monotonic())
            await asyncio.sleep(TICK_S)

    def _feed(self, pcm: np.ndarray, audio: bytes | None, received_at: float) -> None:
        self._session.feed(pcm, arrived_at=received_at)       # a frame's latency runs from here
        self._fed += len(pcm)
        if audio is None:                                      # silence: as long, in the output's format
            rate, channels = self._out_format
            audio = bytes(round(len(pcm) * rate / self._hub.sample_rate) * channels * 2)
        # The audio as it came, whole: the resampler's few samples of delay shift the 16 kHz copy
        # by well under a frame, where cutting each piece to its resampled length would not.
        self._out_audio += audio

    # ---- frames out -----------------------------------------------------------------------
    async def _show_forever(self) -> None:
        """Push each frame on a 25 fps clock with the audio it shows; the first frame of a run
        ``PREBUFFER_S`` after its chunk was made, the others back to back (a late chunk: a gap)."""
        frame_s = 1.0 / self._hub.fps
        due = None
        while (chunk := await self._session.next_chunk()) is not None:
            for i, image in enumerate(chunk.frames):
                index = chunk.first_frame + i
                audio = self._take_audio()
                if index < self._drop_before_frame:
                    self._shown += 1
                    continue                                   # interrupted speech: not shown
                now = time.monotonic()
                if due is None or due < now - frame_s:        # a gap: start a new run
                    due = max(now, chunk.made_at + PREBUFFER_S)
                await asyncio.sleep(max(0.0, due - time.monotonic()))
                h, w = image.shape[:2]
                await self.push_frame(OutputImageRawFrame(image=np.ascontiguousarray(image).tobytes(),
                                                          size=(w, h), format="RGB"))
                if self._speech_rate is not None:
                    await self.push_frame(TTSAudioRawFrame(audio=audio, sample_rate=self._speech_rate,
                                                           num_channels=self._speech_channels))
                arrived = chunk.speech_arrived_at[i] if chunk.speech_arrived_at is not None else np.nan
                if np.isfinite(arrived):
                    self.frame_latency_ms.append(1000 * (time.monotonic() - arrived))
                self.frames_pushed += 1
                self._shown += 1
                due += frame_s

    def _take_audio(self) -> bytes:
        rate, channels = self._out_format
        n = rate // self._hub.fps * channels * 2
        audio = bytes(self._out_audio[:n]).ljust(n, b"\0")
        del self._out_audio[:n]
        return audio
