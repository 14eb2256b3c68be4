"""Faces in real video: detection, landmarks and the mouth's opening, with weights from the registry.

``rest-fast prepare`` (:mod:`reference.data.prepare`) finds the speaker's head in raw video, and
``rest-fast eval --data DIR`` reads the mouth's opening from generated and true real clips. Both
use a detector whose weights ship inside a package on the registry, so nothing is downloaded at
run time (``pip install -e ".[prepare]"``):

* ``"dlib"`` (the default): dlib's HOG frontal face detector (its weights are compiled into
  ``dlib-bin``) and the 68-point landmark model of ``face_recognition_models``. The landmarks give
  the inner lips, so the mouth's opening can be read on real video.
* ``"haar"``: OpenCV's Haar cascade ``haarcascade_frontalface_default.xml`` (inside
  ``opencv-python-headless``); boxes only, no landmarks.

``mediapipe`` 1.2.3 ships no model file in its wheel (its tasks load a ``.task`` file from disk),
so it is not a candidate. dlib was chosen over Haar by measured accuracy on the photo-made test
videos of :mod:`reference.data.portrait_videos`: see ``docs/results/2026-12-08-prepare.md``.

The 68-point model was trained on iBUG 300-W, whose licence excludes commercial use: check it
before using prepared data commercially.
"""
from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..media import InputError

DETECTORS = ("dlib", "haar")
_INSTALL = 'pip install -e ".[prepare]" (dlib-bin, face_recognition_models, opencv-python-headless)'

# 68-point landmark indices (iBUG 300-W): the inner lips, top (61-63) over bottom (67-65).
_INNER_TOP, _INNER_BOTTOM = [61, 62, 63], [67, 66, 65]
_LEFT_EYE, _RIGHT_EYE = slice(36, 42), slice(42, 48)
_MIN_SIDE = 320   # pixels: smaller images are searched upscaled to this longer side


@dataclass(frozen=True)
class Face:
    """One face in one image: ``box`` (left, top, width, height) in pixels (floats), the
    detector's ``score`` (larger is surer) and, where the detector gives them, 68 landmarks
    ``(68, 2)`` as (x, y)."""
    box: tuple[float, float, float, float]
    score: float
    landmarks: np.ndarray | None = None

    @property
    def centre(self) -> tuple[float, float]:
        x, y, w, h = self.box
        return x + w / 2, y + h / 2

    @property
    def size(self) -> float:
        return float(np.sqrt(self.box[2] * self.box[3]))


def mouth_opening(landmarks: np.ndarray) -> float:
    """The inner lips' gap over the distance between the eyes' centres: 0 closed, ~0.3-0.5 wide
    open; independent of the face's size in the frame."""
    gap = np.linalg.norm(landmarks[_INNER_TOP] - landmarks[_INNER_BOTTOM], axis=1).mean()
    eyes = np.linalg.norm(landmarks[_LEFT_EYE].mean(0) - landmarks[_RIGHT_EYE].mean(0))
    return float(gap / max(eyes, 1e-6))


def landmark_box(points: np.ndarray) -> tuple[float, float, float, float]:
    """A square box about the 68 landmarks: centred on the middle of the eyes and the mouth,
    as wide as 2.2 times the eyes' distance from the mouth (brow to chin, ear to ear); it turns
    with the face without growing as a bounding box of turned points would."""
    eyes = (points[_LEFT_EYE].mean(0) + points[_RIGHT_EYE].mean(0)) / 2
    mouth = points[48:68].mean(0)
    size = 2.2 * float(np.linalg.norm(mouth - eyes))
    cx, cy = (eyes + mouth) / 2
    return (float(cx) - size / 2, float(cy) - size / 2, size, size)


def iou(a, b) -> float:
    """Intersection over union of two (left, top, width, height) boxes."""
    w = min(a[0] + a[2], b[0] + b[2]) - max(a[0], b[0])
    h = min(a[1] + a[3], b[1] + b[3]) - max(a[1], b[1])
    inter = max(w, 0.0) * max(h, 0.0)
    return inter / (a[2] * a[3] + b[2] * b[3] - inter + 1e-9)


class FaceDetector:
    """Faces in RGB uint8 images. ``detect(image)`` looks at the image scaled so that its longer
    side is at most ``max_side`` pixels (faces smaller than ~80 pixels there are missed: at the
    default 640, a 720p frame is searched at half size, so its faces must be ~160 pixels tall)
    and at least 320, and returns boxes in the image's own pixels, largest first. ``landmarks`` adds the 68 points to each face (dlib only).
    """

    def __init__(self, kind: str = "dlib", max_side: int = 640, landmarks: bool = True):
        if kind not in DETECTORS:
            raise InputError(f"unknown face detector {kind!r}: choose one of {', '.join(DETECTORS)}")
        self.kind, self.max_side = kind, int(max_side)
        self._cv2 = _import("cv2", "detect faces")
        self._cv2.setNumThreads(1)   # one file per worker process: parallel over files, not pixels
        if kind == "dlib":
            self._dlib = _import("dlib", "detect faces")
            self._hog = self._dlib.get_frontal_face_detector()
            self._shape = self._dlib.shape_predictor(str(landmark_model())) if landmarks else None
        else:
            self._haar = self._cv2.CascadeClassifier(
                str(Path(self._cv2.data.haarcascades) / "haarcascade_frontalface_default.xml"))
            self._shape = None

    @property
    def has_landmarks(self) -> bool:
        return self._shape is not None

    def detect(self, image: np.ndarray) -> list[Face]:
        if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
            raise ValueError(f"need an RGB uint8 (H, W, 3) image, got {image.dtype} {image.shape}")
        # Large frames are searched smaller (faster); small ones (a generated 64-pixel frame)
        # larger, as HOG finds no face under ~80 pixels.
        scale = min(1.0, self.max_side / max(image.shape[:2]))
        scale = max(scale, _MIN_SIDE / max(image.shape[:2]))
        small = image if scale == 1.0 else self._cv2.resize(
            image, (round(image.shape[1] * scale), round(image.shape[0] * scale)),
            interpolation=self._cv2.INTER_AREA if scale < 1 else self._cv2.INTER_LINEAR)
        faces = self._dlib_faces(image, small, scale) if self.kind == "dlib" else \
            self._haar_faces(small, scale)
        return sorted(faces, key=lambda f: -f.size)

    def _dlib_faces(self, image, small, scale) -> list[Face]:
        boxes, scores, _ = self._hog.run(small, 0, 0.0)
        faces = []
        for rect, score in zip(boxes, scores):
            box = (rect.left() / scale, rect.top() / scale, rect.width() / scale, rect.height() / scale)
            points = self.landmarks(image, box)
            if points is not None:   # the landmarks place the face finer than HOG's 8-pixel cells
                box = landmark_box(points)
            faces.append(Face(box, float(score), points))
        return faces

    def landmarks(self, image: np.ndarray, box) -> np.ndarray | None:
        """The 68 points of the face in ``box`` (left, top, width, height), or None without a model."""
        if self._shape is None:
            return None
        x, y, w, h = box
        rect = self._dlib.rectangle(round(x), round(y), round(x + w), round(y + h))
        shape = self._shape(image, rect)
        return np.array([(p.x, p.y) for p in shape.parts()], np.float32)

    def _haar_faces(self, small, scale) -> list[Face]:
        gray = self._cv2.cvtColor(small, self._cv2.COLOR_RGB2GRAY)
        boxes, _, weights = self._haar.detectMultiScale3(gray, 1.1, 5, minSize=(40, 40),
                                                          outputRejectLevels=True)
        return [Face(tuple(float(v) / scale for v in b), float(s)) for b, s in
                zip(np.reshape(boxes, (-1, 4)), np.reshape(weights, -1))]


def landmark_model() -> Path:
    """The 68-point model's file inside ``face_recognition_models`` (found without importing the
    package, whose ``__init__`` needs setuptools' pkg_resources)."""
    spec = importlib.util.find_spec("face_recognition_models")
    if spec is None or not spec.submodule_search_locations:
        raise InputError(f"the face landmark model is needed: {_INSTALL}")
    path = Path(spec.submodule_search_locations[0]) / "models" / "shape_predictor_68_face_landmarks.dat"
    if not path.is_file():
        raise InputError(f"face_recognition_models holds no '{path.name}': reinstall it ({_INSTALL})")
    return path


def _import(name: str, purpose: str):
    try:
        return importlib.import_module(name)
    except ImportError:
        raise InputError(f"{name} is needed to {purpose}: {_INSTALL}") from None
