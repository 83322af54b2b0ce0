# Steps shared by scripts/evaluate.sh and scripts/validate.sh (sourced, not run): extraction, anonymizer
# training, pruning and the audit, under the honest protocol (docs/method.md#protocol). Anonymizers
# train on the `train` rows of LABELS; the audit's attackers fit on `attacker` and score on `test`.
# The caller sets OUT, RESULTS and CHECKPOINT_FLAGS (--checkpoint FILE, or nothing for the bundled
# weights), then calls make_bench (which sets LABELS). Files are named NAME-sSEED so that
# scripts/evaluate_report.py can group training seeds.
# Every step skips what an earlier run already wrote.

# The protocol's fixed parts: private attributes, clip sampling (4 static clips for the static-clip
# attacker), the bundled demo encoder.
ATTRS="dark_skin,striped_shirt,long_hair,hat"
SAMPLING=(--frame-stride 2 --clip-stride 8 --static-clips 4)
ENCODER=(--encoder videomae-demo)

log() { echo "[$(basename "$0" .sh) $(date +%H:%M:%S)] $*" >&2; }

default_w_attr() {  # the supervised adapter's default privacy weight, as train-adapter reads it
    python -c "from anonfeat.adapter.options import AdapterTrainOptions as O; print(O().w_attr)"
}

make_bench() {  # make_bench SEED VIDEOS: the synth benchmark with its train/attacker/test split, once
    mkdir -p "$OUT/stores" "$OUT/models" "$RESULTS"
    log "synth: $2 videos, seed $1, train/attacker/test split"
    [ -f "$OUT/bench/labels.csv" ] || anonfeat synth "$OUT/bench" --videos "$2" --frames 48 --seed "$1" -q
    LABELS="$OUT/bench/labels.csv"
}

extract_raw() {  # raw features of every video
    [ -f "$OUT/stores/raw.h5" ] && return
    log "extract: raw features"
    anonfeat extract "$OUT/bench/videos" --out "$OUT/stores/raw.h5" "${ENCODER[@]}" "${CHECKPOINT_FLAGS[@]}" \
        "${SAMPLING[@]}" --workers 1 --batch-size 32 -q
}

adapter_store() {  # adapter_store NAME SEED FLAGS...: train on train rows, sanitize the raw store
    local name="$1" seed="$2"; shift 2
    local model="$OUT/models/$name-s$seed.safetensors" store="$OUT/stores/$name-s$seed.h5"
    [ -f "$store" ] && return
    log "train-adapter $name (seed $seed)"
    anonfeat train-adapter "$OUT/stores/raw.h5" -l "$LABELS" --out "$model" --attributes "$ATTRS" \
        --seed "$seed" -q "$@" --json "$OUT/models/$name-s$seed.json" >/dev/null
    anonfeat sanitize "$OUT/stores/raw.h5" --adapter "$model" --out "$store" -q
}

pruner_model() {  # pruner_model NAME SEED FLAGS...: train OUT/models/NAME-sSEED.safetensors
    local name="$1" seed="$2"; shift 2
    local model="$OUT/models/$name-s$seed.safetensors"
    [ -f "$model" ] && return
    log "train-pruner $name (seed $seed)"
    anonfeat train-pruner "$OUT/bench/videos" -l "$LABELS" --out "$model" "${ENCODER[@]}" "${CHECKPOINT_FLAGS[@]}" \
        --attributes "$ATTRS" --frame-stride 2 --seed "$seed" --workers 0 -q "$@" \
        --json "$OUT/models/$name-s$seed.json" >/dev/null
}

pruned_store() {  # pruned_store PRUNER STORE FLAGS...: prune every video into OUT/stores/STORE.h5
    local pruner="$1" store="$OUT/stores/$2.h5"; shift 2
    [ -f "$store" ] && return
    log "prune $(basename "$store" .h5)"
    anonfeat prune "$OUT/bench/videos" --pruner "$pruner" --out "$store" "${SAMPLING[@]}" --workers 0 \
        --batch-size 32 -q "${CHECKPOINT_FLAGS[@]}" "$@"
}

side_by_side() {  # side_by_side BACKGROUND FOREGROUND: two step functions at once, one core each
    export OMP_NUM_THREADS=1
    "$1" > "$OUT/$1.log" 2>&1 &
    local pid=$!
    "$2"
    wait "$pid" || { cat "$OUT/$1.log" >&2; log "$1 failed"; exit 1; }
}

audit_all() {  # audit_all TASK_FLAGS...: every store against raw, 3 attacker seeds -> RESULTS/audit.json
    local stores=() f
    for f in "$OUT"/stores/*.h5; do [ "$(basename "$f")" = raw.h5 ] || stores+=("$f"); done
    log "audit: ${#stores[@]} stores against raw, attackers fit on the attacker split, 3 attacker seeds"
    anonfeat audit "${stores[@]}" --baseline "$OUT/stores/raw.h5" -l "$LABELS" --attributes "$ATTRS" "$@" \
        --seeds 3 --json "$OUT/audit.json" -q >/dev/null
    cp "$OUT/audit.json" "$RESULTS/audit.json"  # the audit's own JSON, every store and seed
}
