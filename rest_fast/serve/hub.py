"""The transport-free core of ``rest-fast serve``: callers' streams on one shared generator.

Every caller (a WebRTC peer or a WebSocket client) gets a ``Session``: a stream of one shared
``StreamingGenerator``, the speech it has sent (kept until its frames are made, so that the
speech can be sent back beside them), and a bounded outbox of made chunks. One batcher task
advances every ready stream in one ``gen.step()``; the generator is not thread-safe and its calls
block, so every call that touches it runs on one worker thread, and everything a tick needs is
collected on the event loop before the tick starts (no state is shared between the threads
while a tick runs).

Nothing here grows with the length of a call: the speech kept is at most what the generator
has not turned into frames yet (``max_backlog_s``; more is dropped and counted, which only
happens when the server cannot keep up), and the outbox holds at most ``max_queued_chunks``
chunks (a receiver that does not keep up loses the oldest, counted in ``dropped_frames``).
"""
from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import functools
import itertools
import logging
import statistics
import time
from dataclasses import dataclass

import numpy as np

from reference.speech import samples_needed
from rest_fast.streaming import StreamingGenerator

log = logging.getLogger(__name__)
CHUNK_TIMES_KEPT = 256


def median_worst(name: str, times) -> dict:
    """{name_median, name_worst} of recent timings (None before the first)."""
    times = list(times)
    return {f"{name}_median": statistics.median(times) if times else None,
            f"{name}_worst": max(times) if times else None}


class CapacityError(RuntimeError):
    """Every stream of the generator is taken."""


@dataclass
class Chunk:
    """Frames a stream made, and the speech they show (the caller's own, 16 kHz mono)."""
    first_frame: int
    frames: np.ndarray        # uint8 (n, H, W, 3)
    speech: np.ndarray        # float32 (n * samples_per_frame,)
    compute_ms: float         # the tick that made it
    made_at: float            # time.monotonic() when it was queued
    # time.monotonic() when each frame's own speech (its samples_per_frame) had all arrived; NaN
    # for frames of the flush after the speech ended. A frame's voice to face runs from here.
    speech_arrived_at: np.ndarray | None = None


class Session:
    """One caller: its stream, the speech not yet shown, and the chunks not yet sent."""

    def __init__(self, hub: "AvatarHub", session_id: str, stream, max_queued_chunks: int):
        self.hub, self.id, self.stream = hub, session_id, stream
        self.outbox: collections.deque[Chunk] = collections.deque()
        self.max_queued_chunks = max_queued_chunks
        self.new_chunk = asyncio.Event()
        self.pending: list[np.ndarray] = []      # speech received since the last tick
        self.pending_samples = 0
        # (time.monotonic(), samples received by then) of recent pieces: a chunk's latency runs
        # from the arrival of the last sample it needed to its frames.
        self._arrivals: collections.deque = collections.deque()
        self.samples_received = 0                # speech fed and kept (not dropped)
        self._speech = np.zeros(0, np.float32)   # received speech from sample _speech_start on
        self._speech_start = 0
        self.frames_made = 0
        self.dropped_frames = 0                  # made but never sent: the receiver fell behind
        self.dropped_samples = 0                 # received but never used: the server fell behind
        self.ending = False                      # the caller's speech ended: flush at next tick
        self.finished = False                    # every frame for the speech is made
        self.closed = False
        self.opened_at = time.monotonic()
        self.chunk_ms: collections.deque[float] = collections.deque(maxlen=CHUNK_TIMES_KEPT)
        self.latency_ms: collections.deque[float] = collections.deque(maxlen=CHUNK_TIMES_KEPT)
        self.drained = asyncio.Event()           # set when frames are made: room in the backlog

    # ---- the caller's side (event loop) ---------------------------------------------------
    def backlog(self) -> int:
        """Speech received and not yet shown by a frame made, in samples (counted as fed: a
        tick's push moves speech into the stream late)."""
        return self.samples_received - self._samples_shown()

    async def room_for(self, samples: int) -> None:
        """Wait until ``samples`` more speech fit in the backlog, so that a sender faster than
        real time (a WebSocket client sending a file) is paced by the generator instead of
        losing speech. Pieces of at most a chunk always fit once the generator has made the
        chunks the backlog holds (the limit is ``max_backlog_s`` beyond a chunk's need)."""
        while not (self.closed or self.ending) and self.backlog() + samples > self.hub.max_backlog_samples:
            self.drained.clear()
            await self.drained.wait()

    def feed(self, pcm: np.ndarray, arrived_at: float | None = None) -> None:
        """16 kHz mono float32 speech from the caller; the next tick hands it to the stream.
        ``arrived_at``: when it reached this machine (time.monotonic(); default now), where a
        receiver held it before handing it on (aiortc's audio jitter buffer)."""
        if self.closed or self.ending or not len(pcm):
            return
        if self.backlog() + len(pcm) > self.hub.max_backlog_samples:
            self.dropped_samples += len(pcm)     # the generator is behind: keep memory bounded
            return
        self.pending.append(pcm)
        self.pending_samples += len(pcm)
        self.samples_received += len(pcm)   # not stream.samples: a tick's push updates that late
        at = time.monotonic() if arrived_at is None else arrived_at
        self._arrivals.append((at, self.samples_received))
        self.hub.wake.set()

    def end(self) -> None:
        """The caller's speech ended: the remaining frames are made at the next tick."""
        if not self.closed and not self.ending:
            self.ending = True
            self.hub.wake.set()

    def take(self) -> Chunk | None:
        """The oldest chunk not yet sent, or None."""
        if self.outbox:
            return self.outbox.popleft()
        self.new_chunk.clear()
        return None

    async def next_chunk(self) -> Chunk | None:
        """Wait for the next chunk; None once the stream is finished or closed and all is sent."""
        while True:
            chunk = self.take()
            if chunk is not None:
                return chunk
            if self.finished or self.closed:
                return None
            await self.new_chunk.wait()

    @property
    def stats(self) -> dict:
        # The parts of a voice's wait for its face that the model sets (the page adds the
        # server's measured part, the prebuffer and the transport it measures itself).
        latency = self.stream.latency
        parts = {"chunk_length_ms": latency["chunk_ms"],
                 **{k: latency[k] for k in ("speech_wait_ms", "speech_wait_median_ms", "lookahead_ms")}}
        return {"session": self.id, "frames_made": self.frames_made, **parts,
                "dropped_frames": self.dropped_frames,
                "dropped_speech_s": self.dropped_samples / self.hub.sample_rate,
                **median_worst("chunk_ms", self.chunk_ms), **median_worst("latency_ms", self.latency_ms),
                "finished": self.finished, "seconds_open": time.monotonic() - self.opened_at}

    # ---- the hub's side -------------------------------------------------------------------
    def _take_pending(self) -> np.ndarray | None:
        if not self.pending:
            return None
        pcm = np.concatenate(self.pending)
        self.pending, self.pending_samples = [], 0
        self._speech = np.concatenate([self._speech, pcm])
        return pcm

    def _samples_shown(self) -> int:
        return self.frames_made * self.hub.samples_per_frame

    def _arrival_of(self, sample: int) -> float:
        """When the piece holding speech sample ``sample`` - 1 arrived (NaN if none has yet)."""
        for at, received in self._arrivals:      # a few chunks' pieces: a scan is fine
            if received >= sample:
                return at
        return float("nan")

    def _deliver(self, frames: np.ndarray, compute_ms: float) -> None:
        """Pair new frames with the speech they show and queue them (oldest dropped if full)."""
        spf = self.hub.samples_per_frame
        lo = self.frames_made * spf - self._speech_start
        speech = self._speech[lo:lo + len(frames) * spf]
        speech = np.pad(speech, (0, len(frames) * spf - len(speech)))   # flush: silence after the end
        self._speech = self._speech[lo + len(speech):]
        self._speech_start += lo + len(speech)
        ends = (self.frames_made + 1 + np.arange(len(frames))) * spf       # each frame's last sample
        arrived = np.array([self._arrival_of(n) for n in ends], dtype=np.float64)
        chunk = Chunk(self.frames_made, frames, speech, compute_ms, time.monotonic(), arrived)
        self.frames_made += len(frames)
        self.chunk_ms.append(compute_ms)
        # Latency: from the arrival of the piece that completed this chunk's speech window.
        needed = samples_needed(self.stream.chunks - 1, self.stream.cfg)
        completed = self._arrival_of(needed)
        if not np.isnan(completed) and not self.ending:
            self.latency_ms.append(1000 * (chunk.made_at - completed))
        # Keep the pieces later frames may still need (the next frame's speech ends after here).
        while self._arrivals and self._arrivals[0][1] < (self.frames_made + 1) * spf:
            self._arrivals.popleft()
        if len(self.outbox) >= self.max_queued_chunks:
            self.dropped_frames += len(self.outbox.popleft().frames)
        self.outbox.append(chunk)
        self.new_chunk.set()
        self.drained.set()


class AvatarHub:
    """Sessions of many callers on one ``StreamingGenerator``, advanced by one batcher."""

    def __init__(self, gen: StreamingGenerator, *, cfg_scale: float | None = None, first_seed: int = 0,
                 max_queued_chunks: int = 2, max_backlog_s: float = 4.0):
        self.gen, self.cfg_scale, self.first_seed = gen, cfg_scale, first_seed
        cfg = gen.cfg
        self.sample_rate = cfg.speech.sample_rate
        self.fps = cfg.fps
        self.resolution = cfg.resolution
        self.samples_per_frame = self.sample_rate // cfg.fps
        self.max_queued_chunks = max_queued_chunks
        # A chunk needs its own audio plus Whisper's lookahead before it can be made.
        self.max_backlog_samples = int(max_backlog_s * self.sample_rate) + samples_needed(0, cfg)
        self.sessions: dict[str, Session] = {}
        self.worker = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="rest-gen")
        self.wake = asyncio.Event()
        self.ids = itertools.count(1)
        self.ticks = 0
        self.tick_ms: collections.deque[float] = collections.deque(maxlen=CHUNK_TIMES_KEPT)
        self._batcher: asyncio.Task | None = None
        self._opening = 0

    @property
    def capacity(self) -> int:
        return self.gen.capacity

    async def _run(self, fn, *args):
        return await asyncio.get_running_loop().run_in_executor(self.worker, fn, *args)

    # ---- sessions -------------------------------------------------------------------------
    async def open(self, image: np.ndarray, seed: int | None = None) -> Session:
        """A session for this portrait ((H, W, 3) uint8 at the model's resolution); its noise
        seed is ``seed``, else ``first_seed`` + the session's number. Raises CapacityError when
        every stream is taken."""
        if len(self.sessions) + self._opening >= self.capacity:
            raise CapacityError(f"all {self.capacity} streams of this server are in use: try again "
                                "when a caller leaves, or start the server with a larger --capacity")
        self._opening += 1
        try:
            number = next(self.ids)
            session_id = f"s{number}"
            seed = self.first_seed + number - 1 if seed is None else seed
            stream = await self._run(functools.partial(self.gen.open, image, seed,
                                                       cfg_scale=self.cfg_scale))
        finally:
            self._opening -= 1
        session = Session(self, session_id, stream, self.max_queued_chunks)
        self.sessions[session_id] = session
        self.start()
        log.info("session %s opened (%d/%d streams)", session_id, len(self.sessions), self.capacity)
        return session

    async def close(self, session: Session) -> None:
        """Free the session's stream (idempotent); its unsent chunks are dropped."""
        if session.closed:
            return
        session.closed = True
        session.new_chunk.set()
        session.drained.set()
        self.sessions.pop(session.id, None)
        await self._run(session.stream.close)
        session.outbox.clear()
        log.info("session %s closed (%d/%d streams)", session.id, len(self.sessions), self.capacity)

    # ---- the batcher ----------------------------------------------------------------------
    def start(self) -> None:
        if self._batcher is None or self._batcher.done():
            self._batcher = asyncio.get_running_loop().create_task(self._batch_forever())

    async def stop(self) -> None:
        for session in list(self.sessions.values()):
            await self.close(session)
        if self._batcher is not None:
            self._batcher.cancel()
            await asyncio.gather(self._batcher, return_exceptions=True)
        self.worker.shutdown(wait=True)

    async def _batch_forever(self) -> None:
        while True:
            await self.wake.wait()
            self.wake.clear()
            while await self.tick():
                pass

    async def tick(self) -> bool:
        """Hand every session its new speech, make one chunk for every ready stream in one
        batched step, and flush the streams whose speech ended. Returns whether work was done."""
        sessions = [s for s in self.sessions.values() if not s.finished]
        feeds = [(s, s._take_pending()) for s in sessions]
        ending = [s for s in sessions if s.ending]
        start = time.perf_counter()
        made, flushed = await self._run(self._tick_on_worker, feeds, ending)
        if not made and not flushed:
            return False
        self.ticks += 1
        elapsed_ms = 1000 * (time.perf_counter() - start)
        self.tick_ms.append(elapsed_ms)
        for session, frames in made + flushed:
            if not session.closed and len(frames):
                session._deliver(frames, elapsed_ms)
        for session, _ in flushed:
            session.finished = True
            session.new_chunk.set()
        return True

    def _tick_on_worker(self, feeds, ending):
        for session, pcm in feeds:
            if pcm is not None and not session.closed:
                session.stream.feed(pcm)
        ready = [s for s, _ in feeds if not s.closed and s.stream.ready]
        made = list(zip(ready, self.gen.step([s.stream for s in ready]))) if ready else []
        # A stream whose speech ended is flushed once nothing of its speech is left to step on.
        flushed = [(s, s.stream.flush()) for s in ending
                   if not s.closed and not s.stream.ready and not s.stream.finished]
        return made, flushed

    # ---- figures --------------------------------------------------------------------------
    @property
    def stats(self) -> dict:
        return {"open_streams": len(self.sessions), "capacity": self.capacity, "ticks": self.ticks,
                **median_worst("tick_ms", self.tick_ms), "resolution": self.resolution, "fps": self.fps}
