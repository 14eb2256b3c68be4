"""The synthetic talking-head dataset: deterministic, held-out split, and a true ground truth."""
import numpy as np
import pytest

from reference.data.synthetic import SyntheticTalkingHeads, synthesize_speech
from reference.metrics import mouth_opening


@pytest.fixture(scope="module")
def data():
    return SyntheticTalkingHeads(128, num_chunks=2, size=10)


def test_clips_are_deterministic_by_seed(data):
    a, b = data[3], data[3]
    assert np.array_equal(a.frames, b.frames) and np.array_equal(a.audio, b.audio)
    assert np.array_equal(a.mouth_open, b.mouth_open) and a.name == b.name
    assert not np.array_equal(data[4].reference, a.reference)
    other_seed = SyntheticTalkingHeads(128, num_chunks=2, size=10, seed=1)[3]
    assert not np.array_equal(other_seed.reference, a.reference)


def test_eval_split_is_held_out(data):
    held_out = SyntheticTalkingHeads(128, num_chunks=2, size=10, split="eval")
    assert not np.array_equal(held_out[0].reference, data[0].reference)
    with pytest.raises(ValueError, match="split"):
        SyntheticTalkingHeads(128, split="test")


def test_shapes_and_timeline(data):
    clip = data[0]
    assert clip.frames.shape == (48, 128, 128, 3) and clip.frames.dtype == np.uint8
    assert clip.reference.shape == (128, 128, 3)
    assert clip.audio.dtype == np.float32 and len(clip.audio) == 48 * 640
    assert clip.mouth_open.shape == (48,) and 0 <= clip.mouth_open.min() and clip.mouth_open.max() <= 1
    with pytest.raises(IndexError):
        data[10]


def test_ground_truth_mouth_opening_is_what_is_drawn(data):
    clip = data.clip(1, 250)
    drawn = mouth_opening(clip.frames, clip.mouth_box)
    assert np.corrcoef(drawn, clip.mouth_open)[0, 1] > 0.95
    assert mouth_opening(clip.reference[None], clip.mouth_box)[0] == 0  # the portrait's mouth is shut
    assert (clip.mouth_open > 0.3).mean() > 0.2 and (clip.mouth_open < 0.05).mean() > 0.1


def test_mouth_follows_the_speech_loudness(data):
    clip = data.clip(2, 250)
    rms = np.sqrt((clip.audio.reshape(250, 640) ** 2).mean(1))
    assert np.corrcoef(rms, clip.mouth_open)[0, 1] > 0.5


def test_a_window_of_a_clip_equals_the_same_frames_of_a_longer_clip(data):
    long, part = data.clip(5, 60), data.clip(5, 20, start=30)
    assert np.array_equal(part.frames, long.frames[30:50])
    assert np.array_equal(part.mouth_open, long.mouth_open[30:50])
    assert np.array_equal(part.audio, long.audio[30 * 640:50 * 640])


def test_speech_has_pauses_and_formants():
    rng = np.random.default_rng(0)
    speech = synthesize_speech(4.0, rng)
    assert len(speech.audio) == 64000 and np.abs(speech.audio).max() <= 0.5 + 1e-6
    quiet = np.sqrt((speech.audio.reshape(-1, 320) ** 2).mean(1)) < 0.01
    assert 0.05 < quiet.mean() < 0.7  # pauses between phrases, mostly speech
    spectrum = np.abs(np.fft.rfft(speech.audio)) ** 2  # power
    freqs = np.fft.rfftfreq(len(speech.audio), 1 / 16000)
    assert spectrum[(freqs > 200) & (freqs < 3500)].sum() > 20 * spectrum[freqs > 5000].sum()
