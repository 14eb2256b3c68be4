"""A markdown table of docs/training.md from the JSON reports of ``rest-fast eval``.

    python3 tools/ablation_table.py runs/eval > table.md                   # the ablation rows
    python3 tools/ablation_table.py runs/lively/eval --rows vae 8x6="8 x Joint CFG 6" 1x1

Rows are report files (OUT/NAME.json) in the given order, labelled by ``NAME=LABEL`` or, for the
ablations' names, as below; without ``--rows``, the ablation rows that exist. Reports of the
lively and restless data get the columns a mean cannot fake (head motion, ghost, blinks,
sharpness, FD) and, where the report names its sampler, the DiT forwards per chunk. ``--against
NAME`` adds a column with the figures on which each row is more than ``--within`` (default 10%)
and more than the figure's noise floor worse than row NAME (``reference.evaluate.worse_than``;
the floor is the larger of the two reports' ``noise_floor``), and a last row with that floor.
A figure a report predates shows as "-".
"""
import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from reference.data.synthetic import LIVELY_KINDS  # noqa: E402
from reference.evaluate import worse_than  # noqa: E402

ABLATIONS = {"vae": "the true video through the VAE (ceiling of every model below)",
             "teacher": "teacher (full attention, offline)",
             "student_no_asd": "student without ASD (L_S only)",
             "student_con": "student, L_S + L_CON",
             "student": "student, L_S + L_CON + L_SMO (full ASD)",
             "student_infonce": "student, full ASD with InfoNCE L_CON (positive in the denominator)",
             "student_no_sink": "student, full ASD, without the ID sink",
             "student_no_prev": "student, full ASD, without the previous-chunk cache"}
LIVELY_COLUMNS = [("motion", "head motion", "{:.2f}"), ("ghost", "ghost", "{:.2f}"),
                  ("blink_rate", "blinks /min", "{:.1f}"), ("blink_rate_ratio", "blink rate / true", "{:.2f}"),
                  ("sharpness", "sharpness", "{:.3f}"), ("fd", "FD (ours)", "{:.1f}")]
COLUMNS = [("lip_sync_corr", "lip-sync corr", "{:.3f}"), ("lip_sync_best_offset", "best offset", "{:+.1f}"),
           ("drift_first_10s", "drift 0-10 s", "{:.2f}"), ("drift_last_10s", "drift 50-60 s", "{:.2f}"),
           ("drift_slope_per_min", "drift slope /min", "{:+.2f}"),
           ("boundary_smoothness", "boundary smoothness", "{:.3f}"), ("psnr", "PSNR dB", "{:.2f}"),
           ("ssim", "SSIM", "{:.3f}")]


def table(folder: str, rows: list[str] | None = None, against: str | None = None, within: float = 0.1) -> str:
    reports = {p.stem: json.loads(p.read_text()) for p in Path(folder).glob("*.json")}
    chosen = []
    for row in rows or list(ABLATIONS):
        name, _, label = row.partition("=")
        if name in reports:
            chosen.append((name, label or ABLATIONS.get(name, name)))
        elif rows:
            raise SystemExit(f"no report {name}.json in {folder}")
    if not chosen:
        raise SystemExit(f"no reports to tabulate in {folder}")
    lively = any(reports[name].get("data") in LIVELY_KINDS for name, _ in chosen)
    forwards = any("sampler" in reports[name] for name, _ in chosen)
    columns = (LIVELY_COLUMNS if lively else []) + COLUMNS
    if against is not None and against not in reports:
        raise SystemExit(f"no report {against}.json in {folder}")
    head = ["model"] + (["DiT forwards / chunk"] if forwards else []) + [c[1] for c in columns]
    if against:
        head.append(f"more than {within:.0%} worse than {against} on")
    lines = ["| " + " | ".join(head) + " |", "|---" * len(head) + "|"]
    for name, label in chosen:
        report, cells = reports[name], [label]
        if forwards:
            cells.append(str(report.get("sampler", {}).get("dit_forwards_per_chunk", "")))
        cells += [cell(report["generated"], k, fmt) for k, _, fmt in columns]
        if against:
            base = reports[against]
            cells.append(", ".join(worse_than(report["generated"], base["generated"], within,
                                              floor_of(report, base))) or "-")
        lines.append("| " + " | ".join(cells) + " |")
    truth = reports[chosen[0][0]]["ground_truth"]
    lines.append("| ground truth (the renderer's own video) | " + ("| " if forwards else "") +
                 " | ".join(cell(truth, k, fmt) for k, _, fmt in columns) + (" | |" if against else " |"))
    if against and reports[against].get("noise_floor"):
        noise = reports[against]["noise_floor"]
        lines.append(f"| noise floor of {against} (ignored; |ln x| for ratios) | " + ("| " if forwards else "") +
                     " | ".join(f"{noise[k]:.2f}" if k in noise else "" for k, _, _ in columns) + " | |")
    return "\n".join(lines)


def cell(figures: dict, key: str, fmt: str) -> str:
    return fmt.format(figures[key]) if key in figures else "-"


def floor_of(report: dict, base: dict) -> dict:
    """Per figure, the larger of the two reports' noise floors (what worse_than ignores)."""
    a, b = report.get("noise_floor", {}), base.get("noise_floor", {})
    return {k: max(a.get(k, 0.0), b.get(k, 0.0)) for k in set(a) | set(b)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("folder", help="a folder of `rest-fast eval --json` reports")
    p.add_argument("--rows", nargs="+", help="NAME or NAME=LABEL per row (NAME.json in the folder)")
    p.add_argument("--against", help="NAME of the row the others are judged against")
    p.add_argument("--within", type=float, default=0.1, help="the tolerated shortfall (default 0.1: 10%%)")
    args = p.parse_args()
    print(table(args.folder, args.rows, args.against, args.within))


if __name__ == "__main__":
    main()
