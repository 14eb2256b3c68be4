"""The synthetic talking-head dataset, calm, lively and restless: deterministic, held-out split,
and a true ground truth; the lively one moves, blinks and looks around independently of the
words, the restless one shifts its posture too."""
import numpy as np
import pytest

from reference.data.synthetic import (LIVELY_EYE_SCALE, MAX_SHIFT, POSTURE_SHIFT, FaceState,
                                      SyntheticTalkingHeads, render_frame, synthesize_speech)
from reference.evaluate import steady_view
from reference.metrics import blinks, eye_openness, motion_energy, mouth_opening


@pytest.fixture(scope="module", params=["calm", "lively", "restless"])
def data(request):
    return SyntheticTalkingHeads(128, num_chunks=2, size=10, motion=request.param)


@pytest.fixture(scope="module")
def lively_minute():
    """A minute of one lively eval clip at 128 px."""
    return SyntheticTalkingHeads(128, split="eval", motion="lively").clip(3, 1500)


@pytest.fixture(scope="module")
def restless_minute():
    """The same minute, restless."""
    return SyntheticTalkingHeads(128, split="eval", motion="restless").clip(3, 1500)


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
    with pytest.raises(ValueError, match="motion"):
        SyntheticTalkingHeads(128, motion="wild")


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
    frames, mouth_box, _ = steady_view(clip.frames, clip)   # restless: moved back by the posture shift
    drawn = mouth_opening(frames, mouth_box)
    assert np.corrcoef(drawn, clip.mouth_open)[0, 1] > 0.95
    # The portrait's mouth is shut: nothing reads as open (the lively box, grown for any pose,
    # may catch a few dark pixels of the nostrils or hair).
    assert mouth_opening(clip.reference[None], mouth_box)[0] <= 0.01
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
    for key in long.truth:
        assert np.array_equal(part.truth[key], long.truth[key][30:50]), key


@pytest.mark.parametrize("motion", ["calm", "lively", "restless"])
def test_every_field_of_the_truth_is_prefix_stable(motion):
    """The truth of the first 30 s is the first 30 s of the truth of 60 s, in every field: blinks
    and brows too, whose lengths and heights were once drawn after all the event times (lively
    version 2), so that a longer clip changed its first blinks. On the eval split (the
    benchmark's truth) and on train."""
    for split in ("eval", "train"):
        data = SyntheticTalkingHeads(128, split=split, motion=motion)
        for index in (0, 1, 6):
            long, short = data.states(index, 1500), data.states(index, 750)
            assert set(long) == set(short) and {"blink", "brow", "dx", "gaze_x", "smile"} <= set(long)
            for key in long:
                np.testing.assert_allclose(short[key], long[key][:750], rtol=0, atol=1e-6,
                                           err_msg=f"{split} {index} {key}")
            if motion != "calm":   # the guarded fields do move in this minute
                assert long["blink"][:750].max() > 0.5 and long["brow"][:750].max() > 0.2


def test_calm_and_lively_share_identities_and_sentences():
    calm, lively = (SyntheticTalkingHeads(128, split="eval", motion=m) for m in ("calm", "lively"))
    # The same person, the lively one drawn with larger eyes: equal below the eyes.
    a_id, b_id = calm.identity(0), lively.identity(0)
    assert b_id.eye_w == pytest.approx(a_id.eye_w * LIVELY_EYE_SCALE) and b_id.eye_h == pytest.approx(a_id.eye_h * LIVELY_EYE_SCALE)
    assert (a_id.face_x, a_id.skin.tolist(), a_id.mouth_w) == (b_id.face_x, b_id.skin.tolist(), b_id.mouth_w)
    below_eyes = max(bottom for _, bottom, _, _ in b_id.eye_boxes(128))
    assert np.array_equal(calm.clip(0, 1).reference[below_eyes:], lively.clip(0, 1).reference[below_eyes:])
    a, b = calm.clip(0, 100), lively.clip(0, 100)
    assert np.corrcoef(a.audio, b.audio)[0, 1] > 0.8           # the same syllables, some stressed
    assert np.allclose(a.mouth_open, b.mouth_open, atol=0.35)
    calm_truth = a.truth
    assert all(not calm_truth[k].any() for k in ("roll", "yaw", "pitch", "brow", "gaze_x", "smile"))


def test_lively_heads_move_blink_and_look_around_at_random(lively_minute):
    clip, t = lively_minute, lively_minute.truth
    for key in ("dx", "dy", "roll", "yaw", "pitch", "brow", "gaze_x"):
        assert t[key].std() > 0, key
    assert np.abs(t["dx"]).max() <= 0.02 and np.abs(t["roll"]).max() <= 0.08
    true_blinks = int((np.diff((t["blink"] > 0.5).astype(int)) == 1).sum())
    assert 8 <= true_blinks <= 30                       # about 17 a minute
    # The blinks are drawn: the eyes' white, read back from the pixels, finds them.
    found = blinks(eye_openness(clip.frames, clip.eye_boxes))
    assert abs(found["count"] - true_blinks) <= 2 and found["completeness"] > 0.8
    # Head motion is not the speech: its pose does not follow the loudness (only nods may).
    rms = np.sqrt((clip.audio.reshape(len(clip.frames), -1) ** 2).mean(1))
    for key in ("dx", "yaw", "gaze_x"):
        assert abs(np.corrcoef(rms, t[key])[0, 1]) < 0.3, key
    # The mouth is still drawn where its box says, whatever the pose.
    assert np.corrcoef(mouth_opening(clip.frames, clip.mouth_box), t["opening"])[0, 1] > 0.9


def test_restless_clips_are_lively_ones_whose_head_shifts_posture(lively_minute, restless_minute):
    lively, restless = lively_minute.truth, restless_minute.truth
    for key in lively:
        if key not in ("dx", "dy"):
            assert np.array_equal(lively[key], restless[key]), key
    assert np.array_equal(lively_minute.audio, restless_minute.audio)
    # What is added is held between shifts (every 2.5 s or so) and moves in 0.8 s, up to the reach.
    posture = np.stack([restless["dx"] - lively["dx"], restless["dy"] - lively["dy"]], 1)
    assert (np.abs(posture) <= np.array(POSTURE_SHIFT) + 1e-6).all()
    moving = (np.abs(np.diff(posture, axis=0)) > 1e-6).any(1)
    shifts = int((np.diff(moving.astype(int)) == 1).sum()) + int(moving[0])
    assert 15 <= shifts <= 45
    assert moving.mean() < 0.45 and np.abs(posture[20:] - posture[:-20]).max() * 256 > 10
    # Far enough to matter to a 32-pixel latent cell at 256: the head's spread is several times
    # the lively one's.
    assert restless["dx"].std() > 2 * lively["dx"].std()
    assert np.abs(restless["dx"]).max() <= MAX_SHIFT[0] + POSTURE_SHIFT[0]
    # Moved back by the head's offset, the mouth is drawn where its box says and the eyes blink
    # where theirs say.
    clip = restless_minute
    frames, mouth_box, eye_boxes = steady_view(clip.frames, clip)
    assert np.corrcoef(mouth_opening(frames, mouth_box), restless["opening"])[0, 1] > 0.95
    true_blinks = int((np.diff((restless["blink"] > 0.5).astype(int)) == 1).sum())
    assert abs(blinks(eye_openness(frames, eye_boxes))["count"] - true_blinks) <= 2


@pytest.mark.parametrize("motion", ["lively", "restless"])
def test_the_head_moves_in_the_pixels_and_stays_in_its_box(motion, request):
    clip = request.getfixturevalue(f"{motion}_minute")
    calm = SyntheticTalkingHeads(128, split="eval").clip(3, 250)
    lively_motion = motion_energy(clip.frames[:250], clip.head_box, (clip.mouth_box,))
    calm_motion = motion_energy(calm.frames, calm.head_box, (calm.mouth_box,))
    assert lively_motion > 2 * calm_motion
    # Nothing of the head moves outside the head box: the frame is the neutral portrait's there.
    top, bottom, left, right = clip.head_box
    outside = np.ones(clip.frames.shape[1:3], bool)
    outside[max(top, 0):bottom, max(left, 0):right] = False
    outside[int(0.75 * 128):] = False                   # the shoulders follow the head a little
    assert np.abs(clip.frames[:, outside].astype(int) - clip.reference[outside]).max() <= 2


def test_a_state_renders_what_it_says():
    ident = SyntheticTalkingHeads(128).identity(0)
    shut = render_frame(ident, 128, FaceState(blink=1.0))
    open_eyes = render_frame(ident, 128, FaceState())
    boxes = ident.eye_boxes(128)
    assert eye_openness(open_eyes[None], boxes)[0] > 5 * eye_openness(shut[None], boxes)[0]
    assert not np.array_equal(render_frame(ident, 128, FaceState(yaw=1.0)), open_eyes)


def test_speech_has_pauses_and_formants():
    rng = np.random.default_rng(0)
    speech = synthesize_speech(4.0, rng)
    assert len(speech.audio) == 64000 and np.abs(speech.audio).max() <= 0.5 + 1e-6
    quiet = np.sqrt((speech.audio.reshape(-1, 320) ** 2).mean(1)) < 0.01
    assert 0.05 < quiet.mean() < 0.7  # pauses between phrases, mostly speech
    spectrum = np.abs(np.fft.rfft(speech.audio)) ** 2  # power
    freqs = np.fft.rfftfreq(len(speech.audio), 1 / 16000)
    assert spectrum[(freqs > 200) & (freqs < 3500)].sum() > 20 * spectrum[freqs > 5000].sum()
