#!/usr/bin/env bash
# The restless pilot from the bundled weights alone (docs/training.md, "Restless heads"): a
# full-attention teacher fine-tuned on clips with posture shifts, in three runs (1,200 steps, then
# 3,000 and 2,000 more), each measured offline (`rest-fast eval --mode teacher`) by the chunk's place in
# its window; the L_S student of each, and its 8 x 6 and 1 x 1 samplers streaming.
#
#   bash tools/train_restless_pilot.sh [RUNS_DIR]        (default: runs/restless)
#
# Needs nothing but the package: INIT (default the bundled rest_fast/assets/rest-cpu) gives the
# VAE and SpeechAE, which are kept, and the DiT the teacher starts from (a distilled one-branch
# student; the teacher's condition dropout teaches its guidance branches again).
# tools/train_lively_weights.sh step 10 is the earlier pilot, from the lively teacher.
# About 2 h 30 min on 2 CPU cores (2026-12-07): 6 min encoding the restless pool, 18, 40 and 29 min
# the three teacher runs, 4-5 min each student, 2-3 min each of the twelve evaluations. The frames of
# every evaluation are kept in RUNS_DIR/frames (about 0.45 GB each), so that
# `rest-fast eval --rescore` and `tools/sharpness_probe.py --kept` can score them again.
# Every stage resumes where it stopped and every evaluation whose JSON exists is kept.
set -euo pipefail
cd "$(dirname "$0")/.."
R=${1:-runs/restless}
INIT=${INIT:-rest_fast/assets/rest-cpu}
DATA="--data synthetic-restless"
POOL="--cache-clips 384 --cache-dir $R/cache"
train() { echo "[$(date +%T)] train $*"; python3 -m rest_fast.cli train "$@" $DATA $POOL --resume --quiet; }
evaluate() { local name=$1; shift; [ -f "$R/eval/$name.json" ] && return 0
             echo "[$(date +%T)] eval $name $*"
             python3 -m rest_fast.cli eval --quiet $DATA --identities 2 --seconds 60 \
                 --save-frames "$R/frames/$name" --json "$R/eval/$name.json" "$@"; }
mkdir -p "$R/eval"

# The teacher, with the paper's sampler (8 steps of Joint CFG 6, full decoder) in its config.
train teacher --init "$INIT" --out "$R/teacher" --steps 1200 --batch-size 8 --lr 2e-4 --warmup 50 \
    --set asd.motion_weight=20 --set sampling.steps=8 --set sampling.cfg_mode=joint \
    --set sampling.cfg_scale=6 --set vae.decoder=full
train teacher --init "$R/teacher" --out "$R/teacher2" --steps 3000 --batch-size 8 --lr 2e-4 --warmup 50
train teacher --init "$R/teacher2" --out "$R/teacher3" --steps 2000 --batch-size 8 --lr 2e-4 --warmup 50
for t in teacher teacher2 teacher3; do
    train student --init "$R/$t" --out "$R/student_$t" --steps 300 --batch-size 8 --lr 2e-4
done

evaluate vae --checkpoint "$R/teacher" --mode vae
evaluate bundled --checkpoint "$INIT"        # the init itself, which never saw a posture shift
evaluate teacher_8x6 --checkpoint "$R/teacher" --mode teacher
evaluate teacher_8x1 --checkpoint "$R/teacher" --mode teacher --guidance none
evaluate teacher_1x1 --checkpoint "$R/teacher" --mode teacher --steps 1 --guidance none
evaluate teacher2_8x6 --checkpoint "$R/teacher2" --mode teacher
evaluate teacher3_8x6 --checkpoint "$R/teacher3" --mode teacher
for t in teacher teacher2 teacher3; do
    evaluate "student_${t}_8x6" --checkpoint "$R/student_$t"
done
for t in teacher teacher2; do
    evaluate "student_${t}_1x1" --checkpoint "$R/student_$t" --steps 1 --guidance none
done

# Sharpness by the chunk's place in the teacher's windows of 2 (the first starts from the portrait
# alone, the second continues it), and of the streams, where every chunk continues one.
for name in teacher_8x6 teacher_8x1 teacher_1x1 teacher2_8x6 teacher3_8x6; do
    python3 tools/sharpness_probe.py --kept "$R/frames/$name" --window 2
done
for name in student_teacher_8x6 student_teacher2_8x6 student_teacher3_8x6 student_teacher_1x1; do
    python3 tools/sharpness_probe.py --kept "$R/frames/$name" --window 1
done
echo "[$(date +%T)] done"
