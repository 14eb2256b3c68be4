"""Each eval figure against the fault it is meant to see: the truth degraded one way at a time
(blur, the temporal mean, a frozen frame, eyes that never close, a 5-frame delay, another
sentence's mouth, a head held still, a ghosted head, colour noise), on the held-out pair
(eval identities 0 and 1) and on fresh identities (6 and 7). Each scores worse than the truth on
its figure by more than the figure's noise floor (another window of the same identity's truth),
as ``worse_than`` judges it; and colour noise loses to a mildly blurred truth on every figure.

Clips are 16 s at 128 pixels (the clip encoder reads 64), so that the file runs in about a minute
on 2 cores; the benchmark's 256-pixel figures behave the same (measured on 10 s clips)."""
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from reference import evaluate, head, metrics
from reference.data.synthetic import FaceState, SyntheticTalkingHeads, render_frame

SIZE, FRAMES, CHUNK = 128, 400, 24
IDENTITIES = (0, 1, 6, 7)
POSE = ("dx", "dy", "roll", "yaw", "pitch")


def rerender(data, index: int, clip, **fields) -> np.ndarray:
    """The clip re-rendered from its truth, with ``fields`` (a per-frame array or a constant)
    in place of the truth's."""
    ident = data.identity(index)
    values = {f: np.broadcast_to(np.asarray(fields.get(f, clip.truth[f]), np.float64), (len(clip.frames),))
              for f in FaceState.__dataclass_fields__}
    return np.stack([render_frame(ident, SIZE, FaceState(**{f: float(v[n]) for f, v in values.items()}))
                     for n in range(len(clip.frames))])


def gaussian_blur(frames: np.ndarray, sigma: float) -> np.ndarray:
    """Each frame blurred by a Gaussian of ``sigma`` pixels."""
    r = int(3 * sigma)
    g = torch.exp(-torch.arange(-r, r + 1).float() ** 2 / (2 * sigma ** 2))
    g = (g / g.sum()).repeat(3, 1, 1, 1)
    x = torch.from_numpy(frames).permute(0, 3, 1, 2).float()
    x = F.conv2d(F.pad(x, (r, r, 0, 0), mode="replicate"), g.view(3, 1, 1, -1), groups=3)
    x = F.conv2d(F.pad(x, (0, 0, r, r), mode="replicate"), g.view(3, 1, -1, 1), groups=3)
    return x.round().clamp(0, 255).byte().permute(0, 2, 3, 1).numpy()


def ghosted(frames: np.ndarray, shift=(3, 3), weight: float = 0.3) -> np.ndarray:
    """A faint second copy of each frame, ``shift`` pixels (dy, dx) away, blended in at ``weight``."""
    return ((1 - weight) * frames + weight * np.roll(frames, shift, (0, 1) if frames.ndim == 3 else (1, 2))
            ).round().astype(np.uint8)


def delayed(frames: np.ndarray, k: int) -> np.ndarray:
    return np.concatenate([np.repeat(frames[:1], k, axis=0), frames[:-k]])


@pytest.fixture(scope="module", params=IDENTITIES, ids=lambda i: f"identity{i}")
def scored(request):
    """One identity's truth, its noise floor, and every degradation's figures."""
    index = request.param
    data = SyntheticTalkingHeads(SIZE, split="eval", motion="lively")
    clip = data.clip(index, FRAMES)
    truth = evaluate.truth_stats(clip)
    floor = evaluate.floors(evaluate.floor_figures(data, index, clip, truth), {})["noise_floor"]
    later = data.states(index, 2 * FRAMES)     # another sentence's mouth: the next 16 s's
    frames = clip.frames
    mean = np.repeat(frames.astype(np.float32).mean(0, keepdims=True).round().astype(np.uint8), FRAMES, 0)
    degraded = {
        "blur": gaussian_blur(frames, 3.0),
        "temporal mean": mean,
        "frozen frame": np.repeat(frames[:1], FRAMES, 0),
        "eyes never close": rerender(data, index, clip, blink=0.0),
        "head held still": rerender(data, index, clip, **{f: 0.0 for f in POSE}),
        "ghosted head": ghosted(frames),
        "5-frame delay": delayed(frames, 5),
        "other words": rerender(data, index, clip, opening=later["opening"][FRAMES:],
                                spread=later["spread"][FRAMES:]),
    }
    distribution = {name: evaluate.measure_distribution(video, clip, truth) for name, video in degraded.items()}
    opening = {name: metrics.mouth_opening(video, clip.mouth_box) for name, video in degraded.items()}
    sync = {name: metrics.lip_sync(o, clip.mouth_open) for name, o in opening.items()}
    return index, clip, truth, floor, distribution, sync


# The figure each degradation is meant for (reference/evaluate.py's keys).
# (Eyes that never close: the blink figure's own test below, on a minute; 16 s hold 3-6 blinks,
# and another 16 s of one identity's truth may blink twice as often, a floor as large as the fault.)
MEANT_FOR = {"blur": "sharpness", "temporal mean": "motion", "frozen frame": "motion",
             "head held still": "motion", "ghosted head": "ghost"}


def test_the_truth_scores_one_and_its_floor_is_below_the_faults(scored):
    index, clip, truth, floor, distribution, _ = scored
    own = evaluate.measure_distribution(clip.frames, clip, truth)
    for key in ("motion", "ghost", "blink_rate_ratio", "sharpness"):
        assert own[key] == pytest.approx(1.0, abs=1e-9), key
    assert own["fd"] == pytest.approx(0.0, abs=1e-6)
    # Another 16 s of the same identity is no fault: its floor stays short of a frozen head. (Head
    # motion reads the outline alone, which a lively head moves in bursts: the next 16 s of
    # identity 1 moves 1.7 times as far, as its drawn translation and turns do.)
    assert floor["motion"] < 0.8 and floor["ghost"] < 0.25 and floor["sharpness"] < 0.15


@pytest.mark.parametrize("name", sorted(MEANT_FOR))
def test_each_distribution_fault_is_worse_than_the_truth_beyond_its_floor(scored, name):
    index, _, _, floor, distribution, _ = scored
    key, figures = MEANT_FOR[name], distribution[name]
    truth_figures = {key: evaluate.TRUTH_SCORES[key]}
    assert key in evaluate.worse_than(figures, truth_figures, 0.1, floor), (index, name, figures[key], floor[key])


def test_a_head_held_still_reads_still_and_only_there(scored):
    """The head motion figure reads the head, not pixels that change: re-rendered with its pose at
    0 (mouth, eyes, brows, gaze moving as drawn) it scores near 0; the eyes held open, near 1."""
    _, _, _, floor, distribution, _ = scored
    assert distribution["head held still"]["motion"] < 0.05
    assert distribution["temporal mean"]["motion"] < 0.05 and distribution["frozen frame"]["motion"] < 0.05
    assert abs(distribution["eyes never close"]["motion"] - 1) < 0.1
    assert distribution["eyes never close"]["blink_rate_ratio"] == 0


def test_a_ghost_is_a_second_copy_not_a_moved_head(scored):
    """A second copy at 0.3, 3 pixels down and right, lifts the ghost figure by a third or more;
    the head moving (the eyes held open) leaves it near the truth's 1."""
    _, _, _, floor, distribution, _ = scored
    assert distribution["ghosted head"]["ghost"] > 1.3
    assert abs(distribution["eyes never close"]["ghost"] - 1) < max(0.15, floor["ghost"])


def test_lip_sync_sees_a_delay_and_other_words(scored):
    _, clip, _, _, _, sync = scored
    true = metrics.lip_sync(metrics.mouth_opening(clip.frames, clip.mouth_box), clip.mouth_open)
    assert true["corr"] > 0.9
    assert sync["5-frame delay"]["best_offset"] == 5 and sync["5-frame delay"]["corr"] < true["corr"] - 0.2
    assert sync["other words"]["best_corr"] < 0.5
    # Everything that leaves the mouth alone keeps it in sync (the figure is the mouth's alone).
    for name in ("eyes never close", "head held still"):
        assert sync[name]["corr"] > true["corr"] - 0.05, name


def test_colour_noise_loses_to_a_mildly_blurred_truth_on_every_figure():
    """The issue's "colour noise loses to the default on every figure", CPU-cheap: noise against
    the truth blurred at sigma 1 (a plausible decoded stream), on the held-out identity 0. Every
    judged figure but chunk-boundary smoothness, which noise has none of (it has no seams: its
    figure is 1, as the truth's)."""
    data = SyntheticTalkingHeads(SIZE, split="eval", motion="lively")
    clip = data.clip(0, FRAMES)
    truth = evaluate.truth_stats(clip)
    floor = evaluate.floors(evaluate.floor_figures(data, 0, clip, truth), {})["noise_floor"]
    noise = np.random.default_rng(0).integers(0, 256, clip.frames.shape, dtype=np.uint8)
    plausible = evaluate.measure(gaussian_blur(clip.frames, 1.0), clip, CHUNK, truth)
    noisy = evaluate.measure(noise, clip, CHUNK, truth)
    judged = evaluate.TO_ONE | evaluate.HIGHER_IS_BETTER | evaluate.LOWER_IS_BETTER
    assert set(evaluate.worse_than(noisy, plausible, 0.1, floor)) == judged - {"boundary_smoothness"}
    # and the blurred truth is worse than noise on nothing but the seams (blur softens the jumps
    # between frames inside chunks and across them alike; noise reads 1 there)
    assert set(evaluate.worse_than(plausible, noisy, 0.1, floor)) <= {"boundary_smoothness"}
    # Noise "moved" and was "sharp" (ratios far above the truth's 1): worse, not better.
    assert noisy["motion"] > 2 and noisy["sharpness"] > 2


def test_sharpness_is_judged_against_the_renderers_truth():
    """Streams decoded through a VAE are as sharp as its rendering of the truth at best (the cpu
    VAE's: ~0.08 of the cartoon truth's). Here the truth blurred at sigma 1 stands in for that
    rendering. Against the truth, a blotchy stream (half noise, drawn by the same renderer) reads
    nearer 1 than the faithful rendering itself, so noise won on sharpness; against the
    rendering, the faithful stream scores 1 and the blotchy one loses."""
    data = SyntheticTalkingHeads(SIZE, split="eval", motion="lively")
    clip = data.clip(0, 200)
    rendered = gaussian_blur(clip.frames, 1.0)
    noise = np.random.default_rng(0).integers(0, 256, clip.frames.shape, dtype=np.uint8)
    blotchy = gaussian_blur(((clip.frames.astype(np.float32) + noise) / 2).astype(np.uint8), 1.0)
    against_truth = evaluate.truth_stats(clip)
    against_rendering = evaluate.truth_stats(clip, metrics.sharpness(rendered))
    assert against_rendering["sharpness_reference"] == "vae" and against_truth["sharpness_reference"] == "truth"
    assert against_rendering["true_sharpness"] == against_truth["sharpness"]

    def figure(video, truth):
        return {"sharpness": evaluate.measure_distribution(video, clip, truth)["sharpness"]}
    assert figure(rendered, against_rendering)["sharpness"] == pytest.approx(1.0)
    assert evaluate.worse_than(figure(rendered, against_truth), figure(blotchy, against_truth)) == ["sharpness"]
    assert evaluate.worse_than(figure(blotchy, against_rendering), figure(rendered, against_rendering)) == ["sharpness"]
    assert figure(blotchy, against_rendering)["sharpness"] > 1.2          # grain: above, not below, 1


def test_head_pose_follows_the_drawn_pose():
    """On lively truth the pose's columns follow the drawn translation, nod and turn."""
    data = SyntheticTalkingHeads(SIZE, split="eval", motion="lively")
    clip = data.clip(1, 250)
    pose, t = head.head_pose(clip.frames, clip), clip.truth
    assert np.corrcoef(pose[:, 0], t["dy"])[0, 1] > 0.9 and np.corrcoef(pose[:, 1], t["dx"])[0, 1] > 0.6
    assert np.corrcoef(pose[:, 2], t["pitch"])[0, 1] > 0.6 and np.corrcoef(pose[:, 3], t["yaw"])[0, 1] > 0.5
    still = rerender(data, 1, clip, **{f: 0.0 for f in POSE})
    assert np.abs(head.head_pose(still, clip)).max() < 0.5          # pixels


@pytest.mark.parametrize("index", (0, 1))
def test_a_soft_grainy_truth_keeps_its_head_motion(index):
    """Decoded video is soft and grainy (the VAE's reconstruction of the truth: sharpness ~0.08 of
    the truth's), and its head moves as the truth's: its motion is 1 within the floor. The truth
    blurred at sigma 3 (at 128 pixels) with grain on it scores no further from 1 than the next 10 s
    of the same identity's truth (or 0.3), where a search that matched the grain scored 2.4-3.3."""
    data = SyntheticTalkingHeads(SIZE, split="eval", motion="lively")
    clip, later = data.clip(index, 250), data.clip(index, 250, start=250)
    grain = np.random.default_rng(index).normal(0, 3, clip.frames.shape)
    soft = (gaussian_blur(clip.frames, 3.0) + grain).round().clip(0, 255).astype(np.uint8)
    truth = head.head_motion(head.head_pose(clip.frames, clip))
    floor = abs(head.head_motion(head.head_pose(later.frames, later)) / truth - 1)
    assert abs(head.head_motion(head.head_pose(soft, clip)) / truth - 1) < max(floor, 0.3)


@pytest.mark.parametrize("index", IDENTITIES)
def test_eyes_that_never_close_are_told_beyond_the_blink_floor(index):
    """A minute at 64 pixels (the eyes' white still reads every drawn blink there): the truth
    re-rendered with the eyes never closing has no blinks, further from the truth's rate than
    the next minute of the same identity's truth (which blinks 0.6-1.4 times as often)."""
    data = SyntheticTalkingHeads(64, split="eval", motion="lively")
    clip, later = data.clip(index, 1500), data.clip(index, 1500, start=1500)
    ident = data.identity(index)
    open_eyes = np.stack([render_frame(ident, 64, FaceState(**{f: 0.0 if f == "blink" else float(clip.truth[f][n])
                                                               for f in FaceState.__dataclass_fields__}))
                          for n in range(len(clip.frames))])
    openness = metrics.eye_openness(clip.frames, clip.eye_boxes)
    level = metrics.open_level(openness)
    rate = metrics.blinks(openness, level=level)["rate_per_min"]

    def ratio(frames):
        return {"blink_rate_ratio": metrics.blinks(metrics.eye_openness(frames, clip.eye_boxes),
                                                   level=level)["rate_per_min"] / rate}
    drawn = int((np.diff((clip.truth["blink"] > 0.5).astype(int)) == 1).sum())
    assert rate == pytest.approx(drawn, abs=2)                      # a minute: blinks per minute
    floor = {"blink_rate_ratio": abs(ratio(later.frames)["blink_rate_ratio"] - 1)}
    assert floor["blink_rate_ratio"] < 0.5
    assert ratio(open_eyes)["blink_rate_ratio"] == 0
    assert evaluate.worse_than(ratio(open_eyes), {"blink_rate_ratio": 1.0}, 0.1, floor) == ["blink_rate_ratio"]
