"""`rest-fast prepare` on videos of real people made from registry photographs (tests/conftest.py's
raw_videos): the known face box found in every frame, a steady crop, cuts, drops with reasons,
bad files skipped, resume, and the CLI."""
import json
import os
import shutil

import numpy as np
import pytest

from reference.data.portrait_videos import Shot, people_shots, write_video
from reference.data.prepare import MANIFEST, PrepareOptions, prepare_folder, read_manifest
from tests.conftest import RAW_SIZE, speech_like

pytest.importorskip("dlib", reason="needs the prepare extra")

FPS = 25
SHORT = PrepareOptions(min_seconds=2.0)   # the test videos' shots are 2-5 s long


def lines_of(lines, source, kind):
    return [l for l in lines if l["source"] == source and l["kind"] == kind]


def test_segments_cut_at_the_shot_change_and_drop_what_cannot_be_used(prepared):
    out, lines, _ = prepared
    segments = lines_of(lines, "people.mp4", "segment")
    # Shots: astronaut still 0-2 s and moving 2-5 s (one shot), a cut to Grace Hopper 5-8 s,
    # no face 8-10 s, a second face 10-12 s, Grace Hopper alone 12-14.48 s.
    spans = [(s["start"], s["end"]) for s in segments]
    assert len(spans) == 3, spans
    for (a, b), (x, y) in zip(spans, [(0.0, 5.0), (5.0, 8.0), (12.0, 14.48)]):
        assert abs(a - x) <= 2 / FPS and abs(b - y) <= 2 / FPS, spans
    drops = [(l["start"], l["end"], l["reason"]) for l in lines_of(lines, "people.mp4", "dropped")]
    assert len(drops) == 2, drops
    (a, b, why), (c, d, why2) = drops
    assert abs(a - 8) <= 2 / FPS and abs(b - 10) <= 2 / FPS and why == "no face"
    assert abs(c - 10) <= 2 / FPS and abs(d - 12) <= 2 / FPS and "second face" in why2
    import av
    for s in segments:   # each segment: its frames at the output size, 16 kHz mono speech
        with av.open(str(out / s["file"])) as c:
            video, audio = c.streams.video[0], c.streams.audio[0]
            assert (video.codec_context.width, video.codec_context.height) == (256, 256)
            assert audio.codec_context.sample_rate == 16000 and audio.codec_context.channels == 1
            assert sum(1 for _ in c.decode(video=0)) == s["frames"] == len(s["crop"]) == len(s["face"])
            seconds = float(audio.duration * audio.time_base)
        assert abs(seconds - s["frames"] / FPS) < 0.03


def test_the_known_face_box_is_found_in_every_frame(prepared, raw_videos):
    """Each frame's face (the manifest's ``face``) against the box the photo was drawn at, after
    the detector's own offset and scale for each person (its median over the person's frames):
    within 5% of the face's size in centre and size."""
    _, lines, _ = prepared
    _, truth = raw_videos
    people = [people_shots(RAW_SIZE)[k].person for k in truth.shots]
    found = {}
    for s in lines_of(lines, "people.mp4", "segment"):
        first = round(s["start"] * FPS)
        for k, face in enumerate(s["face"]):
            box = truth.boxes[first + k]
            assert box is not None and face is not None
            tx, ty, ts = box[0] + box[2] / 2, box[1] + box[3] / 2, box[2]
            found.setdefault(people[first + k], []).append(
                ((face[0] - tx) / ts, (face[1] - ty) / ts, face[2] / ts))
    assert set(found) == {"astronaut", "hopper"}
    for person, rows in found.items():
        rows = np.array(rows)
        dx, dy, scale = np.median(rows, axis=0)
        assert abs(dx) < 0.15 and abs(dy) < 0.15 and 0.8 < scale < 1.25, (person, dx, dy, scale)
        centre = np.hypot(rows[:, 0] - dx, rows[:, 1] - dy)
        size = np.abs(rows[:, 2] / scale - 1)
        assert centre.max() < 0.05 and size.max() < 0.05, (person, centre.max(), size.max())


def test_the_crop_holds_still_on_a_still_face_and_follows_a_moving_one(prepared):
    _, lines, _ = prepared
    opts = PrepareOptions()
    first = lines_of(lines, "people.mp4", "segment")[0]
    crop, face = np.array(first["crop"]), np.array(first["face"], dtype=float)
    # The still 2 s, less the smoothing's reach into the motion after it.
    still = slice(0, 2 * FPS - 3 * round(opts.smooth_seconds * FPS))
    to_output = opts.resolution / crop[still, 2:3]
    crop_jitter = np.abs((crop[still] - crop[still].mean(0)) * to_output).max()
    face_jitter = np.abs((face[still] - face[still].mean(0)) * to_output).max()
    assert crop_jitter < 1.0, crop_jitter           # output pixels
    assert crop_jitter < face_jitter, (crop_jitter, face_jitter)   # the smoothing does the work
    # While the head moves, the crop stays centred on it: the face the crop implies (its size
    # over the margin, its centre below the crop's by the lift) within 6% of the detected face,
    # where the crop is not held inside the frame by its edge.
    width, height = RAW_SIZE
    inside = (crop[:, 0] > 0) & (crop[:, 1] > 0) & (crop[:, 0] + crop[:, 2] < width) & \
        (crop[:, 1] + crop[:, 2] < height)
    assert inside.mean() > 0.9
    size = crop[:, 2] / opts.margin
    centre = crop[:, :2] + crop[:, 2:3] / 2 + np.stack([0 * size, opts.lift * size], 1)
    error = np.hypot(*(centre - face[:, :2]).T) / face[:, 2]
    assert error[inside].max() < 0.06, error[inside].max()
    assert np.abs(size / face[:, 2] - 1).max() < 0.06


def test_bad_files_are_skipped_with_their_reason_and_the_run_finishes(prepared):
    _, lines, counts = prepared
    skipped = {l["source"]: l["reason"] for l in lines if l["kind"] == "skipped"}
    expected = {"bad/faceless.mp4": "no usable stretch of one face (no face)",
                "bad/short.mp4": "too short (1.48 s of one face in one shot, under --min-seconds 2)",
                "bad/silent.mp4": "it is silent", "bad/no_audio.mp4": "no audio track",
                "bad/unreadable.mp4": "could not be opened as a video",
                "bad/still_image.mp4": "still image", "bad/audio_only.mp4": "no video stream",
                "bad/zero_seconds.mp4": "0-second"}
    assert set(skipped) == set(expected), skipped
    for source, reason in expected.items():
        assert reason in skipped[source], (source, skipped[source])
    done = {l["source"] for l in lines if l["kind"] == "done"}
    assert done == set(expected) | {"people.mp4"}
    assert counts == {"files": 9, "resumed": 0, "segments": 3, "seconds": pytest.approx(10.48, abs=0.1),
                      "dropped": 4, "skipped": 8}


@pytest.fixture
def one_video(tmp_path):
    """A raw folder with one short video of Grace Hopper, still, speaking."""
    raw = tmp_path / "raw"
    shot = Shot(2.4, "hopper", centre=lambda t: (300, 170), scale=lambda t: 0.7, noise=3.0)
    write_video(raw / "talk.mp4", [shot], size=RAW_SIZE, speech=speech_like(2.4))
    return raw


def test_a_finished_file_is_not_done_twice_and_an_unfinished_one_is_redone(one_video, tmp_path):
    out = tmp_path / "out"
    first = prepare_folder(one_video, out, SHORT, progress=False)
    assert first["segments"] == 1 and first["files"] == 1
    segment = out / "talk.mp4.000.mp4"
    stamp = segment.stat().st_mtime_ns
    again = prepare_folder(one_video, out, SHORT, progress=False)
    assert again == {"files": 0, "resumed": 1, "segments": 0, "seconds": 0.0, "dropped": 0, "skipped": 0}
    assert segment.stat().st_mtime_ns == stamp
    # A run stopped after writing the segment but before the file's lines: redone, no line twice.
    (out / MANIFEST).write_text("")
    assert prepare_folder(one_video, out, SHORT, progress=False)["files"] == 1
    kinds = [l["kind"] for l in read_manifest(out)]
    assert kinds == ["segment", "done"]
    # A changed source (or other options) is redone; its old segments go.
    os.utime(one_video / "talk.mp4", ns=(stamp + 10**9, stamp + 10**9))
    redo = prepare_folder(one_video, out, PrepareOptions(resolution=128, min_seconds=2.0), progress=False)
    assert redo["files"] == 1 and [l["kind"] for l in read_manifest(out)] == ["segment", "done"]
    import av
    with av.open(str(segment)) as c:
        assert c.streams.video[0].codec_context.width == 128
    # A line cut short by a crash is ignored.
    with open(out / MANIFEST, "a") as f:
        f.write('{"kind": "segm')
    assert prepare_folder(one_video, out, PrepareOptions(resolution=128, min_seconds=2.0), progress=False)["files"] == 0


def test_the_progress_bars_count_files_and_a_files_frames(one_video, tmp_path, capsys):
    from reference.data.faces import FaceDetector
    from reference.data.prepare import prepare_file
    counts = prepare_folder(one_video, tmp_path / "out", SHORT, progress=True)
    err = capsys.readouterr().err
    assert "1/1" in err and f"segments={counts['segments']}" in err    # files, and segments so far
    assert "talk.mp4: faces" in err and "frame/s" in err                # beneath it, the file's frames
    ticks = []
    prepare_file(one_video / "talk.mp4", "talk.mp4", tmp_path / "again", SHORT, FaceDetector(),
                 tick=lambda: ticks.append(1))
    assert len(ticks) == 60    # 2.4 s at 25 fps: one tick a frame searched


def test_a_file_that_fails_does_not_stop_the_run(one_video, tmp_path, monkeypatch):
    from reference.data import prepare
    shutil.copy(one_video / "talk.mp4", one_video / "crash.mp4")
    real = prepare.prepare_file

    def crash_on_one(path, name, *args):
        if name == "crash.mp4":
            raise RuntimeError("decoder fell over")
        return real(path, name, *args)
    monkeypatch.setattr(prepare, "prepare_file", crash_on_one)
    counts = prepare_folder(one_video, tmp_path / "out", SHORT, progress=False)
    assert counts["segments"] == 1 and counts["skipped"] == 1
    skipped = [l for l in read_manifest(tmp_path / "out") if l["kind"] == "skipped"]
    assert skipped[0]["source"] == "crash.mp4" and "RuntimeError: decoder fell over" in skipped[0]["reason"]


def test_cli_prepare_prints_its_summary_and_refuses_bad_options(one_video, tmp_path, capsys):
    from rest_fast.cli import EXIT_BAD_INPUT, main
    out = tmp_path / "out"
    assert main(["prepare", str(one_video), "--out", str(out), "--quiet", "--resolution", "128",
                 "--fps", "20", "--min-seconds", "1"]) == 0
    said = capsys.readouterr().out
    assert "1 segments" in said and "0 files skipped" in said and "manifest.jsonl" in said
    (segment,) = [l for l in read_manifest(out) if l["kind"] == "segment"]
    assert segment["fps"] == 20 and segment["resolution"] == 128 and segment["frames"] == 48
    assert main(["prepare", str(one_video), "--out", str(out), "--workers", "0"]) == EXIT_BAD_INPUT
    assert "--workers must be at least 1" in capsys.readouterr().err
    assert main(["prepare", str(tmp_path / "nowhere"), "--out", str(out)]) == EXIT_BAD_INPUT
    assert "does not exist" in capsys.readouterr().err
    assert main(["prepare", str(one_video), "--out", str(out), "--resolution", "255"]) == EXIT_BAD_INPUT
    assert "--resolution must be an even number" in capsys.readouterr().err


def test_the_manifest_is_one_json_object_per_line(prepared):
    out, _, _ = prepared
    for text in (out / MANIFEST).read_text().splitlines():
        line = json.loads(text)
        assert line["kind"] in ("segment", "dropped", "skipped", "done") and "source" in line


def test_a_face_too_small_for_the_resolution_is_dropped_as_one_span(tmp_path):
    """Grace Hopper's face at ~105 pixels: its 1.9x crop (~200 pixels) fills a 256-pixel clip,
    but would be upscaled more than 2x to 512."""
    raw = tmp_path / "raw"
    shot = Shot(2.4, "hopper", centre=lambda t: (300, 170), scale=lambda t: 0.55, noise=3.0)
    write_video(raw / "far.mp4", [shot], size=RAW_SIZE, speech=speech_like(2.4))
    assert prepare_folder(raw, tmp_path / "at256", SHORT, progress=False)["segments"] == 1
    counts = prepare_folder(raw, tmp_path / "at512", PrepareOptions(resolution=512, min_seconds=2.0),
                            progress=False)
    assert counts["segments"] == 0 and counts["dropped"] == 1 and counts["skipped"] == 1
    (drop,) = lines_of(read_manifest(tmp_path / "at512"), "far.mp4", "dropped")
    assert (drop["start"], drop["end"]) == (0.0, 2.4)
    assert drop["reason"] == "the face is too small (its crop would be upscaled more than 2x to 512 px)"
