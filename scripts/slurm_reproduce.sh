#!/bin/sh
# The published table on a SLURM cluster (scripts/reproduce.py --slurm says everything it does and checks):
#   sh scripts/slurm_reproduce.sh <dataset> [methods] [splits] [seeds] [key.sub=value ...]
#   SBATCH_ARGS="--ntasks-per-node 4 --gpus-per-node 4 --time 24:00:00" sh scripts/slurm_reproduce.sh potsdam
# Every unfinished run becomes one element of a job array of scripts/slurm_train.sh (SBATCH_ARGS: sbatch options
# for each), and one more job, after the array, scores every finished run and writes $EXP/report/
# (SBATCH_SCORE_ARGS: its sbatch options, e.g. "--gpus 1"). Run folders of other settings are refused first.
# EXP (default exp/<dataset>) holds the runs and the report; CONFIG (default configs/<dataset>.yaml) the config.
HERE=$(pwd)
REPO=$(cd "$(dirname "$0")/.." && pwd)
case "${CONFIG:-}" in ''|/*) ;; *) CONFIG="$HERE/$CONFIG"; export CONFIG;; esac
case "${EXP:-}" in ''|/*) ;; *) EXP="$HERE/$EXP"; export EXP;; esac
export RS_MTDF_HERE="$HERE"
cd "$REPO" && exec python -m scripts.reproduce --slurm "$@"
