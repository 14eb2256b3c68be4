"""The ablation table of docs/training.md from the JSON reports of ``rest-fast eval``.

    python3 tools/ablation_table.py runs/eval > table.md
"""
import json
import sys
from pathlib import Path

ROWS = [("vae", "the true video through the VAE (ceiling of every model below)"),
        ("teacher", "teacher (full attention, offline)"),
        ("student_no_asd", "student without ASD (L_S only; bundled)"),
        ("student_con", "student, L_S + L_CON"),
        ("student", "student, L_S + L_CON + L_SMO (full ASD)"),
        ("student_infonce", "student, full ASD with InfoNCE L_CON (positive in the denominator)"),
        ("student_no_sink", "student, full ASD, without the ID sink"),
        ("student_no_prev", "student, full ASD, without the previous-chunk cache")]
COLUMNS = [("lip_sync_corr", "lip-sync corr", "{:.3f}"), ("lip_sync_best_offset", "best offset", "{:+.1f}"),
           ("drift_first_10s", "drift 0-10 s", "{:.2f}"), ("drift_last_10s", "drift 50-60 s", "{:.2f}"),
           ("drift_slope_per_min", "drift slope /min", "{:+.2f}"),
           ("boundary_smoothness", "boundary smoothness", "{:.3f}"), ("psnr", "PSNR dB", "{:.2f}"),
           ("ssim", "SSIM", "{:.3f}")]


def main(folder: str) -> None:
    reports = {p.stem: json.loads(p.read_text()) for p in Path(folder).glob("*.json")}
    print("| model | " + " | ".join(c[1] for c in COLUMNS) + " |")
    print("|---|" + "---|" * len(COLUMNS))
    truth = None
    for key, label in ROWS:
        if key in reports:
            g = reports[key]["generated"]
            truth = reports[key]["ground_truth"]
            print(f"| {label} | " + " | ".join(fmt.format(g[k]) for k, _, fmt in COLUMNS) + " |")
    if truth:
        print("| ground truth (the renderer's own video) | " +
              " | ".join(fmt.format(truth[k]) for k, _, fmt in COLUMNS) + " |")


if __name__ == "__main__":
    main(sys.argv[1])
