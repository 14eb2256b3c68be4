"""Pictures of a benchmark run (``rest-fast eval --report DIR``): what the table's figures look like.

From the frames an ``evaluate(..., frames_dir=KEPT)`` kept and the clips drawn again
(:func:`reference.evaluate.kept_run`), :func:`write_report` writes into DIR, beside report.json:

    strip_<i>.png     identity i's generated frames (top row) above the true ones (bottom row),
                      pixel for pixel, at the stream's start and end, across its first chunk
                      boundary and its worst seam, and where the true head turns furthest
    mouth_<i>.png     the mouth opening read from the generated and the true video against time,
                      over the speech's loudness (RMS per frame): all of it, and 6 s of it
    drift.png         static-region error per second, each identity, over the report's 10-s bins
    sharpness.png     sharpness per second over the report's reference (the VAE's rendering of the
                      truth, or the truth): < 1 blur, > 1 grain or noise
    series_<key>.png  any other figure the report gives as a list over time, model against truth
    index.html        the run, its table (every figure the report holds, floors included) and the
                      pictures

Rendering needs matplotlib (the ``plots`` extra), imported only here. Every file is written
atomically. The strips are placed with ``figimage``, which copies pixels unscaled: the frames in
the PNG are the kept frames (enlarged by a whole factor when small), as a test checks.
"""
from __future__ import annotations

import html
import json
import math
import os
import re
from pathlib import Path

import numpy as np

from . import metrics
from .data.synthetic import MAX_SHIFT
from .evaluate import REPORT_NAME, head_offsets, kept_run, steady_view
from .media import write_atomic, write_text_atomic

PLOTS_HINT = 'pip install -e ".[plots]"'
DPI = 100
GENERATED, TRUE, LOUD = "#d62728", "#222222", "#9ecae1"   # the colours of every plot
STRIP_MIN_TILE = 128      # a smaller frame is enlarged by a whole factor to at least this
STRIP_GAP = 4             # pixels between tiles
STRIP_MARGIN = (110, 72)  # (left, top) pixels for the row and column labels; the bottom as the top
ZOOM_SECONDS = 6.0        # the mouth plot's close-up


def require_matplotlib():
    """matplotlib's Figure class, or ImportError saying how to install the ``plots`` extra."""
    try:
        import matplotlib
        matplotlib.use("Agg")  # files only: no display is opened
        from matplotlib.figure import Figure
    except ImportError:
        raise ImportError(f"--report draws with matplotlib, which is not installed: {PLOTS_HINT}") from None
    return Figure


def save_figure(fig, path: Path) -> None:
    write_atomic(path, lambda f: fig.savefig(f, format="png", dpi=DPI))


# ------------------------------------------------------------------------------- time series

def loudness(audio: np.ndarray, samples_per_frame: int, frames: int) -> np.ndarray:
    """RMS of the speech over each video frame's samples (0 past the audio's end)."""
    x = np.zeros(frames * samples_per_frame, np.float64)
    n = min(len(audio), len(x))
    x[:n] = audio[:n]
    return np.sqrt((x.reshape(frames, samples_per_frame) ** 2).mean(axis=1))


def mouth_over_time(video: np.ndarray, clip) -> tuple[np.ndarray, np.ndarray]:
    """The mouth opening per frame of the generated and of the true video, each read as the
    benchmark reads it (restless heads moved back by their own offsets first)."""
    truth_offsets = head_offsets(clip.frames, clip)
    true_view, box, _ = steady_view(clip.frames, clip, truth_offsets)
    generated_view, box, _ = steady_view(video, clip)
    return metrics.mouth_opening(generated_view, box), metrics.mouth_opening(true_view, box)


def sharpness_over_time(video: np.ndarray, reference: float, window: int) -> np.ndarray:
    """Sharpness per ``window`` frames (the last window the remainder) over ``reference``, the
    whole clip's reference sharpness (the report's: the VAE's rendering of the truth, or the truth)."""
    return np.array([metrics.sharpness(video[i:i + window]) / max(reference, 1e-12)
                     for i in range(0, len(video), window)])


def window_centres(frames: int, window: int, fps: int) -> np.ndarray:
    """The time (s) at the middle of each ``window``-frame window of ``frames`` frames."""
    starts = np.arange(0, frames, window)
    return (starts + np.minimum(window, frames - starts) / 2) / fps


def head_turn(clip) -> np.ndarray:
    """How far the true head has turned in each frame: yaw where the data draws it (lively and
    restless), else how far it has swayed (calm), as a share of the sway's bound."""
    truth = clip.truth
    if np.any(truth["yaw"]):
        return np.asarray(truth["yaw"], np.float64)
    return np.asarray(truth["dx"], np.float64) / MAX_SHIFT[0]


# ------------------------------------------------------------------------------- frame strips

def strip_columns(video: np.ndarray, clip, chunk_frames: int, fps: int) -> list[tuple[int, str]]:
    """The frames a strip shows, in time order, each with its label: the start; the last frame of
    the first chunk and the first of the next; the same at the worst seam (the boundary where the
    generated video jumps most, by mean |second difference|); the head's furthest turn to each
    side; the end."""
    n = min(len(video), len(clip.frames))
    picks = {0: "start", n - 1: "end"}
    boundaries = np.arange(chunk_frames, n, chunk_frames)
    if len(boundaries):
        energy = metrics.second_difference_energy(video[:n])    # centred on frames 1 .. n-2
        jump = [energy[b - 2:b].mean() for b in boundaries]     # stencils centred on b-1 and b
        for b, note in ((boundaries[0], ""), (boundaries[int(np.argmax(jump))], "worst seam\n")):
            k = b // chunk_frames
            picks.setdefault(b - 1, f"{note}chunk {k} ends")
            picks.setdefault(b, f"chunk {k + 1} begins")
    turn = head_turn(clip)[:n].copy()
    for sign, side in ((-1, "left"), (1, "right")):   # the furthest turn not shown already
        turn[list(picks)] = np.nan
        picks[int(np.nanargmax(sign * turn))] = f"furthest turn {side}"
    return [(f, f"{f / fps:.2f} s\n{picks[f]}") for f in sorted(picks)]


def strip_layout(columns: int, size: int) -> dict:
    """Where each tile of a strip goes, in pixels of the PNG (origin top left): ``scale`` (the
    whole factor frames are enlarged by), ``tile`` (side), ``width``, ``height``, ``x`` (each
    column's left edge), ``y`` (the generated row's top, the true row's top). The bottom margin
    equals the top one, so the generated row lies in the top half and the true row in the bottom."""
    scale = max(1, math.ceil(STRIP_MIN_TILE / size))
    tile = size * scale
    left, top = STRIP_MARGIN
    width = left + columns * (tile + STRIP_GAP)
    height = 2 * top + 2 * tile + STRIP_GAP
    return {"scale": scale, "tile": tile, "width": width, "height": height,
            "x": [left + c * (tile + STRIP_GAP) for c in range(columns)], "y": [top, top + tile + STRIP_GAP]}


def draw_strip(path: Path, video: np.ndarray, truth: np.ndarray, columns: list[tuple[int, str]],
               title: str, chunk_frames: int) -> dict:
    """One identity's strip (see :func:`strip_layout`); a red bar joins the two frames of a chunk
    boundary. Returns the layout."""
    Figure = require_matplotlib()
    layout = strip_layout(len(columns), video.shape[1])
    s, tile, width, height = layout["scale"], layout["tile"], layout["width"], layout["height"]
    fig = Figure(figsize=(width / DPI, height / DPI), dpi=DPI, facecolor="white")
    for (frame, label), x in zip(columns, layout["x"]):
        for rows, y in ((video, layout["y"][0]), (truth, layout["y"][1])):
            pixels = np.repeat(np.repeat(rows[frame], s, axis=0), s, axis=1)
            fig.figimage(pixels, xo=x, yo=height - y - tile, origin="upper")
        fig.text((x + tile / 2) / width, 1 - (layout["y"][0] - 4) / height, label, ha="center", va="bottom",
                 fontsize=9 if tile >= 192 else 8)
    for frame, x in zip([c[0] for c in columns], layout["x"]):
        if frame % chunk_frames == 0 and frame and frame - 1 in [c[0] for c in columns]:
            # The boundary lies in the gap before this column: a bar along it and under the rows.
            bar = (x - STRIP_GAP / 2) / width
            fig.add_artist(_line(fig, [bar, bar], [(height - layout["y"][1] - tile - 6) / height,
                                                   1 - (layout["y"][0] - 2) / height]))
    for label, y in (("generated", layout["y"][0]), ("truth", layout["y"][1])):
        fig.text(6 / width, 1 - (y + tile / 2) / height, label, ha="left", va="center", fontsize=10,
                 color=GENERATED if label == "generated" else TRUE, weight="bold")
    fig.text(6 / width, 1 - 4 / height, title, ha="left", va="top", fontsize=10, weight="bold")
    fig.text(6 / width, 4 / height, "red bar: a chunk boundary (the frames on either side come from "
             "different chunks)", ha="left", va="bottom", fontsize=8, color=GENERATED)
    save_figure(fig, path)
    return layout


def _line(fig, xs, ys):
    from matplotlib.lines import Line2D
    return Line2D(xs, ys, transform=fig.transFigure, color=GENERATED, linewidth=2)


# ------------------------------------------------------------------------------- plots

def _mark_chunks(ax, frames: int, chunk_frames: int, fps: int, lines: bool = False) -> None:
    """Chunk boundaries: short ticks along the top of the axes, or (``lines``) faint full lines."""
    times = np.arange(chunk_frames, frames, chunk_frames) / fps
    lo, hi = ax.get_xlim()
    times = times[(times >= lo) & (times <= hi)]
    if lines:
        ax.vlines(times, 0, 1, transform=ax.get_xaxis_transform(), color="#bbbbbb", linewidth=0.8,
                  linestyle=":", zorder=0, label="chunk boundary")
    else:
        ax.vlines(times, 0.96, 1, transform=ax.get_xaxis_transform(), color="#888888", linewidth=0.8,
                  label="chunk boundaries")


def draw_mouth(path: Path, generated: np.ndarray, true: np.ndarray, loud: np.ndarray, fps: int,
               chunk_frames: int, title: str) -> None:
    """Mouth opening, generated and true, over the loudness: the whole stream, then a close-up of
    ``ZOOM_SECONDS`` from its middle, where the chunk boundaries are drawn."""
    Figure = require_matplotlib()
    n = min(len(generated), len(true), len(loud))
    t = np.arange(n) / fps
    zoom_from = max(0.0, (n / fps - ZOOM_SECONDS) / 2)
    fig = Figure(figsize=(11, 6), dpi=DPI, layout="constrained")
    axes = fig.subplots(2, 1, height_ratios=[1, 1])
    top = max(float(np.max(loud[:n])), 1e-9) * 1.05
    for ax, (lo, hi) in zip(axes, [(0, n / fps), (zoom_from, min(n / fps, zoom_from + ZOOM_SECONDS))]):
        quiet = ax.twinx()
        quiet.fill_between(t, loud[:n], color=LOUD, alpha=0.6, linewidth=0, label="speech loudness (RMS)")
        quiet.set_ylim(0, top)
        quiet.set_ylabel("loudness (RMS)", color="#3182bd")
        ax.set_zorder(quiet.get_zorder() + 1)
        ax.patch.set_visible(False)   # the loudness shows through behind the lines
        ax.plot(t, true[:n], color=TRUE, linewidth=1.2, label="true video")
        ax.plot(t, generated[:n], color=GENERATED, linewidth=1.2, alpha=0.85, label="generated")
        ax.set_xlim(lo, hi)
        ax.set_ylim(0, max(0.05, float(max(true[:n].max(), generated[:n].max()))) * 1.1)
        ax.set_ylabel("mouth opening\n(share of mouth box)")
        _mark_chunks(ax, n, chunk_frames, fps, lines=ax is axes[1])
        ax.grid(axis="y", alpha=0.3)
    axes[0].set_title(title, loc="left", fontsize=11)
    axes[1].set_title(f"close-up, {axes[1].get_xlim()[0]:.1f}-{axes[1].get_xlim()[1]:.1f} s", loc="left",
                      fontsize=10)
    axes[1].set_xlabel("time (s)")
    handles = [h for a in (axes[1], fig.axes[-1]) for h in a.get_legend_handles_labels()[0]]
    fig.legend(handles=handles, loc="outside lower center", fontsize=9, ncols=4, frameon=False)
    save_figure(fig, path)


def draw_over_time(path: Path, lines: list[tuple], title: str, ylabel: str, frames: int,
                   chunk_frames: int, fps: int, level: float | None = None, steps_label: str = "") -> None:
    """Lines ``(label, times, values)`` against time, each optionally with ``(bin edges, values)``
    drawn dashed in its colour as coarser bins (``steps_label`` names them); ``level``: a dotted
    line where the truth is."""
    Figure = require_matplotlib()
    fig = Figure(figsize=(11, 4), dpi=DPI, layout="constrained")
    ax = fig.subplots()
    for label, x, y, *steps in lines:
        line, = ax.plot(x, y, marker="o", markersize=3, linewidth=1.4, label=label)
        for edges, values in steps:
            ax.stairs(values, edges, baseline=None, linewidth=2, linestyle="--", color=line.get_color(),
                      alpha=0.7, label=f"{label}, {steps_label}" if steps_label else None)
    if level is not None:
        ax.axhline(level, color=TRUE, linestyle=":", linewidth=1.2, label=f"the truth ({level:g})")
    ax.set_xlim(0, frames / fps)
    ax.set_ylim(bottom=0)   # a change reads at its true size
    _mark_chunks(ax, frames, chunk_frames, fps)
    ax.set_title(title, loc="left", fontsize=11)
    ax.set_xlabel("time (s)")
    ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="best")
    save_figure(fig, path)


def series_keys(report: dict) -> list[str]:
    """The report's figures given as lists over time (one value per bin), other than the ones
    drawn finer by their own pictures."""
    return [k for k, v in report["generated"].items() if isinstance(v, list) and k not in DRAWN_FINER]


DRAWN_FINER = {"drift_per_10s": "drift.png"}


def bin_seconds(key: str, count: int, seconds: float) -> float:
    """A series' bin length: named in its key (``..._per_10s``), else the stream shared equally."""
    named = re.search(r"per_(\d+(?:\.\d+)?)s$", key)
    return float(named.group(1)) if named else seconds / max(count, 1)


def bin_edges(count: int, width: float, seconds: float) -> np.ndarray:
    return np.minimum(np.arange(count + 1) * width, seconds)


# ------------------------------------------------------------------------------- the page

def _cell(value) -> str:
    if isinstance(value, bool) or value is None:
        return html.escape(str(value))
    if isinstance(value, (int, float)):
        return f"{value:.4g}" if math.isfinite(value) else str(value)
    if isinstance(value, list):
        shown = ", ".join(_cell(v) for v in value[:8])
        return f"[{shown}{', ...' if len(value) > 8 else ''}]"
    return html.escape(str(value))


def floor_rows(report: dict) -> dict[str, dict]:
    """The report's rows of floors (any top-level dict whose key names a floor)."""
    return {k: v for k, v in report.items() if "floor" in k and isinstance(v, dict)}


def table_html(report: dict) -> str:
    """Every figure of the report, one row each: the model, the truth, then every floor row."""
    columns = {"model": report["generated"], "truth": report["ground_truth"], **floor_rows(report)}
    keys = list(dict.fromkeys(k for row in columns.values() for k in row))
    head = "".join(f"<th>{html.escape(c.replace('_', ' '))}</th>" for c in columns)
    body = "".join(f"<tr><td>{html.escape(k)}</td>"
                   + "".join(f"<td>{_cell(row[k]) if k in row else ''}</td>" for row in columns.values())
                   + "</tr>" for k in keys)
    return f"<table><tr><th>figure</th>{head}</tr>{body}</table>"


def per_identity_html(report: dict) -> str:
    rows = report.get("per_identity", [])
    if len(rows) < 2:
        return ""
    first = report.get("first_identity", 0)
    keys = list(dict.fromkeys(k for row in rows for k in row))
    head = "".join(f"<th>identity {first + i}</th>" for i in range(len(rows)))
    body = "".join(f"<tr><td>{html.escape(k)}</td>" + "".join(f"<td>{_cell(r.get(k, ''))}</td>" for r in rows)
                   + "</tr>" for k in keys)
    return f"<h2>Per identity</h2><table><tr><th>figure</th>{head}</tr>{body}</table>"


STYLE = """body{font-family:system-ui,sans-serif;margin:2em;max-width:1400px;color:#222}
table{border-collapse:collapse;font-size:14px;margin-bottom:1.5em}
td,th{border:1px solid #ccc;padding:3px 10px;text-align:right}td:first-child,th:first-child{text-align:left}
tr:nth-child(even){background:#f6f6f6}figure{margin:1.5em 0}img{max-width:100%;border:1px solid #ddd}
figcaption{font-size:14px;color:#444;margin-top:.3em}"""


def index_html(report: dict, pictures: list[tuple[str, str]]) -> str:
    """The page: what ran, the table, the pictures ``(file name, caption)``."""
    first, count = report.get("first_identity", 0), report["identities"]
    which = f"identity {first}" if count == 1 else f"identities {first}-{first + count - 1}"
    run = (f"{report['mode']} on held-out {which} x {report['seconds']:.1f} s, "
           f"{report['preset']} preset, {report['data']} data, decoder {report.get('decoder', '?')}")
    sampler = report.get("sampler")
    if sampler:
        run += "; sampler " + ", ".join(f"{k.replace('_', ' ')} {v}" for k, v in sampler.items())
    figures = "".join(f'<figure><img src="{html.escape(name)}" alt="{html.escape(name)}">'
                      f"<figcaption>{html.escape(caption)}</figcaption></figure>" for name, caption in pictures)
    return (f"<!doctype html><html><head><meta charset='utf-8'><title>rest-fast eval</title>"
            f"<style>{STYLE}</style></head><body><h1>rest-fast eval</h1><p>{html.escape(run)}</p>"
            f"{table_html(report)}{per_identity_html(report)}<h2>Pictures</h2>{figures}"
            f"<p>Figures: reference/evaluate.py and reference/metrics.py; data: {REPORT_NAME}.</p>"
            f"</body></html>\n")


# ------------------------------------------------------------------------------- all of it

def write_report(directory: str | os.PathLike, kept: str | os.PathLike, report: dict | None = None,
                 progress: bool = False) -> list[Path]:
    """Draw the run kept in ``kept`` (frames and report) into ``directory``: report.json (``report``
    where given, e.g. a rescored one, else the kept one), the PNGs and index.html (module doc).
    Returns the files written, index.html last."""
    from tqdm import tqdm
    require_matplotlib()
    directory = Path(directory)
    saved, cfg, streams = kept_run(kept)
    report = report or saved
    fps, chunk = cfg.fps, cfg.frames_per_chunk
    first = report["first_identity"]
    pictures, drift_lines, sharp_lines, frames = [], [], [], 0
    bar = tqdm(streams, total=report["identities"], desc="report", unit="identity", disable=not progress)
    for n, (video, clip) in enumerate(bar):
        i, row = first + n, report["per_identity"][n] if n < len(report.get("per_identity", [])) else {}
        frames = min(len(video), len(clip.frames))
        columns = strip_columns(video, clip, chunk, fps)
        draw_strip(directory / f"strip_{i}.png", video, clip.frames, columns,
                   f"identity {i}: generated above truth", chunk)
        pictures.append((f"strip_{i}.png", f"Identity {i}: generated frames (top) above the true ones "
                         "(bottom) at the start, across chunk boundaries, at the head's furthest turns, "
                         "and at the end."))
        generated, true = mouth_over_time(video, clip)
        sync = f"lip sync corr {row['lip_sync_corr']:.3f}" if "lip_sync_corr" in row else ""
        draw_mouth(directory / f"mouth_{i}.png", generated, true, loudness(clip.audio, cfg.samples_per_frame, frames),
                   fps, chunk, f"identity {i}: mouth opening against the speech's loudness  {sync}")
        pictures.append((f"mouth_{i}.png", f"Identity {i}: mouth opening read from the generated and the true "
                         "video, over the speech's loudness; below, a close-up with the chunk boundaries."))
        drift = metrics.identity_drift(video, clip.frames, fps, bin_seconds=1.0)["mae_per_bin"]
        bins = row.get("drift_per_10s")   # the table's, drawn over the finer line
        drift_lines.append((f"identity {i}", window_centres(frames, fps, fps), np.array(drift),
                            *([(bin_edges(len(bins), 10.0, frames / fps), np.array(bins))] if bins else [])))
        reference = (report["reference_sharpness"][n] if "reference_sharpness" in report
                     else metrics.sharpness(clip.frames))
        sharp_lines.append((f"identity {i}", window_centres(frames, fps, fps),
                            sharpness_over_time(video[:frames], reference, fps)))
    draw_over_time(directory / "drift.png", drift_lines, "identity drift: error on the static region "
                   "(background, hair, skin) per second; the truth's is 0", "mean |error| (0-255)",
                   frames, chunk, fps, steps_label="the report's 10-s bins")
    pictures.append(("drift.png", "Drift: the static region's error against the truth, per second (the "
                     "table's drift figures are its first and last 10 s and its slope)."))
    over = "the VAE's truth" if report.get("sharpness_reference") == "vae" else "true"
    draw_over_time(directory / "sharpness.png", sharp_lines, f"sharpness per second, generated / {over} "
                   "(< 1: blur, > 1: grain or noise)", f"sharpness, generated / {over}", frames, chunk, fps, level=1.0)
    pictures.append(("sharpness.png", f"Sharpness per second, generated over {over} (the whole clip's): "
                     "below 1 is blur, above it grain or noise."))
    for key in series_keys(report):
        values = np.array(report["generated"][key], float)
        width = bin_seconds(key, len(values), report["seconds"])
        edges = bin_edges(len(values), width, report["seconds"])
        centres = (edges[:-1] + edges[1:]) / 2
        lines = [("model (mean)", centres, values)]
        if isinstance(report["ground_truth"].get(key), list):
            lines.append(("truth (mean)", centres, np.array(report["ground_truth"][key], float)))
        draw_over_time(directory / f"series_{key}.png", lines, f"{key} against time", key,
                       round(report["seconds"] * fps), chunk, fps)
        pictures.append((f"series_{key}.png", f"{key}, as the report gives it, against time."))
    write_text_atomic(directory / REPORT_NAME, json.dumps(report, indent=2))
    write_text_atomic(directory / "index.html", index_html(report, pictures))
    return [directory / REPORT_NAME] + [directory / name for name, _ in pictures] + [directory / "index.html"]
