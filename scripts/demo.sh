#!/bin/sh
# The whole pipeline on built-in synthetic data, on a CPU in a few minutes, with no downloads:
# synthetic LoveDA-layout scenes -> preparation and splits -> RS-MTDF training -> evaluation -> prediction.
#   sh scripts/demo.sh                    # one process
#   NUM_PROC=2 sh scripts/demo.sh         # two processes under torchrun (gloo on CPU)
set -eu
cd "$(dirname "$0")/.."

CONFIG=configs/demo.yaml
RAW=data/synthetic/raw
RUN=${RUN:-exp/demo}

if [ ! -f data/synthetic/lists/val.txt ]; then
    python -m dataset.synthetic --dataset loveda --out "$RAW" --size 256 --count 24 --seed 0
    python -m dataset.prepare loveda --raw "$RAW" --out data/synthetic/loveda --lists data/synthetic/lists --resplit
fi

if [ "${NUM_PROC:-1}" -gt 1 ]; then
    torchrun --nproc_per_node "$NUM_PROC" --master_port "${PORT:-29511}" train.py --config "$CONFIG" \
        --save-path "$RUN" "$@"
else
    python train.py --config "$CONFIG" --save-path "$RUN" "$@"
fi

python eval/eval.py --config "$CONFIG" --checkpoint "$RUN/best.pth" --out "$RUN/eval_val"
# A few val tiles are enough to look at; predict.py also takes whole folders and tiles of any size.
python deploy/predict.py --config "$CONFIG" --checkpoint "$RUN/best.pth" --out "$RUN/predictions" \
    $(ls data/synthetic/loveda/val/images/*.png | head -n 8)
echo "demo finished: checkpoints, train.log and tb/ in $RUN; metrics in $RUN/eval_val; pictures in $RUN/predictions"
