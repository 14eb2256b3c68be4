#!/usr/bin/env bash
# Train REST on your own clips, every stage from nothing: the cpu preset's recipe of
# tools/train_cpu_weights.sh (VAE, SpeechAE, teacher, the full-ASD student), on a folder that
# `rest-fast prepare` wrote, then the real-clip figures of the student.
#
#   rest-fast prepare raw_videos/ --out clips/ --workers 2
#   bash tools/train_on_clips.sh clips/ runs/mine [--preset paper ...]
#   rest-fast eval --checkpoint runs/mine/student --data clips/
#
# Arguments after the two folders go to every stage (e.g. `--preset paper --device cuda --bf16`,
# or `--steps 2` for a smoke run: the last value given wins). Every stage resumes where it
# stopped, so the script can be re-run after an interruption. About 2 h of training on 2 CPU
# cores at the cpu preset (docs/training.md has the time of each stage).
set -euo pipefail
cd "$(dirname "$0")/.."
if [ $# -lt 2 ]; then echo "usage: bash tools/train_on_clips.sh CLIPS_DIR RUNS_DIR [train options]" >&2; exit 2; fi
CLIPS=$1 R=$2
shift 2
POOL="--cache-clips 384"
train() { echo "[$(date +%T)] train $*"; python3 -m rest_fast.cli train "$@" --data "$CLIPS" --resume --quiet $EXTRA; }
EXTRA="$*"

train vae --out "$R/vae_img" --steps 1000 --batch-size 16 --vae-frames 1 --lr 1e-3
train vae --init "$R/vae_img" --out "$R/vae" --steps 800 --batch-size 4 --vae-frames 9 --lr 5e-4 --warmup 50
train speech --init "$R/vae" --out "$R/speech" --steps 400 --batch-size 16 --lr 1e-3
train teacher --init "$R/speech" --out "$R/teacher" --steps 1500 --batch-size 8 --lr 4e-4 $POOL \
    --set asd.motion_weight=20
train student --init "$R/teacher" --out "$R/student" --steps 300 --batch-size 8 --lr 2e-4 $POOL
echo "[$(date +%T)] done: rest-fast eval --checkpoint $R/student --data $CLIPS"
