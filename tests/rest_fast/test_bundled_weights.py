"""The weights shipped in the package (rest_fast/assets/rest-cpu): present, small, loadable, and
trained. At an eighth of the paper's sampler's DiT forwards they are within 10% of it, beyond
each figure's noise floor, on every figure of the lively benchmark's two identities it was
measured on (two seeds' streams), blinks included, where one undistilled step freezes the head
and the eyes (and on four fresh identities: docs/training.md, "What distribution matching
gave"); a held-out face comes back
recognisable and seamless over a stream; and the mouth follows the speech, held-out synthetic
speech and the demo's real (espeak-ng) voice alike."""
from __future__ import annotations

import functools

import numpy as np
import pytest
import torch

from reference.checkpoint import load_checkpoint
from reference.data.synthetic import SyntheticTalkingHeads
from reference.evaluate import evaluate, measure, vae_reconstruct, worse_than
from reference.media import load_audio, load_image
from reference.metrics import boundary_smoothness, lip_sync, mouth_opening, psnr
from reference.pipeline import generate
from reference.report import loudness
from rest_fast import StreamingGenerator
from rest_fast.cli import demo_asset
from rest_fast.streaming import bundled_checkpoint

DEMO_IDENTITY = 1  # tools/make_demo_assets.py draws eval-split identity 1


@pytest.fixture(scope="module")
def bundled():
    path = bundled_checkpoint()
    assert path is not None, "rest_fast/assets/rest-cpu is missing: run tools/train_cpu_weights.sh"
    return path


def test_bundled_weights_are_small_and_load_as_the_cpu_preset(bundled):
    size = sum(p.stat().st_size for p in bundled.iterdir())
    assert size <= 20 * 2**20
    model = load_checkpoint(bundled)
    assert model.cfg.name == "cpu" and model.latent_mean.dtype == torch.float32
    assert model.latent_std.min() > 0  # the latent statistics were measured, not left at init


def test_bundled_default_is_two_unguided_steps_with_the_full_decoder(bundled):
    """The bundled default (docs/training.md, "What distribution matching gave"): the student
    distilled to two steps of one branch (a guidance of 8 distilled in: two DiT forwards a
    chunk), then trained by distribution matching against the paper's sampler, rendered by the
    full decoder. The light decoder is inside for --decoder light, and the scale 2 for
    --guidance joint."""
    cfg = load_checkpoint(bundled).cfg
    assert (cfg.sampling.steps, cfg.sampling.cfg_mode, cfg.sampling.cfg_scale) == (2, "none", 2.0)
    assert cfg.vae.decoder == "full" and cfg.vae.light_width > 0


# The paper's sampler (8 steps of Joint CFG at 6, 16 DiT forwards a chunk, full decoder) on the
# bundled undistilled student, which anyone can measure again: `rest-fast eval --checkpoint
# undistilled --data synthetic-lively --seeds 2` (2026-12-07, 2-core x86_64 CPU, lively data
# version 3; its motion, by the head search of abb8ad1, from `--rescore` of the kept streams of
# seed 0; its sharpness, over the VAE's rendering of the truth, likewise). The student the default
# was distilled from (tools/train_lively_weights.sh) scored the same within 2% on every figure it
# was measured on. And one undistilled, unguided step of that student: its clip features' motion
# (``feature_motion``), lively data version 2.
PAPER_SAMPLER_LIVELY = {"motion": 0.507, "ghost": 0.330, "blink_rate_ratio": 0.558,
                        "sharpness": 0.784, "fd": 108.0, "lip_sync_corr": 0.602, "drift_first_10s": 6.11,
                        "drift_last_10s": 6.24, "boundary_smoothness": 1.085, "psnr": 22.49, "ssim": 0.845}
ONE_UNDISTILLED_STEP_MOTION = 0.165


@pytest.fixture(scope="module")
def sixty_second_report(bundled):
    """``rest-fast eval --data synthetic-lively --seeds 2`` of the bundled default: 2 held-out
    identities x 60 s of held-out speech, head motion, blinks, gaze and expression drawn at
    random, each streamed from two seeds' noise (identity i from seeds i and i + 1: the streams
    of ``--seed 0`` and ``--seed 1``); the figures their mean, with each figure's noise floor. One
    seed's two minutes hold about 20 blinks, too few to rank samplers on (docs/training.md,
    "What distribution matching gave")."""
    model = load_checkpoint(bundled).eval()
    return evaluate(model, identities=2, seconds=60.0, motion="lively", seeds=2)


def test_bundled_default_is_within_ten_per_cent_of_the_paper_sampler_but_for_its_ghost(sixty_second_report):
    """The rule for the default: the cheapest sampler within 10% of 8 x 6 on every figure of the
    lively benchmark, ratios by their distance from the truth's 1, differences inside a figure's
    noise floor not counted (``reference.evaluate.worse_than``), over two seeds' streams. It holds
    on every figure but the ghost: the default draws a faint second pair of eyes and brows where
    the paper's sampler does not (0.42 against 0.33; the VAE's reconstruction of the truth 0.35),
    which the README's limits say. Measured 2026-12-07 (2-core CPU): motion 0.56 of the truth's
    (8 x 6: 0.51; floor 0.92-1.10), blink rate 0.49 (0.56; floor 0.26 wide),
    sharpness 0.78 of the VAE's rendering of the truth (8 x 6: 0.78), FD 98.1 (108.0; floor 19.4: the next minute of the same identities' truth),
    lip sync 0.602, drift 6.62 -> 6.83 (bars 6.72 -> 6.86: the narrowest margin; spread over seeds
    0.03 and 0.11), boundary 1.091, PSNR 22.04, SSIM 0.837. A regression test of what was
    measured, not proof that the rule holds in general: a figure newly worse fails it, and so
    would a ghost made good (then drop it from the allowance). Its clip features move five times
    as much as one undistilled, unguided step's (0.815 against 0.165), and it blinks where that
    step does not, which is what distillation is for."""
    report = sixty_second_report
    figures, floor = report["generated"], report["noise_floor"]
    assert worse_than(figures, PAPER_SAMPLER_LIVELY, 0.1, floor) == ["ghost"]
    assert figures["feature_motion"] > 2.5 * ONE_UNDISTILLED_STEP_MOTION
    assert figures["motion"] > 0.3 and figures["blink_rate"] > 0      # a frozen head scores ~0
    assert figures["drift_slope_per_min"] <= 0.3
    # The floors are the ones measured (the next minute of identities 0 and 1's truth): FD 19.4.
    assert 10 < report["floor"]["fd"] < 30 and report["floor_kind"]["fd"].startswith("another window")


def test_the_light_decoder_stays_close_to_the_full_one(bundled):
    """The bundled light decoder renders a held-out lively clip within 28 dB of the full
    decoder, as ``rest-fast eval --mode vae`` measures it (33.2 dB over 2 x 60 s);
    streaming decode equals whole decode for it (tests/reference/test_vae.py)."""
    model = load_checkpoint(bundled).eval()
    data = SyntheticTalkingHeads.for_config(model.cfg, split="eval", motion="lively")
    frames = data.clip(1, 73).frames
    full, light = vae_reconstruct(model, frames, which="full"), vae_reconstruct(model, frames, which="light")
    assert psnr(light, full) > 28.0


@pytest.fixture(scope="module")
def held_out_video(bundled):
    """8.64 s (9 chunks) of a held-out identity speaking held-out synthetic speech, its head,
    eyes and expression moving as they please, as ``rest-fast eval --data synthetic-lively``
    makes it: the frames and their figures."""
    model = load_checkpoint(bundled).eval()
    cfg = model.cfg
    clip = SyntheticTalkingHeads.for_config(cfg, split="eval", motion="lively").clip(0, 9 * cfg.frames_per_chunk)
    frames = generate(model, clip.reference, clip.audio, seed=0)
    return frames, measure(frames, clip, cfg.frames_per_chunk)


@pytest.fixture(scope="module")
def held_out_report(held_out_video):
    return held_out_video[1]


def test_a_held_out_face_comes_back_recognisable_and_seamless(held_out_report):
    g = held_out_report
    assert g["psnr"] > 17.0 and g["ssim"] > 0.8      # the held-out face, not noise or another face
    assert g["boundary_smoothness"] < 1.25            # no jump where chunks meet (measured 1.07)


def test_a_deliberate_seam_is_told_from_the_bundled_streams(held_out_video):
    """The seam measure is pinned on a real stream: moving every other chunk by 2 pixels (a head
    that jumps at each boundary) or brightening it by 4 levels lifts the figure past 1.5,
    while the stream itself stays near 1 (a measure that always said 1.0 would fail here)."""
    frames, report = held_out_video
    chunk = len(frames) // 9
    jumped, brightened = frames.copy(), frames.astype(np.int16)
    for k in range(1, 9, 2):
        part = slice(k * chunk, (k + 1) * chunk)
        jumped[part] = np.roll(frames[part], 2, axis=2)
        brightened[part] += 4
    brightened = np.clip(brightened, 0, 255).astype(np.uint8)
    assert report["boundary_smoothness"] < 1.25
    assert boundary_smoothness(jumped, chunk) > 1.5
    assert boundary_smoothness(brightened, chunk) > 1.5


def test_mouth_follows_held_out_speech(held_out_report):
    g = held_out_report
    # The VAE alone keeps 0.67 of the true mouth's correlation (docs/training.md); a DiT that
    # ignores its audio scores about 0.
    assert g["lip_sync_best_corr"] > 0.4 and abs(g["lip_sync_best_offset"]) <= 3


@functools.cache
def demo_mouth(**sampler) -> tuple[np.ndarray, np.ndarray]:
    """The bundled demo (espeak-ng speech, a held-out face) through the bundled weights: the
    mouth's opening per frame and the speech's loudness per frame (made once per sampler)."""
    gen = StreamingGenerator.from_pretrained(None, device="cpu", **sampler)
    cfg = gen.cfg
    audio = load_audio(demo_asset("demo_speech.wav"), cfg.speech.sample_rate)
    frames = gen.generate(load_image(demo_asset("demo_portrait.png"), cfg.resolution), audio, seed=0)
    box = SyntheticTalkingHeads(cfg.resolution, split="eval").identity(DEMO_IDENTITY).mouth_box(cfg.resolution)
    return mouth_opening(frames, box), loudness(audio, cfg.samples_per_frame, len(frames))


def test_demo_mouth_opens_and_closes_with_the_speech():
    """The demo's mouth opens during speech and closes in the pauses. Loudness stands in for the
    true opening, which real speech does not come with; it is a rough proxy (consonants are loud
    with the mouth nearly shut), and the voice is unlike the synthetic speech of training, hence
    the modest correlation asked for. Measured with the bundled default: range 0.35, 2.8x as
    open when loud as when quiet, correlation 0.25."""
    opening, loudness = demo_mouth()
    order, third = np.argsort(loudness), len(loudness) // 3
    assert opening.max() - opening.min() > 0.05          # it visibly opens and closes
    assert opening[order[-third:]].mean() > 2 * opening[order[:third]].mean()   # open when loud
    assert lip_sync(opening, loudness)["best_corr"] > 0.2


def test_demo_mouth_opens_wider_with_guidance():
    """On a voice unlike the training speech guidance is what opens the mouth wide (the synthetic
    benchmark cannot see this: docs/training.md, "Less work per chunk"): --guidance joint at the
    checkpoint's scale 2 opens it about 1.4x as far as the unguided default (range 0.48 against
    0.35, same decoder). The guidance of 8 distilled into the default already opens it (the
    one-step default of 2026-11, distilled at 6: 0.34, and 0.46 guided), so the margin asked for
    is 1.1x: a guidance that did nothing would fail it."""
    guided, _ = demo_mouth(cfg_mode="joint")
    unguided, _ = demo_mouth()
    assert guided.max() - guided.min() > 0.1
    assert guided.max() - guided.min() > 1.1 * (unguided.max() - unguided.min())
