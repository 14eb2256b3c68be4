#!/usr/bin/env bash
# The low-latency student: chunks of one latent frame (0.32 s instead of 0.96 s) that still see
# 0.96 s of the past (prev_chunks W = 3 beside the ID sink), trained from the bundled chain and
# distilled as the bundled default was (two steps of one branch, guidance 8 folded in, then
# distribution matching). docs/model-semantics.md says how its window reads.
#
#   bash tools/train_low_latency_weights.sh [RUNS_DIR]        (default: runs/low_latency)
#
# 0. The init: the bundled undistilled student (rest_fast/assets/rest-cpu-undistilled, c = 3,
#    W = 1), re-windowed. Its window positions carry over: at c = 1, W = 3 the sink sits at frame
#    0, the past at 1..3 and the chunk at 4, as the first frame of a c = 3 chunk sat. The speech
#    window keeps its length (72 Whisper frames: 48 of history, the chunk's 16, 8 of lookahead), so
#    the chunk's Whisper frames are read as the last latent frame of a 3-frame chunk's were.
# 1. Its L_S student at the new window (the pool encoded again: its Whisper windows differ).
# 2. Progressive distillation to 2 steps of one branch with a guidance of 8 (as the default).
# 3. Distribution matching against step 1's student, fake score updated five times per step
#    (300 steps; the default had 1,000: DMD_STEPS=1000 for its recipe).
# 4. The bundle: the default's VAE, decoders and SpeechAE with this DiT, fp16, beside the default
#    in the package (rest_fast/assets/rest-cpu-low-latency: `--checkpoint low-latency`).
#
# Every stage runs on one thread (OMP_NUM_THREADS=1 unless set), so that the machine's other core
# stays free (two 2-thread torch processes on 2 cores run each other ~6x slower), and resumes
# where it stopped.
set -euo pipefail
cd "$(dirname "$0")/.."
R=${1:-runs/low_latency}
INIT=${INIT:-rest_fast/assets/rest-cpu-undistilled}
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
DATA="--data synthetic-lively"
POOL="--cache-clips 384 --cache-dir $R/cache --num-chunks 6"
WINDOW="--set chunk_latent_frames=1 --set prev_chunks=3 --set speech.left_context_frames=48"
train() { echo "[$(date +%T)] train $*"; python3 -m rest_fast.cli train "$@" $DATA $POOL --resume --quiet; }
mkdir -p "$R"

train student --init "$INIT" --out "$R/student_no_asd" --steps 300 --batch-size 8 --lr 1e-4 --warmup 10 \
    $WINDOW --set asd.lambda_con=0 --set asd.lambda_smo=0
train distill --init "$R/student_no_asd" --out "$R/distill_a8" --sampler-steps 2 --guidance-scale 8 \
    --steps 300 --batch-size 8 --lr 1e-4 --warmup 10
train distill --method dmd --init "$R/distill_a8/k2" --teacher "$R/student_no_asd" --out "$R/dmd_f5" \
    --sampler-steps 2 --batch-size 8 --lr 2e-5 --warmup 10 --steps ${DMD_STEPS:-300} --fake-updates 5

python3 tools/bundle_windowed_student.py "$R/dmd_f5/dmd2" rest_fast/assets/rest-cpu-low-latency
du -sh rest_fast/assets/rest-cpu-low-latency
echo "[$(date +%T)] done: rest_fast/assets/rest-cpu-low-latency"
