"""The sampler rules of reference.pipeline.untrained_sampler hold in the fast path, in every CLI
command and for the bundled checkpoints: a sampler the weights were not made for is refused in
one line before any work, and ``--force`` / ``force=True`` runs it with a warning."""
import numpy as np
import pytest

from reference.checkpoint import load_config
from reference.pipeline import SamplerError, untrained_sampler
from rest_fast.cli import demo_asset, main
from rest_fast.streaming import BUNDLED, StreamingGenerator, bundled_checkpoint, load_named_checkpoint
from tests.conftest import speech_like


def test_the_generator_refuses_steps_and_guidance_at_construction(distilled_dir):
    model = load_named_checkpoint(distilled_dir)
    with pytest.raises(SamplerError, match="8 steps"):
        StreamingGenerator(model, steps=8)
    with pytest.raises(SamplerError, match="Multi CFG"):
        StreamingGenerator(model, cfg_mode="multi")


def test_a_streams_scale_is_refused_at_open_and_the_generator_goes_on(distilled_dir):
    model = load_named_checkpoint(distilled_dir)
    gen = StreamingGenerator(model, capacity=2, cfg_mode="joint")      # at the checked scale 2
    image = np.zeros((64, 64, 3), np.uint8)
    with pytest.raises(SamplerError, match="Joint CFG at scale 6"):
        gen.open(image, cfg_scale=6.0)
    assert gen.streams == []
    with gen.open(image) as stream:
        assert len(stream.push(speech_like(1.5))) > 0     # a chunk and its lookahead
    forced = StreamingGenerator(model, cfg_mode="joint", force=True)
    with pytest.warns(UserWarning, match="running it anyway"):
        forced.open(image, cfg_scale=6.0).close()


def cli_args(command, checkpoint, wav, tmp_path):
    common = ["--checkpoint", str(checkpoint), "--quiet"]
    return {"generate": ["generate", "--image", str(demo_asset("demo_portrait.png")), "--audio", wav,
                         "--out", str(tmp_path / "out.mp4")] + common,
            "stream": ["stream", "--audio", wav, "--no-pace"] + common,
            "eval": ["eval", "--identities", "1", "--seconds", "1"] + common,
            "serve": ["serve", "--port", "0"] + common}[command]


@pytest.mark.parametrize("command", ["generate", "stream", "eval", "serve"])
@pytest.mark.parametrize("override, what", [(["--steps", "8"], "8 steps"),
                                            (["--guidance", "joint", "--cfg", "6"], "Joint CFG at scale 6"),
                                            (["--guidance", "multi"], "Multi CFG")])
def test_every_command_refuses_in_one_line(command, override, what, distilled_dir, wav, tmp_path, capsys):
    assert main(cli_args(command, distilled_dir, wav, tmp_path) + override) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("rest-fast: error: ") and what in err[0], err
    assert str(distilled_dir) in err[0] and "--force" in err[0] and "--checkpoint undistilled" in err[0]
    assert not (tmp_path / "out.mp4").exists()


def test_force_runs_it_with_one_warning_line(distilled_dir, wav, tmp_path, capsys):
    args = cli_args("generate", distilled_dir, wav, tmp_path) + ["--steps", "3", "--force"]
    assert main(args) == 0 and (tmp_path / "out.mp4").is_file()
    warned = [line for line in capsys.readouterr().err.splitlines() if "warning" in line]
    assert len(warned) == 1 and warned[0].startswith("rest-fast: warning: ") and "3 steps" in warned[0]


def test_an_unknown_checkpoint_name_is_an_error(tmp_path, capsys):
    assert main(["generate", "--image", str(demo_asset("demo_portrait.png")), "--audio", "x.wav",
                 "--out", str(tmp_path / "o.mp4"), "--checkpoint", str(tmp_path / "nothing")]) == 2
    assert "nothing" in capsys.readouterr().err


def test_the_bundled_default_is_distilled_and_refuses_the_papers_sampler():
    model = load_named_checkpoint("default")
    assert model.source == "default"
    cfg = model.cfg
    assert cfg.provenance.kind == "distilled" and cfg.provenance.steps == cfg.sampling.steps == 2
    assert untrained_sampler(cfg, 8, "joint", 6.0) is not None
    assert untrained_sampler(cfg, 2, "joint", cfg.sampling.cfg_scale) is None


@pytest.mark.skipif(bundled_checkpoint("undistilled") is None, reason="not in this installation")
def test_the_bundled_undistilled_student_is_the_papers_sampler():
    cfg = load_config(bundled_checkpoint("undistilled"))
    assert cfg.provenance.kind == "guidance_dropout"
    assert (cfg.sampling.steps, cfg.sampling.cfg_mode, cfg.sampling.cfg_scale) == (8, "joint", 6.0)
    assert set(BUNDLED) == {"default", "undistilled", "low-latency"}


def distance_from_portrait(frames: np.ndarray, portrait: np.ndarray) -> float:
    """The farthest any frame strays from the portrait (mean |difference| over its pixels, 8-bit
    levels): a talking head of it stays near (10 or so), colour noise goes far (20-30)."""
    return float(np.abs(frames.astype(np.float32) - portrait[None]).mean(axis=(1, 2, 3)).max())


FACE_LEVELS = 16.0    # a stream whose every frame stays this close to its portrait is a face


@pytest.mark.skipif(bundled_checkpoint("undistilled") is None, reason="not in this installation")
def test_the_papers_sampler_gives_faces_on_the_undistilled_student_and_noise_on_the_default():
    """What the refusal is for: 8 steps of Joint CFG 6 on 2 s of the demo's speech draws a face
    with the undistilled student, and strays toward noise with the distilled default (forced)."""
    from reference.media import load_audio, load_image
    audio = load_audio(demo_asset("demo_speech.wav"), 16000)[:2 * 16000]
    portrait = load_image(demo_asset("demo_portrait.png"), 256)
    paper = dict(steps=8, cfg_mode="joint")
    undistilled = StreamingGenerator.from_pretrained("undistilled", device="cpu", **paper)
    face = undistilled.generate(portrait, audio, seed=0, cfg_scale=6.0)
    with pytest.warns(UserWarning, match="forced"):
        forced = StreamingGenerator.from_pretrained("default", device="cpu", force=True, **paper)
        noise = forced.generate(portrait, audio, seed=0, cfg_scale=6.0)
    assert distance_from_portrait(face, portrait) < FACE_LEVELS < distance_from_portrait(noise, portrait)
