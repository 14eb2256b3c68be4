"""Which face detector ``rest-fast prepare`` uses: measured on the photo-made test video.

    python tools/compare_face_detectors.py [--size 640x360] [--out runs/detectors.json]

Writes the video of :func:`reference.data.portrait_videos.people_shots` (real photographs moved,
scaled and turned along known paths, a cut, a faceless stretch, a second face), decodes it, and
runs each detector of :mod:`reference.data.faces` on every frame: OpenCV's Haar cascade, dlib's
HOG box, and the box dlib's 68 landmarks give (what prepare uses). Per detector:

* ``within_5pct``: frames whose box is within 5 % of the true size in centre and in size;
* ``found``: frames with a face whose best box has its centre within 10 % of the true size of
  the truth's centre (and no such box counts as a miss);
* ``centre_err`` / ``size_err``: median and 95th-percentile distance of that box's centre from
  the truth's, and of its size from the truth's (each over the true size), after removing the
  detector's own offset and scale for each person (the median over the person's frames) (boxes are drawn differently by
  each detector; what matters is that they follow the face);
* ``false_per_frame``: boxes that are not the person (in faceless frames, on the distractors, or
  beside the face), per frame;
* ``ms_per_frame``: detection time on one core.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from reference.data.faces import FaceDetector  # noqa: E402
from reference.data.portrait_videos import people_shots, write_video  # noqa: E402


def decode(path) -> list[np.ndarray]:
    import av
    with av.open(str(path)) as c:
        return [f.to_ndarray(format="rgb24") for f in c.decode(video=0)]


# (name, detector, landmarks): dlib's HOG box alone, and the box its 68 landmarks give.
VARIANTS = [("haar", "haar", False), ("dlib-hog-box", "dlib", False), ("dlib-landmark-box", "dlib", True)]


def score(name: str, kind: str, landmarks: bool, frames, truth, shots) -> dict:
    det = FaceDetector(kind, landmarks=landmarks)
    found, centre, size, false, seconds = [], [], [], 0, 0.0
    matches = []
    for image, box, second in zip(frames, truth.boxes, truth.second_face):
        t = time.perf_counter()
        faces = det.detect(image)
        seconds += time.perf_counter() - t
        if box is None:
            false += len(faces)
            matches.append(None)
            continue
        tx, ty, ts = box[0] + box[2] / 2, box[1] + box[3] / 2, box[2]
        errs = [np.hypot(f.centre[0] - tx, f.centre[1] - ty) / ts for f in faces]
        best = int(np.argmin(errs)) if faces else None
        ok = best is not None and errs[best] < 0.25
        matches.append((faces[best], (tx, ty, ts)) if ok else None)
        false += len(faces) - int(ok) - int(second and len(faces) > 1)
    # The detector's own box convention for each person (offset and scale, median over the
    # person's frames): boxes are drawn differently by each detector and on each face.
    people = [shots[k].person for k in truth.shots]
    calib = {}
    for person in set(p for p in people if p):
        mine = [m for m, p in zip(matches, people) if m is not None and p == person]
        calib[person] = (np.median([(f.centre[0] - t[0]) / t[2] for f, t in mine]) if mine else 0.0,
                         np.median([(f.centre[1] - t[1]) / t[2] for f, t in mine]) if mine else 0.0,
                         np.median([f.size / t[2] for f, t in mine]) if mine else 1.0)
    for m, person in zip(matches, people):
        if m is None:
            continue
        f, (tx, ty, ts) = m
        dx, dy, ds = calib[person]
        err = np.hypot(f.centre[0] - tx - dx * ts, f.centre[1] - ty - dy * ts) / ts
        if err < 0.10:
            found.append(1)
            centre.append(err)
            size.append(abs(f.size / (ds * ts) - 1))
    faces = sum(b is not None for b in truth.boxes)
    q = lambda v, p: float(np.percentile(v, p)) if v else float("nan")  # noqa: E731
    close = sum(c < 0.05 and z < 0.05 for c, z in zip(centre, size))
    return {"detector": name, "found": len(found) / faces, "within_5pct": close / faces, "centre_err_median": q(centre, 50),
            "centre_err_p95": q(centre, 95), "centre_err_max": q(centre, 100), "size_err_median": q(size, 50), "size_err_p95": q(size, 95),
            "size_err_max": q(size, 100),
            "false_per_frame": false / len(frames), "ms_per_frame": 1000 * seconds / len(frames),
            "box_scale": {p: round(float(c[2]), 3) for p, c in calib.items()}}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--size", default="640x360")
    p.add_argument("--out", default="runs/detectors.json")
    args = p.parse_args()
    w, h = (int(v) for v in args.size.split("x"))
    import cv2
    cv2.setNumThreads(1)
    video = Path(args.out).with_suffix(".mp4")
    shots = people_shots((w, h))
    truth = write_video(video, shots, size=(w, h))
    frames = decode(video)
    rows = [score(*variant, frames, truth, shots) for variant in VARIANTS]
    for r in rows:
        print(json.dumps(r))
    Path(args.out).write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
