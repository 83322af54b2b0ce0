#!/usr/bin/env bash
# Set up (once), generate the demo privacy benchmark, and run the whole anonfeat pipeline on it:
# synth -> extract -> inspect -> train-adapter -> sanitize -> train-pruner -> prune -> audit
# (raw vs sanitized vs pruned).
source "$(dirname "${BASH_SOURCE[0]}")/env.sh"
OUT="${1:-demo}"
VIDEOS="${DEMO_VIDEOS:-320}"
SEEDS="${DEMO_SEEDS:-3}"
mkdir -p "$OUT"
echo "[demo] 1/8 synth: $VIDEOS videos of an actor whose looks carry private attributes"
[ -f "$OUT/bench/labels.csv" ] || anonfeat synth "$OUT/bench" --videos "$VIDEOS" --frames 48 --seed 0
echo "[demo] 2/8 extract: videomae-demo features (bundled weights), 3 clips + 4 static clips per video"
anonfeat extract "$OUT/bench/videos" --out "$OUT/raw.h5" --encoder videomae-demo \
    --frame-stride 2 --clip-stride 8 --static-clips 4 --workers 1 --batch-size 32
echo "[demo] 3/8 inspect"
anonfeat inspect "$OUT/raw.h5"
echo "[demo] 4/8 train-adapter on the train split (attribute labels, default weights)"
anonfeat train-adapter "$OUT/raw.h5" --labels "$OUT/bench/labels.csv" --out "$OUT/adapter.safetensors" \
    --privacy-loss attributes
echo "[demo] 5/8 sanitize"
rm -f "$OUT/sanitized.h5"
anonfeat sanitize "$OUT/raw.h5" --adapter "$OUT/adapter.safetensors" --out "$OUT/sanitized.h5"
echo "[demo] 6/8 train-pruner on decoded clips of the train split (attribute labels through gradient reversal)"
anonfeat train-pruner "$OUT/bench/videos" --labels "$OUT/bench/labels.csv" --out "$OUT/pruner.safetensors" \
    --encoder videomae-demo --frame-stride 2 --workers 1
echo "[demo] 7/8 prune: pruned features, anonymized videos and heatmaps of the first videos"
rm -f "$OUT/pruned.h5"
anonfeat prune "$OUT/bench/videos" --pruner "$OUT/pruner.safetensors" --out "$OUT/pruned.h5" \
    --frame-stride 2 --clip-stride 8 --static-clips 4 --workers 1 --batch-size 32
head -4 "$OUT/bench/labels.csv" | tail -3 | cut -d, -f1 | sed "s|^|bench/videos/|" > "$OUT/showcase.txt"
rm -f "$OUT/showcase.h5"
anonfeat prune "$OUT/showcase.txt" --pruner "$OUT/pruner.safetensors" --out "$OUT/showcase.h5" \
    --frame-stride 2 --clip-stride 8 --workers 0 --no-progress --save-videos "$OUT/anonymized" --save-heatmaps "$OUT/heatmaps"
echo "[demo] 8/8 audit: fresh attackers fit on the attacker split, scored on the test split, sanitized and pruned vs raw"
anonfeat audit "$OUT/sanitized.h5" "$OUT/pruned.h5" --baseline "$OUT/raw.h5" --labels "$OUT/bench/labels.csv" \
    --seeds "$SEEDS" --json "$OUT/audit.json" --plot "$OUT/audit.png"
echo "[demo] done: stores, adapter, pruner, anonymized videos, heatmaps, audit.json and audit.png in $OUT/"
