#!/usr/bin/env bash
# The GPU proof in one command, from the source tree (see bench/gpu_proof.py):
#   bash bench/gpu_proof.sh OUT_DIR            one H100/H200, a few minutes
#   bash bench/gpu_proof.sh OUT_DIR --smoke    any CPU, tiny shapes and the full compile report
#                                              (CI runs it with --compile-report quick)
set -euo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
export REST_FAST_COMMIT="${REST_FAST_COMMIT:-$(git rev-parse --short HEAD 2>/dev/null || echo unknown)}"
exec python3 -m bench.gpu_proof "$@"
