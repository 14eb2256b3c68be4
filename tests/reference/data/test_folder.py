"""FolderDataset: windows of real clips, resampled to 25 fps, cropped, with aligned audio; bad
files skipped with a warning; a folder with nothing usable refused with a helpful message."""
import math
import warnings

import numpy as np
import pytest

from reference.data.folder import FolderDataset
from reference.media import InputError, write_mp4
from tests.conftest import make_tiny_config

ONSET = 1.52  # seconds: the audio is silent before, a loud tone after (frame 38 at 25 fps)


def value(k: int) -> int:
    """Flat brightness of source frame k: distinct within any 30 frames, 7 levels apart (well
    above H.264's loss and the limited-range YUV rounding), inside the 16-235 video range."""
    return 20 + 7 * (k % 30)


def write_clip(path, seconds: float, fps: int = 25, audio: bool = True, sample_rate: int = 16000,
               onset: float = ONSET):
    """Frames of flat brightness ``value(k)`` at 48x80, with black bars left and right of the
    centre square (which the dataset must crop away); a silent-then-tone audio track."""
    n = round(seconds * fps)
    frames = np.zeros((n, 48, 80, 3), np.uint8)
    for k in range(n):
        frames[k, :, 16:64] = value(k)
    t = np.arange(round(seconds * sample_rate)) / sample_rate
    track = np.where(t >= onset, 0.5 * np.sin(2 * math.pi * 440 * t), 0).astype(np.float32)
    write_mp4(path, frames, fps, audio=track if audio else None, sample_rate=sample_rate)


def onset_sample(audio: np.ndarray) -> int:
    return int(np.argmax(np.abs(audio) > 0.1))


@pytest.fixture(scope="module")
def good_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("good")
    write_clip(root / "sub" / "talk.mp4", 3.0)
    return root


@pytest.fixture(scope="module")
def cfg():
    return make_tiny_config()


@pytest.mark.parametrize("num_chunks", [1, 2])
def test_windows_shapes_and_content(good_dir, cfg, num_chunks):
    ds = FolderDataset(good_dir, cfg, num_chunks=num_chunks)
    window = 1 + num_chunks * cfg.frames_per_chunk
    assert len(ds) == 75 // window and ds.skipped == []
    for i in range(len(ds)):
        clip = ds[i]
        first = i * window
        assert clip.name == f"sub/talk.mp4@{first}"
        assert clip.frames.shape == (num_chunks * 24, 64, 64, 3) and clip.frames.dtype == np.uint8
        assert clip.reference.shape == (64, 64, 3) and clip.mouth_open is None
        assert clip.audio.dtype == np.float32
        assert clip.audio.shape == (num_chunks * 24 * cfg.samples_per_frame,)
        # The centre square was kept: no black bars survive at the edges.
        assert abs(float(clip.reference.mean()) - value(first)) < 2
        edges, centre = clip.frames[:, :, [0, -1]].astype(int), clip.frames[:, :, [32]].astype(int)
        assert np.abs(edges - centre).max() <= 4
        means = clip.frames.reshape(len(clip.frames), -1).mean(axis=1)
        expected = [value(first + 1 + n) for n in range(len(clip.frames))]
        np.testing.assert_allclose(means, expected, atol=2.5)
        # frames[n] shows time n/25 of the audio: the tone starts at ONSET on the file's clock.
        onset = (ONSET - (first + 1) / cfg.fps) * cfg.speech.sample_rate
        if 0 < onset < clip.audio.size:
            assert abs(onset_sample(clip.audio) - onset) <= cfg.samples_per_frame // 4  # 10 ms
            assert np.abs(clip.audio[:max(0, int(onset) - 640)]).max(initial=0) < 0.05
        elif onset <= 0:
            assert np.abs(clip.audio).max() > 0.3


@pytest.mark.parametrize("fps, sample_rate", [(50, 16000), (30, 44100)])
def test_other_frame_rates_are_resampled_to_25(tmp_path, cfg, fps, sample_rate):
    write_clip(tmp_path / "clip.mp4", 2.2, fps=fps, sample_rate=sample_rate)
    ds = FolderDataset(tmp_path, cfg, num_chunks=2)
    assert len(ds) == 1  # 2.2 s hold 55 frames at 25 fps: one window of 49
    clip = ds[0]
    assert clip.frames.shape == (48, 64, 64, 3) and clip.audio.shape == (48 * 640,)
    # Output frame n (time n/25) shows the latest source frame at or before it.
    latest = [math.floor(n * fps / 25 + 1e-9) for n in range(49)]
    assert abs(float(clip.reference.mean()) - value(latest[0])) < 2
    means = clip.frames.reshape(48, -1).mean(axis=1)
    np.testing.assert_allclose(means, [value(k) for k in latest[1:]], atol=2.5)
    onset = (ONSET - 1 / 25) * 16000
    assert abs(onset_sample(clip.audio) - onset) <= 160  # 10 ms: a quarter frame


def test_windows_deep_in_a_long_clip_seek_to_the_right_place(tmp_path, cfg):
    """20 s at 30 fps: x264 puts keyframes every ~8 s, so late windows start from a seek."""
    write_clip(tmp_path / "long.mp4", 20.0, fps=30, sample_rate=44100, onset=14.0)
    ds = FolderDataset(tmp_path, cfg, num_chunks=2)
    assert len(ds) == 500 // 49
    for i in (7, len(ds) - 1):  # the tone starts inside window 7; the last is past a keyframe
        clip, first = ds[i], i * 49
        latest = [math.floor((first + 1 + n) * 30 / 25 + 1e-9) for n in range(48)]
        means = clip.frames.reshape(48, -1).mean(axis=1)
        np.testing.assert_allclose(means, [value(k) for k in latest], atol=2.5)
        onset = (14.0 - (first + 1) / 25) * 16000
        if 0 < onset < clip.audio.size:
            assert abs(onset_sample(clip.audio) - onset) <= 160
        else:
            assert np.abs(clip.audio).max() > 0.3


def test_bad_files_are_skipped_with_a_warning(tmp_path, cfg):
    write_clip(tmp_path / "good.mp4", 2.0)
    (tmp_path / "notes.mp4").write_text("not a video at all\n")
    write_clip(tmp_path / "mute.mp4", 2.0, audio=False)
    write_clip(tmp_path / "nested" / "short.mov", 1.0)
    (tmp_path / "readme.txt").write_text("ignored: not a video extension\n")
    with pytest.warns(UserWarning) as record:
        ds = FolderDataset(tmp_path, cfg, num_chunks=2)
    messages = [str(w.message) for w in record if "FolderDataset" in str(w.message)]
    assert len(messages) == 3
    for name, reason in [("notes.mp4", "could not be opened"), ("mute.mp4", "no audio"),
                         ("short.mov", "too short")]:
        assert any(name in m and reason in m for m in messages), (name, messages)
    assert sorted(p.name for p, _ in ds.skipped) == ["mute.mp4", "notes.mp4", "short.mov"]
    assert len(ds) == 1 and ds[0].name == "good.mp4@0" and ds[-1].name == "good.mp4@0"
    with pytest.raises(IndexError):
        ds[1]


def test_folder_without_usable_clips_is_refused(tmp_path, cfg):
    with pytest.raises(InputError, match="no usable clips.*no mp4"):
        FolderDataset(tmp_path, cfg)
    (tmp_path / "broken.mp4").write_bytes(b"\x00" * 100)
    write_clip(tmp_path / "short.mp4", 1.0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with pytest.raises(InputError) as err:
            FolderDataset(tmp_path, cfg, num_chunks=2)
    message = str(err.value)
    assert str(tmp_path) in message and "none of its 2 video files" in message
    assert "audio track" in message and "face" in message and "1.96 s" in message
    with pytest.raises(InputError, match="does not exist"):
        FolderDataset(tmp_path / "missing", cfg)


def write_short_video_long_audio(path, video_seconds: float = 1.0, audio_seconds: float = 3.0):
    """An mkv whose header has no frame count and whose duration is the longer audio track's:
    it probes as 3 s of video but holds 1 s."""
    import av
    with av.open(str(path), "w") as c:
        v = c.add_stream("libx264", rate=25)
        v.width, v.height, v.pix_fmt = 64, 64, "yuv420p"
        a = c.add_stream("aac", rate=16000)
        a.layout = "mono"
        for k in range(round(video_seconds * 25)):
            frame = av.VideoFrame.from_ndarray(np.full((64, 64, 3), value(k), np.uint8), format="rgb24")
            for packet in v.encode(frame):
                c.mux(packet)
        for packet in v.encode():
            c.mux(packet)
        t = np.arange(round(audio_seconds * 16000)) / 16000
        frame = av.AudioFrame.from_ndarray((0.5 * np.sin(2 * math.pi * 440 * t)).astype(np.float32)[None],
                                           format="flt", layout="mono")
        frame.sample_rate = 16000
        for packet in list(a.encode(frame)) + list(a.encode()):
            c.mux(packet)


def test_a_window_past_the_end_of_the_video_is_skipped_not_frozen(tmp_path, cfg):
    write_clip(tmp_path / "good.mp4", 2.0)
    write_short_video_long_audio(tmp_path / "long_audio.mkv")
    ds = FolderDataset(tmp_path, cfg, num_chunks=2)
    assert len(ds) == 2 and ds.skipped == []   # the headers look fine
    with pytest.warns(UserWarning, match="long_audio.mkv.*ends at 0.96 s"):
        clip = ds[1]
    assert clip.name == "good.mp4@0"            # the next usable window instead of a frozen face
    assert [p.name for p, _ in ds.skipped] == ["long_audio.mkv"]
    assert ds[1].name == "good.mp4@0"           # remembered: no second attempt, no second warning
    assert len(ds.skipped) == 1
