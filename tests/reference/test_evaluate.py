"""``rest-fast eval``: the quality benchmark runs end to end and reports what it prints."""
import json

import numpy as np
import pytest
import torch

from reference.checkpoint import save_checkpoint
from reference.data.synthetic import SyntheticTalkingHeads
from reference.evaluate import evaluate, format_table, rescore, teacher_generate, vae_reconstruct
from reference.model import RestModel, video_tensor_to_uint8
from rest_fast.cli import main
from tests.conftest import make_tiny_config


@pytest.fixture(scope="module")
def tiny_model():
    return RestModel.random(make_tiny_config()).eval()


@pytest.mark.parametrize("mode", ["student", "teacher", "teacher-forced", "vae"])
def test_evaluate_reports_every_figure(tiny_model, mode):
    report = evaluate(tiny_model, mode=mode, identities=1, seconds=2.0, steps=1)
    assert report["seconds"] == pytest.approx(2.88)  # whole chunks
    for key in ("lip_sync_corr", "lip_sync_best_offset", "drift_first_10s", "boundary_smoothness",
                "psnr", "ssim"):
        assert np.isfinite(report["generated"][key]), key
    truth = report["ground_truth"]
    # The measurements are calibrated on the true video: perfect sync, no drift, seamless.
    assert truth["lip_sync_corr"] > 0.9 and truth["lip_sync_best_offset"] == 0
    assert truth["drift_first_10s"] == 0 and truth["psnr"] == float("inf")
    table = format_table(report)
    assert "lip sync" in table and "SSIM" in table
    # The report names what it measured: the sampler (none for the VAE) and the decoder.
    cfg = tiny_model.cfg.sampling
    if mode == "vae":
        assert "sampler" not in report
    else:
        branches = {"none": 1, "joint": 2, "multi": 3}[cfg.cfg_mode]
        assert report["sampler"] == {"steps": 1, "cfg_mode": cfg.cfg_mode, "cfg_scale": cfg.cfg_scale,
                                     "dit_forwards_per_chunk": branches, "outside_training": None}
    assert report["decoder"] == tiny_model.cfg.vae.decoder


def test_teacher_generates_the_requested_frames(tiny_model):
    cfg = tiny_model.cfg
    audio = np.zeros(int(1.5 * cfg.speech.sample_rate), np.float32)
    frames = teacher_generate(tiny_model, np.zeros((64, 64, 3), np.uint8), audio, steps=1)
    assert frames.shape == (38, 64, 64, 3)


def test_teacher_forcing_continues_each_true_chunk_clean(tiny_model, monkeypatch):
    """Teacher forcing: every chunk after the first is drawn beside the true chunk before it,
    encoded as the training pool encodes a clip ([portrait | frames]) and held clean (t = 0), and
    the video it returns holds only the drawn chunks."""
    cfg = tiny_model.cfg
    chunk, c = cfg.frames_per_chunk, cfg.chunk_latent_frames
    clip = SyntheticTalkingHeads.for_config(cfg, split="eval", motion="lively").clip(0, 3 * chunk)
    calls, forward = [], tiny_model.dit.forward_teacher
    monkeypatch.setattr(tiny_model.dit, "forward_teacher",
                        lambda x, t, audio: calls.append((x.clone(), t.clone())) or forward(x, t, audio))
    video = teacher_generate(tiny_model, clip.reference, clip.audio, steps=2, cfg_mode="none",
                             truth=clip.frames)
    assert video.shape == clip.frames.shape
    assert len(calls) == 3 * 2                                   # three chunks, two steps each
    first_x, first_t = calls[0]
    assert first_x.shape[2] == 1 + c and (first_t[:, 1:] == 1).all()    # the portrait alone
    for k in (1, 2):
        with torch.inference_mode():
            whole = np.concatenate([clip.reference[None], clip.frames[(k - 1) * chunk:k * chunk]])
            x = torch.from_numpy(whole).permute(3, 0, 1, 2)[None].float() / 127.5 - 1.0
            true_latents = tiny_model.normalize(tiny_model.vae.encode(x))[:, :, 1:]
        for step in range(2):
            x, t = calls[2 * k + step]
            assert x.shape[2] == 1 + 2 * c
            torch.testing.assert_close(x[:, :, 1:1 + c], true_latents)
            assert (t[:, :1 + c] == 0).all() and (t[:, 1 + c:] == 1 - step / 2).all()
    # The first chunk is drawn from the portrait alone; the next ones follow the truth they are given.
    other = teacher_generate(tiny_model, clip.reference, clip.audio, steps=2, cfg_mode="none",
                             truth=clip.frames[::-1].copy())
    assert np.array_equal(other[:chunk], video[:chunk]) and not np.array_equal(other[chunk:], video[chunk:])
    with pytest.raises(ValueError, match="true frames"):
        teacher_generate(tiny_model, clip.reference, clip.audio, steps=1, truth=clip.frames[:chunk])


def test_eval_cli_prints_the_table_and_writes_json(tmp_path, tiny_model, capsys):
    ckpt = save_checkpoint(tiny_model, tmp_path / "ckpt")
    out = tmp_path / "eval.json"
    assert main(["eval", "--checkpoint", str(ckpt), "--identities", "1", "--seconds", "1",
                 "--steps", "1", "--json", str(out), "--quiet"]) == 0
    printed = capsys.readouterr().out
    report = json.loads(out.read_text())
    assert f"{report['generated']['ssim']:.3f}" in printed
    assert main(["eval", "--checkpoint", str(tmp_path / "missing"), "--quiet"]) == 2


def test_saved_frames_rescore_to_the_same_report(tmp_path, tiny_model):
    # A change to a figure is re-measured on kept frames instead of generating again; the kept
    # frames are the stream itself, so every figure comes back as it was printed.
    report = evaluate(tiny_model, identities=2, seconds=1.0, steps=1, first_identity=1,
                      motion="lively", frames_dir=tmp_path / "frames")
    assert sorted(p.name for p in (tmp_path / "frames").iterdir()) == [
        "config.json", "identity_1.npz", "identity_2.npz", "report.json"]
    again = rescore(tmp_path / "frames")
    assert again["first_identity"] == 1 and again["data"] == "lively" and again["sampler"] == report["sampler"]
    for row in ("generated", "ground_truth"):
        for key, value in report[row].items():
            assert again[row][key] == pytest.approx(value, rel=1e-6, abs=1e-9), (row, key)
    # What is measured is what is kept: identity 1's true video in place of its stream scores as the truth.
    with np.load(tmp_path / "frames" / "identity_1.npz") as saved:
        clip = SyntheticTalkingHeads.for_config(tiny_model.cfg, split="eval", motion="lively").clip(
            1, len(saved["frames"]))
    np.savez_compressed(tmp_path / "frames" / "identity_1.npz", frames=clip.frames)
    rows = rescore(tmp_path / "frames")["per_identity"]
    assert rows[0]["psnr"] == float("inf") and rows[1]["psnr"] == pytest.approx(report["per_identity"][1]["psnr"])


def test_eval_cli_rescore(tmp_path, tiny_model, capsys):
    ckpt = save_checkpoint(tiny_model, tmp_path / "ckpt")
    assert main(["eval", "--checkpoint", str(ckpt), "--identities", "1", "--seconds", "1", "--steps", "1",
                 "--save-frames", str(tmp_path / "frames"), "--quiet"]) == 0
    first = capsys.readouterr().out
    out = tmp_path / "again.json"
    assert main(["eval", "--rescore", str(tmp_path / "frames"), "--json", str(out), "--quiet"]) == 0
    assert capsys.readouterr().out == first and json.loads(out.read_text())["identities"] == 1
    # Nothing to rescore, or nothing to evaluate: a usage error naming what to pass.
    assert main(["eval", "--rescore", str(tmp_path / "missing"), "--quiet"]) == 2
    assert "--save-frames" in capsys.readouterr().err
    assert main(["eval", "--quiet"]) == 2
    assert "--checkpoint" in capsys.readouterr().err


def test_sharpness_is_read_against_the_vaes_rendering_of_the_truth(tmp_path, tiny_model, capsys):
    """A stream's sharpness is over the truth as the model's VAE draws it (the VAE run scores 1),
    its floor over the truth itself; the kept report carries the reference for --rescore, and a
    kept run without one is read against the VAE of --checkpoint, or else the truth, with a warning."""
    from reference.evaluate import floor_figures, truth_stats
    vae = evaluate(tiny_model, mode="vae", identities=1, seconds=1.0, motion="lively")
    assert vae["sharpness_reference"] == "vae" and vae["generated"]["sharpness"] == pytest.approx(1.0)
    clip = SyntheticTalkingHeads.for_config(tiny_model.cfg, split="eval", motion="lively").clip(
        0, round(vae["seconds"] * tiny_model.cfg.fps))
    truth = truth_stats(clip)
    assert vae["ground_truth"]["sharpness"] == pytest.approx(truth["sharpness"] / vae["reference_sharpness"][0])
    assert vae["floor"]["sharpness"] == pytest.approx(floor_figures(
        SyntheticTalkingHeads.for_config(tiny_model.cfg, split="eval", motion="lively"), 0, clip, truth)["sharpness"])
    assert "generated / VAE's truth" in format_table(vae)

    ckpt = save_checkpoint(tiny_model, tmp_path / "ckpt")
    kept = tmp_path / "frames"
    report = evaluate(tiny_model, identities=1, seconds=1.0, steps=1, motion="lively", frames_dir=kept)
    saved = json.loads((kept / "report.json").read_text())
    assert saved["reference_sharpness"] == report["reference_sharpness"]
    del saved["reference_sharpness"]               # a run kept before the reference existed
    (kept / "report.json").write_text(json.dumps(saved))
    old = rescore(kept)
    assert old["sharpness_reference"] == "truth" and "reference_sharpness" not in old
    assert rescore(kept, tiny_model)["generated"]["sharpness"] == pytest.approx(report["generated"]["sharpness"])
    assert main(["eval", "--rescore", str(kept), "--quiet"]) == 0
    assert "keeps no VAE rendering" in capsys.readouterr().err
    assert main(["eval", "--rescore", str(kept), "--checkpoint", str(ckpt), "--quiet"]) == 0
    assert "VAE's truth" in capsys.readouterr().out


@pytest.mark.parametrize("frames", [1, 9, 30, 49, 50])
def test_vae_reconstruction_window_by_window(tiny_model, frames):
    """Any length comes back whole; windows of 1 + 8k frames join where they overlap, and one
    window that covers the clip equals the whole-clip reconstruction."""
    video = (np.random.default_rng(0).random((frames, 64, 64, 3)) * 255).astype(np.uint8)
    out = vae_reconstruct(tiny_model, video, window_latents=2)
    assert out.shape == video.shape and out.dtype == np.uint8
    if frames == 49:  # one window of 1 + 6 * 8 frames: the whole-clip reconstruction
        x = torch.from_numpy(video).permute(3, 0, 1, 2)[None].float() / 127.5 - 1.0
        with torch.no_grad():
            whole = video_tensor_to_uint8(tiny_model.vae.decode(tiny_model.vae.encode(x)))
        np.testing.assert_array_equal(vae_reconstruct(tiny_model, video, window_latents=6), whole)


def test_a_later_window_of_identities_is_the_same_streams(tiny_model):
    # Identity i is the same clip with the same noise whichever window holds it, so a setting chosen
    # on identities 0-1 can be checked on identities from 2 on and a row of either set reproduced.
    both = evaluate(tiny_model, identities=2, seconds=1.0, steps=1)
    second = evaluate(tiny_model, identities=1, seconds=1.0, steps=1, first_identity=1)
    assert second["first_identity"] == 1
    assert second["per_identity"][0]["psnr"] == pytest.approx(both["per_identity"][1]["psnr"], rel=1e-4)
    assert second["per_identity"][0]["psnr"] != pytest.approx(both["per_identity"][0]["psnr"], rel=1e-4)
    assert "held-out identity 1 x" in format_table(second)


def test_eval_cli_refuses_an_empty_window(tmp_path, capsys):
    for bad in (["--identities", "0"], ["--first-identity", "-1"]):
        assert main(["eval", "--checkpoint", str(tmp_path / "unused"), *bad, "--quiet"]) == 2
        assert "--first-identity" in capsys.readouterr().err


def test_worse_than_reads_ratios_by_their_distance_from_one_and_ignores_the_floor():
    from reference.evaluate import worse_than
    base = {"motion": 0.9, "sharpness": 1.0, "blink_rate_ratio": 0.8, "ghost": 1.0, "fd": 50.0,
            "lip_sync_corr": 0.6, "psnr": 22.0}
    # Too much is as far off as too little: motion 1.86 or sharpness 1.5 (grain) do not "beat" the base.
    assert worse_than({**base, "motion": 1.86, "sharpness": 1.5}, base) == ["motion", "sharpness"]
    assert worse_than({**base, "motion": 1.05, "blink_rate_ratio": 1.2}, base) == []
    assert worse_than({**base, "ghost": 1.3, "lip_sync_corr": 0.5, "psnr": 19.0}, base) == [
        "ghost", "lip_sync_corr", "psnr"]
    assert worse_than({**base, "ghost": 0.5}, base) == []             # one-sided: less ghost is blur
    # A difference inside a figure's noise floor is none: FD 60 against 50 with a floor of 13.
    assert worse_than({**base, "fd": 60.0}, base) == ["fd"]
    assert worse_than({**base, "fd": 60.0}, base, floor={"fd": 13.0}) == []
    assert worse_than({**base, "fd": 64.0}, base, floor={"fd": 13.0}) == ["fd"]


def test_a_report_carries_each_figures_noise_floor(tiny_model):
    """Distribution figures get another window of the truth; with two seeds every figure gets
    its spread over seeds, the paired figures' only floor; the table prints them."""
    report = evaluate(tiny_model, identities=1, seconds=1.0, steps=1, motion="lively", seeds=2)
    assert report["seeds"] == 2 and len(report["per_seed"]) == 2 and len(report["per_identity"]) == 1
    assert set(report["floor"]) >= {"motion", "ghost", "blink_rate_ratio", "sharpness", "fd"}
    assert report["floor"]["fd"] > 0 and "lip_sync_corr" not in report["floor"]
    assert report["seed_spread"]["psnr"] > 0        # two noise draws, two streams
    kinds = report["floor_kind"]
    assert kinds["fd"] == "another window of the truth and spread over seeds"
    assert kinds["lip_sync_corr"] == "spread over seeds"
    assert report["noise_floor"]["psnr"] == pytest.approx(report["seed_spread"]["psnr"])
    assert report["noise_floor"]["fd"] >= report["floor"]["fd"]
    mean = {k: np.mean([r[k] for r in report["per_seed"]]) for k in ("psnr", "fd")}
    assert report["generated"]["psnr"] == pytest.approx(mean["psnr"]) and report["generated"]["fd"] == pytest.approx(mean["fd"])
    table = format_table(report)
    assert "floor" in table and "ghost" in table and "FD: another window of the truth scores" in table
    single = evaluate(tiny_model, identities=1, seconds=1.0, steps=1, motion="lively")
    assert single["seed_spread"] == {} and single["noise_floor"]["lip_sync_corr"] == 0
    assert single["floor_kind"]["psnr"].startswith("none")
    # The same window of truth whatever the seeds: the floor is the truth's, not the stream's.
    assert single["floor"]["fd"] == pytest.approx(report["floor"]["fd"], rel=1e-6)
    with pytest.raises(ValueError, match="seeds"):
        evaluate(tiny_model, identities=1, seconds=1.0, steps=1, seeds=0)
