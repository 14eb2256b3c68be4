"""``rest-fast eval --data DIR``: a model's figures on real clips, which have no synthetic truth.

The synthetic benchmark (:mod:`reference.evaluate`) knows every clip's mouth opening, head pose
and blinks, because it drew them. A real clip (``rest-fast prepare``'s output, or any folder of
face-cropped videos with speech) knows none of that, so the figures here need no truth beyond the
true video itself. Each of the first ``clips`` clips of the folder gives a portrait (its first
frame), its speech, and the true video that follows; the model generates from the first two.

    face found    frames in which the face detector (:mod:`reference.data.faces`, the one that
                  prepared the data) finds a face: the truth's ~1, noise 0
    lip sync      correlation of the generated mouth opening with the true one, both read from
                  the detector's 68 landmarks (inner lips over the eyes' distance), best offset
    head motion   spread of the face's centre over the clip, over its size: generated / true
    sharpness     over the truth as the model's VAE draws it (as in the synthetic benchmark)
    FD            Frechet distance of 8-frame clips in the project's frozen clip encoder's feature
                  space (reference.clip_encoder): ours, not FID, and not comparable with FID or FVD
    drift, boundary smoothness, PSNR, SSIM: as in the synthetic benchmark (reference.metrics)

The ``ground_truth`` column measures the true video the same way (generated = truth): the
ceiling of each figure. The detector must be installed: ``pip install -e ".[prepare]"``.
"""
from __future__ import annotations

import math

import numpy as np

from . import metrics
from .data.faces import FaceDetector, landmark_box, mouth_opening
from .data.folder import FolderDataset
from .evaluate import MODES, generate_stream, rendered_sharpness
from .media import InputError
from .model import RestModel
from .pipeline import sampler_settings


def face_series(frames: np.ndarray, detector: FaceDetector) -> dict:
    """Per frame: whether a face is found, its centre and size (pixels) and the mouth's opening
    (NaN where no face is found)."""
    n = len(frames)
    found = np.zeros(n, bool)
    centre, size, opening = np.full((n, 2), np.nan), np.full(n, np.nan), np.full(n, np.nan)
    for i, frame in enumerate(frames):
        faces = detector.detect(frame)
        if faces and faces[0].landmarks is not None:
            found[i] = True
            x, y, w, _ = landmark_box(faces[0].landmarks)
            centre[i], size[i] = (x + w / 2, y + w / 2), w
            opening[i] = mouth_opening(faces[0].landmarks)
    return {"found": found, "centre": centre, "size": size, "mouth_opening": opening}


def _filled(series: np.ndarray) -> np.ndarray:
    """NaNs replaced by the series' values interpolated over time (0 where none is known)."""
    ok = ~np.isnan(series)
    if not ok.any():
        return np.zeros_like(series)
    return np.interp(np.arange(len(series)), np.flatnonzero(ok), series[ok])


def head_motion(series: dict) -> float:
    """The face centre's spread over the clip (standard deviation, both axes), over its size."""
    ok = series["found"]
    if ok.sum() < 2:
        return 0.0
    return float(np.sqrt(np.nanvar(series["centre"][ok], axis=0).sum()) / np.nanmedian(series["size"][ok]))


def measure_real(frames: np.ndarray, truth_frames: np.ndarray, chunk_frames: int, truth: dict,
                 detector: FaceDetector, series: dict | None = None, features: np.ndarray | None = None) -> dict:
    """The figures of ``frames`` against the true video (``truth``: :func:`truth_stats` of it);
    ``series`` and ``features``: the frames' :func:`face_series` and clip features where known."""
    from .clip_encoder import clip_features
    series = series if series is not None else face_series(frames, detector)
    features = features if features is not None else clip_features(frames)
    sync = metrics.lip_sync(_filled(series["mouth_opening"]), _filled(truth["series"]["mouth_opening"]))
    drift = metrics.identity_drift(frames, truth_frames)
    motion = head_motion(series)
    return {"face_found": float(series["found"].mean()),
            "lip_sync_corr": sync["corr"], "lip_sync_best_offset": sync["best_offset"],
            "lip_sync_best_corr": sync["best_corr"],
            "motion": motion / truth["motion"] if truth["motion"] > 0 else float(motion == 0),
            "sharpness": metrics.sharpness(frames) / truth["sharpness"],
            "fd": max(0.0, metrics.frechet_distance(features, truth["features"])),
            "drift_first_10s": drift["first"], "drift_last_10s": drift["last"],
            "boundary_smoothness": metrics.boundary_smoothness(frames, chunk_frames),
            "psnr": metrics.psnr(frames, truth_frames), "ssim": metrics.ssim(frames, truth_frames)}


def truth_stats(frames: np.ndarray, detector: FaceDetector, rendered: float) -> dict:
    from .clip_encoder import clip_features
    series = face_series(frames, detector)
    return {"series": series, "motion": head_motion(series), "sharpness": rendered,
            "features": clip_features(frames)}


def real_clips(root, cfg, clips: int, seconds: float, first: int = 0) -> list:
    """The first window of ``seconds`` (whole chunks) of clips ``first`` .. ``first + clips - 1``
    of the folder: each a :class:`~reference.data.Clip` (portrait, frames, speech)."""
    chunks = max(1, math.floor(seconds * cfg.fps / cfg.frames_per_chunk))
    ds = FolderDataset(root, cfg, num_chunks=chunks)
    if first + clips > len(ds.sources):
        raise InputError(f"clip folder '{root}' has {len(ds.sources)} clips of at least "
                         f"{ds.window / cfg.fps:.1f} s; asked for clips {first}..{first + clips - 1}: "
                         "pass fewer --identities or a shorter --seconds")
    return [ds[ds.first_window(k)] for k in range(first, first + clips)]


def evaluate_folder(model: RestModel, root, mode: str = "student", clips: int = 2, seconds: float = 60.0,
                    first: int = 0, steps: int | None = None, cfg_scale: float | None = None,
                    cfg_mode: str | None = None, seed: int = 0, progress: bool = False,
                    force: bool = False, video_path=None) -> dict:
    """Generate from ``clips`` real clips of the folder and measure them (see the module doc)."""
    if mode not in MODES or mode == "teacher-forced":
        raise ValueError(f"mode must be one of student, teacher, vae on real clips, not {mode!r}")
    cfg = model.cfg
    if mode != "vae":
        sampler_settings(cfg, steps, cfg_mode, cfg_scale, force=force, source=model.source)
    detector = FaceDetector("dlib")
    rows, truth_rows, names = [], [], []
    for i, clip in enumerate(real_clips(root, cfg, clips, seconds, first)):
        truth = truth_stats(clip.frames, detector, rendered_sharpness(model, clip.frames))
        video = generate_stream(model, mode, clip, seed=seed + first + i, steps=steps, cfg_scale=cfg_scale,
                                cfg_mode=cfg_mode, progress=progress, force=force)
        if i == 0 and video_path:
            from .media import write_mp4
            write_mp4(video_path, video, cfg.fps, audio=clip.audio, sample_rate=cfg.speech.sample_rate)
        rows.append(measure_real(video, clip.frames, cfg.frames_per_chunk, truth, detector))
        truth_rows.append(measure_real(clip.frames, clip.frames, cfg.frames_per_chunk, truth, detector,
                                       series=truth["series"], features=truth["features"]))
        names.append(clip.name)
    mean = lambda rs: {k: float(np.mean([r[k] for r in rs])) for k in rs[0]}  # noqa: E731
    return {"mode": mode, "data": str(root), "clips": names, "seconds": len(clip.frames) / cfg.fps,
            "preset": cfg.name, "generated": mean(rows), "ground_truth": mean(truth_rows),
            "per_clip": rows}


ROWS = [("face found (share of frames)", "face_found", "{:.3f}"),
        ("lip sync: corr (lag 0), landmarks", "lip_sync_corr", "{:.3f}"),
        ("lip sync: best offset (frames)", "lip_sync_best_offset", "{:+.1f}"),
        ("lip sync: corr at best offset", "lip_sync_best_corr", "{:.3f}"),
        ("head motion (face centre), gen. / true", "motion", "{:.3f}"),
        ("sharpness, over the truth as the VAE draws it", "sharpness", "{:.3f}"),
        ("Frechet distance, clip features (ours, not FID)", "fd", "{:.2f}"),
        ("drift: static-region MAE, first 10 s", "drift_first_10s", "{:.2f}"),
        ("drift: static-region MAE, last 10 s", "drift_last_10s", "{:.2f}"),
        ("chunk-boundary smoothness (1 = seamless)", "boundary_smoothness", "{:.3f}"),
        ("PSNR (dB; favours a blurred mean)", "psnr", "{:.2f}"),
        ("SSIM (favours a blurred mean)", "ssim", "{:.3f}")]


def format_real_table(report: dict) -> str:
    g, t = report["generated"], report["ground_truth"]
    width = max(len(r[0]) for r in ROWS)
    lines = [f"{report['mode']} on {len(report['clips'])} real clips x {report['seconds']:.0f} s from "
             f"{report['data']} ({report['preset']} preset)",
             f"{'':{width}}  {'model':>9}  {'truth':>9}"]
    lines += [f"{label:{width}}  {fmt.format(g[key]):>9}  {fmt.format(t[key]):>9}" for label, key, fmt in ROWS]
    lines.append("truth: the true clip measured the same way; its sharpness is its own over the VAE's "
                 "drawing of it (sharper than any VAE draws)")
    return "\n".join(lines)
