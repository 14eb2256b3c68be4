"""reference.media: image/audio loading over many formats and bad inputs, atomic mp4 writing."""
from __future__ import annotations

import os
import struct

import numpy as np
import pytest

from reference.media import InputError, Mp4Writer, load_audio, load_image, read_mp4_info, write_mp4

av = pytest.importorskip("av")


# ----------------------------------------------------------------------------- helpers

def write_image(path, arr, fmt: str, codec: str = "png", pix_fmt: str | None = None):
    """Encode one frame with PyAV (``arr`` may be an (indices, argb_palette) pair for pal8)."""
    frame = av.VideoFrame.from_ndarray(arr, format=fmt)
    pix_fmt = pix_fmt or fmt
    if pix_fmt != fmt:
        frame = frame.reformat(format=pix_fmt)
    with av.open(str(path), "w", format="image2") as container:
        stream = container.add_stream(codec)
        stream.width, stream.height, stream.pix_fmt = frame.width, frame.height, pix_fmt
        for packet in [*stream.encode(frame), *stream.encode()]:
            container.mux(packet)
    return path


def write_audio_av(path, audio: np.ndarray, rate: int, codec: str, fmt: str):
    """Encode mono float32 audio with PyAV (mp3/m4a test files)."""
    with av.open(str(path), "w", format=fmt) as container:
        stream = container.add_stream(codec, rate=rate, layout="mono")
        sample_fmt = stream.codec_context.codec.audio_formats[0].name
        frame = av.AudioFrame.from_ndarray(audio[None], format="flt", layout="mono")
        frame.sample_rate, frame.pts = rate, 0
        resampler = av.AudioResampler(format=sample_fmt, layout="mono", rate=rate,
                                      frame_size=1152 if codec == "libmp3lame" else 1024)
        for piece in [*resampler.resample(frame), *resampler.resample(None)]:
            for packet in stream.encode(piece):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


def tone(seconds: float, rate: int, freq: float = 220.0) -> np.ndarray:
    t = np.arange(int(seconds * rate)) / rate
    return (0.5 * np.sin(2 * np.pi * freq * t)).astype(np.float32)


def exif_orientation_segment(orientation: int) -> bytes:
    """A minimal big-endian EXIF APP1 segment holding only the Orientation tag."""
    ifd = struct.pack(">H", 1) + struct.pack(">HHIHH", 0x0112, 3, 1, orientation, 0)
    body = b"Exif\x00\x00" + b"MM\x00\x2a" + struct.pack(">I", 8) + ifd + struct.pack(">I", 0)
    return b"\xff\xe1" + struct.pack(">H", len(body) + 2) + body


# ------------------------------------------------------------------------------ images

@pytest.mark.parametrize("fmt", ["rgb24", "rgba", "gray", "gray16be", "rgb48be"])
def test_png_modes(tmp_path, fmt):
    rng = np.random.default_rng(0)
    channels = {"rgb24": 3, "rgba": 4, "gray": 1, "gray16be": 1, "rgb48be": 3}[fmt]
    dtype = np.uint16 if fmt.endswith("be") else np.uint8
    shape = (40, 40) if channels == 1 else (40, 40, channels)
    arr = rng.integers(0, np.iinfo(dtype).max, shape, dtype=dtype)
    if fmt == "rgba":
        arr[..., 3] = 255
    out = load_image(write_image(tmp_path / "x.png", arr, fmt), 40)
    assert out.shape == (40, 40, 3) and out.dtype == np.uint8
    expected = (arr >> 8 if dtype == np.uint16 else arr).astype(int)
    expected = np.repeat(expected[..., None], 3, -1) if channels == 1 else expected[..., :3]
    assert np.abs(out.astype(int) - expected).max() <= 1


def test_rgba_composites_over_white(tmp_path):
    arr = np.zeros((8, 8, 4), np.uint8)  # fully transparent black
    arr[:4, :, 3] = 255  # top half opaque black
    out = load_image(write_image(tmp_path / "a.png", arr, "rgba"), 8)
    assert (out[:4] == 0).all() and (out[4:] == 255).all()


def test_palette_png(tmp_path):
    palette = np.zeros((256, 4), np.uint8)  # PyAV wants ARGB entries
    palette[:, 0], palette[:, 1] = 255, np.arange(256)
    index = np.arange(64, dtype=np.uint8).reshape(8, 8)
    out = load_image(write_image(tmp_path / "p.png", (index, palette), "pal8"), 8)
    assert (out[..., 0] == index).all() and (out[..., 1:] == 0).all()


def test_jpeg(tmp_path):
    arr = np.full((32, 32, 3), (200, 60, 30), np.uint8)
    path = write_image(tmp_path / "x.jpg", arr, "rgb24", codec="mjpeg", pix_fmt="yuvj420p")
    out = load_image(path, 16)
    assert np.abs(out.astype(int) - arr[:16, :16]).max() <= 6


def test_jpeg_exif_rotation_is_applied(tmp_path):
    arr = np.zeros((32, 32, 3), np.uint8)
    arr[:8, :8] = 255  # marker top-left; orientation 6 means "rotate 90 degrees clockwise"
    plain = write_image(tmp_path / "plain.jpg", arr, "rgb24", codec="mjpeg", pix_fmt="yuvj420p")
    data = plain.read_bytes()
    rotated = tmp_path / "rotated.jpg"
    rotated.write_bytes(data[:2] + exif_orientation_segment(6) + data[2:])
    out = load_image(rotated, 32)
    assert out[:8, -8:].mean() > 200 and out[:8, :8].mean() < 50


@pytest.mark.parametrize("shape", [(90, 30), (30, 90)])
def test_non_square_is_centre_cropped(shape):
    h, w = shape
    arr = np.zeros((h, w, 3), np.uint8)
    arr[h // 2 - 2:h // 2 + 2, w // 2 - 2:w // 2 + 2] = 255  # marker at the centre
    arr[:3, :3] = 128  # and one in a corner that the crop must drop
    out = load_image(arr, 30)
    assert out.shape == (30, 30, 3)
    assert out[13:17, 13:17].min() >= 250 and out[:3, :3].max() == 0


def test_tiny_and_large_arrays():
    assert (load_image(np.full((1, 1, 3), 77, np.uint8), 32) == 77).all()
    big = np.zeros((1500, 2000, 3), np.uint8)
    big[:, :250] = 255  # cropped away: the crop keeps columns 250..1750
    out = load_image(big, 64)
    assert out.shape == (64, 64, 3) and out.max() == 0


def test_float_and_gray_arrays():
    out = load_image(np.full((10, 10), 0.5, np.float32), 10)
    assert out.shape == (10, 10, 3) and (out == 128).all()
    out = load_image(np.ones((10, 10, 1), np.float64), 5)
    assert (out == 255).all()


def test_pil_like_object():
    class FakePIL:
        def __init__(self):
            self.modes = []

        def convert(self, mode):
            self.modes.append(mode)
            return np.full((12, 20, 4), (10, 20, 30, 255), np.uint8)

    fake = FakePIL()
    out = load_image(fake, 6)
    assert fake.modes == ["RGBA"] and (out == (10, 20, 30)).all()


@pytest.mark.parametrize("bad, message", [
    (np.zeros((0, 5, 3), np.uint8), "empty"),
    (np.full((4, 4, 3), np.nan, np.float32), "NaN"),
    (np.zeros((4, 4, 2), np.uint8), "shape"),
    (np.zeros((2, 4, 4, 3), np.uint8), "shape"),
    (np.full((4, 4, 3), 255.0), "divide"),
    (np.zeros((4, 4, 3), np.int64), "dtype"),
])
def test_bad_image_arrays(bad, message):
    with pytest.raises(InputError, match=message):
        load_image(bad, 8)


def test_bad_image_files(tmp_path):
    with pytest.raises(InputError, match="does not exist"):
        load_image(tmp_path / "missing.png", 8)
    text = tmp_path / "notes.png"
    text.write_text("this is not an image\n")
    with pytest.raises(InputError, match="could not be decoded"):
        load_image(str(text), 8)
    with pytest.raises(InputError, match="size"):
        load_image(np.zeros((4, 4, 3), np.uint8), 0)


# ------------------------------------------------------------------------------- audio

@pytest.mark.parametrize("rate, channels", [(44100, 2), (8000, 1), (16000, 1)])
def test_wav_resampled_to_mono(tmp_path, rate, channels):
    sf = pytest.importorskip("soundfile")
    x = tone(2.0, rate)
    data = np.stack([x, -x * 0.5], axis=1)[:, :channels]
    sf.write(tmp_path / "a.wav", data, rate)
    out = load_audio(tmp_path / "a.wav")
    assert out.dtype == np.float32 and out.ndim == 1
    assert abs(out.size - 32000) <= 320
    expected = 0.125 if channels == 2 else 0.5  # stereo averages x and -x/2 to x/4
    assert abs(np.abs(out[100:-100]).max() - expected) < 0.02


def test_int16_wav_and_flac(tmp_path):
    sf = pytest.importorskip("soundfile")
    x = tone(1.0, 16000)
    sf.write(tmp_path / "a.wav", (x * 32767).astype(np.int16), 16000, subtype="PCM_16")
    sf.write(tmp_path / "a.flac", x, 22050)
    out = load_audio(str(tmp_path / "a.wav"))
    assert out.size == 16000 and np.abs(out - x).max() < 1e-3
    assert load_audio(tmp_path / "a.flac").size == round(16000 * 16000 / 22050)


@pytest.mark.parametrize("codec, fmt, ext", [("libmp3lame", "mp3", "mp3"), ("aac", "mp4", "m4a")])
def test_compressed_audio(tmp_path, codec, fmt, ext):
    if codec not in av.codecs_available:
        pytest.skip(f"{codec} not in this PyAV build")
    path = write_audio_av(tmp_path / f"a.{ext}", tone(1.5, 24000), 24000, codec, fmt)
    out = load_audio(path)
    assert abs(out.size - 24000) < 0.05 * 24000  # codecs pad to whole frames
    assert 0.4 < np.abs(out[2000:20000]).max() < 0.6  # lossy codecs overshoot at the onset


def test_audio_arrays():
    x = tone(1.0, 48000)
    stereo = np.stack([x, x], axis=1)
    out = load_audio(stereo, source_rate=48000)
    assert out.size == 16000 and abs(np.abs(out[100:-100]).max() - 0.5) < 0.01
    assert np.allclose(load_audio(stereo.T, source_rate=48000), out)  # (C, S) works too
    pcm = (tone(0.5, 16000) * 32767).astype(np.int16)
    assert np.abs(load_audio(pcm, source_rate=16000) - tone(0.5, 16000)).max() < 1e-3


def test_bad_audio(tmp_path):
    sf = pytest.importorskip("soundfile")
    with pytest.raises(InputError, match="does not exist"):
        load_audio(tmp_path / "missing.wav")
    garbage = tmp_path / "garbage.wav"
    garbage.write_bytes(np.random.default_rng(0).bytes(4000))
    with pytest.raises(InputError, match="could not be decoded"):
        load_audio(garbage)
    sf.write(tmp_path / "empty.wav", np.zeros((0, 1), np.float32), 16000)
    with pytest.raises(InputError, match="no samples"):
        load_audio(tmp_path / "empty.wav")
    with pytest.raises(InputError, match="no audio stream"):
        load_audio(write_image(tmp_path / "img.png", np.zeros((4, 4, 3), np.uint8), "rgb24"))


@pytest.mark.parametrize("bad, rate, message", [
    (np.full(100, np.nan, np.float32), 16000, "NaN"),
    (np.full(100, np.inf, np.float32), 16000, "inf"),
    (np.zeros(100, np.float32), None, "source_rate"),
    (np.zeros(100, np.float32), 0, "source_rate"),
    (np.zeros(0, np.float32), 16000, "no samples"),
    (np.zeros((0, 2), np.float32), 16000, "no samples"),
    (np.zeros((100, 100), np.float32), 16000, "channels"),
])
def test_bad_audio_arrays(bad, rate, message):
    with pytest.raises(InputError, match=message):
        load_audio(bad, source_rate=rate)


# --------------------------------------------------------------------------------- mp4

def frames(n: int, size: int = 64, start: int = 0) -> np.ndarray:
    idx = np.arange(start, start + n, dtype=np.int64)[:, None, None, None]
    return np.broadcast_to((idx * 5) % 256, (n, size, size, 3)).astype(np.uint8)


def test_write_mp4_roundtrip(tmp_path):
    path = tmp_path / "out.mp4"
    write_mp4(path, frames(50), 25, audio=tone(2.0, 16000))
    info = read_mp4_info(path)
    assert info["frames"] == 50 and info["fps"] == 25
    assert (info["width"], info["height"]) == (64, 64)
    assert info["has_audio"] and abs(info["audio_seconds"] - 2.0) < 0.1
    assert os.listdir(tmp_path) == ["out.mp4"]  # no temp file left behind
    back = load_audio(path)  # the audio track decodes to the tone we wrote
    assert abs(np.abs(back[2000:30000]).max() - 0.5) < 0.05


def test_atomic_outputs_are_as_readable_as_any_file_written_here(tmp_path):
    """mp4s and text written through a private temporary file still get the umask's mode (0644
    under the usual 022), so that a web server can serve what was generated."""
    from reference.media import write_text_atomic
    write_mp4(tmp_path / "out.mp4", frames(10), fps=25)
    write_text_atomic(tmp_path / "report.json", "{}")
    umask = os.umask(0o022)
    os.umask(umask)
    for name in ("out.mp4", "report.json"):
        assert (tmp_path / name).stat().st_mode & 0o777 == 0o666 & ~umask, name


def test_writer_accepts_pieces(tmp_path):
    path = tmp_path / "pieces.mp4"
    with Mp4Writer(path, fps=25, width=64, height=64, audio=tone(3.0, 16000)) as writer:
        start = 0
        for n in (0, 7, 13, 30, 0):
            writer.write(frames(n, start=start))
            start += n
    info = read_mp4_info(path)
    assert info["frames"] == 50 and abs(info["audio_seconds"] - 3.0) < 0.1  # audio outlasts video


def test_writer_without_audio(tmp_path):
    path = tmp_path / "silent.mp4"
    write_mp4(path, [frames(1)[0], frames(2)], 10)  # single frames and pieces both work
    info = read_mp4_info(path)
    assert info["frames"] == 3 and not info["has_audio"] and info["audio_seconds"] == 0.0


def test_exception_leaves_nothing(tmp_path):
    path = tmp_path / "crash.mp4"
    with pytest.raises(RuntimeError, match="boom"):
        with Mp4Writer(path, 25, 64, 64, audio=tone(1.0, 16000)) as writer:
            writer.write(frames(10))
            raise RuntimeError("boom")
    assert os.listdir(tmp_path) == []


def test_existing_file_replaced_only_on_success(tmp_path):
    path = tmp_path / "keep.mp4"
    path.write_bytes(b"old")
    with pytest.raises(InputError):
        with Mp4Writer(path, 25, 64, 64) as writer:
            writer.write(frames(5))
            writer.write(frames(5, size=32))  # wrong size
    assert path.read_bytes() == b"old" and os.listdir(tmp_path) == ["keep.mp4"]
    write_mp4(path, frames(5), 25)
    assert read_mp4_info(path)["frames"] == 5 and os.listdir(tmp_path) == ["keep.mp4"]


def test_writer_refuses_bad_settings(tmp_path):
    with pytest.raises(InputError, match="even"):
        Mp4Writer(tmp_path / "odd.mp4", 25, 63, 64)
    with pytest.raises(InputError, match="no video frames"):
        with Mp4Writer(tmp_path / "empty.mp4", 25, 64, 64):
            pass
    with pytest.raises(InputError, match="does not exist"):
        read_mp4_info(tmp_path / "missing.mp4")
    assert os.listdir(tmp_path) == []


def test_shipped_demo_assets_load():
    from pathlib import Path

    assets = Path(__file__).resolve().parents[2] / "rest_fast" / "assets"
    portrait = load_image(assets / "demo_portrait.png", 512)
    assert portrait.shape == (512, 512, 3) and portrait.std() > 20
    speech = load_audio(assets / "demo_speech.wav")
    assert 4.0 <= speech.size / 16000 <= 6.5 and 0.5 < np.abs(speech).max() <= 1.0
    assert (assets / "demo_speech.wav").stat().st_size < 250_000


def test_works_without_pyav_where_it_can(monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "av", None)  # makes `import av` raise ImportError
    monkeypatch.setitem(sys.modules, "soundfile", None)
    assert load_audio(tone(0.5, 16000), source_rate=16000).size == 8000  # no resample needed
    assert load_image(np.zeros((6, 4, 3), np.uint8), 8).shape == (8, 8, 3)
    with pytest.raises(InputError, match="pip install av, or pass 16000 Hz audio"):
        load_audio(tone(0.5, 8000), source_rate=8000)
    with pytest.raises(InputError, match="pip install av"):
        load_image(__file__, 8)
