#!/usr/bin/env bash
# The 2-latent-frame row of the chunk-length table (docs/results: chunks of 0.64 s with W = 2, so
# 1.28 s of past beside the ID sink), for when the 1-frame student (train_low_latency_weights.sh)
# misses the default's quality.
#
#   bash tools/train_two_frame_weights.sh [RUNS_DIR]          (default: runs/two_frame)
#
# A shorter recipe than the 1-frame chain, and it says so: the bundled default is already two
# steps of one branch with guidance folded in, so it is re-windowed (c = 3, W = 1 -> c = 2, W = 2;
# speech history 32 Whisper frames, the window keeps its 72) and only distribution matching is run
# at the new window, against an L_S student trained at that window from the bundled undistilled
# student (the teacher the default's DMD had, re-windowed). Progressive distillation is skipped.
#
# 1. The pool at the new window (384 clips of 12 latent frames; its Whisper windows differ).
# 2. The L_S student at c = 2, W = 2 from the undistilled student (300 steps): DMD's real score.
# 3. Distribution matching from the re-windowed default, fake score updated 5x a step.
# 4. The candidate checkpoint: the default's VAE, decoders and SpeechAE with this DiT, fp16, in
#    RUNS_DIR/bundle (not in the package: the table decides whether it ships).
#
# One thread (OMP_NUM_THREADS=1 unless set); every stage resumes where it stopped.
set -euo pipefail
cd "$(dirname "$0")/.."
R=${1:-runs/two_frame}
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
DATA="--data synthetic-lively"
POOL="--cache-clips 384 --cache-dir $R/cache --num-chunks 4"
WINDOW="--set chunk_latent_frames=2 --set prev_chunks=2 --set speech.left_context_frames=32"
train() { echo "[$(date +%T)] train $*"; python3 -m rest_fast.cli train "$@" $DATA $POOL --resume --quiet; }
mkdir -p "$R"

train student --init rest_fast/assets/rest-cpu-undistilled --out "$R/student_no_asd" --steps 300 \
    --batch-size 8 --lr 1e-4 --warmup 10 $WINDOW --set asd.lambda_con=0 --set asd.lambda_smo=0
train distill --method dmd --init rest_fast/assets/rest-cpu --teacher "$R/student_no_asd" --out "$R/dmd_f5" \
    --sampler-steps 2 --batch-size 8 --lr 2e-5 --warmup 10 --steps ${DMD_STEPS:-300} --fake-updates 5 $WINDOW

python3 tools/bundle_windowed_student.py "$R/dmd_f5/dmd2" "$R/bundle"
echo "[$(date +%T)] done: $R/bundle"
