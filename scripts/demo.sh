#!/usr/bin/env bash
# Set up (once), generate the demo privacy benchmark, and run the whole anonfeat pipeline on it:
# synth -> extract -> inspect -> train-adapter -> sanitize -> audit (raw vs sanitized).
source "$(dirname "${BASH_SOURCE[0]}")/env.sh"
OUT="${1:-demo}"
VIDEOS="${DEMO_VIDEOS:-320}"
SEEDS="${DEMO_SEEDS:-3}"
mkdir -p "$OUT"
echo "[demo] 1/6 synth: $VIDEOS videos of an actor whose looks carry private attributes"
[ -f "$OUT/bench/labels.csv" ] || anonfeat synth "$OUT/bench" --videos "$VIDEOS" --frames 48 --seed 0
echo "[demo] 2/6 extract: videomae-demo features (bundled weights), 3 clips + 4 static clips per video"
anonfeat extract "$OUT/bench/videos" --out "$OUT/raw.h5" --encoder videomae-demo \
    --frame-stride 2 --clip-stride 8 --static-clips 4 --workers 1 --batch-size 32
echo "[demo] 3/6 inspect"
anonfeat inspect "$OUT/raw.h5"
echo "[demo] 4/6 train-adapter on the train split (attribute decorrelation on the train labels)"
anonfeat train-adapter "$OUT/raw.h5" --labels "$OUT/bench/labels.csv" --out "$OUT/adapter.safetensors" \
    --privacy-loss attributes --attr-loss decorrelate --w-attr 5
echo "[demo] 5/6 sanitize"
rm -f "$OUT/sanitized.h5"
anonfeat sanitize "$OUT/raw.h5" --adapter "$OUT/adapter.safetensors" --out "$OUT/sanitized.h5"
echo "[demo] 6/6 audit: fresh attackers on the test split, sanitized vs raw"
anonfeat audit "$OUT/sanitized.h5" --baseline "$OUT/raw.h5" --labels "$OUT/bench/labels.csv" \
    --seeds "$SEEDS" --json "$OUT/audit.json" --plot "$OUT/audit.png"
echo "[demo] done: stores, adapter, audit.json and audit.png in $OUT/"
