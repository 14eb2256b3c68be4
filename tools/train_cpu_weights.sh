#!/usr/bin/env bash
# Train the bundled cpu-preset weights (rest_fast/assets/rest-cpu) and the ablations of
# docs/training.md on one machine, from nothing (synthetic data, no download).
#
#   bash tools/train_cpu_weights.sh [RUNS_DIR]        (default: runs/)
#   DATA=synthetic-lively bash tools/train_cpu_weights.sh runs/lively_scratch
#
# DATA picks the clips of every stage and of the benchmark (default: synthetic, the calm data the
# bundled weights were trained on; docs/training.md, "Data"). tools/train_lively_weights.sh is the
# shorter warm start on the lively data that docs/training.md measured.
#
# About 3 h 30 min on 2 CPU cores: 2 h 10 min of training (docs/training.md has the measured time
# of each stage), the rest the quality benchmark of every model and the sampler table.
# Every stage resumes where it stopped, so the script can be re-run after an interruption.
# Stages chain through --init: vae (images, clips, mouth) -> speech -> teacher -> students -> decoder.
set -euo pipefail
cd "$(dirname "$0")/.."
R=${1:-runs}
POOL="--cache-clips 384"   # clips in the encoded latent pool, shared by the teacher and the students
DATA="--data ${DATA:-synthetic}"
train() { echo "[$(date +%T)] train $*"; python3 -m rest_fast.cli train "$@" $DATA --resume --quiet; }
# An evaluation whose JSON exists is skipped (delete $R/eval to measure again).
evaluate() { local json=${*: -1}; [ -f "$json" ] && return 0
             echo "[$(date +%T)] eval $*"; python3 -m rest_fast.cli eval --quiet $DATA --identities 2 --seconds 60 "$@"; }

# 1. VAE: appearance on single images (16 identities a step), then motion on 9-frame clips, then
#    the same with the mouth box weighted 11x and 31x. The mouth is ~3% of the image but all of
#    the lip sync: per-frame reconstructions follow it after the image stage, but the 8x temporal
#    compression averages it away until the mouth's weight in the loss is raised.
train vae --out "$R/vae_img" --steps 1000 --batch-size 16 --vae-frames 1 --lr 1e-3
train vae --init "$R/vae_img" --out "$R/vae_clips" --steps 400 --batch-size 4 --vae-frames 9 --lr 5e-4 --warmup 50
train vae --init "$R/vae_clips" --out "$R/vae_m10" --steps 400 --batch-size 4 --vae-frames 9 --lr 5e-4 \
    --warmup 50 --mouth-weight 10
train vae --init "$R/vae_m10" --out "$R/vae" --steps 800 --batch-size 4 --vae-frames 9 --lr 5e-4 \
    --warmup 50 --mouth-weight 30
# 2. SpeechAE on the frozen Whisper encoder.
train speech --init "$R/vae" --out "$R/speech" --steps 400 --batch-size 16 --lr 1e-3
# 3. Teacher: full attention, asynchronous per-chunk noise (encodes the latent pool first, and
#    measures the audio-token whitening on it). The loss counts moving latent positions (the
#    mouth) up to 21x: without it, and without the whitening, the audio path stays unlearned.
#    The students inherit the weight with the teacher's config.
train teacher --init "$R/speech" --out "$R/teacher" --steps 1500 --batch-size 8 --lr 4e-4 $POOL \
    --set asd.motion_weight=20
# 4. The students from the frozen teacher: full ASD and the ablations, each one piece taken away.
student() { local name=$1; shift; train student --init "$R/teacher" --out "$R/$name" --steps 300 \
    --batch-size 8 --lr 2e-4 $POOL "$@"; }
student student
student student_no_asd --set asd.lambda_con=0 --set asd.lambda_smo=0
student student_con --set asd.lambda_smo=0
student student_no_sink --set dit.student_sink=false
student student_no_prev --set dit.student_prev=false
student student_infonce --set asd.contrastive=infonce

# 5. The light streaming decoder (reference.vae.LightDecoder), distilled from the full decoder on
#    the pool (crops of a quarter of the frame), added to the best student.
train decoder --init "$R/student_no_asd" --out "$R/bundle" --steps 3000 --batch-size 8 --num-chunks 1 \
    --crop 4 --lr 2e-3 --warmup 50 --bf16 --save-every 250 $POOL

# 6. The quality benchmark of every model, and the table of docs/training.md.
mkdir -p "$R/eval"
evaluate --checkpoint "$R/vae" --mode vae --json "$R/eval/vae.json"
evaluate --checkpoint "$R/teacher" --mode teacher --json "$R/eval/teacher.json"
for name in student student_no_asd student_con student_no_sink student_no_prev student_infonce; do
    evaluate --checkpoint "$R/$name" --json "$R/eval/$name.json"
done
python3 tools/ablation_table.py "$R/eval" > "$R/eval/table.md"
evaluate --checkpoint "$R/bundle" --mode vae --json "$R/eval/vae_light.json"
python3 tools/sampler_table.py "$R/bundle" --out "$R/sampler_table"   # every sampler and decoder

# 7. The package's default weights (fp16: under 20 MiB): the best student of the table (at this
#    budget the one without ASD, docs/training.md, "Ablations") with the fastest sampler and
#    decoder of the table that meet the quality targets: one Euler step without guidance, the
#    light decoder (docs/training.md, "Less work per chunk"). The scale 2 stays in the config for
#    `--guidance joint`, which opens the mouth wider on voices unlike the training speech.
python3 - "$R/bundle" <<'PY'
import sys, torch
from reference.checkpoint import load_checkpoint, save_checkpoint
model = load_checkpoint(sys.argv[1])
model.use_decoder("light")
s = model.cfg.sampling
s.steps, s.cfg_mode, s.cfg_scale = 1, "none", 2.0
save_checkpoint(model, "rest_fast/assets/rest-cpu", dtype=torch.float16)
PY
du -sh rest_fast/assets/rest-cpu
echo "[$(date +%T)] done"
