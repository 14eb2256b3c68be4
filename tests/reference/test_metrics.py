"""The eval figures on clips whose answer is known: the truth itself (perfect sync, no drift,
seamless), the truth 5 frames late, a jump at every chunk boundary, a drift of known slope."""
import math

import numpy as np
import pytest

from reference import metrics
from reference.data.synthetic import SyntheticTalkingHeads
from tests.conftest import without_blinks

CHUNK = 24


@pytest.fixture(scope="module")
def clip():
    return SyntheticTalkingHeads(128, split="eval").clip(0, 10 * CHUNK)  # 9.6 s


def delayed(frames: np.ndarray, k: int) -> np.ndarray:
    """The same video k frames late (the first frame held for the first k)."""
    return np.concatenate([np.repeat(frames[:1], k, axis=0), frames[:-k]])


def test_mouth_opening_reads_the_drawn_mouth(clip):
    opening = metrics.mouth_opening(clip.frames, clip.mouth_box)
    assert opening.shape == (len(clip.frames),)
    assert np.corrcoef(opening, clip.mouth_open)[0, 1] > 0.95
    assert metrics.mouth_opening(clip.reference[None], clip.mouth_box)[0] == 0  # a shut mouth


def test_the_truth_is_in_sync_without_drift_and_seamless(clip):
    sync = metrics.lip_sync(metrics.mouth_opening(clip.frames, clip.mouth_box), clip.mouth_open)
    assert sync["corr"] > 0.95 and sync["best_offset"] == 0 and sync["best_corr"] == sync["corr"]
    drift = metrics.identity_drift(clip.frames, clip.frames)
    assert drift["first"] == drift["last"] == drift["slope_per_minute"] == 0
    assert len(drift["mae_per_bin"]) == 1 and drift["static_fraction"] > 0.5
    assert 0.7 < metrics.boundary_smoothness(clip.frames, CHUNK) < 1.4
    assert metrics.psnr(clip.frames, clip.frames) == math.inf
    assert metrics.ssim(clip.frames, clip.frames) == pytest.approx(1.0, abs=1e-5)


@pytest.mark.parametrize("k", [5, -3])
def test_a_shifted_mouth_is_found_at_its_offset(clip, k):
    frames = delayed(clip.frames, k) if k > 0 else np.concatenate(
        [clip.frames[-k:], np.repeat(clip.frames[-1:], -k, axis=0)])
    sync = metrics.lip_sync(metrics.mouth_opening(frames, clip.mouth_box), clip.mouth_open)
    assert sync["best_offset"] == k
    assert sync["best_corr"] > 0.95 and sync["corr"] < sync["best_corr"] - 0.1


def test_a_mouth_that_never_moves_has_no_sync(clip):
    still = np.repeat(clip.reference[None], len(clip.frames), axis=0)
    sync = metrics.lip_sync(metrics.mouth_opening(still, clip.mouth_box), clip.mouth_open)
    assert sync["corr"] == 0.0 and sync["best_corr"] == 0.0 and sync["best_offset"] == 0


def test_a_jump_at_every_chunk_boundary_is_not_seamless(clip):
    # Every other chunk is 12 levels brighter: a step at each boundary, nothing inside.
    offset = np.where((np.arange(len(clip.frames)) // CHUNK) % 2 == 1, 12, 0).astype(np.int16)
    jumpy = np.clip(clip.frames.astype(np.int16) + offset[:, None, None, None], 0, 255).astype(np.uint8)
    assert metrics.boundary_smoothness(jumpy, CHUNK) > 5
    # The same steps placed mid-chunk are invisible to the boundary figure.
    mid = np.roll(offset, CHUNK // 2)
    shifted = np.clip(clip.frames.astype(np.int16) + mid[:, None, None, None], 0, 255).astype(np.uint8)
    assert metrics.boundary_smoothness(shifted, CHUNK) < 1


def test_a_static_video_is_seamless():
    still = np.full((3 * CHUNK, 8, 8, 3), 100, np.uint8)
    assert metrics.boundary_smoothness(still, CHUNK) == 1.0
    with pytest.raises(ValueError, match="more than one chunk"):
        metrics.boundary_smoothness(still[:CHUNK], CHUNK)


def test_drift_of_known_slope(clip):
    # Brightness creeping up by 1 level every 10 frames: 150 levels per minute at 25 fps.
    # The truth is squeezed into 40..193 first, so that no pixel saturates.
    truth = (clip.frames * 0.6 + 40).astype(np.uint8)
    n = len(truth)
    creep = (np.arange(n) // 10).astype(np.uint8)
    frames = truth + creep[:, None, None, None]
    drift = metrics.identity_drift(frames, truth, fps=25, bin_seconds=4.0)
    assert drift["slope_per_minute"] == pytest.approx(150, rel=0.03)
    assert len(drift["mae_per_bin"]) == 3 and drift["first"] < drift["mae_per_bin"][1] < drift["last"]
    assert drift["first"] == pytest.approx(np.mean(creep[:100]), abs=0.05)
    # 240 frames in bins of 100: the last bin is a 40-frame remainder; "last" is the last whole
    # 4 s (frames 140..239), as "first" is the first (frames 0..99).
    assert drift["last"] == pytest.approx(np.mean(creep[-100:]), abs=0.05)
    assert drift["mae_per_bin"][-1] == pytest.approx(np.mean(creep[200:]), abs=0.05)


def test_psnr_and_ssim_of_known_errors():
    rng = np.random.default_rng(0)
    truth = rng.integers(20, 230, (4, 32, 32, 3)).astype(np.uint8)
    brighter = truth + np.uint8(10)  # MSE 100 everywhere
    assert metrics.psnr(brighter, truth) == pytest.approx(10 * math.log10(255 ** 2 / 100))
    noisy = np.clip(truth + rng.normal(0, 25, truth.shape), 0, 255).astype(np.uint8)
    assert metrics.ssim(noisy, truth) < metrics.ssim(brighter, truth) < 1.0
    with pytest.raises(ValueError, match="differ in size"):
        metrics.psnr(truth[:, :16], truth)


# ---- the figures a mean cannot fake -----------------------------------------------------------

@pytest.fixture(scope="module")
def lively():
    """30 s at 256x256 (the cpu preset's size, which the clip encoder was trained at), with its
    truth statistics, and the same clip re-rendered with the eyes never blinking."""
    from reference.evaluate import truth_stats
    data = SyntheticTalkingHeads(256, split="eval", motion="lively")
    clip = data.clip(1, 750)
    return clip, truth_stats(clip), without_blinks(data, 1, clip)


def blurred(frames: np.ndarray, size: int = 5) -> np.ndarray:
    """Each frame box-blurred over ``size`` x ``size`` pixels."""
    import torch
    import torch.nn.functional as F
    x = torch.from_numpy(frames).permute(0, 3, 1, 2).float()
    x = F.avg_pool2d(x, size, 1, size // 2, count_include_pad=False)
    return x.round().byte().permute(0, 2, 3, 1).numpy()


def test_the_truth_scores_as_the_truth(lively):
    from reference.evaluate import measure
    clip, stats, _ = lively
    m = measure(clip.frames, clip, CHUNK, stats)
    assert m["motion"] == pytest.approx(1.0) and m["sharpness"] == pytest.approx(1.0)
    assert m["fd"] == pytest.approx(0.0, abs=1e-6)
    true_blinks = int((np.diff((clip.truth["blink"] > 0.5).astype(int)) == 1).sum())
    assert 5 <= true_blinks <= 14                                        # ~17 a minute
    assert m["blink_rate"] == pytest.approx(true_blinks * 2, abs=2) and m["blink_completeness"] > 0.9


def test_a_blurred_truth_is_told_by_sharpness_and_fd(lively):
    from reference.evaluate import measure
    clip, stats, _ = lively
    m = measure(blurred(clip.frames), clip, CHUNK, stats)
    assert m["sharpness"] < 0.2 and m["fd"] > 1.0
    assert m["psnr"] > 28                                  # while PSNR still calls it close


def test_grain_on_a_blurred_truth_is_not_sharpness(lively):
    """Faint flickering grain (sigma 2 levels, 42 dB) on the blurred truth: the pixel-scale
    Laplacian calls it 13x sharper than the blur alone, the 2x-pooled one that sharpness uses
    still calls it blur. Decoded video carries such grain (docs/training.md)."""
    from reference.metrics import sharpness
    clip, stats, _ = lively
    blur = blurred(clip.frames[:100])
    noise = np.random.default_rng(0).normal(0, 2, blur.shape[:3])[..., None]
    grain = np.clip(blur + noise, 0, 255).round().astype(np.uint8)
    pixel_scale = sharpness(grain, scale=1) / sharpness(clip.frames[:100], scale=1)
    assert pixel_scale > 0.4
    assert sharpness(grain) / sharpness(clip.frames[:100]) < 0.25


def test_the_temporal_mean_is_told_by_motion_blinks_and_fd(lively):
    """The per-pixel mean over time: what a model that averages every possible motion renders."""
    from reference.evaluate import measure
    clip, stats, _ = lively
    mean = np.repeat(clip.frames.astype(np.float32).mean(0, keepdims=True), len(clip.frames), 0)
    m = measure(mean.round().astype(np.uint8), clip, CHUNK, stats)
    assert m["motion"] < 0.05 and m["blink_rate"] == 0 and m["fd"] > 5.0
    assert m["sharpness"] < 0.8


def test_a_truth_without_blinks_is_told_by_the_blink_rate(lively):
    from reference.evaluate import measure
    clip, stats, no_blinks = lively
    m = measure(no_blinks, clip, CHUNK, stats)
    assert m["blink_rate"] == 0 and m["blink_completeness"] == 0
    assert 0.8 < m["motion"] < 1.05 and m["sharpness"] == pytest.approx(1.0, abs=0.05)


def test_a_frozen_head_that_lip_syncs_is_told_by_motion(lively):
    """The temporal mean with the true mouth pasted in: perfect lip sync, nothing else moves. The
    mouth is lip sync's to measure, so head motion calls this frozen."""
    from reference.evaluate import measure
    clip, stats, _ = lively
    top, bottom, left, right = clip.mouth_box
    frozen = np.repeat(clip.frames.astype(np.float32).mean(0, keepdims=True), len(clip.frames), 0)
    frozen = frozen.round().astype(np.uint8)
    frozen[:, max(top, 0):bottom, max(left, 0):right] = clip.frames[:, max(top, 0):bottom, max(left, 0):right]
    m = measure(frozen, clip, CHUNK, stats)
    assert m["motion"] < 0.05 and m["lip_sync_corr"] > 0.95


def test_blinks_are_dips_of_blink_length_between_open_eyes():
    fps, open_ = 25, np.ones(25 * 60)
    signal = open_.copy()
    signal[100:105] = 0.1                       # a blink: 5 frames (0.2 s)
    signal[300] = 0.0                           # one frame of flicker: not a blink
    signal[500:560] = 0.0                       # 2.4 s shut: not a blink either
    signal[800:803] = 0.3                       # a half blink, 3 frames
    found = metrics.blinks(signal, fps)
    assert found["count"] == 2 and found["rate_per_min"] == pytest.approx(2.0)
    assert found["completeness"] == pytest.approx((0.9 + 0.7) / 2)
    # The depth asked is a share of the truth's open eyes: eyes rendered at 0.3 of it blink by
    # their own level, and their flat dips of 0.15 of the truth's are not blinks.
    assert metrics.blinks(signal * 0.3, fps)["count"] == 2
    assert metrics.blinks(signal * 0.15, fps, level=1.0)["count"] == 0


def test_blinks_of_dim_eyes_and_blinks_read_twice():
    # As the cpu VAE renders some identities: open eyes at 0.85 of the truth's white, a blink
    # dipping to 0.62 of it (never below 0.6), and a blink drawn as two dips; each counts once.
    fps = 25
    signal = np.full(fps * 20, 0.85)
    signal[100:110] = np.linspace(0.8, 0.62, 10)
    signal[300:312] = [0.7, 0.5, 0.3, 0.35, 0.45, 0.4, 0.3, 0.3, 0.5, 0.7, 0.8, 0.85]
    found = metrics.blinks(signal, fps, level=1.0)
    assert found["count"] == 2 and found["completeness"] == pytest.approx((0.38 + 0.7) / 2)
    # Eyes that never close below three quarters open do not blink, however they flicker.
    assert metrics.blinks(np.where(np.arange(len(signal)) % 20 < 10, 1.1, 0.8), fps, level=1.0)["count"] == 0


def test_eyes_that_wander_half_open_do_not_blink():
    # What a generated stream did on a fresh identity (2026-12-02): open eyes settled at about
    # half the open level and wandered about 0.6 of it, every crossing a "blink" before the
    # figure asked for the eyes to open again. The wander moves at most 0.18 in 0.6 s. One true
    # blink before the eyes settle counts.
    fps = 25
    t = np.arange(fps * 60) / fps
    signal = 0.58 + 0.1 * np.sin(2 * np.pi * t / 2.9) + 0.06 * np.sin(2 * np.pi * t / 4.3)
    signal[:75] = 1.0
    signal[25:37] = 0.05                        # a blink of 12 frames, as the lively data's
    found = metrics.blinks(signal, fps, level=1.0)
    assert found["count"] == 1 and found["completeness"] == pytest.approx(0.95)
    assert ((signal[75:] < 0.6) & (signal[74:-1] >= 0.6)).sum() > 20     # what "blinked" before
    # Dips as deep as the wander's range, between eyes that open again, are blinks: 37 of 8 frames.
    dips = np.full(len(t), 0.95)
    for start in range(20, len(t) - 20, 40):
        dips[start:start + 8] = 0.45
    assert metrics.blinks(dips, fps, level=1.0)["count"] == 37
    # Shut at the start or at the end: never seen open on one side, not counted.
    edges = np.ones(fps * 10)
    edges[:5] = edges[-5:] = 0.0
    assert metrics.blinks(edges, fps)["count"] == 0


def test_frechet_distance_of_known_gaussians():
    rng = np.random.default_rng(0)
    a = rng.standard_normal((4000, 3))
    b = rng.standard_normal((4000, 3)) * 2 + np.array([1.0, 0, 0])
    # |mu|^2 = 1; per dimension (1 + 4 - 2 * 2) = 1, three dimensions
    assert metrics.frechet_distance(a, b) == pytest.approx(4.0, rel=0.05)
    assert metrics.frechet_distance(a, a) == pytest.approx(0.0, abs=1e-9)


# ---- restless heads: the mouth and the eyes read in the video moved back ----------------------

def test_head_offsets_find_a_known_translation():
    portrait = SyntheticTalkingHeads(128, split="eval", motion="restless").clip(2, 1).reference
    shifts = np.array([(0, 0), (3, -5), (-7, 2), (4, 9)])
    frames = np.stack([np.roll(portrait, tuple(s), (0, 1)) for s in shifts])
    assert np.array_equal(metrics.head_offsets(frames, portrait, 10), shifts)
    assert np.array_equal(metrics.undo_offsets(frames, shifts), np.repeat(portrait[None], 4, 0))
    with pytest.raises(ValueError, match="max_shift"):
        metrics.head_offsets(frames, portrait, 0)


def test_a_restless_truth_is_in_sync_where_grown_boxes_catch_hair():
    """A long-haired head shifting its posture: its grown mouth box catches the hair, so the
    truth read there is out of sync with itself; the benchmark reads the video moved back."""
    from reference.evaluate import measure
    clip = SyntheticTalkingHeads(256, motion="restless").clip(1, 10 * CHUNK)
    raw = metrics.lip_sync(metrics.mouth_opening(clip.frames, clip.mouth_box), clip.mouth_open)
    assert raw["corr"] < 0.8
    m = measure(clip.frames, clip, CHUNK)
    assert m["lip_sync_corr"] > 0.95 and m["motion"] == pytest.approx(1.0)


def test_the_truths_head_is_searched_once_per_clip(monkeypatch):
    """measure_both hands the truth's head offsets from truth_stats to its measure: one search
    of the true video, one of the stream; the figures are those of searching again."""
    from reference import evaluate
    clip = SyntheticTalkingHeads(128, motion="restless").clip(1, 4 * CHUNK)
    video = np.roll(clip.frames, 3, axis=2)
    calls, search = [], metrics.head_offsets
    monkeypatch.setattr(metrics, "head_offsets", lambda frames, *a: calls.append(1) or search(frames, *a))
    generated, truth = evaluate.measure_both(video, clip, CHUNK)
    assert len(calls) == 2
    assert generated == evaluate.measure(video, clip, CHUNK)
    assert truth == evaluate.measure(clip.frames, clip, CHUNK)


def test_steady_offsets_take_out_brief_misses_and_keep_moves():
    ramp = np.stack([np.arange(40) // 2, -np.arange(40) // 3], 1)      # a head moving 20 px in 1.6 s
    step = np.repeat([[0, 0], [12, -9]], 20, axis=0)                      # a sudden move
    for true in (ramp, step, np.zeros((40, 2), dtype=np.int64)):
        missed = true.copy()
        missed[5] += (25, -30)                                            # one frame lost
        missed[30:34] += (-18, 21)                                        # four frames lost
        # a miss inside the ramp moves the median along it by up to 4 frames: 2 pixels, not 30
        assert np.abs(metrics.steady_offsets(missed) - true).max() <= 2
    with pytest.raises(ValueError, match="odd"):
        metrics.steady_offsets(ramp, frames=8)


def test_a_search_that_misses_on_decoded_video_adds_no_blinks():
    """Through a decoder the outlines are soft and grained and the head search loses the head on
    some frames; eyes read in the wrong place dip like blinks. Steadied, the search reads the
    eyes as the truth's offsets do. The truth blurred (9 px) and grained (sigma 25) stands in for
    a decoder here (it blinks 6 times in these 19 s; the raw search reads 15)."""
    from reference.evaluate import steady_view, truth_stats
    clip = SyntheticTalkingHeads(256, split="eval", motion="restless").clip(3, 20 * CHUNK)
    truth = truth_stats(clip)
    noise = np.random.default_rng(0).normal(0, 25, clip.frames.shape)
    decoded = np.clip(blurred(clip.frames, 9) + noise, 0, 255).round().astype(np.uint8)

    def blink_count(offsets):
        steady, _, eyes = steady_view(decoded, clip, offsets)
        return metrics.blinks(metrics.eye_openness(steady, eyes), level=truth["eyes_open"])["count"]
    at_truths = blink_count(truth["offsets"])
    raw_search = metrics.head_offsets(decoded, clip.reference, 2 * max(clip.posture_reach))
    assert np.abs(raw_search - truth["offsets"]).max(1).mean() > 5        # pixels, per frame
    assert blink_count(raw_search) >= at_truths + 4                       # the misses' ghost blinks
    assert abs(blink_count(None) - at_truths) <= 1                        # steady_view's own search
