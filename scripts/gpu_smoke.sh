#!/bin/sh
# The first command to run on a machine with a GPU: every GPU path once, real model sizes with random weights
# in the official file formats, synthetic data, about 5 minutes on one H100. No downloads, no files needed.
#   sh scripts/gpu_smoke.sh [OUT]          # report in OUT (default exp/gpu_smoke): gpu_smoke.json, gpu_smoke.md, logs/
#   sh scripts/gpu_smoke.sh --cpu [OUT]    # the same stages at tiny sizes on the CPU, about a minute
# Exit code 0 when every stage passed or was skipped with its reason (e.g. NCCL needs two GPUs).
# See scripts/gpu_smoke.py for the stages and options (--keep, --isolate, --skip).
set -eu
cd "$(dirname "$0")/.."
exec python scripts/gpu_smoke.py "$@"
