#!/usr/bin/env bash
# The restless pilot from the bundled weights alone (docs/training.md, "Restless heads"): a
# full-attention teacher fine-tuned on clips with posture shifts, in three runs (1,200 steps, then
# 3,000 and 2,000 more), each measured offline (`rest-fast eval --mode teacher`) by the chunk's place in
# its window; the L_S student of each, and its 8 x 6 and 1 x 1 samplers streaming. Then pilot 4: the
# teacher under teacher forcing, sharpness by the head's place, the VAE fine-tuned on restless clips
# and the teacher and students again on its latents. Pilot 5 distils the longer student to 2 steps.
#
#   bash tools/train_restless_pilot.sh [RUNS_DIR]        (default: runs/restless)
#
# Needs nothing but the package: INIT (default the bundled rest_fast/assets/rest-cpu) gives the
# VAE and SpeechAE, which are kept, and the DiT the teacher starts from (a distilled one-branch
# student; the teacher's condition dropout teaches its guidance branches again).
# tools/train_lively_weights.sh step 10 is the earlier pilot, from the lively teacher.
# About 2 h 30 min on 2 CPU cores (2026-12-07): 6 min encoding the restless pool, 18, 40 and 29 min
# the three teacher runs, 4-5 min each student, 2-3 min each of the twelve evaluations; pilot 4
# about 2 h more (18 min the VAE, 10 the new pool, 30 the teacher, 4 and 45 min the students, the
# longer one beside a CI run, 3-5 min each of its ten evaluations, under a minute each place table);
# pilot 5 about 1 h 30 min (53 min the three distillation phases and 26 min DMD, both beside other
# jobs, 2-4 min each evaluation).
# The frames of every evaluation are kept in RUNS_DIR/frames (about 0.45 GB each), so that
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

# Pilot 4: where a moved head blurs. The teacher under teacher forcing (each chunk drawn beside the
# true chunk before it, so its head stands where the truth's does), and sharpness by the head's
# distance from the portrait's place, which shows the lively-trained VAE itself rendering a moved
# head less sharply; then that VAE fine-tuned on restless clips (mouth and eyes x30, as the lively
# one was), the teacher 2,000 steps more on its latents (a new pool), and students of 300 and 1,500 steps.
evaluate teacher3_forced_8x6 --checkpoint "$R/teacher3" --mode teacher-forced
evaluate teacher3_forced_1x1 --checkpoint "$R/teacher3" --mode teacher-forced --steps 1 --guidance none
train vae --init "$R/teacher3" --out "$R/vae" --steps 800 --batch-size 4 --vae-frames 9 --lr 3e-4 \
    --warmup 30 --mouth-weight 30 --eye-weight 30
evaluate vae_restless --checkpoint "$R/vae" --mode vae
train teacher --init "$R/vae" --out "$R/teacher4" --steps 2000 --batch-size 8 --lr 2e-4 --warmup 50
for steps in 300 1500; do
    train student --init "$R/teacher4" --out "$R/student4_$steps" --steps $steps --batch-size 8 --lr 2e-4
    evaluate "student4_${steps}_8x6" --checkpoint "$R/student4_$steps"
    evaluate "student4_${steps}_1x1" --checkpoint "$R/student4_$steps" --steps 1 --guidance none
done
evaluate teacher4_forced_8x6 --checkpoint "$R/teacher4" --mode teacher-forced
evaluate teacher4_forced_1x1 --checkpoint "$R/teacher4" --mode teacher-forced --steps 1 --guidance none

# Pilot 5: the 1,500-step student distilled to 2 steps of one branch as the bundled lively DiT was
# (a guidance of 8 distilled in, 300 steps a phase; then distribution matching against its own
# 8 x 6 sampler, the fake score updated five times a student update), beside the undistilled
# sampler at 2 steps.
train distill --init "$R/student4_1500" --out "$R/distill_a8" --sampler-steps 2 --guidance-scale 8 \
    --steps 300 --batch-size 8 --num-chunks 2 --lr 1e-4 --warmup 10
train distill --method dmd --init "$R/distill_a8/k2" --teacher "$R/student4_1500" --out "$R/dmd_f5" \
    --sampler-steps 2 --batch-size 8 --num-chunks 2 --lr 2e-5 --warmup 10 --steps 1000 --fake-updates 5
evaluate distill_a8_k2 --checkpoint "$R/distill_a8/k2"
evaluate dmd_f5 --checkpoint "$R/dmd_f5/dmd2"
evaluate student4_1500_2x1 --checkpoint "$R/student4_1500" --steps 2 --guidance none
for name in vae vae_restless teacher3_forced_8x6 teacher3_forced_1x1 teacher4_forced_8x6 teacher4_forced_1x1 \
            student4_300_8x6 student4_300_1x1 student4_1500_8x6 student4_1500_1x1 student4_1500_2x1 \
            distill_a8_k2 dmd_f5; do
    python3 tools/sharpness_probe.py --kept "$R/frames/$name" --by-place
done
python3 tools/ablation_table.py "$R/eval" --rows vae_restless student4_1500_8x6 student4_1500_1x1 \
    student4_1500_2x1 distill_a8_k2 dmd_f5 --against student4_1500_8x6
echo "[$(date +%T)] done"
