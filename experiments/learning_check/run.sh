#!/bin/sh
# The learning check (README.md beside this file): does each method learn what it claims, in minutes on a CPU?
#   sh experiments/learning_check/run.sh            # the whole plan: the headroom, every method and control at 1 %
#                                                   # (2 seeds, a third where two means are within a point), the
#                                                   # 5 % row, the ablations; then the summary with the verdicts
#   sh experiments/learning_check/run.sh --quick    # supervised at 1 % and 100 %, FixMatch, RS-MTDF and random
#                                                   # teachers at 1 %, one seed; the summary states the headroom
#   DIAGNOSE=1 sh experiments/learning_check/run.sh # then also the confident share and a linear probe of every run
# Run it with the project's environment active (. .venv/bin/activate).
# Steps (each reuses what exists where it was made with the same values, and refuses what was not):
#   1. domain-shifted synthetic scenes in LoveDA's layout -> 3,200 train tiles and the split lists (scenes.py)
#   2. stand-in DINOv2 / CLIP teachers and the weaker student stand-in, pretrained on a disjoint pool of scenes
#      (three at once, one thread each), saved in the official formats, plus random-init teachers for the control
#   3. the runs through train.py and eval/eval.py (test subset, best.pth), two at a time, one thread each
#   4. scripts/report.py over the runs, and the summary: headroom, every run, a verdict per claim
# WORK (default exp/learning_check) holds everything generated; PARALLEL (default 2) runs at once.
set -eu
QUICK=""
for arg in "$@"; do
    case "$arg" in
        --quick) QUICK="--quick" ;;
        *) echo "error: unknown argument '$arg' (usage: sh experiments/learning_check/run.sh [--quick])" >&2; exit 2 ;;
    esac
done
PARALLEL=${PARALLEL:-2}
case "$PARALLEL" in ''|*[!0-9]*|0) echo "error: PARALLEL must be a whole number of at least 1, not '$PARALLEL'" >&2; exit 2 ;; esac
HERE=$(pwd)
WORK=${WORK:-exp/learning_check}
case "$WORK" in /*) ;; *) WORK="$HERE/$WORK" ;; esac
cd "$(dirname "$0")/../.."
export OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 PYTHONWARNINGS=ignore
mkdir -p "$WORK"
start=$(date +%s)
stamp() { echo "[learning_check] $1: $(( $(date +%s) - start )) s since start"; }

python experiments/learning_check/check.py data --work "$WORK"
stamp "data ready"
python experiments/learning_check/check.py teachers --work "$WORK" --kind dino > "$WORK/teacher_dino.log" 2>&1 &
dino=$!
python experiments/learning_check/check.py teachers --work "$WORK" --kind clip > "$WORK/teacher_clip.log" 2>&1 &
clip=$!
python experiments/learning_check/check.py teachers --work "$WORK" --kind student > "$WORK/student.log" 2>&1 &
student=$!
wait $dino || { cat "$WORK/teacher_dino.log"; exit 1; }
wait $clip || { cat "$WORK/teacher_clip.log"; exit 1; }
wait $student || { cat "$WORK/student.log"; exit 1; }
python experiments/learning_check/check.py teachers --work "$WORK"
stamp "teachers ready"
python experiments/learning_check/check.py runs --work "$WORK" --parallel "$PARALLEL" $QUICK
stamp "runs finished"
python scripts/report.py "$WORK/runs" --out "$WORK/report"
if [ "${DIAGNOSE:-0}" = 1 ]; then
    python experiments/learning_check/check.py diagnose --work "$WORK"
fi
python experiments/learning_check/check.py summary --work "$WORK"
stamp "learning check finished"
