#!/bin/sh
# The published table in one command (scripts/reproduce.py says everything it does and checks):
#   sh scripts/reproduce.sh <dataset> <num_gpu> <port> [methods] [splits] [seeds] [key.sub=value ...]
#   sh scripts/reproduce.sh potsdam 4 29500                                  # all methods, 1/5/10 %
#   sh scripts/reproduce.sh deepglobe 8 29500 fixmatch,rs_mtdf 1,5 0,1,2 train.epochs=40
# EXP (default exp/<dataset>) holds the runs and report/; CONFIG (default configs/<dataset>.yaml) the config.
# Relative paths in CONFIG, EXP and overrides are taken from the folder this is started from.
HERE=$(pwd)
case "${CONFIG:-}" in ''|/*) ;; *) CONFIG="$HERE/$CONFIG"; export CONFIG;; esac
case "${EXP:-}" in ''|/*) ;; *) EXP="$HERE/$EXP"; export EXP;; esac
export RS_MTDF_HERE="$HERE"
cd "$(dirname "$0")/.." && exec python -m scripts.reproduce "$@"
