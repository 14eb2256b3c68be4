"""`eval --data DIR` on clips `prepare` made from videos of real people: the figures that need no
synthetic truth, and the path raw video -> prepare -> train -> eval through the CLI."""
import json

import numpy as np
import pytest

from reference.checkpoint import save_checkpoint
from reference.model import RestModel
from tests.conftest import make_tiny_config

pytest.importorskip("dlib", reason="needs the prepare extra")


def test_the_mouth_opening_does_not_change_with_the_face_size_or_turn(prepared):
    """The astronaut's still photo moving, growing 1.1 -> 1.4x and turning +-10 degrees: her
    mouth is as open in every frame, and the landmark reading says so (and finds her each time)."""
    import av
    from reference.data.faces import FaceDetector
    from reference.evaluate_real import face_series
    out, lines, _ = prepared
    first = next(l for l in lines if l["kind"] == "segment")
    with av.open(str(out / first["file"])) as c:
        frames = np.stack([f.to_ndarray(format="rgb24") for f in c.decode(video=0)])
    series = face_series(frames, FaceDetector("dlib"))
    assert series["found"].all()
    opening = series["mouth_opening"]
    assert 0.02 < opening.mean() < 0.5   # she smiles with her lips apart
    assert opening.std() / opening.mean() < 0.1, (opening.mean(), opening.std())


def test_train_then_eval_on_prepared_clips_through_the_cli(prepared, tmp_path, capsys):
    """The three commands of the docs after `prepare`: a student trains a few steps on the
    prepared folder, and `eval --data` reports its figures, the truth's beside them."""
    from rest_fast.cli import EXIT_BAD_INPUT, main
    out, _, _ = prepared
    init = save_checkpoint(RestModel.random(make_tiny_config()), tmp_path / "init")
    run = tmp_path / "student"
    assert main(["train", "student", "--init", str(init), "--data", str(out), "--out", str(run),
                 "--steps", "2", "--batch-size", "1", "--cache-clips", "2",
                 "--device", "cpu", "--quiet"]) == 0
    log = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]
    assert log[-1]["step"] == 2 and all(np.isfinite(r["loss"]) for r in log)
    capsys.readouterr()
    report = tmp_path / "real.json"
    assert main(["eval", "--checkpoint", str(run), "--data", str(out), "--identities", "2",
                 "--seconds", "2", "--json", str(report), "--quiet", "--device", "cpu"]) == 0
    table = capsys.readouterr().out
    assert "real clips" in table and "face found" in table and "ours, not FID" in table
    figures = json.loads(report.read_text())
    assert figures["clips"] == ["people.mp4.000.mp4@0", "people.mp4.001.mp4@0"]
    truth, generated = figures["ground_truth"], figures["generated"]
    assert truth["face_found"] == 1.0 and truth["fd"] == pytest.approx(0, abs=1e-6)
    assert truth["lip_sync_corr"] > 0.99 or truth["lip_sync_corr"] == 0.0   # still photos may not vary
    assert all(np.isfinite(v) for k, v in generated.items() if k != "psnr")
    assert 0 <= generated["face_found"] <= 1 and generated["fd"] > 0
    # Options that only the synthetic benchmark has are refused, not ignored.
    assert main(["eval", "--checkpoint", str(run), "--data", str(out), "--seeds", "2"]) == EXIT_BAD_INPUT
    assert "--seeds is for the synthetic benchmark only" in capsys.readouterr().err
    assert main(["eval", "--checkpoint", str(run), "--data", str(tmp_path / "nowhere")]) == EXIT_BAD_INPUT
    assert "neither synthetic" in capsys.readouterr().err
    assert main(["eval", "--checkpoint", str(run), "--data", str(out), "--seconds", "60"]) == EXIT_BAD_INPUT
    assert "too short" in capsys.readouterr().err or "no usable clips" in capsys.readouterr().err
