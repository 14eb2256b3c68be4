#!/usr/bin/env bash
# The bundled undistilled student (rest_fast/assets/rest-cpu-undistilled): the 8-step, Joint-CFG
# student that the bundled default was distilled from, retrained by the recipe of
# tools/train_lively_weights.sh steps 1-2 from what the package and its history hold.
#
#   bash tools/train_undistilled_student.sh [RUNS_DIR]        (default: runs/undistilled)
#
# The init is the bundled default's VAE and SpeechAE (the lively VAE of train_lively_weights.sh
# step 0) with the calm DiT the lively teacher started from (the fp16 weights the package shipped
# until commit 2d0ce0e). Then the full-attention teacher on the lively pool (1,000 steps) and its
# L_S student (300 steps), whose sampler is the paper's: 8 Euler steps of Joint CFG 6, full decoder.
# About 40 min on 2 CPU cores: 15-20 min encoding the lively pool, 14 min the teacher, 4 min the
# student. Every stage resumes where it stopped.
set -euo pipefail
cd "$(dirname "$0")/.."
R=${1:-runs/undistilled}
DATA="--data synthetic-lively"
POOL="--cache-clips 384 --cache-dir $R/cache"
train() { echo "[$(date +%T)] train $*"; python3 -m rest_fast.cli train "$@" $DATA $POOL --resume --quiet; }
mkdir -p "$R"

if [ ! -f "$R/init/config.json" ]; then
    calm=$(mktemp -d)
    git show 2d0ce0e:rest_fast/assets/rest-cpu/config.json > "$calm/config.json"
    git show 2d0ce0e:rest_fast/assets/rest-cpu/model.safetensors > "$calm/model.safetensors"
    python3 - "$calm" "$R/init" <<'PY'
import sys
from reference.checkpoint import load_checkpoint, save_checkpoint
calm, out = sys.argv[1:]
model = load_checkpoint("rest_fast/assets/rest-cpu")
model.dit.load_state_dict(load_checkpoint(calm).dit.state_dict())
save_checkpoint(model, out)
PY
    rm -rf "$calm"
fi

train teacher --init "$R/init" --out "$R/teacher" --steps 1000 --batch-size 8 --lr 2e-4 \
    --warmup 50 --set asd.motion_weight=20 --set sampling.steps=8 --set sampling.cfg_mode=joint \
    --set sampling.cfg_scale=6 --set vae.decoder=full
train student --init "$R/teacher" --out "$R/student_no_asd" --steps 300 --batch-size 8 --lr 2e-4 \
    --set asd.lambda_con=0 --set asd.lambda_smo=0
echo "[$(date +%T)] done: $R/student_no_asd"
