"""Real talking-head clips from a folder of videos, as users have them.

Point :class:`FolderDataset` at a directory (searched recursively; dot-named files and folders
left out) of face-cropped videos with a speech track (mp4/mov/mkv/webm/avi): what ``rest-fast
prepare`` (:mod:`reference.data.prepare`) makes from raw videos. Every usable file is cut into
non-overlapping windows of ``1 + num_chunks * frames_per_chunk`` frames at ``cfg.fps``: the
window's first frame is the portrait, the rest are the frames to generate, and the audio starts
at the time of ``frames[0]``.

Files are only probed on construction (PyAV reads their headers); a window decodes just what it
needs: it seeks to the keyframe before its start and stops after its last frame. A file that
cannot be used (not a video, no audio track, too short) is skipped with a warning, so one bad
download does not stop a training run; ``skipped`` lists them with the reason.
"""
from __future__ import annotations

import bisect
import math
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..config import RestConfig
from ..media import InputError, _import_av, _resample, load_image
from . import Clip

VIDEO_EXTENSIONS = (".mp4", ".mov", ".mkv", ".webm", ".avi")
_EPS = 1e-3            # seconds: timestamps this close count as equal (ms time bases round)
_AUDIO_MARGIN = 0.1    # seconds decoded either side of a window, so resampling has context


def _hidden(path: Path, root: Path) -> bool:
    """A file under a dot-named folder or dot-named itself: an mp4 being written (Mp4Writer's
    temporary file) or one a tool keeps aside."""
    return any(part.startswith(".") for part in path.relative_to(root).parts)


@dataclass(frozen=True)
class _Source:
    path: Path
    name: str          # path relative to the root, posix style
    start: float       # timestamp (s) of the first video frame: the clip's time origin
    frames: int        # frames available at the output rate
    windows: int


class FolderDataset:
    """Windows of ``1 + num_chunks * cfg.frames_per_chunk`` frames cut from a folder of videos.

    ``ds[i]`` is a :class:`~reference.data.Clip` with ``reference`` the window's first frame,
    ``frames`` the following ``num_chunks * frames_per_chunk`` frames (centre-cropped to a square,
    resized to ``cfg.resolution``), ``audio`` mono float32 at ``cfg.speech.sample_rate`` starting
    at the time of ``frames[0]`` (zero-padded past the end of the track) and ``name``
    ``"<relative path>@<first frame>"``. Videos at another frame rate are resampled in time by
    showing, at each output time, the latest source frame at or before it.
    """

    def __init__(self, root, cfg: RestConfig, num_chunks: int = 2):
        if int(num_chunks) < 1:
            raise InputError(f"num_chunks must be at least 1, got {num_chunks}")
        self.root, self.cfg, self.num_chunks = Path(root), cfg, int(num_chunks)
        self.window = 1 + self.num_chunks * cfg.frames_per_chunk
        if not self.root.is_dir():
            raise InputError(f"clip folder '{self.root}' does not exist or is not a directory: "
                             "pass a folder of mp4 talking-head clips")
        self._av  # fail early if PyAV is missing
        self.skipped: list[tuple[Path, str]] = []
        self.sources: list[_Source] = []
        files = sorted(p for p in self.root.rglob("*")
                       if p.suffix.lower() in VIDEO_EXTENSIONS and p.is_file() and not _hidden(p, self.root))
        for path in files:
            source = self._probe(path)
            if isinstance(source, str):
                self.skipped.append((path, source))
                warnings.warn(f"FolderDataset: skipping '{path}': {source}", stacklevel=2)
            else:
                self.sources.append(source)
        if not self.sources:
            seconds = self.window / cfg.fps
            found = f"none of its {len(files)} video files is usable" if files else \
                f"it holds no {'/'.join(e[1:] for e in VIDEO_EXTENSIONS)} files"
            raise InputError(
                f"clip folder '{self.root}' has no usable clips ({found}): expected mp4 clips "
                f"cropped to the face, with an audio track, at least {seconds:.2f} s long "
                f"({self.window} frames at {cfg.fps} fps)")
        self._ends = np.cumsum([s.windows for s in self.sources]).tolist()
        self._bad: set[int] = set()   # windows found undecodable (skipped from then on)

    @property
    def _av(self):  # looked up, not stored: a dataset is pickled into DataLoader workers
        return _import_av("read video clips")

    # ------------------------------------------------------------------------------- probing

    def _probe(self, path: Path) -> _Source | str:
        """A usable source, or the reason the file is skipped."""
        av = self._av
        try:
            with av.open(str(path)) as container:
                if not container.streams.video:
                    return "it has no video stream"
                if not container.streams.audio:
                    return "it has no audio track (the speech that drives the face)"
                stream = container.streams.video[0]
                start = float(stream.start_time * stream.time_base) \
                    if stream.start_time is not None else 0.0
                span = self._video_span(container, stream)
        except (av.FFmpegError, OSError, ValueError) as e:
            return f"it could not be opened as a video ({e})"
        if span is None:
            return "it holds no video frames"
        frames = math.floor((span + _EPS) * self.cfg.fps) + 1
        if frames < self.window:
            return (f"it is too short: {frames} frames at {self.cfg.fps} fps, a clip needs at "
                    f"least {self.window} (1 + {self.num_chunks} x {self.cfg.frames_per_chunk})")
        return _Source(path, path.relative_to(self.root).as_posix(), start, frames,
                       frames // self.window)

    def _video_span(self, container, stream) -> float | None:
        """Seconds from the first video frame to the last, from the headers where they say."""
        fps = float(stream.average_rate or stream.guessed_rate or 0)
        if stream.frames and fps:
            return (stream.frames - 1) / fps
        duration = stream.duration * stream.time_base if stream.duration else \
            (container.duration / self._av.time_base if container.duration else 0)
        if duration and fps:
            return float(duration) - 1 / fps
        pts = [p.pts for p in container.demux(stream) if p.pts is not None]  # no decoding
        return float((max(pts) - min(pts)) * stream.time_base) if pts else None

    # ------------------------------------------------------------------------------- windows

    def __len__(self) -> int:
        return self._ends[-1]

    def first_window(self, source: int) -> int:
        """The index of the first window of ``sources[source]``."""
        return self._ends[source - 1] if source else 0

    def __getitem__(self, index: int) -> Clip:
        """Window ``index``; one that cannot be decoded (a damaged or truncated file, whose
        headers looked fine when probed) is skipped with a warning and the next usable window
        is returned in its place (its ``name`` says which), so a bad file does not stop a run."""
        index = int(index)
        if index < 0:
            index += len(self)
        if not 0 <= index < len(self):
            raise IndexError(f"window {index} out of range for {len(self)} windows")
        for j in (i % len(self) for i in range(index, index + len(self))):
            if j in self._bad:
                continue
            try:
                return self._window(j)
            except InputError as e:
                self._bad.add(j)
                self.skipped.append((self.sources[bisect.bisect_right(self._ends, j)].path, str(e)))
                warnings.warn(f"FolderDataset: skipping a window: {e}", stacklevel=2)
        raise InputError(f"no window of clip folder '{self.root}' could be decoded: "
                         "re-encode the clips (see the warnings)")

    def _window(self, index: int) -> Clip:
        k = bisect.bisect_right(self._ends, index)
        source = self.sources[k]
        first = (index - (self._ends[k - 1] if k else 0)) * self.window
        t0 = source.start + first / self.cfg.fps  # time of the reference frame
        av = self._av
        try:
            with av.open(str(source.path)) as container:
                images = self._read_frames(container, t0)
                audio = self._read_audio(container, t0 + 1 / self.cfg.fps)
        except (av.FFmpegError, OSError, ValueError) as e:
            raise InputError(f"video file '{source.path}' could not be decoded at frame {first} "
                             f"({e}): re-encode it or remove it from the folder") from None
        if len(images) < self.window:
            raise InputError(f"video file '{source.path}' holds no decodable frames at frame "
                             f"{first}: re-encode it or remove it from the folder")
        return Clip(reference=images[0], frames=np.stack(images[1:]), audio=audio,
                    name=f"{source.name}@{first}")

    def _read_frames(self, container, t0: float) -> list[np.ndarray]:
        """``self.window`` frames at ``cfg.fps`` from time ``t0``: at each output time, the latest
        source frame at or before it (the first frame decoded if none is)."""
        stream = container.streams.video[0]
        times = t0 + np.arange(self.window) / self.cfg.fps + _EPS
        container.seek(max(0, round(t0 / stream.time_base)), stream=stream, backward=True)
        out: list[np.ndarray] = []
        prev = cached = None

        def image(frame) -> np.ndarray:  # each source frame is converted once, however often shown
            nonlocal cached
            if cached is None or cached[0] is not frame:
                cached = (frame, load_image(frame.to_ndarray(format="rgb24"), self.cfg.resolution))
            return cached[1]

        for frame in container.decode(stream):
            t = frame.time if frame.time is not None else times[len(out)]
            while len(out) < self.window and t > times[len(out)]:
                out.append(image(prev if prev is not None else frame))
            if len(out) == self.window:
                return out
            prev = frame
        # The stream ended: the last source frame stays on screen for one source frame period.
        # A window reaching further is a truncated file or a header that overstated the video
        # (a container whose duration is its longer audio track's); padding it would show a
        # frozen face over running speech.
        period = 1 / float(stream.average_rate or stream.guessed_rate or self.cfg.fps)
        if prev is not None and prev.time is not None and \
                times[-1] - _EPS - prev.time > max(period, 1 / self.cfg.fps) + _EPS:
            raise InputError(f"its video stream ends at {prev.time:.2f} s, before the window's "
                             f"end at {times[-1] - _EPS:.2f} s")
        while prev is not None and len(out) < self.window:
            out.append(image(prev))
        return out

    def _read_audio(self, container, t0: float) -> np.ndarray:
        """Mono audio at the model's rate from time ``t0``, exactly ``frames * samples_per_frame``
        samples, zero-padded where the track has none."""
        av, cfg = self._av, self.cfg
        rate, wanted = cfg.speech.sample_rate, self.window - 1
        n = wanted * cfg.samples_per_frame
        t_end = t0 + wanted / cfg.fps + _AUDIO_MARGIN
        stream = container.streams.audio[0]
        seek = max(0.0, t0 - _AUDIO_MARGIN)
        container.seek(round(seek / stream.time_base), stream=stream, backward=True)
        to_float = av.AudioResampler(format="fltp")  # sample format only; channels averaged below
        chunks, source_rate, seg_start = [], rate, None
        for frame in container.decode(stream):
            if seg_start is None:
                seg_start = frame.time if frame.time is not None else seek
            for out in to_float.resample(frame):
                chunks.append(out.to_ndarray().mean(axis=0))
                source_rate = out.sample_rate
            if frame.time is not None and frame.time > t_end:
                break
        if not chunks:  # the track ended before this window
            return np.zeros(n, np.float32)
        segment = _resample(np.concatenate(chunks).astype(np.float32), source_rate, rate)
        offset = round((t0 - seg_start) * rate)
        if offset < 0:  # the track starts after t0
            segment, offset = np.pad(segment, (-offset, 0)), 0
        segment = segment[offset:offset + n]
        return np.pad(segment, (0, n - segment.size)).astype(np.float32)
