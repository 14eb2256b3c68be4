#!/usr/bin/env bash
# Retrain the DiT of the bundled weights on the lively synthetic data (head motion, blinks, brows,
# gaze and smiles drawn at random; docs/training.md, "Data"), distil it to 4, 2 and 1 steps, and
# measure it on the lively benchmark: docs/training.md, "The lively benchmark".
#
#   bash tools/train_lively_weights.sh [RUNS_DIR]        (default: runs/lively)
#
# A warm start from the calm weights, not a run from nothing: INIT (default runs/bundle, where
# tools/train_cpu_weights.sh leaves them; `git checkout 2d0ce0e -- rest_fast/assets/rest-cpu`
# brings back the fp16 copy the package shipped until 2026-12-01) gives the SpeechAE, which is
# kept (it never sees video), the VAE that step 0 fine-tunes on lively clips (their eyes are drawn
# 1.8x as large and blink slowly, so that its latents keep the eyelids: docs/training.md, "What
# the cpu-preset VAE can show"), and the DiT the teacher starts from.
# `DATA=synthetic-lively bash tools/train_cpu_weights.sh` is the run from nothing.
# The evaluations of step 5 read the benchmark's clip encoder (reference/assets/
# clip_encoder.safetensors), trained on the same lively data by tools/train_clip_encoder.py.
# About 2 h 45 min on 2 CPU cores for steps 0-6 (22 min the VAE, about 17 min encoding the
# lively pool, 14 min the teacher, 4 min the student, 10 min the four distillation phases and
# 26 min the three at guidance 8, about 17 min the light decoder, 3-5 min each of the 14
# evaluations), about 1 h more for the ablations of step 7 (61 min on 2026-12-02: five
# students of 6-9 min and their evaluations), 1 h 15 min for the distribution matching of
# step 8 and about 1 h for the restless pilot of step 10; docs/training.md has the measured time
# of each stage.
# Every stage resumes where it stopped and every evaluation whose JSON exists is kept, so the
# script can be re-run after an interruption. KEEP_FRAMES=1 keeps each evaluation's frames in
# RUNS_DIR/frames/DIR_NAME (eval/vae.json's in frames/eval_vae; about 0.45 GB for 2 identities,
# 9 GB for steps 5-7), so that a changed figure can be re-scored without generating again:
# `rest-fast eval --rescore RUNS_DIR/frames/eval_vae`.
set -euo pipefail
cd "$(dirname "$0")/.."
R=${1:-runs/lively}
INIT=${INIT:-runs/bundle}
DATA="--data synthetic-lively"
POOL="--cache-clips 384"
train() { echo "[$(date +%T)] train $*"; python3 -m rest_fast.cli train "$@" $DATA --resume --quiet; }
evaluate() { local json=${*: -1} keep=(); [ -f "$json" ] && return 0
             local name; name=$(basename "$(dirname "$json")")_$(basename "$json" .json)
             [ "${KEEP_FRAMES:-0}" = 1 ] && keep=(--save-frames "$R/frames/$name")
             echo "[$(date +%T)] eval $*"
             python3 -m rest_fast.cli eval --quiet $DATA --identities 2 --seconds 60 "${keep[@]}" "$@"; }

# 0. The VAE, fine-tuned on lively clips (their eyes are drawn larger than calm ones, and blink
#    slowly, so that its latents can carry the eyelids), the mouth and the eyes weighted x30.
train vae --init "$INIT" --out "$R/vae" --steps 800 --batch-size 4 --vae-frames 9 --lr 3e-4 --warmup 30 \
    --mouth-weight 30 --eye-weight 30
# 1. Teacher: full attention on the lively pool, from the calm student's DiT (which the VAE's
#    checkpoint carries); it samples (and its students inherit) the paper's 8 steps of Joint CFG 6
#    through the full decoder.
train teacher --init "$R/vae" --out "$R/teacher" --steps 1000 --batch-size 8 --lr 2e-4 \
    --warmup 50 $POOL --set asd.motion_weight=20 --set sampling.steps=8 --set sampling.cfg_mode=joint \
    --set sampling.cfg_scale=6 --set vae.decoder=full
# 2. The student from the frozen teacher: L_S alone (the calm data's best; step 7 has the others).
#    The calm config, which the teacher inherits, is the L_S student's (lambda_con = lambda_smo
#    = 0), so every student sets the paper's ASD weights first and its ablation after them.
student() { local name=$1; shift; train student --init "$R/teacher" --out "$R/$name" --steps 300 \
    --batch-size 8 --lr 2e-4 $POOL --set asd.lambda_con=1 --set asd.lambda_smo=1 "$@"; }
student student_no_asd --set asd.lambda_con=0 --set asd.lambda_smo=0

# 3. Distillation of the L_S student to 4, 2 and 1 steps of one branch (guidance, then steps),
#    and to 2 steps again with a guidance of 8 distilled in and 300 steps a phase: the bundled
#    DiT (at the paper's 6 and 100 steps a phase the step phases lose the blinks).
train distill --init "$R/student_no_asd" --out "$R/distill" --sampler-steps 1 --steps 100 --batch-size 8 \
    --num-chunks 2 --lr 1e-4 --warmup 10 $POOL
train distill --init "$R/student_no_asd" --out "$R/distill_a8" --sampler-steps 2 --guidance-scale 8 \
    --steps 300 --batch-size 8 --num-chunks 2 --lr 1e-4 --warmup 10 $POOL
# 4. The light streaming decoder, taught on the lively pool from the calm one the init carries,
#    added to the one-step student.
train decoder --init "$R/distill/k1" --out "$R/bundle" --steps 1000 --batch-size 8 --num-chunks 1 \
    --crop 4 --lr 1e-3 --warmup 20 --bf16 --save-every 250 $POOL

# 5. The lively benchmark (2 held-out identities x 60 s each; a report whose JSON exists is kept):
#    the VAE's ceiling, the L_S student's sampler sweep (steps x CFG scale; scale 1 is one
#    branch), the distilled students beside the undistilled sampler at the same steps, each
#    decoder, the teacher.
mkdir -p "$R/eval"
evaluate --checkpoint "$R/teacher" --mode vae --json "$R/eval/vae.json"
evaluate --checkpoint "$R/bundle" --mode vae --json "$R/eval/vae_light.json"
evaluate --checkpoint "$R/student_no_asd" --json "$R/eval/student_no_asd.json"        # 8 x 6
evaluate --checkpoint "$R/student_no_asd" --steps 4 --guidance joint --json "$R/eval/4x6.json"
evaluate --checkpoint "$R/student_no_asd" --steps 4 --guidance none --json "$R/eval/4x1.json"
evaluate --checkpoint "$R/student_no_asd" --steps 2 --guidance none --json "$R/eval/2x1.json"
evaluate --checkpoint "$R/student_no_asd" --steps 1 --guidance none --json "$R/eval/1x1.json"
for k in 4 2 1; do evaluate --checkpoint "$R/distill/k$k" --decoder full --json "$R/eval/distill_k$k.json"; done
evaluate --checkpoint "$R/distill_a8/k2" --decoder full --json "$R/eval/distill_a8_k2.json"
evaluate --checkpoint "$R/bundle" --json "$R/eval/distill_k1_light.json"
# The 4-step student with the light decoder: its DiT, the bundle's decoder.
[ -d "$R/k4_light" ] || python3 - "$R" <<'PY'
import sys
from reference.checkpoint import load_checkpoint, save_checkpoint
model, k4 = load_checkpoint(f"{sys.argv[1]}/bundle"), load_checkpoint(f"{sys.argv[1]}/distill/k4")
model.dit.load_state_dict(k4.dit.state_dict())
model.cfg.sampling.steps = 4
save_checkpoint(model, f"{sys.argv[1]}/k4_light")
PY
evaluate --checkpoint "$R/k4_light" --json "$R/eval/distill_k4_light.json"
evaluate --checkpoint "$R/teacher" --mode teacher --json "$R/eval/teacher.json"
python3 tools/ablation_table.py "$R/eval" --against student_no_asd --rows vae vae_light \
    student_no_asd="8 x Joint CFG 6 (the paper)" 4x6="4 x 6" 4x1="4 x 1" 2x1="2 x 1" 1x1="1 x 1" \
    distill_k4="distilled to 4 x 1" distill_k4_light="distilled to 4 x 1, light decoder" \
    distill_k2="distilled to 2 x 1" distill_k1="distilled to 1 x 1" \
    distill_k1_light="distilled to 1 x 1, light decoder" \
    distill_a8_k2="distilled to 2 x 1, guidance 8, 300 steps a phase" > "$R/eval/sampler_table.md"

# 6. The package's default weights until 2026-12-02 (fp16: under 20 MiB; step 9 replaces its
#    DiT): the cheapest row of the table within 10% of 8 x 6 on every figure of the benchmark's
#    two identities at seed 0 (not of four fresh ones: step 6b),
#    the 2-step student distilled at guidance 8 with the full decoder (two DiT forwards a chunk;
#    177-215 ms a chunk on 2 cores, 4 streams in real time). The light decoder taught in step 4
#    goes with it for `--decoder light` (69 ms a chunk with one step, 12 streams, but it loses
#    the blinks). Its guidance is distilled in; the scale 2 is for `--guidance joint` on voices
#    unlike the training speech, which opens the mouth wider still.
bundle() {  # step 4's bundle (VAE, SpeechAE, both decoders) with the DiT of checkpoint $1
python3 - "$R/bundle" "$1" <<'PY'
import sys, torch
from reference.checkpoint import load_checkpoint, save_checkpoint
model, student = load_checkpoint(sys.argv[1]), load_checkpoint(sys.argv[2])
model.dit.load_state_dict(student.dit.state_dict())
model.cfg.sampling.steps, model.cfg.sampling.cfg_scale = 2, 2.0
# What the DiT was made for (its distillation recorded it), and the Joint-CFG scale on top of
# it that was checked to still give faces: what `--guidance joint` may use without --force.
model.cfg.provenance = student.cfg.provenance
model.cfg.provenance.joint_scale_checked = 2.0
model.use_decoder("full")
save_checkpoint(model, "rest_fast/assets/rest-cpu", dtype=torch.float16)
PY
du -sh rest_fast/assets/rest-cpu; }
bundle "$R/distill_a8/k2"

# 6b. The same sampler choice checked on four held-out identities that no choice saw
#     (docs/training.md, "On fresh identities"; 8-10 min each).
mkdir -p "$R/eval_confirm"
fresh="--first-identity 2 --identities 4"
evaluate --checkpoint "$R/teacher" --mode vae $fresh --json "$R/eval_confirm/vae.json"
evaluate --checkpoint "$R/student_no_asd" $fresh --json "$R/eval_confirm/8x6.json"
evaluate --checkpoint rest_fast/assets/rest-cpu $fresh --json "$R/eval_confirm/bundled.json"
evaluate --checkpoint "$R/student_no_asd" --steps 1 --guidance none $fresh --json "$R/eval_confirm/1x1.json"
python3 tools/ablation_table.py "$R/eval_confirm" --rows vae 8x6 bundled 1x1 --against 8x6 \
    > "$R/eval_confirm/table.md"

# 7. The students with ASD and the ablations (docs/training.md, "Ablations at this scale").
student student
student student_con --set asd.lambda_smo=0
student student_no_sink --set dit.student_sink=false
student student_no_prev --set dit.student_prev=false
student student_infonce --set asd.contrastive=infonce
for name in student student_con student_no_sink student_no_prev student_infonce; do
    evaluate --checkpoint "$R/$name" --json "$R/eval/$name.json"
done
python3 tools/ablation_table.py "$R/eval" --rows vae student_no_asd student student_con student_infonce \
    student_no_sink student_no_prev --against student_no_asd > "$R/eval/ablation_table.md"

# 8. Distribution matching (docs/training.md, "What distribution matching gave"): the 2-step
#    student of step 3 trained further by DMD against the 8 x 6 student, its fake score updated
#    once (300 steps, 16.5 min) and five times (1,000 steps, ~35 min) per student update, each
#    measured on the benchmark's identities and on the four fresh ones.
dmd() { local name=$1; shift
        train distill --method dmd --init "$R/distill_a8/k2" --teacher "$R/student_no_asd" --out "$R/$name" \
            --sampler-steps 2 --batch-size 8 --num-chunks 2 --lr 2e-5 --warmup 10 $POOL "$@"
        evaluate --checkpoint "$R/$name/dmd2" --decoder full --json "$R/eval/$name.json"
        evaluate --checkpoint "$R/$name/dmd2" --decoder full $fresh --json "$R/eval_confirm/$name.json"; }
dmd dmd --steps 300
dmd dmd_f5 --steps 1000 --fake-updates 5
python3 tools/ablation_table.py "$R/eval" --rows vae student_no_asd distill_a8_k2 dmd dmd_f5 \
    --against student_no_asd > "$R/eval/dmd_table.md"
python3 tools/ablation_table.py "$R/eval_confirm" --rows vae 8x6 bundled dmd dmd_f5 1x1 \
    --against 8x6 > "$R/eval_confirm/dmd_table.md"
# The benchmark's identities from a second seed's noise (test_bundled_weights holds the default
# to the mean of both seeds): 8 x 6, the 2-step student before and after distribution matching.
for name in student_no_asd distill_a8/k2 dmd_f5/dmd2; do
    evaluate --checkpoint "$R/$name" --decoder full --seed 1 --json "$R/eval/seed1_${name%%/*}.json"
done

# 9. The package's default weights since 2026-12-02: step 6's bundle with the DMD student of
#    step 8 (five fake-score updates) in place of its DiT; within 10% of 8 x 6 on every figure
#    of both seeds' streams and of the fresh identities (docs/training.md, "What distribution
#    matching gave").
bundle "$R/dmd_f5/dmd2"

# 10. Restless heads (docs/training.md, "Restless heads: a mean that blurs, and a sampler that
#     blurs more"): the teacher fine-tuned on clips with posture shifts, its L_S student, and that
#     student's 1 x 1 and 8 x 6 samplers on the restless benchmark (about 1 h: 17 min encoding the
#     restless pool, 23 min the teacher, 4 the student, 4-5 each evaluation). The pilot behind the
#     docs ran its first 600 teacher steps on a draft of the data (quicker, more frequent shifts).
#     tools/train_restless_pilot.sh is a third pilot, from the bundled weights alone.
DATA="--data synthetic-restless"   # from here on; the pool goes to $R/restless/cache
mkdir -p "$R/eval_restless"
train teacher --init "$R/teacher" --out "$R/restless/teacher" --steps 1600 --batch-size 8 --lr 2e-4 \
    --warmup 30 $POOL
train student --init "$R/restless/teacher" --out "$R/restless/student_no_asd" --steps 300 --batch-size 8 \
    --lr 2e-4 $POOL
evaluate --checkpoint "$R/restless/teacher" --mode vae --json "$R/eval_restless/vae.json"
evaluate --checkpoint "$R/restless/student_no_asd" --steps 1 --guidance none --json "$R/eval_restless/1x1.json"
evaluate --checkpoint "$R/restless/student_no_asd" --json "$R/eval_restless/8x6.json"
echo "[$(date +%T)] done"
