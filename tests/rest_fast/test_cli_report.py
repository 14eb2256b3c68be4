"""``rest-fast eval --report DIR``: the run's pictures and page, from a fresh run or a rescored one."""
import json
import re
import sys

import pytest

from reference.checkpoint import save_checkpoint
from reference.model import RestModel
from rest_fast.cli import main
from tests.conftest import make_tiny_config


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    return save_checkpoint(RestModel.random(make_tiny_config()).eval(), tmp_path_factory.mktemp("ckpt") / "tiny")


def test_eval_report_writes_the_page_and_its_pictures(tmp_path, ckpt, capsys):
    pytest.importorskip("matplotlib")
    from matplotlib.image import imread
    out = tmp_path / "report"
    assert main(["eval", "--checkpoint", str(ckpt), "--identities", "1", "--seconds", "1", "--steps", "1",
                 "--data", "synthetic-lively", "--report", str(out), "--quiet"]) == 0
    assert str(out / "index.html") in capsys.readouterr().out
    report = json.loads((out / "report.json").read_text())
    # The frames were kept only until drawn: no hidden folder of them is left behind.
    assert sorted(p.name for p in out.iterdir()) == sorted(
        ["index.html", "report.json", "strip_0.png", "mouth_0.png", "drift.png", "sharpness.png"])
    page = (out / "index.html").read_text()
    assert set(re.findall(r'src="([^"]+)"', page)) == {p.name for p in out.glob("*.png")}
    for p in out.glob("*.png"):
        assert imread(p).shape[2] in (3, 4) and min(imread(p).shape[:2]) >= 200
    assert f"{report['generated']['ssim']:.4g}" in page and "lip_sync_corr" in page

    # --rescore with --report draws the kept frames with the figures measured again.
    kept, again = tmp_path / "kept", tmp_path / "again"
    assert main(["eval", "--checkpoint", str(ckpt), "--identities", "1", "--seconds", "1", "--steps", "1",
                 "--save-frames", str(kept), "--quiet"]) == 0
    assert main(["eval", "--rescore", str(kept), "--report", str(again), "--quiet"]) == 0
    assert (again / "strip_0.png").is_file() and (again / "index.html").is_file()
    assert (kept / "identity_0.npz").is_file()   # --save-frames' folder is the user's: kept


def test_eval_report_without_matplotlib_is_refused_in_one_line(tmp_path, ckpt, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib", None)   # import matplotlib raises ImportError
    assert main(["eval", "--checkpoint", str(ckpt), "--identities", "1", "--seconds", "2",
                 "--report", str(tmp_path / "report"), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("rest-fast: error: ")
    assert 'pip install -e ".[plots]"' in err
    assert not (tmp_path / "report").exists()   # refused before any work
