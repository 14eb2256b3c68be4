"""`rest-fast prepare`: seconds per minute of 720p video.

    pytest bench/test_prepare.py --benchmark -s

Renders a minute of 1280x720 video of real people (reference.data.portrait_videos' shots, four
times over: cuts, a faceless stretch, a second face, sensor noise) with speech, once as one 60 s
file and once as two 30 s files, then times `prepare_folder` on each: the one file with one
worker, the two with two workers (one process per file). Printed; the target is that a minute of
720p takes at most a minute on 2 cores with two workers, so preparing keeps pace with recording.
"""
import time

import numpy as np
import pytest

from reference.data.prepare import prepare_folder
from tests.conftest import speech_like

pytest.importorskip("dlib", reason="needs the prepare extra")
pytest.importorskip("skimage", reason="needs scikit-image's photographs")

SIZE = (1280, 720)


def write_minutes(folder, files: int, seconds: float):
    from reference.data.portrait_videos import people_shots, write_video
    shots = people_shots(SIZE)
    per_pass = sum(s.seconds for s in shots)
    for k in range(files):
        reel = shots * int(np.ceil(seconds / per_pass))
        total, cut = 0.0, []
        for shot in reel:
            if total >= seconds:
                break
            cut.append(shot)
            total += shot.seconds
        write_video(folder / f"take{k}.mp4", cut, size=SIZE, speech=speech_like(seconds, seed=k))
    return total * files


def test_prepare_seconds_per_minute_of_720p(tmp_path):
    rows = []
    for files, workers in ((1, 1), (2, 2)):
        raw = tmp_path / f"raw{files}"
        seconds = write_minutes(raw, files, 60.0 / files)
        start = time.perf_counter()
        counts = prepare_folder(raw, tmp_path / f"out{files}", workers=workers, progress=False)
        wall = time.perf_counter() - start
        per_minute = wall * 60 / seconds
        rows.append((files, workers, seconds, wall, per_minute, counts))
        assert counts["segments"] > 0 and counts["skipped"] == 0
    print(f"\nprepare, {SIZE[0]}x{SIZE[1]} at 25 fps -> 256 px, dlib detector at 640 px")
    for files, workers, seconds, wall, per_minute, counts in rows:
        print(f"{files} file(s), {workers} worker(s): {seconds:.1f} s of video in {wall:.1f} s = "
              f"{per_minute:.1f} s per minute of video ({counts['segments']} segments, "
              f"{counts['seconds']:.1f} s kept)")
    assert rows[-1][4] <= 60.0, "a minute of 720p took more than a minute on two workers"
