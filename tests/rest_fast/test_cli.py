"""The CLI end to end on tiny and cpu-preset checkpoints, and every bad input."""
import numpy as np
import pytest

from reference.checkpoint import save_checkpoint
from reference.media import read_mp4_info, write_mp4
from reference.model import RestModel
from rest_fast.cli import demo_asset, main
from tests.conftest import make_tiny_config, speech_like


@pytest.fixture(scope="module")
def tiny_ckpt(tmp_path_factory):
    return str(save_checkpoint(RestModel.random(make_tiny_config()), tmp_path_factory.mktemp("c") / "tiny"))


@pytest.fixture(scope="module")
def wav(tmp_path_factory):
    import soundfile
    path = tmp_path_factory.mktemp("a") / "speech.wav"
    soundfile.write(path, np.stack([speech_like(1.5, 44100)] * 2, 1), 44100)  # stereo, 44.1 kHz
    return str(path)


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
    }


@pytest.mark.parametrize("case", ["missing audio", "corrupt audio", "empty audio", "nan audio",
                                  "missing image", "corrupt image"])
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


def test_random_weights_are_announced(tmp_path, wav, capsys):
    short = tmp_path / "s.wav"
    import soundfile
    soundfile.write(short, speech_like(0.2), 16000)
    assert main(["demo", "--out", str(tmp_path / "d.mp4"), "--quiet", "--steps", "1"]) == 0
    assert "RANDOM weights" in capsys.readouterr().err
    assert read_mp4_info(tmp_path / "d.mp4")["has_audio"]
