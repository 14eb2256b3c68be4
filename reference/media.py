"""Media I/O: load a portrait and a voice, write an H.264 + AAC mp4 atomically.

PyAV (``av``) and soundfile are imported inside the functions that need them, so this module (and
the package) imports on a machine that has neither; only the function that needs one fails, with
an :class:`InputError` that says what to install.
"""
from __future__ import annotations

import fractions
import itertools
import os
import tempfile
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

_IMAGE_HINT = "use a png/jpeg/bmp/webp/tiff image"
_AUDIO_HINT = "use a wav/flac/mp3/m4a/ogg file"
_MAX_CHANNELS = 8


class InputError(ValueError):
    """Bad user input (a file, an array or a setting); the message says what to do about it."""


def _import_av(purpose: str, alternative: str = ""):
    try:
        import av
    except ImportError:
        raise InputError(f"PyAV is needed to {purpose}: pip install av{alternative}") from None
    return av


def _existing_file(src, kind: str) -> Path:
    path = Path(src)
    if not path.is_file():
        raise InputError(f"{kind} file '{path}' does not exist: check the path")
    return path


# ----------------------------------------------------------------------------------- images

def load_image(src, size: int) -> np.ndarray:
    """Load a portrait as a ``(size, size, 3)`` uint8 RGB array.

    ``src`` is a path (anything PyAV decodes: png/jpeg/bmp/webp/gif/tiff, any mode, EXIF
    rotation applied), the bytes of such a file, a PIL image (duck-typed by ``.convert``) or an array ``(H, W)``,
    ``(H, W, 1|3|4)`` of uint8, uint16 or float in [0, 1]. Transparency is composited over white;
    a non-square image is centre-cropped to its largest square, then resized.
    """
    if int(size) <= 0:
        raise InputError(f"image size must be a positive number of pixels, got {size}")
    rgb = _to_rgb(_as_float_image(_image_source(src)))
    return _resize_square(_centre_crop(rgb), int(size))


def _image_source(src) -> np.ndarray:
    if isinstance(src, (str, os.PathLike)):
        return _decode_image_file(_existing_file(src, "image"))
    if isinstance(src, (bytes, bytearray, memoryview)):   # an image file's bytes (an upload)
        import io
        return _decode_image_file(io.BytesIO(bytes(src)), name="the image bytes")
    if hasattr(src, "convert"):  # a PIL image; RGBA covers every PIL mode (P, L, LA, CMYK, I;16...)
        return np.asarray(src.convert("RGBA"))
    if isinstance(src, np.ndarray):
        return src
    raise InputError(f"cannot load an image from a {type(src).__name__}: pass a path, a PIL image "
                     "or a numpy array")


def _decode_image_file(path, name: str | None = None) -> np.ndarray:
    """First video frame of ``path`` (or a file object) as uint8 RGBA; FFmpeg converts every
    pixel format for us."""
    av = _import_av("decode image files")
    what = name or f"image file '{path}'"
    try:
        with av.open(path if name else str(path)) as container:
            if not container.streams.video:
                raise InputError(f"{what} holds no image: {_IMAGE_HINT}")
            frame = next(container.decode(video=0), None)
            if frame is None:
                raise InputError(f"{what} holds no decodable frame: {_IMAGE_HINT}")
            rgba = frame.to_ndarray(format="rgba")
            rotation = getattr(frame, "rotation", 0) or 0  # EXIF orientation (phone photos)
    except (av.FFmpegError, OSError, ValueError) as e:
        raise InputError(f"{what} could not be decoded ({e}): {_IMAGE_HINT}") from None
    # FFmpeg's angle is counter-clockwise, as is np.rot90's.
    return np.ascontiguousarray(np.rot90(rgba, k=round(rotation / 90) % 4))


def _as_float_image(arr: np.ndarray) -> np.ndarray:
    """Validate an image array; return float32 ``(H, W, C)`` in [0, 1] with C in 1, 3, 4."""
    arr = np.asarray(arr)
    if arr.ndim == 2:
        arr = arr[:, :, None]
    if arr.ndim != 3 or arr.shape[2] not in (1, 3, 4):
        raise InputError(f"image array has shape {arr.shape}: expected (H, W), (H, W, 1), (H, W, 3) "
                         "or (H, W, 4)")
    if arr.size == 0:
        raise InputError(f"image array is empty (shape {arr.shape}): pass a picture with pixels")
    if arr.dtype == np.uint8:
        return arr.astype(np.float32) / 255.0
    if arr.dtype == np.uint16:
        return arr.astype(np.float32) / 65535.0
    if not np.issubdtype(arr.dtype, np.floating):
        raise InputError(f"image array has dtype {arr.dtype}: use uint8, or float in [0, 1]")
    if not np.isfinite(arr).all():
        raise InputError("image array contains NaN or inf values: fix the array before loading it")
    lo, hi = float(arr.min()), float(arr.max())
    if lo < -1e-3 or hi > 1 + 1e-3:
        raise InputError(f"float image values must lie in [0, 1], got [{lo:g}, {hi:g}]: "
                         "divide 0-255 data by 255")
    return np.clip(arr, 0.0, 1.0).astype(np.float32)


def _to_rgb(img: np.ndarray) -> np.ndarray:
    if img.shape[2] == 1:
        return np.repeat(img, 3, axis=2)
    if img.shape[2] == 4:  # composite over white: portraits cut out of their background look natural
        alpha = img[:, :, 3:]
        return img[:, :, :3] * alpha + (1.0 - alpha)
    return img


def _centre_crop(img: np.ndarray) -> np.ndarray:
    h, w = img.shape[:2]
    side = min(h, w)
    top, left = (h - side) // 2, (w - side) // 2
    return img[top:top + side, left:left + side]


def _resize_square(img: np.ndarray, size: int) -> np.ndarray:
    """Resize with antialiased bicubic: the filter PIL's ``resize(BICUBIC)`` uses, which is how
    portrait datasets are usually prepared; unlike "area" it stays sharp when upscaling small
    inputs, and its antialiasing prevents moire when downscaling large ones."""
    if img.shape[0] != size:
        x = torch.from_numpy(np.ascontiguousarray(img)).permute(2, 0, 1)[None]
        x = F.interpolate(x, size=(size, size), mode="bicubic", antialias=True, align_corners=False)
        img = x[0].permute(1, 2, 0).numpy()
    return np.clip(np.rint(img * 255.0), 0, 255).astype(np.uint8)  # bicubic overshoots a little


# ------------------------------------------------------------------------------------ audio

def load_audio(src, sample_rate: int = 16000, source_rate: int | None = None) -> np.ndarray:
    """Load a voice as float32 mono ``(S,)`` at ``sample_rate``, values about [-1, 1].

    ``src`` is a path or an array with ``source_rate`` (Hz) given. Arrays are ``(S,)`` or 2-D
    with a channel axis of at most 8 entries; the shorter axis is taken as channels, so both
    ``(S, C)`` and ``(C, S)`` work (a tie means ``(S, C)``). Integer arrays are scaled from their
    full range. Channels are averaged; the rate is converted with FFmpeg's resampler, and the
    result has exactly ``round(S * sample_rate / source_rate)`` samples.
    """
    if int(sample_rate) <= 0:
        raise InputError(f"sample_rate must be a positive number of Hz, got {sample_rate}")
    if isinstance(src, (str, os.PathLike)):
        audio, rate = _decode_audio_file(_existing_file(src, "audio"))
        where = f"audio file '{src}'"
    else:
        if source_rate is None or source_rate <= 0:
            raise InputError(f"source_rate must be given as a positive number of Hz for an audio "
                             f"array, got {source_rate}: pass the rate the samples were recorded at")
        audio, rate, where = _mono_from_array(np.asarray(src)), int(source_rate), "audio array"
    if audio.size == 0:
        raise InputError(f"{where} holds no samples: pass at least a fraction of a second of speech")
    if not np.isfinite(audio).all():
        raise InputError(f"{where} contains NaN or inf samples: fix the audio before loading it")
    return _resample(audio, rate, int(sample_rate))


def _mono_from_array(arr: np.ndarray) -> np.ndarray:
    if arr.size == 0 and arr.ndim in (1, 2):
        return np.zeros(0, np.float32)  # reported as "holds no samples" by the caller
    if arr.ndim == 2:
        if min(arr.shape) > _MAX_CHANNELS:
            raise InputError(f"audio array has shape {arr.shape}: expected (S,), (S, C) or (C, S) "
                             f"with at most {_MAX_CHANNELS} channels")
        if arr.shape[0] < arr.shape[1]:  # (C, S)
            arr = arr.T
        arr = _as_float_samples(arr).mean(axis=1)
    elif arr.ndim == 1:
        arr = _as_float_samples(arr)
    else:
        raise InputError(f"audio array has shape {arr.shape}: expected (S,), (S, C) or (C, S)")
    return arr.astype(np.float32)


def _as_float_samples(arr: np.ndarray) -> np.ndarray:
    if np.issubdtype(arr.dtype, np.floating):
        return arr.astype(np.float32)
    if arr.dtype == np.uint8:  # 8-bit PCM is unsigned, centred on 128
        return (arr.astype(np.float32) - 128.0) / 128.0
    if np.issubdtype(arr.dtype, np.signedinteger):
        return (arr.astype(np.float64) / -float(np.iinfo(arr.dtype).min)).astype(np.float32)
    raise InputError(f"audio array has dtype {arr.dtype}: use float, int16 or int32 samples")


def _decode_audio_file(path: Path) -> tuple[np.ndarray, int]:
    """Mono float32 samples and their rate. soundfile reads wav/flac fast; PyAV reads the rest."""
    try:
        import soundfile
    except ImportError:
        soundfile = None
    if soundfile is not None and path.suffix.lower() in (".wav", ".flac"):
        try:
            data, rate = soundfile.read(str(path), dtype="float32", always_2d=True)
            return data.mean(axis=1), int(rate)
        except (RuntimeError, OSError, ValueError):
            pass  # e.g. a wav codec libsndfile lacks: let FFmpeg try before giving up
    return _decode_audio_av(path)


def _decode_audio_av(path: Path) -> tuple[np.ndarray, int]:
    av = _import_av(f"decode '{path.suffix or path.name}' audio files")
    chunks, rate = [], 0
    try:
        with av.open(str(path)) as container:
            if not container.streams.audio:
                raise InputError(f"file '{path}' has no audio stream: {_AUDIO_HINT}")
            # Only the sample format changes here (to planar float); channels are averaged below
            # so that every layout downmixes the same way.
            to_float = av.AudioResampler(format="fltp")
            for frame in container.decode(audio=0):
                for out in to_float.resample(frame):
                    chunks.append(out.to_ndarray().mean(axis=0))
                    rate = out.sample_rate
            for out in to_float.resample(None):
                chunks.append(out.to_ndarray().mean(axis=0))
    except (av.FFmpegError, OSError) as e:
        raise InputError(f"audio file '{path}' could not be decoded ({e}): {_AUDIO_HINT}") from None
    if not chunks:
        return np.zeros(0, np.float32), rate
    return np.concatenate(chunks).astype(np.float32), rate


def _resample(audio: np.ndarray, source_rate: int, target_rate: int) -> np.ndarray:
    """Resample mono float32 with FFmpeg's swresample, trimmed/padded to the exact length."""
    if source_rate == target_rate:
        return np.ascontiguousarray(audio, dtype=np.float32)
    av = _import_av(f"resample {source_rate} Hz audio to {target_rate} Hz",
                    f", or pass {target_rate} Hz audio")
    resampler = av.AudioResampler(format="flt", layout="mono", rate=target_rate)
    out, step = [], 1 << 16
    for start in range(0, audio.size, step):
        frame = av.AudioFrame.from_ndarray(
            np.ascontiguousarray(audio[None, start:start + step], dtype=np.float32),
            format="flt", layout="mono")
        frame.sample_rate, frame.pts = source_rate, start
        frame.time_base = fractions.Fraction(1, source_rate)
        out += [f.to_ndarray()[0] for f in resampler.resample(frame)]
    out += [f.to_ndarray()[0] for f in resampler.resample(None)]
    result = np.concatenate(out) if out else np.zeros(0, np.float32)
    n = round(audio.size * target_rate / source_rate)
    return np.pad(result[:n], (0, max(0, n - result.size))).astype(np.float32)


# -------------------------------------------------------------------------------------- mp4

class Mp4Writer:
    """Write H.264 (yuv420p, crf 18) video plus an optional AAC mono track, atomically.

    Frames arrive in pieces through :meth:`write`, so memory does not grow with the length of the
    video. Everything goes to a hidden temporary file next to ``path``, which replaces ``path``
    only when the ``with`` block ends cleanly; on an exception it is deleted, so a crash never
    leaves a truncated mp4 (or clobbers an older good one).
    """

    def __init__(self, path, fps: int, width: int, height: int, audio: np.ndarray | None = None,
                 sample_rate: int = 16000):
        if width <= 0 or height <= 0 or width % 2 or height % 2:
            raise InputError(f"video size {width}x{height} is not allowed: H.264 (yuv420p) needs "
                             "positive, even width and height")
        if fps <= 0 or sample_rate <= 0:
            raise InputError(f"fps ({fps}) and sample_rate ({sample_rate}) must be positive")
        self.path = Path(path)
        self.fps = fractions.Fraction(fps).limit_denominator(1001)
        self.width, self.height, self.sample_rate = int(width), int(height), int(sample_rate)
        self.audio = None if audio is None else self._check_audio(audio)
        self._container = self._tmp = None
        self._frames = self._audio_done = 0

    @staticmethod
    def _check_audio(audio) -> np.ndarray:
        audio = np.asarray(audio, dtype=np.float32)
        if audio.ndim != 1 or audio.size == 0 or not np.isfinite(audio).all():
            raise InputError(f"mp4 audio must be a non-empty, finite mono (S,) array, got shape "
                             f"{audio.shape}: pass audio=None for a silent video")
        return audio

    def __enter__(self) -> "Mp4Writer":
        self._av = _import_av("write mp4 files")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{self.path.name}.tmp-", suffix=".mp4",
                                   dir=self.path.parent)
        os.close(fd)
        self._tmp = Path(tmp)
        try:
            self._open(self._av)
        except BaseException:
            self._discard()
            raise
        return self

    def _open(self, av) -> None:
        # faststart moves the index to the front so browsers can play while downloading.
        self._container = av.open(str(self._tmp), "w", format="mp4",
                                  options={"movflags": "+faststart"})
        video = self._container.add_stream("libx264", rate=self.fps,
                                           options={"crf": "18", "preset": "veryfast"})
        video.width, video.height, video.pix_fmt = self.width, self.height, "yuv420p"
        video.time_base = 1 / self.fps  # pts counts frames; the muxer rescales to its own timescale
        self._video = video
        if self.audio is not None:
            audio = self._container.add_stream("aac", rate=self.sample_rate, layout="mono")
            audio.bit_rate = 64000
            audio.time_base = fractions.Fraction(1, self.sample_rate)  # pts counts samples
            self._audio_stream = audio

    def write(self, frames: np.ndarray) -> None:
        """Encode ``frames``: uint8 ``(n, height, width, 3)`` RGB, n >= 0."""
        if self._container is None:
            raise RuntimeError("Mp4Writer.write() called outside its `with` block")
        frames = np.asarray(frames)
        if frames.ndim != 4 or frames.shape[1:] != (self.height, self.width, 3) \
                or frames.dtype != np.uint8:
            raise InputError(f"frames must be uint8 (n, {self.height}, {self.width}, 3), got "
                             f"{frames.dtype} {frames.shape}")
        for rgb in frames:
            frame = self._av.VideoFrame.from_ndarray(np.ascontiguousarray(rgb), format="rgb24")
            frame.pts = self._frames
            self._mux(self._video.encode(frame.reformat(format="yuv420p")))
            self._frames += 1
        # Feed audio in step with the video so packets interleave closely (keeps players and the
        # muxer's buffer happy however long the video runs).
        self._write_audio(upto=round(self._frames * self.sample_rate / self.fps))

    def _write_audio(self, upto: int) -> None:
        """Encode audio up to sample ``upto`` in whole AAC frames (the track's last may be short)."""
        if self.audio is None:
            return
        step = self._audio_stream.codec_context.frame_size or 1024
        while self._audio_done < min(upto, self.audio.size):
            chunk = self.audio[self._audio_done:self._audio_done + step]
            if self._audio_done + chunk.size > upto:
                break  # wait for the video to catch up
            frame = self._av.AudioFrame.from_ndarray(chunk[None].copy(), format="fltp",
                                                     layout="mono")
            frame.sample_rate, frame.pts = self.sample_rate, self._audio_done
            self._mux(self._audio_stream.encode(frame))
            self._audio_done += chunk.size

    def _mux(self, packets) -> None:
        for packet in packets:
            self._container.mux(packet)

    def _finish(self) -> None:
        if self._frames == 0:
            raise InputError(f"no video frames were written to '{self.path}': write at least one")
        self._mux(self._video.encode())  # flush the encoder's lookahead
        if self.audio is not None:
            self._write_audio(upto=self.audio.size)  # the whole track, even past the last frame
            self._mux(self._audio_stream.encode())
        self._container.close()
        self._container = None
        as_if_created(self._tmp)
        os.replace(self._tmp, self.path)
        self._tmp = None

    def _discard(self) -> None:
        if self._container is not None:
            try:
                self._container.close()
            except Exception:  # already failing; the temp file is deleted either way
                pass
            self._container = None
        if self._tmp is not None:
            self._tmp.unlink(missing_ok=True)
            self._tmp = None

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            try:
                self._finish()
            except BaseException:
                self._discard()
                raise
        else:
            self._discard()


def write_mp4(path, frames, fps, audio=None, sample_rate: int = 16000) -> None:
    """Write a whole video: ``frames`` is uint8 ``(N, H, W, 3)`` or an iterable of such pieces
    (or of single ``(H, W, 3)`` frames)."""
    pieces = iter([frames] if isinstance(frames, np.ndarray) and frames.ndim == 4 else frames)
    first = next(pieces, None)
    if first is None:
        raise InputError(f"no video frames given for '{path}': pass at least one frame")
    first = np.asarray(first)
    height, width = first.shape[-3:-1]
    with Mp4Writer(path, fps, width, height, audio=audio, sample_rate=sample_rate) as writer:
        for piece in itertools.chain([first], pieces):
            piece = np.asarray(piece)
            writer.write(piece[None] if piece.ndim == 3 else piece)


def read_mp4_info(path) -> dict:
    """Decode a video file and report what it holds (for tests and evaluation)."""
    path = _existing_file(path, "video")
    av = _import_av("read mp4 files")
    try:
        with av.open(str(path)) as container:
            if not container.streams.video:
                raise InputError(f"file '{path}' has no video stream: pass an mp4 video")
            video = container.streams.video[0]
            info = {"fps": float(video.average_rate or 0), "width": video.codec_context.width,
                    "height": video.codec_context.height,
                    "frames": sum(1 for _ in container.decode(video=0)),
                    "has_audio": bool(container.streams.audio), "audio_seconds": 0.0}
        if info["has_audio"]:
            info["audio_seconds"] = _audio_seconds(av, path)
    except (av.FFmpegError, OSError) as e:
        raise InputError(f"video file '{path}' could not be decoded ({e}): pass an mp4 video") \
            from None
    return info


def _audio_seconds(av, path: Path) -> float:
    """The audio track's duration: the container's (which trims AAC's priming and padding
    through the edit list), else the decoded sample count."""
    with av.open(str(path)) as container:
        stream = container.streams.audio[0]
        if stream.duration and stream.time_base:
            return float(stream.duration * stream.time_base)
        samples = sum(frame.samples for frame in container.decode(audio=0))
        return samples / (stream.sample_rate or 1)


# The process's umask, read once (reading it means setting it, which is not thread-safe).
_UMASK = os.umask(0o022)
os.umask(_UMASK)


def as_if_created(path, directory: bool = False) -> None:
    """Give a file or directory made by ``tempfile.mkstemp``/``mkdtemp`` (private: 0600/0700) the
    mode ``open()`` or ``mkdir()`` would have given it, so that outputs written atomically are as
    readable as any other file (by a web server serving the mp4, say)."""
    os.chmod(path, (0o777 if directory else 0o666) & ~_UMASK)


def write_text_atomic(path, text: str) -> None:
    """Write a text file so that readers see the old content or the new, never a part."""
    write_atomic(path, lambda f: f.write(text), binary=False)


def write_atomic(path, write, binary: bool = True) -> None:
    """Create ``path`` by calling ``write(file)`` on a temporary file beside it, then renaming it
    into place: readers see the old content or the new, never a part, and a failure leaves the
    old file as it was."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "wb" if binary else "w") as f:
            write(f)
        as_if_created(tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
