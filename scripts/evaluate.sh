#!/usr/bin/env bash
# Regenerates every privacy figure the README quotes, under the honest protocol (docs/method.md#protocol):
#
#   * a benchmark seed (EVAL_SEED, default 11) used for nothing else: no flag, weight or epoch below was
#     chosen on it (candidates are compared by scripts/validate.sh on synth seed 21);
#   * one three-way split written by `anonfeat synth`: anonymizers train on `train`, the audit's fresh
#     attackers and utility probes fit on `attacker` (videos no anonymizer saw) and score on `test`;
#   * every anonymizer trained with 3 seeds (0, 1, 2); every audit with 3 attacker seeds;
#   * the closed-form LEACE eraser as the baseline every trained anonymizer is compared with;
#   * utility on the trained task (action) and on one no anonymizer trains on (synth's lighting).
#
# Writes its stores under OUT (default evaluation/) and the figures under examples/results/ (EVAL_RESULTS):
# audit.json (the audit's output), evaluation.json (every store, every seed, mean ± std per method),
# evaluation.md (the tables the README quotes) and privacy_utility.png (the privacy-weight sweep).
# The adapters and the pruners train in two processes side by side (one core each).
#
#   bash scripts/evaluate.sh [OUT]        # about 25 minutes on 2 CPU cores (22 measured)
source "$(dirname "${BASH_SOURCE[0]}")/env.sh"
source scripts/protocol.sh
OUT="${1:-evaluation}"
SEED="${EVAL_SEED:-11}"
VIDEOS="${EVAL_VIDEOS:-480}"
SEEDS="${EVAL_TRAIN_SEEDS:-0 1 2}"
PRUNER_EPOCHS="${EVAL_PRUNER_EPOCHS:-30}"  # train-pruner's default
SWEEP="${EVAL_SWEEP:-0.1 0.3 3 10}"          # multiples of the supervised adapter's default privacy weight
SWEEP_SEEDS="${EVAL_SWEEP_SEEDS:-$SEEDS}"     # (x1 is the aam-attributes row)
RESULTS="${EVAL_RESULTS:-examples/results}"
CHECKPOINT_FLAGS=()

make_bench "$SEED" "$VIDEOS"
extract_raw
DEFAULT_W=$(default_w_attr)

adapters() {
    local seed factor w
    for seed in $SEEDS; do
        adapter_store leace "$seed" --method leace
        adapter_store aam-attributes "$seed" --privacy-loss attributes
        adapter_store aam-selfsupervised "$seed"
    done
    for factor in $SWEEP; do
        w=$(python -c "print(f'{$factor * $DEFAULT_W:g}')")
        for seed in $SWEEP_SEEDS; do adapter_store "sweep-w$w" "$seed" --privacy-loss attributes --w-attr "$w"; done
    done
}

pruners() {
    local seed pruner
    for seed in $SEEDS; do
        pruner_model pruner "$seed" --epochs "$PRUNER_EPOCHS"
        pruner="$OUT/models/pruner-s$seed.safetensors"
        pruned_store "$pruner" "pruned-masked-s$seed"
        pruned_store "$pruner" "pruned-keep1-s$seed" --keep-ratio 1.0
        pruned_store "$pruner" "pruned-action-cls-s$seed" --features action-cls
    done
}

side_by_side pruners adapters
audit_all --task action --task lighting
python scripts/evaluate_report.py "$RESULTS/audit.json" --bench-seed "$SEED" --videos "$VIDEOS" \
    --pruner-epochs "$PRUNER_EPOCHS" --default-w-attr "$DEFAULT_W" --out "$RESULTS"
log "done: $RESULTS/evaluation.json, evaluation.md, privacy_utility.png"
