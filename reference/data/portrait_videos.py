"""Videos of real people with a known face box in every frame, made from registry photographs.

``rest-fast prepare`` must be tested on real faces, and no video of people can be downloaded here.
These videos are made from the portraits that ship inside packages: scikit-image's ``astronaut``
(Eileen Collins) and matplotlib's ``grace_hopper.jpg``. Each shot moves, scales and rotates one
photo along a known path over a background of other registry photos (a cat, a rocket, coffee:
distractors), so the face's box is known in every frame. :func:`people_shots` strings shots into
the video the tests need: a still stretch, motion, a cut to the other person, a stretch with no
face and a second face, with a speech track.

``PORTRAITS`` holds each photo's face as (centre x, centre y, size) in the photo's pixels, as
dlib's detector draws it on the still photo; :attr:`Shot.box` carries it along the path.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from ..media import InputError

# The face in each photo: (centre x, centre y, size) in the photo's pixels, dlib's box on the photo.
PORTRAITS = {"astronaut": (220.5, 121.5, 91.0), "hopper": (273.5, 232.5, 187.0)}
HEAD_REACH = 1.4   # a person is drawn as the square of 2 x 1.4 face sizes about the face


def photo(name: str) -> np.ndarray:
    """A registry photograph as RGB uint8: the portraits above, or a distractor ("chelsea": a
    cat, "rocket", "coffee")."""
    try:
        if name == "hopper":
            import matplotlib.cbook
            from PIL import Image
            path = matplotlib.cbook.get_sample_data("grace_hopper.jpg", asfileobj=False)
            return np.asarray(Image.open(path).convert("RGB"))
        import skimage.data
    except ImportError as e:
        raise InputError(f"the test photographs need scikit-image and matplotlib ({e}): "
                         'pip install -e ".[test]"') from None
    return getattr(skimage.data, name)()


@dataclass
class Shot:
    """``seconds`` of one photo moving along a path: at time t (s from the shot's start) the
    photo's face centre sits at ``centre(t)`` (pixels of the frame), drawn ``scale(t)`` times its
    size, turned by ``angle(t)`` degrees; ``person`` None is a shot with no face. ``second``: a
    second face (photo, centre, scale) held still in the frame."""
    seconds: float
    person: str | None = None
    centre: callable = lambda t: (0.0, 0.0)
    scale: callable = lambda t: 1.0
    angle: callable = lambda t: 0.0
    second: tuple | None = None
    noise: float = 0.0             # sensor noise: Gaussian, this many levels of 255 per pixel
    background: str = "coffee"
    distractors: tuple = (("chelsea", (0.12, 0.75), 0.35), ("rocket", (0.88, 0.3), 0.3))

    def box(self, t: float) -> tuple[float, float, float, float] | None:
        """The face's box (left, top, width, height) at time t, or None in a faceless shot."""
        if self.person is None:
            return None
        (x, y), size = self.centre(t), PORTRAITS[self.person][2] * self.scale(t)
        return (x - size / 2, y - size / 2, size, size)


def _paste(cv2, canvas: np.ndarray, image: np.ndarray, anchor, target, scale: float, angle: float,
           reach: float | None = None):
    """Draw ``image`` into ``canvas`` so that its pixel ``anchor`` lands at ``target``, scaled by
    ``scale`` and turned by ``angle`` degrees about the anchor; ``reach``: only the square of
    half-side ``reach`` pixels (of the image) about the anchor (a head and shoulders)."""
    if reach is not None:
        x0, y0 = max(0, round(anchor[0] - reach)), max(0, round(anchor[1] - reach))
        image = image[y0:round(anchor[1] + reach), x0:round(anchor[0] + reach)]
        anchor = (anchor[0] - x0, anchor[1] - y0)
    m = cv2.getRotationMatrix2D((float(anchor[0]), float(anchor[1])), angle, scale)
    m[:, 2] += np.asarray(target, np.float64) - np.asarray(anchor, np.float64)
    h, w = canvas.shape[:2]
    warped = cv2.warpAffine(image, m, (w, h), flags=cv2.INTER_LINEAR, borderValue=(0, 0, 0))
    mask = cv2.warpAffine(np.full(image.shape[:2], 255, np.uint8), m, (w, h), flags=cv2.INTER_NEAREST)
    canvas[mask > 0] = warped[mask > 0]


def render(shot: Shot, t: float, size=(640, 360), photos: dict | None = None) -> np.ndarray:
    """The frame of ``shot`` at time ``t``: background, distractors, the person, a second face,
    and the shot's sensor noise (drawn from t, so a frame is the same each time it is drawn)."""
    import cv2
    photos = photos if photos is not None else {}
    get = lambda name: photos.setdefault(name, photo(name))  # noqa: E731
    w, h = size
    canvas = cv2.resize(get(shot.background), (w, h), interpolation=cv2.INTER_AREA)
    for name, (fx, fy), frac in shot.distractors:
        img = get(name)
        _paste(cv2, canvas, img, (img.shape[1] / 2, img.shape[0] / 2), (fx * w, fy * h),
               frac * h / img.shape[0], 0.0)
    if shot.second is not None:
        name, centre, scale = shot.second
        _paste(cv2, canvas, get(name), PORTRAITS[name][:2], centre, scale, 0.0,
               reach=HEAD_REACH * PORTRAITS[name][2])
    if shot.person is not None:
        _paste(cv2, canvas, get(shot.person), PORTRAITS[shot.person][:2], shot.centre(t),
               shot.scale(t), shot.angle(t), reach=HEAD_REACH * PORTRAITS[shot.person][2])
    if shot.noise:
        grain = np.random.default_rng(round(t * 1000)).normal(0, shot.noise, canvas.shape)
        canvas = np.clip(canvas + grain, 0, 255).astype(np.uint8)
    return canvas


@dataclass
class VideoTruth:
    """What :func:`write_video` drew: per frame, the face's box (None where there is none), the
    shot it belongs to, and whether a second face is in it."""
    fps: int
    boxes: list = field(default_factory=list)
    shots: list = field(default_factory=list)
    second_face: list = field(default_factory=list)


def write_video(path, shots: list[Shot], fps: int = 25, size=(640, 360), speech: np.ndarray | None = None,
                sample_rate: int = 16000) -> VideoTruth:
    """Render ``shots`` one after another into an mp4 at ``path`` (with ``speech`` as its audio,
    looped or cut to the video's length) and return the truth of every frame."""
    from ..media import Mp4Writer
    truth, photos = VideoTruth(fps), {}
    total = sum(round(s.seconds * fps) for s in shots)
    audio = None
    if speech is not None:
        n = round(total / fps * sample_rate)
        audio = np.resize(np.asarray(speech, np.float32), n)
    with Mp4Writer(path, fps, size[0], size[1], audio=audio, sample_rate=sample_rate) as writer:
        for k, shot in enumerate(shots):
            for n in range(round(shot.seconds * fps)):
                t = n / fps
                writer.write(render(shot, t, size, photos)[None])
                truth.boxes.append(shot.box(t))
                truth.shots.append(k)
                truth.second_face.append(shot.second is not None)
    return truth


def people_shots(size=(640, 360), noise: float = 4.0) -> list[Shot]:
    """The shots of the prepare tests: Eileen Collins still (2 s), then moving, growing and
    turning (3 s); a cut to Grace Hopper moving (3 s); no face (2 s); Grace Hopper with a second
    face beside her (2 s); Grace Hopper alone and still (2.5 s). Every frame carries sensor noise
    (``noise`` levels), so that a still face's detected box jitters as a camera's would."""
    w, h = size
    u = h / 360   # paths are drawn for 640x360 and scaled to the frame

    def sweep(t, x0, x1, seconds):
        return x0 + (x1 - x0) * min(max(t / seconds, 0.0), 1.0)
    return [
        Shot(2.0, "astronaut", centre=lambda t: (0.45 * w, 0.45 * h), scale=lambda t: 1.1 * u, noise=noise),
        Shot(3.0, "astronaut",
             centre=lambda t: (sweep(t, 0.45, 0.6, 3.0) * w, (0.45 + 0.04 * math.sin(2 * t)) * h),
             scale=lambda t: sweep(t, 1.1, 1.4, 3.0) * u, angle=lambda t: 10 * math.sin(1.5 * t), noise=noise),
        Shot(3.0, "hopper", centre=lambda t: (sweep(t, 0.5, 0.4, 3.0) * w, 0.45 * h),
             scale=lambda t: 0.75 * u, angle=lambda t: -6 * math.sin(t), background="rocket",
             distractors=(("chelsea", (0.85, 0.7), 0.4),), noise=noise),
        Shot(2.0, None, background="rocket", distractors=(("chelsea", (0.5, 0.5), 0.6),), noise=noise),
        Shot(2.0, "hopper", centre=lambda t: (0.35 * w, 0.45 * h), scale=lambda t: 0.75 * u,
             second=("astronaut", (0.78 * w, 0.4 * h), 1.2 * u), background="rocket", noise=noise),
        Shot(2.5, "hopper", centre=lambda t: (0.35 * w, 0.45 * h), scale=lambda t: 0.75 * u,
             background="rocket", noise=noise),
    ]
