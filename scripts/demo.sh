#!/usr/bin/env bash
# Set up (once), generate the demo privacy benchmark, and run the anonfeat pipeline on it.
source "$(dirname "${BASH_SOURCE[0]}")/env.sh"
OUT="${1:-demo}"
VIDEOS="${DEMO_VIDEOS:-120}"
mkdir -p "$OUT"
echo "[demo] 1/4 synth: $VIDEOS videos of an actor whose looks carry private attributes"
[ -f "$OUT/bench/labels.csv" ] || anonfeat synth "$OUT/bench" --videos "$VIDEOS" --seed 0
echo "[demo] 2/4 extract: videomae-tiny (random weights) features with 4 static clips per video"
anonfeat extract "$OUT/bench/videos" --out "$OUT/raw.h5" --encoder videomae-tiny --random-init \
    --frame-stride 2 --static-clips 4 --workers 1
echo "[demo] 3/4 inspect"
anonfeat inspect "$OUT/raw.h5"
echo "[demo] 4/4 audit: how well a fresh attacker recovers the private attributes"
anonfeat audit "$OUT/raw.h5" --labels "$OUT/bench/labels.csv" --seeds 2 --json "$OUT/audit.json" --plot "$OUT/audit.png"
echo "[demo] done: results in $OUT/"
