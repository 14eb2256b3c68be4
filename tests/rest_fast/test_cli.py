"""The CLI end to end on tiny and cpu-preset checkpoints, and every bad input."""
import numpy as np
import pytest

from reference.checkpoint import save_checkpoint
from reference.media import Mp4Writer, read_mp4_info
from reference.model import RestModel
from rest_fast.cli import demo_asset, main
from tests.conftest import assert_frames_close, make_tiny_config, spy


@pytest.fixture(scope="module")
def tiny_ckpt(tmp_path_factory):
    return str(save_checkpoint(RestModel.random(make_tiny_config()), tmp_path_factory.mktemp("c") / "tiny"))


def test_generate_cpu_preset_end_to_end(tmp_path, wav):
    out = tmp_path / "out.mp4"
    assert main(["generate", "--image", str(demo_asset("demo_portrait.png")), "--audio", wav,
                 "--out", str(out), "--quiet", "--steps", "2"]) == 0
    info = read_mp4_info(out)
    assert info["frames"] == 38 and info["width"] == 256 and info["has_audio"]
    assert abs(info["audio_seconds"] - 1.5) < 0.1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.mp4"]


def test_same_seed_same_output(tmp_path, wav, tiny_ckpt):
    from reference.media import load_audio  # noqa: F401  (decoding checked via read_mp4_info)
    import av
    outs = []
    for name in ("a.mp4", "b.mp4"):
        assert main(["generate", "--image", str(demo_asset("demo_portrait.png")), "--audio", wav,
                     "--out", str(tmp_path / name), "--checkpoint", tiny_ckpt, "--quiet"]) == 0
        with av.open(str(tmp_path / name)) as c:
            outs.append(np.stack([f.to_ndarray(format="rgb24") for f in c.decode(video=0)]))
    assert np.array_equal(outs[0], outs[1])


def bad(tmp_path, wav):
    garbage = tmp_path / "garbage.wav"
    garbage.write_bytes(b"not audio at all" * 100)
    empty = tmp_path / "empty.wav"
    import soundfile
    soundfile.write(empty, np.zeros(0, np.float32), 16000)
    nan = tmp_path / "nan.wav"
    soundfile.write(nan, np.full(16000, np.nan, np.float32), 16000, subtype="FLOAT")
    text_png = tmp_path / "image.png"
    text_png.write_text("hello")
    img = str(demo_asset("demo_portrait.png"))
    return {
        "missing audio": ["--image", img, "--audio", str(tmp_path / "nope.wav")],
        "corrupt audio": ["--image", img, "--audio", str(garbage)],
        "empty audio": ["--image", img, "--audio", str(empty)],
        "nan audio": ["--image", img, "--audio", str(nan)],
        "missing image": ["--image", str(tmp_path / "nope.png"), "--audio", wav],
        "corrupt image": ["--image", str(text_png), "--audio", wav],
        "nan cfg": ["--image", img, "--audio", wav, "--cfg", "nan"],
        "huge cfg": ["--image", img, "--audio", wav, "--cfg", "1e30"],
        "negative cfg": ["--image", img, "--audio", wav, "--cfg", "-1"],
        "zero steps": ["--image", img, "--audio", wav, "--steps", "0"],
    }


@pytest.mark.parametrize("case", ["missing audio", "corrupt audio", "empty audio", "nan audio",
                                  "missing image", "corrupt image", "nan cfg", "huge cfg",
                                  "negative cfg", "zero steps"])
def test_bad_input_exits_2_with_one_line_and_no_output(tmp_path, wav, tiny_ckpt, capsys, case):
    out = tmp_path / "out.mp4"
    code = main(["generate", *bad(tmp_path, wav)[case], "--out", str(out), "--checkpoint", tiny_ckpt, "--quiet"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2
    assert len(err) == 1 and err[0].startswith("rest-fast: error:") and "Traceback" not in err[0]
    assert not out.exists() and not [p for p in tmp_path.iterdir() if ".tmp" in p.name]


def test_mismatched_checkpoint_and_preset_conflict(tmp_path, wav, tiny_ckpt, capsys):
    img = str(demo_asset("demo_portrait.png"))
    assert main(["generate", "--image", img, "--audio", wav, "--out", str(tmp_path / "o.mp4"),
                 "--checkpoint", tiny_ckpt, "--preset", "paper", "--quiet"]) == 2
    assert "conflicts" in capsys.readouterr().err
    assert main(["generate", "--image", img, "--audio", wav, "--out", str(tmp_path / "o.mp4"),
                 "--checkpoint", str(tmp_path / "none"), "--quiet"]) == 2


def test_random_weights_are_announced(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr("rest_fast.streaming.bundled_checkpoint", lambda: None)  # as if not shipped
    assert main(["demo", "--out", str(tmp_path / "d.mp4"), "--quiet", "--steps", "1"]) == 0
    assert "RANDOM weights" in capsys.readouterr().err
    assert read_mp4_info(tmp_path / "d.mp4")["has_audio"]


def decoded(path):
    import av
    with av.open(str(path)) as c:
        return np.stack([f.to_ndarray(format="rgb24") for f in c.decode(video=0)])


def test_fast_and_reference_backends_write_the_same_video(tmp_path, wav, tiny_ckpt):
    """The frames each backend hands the encoder are equal within rounding (fp32 on the CPU; a
    level of rounding can move H.264's choices further, so the encoded files are not compared)."""
    videos = []
    for backend in ("fast", "reference"):
        out = tmp_path / f"{backend}.mp4"
        with spy(Mp4Writer, "write") as calls:
            assert main(["generate", "--image", str(demo_asset("demo_portrait.png")), "--audio", wav,
                         "--out", str(out), "--checkpoint", tiny_ckpt, "--backend", backend, "--quiet",
                         "--device", "cpu", "--dtype", "float32"]) == 0
        videos.append(np.concatenate([args[1] for args, _ in calls]))
        assert read_mp4_info(out)["frames"] == 38
    assert videos[0].shape == (38, 64, 64, 3)
    assert_frames_close(videos[0], videos[1])


def test_bfloat16_writes_nearly_the_same_video(tmp_path, wav, tiny_ckpt):
    """bf16 differs from fp32 by rounding: far less than another seed differs (the tiny random
    model's noisy video goes through H.264, so the gap is judged relative to that)."""
    videos = {}
    for name, extra in [("fp32", ["--dtype", "float32"]), ("bf16", ["--dtype", "bfloat16"]),
                        ("seed", ["--dtype", "float32", "--seed", "1"])]:
        out = tmp_path / f"{name}.mp4"
        assert main(["generate", "--image", str(demo_asset("demo_portrait.png")), "--audio", wav,
                     "--out", str(out), "--checkpoint", tiny_ckpt, "--quiet", *extra]) == 0
        videos[name] = decoded(out).astype(int)
    rounding = np.abs(videos["fp32"] - videos["bf16"]).mean()
    assert 0 < rounding < 0.25 * np.abs(videos["fp32"] - videos["seed"]).mean()


def test_stream_paces_a_file_and_reports_latency(tmp_path, wav, tiny_ckpt, capsys):
    out = tmp_path / "live.mp4"
    assert main(["stream", "--audio", wav, "--checkpoint", tiny_ckpt, "--no-pace", "--out", str(out),
                 "--piece-ms", "30", "--quiet"]) == 0
    printed = capsys.readouterr().out
    assert "chunk   0: 24 frames" in printed and "latency per chunk: median" in printed
    assert "lookahead 160" in printed
    assert read_mp4_info(out)["frames"] == 38


@pytest.fixture(scope="module")
def light_ckpt(tmp_path_factory):
    """A tiny checkpoint that samples in 2 steps without guidance and renders with a light decoder."""
    import dataclasses
    cfg = make_tiny_config()
    cfg = dataclasses.replace(
        cfg, sampling=dataclasses.replace(cfg.sampling, steps=2, cfg_mode="none"),
        vae=dataclasses.replace(cfg.vae, light_width=8, decoder="light")).validate()
    return str(save_checkpoint(RestModel.random(cfg), tmp_path_factory.mktemp("c") / "light"))


def test_the_checkpoint_sampler_is_used_and_options_override_it(tmp_path, wav, light_ckpt):
    from reference.dit import A2VDiT
    from rest_fast.model import FastDiT
    img = str(demo_asset("demo_portrait.png"))
    runs = {"checkpoint's": ([], 2, 1), "override": (["--steps", "3", "--guidance", "joint", "--cfg", "4",
                                                      "--decoder", "full"], 3, 2)}
    for name, (extra, steps, rows) in runs.items():
        for backend, owner, method in (("fast", FastDiT, "forward"), ("reference", A2VDiT, "forward_chunk")):
            with spy(owner, method) as calls:
                assert main(["generate", "--image", img, "--audio", wav, "--out", str(tmp_path / f"{name}.mp4"),
                             "--checkpoint", light_ckpt, "--backend", backend, "--quiet", *extra]) == 0
            assert len(calls) == 2 * steps, (name, backend)          # 38 frames: 2 chunks
            assert {args[1].shape[0] for args, _ in calls} == {rows}


@pytest.mark.parametrize("extra, message", [
    (["--cfg", "6"], "needs guidance"),                     # the checkpoint samples without
    (["--decoder", "light"], "no 'light' decoder"),
])
def test_sampler_options_that_do_not_fit_the_checkpoint_are_refused(tmp_path, wav, tiny_ckpt, light_ckpt,
                                                                    capsys, extra, message):
    ckpt = light_ckpt if "--cfg" in extra else tiny_ckpt
    code = main(["generate", "--image", str(demo_asset("demo_portrait.png")), "--audio", wav, "--out",
                 str(tmp_path / "o.mp4"), "--checkpoint", ckpt, "--quiet", *extra])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and message in err[0]
    assert not (tmp_path / "o.mp4").exists()


@pytest.mark.parametrize("field, value, words", [
    ("prev_chunks", 0, "prev_chunks must be 1 to 8"),
    ("prev_chunks", 9, "prev_chunks must be 1 to 8"),          # more than the ring is built for
    ("chunk_latent_frames", 0, "chunk_latent_frames must be at least 1")])
@pytest.mark.parametrize("command", ["generate", "stream"])
def test_a_checkpoint_whose_window_cannot_run_is_refused_in_one_line(tmp_path, wav, tiny_ckpt, capsys,
                                                                      command, field, value, words):
    import json
    import shutil
    broken = tmp_path / "broken"
    shutil.copytree(tiny_ckpt, broken)
    config = json.loads((broken / "config.json").read_text())
    config[field] = value
    (broken / "config.json").write_text(json.dumps(config))
    out = tmp_path / "out.mp4"
    assert main([command, "--image", str(demo_asset("demo_portrait.png")), "--audio", wav, "--out", str(out),
                 "--checkpoint", str(broken), "--quiet"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and words in err[0] and "config.json" in err[0], err
    assert not out.exists()


@pytest.mark.parametrize("extra, steps, branches", [([], 2, 1), (["--steps", "3", "--guidance", "joint", "--cfg", "4"], 3, 2)])
def test_serve_samples_as_the_checkpoint_says_or_as_told(monkeypatch, light_ckpt, extra, steps, branches):
    """`rest-fast serve` builds its generator with the checkpoint's sampler, or the options given
    (the server itself is not started: its entry point is replaced)."""
    pytest.importorskip("aiortc")
    import rest_fast.serve
    built = {}

    async def fake_serve(gen, image, **options):
        built.update(steps=gen.steps, branches=gen.branches, cfg_scale=options["cfg_scale"])
    monkeypatch.setattr(rest_fast.serve, "serve", fake_serve)
    assert main(["serve", "--checkpoint", light_ckpt, "--port", "0", "--capacity", "1", *extra]) == 0
    assert built["steps"] == steps and built["branches"] == branches
    assert built["cfg_scale"] == (4.0 if extra else None)
