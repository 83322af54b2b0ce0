#!/usr/bin/env bash
# The search behind anonfeat's defaults, on a validation benchmark: `anonfeat synth --seed 21`, a seed
# that scripts/evaluate.sh (seed 11) never uses. Every choice of a default flag is read from this
# script's output, never from the evaluation's test split (docs/method.md#protocol).
#
# One training seed (0) per candidate, audited like scripts/evaluate.sh: attackers and probes fit on the
# `attacker` split, scored on `test`, 3 attacker seeds. Candidates:
#   * adapters: LEACE, the supervised AAM at its defaults and with the variants in ADAPTER_VARIANTS;
#   * pruning: a pruner at train-pruner's defaults and one per PRUNER_VARIANTS, each pruned at its trained
#     keep rates and at each rate in KEEP_RATES (`prune --keep-ratio`, every pruning block); for the
#     default pruner also the keep-ratio 1.0 control and the action-CLS features.
# Writes OUT/ (stores, models) and examples/results/validation/{audit.json,evaluation.json,evaluation.md}.
#
#   bash scripts/validate.sh [OUT]        # about 30 minutes on 2 CPU cores
#   CHECKPOINT=enc.safetensors bash scripts/validate.sh   # candidate videomae-demo weights
source "$(dirname "${BASH_SOURCE[0]}")/env.sh"
OUT="${1:-validation}"
SEED="${VAL_SEED:-21}"
VIDEOS="${VAL_VIDEOS:-480}"
KEEP_RATES="${VAL_KEEP_RATES:-0.8 0.9 0.95 0.98}"
ATTRS="dark_skin,striped_shirt,long_hair,hat"
SAMPLING=(--frame-stride 2 --clip-stride 8 --static-clips 4)
ENCODER=(--encoder videomae-demo ${CHECKPOINT:+--checkpoint "$CHECKPOINT"})
RESULTS="examples/results/validation"
# name|flags candidates beside the defaults: supervised adapters, and pruners (each pruned at every keep rate)
ADAPTER_VARIANTS=("adversary|--attr-loss adversary")
PRUNER_VARIANTS=("train-all-blocks|--train-blocks 4")
mkdir -p "$OUT/stores" "$OUT/models" "$RESULTS"
log() { echo "[validate $(date +%H:%M:%S)] $*" >&2; }

[ -f "$OUT/bench/labels.csv" ] || anonfeat synth "$OUT/bench" --videos "$VIDEOS" --frames 48 --seed "$SEED" -q
LABELS="$OUT/bench/labels.csv"
[ -f "$OUT/stores/raw.h5" ] || anonfeat extract "$OUT/bench/videos" --out "$OUT/stores/raw.h5" "${ENCODER[@]}" \
    "${SAMPLING[@]}" --workers 1 --batch-size 32 -q
export OMP_NUM_THREADS=1  # two processes share the two cores

adapter() {  # adapter NAME FLAGS...: train on train rows (seed 0), sanitize the raw store
    local name="$1"; shift
    local model="$OUT/models/$name-s0.safetensors" store="$OUT/stores/$name-s0.h5"
    [ -f "$store" ] && return
    log "train-adapter $name"
    anonfeat train-adapter "$OUT/stores/raw.h5" -l "$LABELS" --out "$model" --attributes "$ATTRS" --seed 0 -q \
        "$@" --json "$OUT/models/$name-s0.json" >/dev/null
    anonfeat sanitize "$OUT/stores/raw.h5" --adapter "$model" --out "$store" -q
}

adapters() {
    adapter leace --method leace
    adapter aam-attributes --privacy-loss attributes
    adapter aam-selfsupervised
    for variant in "${ADAPTER_VARIANTS[@]}"; do
        IFS='|' read -r name flags <<<"$variant"
        # shellcheck disable=SC2086
        adapter "$name" --privacy-loss attributes $flags
    done
}

pruners() {
    local variant name flags pruner keep
    for variant in "default|" "${PRUNER_VARIANTS[@]}"; do
        IFS='|' read -r name flags <<<"$variant"
        pruner="$OUT/models/pruner-$name-s0.safetensors"
        if [ ! -f "$pruner" ]; then
            log "train-pruner $name"
            # shellcheck disable=SC2086
            anonfeat train-pruner "$OUT/bench/videos" -l "$LABELS" --out "$pruner" "${ENCODER[@]}" \
                --attributes "$ATTRS" --frame-stride 2 --seed 0 --workers 0 -q $flags \
                --json "$OUT/models/pruner-$name-s0.json" >/dev/null
        fi
        prune_as "$pruner" "pruned-$name-masked"
        [ "$name" = default ] && prune_as "$pruner" pruned-default-keep1 --keep-ratio 1.0 \
            && prune_as "$pruner" pruned-default-action-cls --features action-cls
        for keep in $KEEP_RATES; do prune_as "$pruner" "pruned-$name-keep$keep" --keep-ratio "$keep"; done
    done
}

prune_as() {  # prune_as PRUNER NAME FLAGS...
    local pruner="$1" name="$2"; shift 2
    local store="$OUT/stores/$name-s0.h5"
    [ -f "$store" ] && return
    log "prune $name"
    anonfeat prune "$OUT/bench/videos" --pruner "$pruner" --out "$store" ${CHECKPOINT:+--checkpoint "$CHECKPOINT"} \
        "${SAMPLING[@]}" --workers 0 --batch-size 32 -q "$@"
}

pruners > "$OUT/pruners.log" 2>&1 &
pruners_pid=$!
adapters
wait "$pruners_pid" || { cat "$OUT/pruners.log" >&2; log "the pruner runs failed"; exit 1; }

log "audit"
stores=()
for f in "$OUT"/stores/*.h5; do [ "$(basename "$f")" = raw.h5 ] || stores+=("$f"); done
anonfeat audit "${stores[@]}" --baseline "$OUT/stores/raw.h5" -l "$LABELS" --attributes "$ATTRS" \
    --task action --task lighting --seeds 3 --json "$OUT/audit.json" -q >/dev/null
cp "$OUT/audit.json" "$RESULTS/audit.json"
DEFAULT_W=$(python -c "from anonfeat.adapter.options import AdapterTrainOptions as O; print(O().w_attr)")
python scripts/evaluate_report.py "$RESULTS/audit.json" --bench-seed "$SEED" --videos "$VIDEOS" \
    --pruner-epochs 30 --default-w-attr "$DEFAULT_W" --out "$RESULTS" --no-plot
log "done: $RESULTS/evaluation.md"
