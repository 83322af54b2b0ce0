#!/usr/bin/env bash
# The search behind anonfeat's defaults, on a validation benchmark: `anonfeat synth --seed 21`, a seed
# that scripts/evaluate.sh (seed 11) never uses. Every choice of a default flag is read from this
# script's output, never from the evaluation's test split (docs/method.md#protocol).
#
# One training seed (0) per candidate, audited like scripts/evaluate.sh (scripts/protocol.sh): attackers
# and probes fit on the `attacker` split, scored on `test`, 3 attacker seeds. Candidates:
#   * adapters: LEACE, the self-supervised AAM, the supervised AAM at its defaults and the variants in
#     ADAPTER_VARIANTS;
#   * pruning: a pruner at train-pruner's defaults and one per PRUNER_VARIANTS, each pruned at its trained
#     keep rates and at each rate in KEEP_RATES (`prune --keep-ratio`, every pruning block); for the
#     default pruner also the keep-ratio 1.0 control, the action-CLS features and random-drop controls
#     (scripts/random_drop_control.py: as many tubelets blackened, chosen at random).
# Writes OUT/ (stores, models) and examples/results/validation/{audit.json,evaluation.json,evaluation.md}.
#
#   bash scripts/validate.sh [OUT]        # about 25 minutes on 2 CPU cores
#   CHECKPOINT=enc.safetensors bash scripts/validate.sh   # candidate videomae-demo weights
source "$(dirname "${BASH_SOURCE[0]}")/env.sh"
source scripts/protocol.sh
OUT="${1:-validation}"
SEED="${VAL_SEED:-21}"
VIDEOS="${VAL_VIDEOS:-480}"
KEEP_RATES="${VAL_KEEP_RATES:-0.8 0.9 0.95 0.98}"
RANDOM_KEEP_RATES="${VAL_RANDOM_KEEP_RATES:-0.9 0.98}"  # random-drop controls of the default pruner
RESULTS="${VAL_RESULTS:-examples/results/validation}"
CHECKPOINT_FLAGS=(${CHECKPOINT:+--checkpoint "$CHECKPOINT"})
# name|flags candidates beside the defaults: supervised adapters, and pruners (each pruned at every keep rate)
ADAPTER_VARIANTS=("adversary|--attr-loss adversary")
PRUNER_VARIANTS=("train-all-blocks|--train-blocks 4")

make_bench "$SEED" "$VIDEOS"
extract_raw

adapters() {
    local variant name flags
    adapter_store leace 0 --method leace
    adapter_store aam-attributes 0 --privacy-loss attributes
    adapter_store aam-selfsupervised 0
    for variant in "${ADAPTER_VARIANTS[@]}"; do
        IFS='|' read -r name flags <<<"$variant"
        # shellcheck disable=SC2086
        adapter_store "$name" 0 --privacy-loss attributes $flags
    done
}

pruners() {
    local variant name flags pruner keep
    for variant in "default|" "${PRUNER_VARIANTS[@]}"; do
        IFS='|' read -r name flags <<<"$variant"
        # shellcheck disable=SC2086
        pruner_model "pruner-$name" 0 $flags
        pruner="$OUT/models/pruner-$name-s0.safetensors"
        pruned_store "$pruner" "pruned-$name-masked-s0"
        if [ "$name" = default ]; then
            pruned_store "$pruner" pruned-default-keep1-s0 --keep-ratio 1.0
            pruned_store "$pruner" pruned-default-action-cls-s0 --features action-cls
            for keep in $RANDOM_KEEP_RATES; do random_drop "$pruner" "pruned-random-keep$keep-s0" "$keep"; done
        fi
        for keep in $KEEP_RATES; do pruned_store "$pruner" "pruned-$name-keep$keep-s0" --keep-ratio "$keep"; done
    done
}

random_drop() {  # random_drop PRUNER STORE KEEP: as many tubelets blackened as the pruner drops, at random
    local store="$OUT/stores/$2.h5"
    [ -f "$store" ] && return
    log "random-drop control $2"
    python scripts/random_drop_control.py "$OUT/bench/videos" --pruner "$1" --out "$store" --keep-ratio "$3" \
        "${SAMPLING[@]}" "${CHECKPOINT_FLAGS[@]}"
}

side_by_side pruners adapters
audit_all --task action --task lighting
DEFAULT_W=$(default_w_attr)
python scripts/evaluate_report.py "$RESULTS/audit.json" --bench-seed "$SEED" --videos "$VIDEOS" \
    --pruner-epochs 30 --default-w-attr "$DEFAULT_W" --out "$RESULTS" --no-plot
log "done: $RESULTS/evaluation.md"
