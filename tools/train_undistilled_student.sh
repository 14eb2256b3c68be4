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
# L_S student (300 steps), whose sampler is the paper's: 8 Euler steps of Joint CFG 6, full decoder;
# then the fp16 bundle. About 45 min on 2 CPU cores (measured: 22 min encoding the lively pool beside
# other jobs, 30 min the teacher and 12 min the student on one thread beside an evaluation). Anything
# run beside it should set OMP_NUM_THREADS=1: two 2-thread torch processes on 2 cores ran the teacher
# at 10 s a step instead of 1.6. Every stage resumes where it stopped.
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
# The bundle: fp16, under 20 MiB, beside the default in the package.
python3 - "$R/student_no_asd" <<'PY'
import sys, torch
from reference.checkpoint import load_checkpoint, save_checkpoint
model = load_checkpoint(sys.argv[1])
model.use_decoder("full")
save_checkpoint(model, "rest_fast/assets/rest-cpu-undistilled", dtype=torch.float16)
PY
du -sh rest_fast/assets/rest-cpu-undistilled
echo "[$(date +%T)] done: rest_fast/assets/rest-cpu-undistilled"
