"""``rest-fast prepare``: raw videos of people in, face-cropped training clips out.

For every video under a folder (HDTF, MEAD or one's own recordings: any length, any size, the face
anywhere, cuts, silence), :func:`prepare_folder`

1. decodes it with PyAV at the model's frame rate (the latest source frame at or before each
   output time, as :class:`~reference.data.folder.FolderDataset` reads) and its speech as 16 kHz
   mono;
2. finds faces in every frame (:mod:`reference.data.faces`: dlib's detector, the box its 68
   landmarks give) and follows the largest through the shot: each frame's face is the one that
   overlaps the last one most;
3. cuts where the shot changes (the frame's colour histogram jumps) or the face is lost for longer
   than ``max_gap_seconds``; drops, with a reason, stretches with no face, with a second face (who
   speaks is unknown), with a face too small to fill the output, and pieces shorter than
   ``min_seconds``;
4. crops a square about the head: ``margin`` times the face's size, its centre ``lift`` face
   sizes above the face's, both smoothed over time with a Gaussian of ``smooth_seconds`` so the
   crop holds still where the head does (the detector's jitter is not in the clip), and resamples
   it to ``resolution`` pixels;
5. writes each segment as ``OUT/<source path>.<k>.mp4`` (H.264 + AAC 16 kHz mono, atomically),
   and appends to ``OUT/manifest.jsonl`` one JSON line per segment (source, time span in seconds
   of the source, ``crop``: the crop box (left, top, side) in every frame, ``face``: the face the
   detector found in every frame as (centre x, centre y, size), null where a short miss was
   bridged, and ``face_size``: its median; all in source pixels), per dropped stretch and per
   skipped file (with the reason), and a ``done`` line per finished file.

A file's lines are appended only once all its segments are written, so a run that is stopped
resumes where it was: a file with a ``done`` line (of the same size and modification time) is
not done again, and one without is done again from the start. A file that cannot be used (corrupt,
no video, no audio or silent, no face) gets a ``skipped`` line; nothing stops the run.

``OUT`` is then a folder :class:`~reference.data.folder.FolderDataset` reads: ``rest-fast train
--data OUT`` and ``rest-fast eval --data OUT``.
"""
from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import traceback
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from ..media import InputError, Mp4Writer, _import_av, load_audio, write_text_atomic
from .faces import FaceDetector, iou
from .folder import VIDEO_EXTENSIONS

MANIFEST = "manifest.jsonl"
SAMPLE_RATE = 16000


@dataclass(frozen=True)
class PrepareOptions:
    resolution: int = 256          # output pixels (square): 256 the cpu preset's, 512 the paper's
    fps: int = 25                  # output frame rate (the model's)
    min_seconds: float = 4.0       # shorter usable pieces are dropped: the cpu preset trains on
                                   # windows of 1 + 4 chunks (3.9 s), the paper on 121 frames (4.8 s)
    max_gap_seconds: float = 0.2   # a face missing for longer ends the segment
    margin: float = 1.9            # crop side over the face's size (brow to chin): the whole head
    lift: float = 0.15             # crop centre above the face's centre, in face sizes (the hair)
    smooth_seconds: float = 0.2    # Gaussian sigma of the crop's path over time
    cut_threshold: float = 0.35    # histogram change between frames that counts as a cut, 0-1
    second_face: float = 0.5       # another face this large (over the speaker's) drops the frame
    min_face_fill: float = 0.5     # the crop must be at least this fraction of the output size
    silence_dbfs: float = -50.0    # a track never louder than this (1 s RMS) is silent
    detector: str = "dlib"
    detect_side: int = 640         # faces are searched at this longer side (smaller is faster)

    def check(self) -> "PrepareOptions":
        if self.resolution < 16 or self.resolution % 2:
            raise InputError(f"--resolution must be an even number of pixels >= 16 (256 or 512 for "
                             f"the presets), got {self.resolution}")
        if self.fps <= 0 or self.min_seconds <= 0:
            raise InputError(f"--fps and --min-seconds must be positive, got {self.fps} and "
                             f"{self.min_seconds}")
        return self


# ----------------------------------------------------------------------------------- one file

@dataclass
class _Frame:
    """What the first pass keeps of one output frame (a few hundred bytes: an hour of video is
    ~20 MB): the faces' boxes (landmarks dropped) and whether a new shot starts at it."""
    time: float
    faces: list
    cut: bool


def _decoded_frames(av, path: Path, fps: int):
    """(output time, source frame) at ``fps``: at each output time, the latest source frame at or
    before it; the last source frame lasts one source frame period. Times count from the video
    stream's first frame."""
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        period = 1 / float(stream.average_rate or stream.guessed_rate or fps)
        start, k, prev, t = None, 0, None, 0.0
        for n, frame in enumerate(container.decode(stream)):
            t = frame.time if frame.time is not None else n * period
            if start is None:
                start = t
            while prev is not None and start + k / fps < t - 1e-4:
                yield k / fps, prev
                k += 1
            prev = frame
        while prev is not None and start + k / fps < t + period - 1e-4:
            yield k / fps, prev
            k += 1


def _histogram(cv2, rgb: np.ndarray) -> np.ndarray:
    small = cv2.resize(rgb, (64, 36), interpolation=cv2.INTER_AREA)
    hist = cv2.calcHist([cv2.cvtColor(small, cv2.COLOR_RGB2HSV)], [0, 1, 2], None,
                        [12, 4, 4], [0, 180, 0, 256, 0, 256]).ravel()
    return hist / max(hist.sum(), 1.0)


def _scan(av, cv2, path: Path, detector: FaceDetector, opts: PrepareOptions, tick=None):
    """First pass: every output frame's faces (the box the landmarks give) and whether the shot
    changes at it (half the L1 distance of consecutive colour histograms, 0-1, over
    ``cut_threshold``); and the frames' (width, height). ``tick()`` after each frame."""
    frames, previous, size = [], None, (0, 0)
    for t, frame in _decoded_frames(av, path, opts.fps):
        rgb = frame.to_ndarray(format="rgb24")
        size = (rgb.shape[1], rgb.shape[0])
        histogram = _histogram(cv2, rgb)
        cut = previous is not None and 0.5 * np.abs(histogram - previous).sum() > opts.cut_threshold
        faces = [dataclasses.replace(f, landmarks=None) for f in detector.detect(rgb)]
        frames.append(_Frame(t, faces, bool(cut)))
        previous = histogram
        if tick is not None:
            tick()
    return frames, size


def _track(frames: list[_Frame], opts: PrepareOptions):
    """Per frame: the speaker's box (or None), and a label for frames that cannot be used.

    Returns (boxes, labels, cuts): ``labels[i]`` is None for a usable frame or the reason it is
    not; ``cuts`` the frame indices where a new shot starts."""
    n = len(frames)
    boxes, labels, cuts = [None] * n, [None] * n, []
    gap = max(1, round(opts.max_gap_seconds * opts.fps))
    last, missed = None, 0
    for i, f in enumerate(frames):
        if f.cut:
            cuts.append(i)
            last, missed = None, 0
        faces = f.faces
        if last is not None:
            match = max(faces, key=lambda face: iou(face.box, last), default=None)
            if match is not None and iou(match.box, last) >= 0.3:
                boxes[i], last, missed = match, match.box, 0
            else:
                missed += 1
                if missed > gap:
                    last = None
        if last is None and faces:
            boxes[i], last, missed = faces[0], faces[0].box, 0   # a new track: the largest face
        if boxes[i] is not None:
            size = boxes[i].size
            if any(g is not boxes[i] and g.size >= opts.second_face * size for g in faces):
                labels[i] = "a second face is in the frame (who speaks is unknown)"
            elif opts.margin * size < opts.min_face_fill * opts.resolution:
                # One wording for every such frame (no size in it), so that a stretch is one span.
                labels[i] = (f"the face is too small (its crop would be upscaled more than "
                             f"{1 / opts.min_face_fill:g}x to {opts.resolution} px)")
    # Short misses inside a track are bridged (the crop takes the path between its neighbours,
    # the frames share the label of the one before); longer ones, and stretches where no face
    # was ever found, are "no face".
    i = 0
    while i < n:
        if boxes[i] is not None:
            i += 1
            continue
        j = i
        while j < n and boxes[j] is None:
            j += 1
        bridged = 0 < i and j < n and j - i <= gap and not any(i <= c <= j for c in cuts)
        for k in range(i, j):
            labels[k] = labels[i - 1] if bridged else "no face"
        i = j
    return boxes, labels, cuts


def _spans(labels: list, cuts: list, opts: PrepareOptions):
    """Usable segments [a, b): runs of usable frames within one shot, at least ``min_seconds``
    long; and the dropped spans (a, b, reason), neighbours with the same reason merged."""
    keep, drop = [], []
    shot_starts, n, i = set(cuts), len(labels), 0
    while i < n:
        j = i + 1
        while j < n and j not in shot_starts and labels[j] == labels[i]:
            j += 1
        reason = labels[i]
        if reason is None and (j - i) / opts.fps >= opts.min_seconds:
            keep.append((i, j))
        else:
            if reason is None:
                reason = (f"too short ({(j - i) / opts.fps:.2f} s of one face in one shot, under "
                          f"--min-seconds {opts.min_seconds:g})")
            if drop and drop[-1][1] == i and drop[-1][2] == reason:
                drop[-1] = (drop[-1][0], j, reason)
            else:
                drop.append((i, j, reason))
        i = j
    return keep, drop


def _smooth(values: np.ndarray, sigma: float) -> np.ndarray:
    """Zero-phase Gaussian smoothing along time (edges reflected)."""
    if sigma <= 0 or len(values) < 2:
        return values
    radius = int(3 * sigma)
    kernel = np.exp(-0.5 * (np.arange(-radius, radius + 1) / sigma) ** 2)
    kernel /= kernel.sum()
    padded = np.pad(values, ((radius, radius), (0, 0)), mode="reflect" if len(values) > radius else "edge")
    return np.stack([np.convolve(padded[:, c], kernel, mode="valid") for c in range(values.shape[1])], 1)


def crop_track(faces: list, width: int, height: int, opts: PrepareOptions) -> np.ndarray:
    """The crop (left, top, side) of each frame of a segment: ``margin`` face sizes, ``lift``
    above the face, smoothed over time, kept inside the frame where it fits; frames without a
    face (bridged misses) take the path between their neighbours."""
    known = [i for i, f in enumerate(faces) if f is not None]
    track = np.array([[*faces[i].centre, faces[i].size] for i in known], np.float64)
    steps = np.arange(len(faces))
    track = np.stack([np.interp(steps, known, track[:, c]) for c in range(3)], 1)
    track = _smooth(track, opts.smooth_seconds * opts.fps)
    side = np.minimum(opts.margin * track[:, 2], min(width, height))
    cx, cy = track[:, 0], track[:, 1] - opts.lift * track[:, 2]
    left = np.clip(cx - side / 2, 0, width - side)
    top = np.clip(cy - side / 2, 0, height - side)
    return np.stack([left, top, side], 1)


def _crop(cv2, rgb: np.ndarray, box, size: int) -> np.ndarray:
    """The square ``box`` (left, top, side; sub-pixel) of ``rgb`` resampled to ``size`` pixels.
    Large reductions first halve the frame (area averaging), so the warp does not alias."""
    left, top, side = box
    scale = size / side
    while scale < 0.5:
        rgb = cv2.resize(rgb, (rgb.shape[1] // 2, rgb.shape[0] // 2), interpolation=cv2.INTER_AREA)
        left, top, side, scale = left / 2, top / 2, side / 2, scale * 2
    m = np.array([[scale, 0, -left * scale], [0, scale, -top * scale]], np.float64)
    return cv2.warpAffine(rgb, m, (size, size), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)


def _silent(audio: np.ndarray, opts: PrepareOptions) -> bool:
    """Whether no second of the track (RMS) is louder than ``silence_dbfs``."""
    seconds = max(1, len(audio) // SAMPLE_RATE)
    pieces = np.array_split(audio, seconds)
    rms = max(float(np.sqrt(np.mean(np.square(p)))) for p in pieces)
    return rms < 10 ** (opts.silence_dbfs / 20)


def _probe(av, path: Path) -> tuple[str | None, float]:
    """(the reason the file cannot be used or None, audio start minus video start in seconds)."""
    try:
        with av.open(str(path)) as container:
            if not container.streams.video:
                return ("it has no video stream (audio only)" if container.streams.audio else
                        "it holds no video or audio (an empty, 0-second file)"), 0.0
            v = container.streams.video[0]
            if container.format.name.endswith("_pipe") or container.format.name == "image2":
                return f"it is a still image ({v.codec_context.name}), not a video", 0.0
            if not container.streams.audio:
                return "it has no audio track (the speech that drives the face)", 0.0
            a = container.streams.audio[0]
            start = lambda s: float(s.start_time * s.time_base) if s.start_time is not None else 0.0  # noqa: E731
            return None, start(a) - start(v)
    except (av.FFmpegError, OSError, ValueError) as e:
        return f"it could not be opened as a video ({e})", 0.0


def prepare_file(path: Path, name: str, out: Path, opts: PrepareOptions, detector: FaceDetector,
                 tick=None) -> list[dict]:
    """Prepare one video: write its segments under ``out`` and return its manifest lines (its
    segments, dropped spans, or the reason it is skipped), without the ``done`` line. ``tick()``
    is called as each frame is searched (a progress bar's update)."""
    av = _import_av("read videos")
    import cv2
    reason, audio_offset = _probe(av, path)
    if reason:
        return [{"kind": "skipped", "source": name, "reason": reason}]
    try:
        audio = load_audio(path, SAMPLE_RATE)
    except InputError as e:
        return [{"kind": "skipped", "source": name, "reason": f"its audio could not be decoded ({e})"}]
    if _silent(audio, opts):
        return [{"kind": "skipped", "source": name,
                 "reason": f"it is silent (never louder than {opts.silence_dbfs:g} dBFS)"}]
    try:
        frames, (width, height) = _scan(av, cv2, path, detector, opts, tick)
    except (av.FFmpegError, OSError, ValueError) as e:
        return [{"kind": "skipped", "source": name, "reason": f"its video could not be decoded ({e})"}]
    if not frames:
        return [{"kind": "skipped", "source": name, "reason": "it holds no video frames (a 0-second video)"}]
    boxes, labels, cuts = _track(frames, opts)
    keep, drop = _spans(labels, cuts, opts)
    t = lambda i: round(i / opts.fps, 3)  # noqa: E731
    lines = [{"kind": "dropped", "source": name, "start": t(a), "end": t(b), "reason": why}
             for a, b, why in drop]
    if not keep:
        reasons = sorted({why for _, _, why in drop})
        return lines + [{"kind": "skipped", "source": name,
                         "reason": "no usable stretch of one face (" + "; ".join(reasons) + ")"}]
    crops = [crop_track(boxes[a:b], width, height, opts) for a, b in keep]
    segments, speeches = [], []
    for k, ((a, b), crop) in enumerate(zip(keep, crops)):
        file = f"{name}.{k:03d}.mp4"
        first = max(0, round((a / opts.fps - audio_offset) * SAMPLE_RATE))
        n = round((b - a) / opts.fps * SAMPLE_RATE)
        speech = audio[first:first + n]
        speeches.append(np.pad(speech, (0, n - len(speech))))   # silence past the track's end
        segments.append({"kind": "segment", "source": name, "file": file, "start": t(a), "end": t(b),
                         "frames": b - a, "fps": opts.fps, "resolution": opts.resolution,
                         "face_size": round(float(np.median([boxes[i].size for i in range(a, b)
                                                             if boxes[i] is not None])), 1),
                         "face": [None if f is None else [round(v, 1) for v in (*f.centre, f.size)]
                                  for f in boxes[a:b]],
                         "crop": np.round(crop, 1).tolist()})
    _write_segments(av, cv2, path, out, [s["file"] for s in segments], keep, crops, speeches, opts)
    return segments + lines


def _write_segments(av, cv2, path, out: Path, files, keep, crops, speeches, opts) -> None:
    """Second pass: decode again and write each segment's crops as they come (no frame is held)."""
    with contextlib.closing(_decoded_frames(av, path, opts.fps)) as decoded:
        frames = enumerate(frame for _, frame in decoded)
        for file, (a, b), crop, speech in zip(files, keep, crops, speeches):
            with Mp4Writer(out / file, opts.fps, opts.resolution, opts.resolution, audio=speech,
                           sample_rate=SAMPLE_RATE) as writer:
                for i, frame in frames:
                    if i >= a:
                        writer.write(_crop(cv2, frame.to_ndarray(format="rgb24"), crop[i - a],
                                           opts.resolution)[None])
                    if i == b - 1:
                        break


# ----------------------------------------------------------------------------------- a folder

_DETECTORS: dict = {}   # this process's detector for the options (the landmark model loads in ~1 s)


def _detector(opts: PrepareOptions) -> FaceDetector:
    if opts not in _DETECTORS:
        _DETECTORS.clear()
        _DETECTORS[opts] = FaceDetector(opts.detector, max_side=opts.detect_side)
    return _DETECTORS[opts]


def _work(job, tick=None) -> tuple[str, list[dict]]:
    """One file in a worker process (or in this one): its manifest lines; never raises for a bad
    file, whose failure becomes a ``skipped`` line."""
    path, name, out, opts = job
    detector = _detector(opts)
    try:
        return name, prepare_file(Path(path), name, Path(out), opts, detector, tick)
    except Exception as e:   # noqa: BLE001 - one file's failure, whatever it is, must not stop the run
        detail = traceback.format_exception_only(type(e), e)[-1].strip()
        return name, [{"kind": "skipped", "source": name, "reason": f"it failed: {detail}"}]


def _sources(root: Path, out: Path) -> list[tuple[Path, str]]:
    files = []
    for p in sorted(root.rglob("*")):
        if not p.is_file() or any(part.startswith(".") for part in p.relative_to(root).parts):
            continue
        if out.resolve() in p.resolve().parents:   # an --out inside RAW_DIR: our own clips
            continue
        if p.suffix.lower() in VIDEO_EXTENSIONS:
            files.append((p, p.relative_to(root).as_posix()))
    return files


def read_manifest(out) -> list[dict]:
    """The manifest's lines (a line cut short by a crash is ignored)."""
    path = Path(out) / MANIFEST
    if not path.is_file():
        return []
    lines = []
    for text in path.read_text().splitlines():
        try:
            lines.append(json.loads(text))
        except json.JSONDecodeError:
            continue
    return lines


def _stamp(path: Path) -> dict:
    st = path.stat()
    return {"size": st.st_size, "mtime_ns": st.st_mtime_ns}


def prepare_folder(raw, out, opts: PrepareOptions = PrepareOptions(), workers: int = 1,
                   progress: bool = True) -> dict:
    """Prepare every video under ``raw`` into ``out`` (see the module doc); returns counts:
    files done now, files already done (resumed), segments and seconds written, dropped spans and
    skipped files."""
    raw, out = Path(raw), Path(out)
    opts.check()
    if not raw.is_dir():
        raise InputError(f"raw video folder '{raw}' does not exist or is not a directory")
    _detector(opts)   # fail early where the extra is missing (and load it once for one worker)
    out.mkdir(parents=True, exist_ok=True)
    sources = _sources(raw, out)
    old = read_manifest(out)
    done = {l["source"]: l for l in old if l.get("kind") == "done"}
    todo = []
    for path, name in sources:
        d = done.get(name)
        if d is not None and d.get("stamp") == _stamp(path) and d.get("options") == asdict(opts):
            continue
        todo.append((path, name))
    redo = {name for _, name in todo}
    kept = [l for l in old if l.get("source") not in redo]
    for l in old:   # a file prepared before (changed since, or unfinished): its old segments go
        if l.get("source") in redo and l.get("kind") == "segment":
            (out / l["file"]).unlink(missing_ok=True)
    write_text_atomic(out / MANIFEST, "".join(json.dumps(l) + "\n" for l in kept))
    counts = {"files": len(todo), "resumed": len(sources) - len(todo), "segments": 0, "seconds": 0.0,
              "dropped": 0, "skipped": 0}
    jobs = [(str(p), name, str(out), opts) for p, name in todo]
    from tqdm import tqdm
    bar = tqdm(total=len(sources), initial=counts["resumed"], unit="file", desc="prepare",
               disable=not progress, dynamic_ncols=True)
    # Beneath it, one process's frames: a long video shows progress before its file is done.
    frames_bar = tqdm(unit="frame", position=1, leave=False, disable=not progress, dynamic_ncols=True)
    stamps = {name: _stamp(p) for p, name in todo}
    try:
        with open(out / MANIFEST, "a") as manifest:
            for name, lines in _map(jobs, workers, frames_bar):
                lines.append({"kind": "done", "source": name, "stamp": stamps[name], "options": asdict(opts)})
                manifest.write("".join(json.dumps(l) + "\n" for l in lines))
                manifest.flush()
                os.fsync(manifest.fileno())
                for l in lines:
                    if l["kind"] == "segment":
                        counts["segments"] += 1
                        counts["seconds"] += l["frames"] / l["fps"]
                    elif l["kind"] in ("dropped", "skipped"):
                        counts[l["kind"]] += 1
                bar.update(1)
                bar.set_postfix(segments=counts["segments"], dropped=counts["dropped"],
                                skipped=counts["skipped"])
    finally:
        frames_bar.close()
        bar.close()
    return counts


def _map(jobs, workers: int, frames_bar):
    """Results of :func:`_work` over ``jobs``, as each finishes: in this process with one worker
    (``frames_bar`` counting each file's frames), else in ``workers`` processes (spawned: no
    state shared with the caller's threads; the bar counts files only)."""
    if workers <= 1 or len(jobs) <= 1:
        for job in jobs:
            frames_bar.reset()
            frames_bar.set_description(f"{job[1]}: faces")
            yield _work(job, frames_bar.update)
        return
    import concurrent.futures
    import multiprocessing
    with concurrent.futures.ProcessPoolExecutor(min(workers, len(jobs)),
                                                mp_context=multiprocessing.get_context("spawn")) as pool:
        futures = [pool.submit(_work, job) for job in jobs]
        for future in concurrent.futures.as_completed(futures):
            yield future.result()
